"""Concurrent decodings of one version merged into one call of its decoding graph.

Without batching (``serve.max_batch_size: 1``; with it, the batcher decodes each batch in one
call), each request's images are decoded off the event loop, in a worker thread of their own,
and a call of the export's decoding graph has a fixed cost, more than decoding a small image
takes: under load, decoding was the largest part of a request's CPU
(``bench/profile_serving.py``).
``Coalescer`` lets one caller decode, in one call, the images of every caller waiting
meanwhile, and hands each its own rows back; the graph decodes each image on its own
(``tf.map_fn``), so the pixels are those of separate calls. When the merged call fails
(TensorFlow refuses a damaged image), each caller's images are decoded again on their own, so
that a bad image fails only its own request.
"""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from collections.abc import Callable

import numpy as np


class Coalescer:
    """``coalescer(images)`` is ``decode(images)``, merged with the calls other threads make
    meanwhile: one caller at a time decodes every call waiting (its own included), then the
    next caller still waiting does the same, so that no caller decodes for others for long."""

    def __init__(self, decode: Callable[[list[bytes]], np.ndarray]):
        self.decode = decode
        self._condition = threading.Condition()
        self._waiting: list[tuple[list[bytes], concurrent.futures.Future]] = []
        self._running = False

    def __call__(self, images: list[bytes]) -> np.ndarray:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            self._waiting.append((images, future))
            while not future.done() and self._running:
                self._condition.wait()
            if future.done():
                return future.result()
            self._running = True
            calls, self._waiting = self._waiting, []
        try:
            self._decode_merged(calls)
        finally:
            with self._condition:
                self._running = False
                self._condition.notify_all()
        return future.result()

    def _decode_merged(self, calls: list[tuple[list[bytes], concurrent.futures.Future]]) -> None:
        try:
            pixels = self.decode([image for images, _ in calls for image in images])
        except Exception as error:
            if len(calls) == 1:
                calls[0][1].set_exception(error)
                return
            for images, future in calls:  # each caller gets its own images' outcome
                _settle(future, self.decode, images)
            return
        start = 0
        for images, future in calls:
            future.set_result(pixels[start:start + len(images)])
            start += len(images)


def _settle(future: concurrent.futures.Future, decode, images: list[bytes]) -> None:
    try:
        future.set_result(decode(images))
    except Exception as error:  # raised again in the caller's own thread
        future.set_exception(error)


_COALESCERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CREATED = threading.Lock()


def coalescer_of(version) -> Coalescer:
    """The one ``Coalescer`` of a served version's decoding (dropped with the version: it
    holds the version weakly)."""
    with _CREATED:
        if version not in _COALESCERS:
            held = weakref.ref(version)
            _COALESCERS[version] = Coalescer(lambda images: held().decode(images))
        return _COALESCERS[version]
