"""Where a REST request's time goes in ``imgcls serve``: py-spy samples the server while
clients send TensorFlow Serving ``:predict`` requests, and the samples are split by thread (the
event loop, the decoding threads, the batcher's model calls) and, on the event loop, by what
the innermost recognised frame is doing (HTTP, routing, JSON, base64, logging and metrics...).

    .venv/bin/pip install py-spy   # a profiler, not a dependency of the project
    .venv/bin/python bench/profile_serving.py             # trains its model first; ~2 minutes
    .venv/bin/python bench/profile_serving.py exports/digits_cnn   # an existing export

Prints, for each client count, the CPU milliseconds per request of each part (samples x the
sampling interval, measured from the event loop's samples idle included, / requests). The
server is the same ``imgcls serve`` process ``bench/serving.py`` measures, with its flags
(``--flags=--no-batching``).
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import Server, load, load_arguments, served_export  # noqa: E402

CLIENTS = (1, 32)
REQUESTS = 2000
RATE = 1000  # py-spy samples per second asked for

# On the event loop, the innermost frame matching one of these (file, function) patterns says
# what the thread was doing; first match from the leaf up wins.
EVENT_LOOP_PARTS = [
    # asyncio waits in selectors; uvloop in its C loop, below asyncio's Runner.run
    ("idle (waiting for the network)", r"selectors\.py|EpollSelector|select \(|^Runner\.run "),
    ("JSON parsing of the body", r"json/decoder|parse_json_body|orjson.*loads"),
    ("base64 decoding", r"base64|decode_bytes"),
    ("JSON response (float32 printing, encoding)",
     r"json/encoder|predict_response|json_values|_nested|float32_value|json_response|dumps"),
    ("request checks (rest_api)", r"rest_api\.py"),
    ("logging and metrics", r"logging/|prometheus_client|monitoring\.py|Observe"),
    ("API key and body limit middleware", r"middleware\.py"),
    ("HTTP protocol (uvicorn, h11/httptools)", r"uvicorn/protocols|h11/|httptools"),
    ("routing and request objects (starlette, fastapi)", r"starlette/|fastapi/"),
    ("hand-off to and from threads (anyio, futures)", r"anyio/|concurrent/futures|wrap_future"),
    ("asyncio's loop itself", r"asyncio/"),
]
THREAD_PARTS = {"MainThread": "event loop", "imgcls-batcher": "model calls (batcher thread)",
                "AnyIO worker thread": "decoding (worker threads)"}
# The batcher decodes the batch's encoded images before its model call: those samples are
# decoding's.
BATCHER_DECODING = r"^_decoded \(.*serving/batching\.py"


def thread_part(name: str, frames: list[str]) -> str:
    if name == "imgcls-batcher" and any(re.search(BATCHER_DECODING, frame) for frame in frames):
        return "decoding (batcher thread)"
    return THREAD_PARTS[name]


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in EVENT_LOOP_PARTS:
            if re.search(pattern, frame):
                return name
    return "other"


def profile(server: Server, path: str, body: bytes, clients: int, requests: int,
            out: Path) -> tuple[collections.Counter, float, int]:
    """py-spy on the server while ``requests`` are sent: (CPU seconds by (thread part, part),
    seconds per sample, requests answered)."""
    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                            "record", "--pid", str(server.process.pid), "--rate", str(RATE),
                            "--format", "raw", "--threads", "--idle", "--nonblocking",
                            "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attached
    started = time.perf_counter()
    run = load(server, path, body, clients, requests)
    seconds = time.perf_counter() - started
    time.sleep(0.2)
    spy.send_signal(signal.SIGINT)
    spy.communicate(timeout=60)
    samples = collections.Counter()
    ticks = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        name = re.sub(r"^thread \(\d+\): ", "", thread)
        if name == "MainThread":
            ticks += int(count)
            samples["event loop", part_of(frames)] += int(count)
        elif name in THREAD_PARTS and frames and not re.search(r"threading\.py|wait \(",
                                                                  frames[-1]):
            samples[thread_part(name, frames), ""] += int(count)
    # the event loop's samples, idle included, span py-spy's whole recording: ~1 s before and
    # 0.2 s after the load, so the interval is measured, not assumed
    interval = (seconds + 1.2) / ticks if ticks else 1 / RATE
    return samples, interval, len(run["latencies"])


def busy_samples(samples: collections.Counter) -> int:
    """The event loop's samples but its idle ones."""
    return sum(count for (thread, part), count in samples.items()
               if thread == "event loop" and not part.startswith("idle"))


def main() -> int:
    parser = load_arguments(__doc__, REQUESTS, 1)
    parser.add_argument("--flags", default="", help="imgcls serve flags, e.g. --no-batching")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgcls-profile-") as tmp:
        export, version, digit, body, path = served_export(args, Path(tmp))
        digit_bytes = digit.stat().st_size  # the file goes with the temporary folder
        server = Server(export, args.flags.split(), Path(tmp) / "server.log")
        try:
            load(server, path, body, 8, 200)  # warm
            results = {clients: profile(server, path, body, clients, args.requests,
                                        Path(tmp) / f"profile-{clients}.txt")
                       for clients in CLIENTS}
        finally:
            server.stop()
    print(f"\nimgcls serve {args.flags or '(batching)'}: CPU ms per REST :predict request of one "
          f"{digit_bytes}-byte PNG, by py-spy ({RATE}/s asked), {args.requests} "
          "requests per client count\n")
    rows = sorted({key for samples, _, _ in results.values() for key in samples},
                  key=lambda key: (key[0] != "event loop", key))
    header = " | ".join(f"{clients:>3} client(s)" for clients in CLIENTS)
    print(f"{'thread':<30} | {'part':<50} | {header}")
    for key in rows:
        cells = " | ".join(f"{samples[key] * interval * 1000 / answered:13.3f}"
                           for samples, interval, answered in results.values())
        print(f"{key[0]:<30} | {key[1]:<50} | {cells}")
    busy = " | ".join(f"{busy_samples(samples) * interval * 1000 / answered:13.3f}"
                      for samples, interval, answered in results.values())
    print(f"{'event loop, busy':<30} | {'(all but idle)':<50} | {busy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
