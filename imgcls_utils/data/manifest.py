"""The scan manifest: what each file of a source held when it was inspected, kept between scans.

A file is known by its path, size and modification time, which copies keep (``cp -p``, rsync,
``shutil.copytree``), so a source copied to another disk or machine is not inspected again; the
change time is not used, since every copy gets a new one. An edit changes the modification time
(or the size), and the file is inspected again; an edit that puts both back is caught only by
``imgcls process --verify``, which hashes every file.

``Processed_Data/<source>.manifest/`` holds ``settings.json`` (the checks the records depend on:
other settings start a new manifest) and CSV parts, one per finished batch of files, each
published by a rename: a scan killed half way keeps every finished batch and the next scan
inspects only the rest. After a complete scan the parts are merged into one.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import staged, write_atomically
from .duplicates import AVERAGE_BYTES, HASH_BYTES

MANIFEST_SUFFIX = ".manifest"
SETTINGS_FILE = "settings.json"
# Parts are read oldest first, by name, and the newest record of a path wins: the merged part
# sorts before the parts a later scan adds (named by the time they were written).
MERGED_PART = "part-0-all.csv"
STAMP_COLUMNS = ["path", "size", "mtime_ns"]
RECORD_COLUMNS = ["problem", "reason", "width", "height", "mode", "format", "frames", "sha256"]
HASH_COLUMNS = ["phash", "average"]
COLUMNS = [*STAMP_COLUMNS, *RECORD_COLUMNS, *HASH_COLUMNS]
DTYPES = {"path": str, "size": "int64", "mtime_ns": "int64", "problem": str, "reason": str,
          "mode": str, "format": str, "sha256": str, "phash": str, "average": str}
NULLABLE = ["problem", "reason", "width", "height", "mode", "format", "frames", "sha256"]
READ_CHUNK = 10_000  # rows converted at a time: the hex hashes never all sit in memory as text


@dataclass
class Inspected:
    """Records of inspected files (``COLUMNS`` but the hashes) and their hashes as arrays, row
    for row: the 256-bit perceptual hash (``HASH_BYTES`` per row) and the 8 x 8 average; zeros
    for files that are not usable images."""

    records: pd.DataFrame
    phash: np.ndarray
    average: np.ndarray

    @classmethod
    def empty(cls) -> Inspected:
        return cls(pd.DataFrame(columns=[*STAMP_COLUMNS, *RECORD_COLUMNS]),
                   np.zeros((0, HASH_BYTES), np.uint8), np.zeros((0, AVERAGE_BYTES), np.uint8))

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> Inspected:
        """Records with hex hash columns (a part file, or fresh records) as ``Inspected``."""
        return cls(_compact(table.drop(columns=HASH_COLUMNS)).reset_index(drop=True),
                   _unhex(table["phash"], HASH_BYTES), _unhex(table["average"], AVERAGE_BYTES))

    @classmethod
    def concat(cls, pieces: list[Inspected]) -> Inspected:
        pieces = [piece for piece in pieces if len(piece.records)] or [cls.empty()]
        return cls(pd.concat([p.records for p in pieces], ignore_index=True),
                   np.concatenate([p.phash for p in pieces]),
                   np.concatenate([p.average for p in pieces]))

    def take(self, rows: np.ndarray) -> Inspected:
        return Inspected(self.records.iloc[rows].reset_index(drop=True), self.phash[rows],
                         self.average[rows])

    def table(self) -> pd.DataFrame:
        """The records with their hashes as hex columns, as a part file holds them."""
        usable = self.records["problem"].isna().to_numpy()
        return self.records.assign(phash=_hex(self.phash, usable), average=_hex(self.average, usable))


class Manifest:
    """The manifest folder of one source, for records made with ``settings``."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        self.settings = settings

    @staticmethod
    def folder_for(processed_dir: Path, source_name: str) -> Path:
        """Where the manifest of a source folder of this name lives: found again by a copy of
        the folder elsewhere."""
        return Path(processed_dir) / f"{source_name}{MANIFEST_SUFFIX}"

    def load(self) -> Inspected:
        """Every record of the manifest, the newest for each path; nothing when it was made
        with other settings (or is unreadable: that only makes the scan slower)."""
        try:
            if json.loads((self.folder / SETTINGS_FILE).read_text()) != self.settings:
                return Inspected.empty()
        except (OSError, ValueError):
            return Inspected.empty()
        parts = sorted(self.folder.glob("part-*.csv"))
        loaded = Inspected.concat([piece for part in parts for piece in _read_part(part)])
        newest = ~loaded.records["path"].duplicated(keep="last").to_numpy()
        return loaded.take(np.flatnonzero(newest))

    def start(self) -> None:
        """Make the folder ready for parts: a manifest of other settings is discarded."""
        settings = self.folder / SETTINGS_FILE
        if settings.is_file() and settings.read_text() == json.dumps(self.settings):
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        write_atomically(settings, json.dumps(self.settings))

    def add(self, inspected: Inspected) -> None:
        """Publish one finished batch of records as a new part."""
        _write_part(self.folder / f"part-{time.time_ns()}-{uuid.uuid4().hex}.csv", inspected)

    def merge(self, current: Inspected) -> None:
        """Replace every part by one holding exactly ``current`` (the files of the last scan)."""
        old = [part for part in self.folder.glob("part-*.csv") if part.name != MERGED_PART]
        _write_part(self.folder / MERGED_PART, current)
        for part in old:
            part.unlink()


def _write_part(path: Path, inspected: Inspected) -> None:
    """Write a part out of sight, ``READ_CHUNK`` rows at a time (the hex text of a million
    hashes is never in memory at once), and publish it by a rename."""
    with staged(path, folder=False) as staging, open(staging, "w", newline="") as handle:
        for start in range(0, max(1, len(inspected.records)), READ_CHUNK):
            chunk = inspected.take(np.arange(start, min(start + READ_CHUNK,
                                                        len(inspected.records))))
            chunk.table()[COLUMNS].to_csv(handle, index=False, header=start == 0)


def _read_part(part: Path) -> list[Inspected]:
    try:
        chunks = pd.read_csv(part, dtype=DTYPES, chunksize=READ_CHUNK, keep_default_na=False,
                             na_values={column: [""] for column in NULLABLE})
        return [Inspected.from_table(chunk) for chunk in chunks]
    except (OSError, ValueError, KeyError):
        return []  # a damaged part: its files are inspected again


def _compact(chunk: pd.DataFrame) -> pd.DataFrame:
    """Repeated strings as categories, sizes as small integers: a million records stay small."""
    for column in ("problem", "mode", "format"):
        chunk[column] = chunk[column].astype("category")
    for column in ("width", "height", "frames"):
        chunk[column] = pd.to_numeric(chunk[column]).fillna(0).astype("int32")
    return chunk


def _unhex(column: pd.Series, width: int) -> np.ndarray:
    text = "".join(value if value else "00" * width for value in column)
    return np.frombuffer(bytes.fromhex(text), np.uint8).reshape(len(column), width).copy()


def _hex(array: np.ndarray, usable: np.ndarray) -> list[str]:
    return [row.tobytes().hex() if ok else "" for row, ok in zip(array, usable)]
