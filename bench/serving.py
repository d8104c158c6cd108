"""Serving benchmark: requests/s and latency of ``imgcls serve`` with dynamic batching against
without (``serve.max_batch_size`` 1), for 1, 8 and 32 concurrent clients.

    .venv/bin/python bench/serving.py                      # trains its model first; ~2 minutes
    .venv/bin/python bench/serving.py exports/digits_cnn   # an existing export

Both servers are real ``imgcls serve`` processes (uvicorn on a free loopback port), started
side by side on the same export and measured alternately, round by round, so that drift in
the machine's speed hits both alike. Each request is a TensorFlow Serving ``:predict`` of one
base64 digit PNG, sent by client threads of this process over keep-alive connections (which
share the machine's cores with the server, as a load balancer on the same host would). Without
an export path, the default config's model is trained on the embedded digits (3 epochs: its
weights do not change its speed) and exported, in a temporary project.

Prints requests/s (median of the rounds), p50 and p99 latency (all rounds' requests) as the
clients measured them and as the server logged them (from reading the request to sending the
answer: the difference is HTTP, the network stack and the clients' own threads), the mean
batch size per setting, and the batching / no-batching ratios. Exits 1 if any request
failed or a setting ran past its time limit.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgcls_utils import model_utils  # noqa: E402
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config  # noqa: E402

CLIENTS = (1, 8, 32)
REQUESTS = 400  # per setting and round
ROUNDS = 3
TIME_LIMIT = 120  # seconds per setting and round
MODES = {"batching": [], "no batching": ["--no-batching"]}


def train_and_export(root: Path) -> Path:
    """The default config's model on the embedded digits, exported: its export folder."""
    (root / "config").mkdir()
    shutil.copy(REPO / CONFIG_RELATIVE_PATH, root / CONFIG_RELATIVE_PATH)
    cfg = load_config(root / CONFIG_RELATIVE_PATH, overrides={
        "train.epochs": 3, "train.verbose": 0, "train.classical_baselines": False})
    started = time.perf_counter()
    run = model_utils.train(cfg)
    exported = model_utils.export_model(run.model_folder, cfg.path("exports_dir"))
    print(f"trained and exported the default digits model in "
          f"{time.perf_counter() - started:.0f} s ({run.hardware.precision}): {exported.folder}",
          flush=True)
    return exported.folder.parent


class Server:
    """``imgcls serve`` in a subprocess: its base URL once /healthz says ready."""

    def __init__(self, export: Path, flags: list[str], log: Path):
        self.log_path = log
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imgcls_utils.cli", "serve", str(export), "--port", "0",
             *flags], stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO)
        line = self.process.stdout.readline()
        match = re.search(r"http://([\d.]+):(\d+)", line)
        if not match:
            raise SystemExit(f"imgcls serve did not start: {line}{log.read_text()[-3000:]}")
        self.host, self.port = match[1], int(match[2])
        deadline = time.monotonic() + 120
        while self.get("/healthz")[0] != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"imgcls serve never became ready: {log.read_text()[-3000:]}")
            time.sleep(0.2)

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            connection.close()

    def batches(self) -> tuple[float, float]:
        """(model calls, images) so far, from /metrics."""
        text = self.get("/metrics")[1].decode()
        return (float(re.search(r"imgcls_batch_size_count (\S+)", text)[1]),
                float(re.search(r"imgcls_batch_size_sum (\S+)", text)[1]))

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def latencies_since(self, offset: int, path: str) -> list[float]:
        """The server's own latency (seconds) of each ``path`` request logged after
        ``offset``: its JSON request lines."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            lines = [json.loads(line) for line in log.read().splitlines()
                     if line.startswith(b'{"time"') and b'"latency_ms"' in line]
        return [line["latency_ms"] / 1000 for line in lines
                if line["path"] == path and line["status"] == 200]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def load(server: Server, path: str, body: bytes, clients: int, requests: int) -> dict:
    """``requests`` POSTs of ``body`` by ``clients`` threads, one keep-alive connection each:
    requests/s, latencies, failures."""
    latencies, failures = [], []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + TIME_LIMIT
    headers = {"Content-Type": "application/json"}

    def client() -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    break
            started = time.perf_counter()
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and b'"predictions"' in answer
            except OSError as error:
                ok, answer = False, str(error).encode()
                connection.close()
                connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                (latencies.append(elapsed) if ok else failures.append(answer[:200]))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    missing = requests - len(latencies) - len(failures)
    return {"rate": len(latencies) / seconds, "latencies": latencies,
            "failures": failures + [b"not sent within the time limit"] * missing}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))] * 1000


def predict_body(root: Path) -> tuple[Path, bytes]:
    """One digit PNG (the project's, else the one ``train_and_export`` wrote under ``root``)
    as a TensorFlow Serving :predict body."""
    digit = next(path for folder in (REPO, root) for path in sorted(
        (folder / "data" / "Raw_Data" / "digits" / "7").glob("*.png")))
    return digit, json.dumps({"instances": [{"b64": base64.b64encode(digit.read_bytes())
                                             .decode()}]}).encode()


def load_arguments(doc: str, requests: int, rounds: int) -> argparse.ArgumentParser:
    """The serving benches' arguments: the export to serve, requests per setup, rounds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("export", nargs="?", type=Path, help="an export (exports/<name>); "
                        "without one, the default digits model is trained and exported first")
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def main() -> int:
    parser = load_arguments(__doc__, REQUESTS, ROUNDS)
    parser.add_argument("--clients", type=lambda text: tuple(map(int, text.split(","))),
                        default=CLIENTS, help="client counts, e.g. 1,8,32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        export = args.export.resolve() if args.export else train_and_export(Path(tmp))
        from imgcls_utils.serving.export import find_version

        version = find_version(export)
        digit, body = predict_body(Path(tmp))
        path = f"/v1/models/{version.name}:predict"
        servers = {mode: Server(export, flags, Path(tmp) / f"{mode}.log")
                   for mode, flags in MODES.items()}
        try:
            for server in servers.values():  # connections, threads, allocator: warm
                load(server, path, body, 8, 100)
            results = {(mode, clients): [] for mode in MODES for clients in args.clients}
            batches = {}
            for clients in args.clients:
                before = {mode: server.batches() for mode, server in servers.items()}
                for _ in range(args.rounds):
                    for mode, server in servers.items():
                        offset = server.log_size()
                        run = load(server, path, body, clients, args.requests)
                        time.sleep(0.2)  # the last log lines written
                        run["server"] = server.latencies_since(offset, path)
                        results[mode, clients].append(run)
                for mode, server in servers.items():
                    calls, images = (now - then for now, then in
                                     zip(server.batches(), before[mode]))
                    batches[mode, clients] = images / calls if calls else 0.0
        finally:
            for server in servers.values():
                server.stop()
    report(results, batches, version, args, digit)
    failed = sum(len(run["failures"]) for runs in results.values() for run in runs)
    if failed:
        examples = {bytes(f) for runs in results.values() for run in runs
                    for f in run["failures"][:3]}
        print(f"\n{failed} request(s) failed, e.g. {sorted(examples)[:3]}", file=sys.stderr)
    return 1 if failed else 0


def report(results: dict, batches: dict, version, args, digit: Path) -> None:
    height, width = version.info["image_size"]
    print(f"\nimgcls serve, {version.name} version {version.version} ({height}x{width}x"
          f"{version.info['channels']} input); each request a TensorFlow Serving :predict of "
          f"one {digit.stat().st_size}-byte digit PNG in base64; {args.requests} requests per "
          f"setting and round, {args.rounds} rounds (requests/s: median; latency: all "
          "requests)\n")
    print(f"{'':>7} | {'':<11} | {'':>7} | {'client side':^17} | {'server side':^17} |")
    print(f"{'clients':>7} | {'mode':<11} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} | "
          f"{'p50 ms':>7} | {'p99 ms':>7} | {'images/call':>11}")
    summary = {}
    for clients in args.clients:
        for mode in MODES:
            runs = results[mode, clients]
            latencies = [value for run in runs for value in run["latencies"]] or [float("nan")]
            server = [value for run in runs for value in run["server"]] or [float("nan")]
            summary[mode, clients] = (statistics.median(run["rate"] for run in runs),
                                      percentile(latencies, 0.50), percentile(latencies, 0.99))
            rate, p50, p99 = summary[mode, clients]
            print(f"{clients:>7} | {mode:<11} | {rate:7.0f} | {p50:7.2f} | {p99:7.2f} | "
                  f"{percentile(server, 0.50):7.2f} | {percentile(server, 0.99):7.2f} | "
                  f"{batches[mode, clients]:11.2f}")
    print("\nbatching / no batching:")
    print(f"{'clients':>7} | {'req/s':>7} | {'p50':>7} | {'p99':>7}")
    for clients in args.clients:
        (rate, p50, p99), (base_rate, base_p50, base_p99) = (
            summary["batching", clients], summary["no batching", clients])
        print(f"{clients:>7} | x{rate / base_rate:6.2f} | x{p50 / base_p50:6.2f} | "
              f"x{p99 / base_p99:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
