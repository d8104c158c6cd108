"""Scan: account for every file under a source folder, as a usable image or skipped with a reason.

A file is judged from its header first (format, size in pixels) so that a decompression bomb is
never decoded; only then is it decoded once, at thumbnail size, which both proves it is intact
(a truncated file fails here) and yields its perceptual hash. No pixels are kept. Copies are
grouped (see ``duplicates``); copies filed under different labels are excluded, because no one
can say which label is right and keeping either would teach the model a contradiction.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..config import Config, Section
from ..errors import DataError
from ..files import file_sha256, write_atomically
from . import duplicates
from .duplicates import CONFLICT
from .images import (DECODE_ERRORS, IMAGE_EXTENSIONS, PILLOW_PIXEL_LIMIT, SUPPORTED_FORMATS,
                     decode_thumbnail, is_hidden, pixel_limit_checked_by_caller, too_many_pixels)
from .sources import (TEST_PART, TRAIN_PART, has_official_split, part_and_class, resolve_source,
                      subfolders)

# A thumbnail this size is plenty for a 64 x 64 pHash and decodes JPEGs at 1/8 scale.
HASH_THUMBNAIL_SIDE = 128
CACHE_SUFFIX = ".scan-cache.json"
CACHE_VERSION = 3  # bump when a record's fields or the checks change
IMAGE_COLUMNS = ["path", "label", "part", "width", "height", "mode", "format", "frames", "sha256",
                 "phash", "average"]
SKIPPED_COLUMNS = ["path", "problem", "reason"]


@dataclass
class ScanResult:
    """What a scan found under ``folder``.

    ``images``: usable images (path, label, official part, size, mode, format, frames, sha256,
    perceptual hash, 8 x 8 average, group);
    ``skipped``: every other file with a ``problem`` category and a ``reason``;
    ``duplicates``: every image that has copies, by group (including excluded conflicting ones);
    ``class_folders``: the names of all class folders, usable images or not;
    ``official_split``: whether ``folder`` is ``train/`` and ``test/`` folders of class folders.
    """

    folder: Path
    images: pd.DataFrame
    skipped: pd.DataFrame
    duplicates: pd.DataFrame
    class_folders: list[str]
    official_split: bool

    @property
    def class_names(self) -> list[str]:
        return sorted(self.images["label"].unique())


@dataclass(frozen=True)
class Limits:
    """What the scan accepts; the defaults reject nothing beyond what Pillow itself refuses."""

    min_size: tuple[int, int] = (1, 1)
    max_pixels: int = PILLOW_PIXEL_LIMIT
    near_duplicate_distance: int | None = None

    @classmethod
    def from_config(cls, data: Section) -> Limits:
        distance = data.near_duplicate_distance
        return cls(tuple(data.min_image_size), data.max_pixels,
                   None if distance == "none" else distance)


def scan_image_folder(folder: Path, data: Section | None = None,
                      cache_file: Path | None = None) -> ScanResult:
    """Account for every file under ``folder`` (``<folder>/<class>/.../<image>``, or
    ``<folder>/{train,test}/<class>/.../<image>``): each is a usable image or skipped with a
    reason. ``data`` supplies the size limits and the near-duplicate distance; without it only
    Pillow's own limit and identical copies apply. With ``cache_file``, files unchanged since
    the last scan are not read again."""
    folder = Path(folder)
    limits = Limits.from_config(data) if data is not None else Limits()
    official = has_official_split(folder)
    candidates, skipped = _walk(folder, official)
    records = _inspect_all(folder, candidates, limits, cache_file)
    images = pd.DataFrame([_placed(r, official) for r in records if "reason" not in r],
                          columns=IMAGE_COLUMNS)
    skipped += [r for r in records if "reason" in r]
    images = images.sort_values("path").reset_index(drop=True)
    images["group"] = duplicates.find_groups(images, limits.near_duplicate_distance)
    table = duplicates.duplicate_table(images)
    conflicting = table[table["conflict"]]
    skipped += [_conflict_record(conflicting, row) for row in conflicting.itertuples()]
    images = images[~images["path"].isin(conflicting["path"])].reset_index(drop=True)
    skipped = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).sort_values("path", ignore_index=True)
    return ScanResult(folder, images, skipped, table, _class_folders(folder, official), official)


def scan_source(cfg: Config) -> ScanResult:
    """Resolve ``data.source`` (materializing a built-in source) and scan it with the ``data``
    limits, keeping a cache of per-file results in ``paths.processed_dir``."""
    folder = resolve_source(cfg.data, cfg.path("raw_dir"))
    cache_file = cfg.path("processed_dir") / f"{folder.name}{CACHE_SUFFIX}"
    return scan_image_folder(folder, cfg.data, cache_file)


# ----------------------------------------------------------------------------- walk

def _class_folders(folder: Path, official_split: bool) -> list[str]:
    """The class folders: those at the top, or those in ``train/`` and ``test/``, pooled."""
    if not official_split:
        return subfolders(folder)
    return sorted({*subfolders(folder / TRAIN_PART), *subfolders(folder / TEST_PART)})


def _walk(folder: Path, official_split: bool) -> tuple[dict[str, list[int]], list[dict]]:
    """The files to inspect (relative path -> ``_stamp``), and skip records for files that
    cannot be images at all (outside a class folder, wrong extension, symlinks not followed)."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected <folder>/<class>/<image>")
    root = folder.resolve()
    candidates, skipped = {}, []

    def visit(directory: str, prefix: str) -> None:
        with os.scandir(directory) as scanned:
            entries = sorted((e for e in scanned if not is_hidden(e.name)), key=lambda e: e.name)
        for entry in entries:
            relative = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                visit(entry.path, relative + "/")
                continue
            problem = _path_problem(entry, relative, root, official_split)
            if problem:
                skipped.append({"path": relative, "problem": problem[0], "reason": problem[1]})
            else:
                candidates[relative] = _stamp(entry)

    visit(str(folder), "")
    return candidates, skipped


def _path_problem(entry: os.DirEntry, relative: str, root: Path,
                  official_split: bool) -> tuple[str, str] | None:
    """Why a file cannot be an image of the dataset, judged from its name and link alone."""
    if entry.is_symlink():
        target = Path(entry.path).resolve()
        if not target.exists():
            return "symlink", f"broken symlink -> {os.readlink(entry.path)}"
        if not target.is_relative_to(root):
            return "symlink", f"symlink to {target}, outside the source folder: not followed"
        if target.is_dir():  # never followed: it could loop, or count images twice
            return "symlink", f"symlinked folder -> {os.readlink(entry.path)}: not followed"
    if not part_and_class(relative, official_split)[1]:
        return "not in a class folder", "file outside the class folders: it has no label"
    extension = os.path.splitext(entry.name)[1]
    if extension.lower() not in IMAGE_EXTENSIONS:
        return "unsupported format", f"unsupported extension {extension or '(none)'!r}"
    return None


def _stamp(entry: os.DirEntry | Path) -> list[int]:
    """Size, modification and change time: the change time moves on every write and no tool
    can set it back, so an edited file never looks unchanged."""
    stat = entry.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


# ----------------------------------------------------------------------------- inspect

def _inspect_all(folder: Path, candidates: dict[str, list[int]], limits: Limits,
                 cache_file: Path | None) -> list[dict]:
    """Inspect files on all cores (Pillow and hashlib release the GIL while they work), except
    those the cache holds with the same size, modification and change time."""
    key = {"version": CACHE_VERSION, "min_size": list(limits.min_size),
           "max_pixels": limits.max_pixels}
    cached = _read_cache(cache_file, key)
    todo = [path for path, stamp in candidates.items()
            if cached.get(path, {}).get("stamp") != stamp]
    with pixel_limit_checked_by_caller(), ThreadPoolExecutor(os.cpu_count()) as pool:
        results = pool.map(lambda relative: _inspect(folder, relative, limits), todo)
        fresh = dict(zip(todo, tqdm(results, total=len(todo), desc=f"scanning {folder.name}",
                                    unit="file", leave=False, mininterval=1.0, disable=None)))
    records = [fresh[path] if path in fresh else cached[path]["record"] for path in candidates]
    if cache_file is not None and (todo or len(cached) != len(candidates)):
        _write_cache(cache_file, key, {path: {"stamp": stamp, "record": record} for
                                       (path, stamp), record in zip(candidates.items(), records)})
    return records


def _read_cache(cache_file: Path | None, key: dict) -> dict:
    if cache_file is None or not Path(cache_file).is_file():
        return {}
    try:
        cache = json.loads(Path(cache_file).read_text())
    except ValueError:
        return {}  # a damaged cache is only a slower scan
    return cache["files"] if cache.get("key") == key else {}


def _write_cache(cache_file: Path, key: dict, files: dict) -> None:
    Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache_file, json.dumps({"key": key, "files": files}, separators=(",", ":")))


def _inspect(folder: Path, relative: str, limits: Limits) -> dict:
    """One file's facts (header, content hash, perceptual hash), or its problem and reason (its
    class and official part come from its path: see ``_placed``)."""
    path = folder / relative
    record = {"path": relative}
    if path.stat().st_size == 0:
        return {**record, "problem": "empty", "reason": "empty file (0 bytes)"}
    try:
        with Image.open(path) as image:
            facts = {"width": image.width, "height": image.height, "mode": image.mode,
                     "format": image.format, "frames": getattr(image, "n_frames", 1)}
            problem = _header_problem(facts, limits)
            if problem:
                return {**record, "problem": problem[0], "reason": problem[1]}
            thumbnail = decode_thumbnail(image, HASH_THUMBNAIL_SIDE)
            phash = duplicates.perceptual_hash(thumbnail)
            average = duplicates.small_average(thumbnail)
    except Image.DecompressionBombError as error:
        return {**record, "problem": "too large", "reason": f"not opened: {error}"}
    except UnidentifiedImageError:
        return {**record, "problem": "not an image",
                "reason": f"not an image: named {path.suffix}, but no known image format inside"}
    except DECODE_ERRORS as error:
        return {**record, "problem": "corrupt", "reason": f"truncated or corrupt image: {error}"}
    return {**record, **facts, "sha256": file_sha256(path), "phash": phash, "average": average}


def _placed(record: dict, official_split: bool) -> dict:
    """An inspected image's record with the class and official part its path gives it."""
    part, label = part_and_class(record["path"], official_split)
    return {**record, "label": label, "part": part}


def _header_problem(facts: dict, limits: Limits) -> tuple[str, str] | None:
    """Format and size checks that need only the header, so nothing too large is decoded."""
    width, height = facts["width"], facts["height"]
    if facts["format"] not in SUPPORTED_FORMATS:
        return "unsupported format", f"unsupported image format {facts['format']}"
    if problem := too_many_pixels(width, height, limits.max_pixels):
        return "too large", problem
    min_height, min_width = limits.min_size
    if height < min_height or width < min_width:
        return "too small", (f"{width} x {height} pixels is below data.min_image_size = "
                             f"[{min_height}, {min_width}] (height, width)")
    return None


def _conflict_record(conflicting: pd.DataFrame, row) -> dict:
    others = conflicting[(conflicting["group"] == row.group) & (conflicting["path"] != row.path)]
    copies = ", ".join(f"{path} ({label})" for path, label in zip(others["path"], others["label"]))
    return {"path": row.path, "problem": CONFLICT,
            "reason": f"labelled {row.label}, but copies are labelled otherwise: {copies}; "
                      "excluded, since the right label is unknown"}
