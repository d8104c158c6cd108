"""Capacity of one replica: the request rate one ``imgcls serve`` holds with its p99 latency at
most 100 ms, which the Kubernetes autoscaler's target comes from.

    .venv/bin/python bench/capacity.py                      # trains its model first; ~2 minutes
    .venv/bin/python bench/capacity.py exports/digits_cnn   # an existing export

One replica with ``Deployment/deployment.yaml``'s ``serve:`` settings (what every replica runs),
the default digits CNN, each request a TensorFlow Serving ``:predict`` of one base64 digit PNG.
Closed-loop keep-alive clients, 1, 2, 4, ... 32 of them, so that the requests in flight are the
clients; each step measured in rounds. The baseline is the same replica answering one client at
a time. Prints per step the requests/s (median of the rounds), p50 and p99 latency (all rounds'
requests), then the capacity: the highest rate whose p99 is within the limit, as a ratio of the
one-client rate, the requests in flight it takes, and the replica's peak memory. Clients and
replica share this machine's cores. Exits 1 if any request failed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serving import (Server, load, load_arguments, percentile, predict_body,  # noqa: E402
                           train_and_export)
from imgcls_utils.serving.deployment import DEPLOYMENT_RELATIVE_PATH, load_deployment  # noqa: E402

CLIENTS = (1, 2, 4, 8, 16, 32)
REQUESTS = 600  # per step and round
ROUNDS = 3
P99_LIMIT_MS = 100
HPA_SHARE = 0.7  # the autoscaler adds replicas before the limit is reached


def peak_memory_mb(pid: int) -> float:
    """The process's peak resident memory (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    args = load_arguments(__doc__, REQUESTS, ROUNDS).parse_args()
    settings = load_deployment(REPO / DEPLOYMENT_RELATIVE_PATH)
    flags = [word for option in settings.serve_options() for word in ("--set", option)]
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        export = args.export.resolve() if args.export else train_and_export(Path(tmp))
        digit, body = predict_body(Path(tmp))
        path = f"/v1/models/{export.name}:predict"
        server = Server(export, flags, Path(tmp) / "replica.log")
        try:
            load(server, path, body, 8, 200)  # connections, threads, allocator: warm
            steps = {clients: [load(server, path, body, clients, args.requests)
                               for _ in range(args.rounds)] for clients in CLIENTS}
            memory = peak_memory_mb(server.process.pid)
        finally:
            server.stop()
    report(steps, len(body), args)
    print(f"replica peak memory (VmHWM): {memory:.0f} MB")
    return 1 if any(run["failures"] for runs in steps.values() for run in runs) else 0


def report(steps: dict, body_bytes: int, args) -> list[dict]:
    rows = []
    for clients, runs in steps.items():
        latencies = [latency for run in runs for latency in run["latencies"]]
        rows.append({"clients": clients, "rate": statistics.median(run["rate"] for run in runs),
                     "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                     "failed": sum(len(run["failures"]) for run in runs)})
    print(f"\none imgcls serve replica (Deployment/deployment.yaml's serve: settings), each "
          f"request a {body_bytes}-byte :predict of one base64 digit PNG; {args.requests} "
          f"requests per step and round, {args.rounds} rounds\n")
    print("| clients (requests in flight) | req/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['rate']:,.0f} | {row['p50']:.2f} | {row['p99']:.2f} "
              f"| {row['failed']} |")
    within = [row for row in rows if row["p99"] <= P99_LIMIT_MS]
    if not within:
        print(f"\nno step kept p99 <= {P99_LIMIT_MS} ms")
        return rows
    best, alone = max(within, key=lambda row: row["rate"]), rows[0]
    print(f"\ncapacity of one replica at p99 <= {P99_LIMIT_MS} ms: {best['rate']:,.0f} req/s "
          f"with {best['clients']} requests in flight (p99 {best['p99']:.1f} ms): "
          f"x{best['rate'] / alone['rate']:.2f} the one-client rate ({alone['rate']:,.0f} req/s)")
    print(f"autoscaler target at {HPA_SHARE:.0%} of it: "
          f"{max(1, round(best['clients'] * HPA_SHARE))} images in flight per replica "
          f"(kubernetes.target_in_flight), about {best['rate'] * HPA_SHARE:,.0f} req/s")
    return rows


if __name__ == "__main__":
    sys.exit(main())
