"""Which images the exported graph decodes as training does, and how the others are decoded.

The graph decodes with TensorFlow's own decoders (PNG, JPEG, GIF, BMP), which take less than
Pillow does: a format they do not read, or a file they find damaged, fails the whole batch it is
in, and a few images they decode otherwise than training (``NOT_REPRODUCED``). ``imgcls predict``
on an export and the server both check each image's header first (a decompression bomb is never
decoded), let the graph decode what it reproduces, and decode the rest with training's own
decoding (``images.load_image``): an image training reads is answered as training reads it.
When TensorFlow refuses a batch, the images are run one by one to name the refused ones
(``run_naming_refused``), which training's decoding then tries.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import (DECODE_ERRORS, load_image, pixel_limit_checked_by_caller,
                           too_many_pixels)
from ..quiet_tensorflow import tf

# What Pillow calls the formats TensorFlow's decoders (and so an exported graph) read.
GRAPH_FORMATS = {"PNG", "JPEG", "MPO", "GIF", "BMP"}
NOT_A_GRAPH_FORMAT = "not a PNG, JPEG, GIF or BMP image"
ORIENTATION = 0x0112  # the EXIF tag saying how to turn the stored pixels for display
# What the graph alone decodes otherwise than training does: imgcls serve and predict decode
# these as training does; export writes them into imgcls.json for servers that run the graph
# alone (TensorFlow Serving).
NOT_REPRODUCED = {
    "cmyk_jpeg": "CMYK (and YCCK) JPEGs, at 1 channel: refused by the graph (libjpeg cannot "
                 "convert them to grayscale: 'Unsupported color conversion request')",
    "exif_orientation": "EXIF orientation: the graph decodes the pixels as stored, not turned",
    "gif_transparency": "transparency in GIFs: the graph keeps the transparent pixels' colour "
                        "where training puts white",
}


class RefusedInputs(Exception):
    """TensorFlow refused a batch: ``refused`` maps the index of each input it refuses on its
    own to the reason."""

    def __init__(self, refused: dict[int, str]):
        super().__init__("; ".join(f"input {index}: {why}" for index, why in refused.items()))
        self.refused = refused


def not_reproduced(image: Image.Image, channels: int) -> str:
    """The ``NOT_REPRODUCED`` key an opened image of a graph format falls under, from its
    header alone, or an empty string when the graph decodes it as training does."""
    if image.format in ("JPEG", "MPO") and image.mode == "CMYK" and channels == 1:
        return "cmyk_jpeg"
    if image.format == "GIF" and "transparency" in image.info:
        return "gif_transparency"
    # A PNG's EXIF is in its header only when its eXIf chunk comes before the pixels, as
    # Pillow and cameras write it; reading a later one would mean decoding the image.
    has_exif = image.format != "PNG" or "exif" in image.info
    if has_exif and image.getexif().get(ORIENTATION, 1) != 1:
        return "exif_orientation"
    return ""


def not_reproduced_inputs(channels: int) -> dict[str, str]:
    """``NOT_REPRODUCED`` for a model of ``channels`` channels."""
    return {case: why for case, why in NOT_REPRODUCED.items()
            if case != "cmyk_jpeg" or channels == 1}


def file_not_reproduced(path: Path, channels: int) -> str:
    """``not_reproduced`` of an image file (readable: see ``graph_input_problem``)."""
    with pixel_limit_checked_by_caller(), Image.open(path) as image:
        return not_reproduced(image, channels)


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
    return _header(data, max_pixels, channels=0)[0]


def _header(data: bytes, max_pixels: int, channels: int) -> tuple[str, str]:
    """``(why the image is refused, which NOT_REPRODUCED case it is)`` from its header."""
    if not data:
        return f"empty image (0 bytes); {NOT_A_GRAPH_FORMAT}", ""
    try:
        with pixel_limit_checked_by_caller(), Image.open(io.BytesIO(data)) as image:
            problem = graph_header_problem(image, max_pixels)
            return problem, "" if problem else not_reproduced(image, channels)
    except Image.DecompressionBombError as error:
        return f"{error} (over data.max_pixels = {max_pixels:,}): not decoded", ""
    except (UnidentifiedImageError, *DECODE_ERRORS):
        return NOT_A_GRAPH_FORMAT, ""


def decode_as_training(images: list[bytes], graph_decode: Callable[[list[bytes]], np.ndarray],
                       info: dict) -> list[np.ndarray | str]:
    """Each encoded image as float32 ``(H, W, C)`` pixels 0-255 decoded as training decodes it,
    or why it cannot be: by ``graph_decode`` (the export's own decoding) where that reproduces
    training's, by training's decoding where it does not or the graph refuses the image.
    ``info``: the export's imgcls.json (image size, channels, pixel limit)."""
    headers = [_header(data, info["max_pixels"], info["channels"]) for data in images]
    decoded: list = [problem or None for problem, _ in headers]
    by_graph = {index: data for index, (data, (problem, case)) in
                enumerate(zip(images, headers)) if not problem and not case}
    pixels, refused = graph_decoded(graph_decode, by_graph)
    for index, value in pixels.items():
        decoded[index] = value
    for index, (problem, case) in enumerate(headers):
        if case or index in refused:
            decoded[index] = _decoded_by_training(images[index], info, refused.get(index, ""))
    return decoded


def graph_decoded(graph_decode, images: dict[int, bytes]) -> tuple[dict, dict[int, str]]:
    """``graph_decode`` on ``{index: encoded image}``: ``({index: pixels}, {index: why the graph
    refused it})``, a refused image never failing the others."""
    if not images:
        return {}, {}
    indices = list(images)
    try:
        return dict(zip(indices, run_naming_refused(graph_decode, list(images.values())))), {}
    except RefusedInputs as refusal:
        refused = {indices[position]: why for position, why in refusal.refused.items()}
        taken = [index for index in indices if index not in refused]
        pixels = graph_decode([images[index] for index in taken]) if taken else []
        return dict(zip(taken, pixels)), refused


def _decoded_by_training(data: bytes, info: dict, graph_refusal: str) -> np.ndarray | str:
    try:
        with pixel_limit_checked_by_caller():
            return load_image(io.BytesIO(data), tuple(info["image_size"]), info["channels"],
                              info["max_pixels"]).astype(np.float32)
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        return f"cannot decode the image: {graph_refusal or error}"


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
