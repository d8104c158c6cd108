"""Processed_Data: the split images decoded once into uint8 TFRecord shards.

``Processed_Data/<source>-<H>x<W>x<C>-<settings hash>/`` holds the split table (``split.csv``:
one row per image with its label, split, content hash, duplicate group and fold), the shards of
each split, and ``dataset.json`` with a fingerprint of every input file and setting and the
size and sha256 of every file written. Each combination of preprocessing settings has its own
folder, so alternating between settings (a sweep over image sizes) reuses each. An unchanged
run reuses its folder after checking its files; changed inputs, or a damaged file, rebuild it
out of sight, swapped in whole. An inter-process lock lets one run build while others wait.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config, Section
from ..errors import warn
from ..files import file_sha256, locked, relative_files, staged, write_atomically
from .engine import Engine
from .input_shape import AUTO, resolve_input_shape
from .memory import give_back_freed_memory, in_system_heap
from .scan import ScanResult, scan_source
from .shards import in_shard_order, plan_shards, shard_settings, write_shards
from .sources import resolve_source
from .split import SPLITS, split_images
from .trained_classes import trainable_classes

# Bump when the shard or split table layout changes, so that older processed folders are rebuilt,
# not misread.
PROCESSED_FORMAT = 7
# Settings that change how data is found or read, not what is written to Processed_Data.
NOT_FINGERPRINTED = {"source", "cache", "cache_budget_mb"}
SPLIT_TABLE = "split.csv"
DATASET_INFO = "dataset.json"
# Each file's size and modification time when written: a cache of stat results, not data, so
# it is neither listed nor part of what two builds of the same data share byte for byte.
STAMPS_FILE = ".stamps.json"


@dataclass
class ProcessedData:
    """A split dataset materialized in Processed_Data, ready to stream: ``image_folder`` is the
    source's folder of class folders, ``images`` the split table (paths relative to it),
    ``left_out`` the class folders not trained on, with the reason."""

    folder: Path
    image_folder: Path
    images: pd.DataFrame
    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    fingerprint: str
    reused: bool
    left_out: dict[str, str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    def count(self, split: str) -> int:
        return int((self.images["split"] == split).sum())

    def label_counts(self, split: str) -> list[int]:
        """Images of each class in ``split``, in class order."""
        counts = self.images.loc[self.images["split"] == split, "label"].value_counts()
        return [int(counts.get(name, 0)) for name in self.class_names]

    def paths(self, split: str) -> list[str]:
        """The split's image paths (relative to ``image_folder``) in the order its shards hold
        them, which is the order its dataset yields them when not training: what row ``i`` of
        an evaluation's predictions refers to."""
        return self.images.loc[self.images["split"] == split, "path"].tolist()

    def shards(self, split: str) -> list[str]:
        return sorted(str(p) for p in self.folder.glob(f"{split}-*.tfrecord"))

    def decoded_bytes(self) -> int:
        """Memory the decoded uint8 images of all splits take (what an in-memory cache holds)."""
        return len(self.images) * int(np.prod(self.input_shape))

    def files(self) -> list[str]:
        """The files of the processed folder, relative to it."""
        return relative_files(self.folder, skip=(STAMPS_FILE,))


def _settings(data: Section) -> str:
    """Every setting that shapes the output (image size, split, limits, duplicate handling,
    class names and choice...), as canonical JSON."""
    settings = {key: value for key, value in data.items() if key not in NOT_FINGERPRINTED}
    return json.dumps({"format": PROCESSED_FORMAT, **settings}, sort_keys=True)


def fingerprint(scan: ScanResult, data: Section) -> str:
    """A hash of every used file's path, label and content plus the settings."""
    digest = hashlib.sha256(_settings(data).encode())
    for row in scan.images.itertuples():  # in path order, as the scan sorts them
        digest.update(f"{row.path}\0{row.label}\0{row.sha256}\n".encode())
    return digest.hexdigest()


def processed_folder(source_folder: Path, processed_dir: Path, data: Section) -> Path:
    """The folder of this source under these settings: readable size, hashed settings."""
    height, width = data.image_size
    settings = hashlib.sha256(_settings(data).encode()).hexdigest()[:8]
    name = f"{Path(source_folder).name}-{height}x{width}x{data.channels}-{settings}"
    return Path(processed_dir) / name


def process_data(cfg: Config, verify: bool = False) -> ProcessedData:
    """Scan the source, split it and materialize the shards, reusing them when nothing changed;
    with ``verify``, every source image and processed file is hashed to make sure."""
    scan = scan_source(cfg, verify)
    return process_scan(scan, cfg.data, cfg.path("processed_dir"), Engine.from_config(cfg.engine),
                        verify)


@in_system_heap
def process_scan(scan: ScanResult, data: Section, processed_dir: Path,
                 engine: Engine | None = None, verify: bool = False) -> ProcessedData:
    """Split and write the shards of the trainable classes of a scan (see ``trained_classes``),
    unless the processed folder already matches them; the shards are tasks on ``engine``. An
    ``auto`` image size or channel count is chosen from the scan's usable images
    (``input_shape``)."""
    data = resolve_input_shape(data, scan)
    classes, left_out = trainable_classes(scan, data)
    if left_out:  # a copy of a million rows only when some class is left out
        scan = replace(scan, images=scan.images[scan.images["label"].isin(classes)])
    folder = processed_folder(scan.folder, processed_dir, data)
    key = fingerprint(scan, data)
    with locked(folder):
        info = _built_info(folder)
        reused = info is not None and info["fingerprint"] == key
        if reused and (damage := _damage(folder, info, verify)):
            warn(f"{folder} is damaged ({damage}); rebuilding it")
            reused = False
        if not reused:
            engine = (engine or Engine()).for_files(len(scan.images))
            info = _write_processed(scan, data, folder, key, left_out, engine)
        os.utime(folder / DATASET_INFO)  # when it was last used: see processed_variants
        give_back_freed_memory()
        # Arrow's parser makes no Python string per cell on the way to the same table
        images = pd.read_csv(folder / SPLIT_TABLE, dtype={"label": str, "part": str},
                             engine="pyarrow")
    return ProcessedData(folder, scan.folder, images, info["class_names"],
                        tuple(info["image_size"]), info["channels"], key, reused,
                        info["left_out_classes"])


def processed_variants(processed_dir: Path) -> pd.DataFrame:
    """Every processed folder in ``processed_dir``, most recently used first: its source, image
    shape, seed, images, size on disk, when it was last used, and its layout version (an older
    one is rebuilt when used)."""
    rows = []
    used_last_first = sorted(Path(processed_dir).glob(f"*/{DATASET_INFO}"),
                             key=lambda path: path.stat().st_mtime_ns, reverse=True)
    for info_path in used_last_first:
        info, folder = json.loads(info_path.read_text()), info_path.parent
        settings = info.get("settings", {})
        rows.append({"folder": folder.name, "source": Path(info["source"]).name,
                     "shape": "x".join(map(str, [*info["image_size"], info["channels"]])),
                     "seed": settings.get("seed", "?"), "images": sum(info["counts"].values()),
                     "MiB": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1),
                     "last used": datetime.fromtimestamp(info_path.stat().st_mtime)
                     .strftime("%Y-%m-%d %H:%M"), "format": settings.get("format", "old")})
    columns = ["folder", "source", "shape", "seed", "images", "MiB", "last used", "format"]
    return pd.DataFrame(rows, columns=columns)


def current_variant(cfg: Config) -> Path:
    """The processed folder the config's source and settings use (built or not); an ``auto``
    input shape is resolved by a scan (cached: only new or changed files are read)."""
    data = cfg.data
    if AUTO in (data.image_size, data.channels):
        scan = scan_source(cfg)
        data = resolve_input_shape(data, scan)
    source = resolve_source(cfg.data, cfg.path("raw_dir"))
    return processed_folder(source, cfg.path("processed_dir"), data)


def remove_variants(processed_dir: Path, keep: Path) -> list[str]:
    """Delete every processed folder in ``processed_dir`` but ``keep`` (each once no run is
    building it); returns the names deleted."""
    removed = []
    for info_path in sorted(Path(processed_dir).glob(f"*/{DATASET_INFO}")):
        folder = info_path.parent
        if folder != Path(keep):
            with locked(folder):
                shutil.rmtree(folder)
            removed.append(folder.name)
    return removed


def _built_info(folder: Path) -> dict | None:
    """The ``dataset.json`` of a built processed folder, or None."""
    info_path = folder / DATASET_INFO
    return json.loads(info_path.read_text()) if info_path.is_file() else None


def _damage(folder: Path, info: dict, verify: bool) -> str:
    """What is wrong with a built folder's files (one missing, or its size or content changed
    since it was written, as ``info`` records them), or an empty string. A file is hashed only
    when its modification time moved since it was written, or with ``verify``."""
    stamps = _read_stamps(folder)
    checked = {}
    for name, (size, digest) in info["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        stamp = [path.stat().st_size, path.stat().st_mtime_ns]
        if stamp[0] != size:
            return f"{name} changed since it was written"
        if (verify or stamps.get(name) != stamp) and file_sha256(path) != digest:
            return f"{name} changed since it was written"
        checked[name] = stamp
    if checked != stamps:  # hashed and unchanged (copied, or touched): no need to hash again
        write_atomically(folder / STAMPS_FILE, json.dumps(checked))
    return ""


def _read_stamps(folder: Path) -> dict:
    try:
        return json.loads((folder / STAMPS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_processed(scan: ScanResult, data: Section, folder: Path, key: str,
                     left_out: dict[str, str], engine: Engine) -> dict:
    """Build the processed folder out of sight and swap it in only when complete; returns
    what its ``dataset.json`` holds."""
    images = in_shard_order(split_images(scan.images, data), data.seed)
    give_back_freed_memory()
    with staged(folder) as building:
        files = write_shards(plan_shards(images, scan.class_names),
                             shard_settings(scan.folder, building, data), engine)
        images.to_csv(building / SPLIT_TABLE, index=False)
        files[SPLIT_TABLE] = [(building / SPLIT_TABLE).stat().st_size,
                              file_sha256(building / SPLIT_TABLE)]
        info = {"fingerprint": key, "source": str(scan.folder), "class_names": scan.class_names,
                "left_out_classes": left_out,
                "image_size": list(data.image_size), "channels": data.channels,
                "settings": json.loads(_settings(data)),
                "counts": {s: int((images["split"] == s).sum()) for s in SPLITS},
                "files": dict(sorted(files.items()))}
        (building / DATASET_INFO).write_text(json.dumps(info, indent=2))
        stamps = {name: [(building / name).stat().st_size, (building / name).stat().st_mtime_ns]
                  for name in info["files"]}
        (building / STAMPS_FILE).write_text(json.dumps(stamps))
    return info
