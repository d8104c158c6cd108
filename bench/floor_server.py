"""The least a Python server must do to answer a TensorFlow Serving ``:predict`` over HTTP with
dynamic batching, and nothing more: the floor ``bench/serving_limit.py`` measures.

    .venv/bin/python bench/floor_server.py EXPORT_VERSION_FOLDER DIGIT_PNG

A bare ASGI app under uvicorn with uvloop and httptools (as ``imgcls serve`` runs): it reads
each request's body and does not parse it, queues the request for one batcher thread, which
takes every queued request up to 32 at a time and calls the export's ``pixels`` signature on
that many copies of one digit decoded once at start-up; each request is answered with its row as
TensorFlow Serving's JSON. No JSON parsing, base64 or image decoding, checks, logging, metrics or
version handling. Prints ``http://127.0.0.1:<port>`` once it listens.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import socket
import sys
import threading
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgcls_utils.serving.graph import CLASSES, PROBABILITIES, ExportedGraph  # noqa: E402

MAX_BATCH = 32


class FloorBatcher:
    """Queued futures, answered by one thread in model calls of up to ``MAX_BATCH`` rows."""

    def __init__(self, graph: ExportedGraph, pixels):
        self.graph, self.pixels = graph, pixels
        self.queue: collections.deque[concurrent.futures.Future] = collections.deque()
        self.ready = threading.Condition()
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        with self.ready:
            self.queue.append(future)
            self.ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                batch = [self.queue.popleft() for _ in range(min(MAX_BATCH, len(self.queue)))]
            outputs = self.graph.classify_pixels(self.pixels.repeat(len(batch), axis=0))
            for row, future in enumerate(batch):
                future.set_result(json.dumps({"predictions": [{
                    PROBABILITIES: outputs[PROBABILITIES][row].tolist(),
                    CLASSES: outputs[CLASSES][row].decode()}]}).encode())


def floor_app(batcher: FloorBatcher):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:  # the body, read and left unparsed
            more = (await receive()).get("more_body", False)
        answer = await asyncio.wrap_future(batcher.submit())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})
    return app


def main(version_folder: str, digit: str) -> None:
    graph = ExportedGraph(Path(version_folder))
    pixels = graph.decode([Path(digit).read_bytes()])
    for size in range(1, MAX_BATCH + 1):  # every batch size traced before the first request
        graph.classify_pixels(pixels.repeat(size, axis=0))
    batcher = FloorBatcher(graph, pixels)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(128)
    print(f"http://127.0.0.1:{listening.getsockname()[1]}", flush=True)
    config = uvicorn.Config(floor_app(batcher), loop="uvloop", http="httptools",
                            log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listening])


if __name__ == "__main__":
    main(*sys.argv[1:])
