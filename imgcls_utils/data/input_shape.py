"""``data.image_size: auto`` and ``data.channels: auto``: the input shape chosen from the images.

Why: a fixed 32 x 32 x 1 upsampled the 8 x 8 digits 16-fold (16 times the convolutions' work
for no extra information) and turned colour icons gray, throwing away what tells some of their
classes apart (the measurements are in bench/README.md).

- Size: the median height and width of the usable images, shrunk (aspect ratio kept) so that
  the longer side is at most ``MAX_SIDE`` (a CPU-sized default: larger inputs are for an explicit
  setting, or the transfer family, which resizes inside the model), enlarged so that the shorter
  side is at least ``MIN_SIDE`` (room for two 2 x 2 poolings and the augmentation's rotations).
- Channels: 3 when at least ``COLOUR_SHARE`` of a sample of the images have colour, decoded as
  training decodes them (so a gray picture saved as RGB stays gray), else 1.

The choice depends on the images alone (not the seed or the split), so every run on the same
folder resolves it the same way; the resolved values are what Processed_Data, the model folder's
config and every prediction use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..config import Section
from .images import load_image, pixel_limit_checked_by_caller

AUTO = "auto"
MIN_SIDE, MAX_SIDE = 16, 64
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
COLOUR_SAMPLE = 256        # images decoded to decide the channels
COLOUR_LEVELS = 24         # a pixel has colour when its red, green and blue differ by more
COLOUR_PIXELS = 0.01       # an image has colour when more than this share of its pixels do
COLOUR_SHARE = 0.1         # the data has colour when at least this share of the images do
COLOUR_SIDE = 32           # the side the sample is decoded at


def choose_image_size(images: pd.DataFrame) -> tuple[int, int]:
    """``[height, width]`` for images with these ``height`` and ``width`` columns: their
    medians, scaled into ``MIN_SIDE``-``MAX_SIDE``."""
    height, width = float(images["height"].median()), float(images["width"].median())
    scale = min(1.0, MAX_SIDE / max(height, width))
    scale = max(scale, MIN_SIDE / min(height, width))
    return tuple(int(min(MAX_SIDE, max(MIN_SIDE, round(side * scale))))
                 for side in (height, width))


def has_colour(folder: Path, images: pd.DataFrame) -> bool:
    """Whether at least ``COLOUR_SHARE`` of the images (paths relative to ``folder``, with their
    ``mode``) have colour: those in a gray mode have none; of the others, an evenly spaced sample
    (by path) is decoded in RGB as training decodes it."""
    if images.empty:
        return False
    rows = images.sort_values("path")
    step = max(1, len(rows) // COLOUR_SAMPLE)
    sample = rows.iloc[::step].head(COLOUR_SAMPLE)
    candidates = sample.loc[~sample["mode"].isin(GRAY_MODES), "path"]
    with pixel_limit_checked_by_caller():  # the scan checked every image's pixel count
        colourful = sum(_is_colourful(load_image(folder / path, (COLOUR_SIDE,) * 2, 3))
                        for path in candidates)
    return colourful >= COLOUR_SHARE * len(sample)


def _is_colourful(pixels: np.ndarray) -> bool:
    spread = pixels.max(axis=-1).astype(int) - pixels.min(axis=-1)
    return float((spread > COLOUR_LEVELS).mean()) > COLOUR_PIXELS


class ScannedImages(Protocol):
    """What the choice reads of a scan (``scan.ScanResult``, which imports this module)."""

    images: pd.DataFrame
    has_colour: bool


def resolve_input_shape(data: Section, scan: ScannedImages) -> Section:
    """``data`` with ``image_size`` and ``channels`` chosen from the usable images of ``scan``
    where they are ``auto``."""
    values = dict(data)
    if values["image_size"] == AUTO:
        values["image_size"] = list(choose_image_size(scan.images))
    if values["channels"] == AUTO:
        values["channels"] = 3 if scan.has_colour else 1
    return Section("data", values)
