import gzip
import json
import math
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls_utils import data_utils
from imgcls_utils.data import sources
from imgcls_utils.data_utils import DataError
from tests.sample_files import tree_hashes


def write_idx(path, array: np.ndarray) -> None:
    """An MNIST-format file: 0, 0, type 0x08 (unsigned byte), ndim, big-endian dims, data."""
    data = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


@pytest.fixture
def idx_folder(tmp_path):
    """A tiny IDX set: 'train' gzipped (9 images), 't10k' plain (3 images), labels 0-2."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "tiny-mnist"
    for part, count, suffix in (("train", 9, ".gz"), ("t10k", 3, "")):
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 6, 5)))
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", np.arange(count) % 3)
    return folder


def test_digits_are_materialized_once_as_an_image_folder(tmp_path):
    folder = sources.materialize_digits(tmp_path)
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 1797
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    with Image.open(files[0]) as image:
        assert image.size == (8, 8) and image.mode == "L"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    sources.materialize_digits(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_idx_files_become_train_and_test_class_folders_with_the_configured_names(idx_folder,
                                                                               tmp_path):
    raw = tmp_path / "raw"
    folder = sources.materialize_idx(idx_folder, raw, ["zero", "one", "two"])
    assert folder == raw / "idx-tiny-mnist"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert [f for f in files if f.startswith("test/")] == [
        "test/one/t10k-1.png", "test/two/t10k-2.png", "test/zero/t10k-0.png"]
    assert len(files) == 12 and files[3:6] == [
        "train/one/train-1.png", "train/one/train-4.png", "train/one/train-7.png"]
    with gzip.open(idx_folder / "train-images-idx3-ubyte.gz") as handle:
        first = np.frombuffer(handle.read()[16:16 + 30], np.uint8).reshape(6, 5)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "train" / "zero" / "train-0.png")),
                                  first)


def test_idx_files_without_a_test_part_become_plain_class_folders(idx_folder, tmp_path):
    for file in idx_folder.glob("t10k-*"):
        file.unlink()
    folder = sources.materialize_idx(idx_folder, tmp_path / "raw")
    assert sources.subfolders(folder) == ["0", "1", "2"]
    assert len(list(folder.glob("*/train-*.png"))) == 9


def test_idx_materialization_is_idempotent_and_checks_its_settings(idx_folder, tmp_path):
    raw = tmp_path / "raw"
    folder = sources.materialize_idx(idx_folder, raw)
    assert sources.subfolders(folder) == ["test", "train"]
    assert sources.subfolders(folder / "train") == ["0", "1", "2"]
    before = tree_hashes(folder)
    for file in idx_folder.iterdir():
        file.unlink()  # the marker answers: the IDX files are not even read again
    assert sources.materialize_idx(idx_folder, raw) == folder and tree_hashes(folder) == before
    with pytest.raises(DataError, match="data.class_names = auto, not from .* with \\['a', 'b', 'c'\\]"):
        sources.materialize_idx(idx_folder, raw, ["a", "b", "c"])
    assert tree_hashes(folder) == before


def test_a_materialization_in_an_older_layout_is_rebuilt(idx_folder, tmp_path):
    old = tmp_path / "raw" / "idx-tiny-mnist"
    (old / "0").mkdir(parents=True)
    (old / "0" / "t10k-0.png").write_bytes(b"old layout: no train/ and test/ folders")
    made = {"source": f"idx:{idx_folder.resolve()}", "data.class_names": "auto"}  # no "format"
    (old / sources.MARKER_FILE).write_text(json.dumps(made))
    folder = sources.materialize_idx(idx_folder, tmp_path / "raw")
    assert folder == old and sources.subfolders(folder) == ["test", "train"]
    assert len(list(folder.rglob("*.png"))) == 12


def test_a_folder_imgcls_did_not_write_is_never_touched(idx_folder, tmp_path):
    mine = tmp_path / "raw" / "idx-tiny-mnist" / "0" / "my_photo.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"precious")
    with pytest.raises(DataError, match="imgcls did not materialize it"):
        sources.materialize_idx(idx_folder, tmp_path / "raw")
    assert mine.read_bytes() == b"precious" and len(list(mine.parent.parent.rglob("*"))) == 2


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "t10k-labels-idx1-ubyte").unlink(), "t10k-labels IDX file .* is missing"),
    (lambda f: write_idx(f / "t10k-labels-idx1-ubyte", np.zeros(5)), "holds 3 images but .* 5 labels"),
    (lambda f: (f / "t10k-images-idx3-ubyte").write_bytes(b"\x08\x03junk"), "not an IDX file"),
    (lambda f: (f / "t10k-images-idx3-ubyte").write_bytes(
        (f / "t10k-images-idx3-ubyte").read_bytes()[:40]), "is truncated"),
    (lambda f: [p.unlink() for p in f.iterdir()], "holds no MNIST-format files"),
])
def test_damaged_idx_files_are_clear_errors(idx_folder, tmp_path, damage, message):
    damage(idx_folder)
    with pytest.raises(DataError, match=message):
        sources.materialize_idx(idx_folder, tmp_path / "raw")
    assert not (tmp_path / "raw" / "idx-tiny-mnist").exists()


def test_wrong_number_of_class_names_is_a_clear_error(idx_folder, tmp_path):
    with pytest.raises(DataError, match="data.class_names has 2 names but .* has 3 classes"):
        sources.materialize_idx(idx_folder, tmp_path / "raw", ["a", "b"])


def test_test_split_source_is_exactly_the_t10k_images_and_fraction_pools_them(tmp_path,
                                                                            make_config):
    folder = tmp_path / "three-classes"
    rng = np.random.default_rng(1)
    for part, per_class in (("train", 12), ("t10k", 4)):
        images = rng.integers(0, 256, (3 * per_class, 10, 10))
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", np.arange(3 * per_class) % 3)
    settings = {"data.source": f"idx:{folder}", "data.image_size": [8, 8]}
    official = data_utils.process_data(make_config(**settings, **{"data.test_split": "source"}))
    table = official.images
    t10k = set(table.loc[table["path"].str.contains("/t10k-"), "path"])
    assert len(t10k) == 12 and set(official.paths("test")) == t10k
    assert all(path.startswith("test/") for path in t10k)
    val = table[table["split"] == "val"]
    assert len(val) == math.ceil(36 * 0.15 / (0.7 + 0.15))
    assert val["path"].str.contains("/train-").all()
    assert sorted(val["label"].unique()) == official.class_names == ["0", "1", "2"]
    pooled = data_utils.process_data(make_config(**settings))
    assert not pooled.reused and pooled.class_names == ["0", "1", "2"]
    assert pooled.count("test") == 8  # about 15% of the 48, so 4 or more t10k images train
    assert pooled.images.loc[pooled.images["split"] != "test", "path"].isin(t10k).sum() >= 4


@pytest.mark.parametrize("kind", ["digits", "idx without t10k files", "a folder of class folders"])
def test_test_split_source_without_an_official_test_split_is_a_clear_error(
        kind, idx_folder, class_folder, tmp_path, make_config):
    for file in idx_folder.glob("t10k-*"):
        file.unlink()
    source = {"digits": "digits", "idx without t10k files": f"idx:{idx_folder}",
              "a folder of class folders": str(class_folder)}[kind]
    data = make_config(**{"data.source": source, "data.test_split": "source"}).data
    with pytest.raises(DataError, match=f"data.test_split is source, but data.source = {source} "
                                        "has no official test split .* set data.test_split to "
                                        "fraction"):
        data_utils.resolve_source(data, tmp_path / "raw")


def test_resolve_source_routes_each_kind(idx_folder, tmp_path, make_config):
    raw = tmp_path / "raw"
    idx = make_config(**{"data.source": f"idx:{idx_folder}"}).data
    assert data_utils.resolve_source(idx, raw) == raw / "idx-tiny-mnist"
    named_folder = make_config(**{"data.source": str(idx_folder), "data.class_names": ["a", "b"]})
    with pytest.raises(DataError, match="class names of folder .* are its sub-folder names"):
        data_utils.resolve_source(named_folder.data, raw)
    with pytest.raises(DataError, match="folder .*nowhere does not exist"):
        data_utils.resolve_source(make_config(**{"data.source": "nowhere"}).data, raw)


@pytest.fixture
def network(monkeypatch):
    """Point the network probe at a local port: ``network(True)`` listens, ``False`` refuses."""
    servers = []

    def point(reachable: bool):
        server = socket.create_server(("127.0.0.1", 0))
        monkeypatch.setattr(sources, "NETWORK_PROBE", server.getsockname()[:2])
        if reachable:
            servers.append(server)
        else:
            server.close()

    yield point
    for server in servers:
        server.close()


@pytest.fixture
def mock_mnist(tmp_path, monkeypatch):
    """``with mock_mnist(splits):`` TensorFlow Datasets serves MNIST offline, processed, with
    these splits of 12 random images each. ``mock_data`` makes up the images; the split names
    come from the dataset_info.json written here, as a processed dataset's do."""
    import tensorflow_datasets as tfds

    data_dir = tmp_path / "tfds"
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))

    def serve(splits: list[str]):
        builder = tfds.builder("mnist", data_dir=str(data_dir))
        Path(builder.data_dir).mkdir(parents=True)
        builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
            name=split, shard_lengths=[12], num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=builder.data_dir, dataset_name="mnist", split=split,
                filetype_suffix="tfrecord")) for split in splits]))
        builder.info.write_to_directory(builder.data_dir)
        return tfds.testing.mock_data(num_examples=12, data_dir=str(data_dir))

    return serve


def test_tfds_datasets_are_materialized_as_class_folders(tmp_path, mock_mnist):
    with mock_mnist(["train"]):
        folder = sources.materialize_tfds("mnist", tmp_path / "raw")
    files = sorted(folder.rglob("*.png"))
    assert folder.name == "tfds-mnist" and len(files) == 12
    assert {p.parent.name for p in files} <= {str(d) for d in range(10)}
    assert {p.name[:6] for p in files} == {"train-"}
    with Image.open(files[0]) as image:
        assert image.size == (28, 28)
    assert sources.materialize_tfds("mnist", tmp_path / "raw") == folder  # now offline-safe


def test_a_tfds_test_split_becomes_the_test_folder(tmp_path, mock_mnist, make_config):
    with mock_mnist(["test", "train"]):
        folder = sources.materialize_tfds("mnist", tmp_path / "raw")
    assert sources.subfolders(folder) == ["test", "train"]
    for split in ("test", "train"):
        files = list((folder / split).rglob("*.png"))
        assert len(files) == 12 and {p.name[:len(split) + 1] for p in files} == {f"{split}-"}
    data = make_config(**{"data.source": "tfds:mnist", "data.test_split": "source"}).data
    assert data_utils.resolve_source(data, tmp_path / "raw") == folder


def test_tfds_offline_on_first_use_is_a_clear_error_within_seconds(tmp_path, network,
                                                                   monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    network(False)
    with pytest.raises(DataError, match="needs network access on first use"):
        sources.materialize_tfds("mnist", tmp_path / "raw")
    with pytest.raises(DataError, match="not a TensorFlow Datasets name"):
        sources.materialize_tfds("no_such_dataset_anywhere", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
