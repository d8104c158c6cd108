"""Duplicates: exact copies (same bytes) and near-duplicates (same picture re-encoded or resized).

Near-duplicates are found with a 256-bit perceptual hash (pHash: which of an image's 16 x 16
lowest DCT frequencies lie above their median), which survives re-encoding and resizing. The
common 64-bit pHash is too coarse for small images: on Fashion-MNIST's 28x28 pictures distinct
items of different classes collide at 2 bits apart, while at 256 bits distinct items stay
about twice as far apart as JPEG copies of photos at half to twice the size (bench/README.md).
Pictures with almost no detail (a blurred gradient, a clear sky) have no stable
hash, and copies of them are found only when identical. Copies are joined into groups
transitively (connected components), so a split can keep each group on one side.

Identical files and identical hashes collapse to one representative before any comparison: a
group of 10,000 copies costs 10,000 links, not 50 million pairs. The distinct hashes are then
matched by locality-sensitive hashing (``lsh``), whose candidates grow about linearly with the
images and are each checked exactly against the distance.

Small images defeat any such hash: a copy enlarged from an 8 x 8 digit has sharp block edges the
original never had, and they decide most of the bits. So a pair whose smaller image is under 16
pixels a side is compared on what that image holds: both pictures averaged down to 8 x 8, at
most ``SMALL_IMAGE_DIFFERENCE`` apart per pixel on average. bench/duplicates.py measures the
distances behind these choices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from . import lsh
from .lsh import HASH_BYTES

HASH_SIDE = 16  # 16 x 16 = 256 bits
SMALL_SIDE = 16  # images with a shorter side are compared by their 8 x 8 averages
AVERAGE_SIDE = 8
AVERAGE_BYTES = AVERAGE_SIDE * AVERAGE_SIDE
SMALL_IMAGE_DIFFERENCE = 6.0  # mean absolute difference of the 8 x 8 averages, of 255
DCT_INPUT_SIDE = 4 * HASH_SIDE
# Rows of the DCT-II matrix for the lowest frequencies: low = DCT @ pixels @ DCT.T.
DCT = np.cos(np.pi * np.outer(np.arange(HASH_SIDE), 2 * np.arange(DCT_INPUT_SIDE) + 1)
             / (2 * DCT_INPUT_SIDE))
# Bump when a change finds other groups for the same hashes: saved groups are then found again.
MATCHING_VERSION = (1, lsh.BAND_BITS, lsh.TARGET_RECALL, lsh.BAND_SEED, SMALL_IMAGE_DIFFERENCE)
# The problem category of copies filed under different classes (excluded: which label is right?).
CONFLICT = "conflicting duplicate"
__all__ = ["HASH_BYTES", "find_groups", "perceptual_hash", "small_average"]


def perceptual_hash(image: Image.Image) -> str:
    """The 256-bit pHash of a decoded image as 64 hex digits (the bits of
    ``imagehash.phash(image, hash_size=16)``, computed without its per-bit Python loops)."""
    small = image.convert("L").resize((DCT_INPUT_SIDE, DCT_INPUT_SIDE), Image.Resampling.LANCZOS)
    low = DCT @ np.asarray(small, dtype=np.float64) @ DCT.T
    return np.packbits(low > np.median(low)).tobytes().hex()


def small_average(image: Image.Image) -> str:
    """The image averaged down to 8 x 8 gray levels, as 128 hex digits."""
    average = image.convert("L").resize((AVERAGE_SIDE, AVERAGE_SIDE), Image.Resampling.BOX)
    return np.asarray(average, dtype=np.uint8).tobytes().hex()


def find_groups(images: pd.DataFrame, phash: np.ndarray, average: np.ndarray,
                max_distance: int | None, engine=None) -> tuple[np.ndarray, int]:
    """For each row of ``images`` (``sha256``, ``width`` and ``height`` columns; ``phash`` and
    ``average`` hold its hashes, row for row), the row number of the first row in its duplicate
    group, and how many candidate pairs were checked: identical files always group; with
    ``max_distance``, so do images whose hashes differ in at most that many bits, and small
    images close to another image (``small_image_pairs``). A row without copies is its own
    group. ``engine`` runs the hash matching (default: this process)."""
    rows = np.ascontiguousarray(phash).view(np.dtype((np.void, HASH_BYTES))).ravel()
    _, representatives, same_hash = np.unique(rows, return_index=True, return_inverse=True)
    same_hash = same_hash.ravel()
    # Identical files have identical hashes: only rows sharing a hash can share their bytes.
    sharing = np.flatnonzero(np.bincount(same_hash)[same_hash] > 1)
    identical = _first_of_same(pd.factorize(images["sha256"].iloc[sharing])[0])
    links = [sharing[identical]]
    checked = 0
    if max_distance is not None:
        links.append(_first_of_same(same_hash))
        pairs, checked = lsh.near_pairs(phash[representatives], max_distance, engine)
        links += [representatives[pairs], small_image_pairs(images, average)]
    return _components(len(images), np.concatenate(links)), checked


def small_image_pairs(images: pd.DataFrame, average: np.ndarray) -> np.ndarray:
    """Index pairs whose smaller image is under ``SMALL_SIDE`` pixels a side and whose 8 x 8
    averages (``average``, row for row) differ by at most ``SMALL_IMAGE_DIFFERENCE`` per pixel.
    Only images whose mean brightness is that close can be (the mean differs by no more than
    the mean difference), so each small image is compared with a window of images sorted by
    brightness, not with all."""
    small = np.flatnonzero(np.minimum(images["width"], images["height"]).to_numpy() < SMALL_SIDE)
    if not len(small):
        return np.empty((0, 2), np.int64)
    averages = average.astype(np.int16)
    brightness = averages.mean(axis=1)
    order = np.argsort(brightness, kind="stable")
    ranked = brightness[order]
    found = set()
    for i in small:
        window = order[np.searchsorted(ranked, brightness[i] - SMALL_IMAGE_DIFFERENCE):
                       np.searchsorted(ranked, brightness[i] + SMALL_IMAGE_DIFFERENCE, "right")]
        close = window[np.abs(averages[window] - averages[i]).mean(axis=1)
                       <= SMALL_IMAGE_DIFFERENCE]
        found.update((int(min(i, j)), int(max(i, j))) for j in close if j != i)
    return np.array(sorted(found), np.int64).reshape(-1, 2)


def duplicate_table(images: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``images`` that have copies, by group: path, label, whether the group is
    identical files (``exact``) or near-duplicates (``near``), and whether its labels conflict."""
    grouped = images.groupby("group")
    copies = images[grouped["path"].transform("size") > 1]
    by_group = copies.groupby("group")
    table = copies.assign(
        match=np.where(by_group["sha256"].transform("nunique") == 1, "exact", "near"),
        conflict=by_group["label"].transform("nunique") > 1)
    return table[["group", "path", "label", "match", "conflict"]].sort_values(
        ["group", "path"]).reset_index(drop=True)


def largest_first(table: pd.DataFrame) -> pd.DataFrame:
    """``duplicate_table``'s rows with each group's ``size``, the largest groups first (then by
    group number), members by path."""
    sized = table.assign(size=table.groupby("group")["path"].transform("size"))
    columns = ["group", "size", "path", "label", "match", "conflict"]
    return sized.sort_values(["size", "group", "path"], ascending=[False, True, True])[
        columns].reset_index(drop=True)


def _first_of_same(codes: np.ndarray) -> np.ndarray:
    """Pairs linking each row to the first row with the same code: one link per row, however
    many rows share a code."""
    first = np.unique(codes, return_index=True)[1][codes]
    rows = np.flatnonzero(first != np.arange(len(codes)))
    return np.stack([first[rows], rows], axis=1)


def _components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``pairs``, each labelled by its smallest index."""
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])),
                       shape=(count, count))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max(initial=-1) + 1, count, np.int64)
    np.minimum.at(smallest, component, np.arange(count))
    return smallest[component]
