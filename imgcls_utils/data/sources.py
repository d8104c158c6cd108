"""Data sources: whatever ``data.source`` names becomes a folder of class sub-folders.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (embedded, offline);
- ``idx:<folder>``: MNIST-format IDX files, e.g. ``idx:/usr/share/datasets/fashion-mnist``;
- ``tfds:<name>``: a TensorFlow Datasets image classification set, e.g. ``tfds:tf_flowers``;
- any other value: a folder of class sub-folders (absolute, or relative to ``paths.raw_dir``).

A folder whose top level is exactly ``train/`` and ``test/``, each of class folders, keeps its
source's official test split apart (``data.test_split: source`` uses it; ``fraction`` pools the
two). Built-in sources are materialized once as ``Raw_Data/<name>/<class>/<id>.png``, or, when
they have an official test split, as ``Raw_Data/<name>/{train,test}/<class>/<id>.png``, so
everything downstream takes the same path as the user's own images. The folder is assembled
under a hidden name and renamed when complete; a marker file inside records what it was made
from, so later runs return at once and a folder that imgcls did not write is never touched.

``source_name`` gives each source a short name (``digits``, ``fashion-mnist``, ``tf_flowers``,
the folder's name) for the folders made from it.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import Section
from ..errors import DataError
from ..files import locked, staged
from .idx import idx_parts, iter_idx_images, read_idx_labels
from .images import is_hidden

DIGITS_SOURCE = "digits"
IDX_PREFIX = "idx:"
TFDS_PREFIX = "tfds:"
MARKER_FILE = ".imgcls-source.json"
# Bump when the layout of materialized folders changes: older ones are then rebuilt.
SOURCE_FORMAT = 2
# The top folders of a source folder that keeps its official test split apart; every image of
# any other folder has the part NO_PART.
TRAIN_PART, TEST_PART, NO_PART = "train", "test", "none"
AUTO = "auto"
# A host TensorFlow Datasets downloads from; reaching it tells "offline" apart within seconds,
# where tfds itself retries for minutes before giving up.
NETWORK_PROBE = ("storage.googleapis.com", 443)
WRITE_CHUNK = 4096
IDX_TEST_PART = re.compile(r"(^|-)(t10k|test)$")  # MNIST's t10k, EMNIST's <name>-test

# One sample of a built-in source: (path relative to its folder, PNG/JPEG bytes or uint8 pixels).
Sample = tuple[str, "bytes | np.ndarray"]


def resolve_source(data: Section, raw_dir: Path) -> Path:
    """The image folder for ``data.source``; built-in sources are materialized into ``raw_dir``.
    With ``data.test_split: source``, a DataError unless the folder keeps an official test split."""
    folder = _source_folder(data, raw_dir)
    if data.test_split == "source" and not has_official_split(folder):
        raise DataError(f"data.test_split is source, but data.source = {data.source} has no "
                        "official test split (the t10k files of an idx: folder, the test split "
                        "of a tfds: set, or a folder of exactly train/ and test/ class folders); "
                        "set data.test_split to fraction to split all its images by "
                        "data.train_fraction/val_fraction/test_fraction")
    return folder


def _source_folder(data: Section, raw_dir: Path) -> Path:
    source, class_names = data.source, data.class_names
    if source == DIGITS_SOURCE:
        return materialize_digits(raw_dir, class_names)
    if source.startswith(IDX_PREFIX):
        return materialize_idx(_user_path(source[len(IDX_PREFIX):], raw_dir), raw_dir, class_names)
    if source.startswith(TFDS_PREFIX):
        return materialize_tfds(source[len(TFDS_PREFIX):], raw_dir, class_names)
    folder = _user_path(source, raw_dir)
    if not folder.is_dir():
        raise DataError(f"data.source: folder {folder} does not exist; give '{DIGITS_SOURCE}', "
                        f"'{IDX_PREFIX}<folder>', '{TFDS_PREFIX}<name>' or a folder with one "
                        "sub-folder of images per class")
    if class_names != AUTO:
        raise DataError(f"data.class_names is set, but the class names of folder {folder} are its "
                        "sub-folder names; set data.class_names to auto")
    return folder


def source_name(source: str) -> str:
    """A short name for ``data.source``, usable in a file name: ``digits``, the IDX folder's
    name, the TFDS name, or the image folder's name."""
    if source.startswith(TFDS_PREFIX):
        name = source[len(TFDS_PREFIX):]
    else:
        name = Path(source.removeprefix(IDX_PREFIX)).name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "images"


def _user_path(text: str, raw_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(raw_dir) / path


def subfolders(folder: Path) -> list[str]:
    """The names of the folders in ``folder``, sorted: no hidden ones, no symlinks."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_dir() and not p.is_symlink() and not is_hidden(p.name))


def has_official_split(folder: Path) -> bool:
    """Whether ``folder`` keeps its source's official test split apart: its top level is exactly
    a ``train/`` and a ``test/`` folder, each of class folders."""
    return Path(folder).is_dir() and subfolders(folder) == sorted([TRAIN_PART, TEST_PART])


def part_and_class(relative: str, official_split: bool) -> tuple[str, str]:
    """The official part (``train``/``test``, or ``none`` in a folder without an official split)
    and the class folder of a file, from its path relative to the source folder; the class is
    ``""`` for a file outside the class folders."""
    folders = relative.split("/")[:-1]
    depth = 1 if official_split else 0  # folders above the class folders
    part = folders[0] if official_split and folders else NO_PART
    return part, folders[depth] if len(folders) > depth else ""


# ----------------------------------------------------------------------------- digits

def materialize_digits(raw_dir: Path, class_names: list[str] | str = AUTO) -> Path:
    """scikit-learn's handwritten digits as ``raw_dir/digits/<class>/<id>.png`` (written once)."""
    from sklearn.datasets import load_digits

    target, marker = Path(raw_dir) / DIGITS_SOURCE, _marker(DIGITS_SOURCE, class_names)
    if _is_materialized(target, marker):
        return target
    digits = load_digits()
    names = _class_names(class_names, _numeric_names(10), DIGITS_SOURCE)
    samples = ((f"{names[label]}/{index:04d}.png", np.round(image * (255 / 16)).astype(np.uint8))
               for index, (image, label) in enumerate(zip(digits.images, digits.target)))
    return _write_source(target, marker, names, samples)


# ----------------------------------------------------------------------------- IDX (MNIST format)

def materialize_idx(folder: Path, raw_dir: Path, class_names: list[str] | str = AUTO) -> Path:
    """MNIST-format files in ``folder`` (``<part>-images-idx3-ubyte[.gz]`` with its
    ``<part>-labels-idx1-ubyte[.gz]``) as ``raw_dir/idx-<folder name>/<class>/<part>-<n>.png``;
    with a test part (``t10k``, or a name ending in ``-test``) under ``test/``, the others
    under ``train/``."""
    folder = Path(folder)
    origin = f"{IDX_PREFIX}{folder.resolve()}"
    target, marker = Path(raw_dir) / f"idx-{folder.name}", _marker(origin, class_names)
    if _is_materialized(target, marker):
        return target
    parts = idx_parts(folder)
    labels = {part: read_idx_labels(labels_file, images_file)
              for part, (images_file, labels_file) in parts.items()}
    largest = max(int(part_labels.max(initial=0)) for part_labels in labels.values())
    names = _class_names(class_names, _numeric_names(largest + 1), origin)
    top = _part_folders(parts, lambda part: IDX_TEST_PART.search(part) is not None)

    def samples() -> Iterator[Sample]:
        for part, (images_file, _) in parts.items():
            width = len(str(len(labels[part]) - 1))
            for index, (pixels, label) in enumerate(zip(iter_idx_images(images_file), labels[part])):
                yield f"{top[part]}{names[label]}/{part}-{index:0{width}d}.png", pixels

    return _write_source(target, marker, names, samples())


# ----------------------------------------------------------------------------- TensorFlow Datasets

def materialize_tfds(name: str, raw_dir: Path, class_names: list[str] | str = AUTO) -> Path:
    """All splits of the TensorFlow Datasets set ``name`` as
    ``raw_dir/tfds-<name>/<class>/<split>-<n>.png`` (or ``.jpg``: the stored bytes are copied,
    not re-encoded); with a ``test`` split under ``test/``, the other splits under ``train/``.
    Downloads on first use."""
    origin = f"{TFDS_PREFIX}{name}"
    target = Path(raw_dir) / f"tfds-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
    marker = _marker(origin, class_names)
    if _is_materialized(target, marker):
        return target
    builder = _tfds_builder(name)
    image_key, label_key = _image_and_label_keys(builder, origin)
    names = _class_names(class_names, builder.info.features[label_key].names, origin)
    _download(builder, origin)
    return _write_source(target, marker, names, _tfds_samples(builder, image_key, names))


def _tfds_builder(name: str):
    import tensorflow_datasets as tfds

    from .. import quiet_tensorflow  # noqa: F401  (imports TensorFlow quietly, before tfds does)

    try:
        return tfds.builder(name)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"data.source: '{TFDS_PREFIX}{name}' is not a TensorFlow Datasets name; "
                        "see https://www.tensorflow.org/datasets/catalog (e.g. tfds:tf_flowers)") from None


def _image_and_label_keys(builder, origin: str) -> tuple[str, str]:
    import tensorflow_datasets as tfds

    keys = builder.info.supervised_keys
    features = builder.info.features
    if (not keys or len(keys) != 2 or not isinstance(features[keys[0]], tfds.features.Image)
            or not isinstance(features[keys[1]], tfds.features.ClassLabel)):
        raise DataError(f"data.source: {origin} is not an image classification dataset (its "
                        f"supervised keys are {keys}); choose one with (image, label) pairs")
    return keys


def _download(builder, origin: str) -> None:
    """Download and prepare once; offline, fail within seconds with what to do."""
    if builder.is_prepared():
        return
    needs_network = (f"data.source: {origin} is not downloaded yet and TensorFlow Datasets needs "
                     "network access on first use")
    if not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        try:
            socket.create_connection(NETWORK_PROBE, timeout=5).close()
        except OSError:
            raise DataError(f"{needs_network}, but {NETWORK_PROBE[0]} is unreachable; connect to "
                            "the internet and run again, or use a local source") from None
    try:
        builder.download_and_prepare()
    except OSError as error:
        raise DataError(f"{needs_network}, and the download failed ({error}); check the "
                        "connection and run again") from None


def _tfds_samples(builder, image_key: str, names: list[str]) -> Iterator[Sample]:
    import tensorflow_datasets as tfds

    top = _part_folders(builder.info.splits, lambda split: split == TEST_PART)
    for split in top:
        dataset = builder.as_dataset(split=split, as_supervised=True,
                                     decoders={image_key: tfds.decode.SkipDecoding()})
        for index, (encoded, label) in enumerate(tfds.as_numpy(dataset)):
            extension = ".jpg" if encoded[:2] == b"\xff\xd8" else ".png"
            yield f"{top[split]}{names[label]}/{split}-{index:06d}{extension}", encoded


# ----------------------------------------------------------------------------- materializing

def _part_folders(parts: Iterable[str], is_test: Callable[[str], bool]) -> dict[str, str]:
    """The folder each part (split) of a source is written under, in part order: ``test/`` for
    its official test part, ``train/`` for the others; none when it has no test part."""
    parts = sorted(parts)
    if not any(map(is_test, parts)):
        return dict.fromkeys(parts, "")
    return {part: f"{TEST_PART if is_test(part) else TRAIN_PART}/" for part in parts}


def _numeric_names(count: int) -> list[str]:
    """``0 .. count-1``, zero-padded so that sorting the names keeps label order."""
    width = len(str(count - 1))
    return [f"{label:0{width}d}" for label in range(count)]


def _class_names(configured: list[str] | str, default: list[str], origin: str) -> list[str]:
    if configured == AUTO:
        return list(default)
    if len(configured) != len(default):
        raise DataError(f"data.class_names has {len(configured)} names but {origin} has "
                        f"{len(default)} classes; give one name per label, in label order, or auto")
    return list(configured)


def _marker(origin: str, class_names: list[str] | str) -> dict:
    """What a materialized folder records about how it was made (checked on every later run)."""
    return {"source": origin, "data.class_names": class_names}


def _is_materialized(folder: Path, marker: dict) -> bool:
    """True when ``folder`` holds a complete copy made as ``marker`` says, in the current layout
    (False for an older one, to be rebuilt); an error when it holds anything else, which must
    not be overwritten."""
    if not folder.exists():
        return False
    path = folder / MARKER_FILE
    if not path.is_file():
        raise DataError(f"{folder} exists but has no {MARKER_FILE}: either imgcls did not "
                        "materialize it (rename it, or set data.source to its path to use it as "
                        "a folder) or an earlier imgcls, without markers, did (delete it: it is made again)")
    made = json.loads(path.read_text())
    if {key: made.get(key) for key in marker} != marker:
        raise DataError(f"{folder} was materialized from {made.get('source')} with data.class_names "
                        f"= {made.get('data.class_names')}, not from {marker['source']} with "
                        f"{marker['data.class_names']}; delete that folder to materialize it again, "
                        "or restore those settings")
    return made.get("format") == SOURCE_FORMAT


def _write_source(folder: Path, marker: dict, class_names: list[str],
                  samples: Iterable[Sample]) -> Path:
    """Write ``samples`` into ``folder``: assembled out of sight, marked, then published; one
    process at a time, and not again if another process wrote it meanwhile."""
    with locked(folder):
        if _is_materialized(folder, marker):
            return folder
        with staged(folder) as building:
            count = _write_samples(building, samples)
            made = {**marker, "format": SOURCE_FORMAT, "class_names": class_names, "images": count}
            (building / MARKER_FILE).write_text(json.dumps(made, indent=2))
    return folder


def _write_samples(folder: Path, samples: Iterable[Sample]) -> int:
    """Write every sample (encoding on all cores); returns how many were written."""
    count = 0
    samples = iter(samples)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        while chunk := list(islice(samples, WRITE_CHUNK)):
            list(pool.map(lambda sample: _write_sample(folder, *sample), chunk))  # raises errors
            count += len(chunk)
    return count


def _write_sample(folder: Path, relative: str, payload) -> None:
    if isinstance(payload, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(payload).save(buffer, "PNG", compress_level=1)
        payload = buffer.getvalue()
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
