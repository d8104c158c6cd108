"""Dynamic batching: the images of concurrent requests share model calls.

Each request is admitted first (its images count against ``serve.max_queued_images``: 429 when
full), then its images are checked and decoded on their own and queued; one worker thread runs
the ``pixels`` signature on up to ``serve.max_batch_size`` queued images of one version at a
time and hands each request its rows back.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from .monitoring import Metrics
from .rest_api import InvalidArgument, ResourceExhausted, Unavailable
from .settings import ServeSettings
from .versions import ServedVersion


@dataclass
class _Queued:
    version: ServedVersion
    pixels: np.ndarray
    future: concurrent.futures.Future


@dataclass
class Ticket:
    """One admitted request: its images count against ``serve.max_queued_images`` until it
    is answered; ``queued`` once it has left decoding for the model."""

    images: int
    queued: bool = False


class Batcher:
    """Dynamic batching: requests' decoded images are queued; one worker thread takes up to
    ``max_batch_size`` images of the same version at a time, waiting up to
    ``batch_timeout_ms`` for more only while other admitted requests are still being decoded
    (a lone client never waits), runs one model call and splits its rows back. With
    ``max_batch_size`` 1 each request is one model call of its own, in a worker thread."""

    def __init__(self, settings: ServeSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self._queue: collections.deque[_Queued] = collections.deque()
        self._condition = threading.Condition()
        self._admitted = 0  # images of requests admitted and not yet answered
        self._arriving = 0  # admitted requests not yet queued (being checked and decoded)
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.batching:
            self._thread = threading.Thread(target=self._work, name="imgcls-batcher",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        if self._thread:
            self._thread.join(timeout=30)

    @contextmanager
    def admit(self, images: int):
        """Room for a request of ``images`` images, or 429 when the queue is full."""
        limit = self.settings.max_queued_images
        if images > limit:
            raise InvalidArgument(f"{images} images in one request is over "
                                  f"serve.max_queued_images = {limit}; send fewer per request")
        with self._condition:
            if self._admitted + images > limit:
                self.metrics.rejected.inc()
                raise ResourceExhausted(
                    f"the server is overloaded: {self._admitted} images are waiting "
                    f"(serve.max_queued_images = {limit}); retry later")
            self._admitted += images
            self._arriving += 1
            self.metrics.admitted.set(self._admitted)
        ticket = Ticket(images)
        try:
            yield ticket
        finally:
            with self._condition:
                self._admitted -= images
                if not ticket.queued:
                    self._arriving -= 1
                self.metrics.admitted.set(self._admitted)
                self._condition.notify_all()

    async def classify(self, ticket: Ticket, version: ServedVersion,
                       pixels: np.ndarray) -> dict[str, np.ndarray]:
        if not self.settings.batching:
            ticket.queued = True
            with self._condition:
                self._arriving -= 1
            self.metrics.batch_size.observe(len(pixels))
            return await run_in_threadpool(version.classify, pixels)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            if self._stopped:
                raise Unavailable("the server is shutting down")
            self._queue.append(_Queued(version, pixels, future))
            ticket.queued = True
            self._arriving -= 1
            self._condition.notify_all()
        return await asyncio.wrap_future(future)

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopped:
                    self._condition.wait()
                if not self._queue:
                    return
                batch = self._collect()
            self._run(batch)

    def _collect(self) -> list[_Queued]:
        """The next batch (called holding the condition): the oldest request, then more of the
        same version while they fit, waiting for those still being decoded until the timeout."""
        first = self._queue.popleft()
        batch, size = [first], len(first.pixels)
        deadline = time.monotonic() + self.settings.batch_timeout_ms / 1000
        while size < self.settings.max_batch_size:
            if self._queue:
                following = self._queue[0]
                if (following.version is not first.version
                        or size + len(following.pixels) > self.settings.max_batch_size):
                    break
                batch.append(self._queue.popleft())
                size += len(following.pixels)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._arriving or self._stopped:
                break
            self._condition.wait(remaining)
        return batch

    def _run(self, batch: list[_Queued]) -> None:
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            pixels = np.concatenate([item.pixels for item in batch])
            self.metrics.batch_size.observe(len(pixels))
            outputs = batch[0].version.classify(pixels)
        except Exception as error:  # each request answers it (500), the worker goes on
            for item in batch:
                item.future.set_exception(error)
            return
        start = 0
        for item in batch:
            end = start + len(item.pixels)
            item.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end
