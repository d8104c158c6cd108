import numpy as np
import pandas as pd

from imgcls_utils import duplicates
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.data_utils import scan_image_folder
from tests.sample_files import write_copy, write_photo


def random_hashes(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, duplicates.HASH_BYTES), np.uint8)


def flip_bits(hash_bytes: np.ndarray, count: int, seed: int) -> np.ndarray:
    bits = np.unpackbits(hash_bytes)
    bits[np.random.default_rng(seed).choice(bits.size, count, replace=False)] ^= 1
    return np.packbits(bits)


def test_near_pairs_finds_exactly_the_pairs_within_the_distance():
    hashes = random_hashes(300, seed=1)
    for i, flips in enumerate([0, 1, 5, 11, 12, 13, 20, 40]):  # plant copies at known distances
        hashes[200 + i] = flip_bits(hashes[i], flips, seed=i)
    as_hex = [h.tobytes().hex() for h in hashes]
    distance = np.unpackbits(hashes[:, None] ^ hashes[None], axis=2).sum(axis=2)
    for max_distance in (0, 12):
        brute_force = [(int(i), int(j)) for i, j in zip(*np.nonzero(distance <= max_distance))
                       if i < j]
        assert duplicates.near_pairs(as_hex, max_distance) == brute_force
    assert len(duplicates.near_pairs(as_hex, 12)) == 5


def test_groups_are_transitive_and_identical_files_always_group():
    base = random_hashes(1, seed=2)[0]
    step = flip_bits(base, 8, seed=3)
    images = pd.DataFrame({
        "sha256": ["a", "b", "c", "d", "a"],
        "phash": [h.tobytes().hex() for h in
                  (base, step, flip_bits(step, 8, seed=4), *random_hashes(2, seed=5))],
    })
    # 0~1 and 1~2 are 8 bits apart, 0 and 2 are 16: one group through 1; row 4 has 0's bytes.
    assert duplicates.find_groups(images, 10).tolist() == [0, 0, 0, 3, 0]
    assert duplicates.find_groups(images, None).tolist() == [0, 1, 2, 3, 0]


def test_a_resized_jpeg_copy_in_another_class_is_found_as_a_conflict(tmp_path, project,
                                                                     make_config):
    folder = tmp_path / "images"
    for c, label in enumerate(("cat", "dog")):
        for i in range(4):
            write_photo(folder / label / f"{i}.png", seed=10 * c + i)
    write_copy(folder / "cat" / "2.png", folder / "dog" / "copy.jpg", scale=1.6)
    scan = scan_image_folder(folder, make_config().data)
    assert scan.duplicates[["path", "label", "match", "conflict"]].values.tolist() == [
        ["cat/2.png", "cat", "near", True], ["dog/copy.jpg", "dog", "near", True]]
    assert len(scan.images) == 7
    exact_only_config = load_config(project / CONFIG_RELATIVE_PATH,
                                    set_options=["data.near_duplicate_distance=none"])
    exact_only = scan_image_folder(folder, exact_only_config.data)
    assert exact_only.duplicates.empty and len(exact_only.images) == 9
