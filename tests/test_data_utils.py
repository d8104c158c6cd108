import hashlib

import numpy as np
import pytest
from PIL import Image

from imgcls_utils import data_utils
from imgcls_utils.data_utils import DataError
from tests.conftest import write_image


def tree_hashes(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_digits_are_materialized_once_as_an_image_folder(tmp_path):
    folder = data_utils.materialize_digits(tmp_path)
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 1797
    assert sorted(p.name for p in folder.iterdir()) == [str(d) for d in range(10)]
    with Image.open(files[0]) as image:
        assert image.size == (8, 8) and image.mode == "L"
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    data_utils.materialize_digits(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes


def test_scan_reports_unusable_files_with_reasons(class_folder):
    (class_folder / "cat" / "empty.png").write_bytes(b"")
    (class_folder / "cat" / "notes.png").write_text("not an image")
    (class_folder / "dog" / "readme.txt").write_text("hello")
    (class_folder / "dog" / ".DS_Store").write_bytes(b"\0")
    good = write_image(class_folder / "fox" / "nested" / "deep.jpg", fmt="JPEG")
    truncated = class_folder / "fox" / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    scan = data_utils.scan_image_folder(class_folder)
    reasons = dict(zip(scan.skipped["path"], scan.skipped["reason"]))
    assert reasons["cat/empty.png"] == "empty file (0 bytes)"
    assert reasons["cat/notes.png"].startswith("not a readable image")
    assert reasons["dog/readme.txt"] == "unsupported extension '.txt'"
    assert reasons["fox/truncated.jpg"].startswith("not a readable image")
    assert "dog/.DS_Store" not in reasons
    assert "fox/nested/deep.jpg" in set(scan.images["path"])
    assert len(scan.images) == 31 and scan.class_names == ["cat", "dog", "fox"]


def test_empty_class_and_single_class_are_clear_errors(class_folder):
    (class_folder / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        data_utils.scan_image_folder(class_folder)
    single = class_folder.parent / "single"
    write_image(single / "only" / "a.png")
    with pytest.raises(DataError, match="at least 2"):
        data_utils.scan_image_folder(single)


def test_split_is_stratified_and_reproducible(class_folder, make_config):
    cfg = make_config(**{"data.train_fraction": 0.6, "data.val_fraction": 0.2,
                         "data.test_fraction": 0.2})
    images = data_utils.scan_image_folder(class_folder).images
    first = data_utils.split_images(images, cfg.data)
    again = data_utils.split_images(images.sample(frac=1, random_state=3), cfg.data)
    assert first.equals(again)
    sizes = data_utils.split_sizes(first)
    assert sizes.loc["cat"].tolist() == [6, 2, 2, 10]
    other_seed = make_config(**{"data.seed": 7, "data.train_fraction": 0.6,
                                "data.val_fraction": 0.2, "data.test_fraction": 0.2})
    assert not first["split"].equals(data_utils.split_images(images, other_seed.data)["split"])


@pytest.mark.parametrize("mode, channels", [("L", 3), ("RGB", 1), ("RGBA", 3), ("P", 3),
                                            ("CMYK", 3), ("I;16", 1), ("LA", 1)])
def test_load_image_converts_any_mode_to_the_configured_shape(tmp_path, mode, channels):
    path = tmp_path / "image.png"
    image = Image.new("RGB", (20, 10), (200, 40, 40)).convert(mode)
    image.save(path.with_suffix(".tiff") if mode == "CMYK" else path)
    pixels = data_utils.load_image(path.with_suffix(".tiff") if mode == "CMYK" else path,
                                   (16, 24), channels)
    assert pixels.shape == (16, 24, channels) and pixels.dtype == np.uint8


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(path)
    assert data_utils.load_image(path, (4, 4), 1).max() == 128


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    stored = np.zeros((10, 30), np.uint8)
    stored[:, 15:] = 255  # left half black, right half white, as stored
    image = Image.fromarray(stored).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left half ends on top
    image.save(path, exif=exif, quality=95)
    pixels = data_utils.load_image(path, (30, 10), 1)[..., 0]
    assert pixels[:12].mean() < 30 and pixels[-12:].mean() > 225


def test_prepare_builds_then_reuses_then_rebuilds_on_change(class_folder, make_config):
    cfg = make_config(**{"data.source": str(class_folder), "data.image_size": [16, 16]})
    before = tree_hashes(class_folder)
    first = data_utils.prepare_data(cfg)
    assert not first.reused and first.input_shape == (16, 16, 1)
    assert sum(first.count(s) for s in data_utils.SPLITS) == 30
    assert data_utils.prepare_data(cfg).reused
    assert tree_hashes(class_folder) == before
    write_image(class_folder / "dog" / "0.png", seed=999)
    assert not data_utils.prepare_data(cfg).reused
    resized = make_config(**{"data.source": str(class_folder), "data.image_size": [20, 20]})
    rebuilt = data_utils.prepare_data(resized)
    assert not rebuilt.reused and rebuilt.input_shape == (20, 20, 1)
    assert sorted(p.name for p in rebuilt.folder.parent.iterdir()) == ["images"]


def test_datasets_stream_all_images_and_augment_only_training(class_folder, make_config):
    cfg = make_config(**{"data.source": str(class_folder), "data.image_size": [16, 16],
                         "augment.rotation": 0.3})
    prepared = data_utils.prepare_data(cfg)
    augmentation = data_utils.build_augmentation(cfg.augment, seed=1)
    val = data_utils.make_dataset(prepared, "val", 4, augmentation=augmentation)
    val_again = data_utils.make_dataset(prepared, "val", 4)
    for (a, la), (b, lb) in zip(val, val_again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
    train = data_utils.make_dataset(prepared, "train", 4, training=True, augmentation=augmentation)
    plain = data_utils.make_dataset(prepared, "train", 4)
    images = np.concatenate([x.numpy() for x, _ in train])
    assert images.shape == (prepared.count("train"), 16, 16, 1)
    assert images.min() >= 0 and images.max() <= 255
    assert sorted(np.concatenate([y.numpy() for _, y in train])) == \
        sorted(np.concatenate([y.numpy() for _, y in plain]))
    raw_sum = np.concatenate([x.numpy() for x, _ in plain]).sum()
    assert not np.isclose(images.sum(), raw_sum)


def test_augmentation_follows_the_config(make_config):
    cfg = make_config(**{"augment.flip": "horizontal", "augment.contrast": 0.2})
    layers = [layer.name for layer in data_utils.build_augmentation(cfg.augment, 0).layers]
    assert layers[0].startswith("random_flip") and layers[-1].startswith("random_contrast")
    assert data_utils.build_augmentation(make_config(**{"augment.enabled": False}).augment, 0) is None


def test_missing_source_folder_is_a_clear_error(make_config):
    cfg = make_config(**{"data.source": "no_such_folder"})
    with pytest.raises(DataError, match="no_such_folder.*does not exist"):
        data_utils.prepare_data(cfg)


def test_samples_and_statistics(class_folder, make_config):
    cfg = make_config(**{"data.image_size": [8, 8], "data.channels": 3})
    scan = data_utils.scan_image_folder(class_folder)
    images, labels = data_utils.load_samples(scan, 2, cfg.data)
    assert images.shape == (6, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    stats = data_utils.pixel_statistics(scan, cfg.data)
    assert list(stats.index) == ["red", "green", "blue"]
    assert (stats["min"] >= 0).all() and (stats["max"] <= 255).all()
