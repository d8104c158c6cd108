"""Candidate pairs of near-identical hashes by locality-sensitive hashing, each checked exactly.

Comparing every pair of N hashes costs N^2 / 2; splitting the 256 bits into ``distance + 1``
blocks (two hashes that close agree on one block) still leaves blocks of 15 bits, shared by
chance by N^2 / 2^15 pairs. Bit-sampling LSH instead keys each hash by bands of ``BAND_BITS``
bits drawn at random (seeded: the same bands on every run and machine): two hashes ``d`` bits
apart agree on a band with probability C(256 - d, k) / C(256, k), unrelated ones (about 128
bits apart) almost never, so candidates grow with the number of near pairs, about linearly.
``band_count`` takes enough bands that a pair at the largest distance is a candidate with
probability ``TARGET_RECALL``; closer pairs are found more surely still. Every candidate is
checked against the distance, so no pair beyond it is ever reported.

Hashes that share a band key are checked in full when there are a few of them; in a large
bucket each hash is first compared with a leader, and only hashes on different sides of it are
compared with each other: copies of one picture (a tight bucket) cost one check each. Groups are
joined transitively anyway, so this finds the same groups as checking every pair of the bucket.
Each task takes a few bands and all hashes (Ray shares them from its object store).
"""

from __future__ import annotations

import math

import numpy as np

HASH_BITS = 256
HASH_BYTES = HASH_BITS // 8
BAND_BITS = 40
TARGET_RECALL = 0.999
BANDS_PER_TASK = 8
FULL_CHECK_BUCKET = 8  # buckets up to this size check every pair at once
BAND_SEED = 20261204
CHECK_CHUNK = 1 << 20  # pairs checked at a time, bounding a task's memory
POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def band_count(max_distance: int) -> int:
    """The fewest bands that make a pair ``max_distance`` bits apart a candidate with
    probability ``TARGET_RECALL`` (one band when identical hashes are all that is sought)."""
    agree = math.comb(HASH_BITS - max_distance, BAND_BITS) / math.comb(HASH_BITS, BAND_BITS)
    if agree >= 1:
        return 1
    return math.ceil(math.log(1 - TARGET_RECALL) / math.log(1 - agree))


def bands(max_distance: int) -> np.ndarray:
    """The bit positions of each band, ``(band_count, BAND_BITS)``, the same on every run."""
    rng = np.random.default_rng(BAND_SEED)
    return np.stack([rng.choice(HASH_BITS, BAND_BITS, replace=False)
                     for _ in range(band_count(max_distance))])


def near_pairs(hashes: np.ndarray, max_distance: int, engine=None) -> tuple[np.ndarray, int]:
    """Index pairs ``(i, j)``, i < j, of distinct ``hashes`` (``(N, HASH_BYTES)`` uint8) at most
    ``max_distance`` bits apart, and the number of candidate pairs checked; ``engine`` runs the
    bands as tasks (default: this process)."""
    from .engine import Engine, batches

    positions = bands(max_distance)
    tasks = batches(range(len(positions)), BANDS_PER_TASK)
    shared = (np.ascontiguousarray(hashes), positions, max_distance)
    results = (engine or Engine()).map(band_pairs, tasks, shared)
    found = np.concatenate([pairs for pairs, _ in results] or [np.empty((0, 2), np.int64)])
    return np.unique(found, axis=0), sum(checked for _, checked in results)


def band_pairs(band_indices: list[int], shared: tuple) -> tuple[np.ndarray, int]:
    """One task: the close pairs among hashes that agree on any of these bands, and how many
    pairs were checked."""
    hashes, positions, max_distance = shared
    found, checked = [], 0
    for band in band_indices:
        for a, b in _candidates(_band_keys(hashes, positions[band]), hashes, max_distance):
            checked += len(a)
            close = _distances(hashes, a, b) <= max_distance
            found.append(np.stack([np.minimum(a, b)[close], np.maximum(a, b)[close]], axis=1))
    pairs = np.concatenate(found or [np.empty((0, 2), np.int64)]).astype(np.int64)
    return np.unique(pairs, axis=0), checked


def _band_keys(hashes: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Each hash's bits at ``bits`` (big-endian within bytes, as ``np.unpackbits``) as a key."""
    keys = np.zeros(len(hashes), np.uint64)
    for bit in bits:
        column = (hashes[:, bit // 8] >> np.uint8(7 - bit % 8)) & np.uint8(1)
        keys = (keys << np.uint64(1)) | column.astype(np.uint64)
    return keys


def _candidates(keys: np.ndarray, hashes: np.ndarray, max_distance: int):
    """Index arrays ``(a, b)`` of the pairs to check among hashes with equal keys."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    size_at = np.repeat(sizes, sizes)
    small = size_at <= FULL_CHECK_BUCKET
    for step in range(1, min(FULL_CHECK_BUCKET, len(keys))):
        same = np.flatnonzero((ordered[step:] == ordered[:-step]) & small[step:])
        for chunk in range(0, len(same), CHECK_CHUNK):
            part = same[chunk:chunk + CHECK_CHUNK]
            yield order[part], order[part + step]
    for start, size in zip(starts[sizes > FULL_CHECK_BUCKET], sizes[sizes > FULL_CHECK_BUCKET]):
        yield from _large_bucket(order[start:start + size], hashes, max_distance)


def _large_bucket(members: np.ndarray, hashes: np.ndarray, max_distance: int):
    """Leader by leader: the hashes close to the leader join it (checked once each), and only
    the pairs between those and the rest still need checking."""
    rest = members
    while len(rest) > 1:
        leader, others = rest[0], rest[1:]
        yield np.full(len(others), leader), others
        close = _distances(hashes, np.full(len(others), leader), others) <= max_distance
        joined, rest = others[close], others[~close]
        step = max(1, CHECK_CHUNK // max(1, len(rest)))
        for start in range(0, len(joined) if len(rest) else 0, step):
            block = joined[start:start + step]
            yield np.repeat(block, len(rest)), np.tile(rest, len(block))


def _distances(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits apart of the hashes of each pair ``(a[i], b[i])``."""
    return POPCOUNT[hashes[a] ^ hashes[b]].sum(axis=1, dtype=np.int64)
