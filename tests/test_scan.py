import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pytest

from imgcls_utils import data_utils
from imgcls_utils.data import scan as scanning
from imgcls_utils.data import scan_report
from imgcls_utils.data.manifest import MERGED_PART
from tests.conftest import REPO_ROOT, write_image
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
    assert "(near, 2 images): fox/good1.png [fox], fox/good1_smaller.jpg [fox]" in report
    assert "(exact, conflicting labels: excluded, 2 images)" in report


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
    assert "(exact, 2 images): test/cat/4.png [cat], train/cat/copy.png [cat]" in report


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


def test_the_manifest_skips_unchanged_files_and_rescans_changed_ones(class_folder, tmp_path):
    manifest = tmp_path / "processed" / "images.manifest"
    first = data_utils.scan_image_folder(class_folder, manifest_dir=manifest)
    assert (first.stats["inspected"], first.stats["reused"]) == (30, 0)
    assert data_utils.scan_image_folder(class_folder, manifest_dir=manifest).stats["inspected"] == 0
    write_image(class_folder / "dog" / "3.png", seed=555)  # new content, new modification time
    touched = class_folder / "cat" / "1.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    again = data_utils.scan_image_folder(class_folder, manifest_dir=manifest)
    assert (again.stats["inspected"], again.stats["reused"]) == (2, 28)
    changed = again.images["sha256"] != first.images["sha256"]
    assert again.images.loc[changed, "path"].tolist() == ["dog/3.png"]
    assert [p.name for p in manifest.glob("part-*")] == [MERGED_PART]


def test_a_damaged_manifest_part_costs_a_rescan_of_its_files_not_a_wrong_record(class_folder,
                                                                                 tmp_path):
    manifest = tmp_path / "processed" / "images.manifest"
    first = data_utils.scan_image_folder(class_folder, manifest_dir=manifest)
    part = manifest / MERGED_PART
    part.write_bytes(part.read_bytes()[:len(part.read_bytes()) // 2])  # a disk that filled up
    again = data_utils.scan_image_folder(class_folder, manifest_dir=manifest)
    assert (again.stats["inspected"], again.stats["reused"]) == (30, 0)
    assert again.images.equals(first.images)
    assert data_utils.scan_image_folder(class_folder, manifest_dir=manifest).stats["reused"] == 30


def test_a_copied_folder_is_not_rescanned(class_folder, tmp_path):
    manifest = tmp_path / "processed" / "images.manifest"
    first = data_utils.scan_image_folder(class_folder, manifest_dir=manifest)
    copy = shutil.copytree(class_folder, tmp_path / "elsewhere" / "images")  # keeps the mtimes
    again = data_utils.scan_image_folder(copy, manifest_dir=manifest)
    assert (again.stats["inspected"], again.stats["reused"]) == (0, 30)
    assert again.images.equals(first.images)


def test_verify_catches_an_edit_that_kept_the_size_and_the_time(tmp_path):
    folder, manifest = tmp_path / "images", tmp_path / "processed" / "images.manifest"
    for label in ("a", "b"):
        for i in range(3):
            write_image(folder / label / f"{i}.bmp", size=(16, 16), seed=10 * ord(label) + i)
    first = data_utils.scan_image_folder(folder, manifest_dir=manifest)
    edited = folder / "a" / "0.bmp"
    stat = edited.stat()
    write_image(edited, size=(16, 16), seed=999)  # a BMP of the same size has the same length
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert edited.stat().st_size == stat.st_size
    trusted = data_utils.scan_image_folder(folder, manifest_dir=manifest)
    assert trusted.stats["inspected"] == 0 and trusted.images.equals(first.images)
    verified = data_utils.scan_image_folder(folder, manifest_dir=manifest, verify=True)
    assert verified.stats["inspected"] == 1
    assert verified.images.set_index("path").loc["a/0.bmp", "sha256"] != \
        first.images.set_index("path").loc["a/0.bmp", "sha256"]


def test_a_scan_killed_half_way_resumes_without_inspecting_finished_files(tmp_path):
    folder, manifest = tmp_path / "images", tmp_path / "processed" / "images.manifest"
    for i in range(6 * scanning.INSPECT_BATCH):
        write_image(folder / ("a", "b")[i % 2] / f"{i:04d}.png", size=(24, 24), seed=i)
    script = ("import sys; from imgcls_utils.data.scan import scan_image_folder\n"
              "from imgcls_utils.data.engine import Engine\n"
              f"scan_image_folder(sys.argv[1], manifest_dir=sys.argv[2], engine=Engine(workers=1))")
    scan = subprocess.Popen([sys.executable, "-c", script, str(folder), str(manifest)],
                            cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(manifest.glob("part-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    scan.kill()
    scan.wait()
    finished = sum(pa.ipc.open_file(part).read_all().num_rows for part in manifest.glob("part-*"))
    assert 0 < finished < 6 * scanning.INSPECT_BATCH
    resumed = data_utils.scan_image_folder(folder, manifest_dir=manifest)
    assert resumed.stats["reused"] == finished
    assert resumed.stats["inspected"] == 6 * scanning.INSPECT_BATCH - finished
    assert len(resumed.images) == 6 * scanning.INSPECT_BATCH


def test_a_large_duplicate_group_is_summarised_and_listed_in_full_in_a_file(tmp_path,
                                                                           make_config):
    folder = tmp_path / "images"
    original = write_image(folder / "a" / "original.png", seed=1).read_bytes()
    for i in range(30):
        (folder / "a" / f"copy{i:02d}.png").write_bytes(original)
    for pair in range(25):
        for side in ("b", "c"):
            write_image(folder / side / f"{pair:02d}.png", seed=1000 + pair)
    data = make_config().data
    scan = data_utils.scan_image_folder(folder, data, manifest_dir=tmp_path / "p" / "x.manifest")
    report = data_utils.scan_report(scan, data)
    groups = report.split("duplicate groups (each kept on one side of the split): 26\n")[1]
    lines = groups.split("\n\n")[0].splitlines()
    assert lines[0] == ("  group 0 (exact, 31 images): a/copy00.png [a], a/copy01.png [a], "
                        "a/copy02.png [a], a/copy03.png [a], ... (27 more)")
    assert len(lines) == 1 + scan_report.REPORTED_GROUPS + 1
    assert lines[-2] == "  ... and 6 more groups of 2 to 2 images"
    assert lines[-1] == f"  every group with all its images: {scan.duplicates_file}"
    listed = pd.read_csv(scan.duplicates_file)
    assert len(listed) == 31 + 50 and listed["size"].tolist()[:31] == [31] * 31
    assert listed["group"].nunique() == 26
