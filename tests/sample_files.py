"""Small real files for the data tests: distinct pictures, re-encoded copies of them, and a
source folder holding every kind of file the scan must recognize."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tests.conftest import write_image

CLASSES = ("cat", "dog", "fox")
# The classes add_untrainable_classes adds that cannot be trained (lonely can: one image).
UNTRAINABLE = ("copycat", "empty", "junk")


def photo(seed: int, size=(96, 72), mode="RGB") -> Image.Image:
    """A random picture of overlapping shapes: sharp edges give it detail at every scale, like
    a photo, so its perceptual hash survives re-encoding; different seeds are unrelated."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(rng.integers(0, 256, 3).tolist()))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        box = [x, y, x + rng.integers(4, size[0] // 2 + 5), y + rng.integers(4, size[1] // 2 + 5)]
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape(box, fill=tuple(rng.integers(0, 256, 3).tolist()))
    return image.convert(mode)


def write_photo(path: Path, seed: int, size=(96, 72), fmt=None, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed, size, mode).save(path, fmt)
    return path


def write_copy(source: Path, path: Path, scale: float, quality: int = 80) -> Path:
    """``source`` re-encoded as a JPEG at ``scale`` times its size: a near-duplicate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        size = (round(image.width * scale), round(image.height * scale))
        image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(path, "JPEG",
                                                                           quality=quality)
    return path


def write_png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims ``width x height`` pixels (its data does not match, so
    decoding it would fail): a decompression bomb as far as any header check can tell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = b"IDAT" + zlib.compress(b"\0" * 64)
    idat = struct.pack(">I", len(data) - 4) + data + struct.pack(">I", zlib.crc32(data))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + idat + end)
    return path


def tree_hashes(folder: Path) -> dict:
    """Content hash of every file under ``folder`` (symlinks as their target path, unfollowed)."""
    hashes = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            hashes[path.relative_to(folder)] = os.readlink(path)
        elif path.is_file():
            hashes[path.relative_to(folder)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def add_untrainable_classes(class_folder: Path) -> Path:
    """Next to ``class_folder``'s classes: an empty folder, a class whose only image is a copy
    of a dog (excluded as conflicting), one of unreadable files, and one with a single image."""
    (class_folder / "empty").mkdir()
    (class_folder / "copycat").mkdir()
    shutil.copy(class_folder / "dog" / "0.png", class_folder / "copycat" / "dog0.png")
    (class_folder / "junk").mkdir()
    (class_folder / "junk" / "x.png").write_text("not an image")
    (class_folder / "junk" / "y.png").write_bytes(b"")
    write_image(class_folder / "lonely" / "1.png", seed=777)
    return class_folder


def make_messy_folder(root: Path, outside: Path) -> dict[str, str]:
    """A source folder of good pictures (8 per class) plus one of every special case; returns
    the problem the scan must report for each file it skips (hidden files: not reported).
    Expects ``data.max_pixels`` below 100,000 and ``data.min_image_size`` of [8, 8]."""
    for c, name in enumerate(CLASSES):
        for i in range(8):
            write_photo(root / name / f"good{i}.png", seed=100 * c + i)
    _write_usable_variants(root)
    expected = _write_unusable_files(root)
    expected.update(_write_links(root, outside))
    for hidden in (".DS_Store", "cat/Thumbs.db", "dog/._good0.png", "fox/.cache/x.png"):
        (root / hidden).parent.mkdir(parents=True, exist_ok=True)
        (root / hidden).write_bytes(b"\0\1")
    exact_copy = root / "cat" / "same_as_dog_good0.png"
    exact_copy.write_bytes((root / "dog" / "good0.png").read_bytes())
    expected.update({"cat/same_as_dog_good0.png": "conflicting duplicate",
                     "dog/good0.png": "conflicting duplicate"})
    write_copy(root / "fox" / "good1.png", root / "fox" / "good1_smaller.jpg", scale=0.75)
    return expected


def _write_usable_variants(root: Path) -> None:
    """Every format, extension spelling, mode and nesting the scan must accept."""
    write_photo(root / "cat" / "upper.JPG", seed=900, fmt="JPEG")
    write_photo(root / "cat" / "photo.jpeg", seed=901, fmt="JPEG")
    write_photo(root / "dog" / "bitmap.bmp", seed=902)
    write_photo(root / "dog" / "modern.webp", seed=903)
    write_photo(root / "dog" / "scan.tif", seed=904)
    write_photo(root / "fox" / "scan.TIFF", seed=905, fmt="TIFF")
    write_photo(root / "fox" / "nested" / "deeper" / "inner.png", seed=906)
    write_photo(root / "dog" / "gray.png", seed=907, mode="L")
    write_photo(root / "dog" / "alpha.png", seed=908, mode="RGBA")
    write_photo(root / "fox" / "palette.gif", seed=909, mode="P")
    write_photo(root / "fox" / "print.jpg", seed=910, mode="CMYK")
    deep = np.random.default_rng(911).integers(0, 65535, (20, 24), np.uint16)
    Image.fromarray(deep).save(root / "cat" / "sixteen_bit.png")
    rotated = photo(912)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    rotated.save(root / "cat" / "rotated.jpg", "JPEG", exif=exif)
    frames = [photo(seed, mode="P") for seed in (913, 914)]
    frames[0].save(root / "fox" / "animated.gif", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)


def _write_unusable_files(root: Path) -> dict[str, str]:
    (root / "cat" / "empty.png").write_bytes(b"")
    good = write_photo(root / "cat" / "whole.jpg", seed=920, size=(64, 64), fmt="JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    good.unlink()
    png = write_photo(root / "dog" / "whole.png", seed=921).read_bytes()
    (root / "dog" / "corrupt.png").write_bytes(png[:60] + bytes(range(256)) * 4 + png[-12:])
    (root / "dog" / "whole.png").unlink()
    (root / "dog" / "notes.jpg").write_text("these are my notes, not a picture")
    (root / "dog" / "readme.txt").write_text("hello")
    (root / "fox" / "vector.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    Image.new("RGB", (32, 32), "red").save(root / "fox" / "icon.png", "ICO")
    write_png_claiming_size(root / "cat" / "bomb.png", 30_000, 30_000)
    write_png_claiming_size(root / "dog" / "huge.png", 400, 400)
    write_photo(root / "dog" / "tiny.png", seed=922, size=(4, 6))
    write_photo(root / "stray.jpg", seed=923, fmt="JPEG")
    return {"cat/empty.png": "empty", "cat/truncated.jpg": "corrupt", "dog/corrupt.png": "corrupt",
            "dog/notes.jpg": "not an image", "dog/readme.txt": "unsupported format",
            "fox/vector.svg": "unsupported format", "fox/icon.png": "unsupported format",
            "cat/bomb.png": "too large", "dog/huge.png": "too large", "dog/tiny.png": "too small",
            "stray.jpg": "not in a class folder"}


def _write_links(root: Path, outside: Path) -> dict[str, str]:
    """Symlinks out of the source (a file, a folder) and a broken one: none is followed."""
    outside_image = write_photo(outside / "elsewhere.png", seed=930)
    write_photo(outside / "more" / "a.png", seed=931)
    (root / "cat" / "link_out.png").symlink_to(outside_image)
    (root / "dog" / "folder_out").symlink_to(outside / "more", target_is_directory=True)
    (root / "fox" / "broken.png").symlink_to(root / "fox" / "no_such_file.png")
    return {"cat/link_out.png": "symlink", "dog/folder_out": "symlink", "fox/broken.png": "symlink"}


def make_corpus(root: Path, outside: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The messy folder plus the class folders real collections have: an empty one, one whose
    only image is a copy of an image filed under another class, one with a single image.
    Returns the problem of every skipped file and the reason of every untrainable class."""
    skipped = make_messy_folder(root, outside)
    (root / "empty").mkdir()
    (root / "copycat").mkdir()
    (root / "copycat" / "fox2.png").write_bytes((root / "fox" / "good2.png").read_bytes())
    skipped.update({"copycat/fox2.png": "conflicting duplicate",
                    "fox/good2.png": "conflicting duplicate"})
    write_photo(root / "lonely" / "only.png", seed=940)
    return skipped, {"copycat": "all 1 file(s) excluded as copies", "empty": "empty folder"}
