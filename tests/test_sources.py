import gzip
import socket
import struct

import numpy as np
import pytest
from PIL import Image

from imgcls_utils import data_utils, sources
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


def test_idx_files_become_a_class_folder_with_the_configured_names(idx_folder, tmp_path):
    raw = tmp_path / "raw"
    folder = sources.materialize_idx(idx_folder, raw, ["zero", "one", "two"])
    assert folder == raw / "idx-tiny-mnist"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))[:3] == [
        "one/t10k-1.png", "one/train-1.png", "one/train-4.png"]
    assert len(list(folder.rglob("*.png"))) == 12
    with gzip.open(idx_folder / "train-images-idx3-ubyte.gz") as handle:
        first = np.frombuffer(handle.read()[16:16 + 30], np.uint8).reshape(6, 5)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "zero" / "train-0.png")), first)


def test_idx_materialization_is_idempotent_and_checks_its_settings(idx_folder, tmp_path):
    raw = tmp_path / "raw"
    folder = sources.materialize_idx(idx_folder, raw)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2"]
    before = tree_hashes(folder)
    for file in idx_folder.iterdir():
        file.unlink()  # the marker answers: the IDX files are not even read again
    assert sources.materialize_idx(idx_folder, raw) == folder and tree_hashes(folder) == before
    with pytest.raises(DataError, match="data.class_names = auto, not from .* with \\['a', 'b', 'c'\\]"):
        sources.materialize_idx(idx_folder, raw, ["a", "b", "c"])
    assert tree_hashes(folder) == before


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


def test_tfds_datasets_are_materialized_as_class_folders(tmp_path, network, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    network(True)
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path / "tfds")):
        folder = sources.materialize_tfds("mnist", tmp_path / "raw")
    files = sorted(folder.rglob("*.png"))
    assert folder.name == "tfds-mnist" and len(files) == 12
    assert {p.parent.name for p in files} <= {str(d) for d in range(10)}
    with Image.open(files[0]) as image:
        assert image.size == (28, 28)
    assert sources.materialize_tfds("mnist", tmp_path / "raw") == folder  # now offline-safe


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
