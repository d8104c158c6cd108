"""Dynamic batching: the images of concurrent requests share model calls.

Each request is admitted first (its images count against ``serve.max_queued_images``: 429 when
full), then queued; one worker thread takes up to ``serve.max_batch_size`` queued images of one
version at a time, decodes the encoded ones of them all in one call of the export's decoding
(a bad image fails its own request only), runs the ``pixels`` signature on the batch and hands
each request its rows back. Decoding in the batcher's own thread spares each request a hand-off
to a worker thread and the graph a call per request (``bench/serving.py``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from .coalescing import coalescer_of
from .graph_inputs import decode_as_training
from .monitoring import Metrics
from .rest_api import InvalidArgument, ResourceExhausted, Unavailable
from .settings import ServeSettings
from .versions import ServedVersion


@dataclass
class _Queued:
    """A queued request: its decoded ``pixels``, or its encoded ``images`` still to decode
    (``where(i)`` names image i in an error)."""

    version: ServedVersion
    future: concurrent.futures.Future
    pixels: np.ndarray | None = None
    images: list[bytes] | None = None
    where: Callable[[int], str] | None = None

    @property
    def size(self) -> int:
        return len(self.images) if self.pixels is None else len(self.pixels)


@dataclass
class Ticket:
    """One admitted request: its images count against ``serve.max_queued_images`` until it
    is answered; ``queued`` once it has left decoding for the model."""

    images: int
    queued: bool = False


class Batcher:
    """Dynamic batching: requests' images (encoded, or decoded pixels) are queued; one worker
    thread takes up to ``max_batch_size`` images of the same version at a time, waiting up to
    ``batch_timeout_ms`` for more only while other admitted requests are still on their way to
    the queue (a lone client never waits), decodes them, runs one model call and splits its
    rows back. With ``max_batch_size`` 1 each request is decoded, then classified, on its own in
    worker threads."""

    def __init__(self, settings: ServeSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self._queue: collections.deque[_Queued] = collections.deque()
        self._condition = threading.Condition()
        self._admitted = 0  # images of requests admitted and not yet answered
        self._arriving = 0  # admitted requests not yet queued
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
        """The outputs of the model for decoded float32 ``pixels``."""
        if not self.settings.batching:
            return await self._unbatched(ticket, version, pixels)
        return await self._queued(ticket, _Queued(version, concurrent.futures.Future(), pixels))

    async def classify_encoded(self, ticket: Ticket, version: ServedVersion, images: list[bytes],
                               where: Callable[[int], str]) -> dict[str, np.ndarray]:
        """The outputs of the model for encoded ``images``, decoded as training decodes them; a
        bad one is a 400 naming it (``where(i)``)."""
        if not self.settings.batching:
            pixels = await run_in_threadpool(decode_images, version, images, where)
            return await self._unbatched(ticket, version, pixels)
        return await self._queued(ticket, _Queued(version, concurrent.futures.Future(),
                                                  images=images, where=where))

    async def _unbatched(self, ticket: Ticket, version: ServedVersion, pixels: np.ndarray):
        """A model call of the request's own, in a worker thread (``max_batch_size`` 1)."""
        ticket.queued = True
        with self._condition:
            self._arriving -= 1
        self.metrics.batch_size.observe(len(pixels))
        return await run_in_threadpool(version.classify, pixels)

    async def _queued(self, ticket: Ticket, item: _Queued) -> dict[str, np.ndarray]:
        with self._condition:
            if self._stopped:
                raise Unavailable("the server is shutting down")
            self._queue.append(item)
            ticket.queued = True
            self._arriving -= 1
            self._condition.notify_all()
        return await asyncio.wrap_future(item.future)

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
        same version while they fit, waiting for those still arriving until the timeout."""
        first = self._queue.popleft()
        batch, size = [first], first.size
        deadline = time.monotonic() + self.settings.batch_timeout_ms / 1000
        while size < self.settings.max_batch_size:
            if self._queue:
                following = self._queue[0]
                if (following.version is not first.version
                        or size + following.size > self.settings.max_batch_size):
                    break
                batch.append(self._queue.popleft())
                size += following.size
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._arriving or self._stopped:
                break
            self._condition.wait(remaining)
        return batch

    def _run(self, batch: list[_Queued]) -> None:
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        try:
            batch = _decoded(batch)
            if not batch:
                return
            pixels = np.concatenate([item.pixels for item in batch])
            self.metrics.batch_size.observe(len(pixels))
            outputs = batch[0].version.classify(pixels)
        except Exception as error:  # each request answers it (500), the worker goes on
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        start = 0
        for item in batch:
            end = start + len(item.pixels)
            item.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end


def _decoded(batch: list[_Queued]) -> list[_Queued]:
    """The batch with every request's encoded images decoded in one call of its version's
    decoding; a request with an image that cannot be decoded is answered with its 400 and left
    out."""
    encoded = [item for item in batch if item.pixels is None]
    if not encoded:
        return batch
    version = encoded[0].version
    decoded = decode_as_training([image for item in encoded for image in item.images],
                                 version.decode, version.exported.info)
    start = 0
    for item in encoded:
        rows, start = decoded[start:start + len(item.images)], start + len(item.images)
        try:
            item.pixels = request_pixels(rows, item.where)
        except InvalidArgument as error:
            item.future.set_exception(error)
    return [item for item in batch if not item.future.done()]


def decode_images(version: ServedVersion, images: list[bytes], where) -> np.ndarray:
    """One request's images decoded as training decodes them (``graph_inputs.
    decode_as_training``; concurrent requests' share calls of the graph: ``coalescing``)."""
    return request_pixels(decode_as_training(images, coalescer_of(version),
                                             version.exported.info), where)


def request_pixels(decoded: list[np.ndarray | str], where) -> np.ndarray:
    """A request's decoded images stacked; the first that could not be decoded is a 400
    naming it and why (refused from its header, or damaged)."""
    for index, pixels in enumerate(decoded):
        if isinstance(pixels, str):
            raise InvalidArgument(f"{where(index)}: {pixels}")
    return np.stack(decoded)
