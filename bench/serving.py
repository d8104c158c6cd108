"""Serving benchmark: requests/s and latency of ``imgcls serve`` over TensorFlow Serving's REST
and gRPC APIs, with dynamic batching against without (``serve.max_batch_size`` 1), for 1, 8 and
32 concurrent clients, next to the model's own speed.

    .venv/bin/python bench/serving.py                      # trains its model first; ~8 minutes
    .venv/bin/python bench/serving.py exports/digits_cnn   # an existing export

Both servers are real ``imgcls serve`` processes (uvicorn and the gRPC server on free loopback
ports), started side by side on the same export and measured alternately, round by round, so
that drift in the machine's speed hits both alike. Each request is one digit PNG: a TensorFlow
Serving REST ``:predict`` in base64 JSON over a keep-alive connection, or a gRPC ``Predict``
with the stock stub of ``tensorflow-serving-api`` over a channel per client, sent by client
threads of this process (which share the machine's cores with the server, as a load balancer
on the same host would). After each round the model's own images/s is measured in this process
(its ``pixels`` signature called directly at batch 1 and 32, the servers idle): the limit of any
server. Without an export path, the default config's model is trained on the embedded digits
(3 epochs: its weights do not change its speed) and exported, in a temporary project.

Prints requests/s (median of the rounds), p50 and p99 latency (all rounds' requests) as the
clients measured them and as the server logged them (from reading the request to sending the
answer), the mean images per model call, the batching / no-batching ratios and the issue's
goals (requests/s at 32 clients against the model's images/s at batch 32, batching against
none, p99 against a lone client's p50). Exits 1 if any request failed or a setting ran past its
time limit.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
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
# --ablate-uvicorn-standard: a third server, batching, without uvloop and httptools (uvicorn
# falls back to asyncio's own loop and h11 when they cannot be imported)
PLAIN = "batching, asyncio+h11"
PLAIN_PYTHON = ("import sys; sys.modules['uvloop'] = sys.modules['httptools'] = None; "
                "from imgcls_utils.cli import main; sys.exit(main(sys.argv[1:]))")
APIS = ("REST", "gRPC")
MAX_BATCH = 32  # serve.max_batch_size: the model's own speed is measured at it


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

    def __init__(self, export: Path, flags: list[str], log: Path,
                 python: tuple[str, ...] = ("-m", "imgcls_utils.cli"), code: Path = REPO):
        self.log_path = log
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, *python, "serve", str(export), "--port", "0",
             "--grpc-port", "0", *flags], stdout=subprocess.PIPE, stderr=self.log, text=True,
            cwd=code)
        line = self.process.stdout.readline()
        match, grpc = re.search(r"http://([\d.]+):(\d+)", line), re.search(r"gRPC at (\S+)", line)
        if not (match and grpc):
            raise SystemExit(f"imgcls serve did not start: {line}{log.read_text()[-3000:]}")
        self.host, self.port, self.grpc = match[1], int(match[2]), grpc[1]
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
                if line["path"] == path and line["status"] in (200, "OK")]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class RestClient:
    """One keep-alive HTTP connection sending TensorFlow Serving ``:predict`` bodies."""

    def __init__(self, server: Server, path: str, body: bytes):
        self.server, self.path, self.body = server, path, body
        self.connection = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.server.host, self.server.port, timeout=60)

    def send(self) -> tuple[bool, bytes]:
        try:
            self.connection.request("POST", self.path, self.body,
                                    {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            answer = response.read()
            return response.status == 200 and b'"predictions"' in answer, answer
        except OSError as error:
            self.connection.close()
            self.connection = self._connect()
            return False, str(error).encode()

    def close(self) -> None:
        self.connection.close()


class GrpcClient:
    """One gRPC channel sending a ``PredictionService.Predict`` request with the stock stub."""

    def __init__(self, server: Server, request):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(server.grpc)
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel).Predict
        self.request, self.error = request, grpc.RpcError

    def send(self) -> tuple[bool, bytes]:
        try:
            return "classes" in self.predict(self.request, timeout=60).outputs, b""
        except self.error as error:
            return False, str(error).encode()

    def close(self) -> None:
        self.channel.close()


def load(server: Server, path: str, body: bytes, clients: int, requests: int) -> dict:
    """``requests`` POSTs of ``body`` by ``clients`` threads, one keep-alive connection each:
    requests/s, latencies, failures."""
    return drive(lambda: RestClient(server, path, body), clients, requests)


def grpc_load(server: Server, request, clients: int, requests: int) -> dict:
    """``requests`` Predict calls of ``request`` by ``clients`` threads, one channel each."""
    return drive(lambda: GrpcClient(server, request), clients, requests)


def drive(open_client, clients: int, requests: int) -> dict:
    """``requests`` sends by ``clients`` threads, each with a client of its own from
    ``open_client``: requests/s, latencies, failures."""
    latencies, failures = [], []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + TIME_LIMIT

    def client() -> None:
        sender = open_client()
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    break
            started = time.perf_counter()
            ok, answer = sender.send()
            elapsed = time.perf_counter() - started
            with lock:
                (latencies.append(elapsed) if ok else failures.append(answer[:200]))
        sender.close()

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


def served_export(args, tmp: Path) -> tuple:
    """``(export folder, its newest version, the digit PNG, its :predict body, the :predict
    path)``: ``args.export``, or the default model trained and exported into ``tmp`` first."""
    from imgcls_utils.serving.export import find_version

    export = args.export.resolve() if args.export else train_and_export(tmp)
    version = find_version(export)
    digit, body = predict_body(tmp)
    return export, version, digit, body, f"/v1/models/{version.name}:predict"


def load_arguments(doc: str, requests: int, rounds: int) -> argparse.ArgumentParser:
    """The serving benches' arguments: the export to serve, requests per setup, rounds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("export", nargs="?", type=Path, help="an export (exports/<name>); "
                        "without one, the default digits model is trained and exported first")
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def checkout(ref: str, root: Path) -> Path:
    """The repository's code at ``ref`` in ``root/ref`` (a detached git worktree, removed when
    ``root`` is; the same virtualenv runs it)."""
    folder = root / "ref"
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), ref], cwd=REPO,
                   check=True, capture_output=True)
    return folder


def grpc_request(name: str, image: bytes):
    """A ``PredictRequest`` of one encoded image, as a TensorFlow Serving client writes it."""
    from tensorflow_serving.apis import predict_pb2

    from imgcls_utils.quiet_tensorflow import tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
    return request


def model_speed(graph, pixels, batch: int, seconds: float = 0.5) -> float:
    """The model's own images/s at ``batch`` (its ``pixels`` signature called directly, in
    this process, while the servers are idle): the limit for any server on this machine."""
    batch_pixels = pixels.repeat(batch, axis=0)
    graph.classify_pixels(batch_pixels)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        graph.classify_pixels(batch_pixels)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def main() -> int:
    parser = load_arguments(__doc__, REQUESTS, ROUNDS)
    parser.add_argument("--clients", type=lambda text: tuple(map(int, text.split(","))),
                        default=CLIENTS, help="client counts, e.g. 1,8,32")
    parser.add_argument("--ablate-uvicorn-standard", action="store_true", help="a third "
                        "server, batching without uvloop and httptools, for their ratio")
    parser.add_argument("--compare-with", metavar="GIT_REF", help="a third server, batching, "
                        "running the code of this commit (one with the gRPC API), for the ratio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        from imgcls_utils.serving.graph import ExportedGraph

        export, version, digit, body, path = served_export(args, Path(tmp))
        image = digit.read_bytes()  # the file goes with the temporary folder
        request = grpc_request(version.name, image)
        send = {"REST": lambda server, clients, n: load(server, path, body, clients, n),
                "gRPC": lambda server, clients, n: grpc_load(server, request, clients, n)}
        logged = {"REST": path, "gRPC": "grpc_predict"}
        graph = ExportedGraph(version.folder)
        pixels = graph.decode([image])
        servers = {mode: Server(export, flags, Path(tmp) / f"{mode}.log")
                   for mode, flags in MODES.items()}
        if args.ablate_uvicorn_standard:
            servers[PLAIN] = Server(export, [], Path(tmp) / "plain.log", ("-c", PLAIN_PYTHON))
        if args.compare_with:
            servers[f"batching, {args.compare_with}"] = Server(
                export, [], Path(tmp) / "ref.log", code=checkout(args.compare_with, Path(tmp)))
        try:
            for server in servers.values():  # connections, threads, allocator: warm
                for api in APIS:
                    send[api](server, 8, 100)
            results = {(api, mode, clients): [] for api in APIS for mode in servers
                       for clients in args.clients}
            raw = {1: [], MAX_BATCH: []}
            for clients in args.clients:
                for _ in range(args.rounds):
                    for api in APIS:
                        for mode, server in servers.items():
                            offset, before = server.log_size(), server.batches()
                            run = send[api](server, clients, args.requests)
                            time.sleep(0.2)  # the last log lines written
                            run["server"] = server.latencies_since(offset, logged[api])
                            run["calls"], run["images"] = (
                                now - then for now, then in zip(server.batches(), before))
                            results[api, mode, clients].append(run)
                    for batch in raw:
                        raw[batch].append(model_speed(graph, pixels, batch))
        finally:
            for server in servers.values():
                server.stop()
            if args.compare_with:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "ref")],
                               cwd=REPO, capture_output=True)
    report(results, {batch: statistics.median(rates) for batch, rates in raw.items()},
           version, args, len(image))
    failed = sum(len(run["failures"]) for runs in results.values() for run in runs)
    if failed:
        examples = {bytes(f) for runs in results.values() for run in runs
                    for f in run["failures"][:3]}
        print(f"\n{failed} request(s) failed, e.g. {sorted(examples)[:3]}", file=sys.stderr)
    return 1 if failed else 0


def report(results: dict, raw: dict, version, args, digit_bytes: int) -> None:
    height, width = version.info["image_size"]
    print(f"\nimgcls serve, {version.name} version {version.version} ({height}x{width}x"
          f"{version.info['channels']} input); each request one {digit_bytes}-byte "
          "digit PNG: a TensorFlow Serving REST :predict (base64 JSON) or gRPC Predict (the "
          f"stock stub); {args.requests} requests per setting and round, {args.rounds} rounds "
          "(requests/s: median; latency: all requests)\n")
    print(f"the model itself (pixels signature, called directly): {raw[1]:.0f} images/s at "
          f"batch 1, {raw[MAX_BATCH]:.0f} images/s at batch {MAX_BATCH}\n")
    print(f"{'':>4} | {'':>7} | {'':<21} | {'':>7} | {'client side':^17} | "
          f"{'server side':^17} |")
    print(f"{'api':>4} | {'clients':>7} | {'mode':<21} | {'req/s':>7} | {'p50 ms':>7} | "
          f"{'p99 ms':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'images/call':>11}")
    summary = {}
    for api in APIS:
        for clients in args.clients:
            for mode in dict.fromkeys(mode for _, mode, _ in results):  # in order, once
                runs = results[api, mode, clients]
                latencies = [value for run in runs for value in run["latencies"]] or [math.nan]
                server = [value for run in runs for value in run["server"]] or [math.nan]
                calls = sum(run["calls"] for run in runs)
                summary[api, mode, clients] = rate, p50, p99 = (
                    statistics.median(run["rate"] for run in runs),
                    percentile(latencies, 0.50), percentile(latencies, 0.99))
                print(f"{api:>4} | {clients:>7} | {mode:<21} | {rate:7.0f} | {p50:7.2f} | "
                      f"{p99:7.2f} | {percentile(server, 0.50):7.2f} | "
                      f"{percentile(server, 0.99):7.2f} | "
                      f"{sum(run['images'] for run in runs) / calls if calls else 0:11.2f}")
    ratios(summary, args.clients, "batching", "no batching")
    if args.ablate_uvicorn_standard:
        ratios(summary, args.clients, "batching", PLAIN)
    if args.compare_with:
        ratios(summary, args.clients, "batching", f"batching, {args.compare_with}")
    goals(summary, raw, args.clients)


def ratios(summary: dict, clients: tuple[int, ...], mode: str, base: str) -> None:
    print(f"\n{mode} / {base}:")
    print(f"{'api':>4} | {'clients':>7} | {'req/s':>7} | {'p50':>7} | {'p99':>7}")
    for api in APIS:
        for count in clients:
            (rate, p50, p99), (base_rate, base_p50, base_p99) = (
                summary[api, mode, count], summary[api, base, count])
            print(f"{api:>4} | {count:>7} | x{rate / base_rate:6.2f} | x{p50 / base_p50:6.2f} | "
                  f"x{p99 / base_p99:6.2f}")


def goals(summary: dict, raw: dict, clients: tuple[int, ...]) -> None:
    """The issue's goals, with batching on, at the most clients against a lone one."""
    many, one = max(clients), min(clients)
    print(f"\ngoals (batching on; {many} clients, a lone client = {one}):")
    print(f"{'api':>4} | {'req/s / model images/s at batch ' + str(MAX_BATCH) + ' (>= 0.5)':>40} | "
          f"{'batching / none (>= 2)':>22} | {f'p99 / lone p50 (<= 4)':>21} | {'lone p50 ms':>11}")
    for api in APIS:
        rate, _, p99 = summary[api, "batching", many]
        lone_p50 = summary[api, "batching", one][1]
        print(f"{api:>4} | {rate / raw[MAX_BATCH]:40.2f} | "
              f"{rate / summary[api, 'no batching', many][0]:22.2f} | {p99 / lone_p50:21.2f} | "
              f"{lone_p50:11.2f}")


if __name__ == "__main__":
    sys.exit(main())
