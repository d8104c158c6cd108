"""``coalescing``: concurrent decodings of a real export merged into fewer graph calls, each
caller getting exactly its own images' pixels, and a damaged image failing only its caller."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from imgcls_utils.quiet_tensorflow import tf
from imgcls_utils.serving.coalescing import Coalescer
from imgcls_utils.serving.graph import ExportedGraph

CALLERS = 12


@pytest.fixture(scope="module")
def graph(served_model) -> ExportedGraph:
    return ExportedGraph(served_model[2])


@pytest.fixture(scope="module")
def digits(served_model) -> list[bytes]:
    raw = served_model[0].path("raw_dir") / "digits"
    return [sorted((raw / str(label)).glob("*.png"))[0].read_bytes() for label in range(10)]


def decode_concurrently(coalescer: Coalescer, requests: list[list[bytes]]) -> list:
    """Each request decoded by a thread of its own, all started together: pixels or error."""
    outcomes: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def call(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = coalescer(requests[index])
        except tf.errors.InvalidArgumentError as error:
            outcomes[index] = error

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def counted(decode, calls: list):
    """``decode``, its calls' sizes noted; the first call slow, so that the others wait."""
    def run(images):
        calls.append(len(images))
        if len(calls) == 1:
            time.sleep(0.2)
        return decode(images)
    return run


def test_concurrent_calls_share_graph_calls_and_get_their_own_pixels(graph, digits):
    requests = [[digits[index % 10]] * (1 + index % 3) for index in range(CALLERS)]
    calls: list = []
    outcomes = decode_concurrently(Coalescer(counted(graph.decode, calls)), requests)
    for images, pixels in zip(requests, outcomes):
        np.testing.assert_array_equal(pixels, graph.decode(images))
    assert sum(calls) == sum(len(images) for images in requests)
    assert len(calls) < CALLERS  # merged: fewer graph calls than callers


def test_a_damaged_image_fails_only_its_own_caller(graph, digits):
    requests = [[digits[index % 10]] for index in range(CALLERS)]
    requests[5] = [digits[3], digits[1][:60]]  # a truncated PNG: TensorFlow refuses it
    calls: list = []
    outcomes = decode_concurrently(Coalescer(counted(graph.decode, calls)), requests)
    assert isinstance(outcomes[5], tf.errors.InvalidArgumentError)
    for index, (images, pixels) in enumerate(zip(requests, outcomes)):
        if index != 5:
            np.testing.assert_array_equal(pixels, graph.decode(images))
    assert max(calls) > 2  # some calls were merged before the damaged one was found
