"""Which images the exported graph can decode, and which one a batch was refused for.

The graph decodes with TensorFlow's own decoders (PNG, JPEG, GIF, BMP), which take less than
Pillow does: a format they do not read, or a file they find damaged, fails the whole batch it is
in. ``imgcls predict`` on an export and the server both check each image's header first (a
decompression bomb is never decoded), run the batch, and only when TensorFlow refuses it run the
images one by one to name the refused ones (``run_naming_refused``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..data.images import DECODE_ERRORS, pixel_limit_checked_by_caller, too_many_pixels
from ..quiet_tensorflow import tf

# What Pillow calls the formats TensorFlow's decoders (and so an exported graph) read.
GRAPH_FORMATS = {"PNG", "JPEG", "MPO", "GIF", "BMP"}
NOT_A_GRAPH_FORMAT = "not a PNG, JPEG, GIF or BMP image"


class RefusedInputs(Exception):
    """TensorFlow refused a batch: ``refused`` maps the index of each input it refuses on its
    own to the reason."""

    def __init__(self, refused: dict[int, str]):
        super().__init__("; ".join(f"input {index}: {why}" for index, why in refused.items()))
        self.refused = refused


def graph_header_problem(image: Image.Image, max_pixels: int) -> str:
    """What an opened image's header alone says the exported graph must not decode: a format
    TensorFlow does not read, or more than ``max_pixels`` pixels; an empty string if nothing."""
    if image.format not in GRAPH_FORMATS:
        return f"{NOT_A_GRAPH_FORMAT} (Pillow reads it as {image.format or 'unknown'})"
    return too_many_pixels(image.width, image.height, max_pixels)


def graph_input_problem(path: Path, max_pixels: int) -> str:
    """Why the exported graph cannot decode the file (not a PNG, JPEG, GIF or BMP; too many
    pixels; damaged), or an empty string; checked with Pillow, fully decoding the file."""
    try:
        with pixel_limit_checked_by_caller(), Image.open(path) as image:
            if problem := graph_header_problem(image, max_pixels):
                return problem
            image.load()
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        return f"not a readable image ({error})"
    return ""


def image_bytes_problem(data: bytes, max_pixels: int) -> str:
    """Why the graph must not be given these encoded bytes, judged from the header alone (so a
    decompression bomb is never decoded), or an empty string."""
    if not data:
        return f"empty image (0 bytes); {NOT_A_GRAPH_FORMAT}"
    try:
        with pixel_limit_checked_by_caller(), Image.open(io.BytesIO(data)) as image:
            return graph_header_problem(image, max_pixels)
    except Image.DecompressionBombError as error:
        return f"{error} (over data.max_pixels = {max_pixels:,}): not decoded"
    except (UnidentifiedImageError, *DECODE_ERRORS):
        return NOT_A_GRAPH_FORMAT


def run_naming_refused(run: Callable[[list], Any], inputs: list) -> Any:
    """``run(inputs)``; when TensorFlow refuses the batch, RefusedInputs naming each input that
    ``run`` refuses on its own (the first error's input when none fails alone)."""
    try:
        return run(inputs)
    except tf.errors.InvalidArgumentError as error:
        refused = _refused_alone(run, inputs) if len(inputs) > 1 else {}
        raise RefusedInputs(refused or {0: tf_message(error)}) from None


def _refused_alone(run: Callable[[list], Any], inputs: list) -> dict[int, str]:
    refused = {}
    for index, single in enumerate(inputs):
        try:
            run([single])
        except tf.errors.InvalidArgumentError as error:
            refused[index] = tf_message(error)
    return refused


def tf_message(error: Exception) -> str:
    """The line of a TensorFlow op error that says what is wrong (not where in the graph)."""
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()]
    useful = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces", "[[", "{{"))]
    return (useful or lines or ["undecodable"])[0]
