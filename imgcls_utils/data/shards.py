"""Shards: the images of each split decoded once, resized, and written as uint8 TFRecord files.

Which images go to which shard, and in what order, is decided before any is written (the
training split shuffled with the seed, so that every shard mixes the classes), so each shard is
one independent task: written by a thread of this process or by a Ray worker, it holds the same
bytes. A task returns its file's size and sha256, which ``dataset.json`` records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..config import Section
from ..errors import DataError
from ..files import file_sha256
from .images import DECODE_ERRORS, load_image, pixel_limit_checked_by_caller
from .split import SPLITS

SHARD_SIZE = 2048


@dataclass(frozen=True)
class Shard:
    """One shard to write: its file name and its images (paths and label indices), in order."""

    name: str
    paths: list[str]
    labels: list[int]


@dataclass(frozen=True)
class ShardSettings:
    """What every shard task needs: where the images are, where to write, how to decode."""

    source: Path
    folder: Path
    image_size: tuple[int, int]
    channels: int


def in_shard_order(images: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The split table in the order the shards hold it: split by split, training shuffled
    with ``seed`` (the shuffle buffer only mixes records that are near each other in the
    files), validation and test as they come; one copy of the table, however large."""
    order = []
    for split in SPLITS:
        rows = pd.Series(np.flatnonzero((images["split"] == split).to_numpy()))
        order.append(rows.sample(frac=1, random_state=seed) if split == "train" else rows)
    return images.take(np.concatenate(order)).reset_index(drop=True)


def plan_shards(images: pd.DataFrame, class_names: list[str]) -> list[Shard]:
    """The shards of a split table in shard order: ``<split>-<i>-of-<n>.tfrecord``, at most
    ``SHARD_SIZE`` images each, one (maybe empty) per split at least."""
    index = {name: i for i, name in enumerate(class_names)}
    shards = []
    for split in SPLITS:
        rows = images[images["split"] == split]
        count = max(1, -(-len(rows) // SHARD_SIZE))
        for number in range(count):
            chunk = rows.iloc[number * SHARD_SIZE:(number + 1) * SHARD_SIZE]
            shards.append(Shard(f"{split}-{number:05d}-of-{count:05d}.tfrecord",
                                chunk["path"].tolist(), [index[x] for x in chunk["label"]]))
    return shards


def write_shards(shards: list[Shard], settings: ShardSettings, engine) -> dict[str, list]:
    """Write every shard as a task on ``engine``; ``name -> [size, sha256]``."""
    written = {}
    total = sum(len(shard.paths) for shard in shards)
    with tqdm(total=total, desc=f"preprocessing {settings.source.name}", unit="img", leave=False,
              mininterval=1.0, disable=None) as progress:
        for index, facts in engine.map_unordered(write_shard, shards, settings):
            written[shards[index].name] = facts
            progress.update(len(shards[index].paths))
    return {shard.name: written[shard.name] for shard in shards}


def write_shard(shard: Shard, settings: ShardSettings) -> list:
    """One task: decode the shard's images and write them; the file's size and sha256."""
    from ..quiet_tensorflow import tf

    path = settings.folder / shard.name
    with pixel_limit_checked_by_caller(), tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(shard.paths, shard.labels):
            writer.write(example(_decode(settings.source / image, settings), label))
    return [path.stat().st_size, file_sha256(path)]


def _decode(path: Path, settings: ShardSettings) -> np.ndarray:
    try:
        return load_image(path, settings.image_size, settings.channels)
    except DECODE_ERRORS as error:
        raise DataError(f"{path} passed the scan but cannot be decoded now ({error}); it changed "
                        "during the run: run again") from None


def example(pixels: np.ndarray, label: int) -> bytes:
    """One image as a serialized ``tf.train.Example`` (map entries in key order, so the bytes
    are the same in every process)."""
    from ..quiet_tensorflow import tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def shard_settings(source: Path, folder: Path, data: Section) -> ShardSettings:
    return ShardSettings(Path(source), Path(folder), tuple(data.image_size), data.channels)
