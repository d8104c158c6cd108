import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.data import duplicates
from imgcls_utils.data_utils import scan_image_folder
from tests.sample_files import write_copy, write_photo


def random_hashes(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, duplicates.HASH_BYTES), np.uint8)


def flip_bits(hash_bytes: np.ndarray, count: int, seed: int) -> np.ndarray:
    bits = np.unpackbits(hash_bytes)
    bits[np.random.default_rng(seed).choice(bits.size, count, replace=False)] ^= 1
    return np.packbits(bits)


def test_groups_are_transitive_and_identical_files_always_group():
    base = random_hashes(1, seed=2)[0]
    step = flip_bits(base, 8, seed=3)
    phash = np.stack([base, step, flip_bits(step, 8, seed=4), *random_hashes(2, seed=5)])
    phash[4] = phash[0]  # row 4 has row 0's bytes
    images = pd.DataFrame({"sha256": ["a", "b", "c", "d", "a"], "width": 64, "height": 64})
    average = np.zeros((5, duplicates.AVERAGE_BYTES), np.uint8)
    # 0~1 and 1~2 are 8 bits apart, 0 and 2 are 16: one group through 1; row 4 has 0's bytes.
    assert duplicates.find_groups(images, phash, average, 10)[0].tolist() == [0, 0, 0, 3, 0]
    assert duplicates.find_groups(images, phash, average, None)[0].tolist() == [0, 1, 2, 3, 0]


def test_ten_thousand_identical_images_are_one_group_without_comparing_pairs():
    count = 10_000
    images = pd.DataFrame({"sha256": ["same"] * count, "width": 64, "height": 64})
    phash = np.repeat(random_hashes(1, seed=6), count, axis=0)
    groups, checked = duplicates.find_groups(images, phash, np.zeros((count, 64), np.uint8), 16)
    assert (groups == 0).all() and checked == 0


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


def test_small_image_pairs_are_exactly_the_brute_force_ones():
    rng = np.random.default_rng(7)
    averages = rng.integers(0, 256, (400, 64)).astype(np.uint8)
    averages[200:220] = np.clip(averages[:20] + rng.integers(-9, 10, (20, 64)), 0, 255)
    sides = rng.choice([8, 12, 40, 300], 400)
    images = pd.DataFrame({"width": sides, "height": sides})
    difference = np.abs(averages[:, None].astype(int) - averages[None]).mean(axis=2)
    brute_force = [(int(i), int(j)) for i, j in zip(*np.nonzero(
        difference <= duplicates.SMALL_IMAGE_DIFFERENCE)) if i < j and min(sides[i], sides[j]) < 16]
    found = duplicates.small_image_pairs(images, averages)
    assert found.tolist() == [list(pair) for pair in brute_force] and len(brute_force) >= 5


def test_enlarged_copies_of_a_small_image_are_found_even_in_another_class(tmp_path, make_config):
    """An 8 x 8 digit enlarged (nearest neighbour) to 40, 55 and 80 pixels, as PNG and JPEG, one
    copy filed under another class: all one group, so the conflict is found and excluded."""
    digits = load_digits()
    folder = tmp_path / "digits"
    for index in range(40):
        label = str(digits.target[index])
        pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / label / f"{index:02d}.png")
    original = Image.open(folder / str(digits.target[0]) / "00.png")
    for side in (40, 55, 80):
        for fmt in ("png", "jpg"):
            original.resize((side, side), Image.Resampling.NEAREST).save(
                folder / str(digits.target[0]) / f"00_{side}.{fmt}")
    original.resize((55, 55), Image.Resampling.NEAREST).save(folder / "7" / "mislabelled.jpg")
    scan = scan_image_folder(folder, make_config(**{"data.min_image_size": [8, 8]}).data)
    groups = scan.duplicates.groupby("group")["path"].apply(sorted).tolist()
    assert groups == [sorted([f"{digits.target[0]}/00.png", "7/mislabelled.jpg",
                              *[f"{digits.target[0]}/00_{s}.{f}" for s in (40, 55, 80)
                                for f in ("png", "jpg")]])]
    assert scan.duplicates["conflict"].all() and len(scan.images) == 39
