"""Duplicates: exact copies (same bytes) and near-duplicates (same picture re-encoded or resized).

Near-duplicates are found with a 256-bit perceptual hash (pHash: which of an image's 16 x 16
lowest DCT frequencies lie above their median), which survives re-encoding and resizing. The
common 64-bit pHash is too coarse for small images: on Fashion-MNIST's 28x28 pictures distinct
items of different classes collide at 2 bits apart, while at 256 bits distinct items stay
about twice as far apart as JPEG copies of photos at half to twice the size (bench/README.md).
Pictures with almost no detail (a blurred gradient, a clear sky) have no stable
hash, and copies of them are found only when identical. Copies are joined into groups
transitively (union-find), so a split can keep each group on one side.

Small images defeat any such hash: a copy enlarged from an 8 x 8 digit has sharp block edges the
original never had, and they decide most of the bits. So a pair whose smaller image is under 16
pixels a side is compared on what that image holds: both pictures averaged down to 8 x 8, at
most ``SMALL_IMAGE_DIFFERENCE`` apart per pixel on average. bench/duplicates.py measures the
distances behind these choices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from PIL import Image

HASH_SIDE = 16  # 16 x 16 = 256 bits
HASH_BYTES = HASH_SIDE * HASH_SIDE // 8
SMALL_SIDE = 16  # images with a shorter side are compared by their 8 x 8 averages
AVERAGE_SIDE = 8
SMALL_IMAGE_DIFFERENCE = 6.0  # mean absolute difference of the 8 x 8 averages, of 255
DCT_INPUT_SIDE = 4 * HASH_SIDE
# Rows of the DCT-II matrix for the lowest frequencies: low = DCT @ pixels @ DCT.T.
DCT = np.cos(np.pi * np.outer(np.arange(HASH_SIDE), 2 * np.arange(DCT_INPUT_SIDE) + 1)
             / (2 * DCT_INPUT_SIDE))
# The problem category of copies filed under different classes (excluded: which label is right?).
CONFLICT = "conflicting duplicate"
POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)


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


def find_groups(images: pd.DataFrame, max_distance: int | None) -> np.ndarray:
    """For each row of ``images`` (``sha256``, ``phash``, ``average``, ``width`` and ``height``
    columns), the row number of the first row in its duplicate group: identical files always
    group; with ``max_distance``, so do images whose hashes differ in at most that many bits,
    and small images close to another image (``small_image_pairs``). A row without copies is its
    own group."""
    pairs = _identical_pairs(images["sha256"])
    if max_distance is not None:
        pairs += near_pairs(images["phash"].tolist(), max_distance) + small_image_pairs(images)
    return _union_find(len(images), pairs)


def small_image_pairs(images: pd.DataFrame) -> list[tuple[int, int]]:
    """Index pairs whose smaller image is under ``SMALL_SIDE`` pixels a side and whose 8 x 8
    averages differ by at most ``SMALL_IMAGE_DIFFERENCE`` per pixel. Only images whose mean
    brightness is that close can be (the mean differs by no more than the mean difference), so
    each small image is compared with a window of images sorted by brightness, not with all."""
    small = np.flatnonzero(np.minimum(images["width"], images["height"]).to_numpy() < SMALL_SIDE)
    if not len(small):
        return []
    averages = np.stack([np.frombuffer(bytes.fromhex(h), np.uint8) for h in images["average"]])
    averages = averages.astype(np.float32)
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
    return sorted(found)


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


def near_pairs(hashes: list[str], max_distance: int) -> list[tuple[int, int]]:
    """Index pairs of hashes at most ``max_distance`` bits apart, without comparing all pairs.

    Pigeonhole: deal the 256 bits into ``max_distance + 1`` blocks; two hashes that close agree
    exactly on at least one block, so only hashes sharing some block's value are compared. Each
    block takes every (max_distance + 1)-th bit: contiguous blocks of the lowest frequencies
    are shared by thousands of similar pictures, interleaved ones are nearly unique.
    """
    packed = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8)
    packed = packed.reshape(len(hashes), HASH_BYTES)
    bits = np.unpackbits(packed, axis=1)
    found = [np.empty((0, 2), dtype=np.int64)]
    for first_bit in range(max_distance + 1):
        block = np.packbits(bits[:, first_bit::max_distance + 1], axis=1)
        for a, b in _sharing_pairs(block):
            close = POPCOUNT[packed[a] ^ packed[b]].sum(axis=1) <= max_distance
            found.append(np.stack([np.minimum(a, b)[close], np.maximum(a, b)[close]], axis=1))
    return [tuple(pair) for pair in np.unique(np.concatenate(found), axis=0).tolist()]


def _sharing_pairs(keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All index pairs whose rows of ``keys`` are equal, as arrays ``(a, b)``: in key order, equal
    rows are neighbours, so step ``d`` pairs each row with the one ``d`` places on."""
    if len(keys) < 2:
        return
    _, bucket = np.unique(keys, axis=0, return_inverse=True)
    order = np.argsort(bucket.ravel(), kind="stable")
    ordered = bucket.ravel()[order]
    for step in range(1, np.bincount(ordered).max()):
        same = np.flatnonzero(ordered[step:] == ordered[:-step])
        yield order[same], order[same + step]


def _identical_pairs(sha256: pd.Series) -> list[tuple[int, int]]:
    """Neighbours in content-hash order that have the same hash (enough to join each group)."""
    values = sha256.to_numpy()
    order = np.argsort(values, kind="stable")
    same = np.flatnonzero(values[order][1:] == values[order][:-1])
    return list(zip(order[same].tolist(), order[same + 1].tolist()))


def _union_find(count: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Connected components of ``pairs``, each labelled by its smallest index."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(count)], dtype=np.int64)
