"""Opening and decoding image files, the same way everywhere: scan, preprocessing and prediction.

Every decode applies the EXIF orientation, uses the first frame of animations, and converts any
mode (grayscale, RGBA, palette, CMYK, 16-bit) the same way, so an image looks identical to the
duplicate finder, to training and to ``imgcls predict``.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# What Pillow reports for those files' contents (MPO: multi-picture JPEGs from phone cameras).
SUPPORTED_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "DIB", "GIF", "WEBP", "TIFF"}
# Above this many pixels Pillow refuses to open a file at all (twice its warning threshold).
PILLOW_PIXEL_LIMIT = 2 * Image.MAX_IMAGE_PIXELS
# What a damaged file makes Pillow's decoders raise.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# Files that operating systems and NAS boxes leave behind; never data, ignored without a report.
SYSTEM_NAMES = {"Thumbs.db", "desktop.ini", "__MACOSX", "@eaDir"}


def is_hidden(name: str) -> bool:
    """Dot files and folders (``.DS_Store``, macOS ``._*`` resource forks, ``.ipynb_checkpoints``)
    and system files: never images of a dataset."""
    return name.startswith(".") or name in SYSTEM_NAMES


@contextmanager
def pixel_limit_checked_by_caller():
    """Silence Pillow's DecompressionBombWarning: the scan has already compared each image's
    header size with ``data.max_pixels`` before anything is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


class ImageTooLarge(ValueError):
    """An image with more pixels than allowed, refused from its header without decoding it."""


def too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    """Why an image of this size is refused unread, or an empty string when it is not."""
    if width * height <= max_pixels:
        return ""
    return (f"{width} x {height} = {width * height:,} pixels is over data.max_pixels = "
            f"{max_pixels:,} (possible decompression bomb): not decoded")


def load_image(path: Path, image_size: tuple[int, int], channels: int,
               max_pixels: int = PILLOW_PIXEL_LIMIT) -> np.ndarray:
    """Decode any supported image to uint8 ``(height, width, channels)``: EXIF orientation
    applied, first frame of animations, converted to grayscale or RGB, resized. An image of
    more than ``max_pixels`` is refused from its header (ImageTooLarge)."""
    height, width = image_size
    with Image.open(path) as image:
        if problem := too_many_pixels(image.width, image.height, max_pixels):
            raise ImageTooLarge(problem)
        image = _decoded(image, "L" if channels == 1 else "RGB", max(image_size))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def decode_thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    """The opened ``image`` fully decoded (so a truncated file fails here) as grayscale, shrunk
    to at most ``max_side`` pixels a side: enough for a perceptual hash, cheap for large photos."""
    thumbnail = _decoded(image, "L", max_side)
    thumbnail.thumbnail((max_side, max_side))
    return thumbnail


def _decoded(image: Image.Image, mode: str, min_side: int) -> Image.Image:
    """Decode the first frame, oriented and in ``mode``; JPEGs decode at a reduced scale when
    both sides stay at least ``min_side`` (libjpeg's DCT scaling, several times faster)."""
    image.draft(mode, (min_side, min_side))
    return _to_mode(ImageOps.exif_transpose(image), mode)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert consistently: transparency onto white, 16-bit scaled to 8-bit."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(array.max(), 1.0) if image.mode == "I" else 255.0 / 65535.0
        image = Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)
