"""MNIST-format IDX files (``<part>-images-idx3-ubyte[.gz]`` with ``<part>-labels-idx1-ubyte[.gz]``):
found by name, checked from their headers, read one image at a time. A damaged or truncated file
is a DataError naming it, never a short dataset.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError

IDX_FILE = re.compile(r"^(?P<part>.+)-(?P<kind>images|labels)[.-]idx(?P<ndim>[13])-ubyte(\.gz)?$")


def idx_parts(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{part: (images file, labels file)}`` for the IDX files in ``folder`` (train, t10k, ...)."""
    if not Path(folder).is_dir():
        raise DataError(f"data.source: IDX folder {folder} does not exist; give the folder that "
                        "holds train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(Path(folder).iterdir()):
        match = IDX_FILE.match(path.name)
        if match:
            found.setdefault(match["part"], {})[match["kind"]] = path
    if not found:
        raise DataError(f"{folder} holds no MNIST-format files (e.g. train-images-idx3-ubyte.gz "
                        "and train-labels-idx1-ubyte.gz); point data.source at the folder that does")
    for part, files in found.items():
        if len(files) != 2:
            missing = "labels" if "images" in files else "images"
            raise DataError(f"{folder}: the {part}-{missing} IDX file for "
                            f"{next(iter(files.values())).name} is missing; add it or remove that file")
    return {part: (files["images"], files["labels"]) for part, files in found.items()}


def read_idx_labels(labels_file: Path, images_file: Path) -> np.ndarray:
    """The labels of an idx1 file (one byte per image), checked against its images file's count."""
    with _open_idx(labels_file) as handle:
        (count,) = _idx_shape(handle, labels_file, expected_ndim=1)
        labels = np.frombuffer(_read(handle, count, labels_file), np.uint8)
    with _open_idx(images_file) as handle:
        images = _idx_shape(handle, images_file, expected_ndim=3)[0]
    if images != count:
        raise DataError(f"{images_file} holds {images} images but {labels_file.name} holds {count} "
                        "labels; use files from the same release")
    return labels


def iter_idx_images(path: Path) -> Iterator[np.ndarray]:
    """The images of an idx3 file one at a time, so a large file never sits in memory whole."""
    with _open_idx(path) as handle:
        count, rows, cols = _idx_shape(handle, path, expected_ndim=3)
        for _ in range(count):
            yield np.frombuffer(_read(handle, rows * cols, path), np.uint8).reshape(rows, cols)


def _open_idx(path: Path):
    return gzip.open(path, "rb") if Path(path).suffix == ".gz" else open(path, "rb")


def _idx_shape(handle, path: Path, expected_ndim: int) -> tuple[int, ...]:
    """Read the IDX header: two zero bytes, the data type (0x08 = unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32."""
    magic = _read(handle, 4, path)
    if magic[:2] != b"\0\0" or magic[3] != expected_ndim:
        raise DataError(f"{path} is not an IDX file with {expected_ndim} dimension(s) (header "
                        f"{magic.hex()}); give MNIST-format files")
    if magic[2] != 0x08:
        raise DataError(f"{path} holds IDX data type 0x{magic[2]:02x}; only unsigned bytes (0x08) "
                        "are supported")
    return struct.unpack(f">{expected_ndim}I", _read(handle, 4 * expected_ndim, path))


def _read(handle, size: int, path: Path) -> bytes:
    """Exactly ``size`` bytes, or a DataError: a short read or a broken gzip stream means the
    file is damaged."""
    try:
        data = handle.read(size)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is damaged ({error}); download it again") from None
    if len(data) != size:
        raise DataError(f"{path} is truncated; download it again")
    return data
