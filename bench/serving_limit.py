"""How close any Python server can come to issue 24's goals on this machine: ``imgcls serve``
against the floor server (``bench/floor_server.py``: HTTP, a batcher thread and the model call,
nothing else), both driven by ``bench/serving.py``'s REST clients, next to the model's own speed.

    .venv/bin/python bench/serving_limit.py                      # trains its model first; ~1 minute
    .venv/bin/python bench/serving_limit.py exports/digits_cnn   # an existing export

The clients are Python threads of this process on the same 2 cores as the servers, as in
``bench/serving.py``. Both servers run side by side and are measured alternately, round by round;
the model's images/s at batch 32 (its ``pixels`` signature called directly, servers idle) is
measured after each round. Prints requests/s (median of the rounds), p50 and p99 latency (all
rounds' requests) at 1 and 32 clients, and for each server the two goals a server's overhead
decides: requests/s at 32 clients >= 0.5 x the model's images/s, and p99 at 32 clients <= 4 x a
lone client's p50. What the floor server reaches is the most a server written in Python can
reach here with these clients: it does none of the work of a real one (parsing, decoding,
checks, logging, metrics, versions).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import (MAX_BATCH, Server, load, load_arguments, model_speed,  # noqa: E402
                     percentile, served_export)

CLIENTS = (1, 32)
REQUESTS = 1000  # per setting and round
ROUNDS = 3
FLOOR = "floor server (HTTP + batcher + model)"


class FloorServer:
    """``bench/floor_server.py`` in a subprocess, with the ``host`` and ``port`` the clients
    of ``bench/serving.py`` connect to."""

    def __init__(self, version_folder: Path, digit: Path):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("floor_server.py")),
             str(version_folder), str(digit)], stdout=subprocess.PIPE, text=True)
        url = self.process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise SystemExit(f"the floor server did not start: {url!r}")
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def main() -> int:
    args = load_arguments(__doc__, REQUESTS, ROUNDS).parse_args()
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        from imgcls_utils.serving.graph import ExportedGraph

        export, version, digit, body, path = served_export(args, Path(tmp))
        graph = ExportedGraph(version.folder)
        pixels = graph.decode([digit.read_bytes()])
        servers = {"imgcls serve (batching)": Server(export, [], Path(tmp) / "serve.log"),
                   FLOOR: FloorServer(version.folder, digit)}
        runs = {(name, clients): [] for name in servers for clients in CLIENTS}
        model = []
        try:
            for server in servers.values():  # connections, threads, allocator: warm
                load(server, path, body, 8, 100)
            for _ in range(args.rounds):
                for clients in CLIENTS:
                    for name, server in servers.items():
                        runs[name, clients].append(load(server, path, body, clients,
                                                        args.requests))
                time.sleep(0.2)
                model.append(model_speed(graph, pixels, MAX_BATCH))
        finally:
            for server in servers.values():
                server.stop()
    failed = sum(len(run["failures"]) for rounds in runs.values() for run in rounds)
    report(runs, statistics.median(model), args)
    if failed:
        print(f"\n{failed} request(s) failed", file=sys.stderr)
    return 1 if failed else 0


def report(runs: dict, model: float, args) -> None:
    print(f"\nREST :predict of one digit PNG, {args.requests} requests per setting and round, "
          f"{args.rounds} rounds; the model itself: {model:.0f} images/s at batch {MAX_BATCH}\n")
    print(f"{'server':<40} | {'clients':>7} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7}")
    summary = {}
    for (name, clients), rounds in runs.items():
        latencies = [value for run in rounds for value in run["latencies"]]
        summary[name, clients] = rate, p50, p99 = (
            statistics.median(run["rate"] for run in rounds),
            percentile(latencies, 0.50), percentile(latencies, 0.99))
        print(f"{name:<40} | {clients:>7} | {rate:7.0f} | {p50:7.2f} | {p99:7.2f}")
    many, one = max(CLIENTS), min(CLIENTS)
    print(f"\ngoals at {many} clients (a lone client = {one}):")
    print(f"{'server':<40} | {'req/s / model images/s (>= 0.5)':>32} | "
          f"{'p99 / lone p50 (<= 4)':>21}")
    for name in dict.fromkeys(name for name, _ in runs):
        rate, _, p99 = summary[name, many]
        print(f"{name:<40} | {rate / model:32.2f} | {p99 / summary[name, one][1]:21.2f}")


if __name__ == "__main__":
    sys.exit(main())
