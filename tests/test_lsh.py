import numpy as np
import pytest

from imgcls_utils.data import lsh

PLANTED_PER_DISTANCE = 200


def exhaustive_pairs(hashes: np.ndarray, max_distance: int) -> set[tuple[int, int]]:
    """What the scan compared before: every pair, exactly."""
    bits = np.unpackbits(hashes, axis=1).astype(np.int16)
    found = set()
    for i in range(len(hashes) - 1):
        distance = np.abs(bits[i + 1:] - bits[i]).sum(axis=1)
        found.update((i, i + 1 + int(j)) for j in np.flatnonzero(distance <= max_distance))
    return found


@pytest.fixture(scope="module")
def planted():
    """3,000 random hashes plus copies of some of them 1 to 16 bits apart (identical hashes are
    collapsed before matching), ``PLANTED_PER_DISTANCE`` copies per distance."""
    rng = np.random.default_rng(11)
    hashes = [rng.integers(0, 256, (3000, lsh.HASH_BYTES), np.uint8)]
    for distance in range(1, 17):
        for _ in range(PLANTED_PER_DISTANCE):
            bits = np.unpackbits(hashes[0][rng.integers(3000)])
            bits[rng.choice(lsh.HASH_BITS, distance, replace=False)] ^= 1
            hashes.append(np.packbits(bits)[None])
    return np.concatenate(hashes)


def test_recall_against_the_exhaustive_search_and_no_pair_beyond_the_distance(planted):
    expected = exhaustive_pairs(planted, 16)
    pairs, checked = lsh.near_pairs(planted, 16)
    found = set(map(tuple, pairs.tolist()))
    assert len(expected) >= 16 * PLANTED_PER_DISTANCE
    assert len(found & expected) / len(expected) >= 0.995
    assert found <= expected  # every candidate was checked: none beyond the distance
    # At most one check per band for each close pair: unrelated hashes almost never share a band.
    assert checked <= 1.01 * lsh.band_count(16) * len(expected)


def test_closer_distances_need_fewer_bands_and_the_same_bands_every_time():
    assert [lsh.band_count(d) for d in (0, 4, 16)] == sorted(lsh.band_count(d) for d in (0, 4, 16))
    assert lsh.band_count(0) == 1
    np.testing.assert_array_equal(lsh.bands(16), lsh.bands(16))


def test_a_bucket_of_copies_costs_a_check_per_copy_not_per_pair():
    """2,000 distinct hashes within 2 bits of one picture share every band key: leader by
    leader, each is checked against the leader, not against the other 1,999."""
    rng = np.random.default_rng(3)
    base = np.unpackbits(rng.integers(0, 256, lsh.HASH_BYTES, np.uint8))
    copies = np.tile(base, (2000, 1))
    for row in copies:
        row[rng.choice(lsh.HASH_BITS, 2, replace=False)] ^= 1
    hashes = np.unique(np.packbits(copies, axis=1), axis=0)
    pairs, checked = lsh.near_pairs(hashes, 4)
    assert checked <= 2 * len(hashes) * lsh.band_count(4)  # all pairs: 2,000,000 per band
    assert len(pairs) >= len(hashes) - 1  # enough to join them all
