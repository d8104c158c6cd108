"""Listing a source folder: the files a scan inspects (path, size, modification time), and the
files skipped by their name or link alone, without opening them."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, is_hidden
from .sources import TEST_PART, TRAIN_PART, part_and_class, subfolders

WALK_CHUNK = 10_000  # files listed into the table at a time


def class_folders(folder: Path, official_split: bool) -> list[str]:
    """The class folders: those at the top, or those in ``train/`` and ``test/``, pooled."""
    if not official_split:
        return subfolders(folder)
    return sorted({*subfolders(folder / TRAIN_PART), *subfolders(folder / TEST_PART)})


def list_files(folder: Path, official_split: bool) -> tuple[pd.DataFrame, list[dict]]:
    """The files to inspect (path relative to ``folder``, size, modification time), and skip
    records for files that cannot be images at all (outside a class folder, wrong extension,
    symlinks not followed)."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected <folder>/<class>/<image>")
    skipped = []
    listed = _listed_files(str(folder), "", folder.resolve(), official_split, skipped)
    pieces = []  # a table per chunk of files: a million paths never sit in Python objects at once
    while chunk := list(itertools.islice(listed, WALK_CHUNK)):
        pieces.append(pd.DataFrame(chunk, columns=["path", "size", "mtime_ns"]).astype(
            {"size": np.int64, "mtime_ns": np.int64}))
    if not pieces:
        return pd.DataFrame({"path": pd.Series([], dtype=str), "size": np.zeros(0, np.int64),
                             "mtime_ns": np.zeros(0, np.int64)}), skipped
    return pd.concat(pieces, ignore_index=True), skipped


def _listed_files(directory: str, prefix: str, root: Path, official_split: bool,
                  skipped: list[dict]) -> Iterator[tuple[str, int, int]]:
    """Each candidate file under ``directory`` in name order, as (relative path, size,
    modification time); the files that cannot be images go to ``skipped``."""
    with os.scandir(directory) as scanned:
        entries = sorted((e for e in scanned if not is_hidden(e.name)), key=lambda e: e.name)
    for entry in entries:
        relative = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _listed_files(entry.path, relative + "/", root, official_split, skipped)
        elif problem := _path_problem(entry, relative, root, official_split):
            skipped.append({"path": relative, "problem": problem[0], "reason": problem[1]})
        else:
            stat = entry.stat()
            yield relative, stat.st_size, stat.st_mtime_ns


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
