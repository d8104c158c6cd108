"""File helpers: content hashes, listings, and building a file or folder out of sight.

Everything imgcls writes for later use (processed data, materialized sources, model folders,
run state, caches) is first built under a staging name next to its final place and published
by a rename only when complete, so a crash leaves the old version or the new one, never half
of one. One scheme for all: ``.<name>.staging`` while building (hidden, deleted when the build
fails), ``.<name>.replaced`` for a folder being swapped out, ``.<name>.lock`` for the lock that
lets one process build while others wait. A training run's folder is the one exception that
survives a crash on purpose: ``<name>.resumable``, named so that it says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_SUFFIX = ".staging"
REPLACED_SUFFIX = ".replaced"
LOCK_SUFFIX = ".lock"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relative_files(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file under ``folder`` as a sorted relative POSIX path, leaving out the top-level
    entries named in ``skip``."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and path.relative_to(folder).parts[0] not in skip)


def staging_path(final: Path) -> Path:
    """Where ``final`` is built before it is published: hidden, next to it."""
    return final.with_name(f".{final.name}{STAGING_SUFFIX}")


def publish(built: Path, final: Path, replace: bool = True) -> Path:
    """Move the complete file or folder ``built`` to ``final``, replacing what is there (a file
    in one ``os.replace``, a folder by renaming the old one aside first), or with ``replace``
    false refusing to (FileExistsError)."""
    built, final = Path(built), Path(final)
    if final.exists() and not replace:
        raise FileExistsError(f"{final} already exists")
    if built.is_dir() and final.exists():
        replaced = final.with_name(f".{final.name}{REPLACED_SUFFIX}")
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
        built.rename(final)
        shutil.rmtree(replaced)
    else:
        os.replace(built, final)
    return final


@contextmanager
def staged(final: Path, folder: bool = True) -> Iterator[Path]:
    """Yield the (empty) staging path of ``final`` to build in; publish it when the block
    completes, delete it when the block fails."""
    final = Path(final)
    staging = staging_path(final)
    _remove(staging)  # left over from a build that was killed
    if folder:
        staging.mkdir(parents=True)
    else:
        staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    publish(staging, final)


@contextmanager
def locked(final: Path) -> Iterator[None]:
    """Hold an inter-process lock on ``final`` (a hidden ``.<name>.lock`` file next to it) while
    the block runs: a second process that wants to build the same thing waits, then finds it
    built."""
    lock = final.with_name(f".{final.name}{LOCK_SUFFIX}")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, text: str) -> None:
    """Replace the file ``path`` with ``text``: a crash leaves the old file or the new one."""
    with staged(path, folder=False) as staging:
        staging.write_text(text)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
