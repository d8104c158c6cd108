import os
import shutil

import pytest

from imgcls_utils import data_utils
from imgcls_utils.data import scan as scanning
from imgcls_utils.data import scan_report
from tests.conftest import write_image
from tests.sample_files import make_messy_folder, write_photo, write_png_claiming_size


@pytest.fixture
def messy(tmp_path, make_config):
    """(folder, expected problem per skipped file, data section) for the folder of every case."""
    expected = make_messy_folder(tmp_path / "messy", tmp_path / "outside")
    return tmp_path / "messy", expected, make_config(**{"data.max_pixels": 100_000}).data


def visible_entries(folder) -> set[str]:
    """Every file and symlink under ``folder`` except dot files and Thumbs.db, unfollowed."""
    found = set()
    for directory, subdirs, files in os.walk(folder):
        links = [d for d in subdirs if os.path.islink(os.path.join(directory, d))]
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found |= {os.path.relpath(os.path.join(directory, name), folder) for name in files + links
                  if not name.startswith(".") and name != "Thumbs.db"}
    return found


def test_every_file_is_used_or_skipped_with_its_reason(messy):
    folder, expected, data = messy
    scan = data_utils.scan_image_folder(folder, data)
    assert dict(zip(scan.skipped["path"], scan.skipped["problem"])) == expected
    assert scan.skipped["reason"].str.len().min() > 10
    assert set(scan.images["path"]) | set(scan.skipped["path"]) == visible_entries(folder)
    assert len(scan.images) + len(scan.skipped) == len(visible_entries(folder))


def test_every_format_mode_and_nesting_is_usable(messy):
    folder, _, data = messy
    images = data_utils.scan_image_folder(folder, data).images.set_index("path")
    assert {"cat/upper.JPG", "cat/photo.jpeg", "dog/bitmap.bmp", "dog/modern.webp", "dog/scan.tif",
            "fox/scan.TIFF", "fox/nested/deeper/inner.png"} <= set(images.index)
    assert images.loc["fox/nested/deeper/inner.png", "label"] == "fox"
    modes = images["mode"].to_dict()
    assert (modes["dog/gray.png"], modes["dog/alpha.png"], modes["fox/palette.gif"],
            modes["fox/print.jpg"], modes["cat/sixteen_bit.png"]) == ("L", "RGBA", "P", "CMYK", "I;16")


def test_animated_images_are_used_and_reported(messy):
    folder, _, data = messy
    scan = data_utils.scan_image_folder(folder, data)
    assert scan_report.animated_images(scan)["path"].tolist() == ["fox/animated.gif"]
    assert "fox/animated.gif: GIF, 2 frames" in data_utils.scan_report(scan, data)


def test_oversized_images_are_judged_by_header_and_never_decoded(tmp_path, make_config):
    folder = tmp_path / "images"
    for label in ("a", "b"):
        write_photo(folder / label / "ok.png", seed=ord(label))
    # Only the header is valid: decoding either file would report "corrupt", not "too large".
    write_png_claiming_size(folder / "a" / "over_the_setting.png", 2000, 2000)
    write_png_claiming_size(folder / "b" / "over_pillows_limit.png", 50_000, 50_000)
    scan = data_utils.scan_image_folder(folder, make_config(**{"data.max_pixels": 1_000_000}).data)
    reasons = dict(zip(scan.skipped["path"], scan.skipped["reason"]))
    assert "4,000,000 pixels is over data.max_pixels = 1,000,000" in reasons["a/over_the_setting.png"]
    assert "decompression bomb" in reasons["b/over_pillows_limit.png"]
    assert set(scan.skipped["problem"]) == {"too large"}


def test_without_settings_only_pillows_limit_applies(tmp_path):
    folder = tmp_path / "images"
    for label in ("a", "b"):
        write_image(folder / label / "small.png", size=(3, 2), seed=ord(label))
    assert len(data_utils.scan_image_folder(folder).images) == 2


def test_conflicting_copies_are_excluded_and_reported(messy):
    folder, _, data = messy
    scan = data_utils.scan_image_folder(folder, data)
    conflicts = scan.duplicates[scan.duplicates["conflict"]]
    assert sorted(conflicts["path"]) == ["cat/same_as_dog_good0.png", "dog/good0.png"]
    assert not set(conflicts["path"]) & set(scan.images["path"])
    reason = scan.skipped.set_index("path").loc["dog/good0.png", "reason"]
    assert "cat/same_as_dog_good0.png (cat)" in reason and "excluded" in reason


def test_report_lists_counts_imbalance_skips_and_groups(messy):
    folder, _, data = messy
    report = data_utils.scan_report(data_utils.scan_image_folder(folder, data), data)
    assert "usable images: 38 in 3 classes; skipped files: 16" in report
    assert "class imbalance: largest fox (14), smallest cat (12), ratio 1.17" in report
    assert "dog/tiny.png: 4 x 6 pixels is below data.min_image_size" in report
    assert "(near): fox/good1.png [fox], fox/good1_smaller.jpg [fox]" in report
    assert "(exact, conflicting labels: excluded)" in report


def test_a_train_and_test_folder_is_read_as_official_parts_of_pooled_classes(tmp_path,
                                                                            make_config):
    folder = tmp_path / "official"
    for part, label, seed in [("train", "cat", 1), ("train", "cat", 2), ("train", "dog", 3),
                              ("test", "cat", 4), ("test", "bird", 5)]:
        write_image(folder / part / label / f"{seed}.png", seed=seed)
    shutil.copy(folder / "test" / "cat" / "4.png", folder / "train" / "cat" / "copy.png")
    write_image(folder / "train" / "stray.png", seed=6)
    (folder / "test" / "bird" / "empty.png").write_bytes(b"")
    data = make_config(**{"data.test_split": "source"}).data
    scan = data_utils.scan_image_folder(folder, data)
    assert scan.official_split and scan.class_folders == ["bird", "cat", "dog"]
    assert scan.images[["path", "part", "label"]].values.tolist() == [
        ["test/bird/5.png", "test", "bird"], ["test/cat/4.png", "test", "cat"],
        ["train/cat/1.png", "train", "cat"], ["train/cat/2.png", "train", "cat"],
        ["train/cat/copy.png", "train", "cat"], ["train/dog/3.png", "train", "dog"]]
    assert scan.skipped.set_index("path")["problem"].to_dict() == {
        "test/bird/empty.png": "empty", "train/stray.png": "not in a class folder"}
    status = data_utils.class_status(scan, data).set_index("class")
    assert status[["usable", "skipped"]].values.tolist() == [[1, 1], [4, 0], [1, 0]]
    report = data_utils.scan_report(scan, data)
    assert ("duplicate groups across the official train and test parts (training copies: "
            "data.test_copies_in_train is keep): 1") in report
    assert "(exact): test/cat/4.png [cat], train/cat/copy.png [cat]" in report


def test_class_counts_and_imbalance(class_folder):
    write_image(class_folder / "cat" / "extra.png", seed=4242)
    images = data_utils.scan_image_folder(class_folder).images
    assert data_utils.class_counts(images)["images"].tolist() == [11, 10, 10]
    assert scan_report.class_imbalance(images) == {"largest": "cat", "largest_images": 11,
                                                "smallest": "dog", "smallest_images": 10,
                                                "ratio": 1.1}


def test_samples_and_statistics(class_folder, make_config):
    cfg = make_config(**{"data.image_size": [8, 8], "data.channels": 3})
    scan = data_utils.scan_image_folder(class_folder)
    images, labels = data_utils.load_samples(scan, 2, cfg.data)
    assert images.shape == (6, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    stats = data_utils.pixel_statistics(scan, cfg.data)
    assert list(stats.index) == ["red", "green", "blue"]
    assert (stats["min"] >= 0).all() and (stats["max"] <= 255).all()


def test_the_cache_skips_unchanged_files_and_catches_edited_ones(class_folder, tmp_path,
                                                                 monkeypatch):
    cache = tmp_path / "scan-cache.json"
    first = data_utils.scan_image_folder(class_folder, cache_file=cache)
    inspected = []
    inspect = scanning._inspect
    monkeypatch.setattr(scanning, "_inspect", lambda folder, relative, limits: (
        inspected.append(relative) or inspect(folder, relative, limits)))
    edited = class_folder / "dog" / "3.png"
    stat = edited.stat()
    write_image(edited, seed=555)
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old mtime
    again = data_utils.scan_image_folder(class_folder, cache_file=cache)
    assert inspected == ["dog/3.png"]
    changed = again.images["sha256"] != first.images["sha256"]
    assert again.images.loc[changed, "path"].tolist() == ["dog/3.png"]
