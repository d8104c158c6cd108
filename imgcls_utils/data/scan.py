"""Scan: account for every file under a source folder, as a usable image or skipped with a reason.

A file is judged from its header first (format, size in pixels) so that a decompression bomb is
never decoded; only then is it decoded once, at thumbnail size, which both proves it is intact
(a truncated file fails here) and yields its perceptual hash. No pixels are kept. Copies are
grouped (see ``duplicates``); copies filed under different labels are excluded, because no one
can say which label is right and keeping either would teach the model a contradiction.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..config import Config, Section
from ..files import file_sha256, locked, staged, write_atomically
from . import duplicates, input_shape
from .duplicates import CONFLICT
from .engine import Engine, batches
from .images import (DECODE_ERRORS, PILLOW_PIXEL_LIMIT, SUPPORTED_FORMATS, decode_thumbnail,
                     pixel_limit_checked_by_caller, too_many_pixels)
from .listing import class_folders, list_files
from .manifest import RECORD_COLUMNS, Inspected, Manifest
from .memory import give_back_freed_memory, in_system_heap
from .sources import NO_PART, has_official_split, resolve_source

# A thumbnail this size is plenty for a 64 x 64 pHash and decodes JPEGs at 1/8 scale.
HASH_THUMBNAIL_SIDE = 128
MANIFEST_VERSION = 5  # bump when a record's fields or the checks change
INSPECT_BATCH = 256  # files per task: one manifest part each
IMAGE_COLUMNS = ["path", "label", "part", "width", "height", "mode", "format", "frames", "sha256"]
SKIPPED_COLUMNS = ["path", "problem", "reason"]
GROUPS_PREFIX = "groups-"
DUPLICATES_FILE_SUFFIX = ".duplicates.csv"
HASHED_ROWS = 10_000  # rows of the scan table hashed at a time for the groups' key


@dataclass
class ScanResult:
    """What a scan found under ``folder``.

    ``images``: usable images (path, label, official part, size, mode, format, frames, sha256,
    group);
    ``skipped``: every other file with a ``problem`` category and a ``reason``;
    ``duplicates``: every image that has copies, by group (including excluded conflicting ones);
    ``class_folders``: the names of all class folders, usable images or not;
    ``official_split``: whether ``folder`` is ``train/`` and ``test/`` folders of class folders;
    ``duplicates_file``: where every group is listed in full, when the scan kept a manifest;
    ``stats``: files inspected and reused from the manifest, candidate pairs checked, the engine.
    """

    folder: Path
    images: pd.DataFrame
    skipped: pd.DataFrame
    duplicates: pd.DataFrame
    class_folders: list[str]
    official_split: bool
    duplicates_file: Path | None = None
    stats: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return sorted(self.images["label"].unique())

    @functools.cached_property
    def has_colour(self) -> bool:
        """Whether the usable images have colour (``input_shape.has_colour``): decoded once per
        scan, however many steps resolve ``data.channels: auto`` from it."""
        return input_shape.has_colour(self.folder, self.images)


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

    def manifest_settings(self) -> dict:
        """What an inspected file's record depends on (the distance does not: it only groups)."""
        return {"version": MANIFEST_VERSION, "min_size": list(self.min_size),
                "max_pixels": self.max_pixels}


@in_system_heap
def scan_image_folder(folder: Path, data: Section | None = None, manifest_dir: Path | None = None,
                      engine: Engine | None = None, verify: bool = False) -> ScanResult:
    """Account for every file under ``folder`` (``<folder>/<class>/.../<image>``, or
    ``<folder>/{train,test}/<class>/.../<image>``): each is a usable image or skipped with a
    reason. ``data`` supplies the size limits and the near-duplicate distance; without it only
    Pillow's own limit and identical copies apply. With ``manifest_dir``, files unchanged since
    they were inspected (same path, size and modification time) are not read again (with
    ``verify``, they are hashed to make sure), and the full duplicate lists are written next to
    it. ``engine`` runs the inspection and the matching (default: this process)."""
    folder = Path(folder)
    limits = Limits.from_config(data) if data is not None else Limits()
    official = has_official_split(folder)
    candidates, skipped = list_files(folder, official)
    give_back_freed_memory()  # after each stage: see memory.py
    engine = (engine or Engine()).for_files(len(candidates))
    with _manifest_folder(manifest_dir) as where:  # a second scan of the folder waits
        manifest = Manifest(where, limits.manifest_settings())
        inspected, stats = _inspect_all(folder, candidates, limits, manifest, engine, verify)
        del candidates  # the records hold the paths now: a million of them is worth freeing
        usable = inspected.records["problem"].isna().to_numpy()
        images = _placed(inspected.records[usable], official)
        skipped += inspected.records.loc[~usable, SKIPPED_COLUMNS].to_dict("records")
        hashes = Inspected(images, inspected.phash[usable], inspected.average[usable])
        del inspected
        give_back_freed_memory()
        images["group"], stats["candidate_pairs"] = _groups(
            images, hashes, limits, manifest if manifest_dir else None, engine)
        del hashes
        give_back_freed_memory()
        table = duplicates.duplicate_table(images)
        listed = _write_duplicate_lists(table, manifest_dir, folder) if manifest_dir else None
    conflicting = table[table["conflict"]]
    skipped += [_conflict_record(conflicting, row) for row in conflicting.itertuples()]
    images = images[~images["path"].isin(conflicting["path"])].reset_index(drop=True)
    skipped = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).sort_values("path", ignore_index=True)
    return ScanResult(folder, images, skipped, table, class_folders(folder, official), official,
                      listed, {**stats, "engine": engine.describe()})


def scan_source(cfg: Config, verify: bool = False) -> ScanResult:
    """Resolve ``data.source`` (materializing a built-in source) and scan it with the ``data``
    limits on the ``engine`` settings, keeping a manifest of per-file results in
    ``paths.processed_dir``."""
    folder = resolve_source(cfg.data, cfg.path("raw_dir"))
    manifest_dir = Manifest.folder_for(cfg.path("processed_dir"), folder.name)
    return scan_image_folder(folder, cfg.data, manifest_dir, Engine.from_config(cfg.engine),
                             verify)


@contextmanager
def _manifest_folder(manifest_dir: Path | None) -> Iterator[Path]:
    """``manifest_dir``, locked against other processes scanning the same source (two runs
    started at once: the second waits, then reads the first's records), or a temporary folder
    for a scan that keeps no manifest."""
    if manifest_dir is not None:
        with locked(Path(manifest_dir)):
            yield Path(manifest_dir)
        return
    with tempfile.TemporaryDirectory(prefix="imgcls-scan-") as temporary:
        yield Path(temporary) / "manifest"


# ----------------------------------------------------------------------------- inspect

def _inspect_all(folder: Path, candidates: pd.DataFrame, limits: Limits, manifest: Manifest,
                 engine: Engine, verify: bool) -> tuple[Inspected, dict]:
    """Every candidate's record, sorted by path: from the manifest when the file's path, size
    and modification time match its entry (and, with ``verify``, its content hash), else
    inspected in tasks on ``engine``, each adding its batch to the manifest as it finishes (the
    records reach the driver from the manifest, not through the engine)."""
    known = manifest.load()
    reused = _matching_rows(candidates, known)
    if verify and len(reused):
        reused = _still_the_same(folder, known.take(reused), reused, engine)
    todo = candidates[~candidates["path"].isin(known.records["path"].iloc[reused])]
    started = time.perf_counter()
    if len(todo):
        manifest.start()
        work = [todo.iloc[start:start + INSPECT_BATCH]
                for start in range(0, len(todo), INSPECT_BATCH)]
        with tqdm(total=len(todo), desc=f"scanning {folder.name}", unit="file", leave=False,
                  mininterval=1.0, disable=None) as progress:
            for _, count in engine.map_unordered(inspect_batch, work, (folder, limits, manifest)):
                progress.update(count)
        known = manifest.load()
        give_back_freed_memory()
    rows = _matching_rows(candidates, known)
    changed = len(todo) or len(known.records) != len(rows)
    rows = rows[np.argsort(known.records["path"].to_numpy()[rows], kind="stable")]
    in_order = len(rows) == len(known.records) and (rows == np.arange(len(rows))).all()
    inspected = known if in_order else known.take(rows)  # at most one copy, in path order
    del known
    give_back_freed_memory()
    if changed:
        manifest.merge(inspected)
    return inspected, {"files": len(candidates), "inspected": len(todo),
                       "reused": len(candidates) - len(todo),
                       "inspect_seconds": time.perf_counter() - started}


def _matching_rows(candidates: pd.DataFrame, known: Inspected) -> np.ndarray:
    """The rows of ``known`` whose path, size and modification time are a candidate's."""
    stamps = known.records[["path", "size", "mtime_ns"]].assign(row=np.arange(len(known.records)))
    matched = candidates.merge(stamps, on=["path", "size", "mtime_ns"], how="inner")
    return matched["row"].to_numpy(np.int64)


def _still_the_same(folder: Path, reused: Inspected, rows: np.ndarray,
                    engine: Engine) -> np.ndarray:
    """The manifest rows whose files still have the content hash they were inspected with."""
    paths = reused.records["path"].tolist()
    hashes = [digest for part in engine.map(hash_batch, batches(paths, INSPECT_BATCH), folder)
              for digest in part]
    return rows[np.array(hashes, dtype=object) == reused.records["sha256"].to_numpy()]


def hash_batch(paths: list[str], folder: Path) -> list[str]:
    """One task: the sha256 of each file (``imgcls process --verify``)."""
    return [file_sha256(folder / path) for path in paths]


def inspect_batch(files: pd.DataFrame, context: tuple) -> int:
    """One task: inspect a batch of files (``path``, and the ``size`` and ``mtime_ns`` they had
    when listed, which stamp the records) and add their records to the manifest; how many."""
    folder, limits, manifest = context
    with pixel_limit_checked_by_caller():
        records = [_inspect(folder, path, limits) for path in files["path"]]
    table = pd.DataFrame(records).reindex(columns=["path", *RECORD_COLUMNS, "phash", "average"])
    table[["phash", "average"]] = table[["phash", "average"]].fillna("")
    table.insert(1, "size", files["size"].to_numpy())
    table.insert(2, "mtime_ns", files["mtime_ns"].to_numpy())
    manifest.add(Inspected.from_table(table))
    return len(files)


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


def _placed(records: pd.DataFrame, official_split: bool) -> pd.DataFrame:
    """The usable images' records with the class and official part their paths give them (see
    ``part_and_class``), worked out by a regular expression on the whole column: no Python
    object per image (splitting the paths would make a list of strings per image)."""
    if official_split:
        folders = records["path"].str.extract(r"^([^/]*)/([^/]*)/")
        part, label = folders[0], folders[1]
    else:
        part, label = NO_PART, records["path"].str.extract(r"^([^/]*)/", expand=False)
    return records.assign(part=part, label=label)[IMAGE_COLUMNS].reset_index(drop=True)


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


# ----------------------------------------------------------------------------- groups

def _groups(images: pd.DataFrame, hashes: Inspected, limits: Limits, manifest: Manifest | None,
            engine: Engine) -> tuple[np.ndarray, int]:
    """Each image's duplicate group and the candidate pairs checked to find it; reused from the
    manifest folder (none checked) while the images, their hashes and the distance are those
    the groups were found for."""
    distance = limits.near_duplicate_distance
    saved = manifest.folder / f"{GROUPS_PREFIX}{_groups_key(images, hashes, distance)}.npy" \
        if manifest else None
    if saved and saved.is_file():
        return np.load(saved), 0
    give_back_freed_memory()
    groups, checked = duplicates.find_groups(images, hashes.phash, hashes.average, distance, engine)
    if saved:
        manifest.start()
        with staged(saved, folder=False) as staging, open(staging, "wb") as handle:
            np.save(handle, groups)
        for older in saved.parent.glob(f"{GROUPS_PREFIX}*.npy"):
            if older != saved:
                older.unlink()
    return groups, checked


def _groups_key(images: pd.DataFrame, hashes: Inspected, distance: int | None) -> str:
    digest = hashlib.sha256(repr((distance, duplicates.MATCHING_VERSION)).encode())
    identity = images[["path", "sha256", "width", "height"]]
    for start in range(0, len(identity), HASHED_ROWS):  # a chunk's text at a time, not all
        digest.update(pd.util.hash_pandas_object(identity.iloc[start:start + HASHED_ROWS],
                                                 index=False).to_numpy().tobytes())
    digest.update(hashes.phash.tobytes())
    digest.update(hashes.average.tobytes())
    return digest.hexdigest()[:16]


def _write_duplicate_lists(table: pd.DataFrame, manifest_dir: Path, folder: Path) -> Path:
    """Every duplicate group with all its members, largest first, as CSV next to the manifest."""
    path = Path(manifest_dir).parent / f"{folder.name}{DUPLICATES_FILE_SUFFIX}"
    write_atomically(path, duplicates.largest_first(table).to_csv(index=False))
    return path


def _conflict_record(conflicting: pd.DataFrame, row) -> dict:
    others = conflicting[(conflicting["group"] == row.group) & (conflicting["path"] != row.path)]
    copies = ", ".join(f"{path} ({label})" for path, label in zip(others["path"], others["label"]))
    return {"path": row.path, "problem": CONFLICT,
            "reason": f"labelled {row.label}, but copies are labelled otherwise: {copies}; "
                      "excluded, since the right label is unknown"}
