"""Deployment benchmark: requests/s through nginx in front of 1 and of 2 ``imgcls serve``
replicas, and the requests lost while a replica is killed under load.

    .venv/bin/python bench/deployment.py                      # trains its model first; ~2 minutes
    .venv/bin/python bench/deployment.py exports/digits_cnn   # an existing export

The deployment of ``Deployment/deployment.yaml`` without containers: its replicas' ``serve:``
settings (the same ``--set`` options compose.yaml passes) on real ``imgcls serve`` processes on
loopback, and Debian's nginx with the ``nginx.conf`` that ``imgcls deploy`` renders, pointed at
them. Three setups get the same load (16 keep-alive client threads, each request a TensorFlow
Serving ``:predict`` of one base64 digit PNG), measured alternately, round by round: one replica
without nginx (what nginx costs), nginx with one replica, nginx with two. Then the failover run:
the same load through nginx with two replicas, the second SIGKILLed about a third of the way in.

Prints a Markdown table (requests/s: median of the rounds; latency: all rounds' requests), the
2 replicas / 1 replica ratio, and the failover run's failed and retried requests. Every process
shares this machine's cores: clients, nginx and the replicas. Exits 1 if any request failed.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serving import (Server, load, load_arguments, percentile, predict_body,  # noqa: E402
                           train_and_export)
from imgcls_utils.serving.deployment import DEPLOYMENT_RELATIVE_PATH  # noqa: E402
from imgcls_utils.serving.deployment import (free_loopback_port, load_deployment, local_nginx,
                                             nginx_conf, nginx_executable)

CLIENTS = 16
REQUESTS = 1000  # per setup and round
ROUNDS = 3
SETUPS = ("1 replica, no nginx", "nginx + 1 replica", "nginx + 2 replicas")


@dataclass(frozen=True)
class Endpoint:
    """Where ``load`` sends its requests."""

    host: str
    port: int


def failover(endpoint: Endpoint, victim: Server, path: str, body: bytes, clients: int,
             requests: int, rate: float) -> dict:
    """``load`` through nginx while ``victim`` is SIGKILLed a third of the way in (timed from
    ``rate``, the requests/s measured with both replicas)."""
    killer = threading.Timer(requests / 3 / rate, victim.process.send_signal, [signal.SIGKILL])
    killer.start()
    run = load(endpoint, path, body, clients, requests)
    killer.join()
    run["killed"] = victim.process.wait(timeout=30) == -signal.SIGKILL
    return run


def retried_requests(access_log: Path, offset: int) -> int:
    """nginx's requests after ``offset`` that were tried on more than one replica."""
    with open(access_log, "rb") as log:
        log.seek(offset)
        return sum(", " in json.loads(line)["upstream_addr"] for line in log)


def start_setups(running: ExitStack, settings, export: Path, tmp: Path) -> tuple[dict, list]:
    """The replicas and two nginx (in front of the first replica, and of both), stopped when
    ``running`` ends: each setup's endpoint, and the replicas."""
    set_options = [word for option in settings.serve_options() for word in ("--set", option)]
    replicas = [Server(export, set_options, tmp / f"replica-{number}.log") for number in (1, 2)]
    for replica in replicas:
        running.callback(replica.stop)
    upstreams = [f"{replica.host}:{replica.port}" for replica in replicas]
    endpoints = {SETUPS[0]: Endpoint(replicas[0].host, replicas[0].port)}
    for setup, addresses in ((SETUPS[1], upstreams[:1]), (SETUPS[2], upstreams)):
        port, folder = free_loopback_port(), tmp / f"nginx-{len(addresses)}"
        folder.mkdir()
        conf = nginx_conf(settings, addresses, f"127.0.0.1:{port}")
        running.enter_context(local_nginx(conf, folder, port))
        endpoints[setup] = Endpoint("127.0.0.1", port)
    return endpoints, replicas


def main() -> int:
    parser = load_arguments(__doc__, REQUESTS, ROUNDS)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    args = parser.parse_args()
    if nginx_executable() is None:
        raise SystemExit("nginx is not installed: apt-get install nginx")
    settings = load_deployment(REPO / DEPLOYMENT_RELATIVE_PATH)
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp, ExitStack() as running:
        tmp = Path(tmp)
        export = args.export.resolve() if args.export else train_and_export(tmp)
        digit, body = predict_body(tmp)
        digit_bytes = digit.stat().st_size  # the file goes with the temporary folder
        path = f"/v1/models/{export.name}:predict"
        endpoints, replicas = start_setups(running, settings, export, tmp)
        for endpoint in endpoints.values():  # connections, threads, allocator: warm
            load(endpoint, path, body, args.clients, 200)
        results = {setup: [] for setup in SETUPS}
        for _ in range(args.rounds):
            for setup, endpoint in endpoints.items():
                results[setup].append(load(endpoint, path, body, args.clients, args.requests))
        access_log = tmp / "nginx-2" / "access.log"
        offset = access_log.stat().st_size
        rate = statistics.median(run["rate"] for run in results[SETUPS[2]])
        killed = failover(endpoints[SETUPS[2]], replicas[1], path, body, args.clients,
                          args.requests, rate)
        killed["retried"] = retried_requests(access_log, offset)
    report(results, killed, export, digit_bytes, args)
    failed = sum(len(run["failures"]) for runs in results.values() for run in runs)
    return 1 if failed or killed["failures"] or not killed["killed"] else 0


def report(results: dict, killed: dict, export: Path, digit_bytes: int, args) -> None:
    print(f"\n{export.name} behind nginx ({nginx_executable()}), {os.cpu_count()} cores shared "
          f"by everything; {args.clients} clients, each request a TensorFlow Serving :predict of "
          f"one {digit_bytes}-byte digit PNG in base64; {args.requests} requests per "
          f"setup and round, {args.rounds} rounds (requests/s: median; latency: all requests)\n")
    print("| setup | req/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|")
    rates = {}
    for setup, runs in results.items():
        latencies = [value for run in runs for value in run["latencies"]] or [float("nan")]
        rates[setup] = statistics.median(run["rate"] for run in runs)
        failed = sum(len(run["failures"]) for run in runs)
        print(f"| {setup} | {rates[setup]:.0f} | {percentile(latencies, 0.50):.2f} | "
              f"{percentile(latencies, 0.99):.2f} | {failed} |")
    print(f"\n2 replicas / 1 replica (both behind nginx): "
          f"x{rates[SETUPS[2]] / rates[SETUPS[1]]:.2f}; nginx + 1 replica / 1 replica without "
          f"nginx: x{rates[SETUPS[1]] / rates[SETUPS[0]]:.2f}")
    print(f"\nfailover: {args.requests} requests through nginx + 2 replicas, the second "
          f"{'SIGKILLed' if killed['killed'] else 'NOT killed (it ended first)'} about a third "
          f"of the way in: {len(killed['failures'])} failed, {killed['retried']} retried by nginx "
          f"on the other replica, {killed['rate']:.0f} req/s over the run")
    if killed["failures"]:
        print(f"failed, e.g.: {sorted({bytes(f) for f in killed['failures']})[:3]}")


if __name__ == "__main__":
    sys.exit(main())
