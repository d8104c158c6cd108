"""The scan manifest: what each file of a source held when it was inspected, kept between scans.

A file is known by its path, size and modification time, which copies keep (``cp -p``, rsync,
``shutil.copytree``), so a source copied to another disk or machine is not inspected again; the
change time is not used, since every copy gets a new one. An edit changes the modification time
(or the size), and the file is inspected again; an edit that puts both back is caught only by
``imgcls process --verify``, which hashes every file.

``Processed_Data/<source>.manifest/`` holds ``settings.json`` (the checks the records depend on:
other settings start a new manifest) and parts, one per finished batch of files, each published
by a rename: a scan killed half way keeps every finished batch and the next scan inspects only
the rest. After a complete scan the parts are merged into one. A part is an Arrow IPC file (the
hashes as fixed-size binary columns): read back into columns without a Python object per cell,
where CSV text made one for every cell on the way.
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
import pyarrow as pa
import pyarrow.compute as pc

from ..files import staged, write_atomically
from .duplicates import AVERAGE_BYTES, HASH_BYTES

MANIFEST_SUFFIX = ".manifest"
SETTINGS_FILE = "settings.json"
# Parts are read oldest first, by name, and the newest record of a path wins: the merged part
# sorts before the parts a later scan adds (named by the time they were written).
MERGED_PART = "part-0-all.arrow"
PART_PATTERN = "part-*.arrow"
STAMP_COLUMNS = ["path", "size", "mtime_ns"]
RECORD_COLUMNS = ["problem", "reason", "width", "height", "mode", "format", "frames", "sha256"]
HASH_COLUMNS = ["phash", "average"]
WRITE_CHUNK = 10_000  # rows per record batch of a part
RECORD_SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
     *[(column, pa.int32() if column in ("width", "height", "frames") else pa.string())
       for column in RECORD_COLUMNS]])
PART_SCHEMA = RECORD_SCHEMA.append(pa.field("phash", pa.binary(HASH_BYTES))).append(
    pa.field("average", pa.binary(AVERAGE_BYTES)))


@dataclass
class Inspected:
    """Records of inspected files (``STAMP_COLUMNS`` and ``RECORD_COLUMNS``) and their hashes
    as arrays, row for row: the 256-bit perceptual hash (``HASH_BYTES`` per row) and the 8 x 8
    average; zeros for files that are not usable images."""

    records: pd.DataFrame
    phash: np.ndarray
    average: np.ndarray

    @classmethod
    def empty(cls) -> Inspected:
        return cls(pd.DataFrame(columns=[*STAMP_COLUMNS, *RECORD_COLUMNS]),
                   np.zeros((0, HASH_BYTES), np.uint8), np.zeros((0, AVERAGE_BYTES), np.uint8))

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> Inspected:
        """Fresh records with hex hash columns (from the inspection) as ``Inspected``."""
        return cls(_compact(table.drop(columns=HASH_COLUMNS)).reset_index(drop=True),
                   _unhex(table["phash"], HASH_BYTES), _unhex(table["average"], AVERAGE_BYTES))

    def take(self, rows: np.ndarray) -> Inspected:
        return Inspected(self.records.iloc[rows].reset_index(drop=True), self.phash[rows],
                         self.average[rows])


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
        tables = [table for part in sorted(self.folder.glob(PART_PATTERN))
                  if (table := _read_part(part)) is not None]
        if not tables:
            return Inspected.empty()
        table = pa.concat_tables(tables)
        del tables
        loaded = _inspected(table)
        if pc.count_distinct(table["path"]).as_py() == len(table):  # no path inspected twice
            return loaded
        older = loaded.records["path"].duplicated(keep="last").to_numpy()
        return loaded.take(np.flatnonzero(~older))

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
        _write_part(self.folder / f"part-{time.time_ns()}-{uuid.uuid4().hex}.arrow", inspected)

    def merge(self, current: Inspected) -> None:
        """Replace every part by one holding exactly ``current`` (the files of the last scan)."""
        old = [part for part in self.folder.glob(PART_PATTERN) if part.name != MERGED_PART]
        _write_part(self.folder / MERGED_PART, current)
        for part in old:
            part.unlink()


def _write_part(path: Path, inspected: Inspected) -> None:
    """Write a part out of sight and publish it by a rename."""
    records = pa.Table.from_pandas(inspected.records[[*STAMP_COLUMNS, *RECORD_COLUMNS]],
                                   preserve_index=False)
    table = pa.Table.from_arrays(
        [*records.cast(RECORD_SCHEMA).columns,
         _binary_column(inspected.phash), _binary_column(inspected.average)], schema=PART_SCHEMA)
    with staged(path, folder=False) as staging, pa.OSFile(str(staging), "wb") as sink, \
            pa.ipc.new_file(sink, PART_SCHEMA) as writer:
        writer.write_table(table, max_chunksize=WRITE_CHUNK)


def _read_part(part: Path) -> pa.Table | None:
    """A part's table, or None if it is damaged (its files are inspected again)."""
    try:
        with pa.OSFile(str(part)) as source:  # read, not mapped: the tables outlive the file
            table = pa.ipc.open_file(source).read_all()
        intact = table.schema.equals(PART_SCHEMA) and not any(
            table[column].null_count for column in HASH_COLUMNS)
        return table if intact else None
    except (OSError, pa.ArrowException):
        return None


def _inspected(table: pa.Table) -> Inspected:
    """The parts' records, joined by Arrow without a copy, then converted once."""
    return Inspected(_compact(table.drop_columns(HASH_COLUMNS).to_pandas()),
                     _binary_rows(table["phash"], HASH_BYTES),
                     _binary_rows(table["average"], AVERAGE_BYTES))


def _binary_column(rows: np.ndarray) -> pa.Array:
    """A ``(rows, width)`` uint8 array as a fixed-size binary column, without a copy per row."""
    width = rows.shape[1]
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(rows), [None, pa.py_buffer(np.ascontiguousarray(rows))])


def _binary_rows(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A fixed-size binary column back as a ``(rows, width)`` uint8 array."""
    array = column.combine_chunks()
    data = np.frombuffer(array.buffers()[1], np.uint8)
    start = array.offset * width
    return data[start:start + len(array) * width].reshape(len(array), width).copy()


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
