"""Data flow: source -> Raw_Data -> scan -> split -> Processed_Data shards -> tf.data.

The stages live in their own modules (``sources``, ``scan`` and ``duplicates``, ``split``,
``images``); this one decodes the split images once into uint8 TFRecord shards under
``Processed_Data/<dataset>/`` with the manifest and a fingerprint of the inputs, and streams them
for training. It also re-exports the names notebooks use, so ``data_utils.<name>`` is one import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .config import Config, Section
from .errors import DataError
from .images import DECODE_ERRORS, IMAGE_EXTENSIONS, load_image, pixel_limit_checked_by_caller
from .scan import (ScanResult, animated_images, class_counts, class_imbalance,
                   image_size_summary, load_samples, pixel_statistics, scan_image_folder,
                   scan_report, scan_source)
from .sources import (DIGITS_SOURCE, materialize_digits, materialize_idx, materialize_tfds,
                      resolve_source)
from .split import SPLITS, assign_folds, groups_across_splits, split_images, split_sizes

__all__ = [
    "DataError", "IMAGE_EXTENSIONS", "load_image", "ScanResult", "animated_images",
    "class_counts", "class_imbalance", "image_size_summary", "load_samples", "pixel_statistics",
    "scan_image_folder", "scan_report", "scan_source", "DIGITS_SOURCE", "materialize_digits",
    "materialize_idx", "materialize_tfds", "resolve_source", "SPLITS", "assign_folds",
    "groups_across_splits", "split_images", "split_sizes", "PreparedData", "fingerprint", "prepare_data",
    "prepare_from_scan", "use_cache", "make_dataset", "build_augmentation",
]

SHARD_SIZE = 2048
DECODE_CHUNK = 256  # images decoded ahead of the writer: bounds memory for large image sizes
READ_BUFFER_BYTES = 1 << 20
# Bump when the shard or manifest layout changes, so that older processed folders are rebuilt,
# not misread.
PROCESSED_FORMAT = 3
# Settings that change how data is found or read, not what is written to Processed_Data.
NOT_FINGERPRINTED = {"source", "cache", "cache_budget_mb"}


@dataclass
class PreparedData:
    """A split dataset materialized in Processed_Data, ready to stream."""

    folder: Path
    source: Path
    manifest: pd.DataFrame
    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    fingerprint: str
    reused: bool

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    def count(self, split: str) -> int:
        return int((self.manifest["split"] == split).sum())

    def paths(self, split: str) -> list[str]:
        """The split's image paths (relative to ``source``) in the order its shards hold them,
        which is the order its dataset yields them when not training: what row ``i`` of an
        evaluation's predictions refers to."""
        return self.manifest.loc[self.manifest["split"] == split, "path"].tolist()

    def shards(self, split: str) -> list[str]:
        return sorted(str(p) for p in self.folder.glob(f"{split}-*.tfrecord"))

    def decoded_bytes(self) -> int:
        """Memory the decoded uint8 images of all splits take (what an in-memory cache holds)."""
        return len(self.manifest) * int(np.prod(self.input_shape))


def fingerprint(scan: ScanResult, data: Section) -> str:
    """A hash of every used file's path, label and content plus every setting that shapes the
    output (image size, split, limits, duplicate handling, class names...)."""
    digest = hashlib.sha256()
    settings = {key: value for key, value in data.items() if key not in NOT_FINGERPRINTED}
    digest.update(json.dumps({"format": PROCESSED_FORMAT, **settings}, sort_keys=True).encode())
    for row in scan.images.sort_values("path").itertuples():
        digest.update(f"{row.path}\0{row.label}\0{row.sha256}\n".encode())
    return digest.hexdigest()


def processed_folder(source_folder: Path, processed_dir: Path) -> Path:
    return Path(processed_dir) / Path(source_folder).name


def prepare_data(cfg: Config) -> PreparedData:
    """Scan the source, split it and materialize the shards, reusing them when nothing changed."""
    scan = scan_source(cfg)
    return prepare_from_scan(scan, cfg.data, cfg.path("processed_dir"))


def prepare_from_scan(scan: ScanResult, data: Section, processed_dir: Path) -> PreparedData:
    """Split and write the shards of a scan, unless the processed folder already matches it."""
    folder = processed_folder(scan.folder, processed_dir)
    key = fingerprint(scan, data)
    info_path = folder / "dataset.json"
    reused = info_path.is_file() and json.loads(info_path.read_text())["fingerprint"] == key
    if not reused:
        _write_processed(scan, data, folder, key)
    info = json.loads(info_path.read_text())
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"label": str})
    return PreparedData(folder, scan.folder, manifest, info["class_names"],
                        tuple(info["image_size"]), info["channels"], key, reused)


def _write_processed(scan: ScanResult, data: Section, folder: Path, key: str) -> None:
    """Build the processed folder next to the old one and swap it in only when complete."""
    manifest = split_images(scan.images, data).drop(columns="phash")
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    class_index = {name: i for i, name in enumerate(scan.class_names)}
    progress = tqdm(total=len(manifest), desc=f"preprocessing {scan.folder.name}", unit="img",
                    leave=False, mininterval=1.0)
    written = []
    with pixel_limit_checked_by_caller(), ThreadPoolExecutor(os.cpu_count()) as pool:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            if split == "train":
                # Written in random order, so every shard mixes all classes: the shuffle buffer
                # only mixes records that are near each other in the files.
                rows = rows.sample(frac=1, random_state=data.seed)
            _write_shards(rows, scan.folder, tmp / split, class_index, data, pool, progress)
            written.append(rows)
    progress.close()
    manifest = pd.concat(written, ignore_index=True)  # in shard order: see PreparedData.paths
    manifest.to_csv(tmp / "manifest.csv", index=False)
    info = {"fingerprint": key, "source": str(scan.folder), "class_names": scan.class_names,
            "image_size": list(data.image_size), "channels": data.channels,
            "counts": {s: int((manifest["split"] == s).sum()) for s in SPLITS}}
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _write_shards(rows: pd.DataFrame, source: Path, prefix: Path, class_index: dict,
                  data: Section, pool: ThreadPoolExecutor, progress: tqdm) -> None:
    from .runtime import tf

    count = max(1, -(-len(rows) // SHARD_SIZE))
    for shard in range(count):
        chunk = rows.iloc[shard * SHARD_SIZE:(shard + 1) * SHARD_SIZE]
        examples = iter(zip(chunk["path"], chunk["label"]))
        with tf.io.TFRecordWriter(f"{prefix}-{shard:05d}-of-{count:05d}.tfrecord") as writer:
            while batch := list(islice(examples, DECODE_CHUNK)):
                decoded = pool.map(lambda example: _decode(source / example[0], data), batch)
                for pixels, (_, label) in zip(decoded, batch):
                    writer.write(_example(pixels, class_index[label]))
                    progress.update()


def _decode(path: Path, data: Section) -> np.ndarray:
    try:
        return load_image(path, tuple(data.image_size), data.channels)
    except DECODE_ERRORS as error:
        raise DataError(f"{path} passed the scan but cannot be decoded now ({error}); it changed "
                        "during the run: run again") from None


def _example(pixels: np.ndarray, label: int) -> bytes:
    from .runtime import tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# ----------------------------------------------------------------------------- tf.data

def use_cache(prepared: PreparedData, data: Section) -> bool:
    """``data.cache`` for this dataset: ``auto`` caches when the decoded images of all splits
    fit within ``data.cache_budget_mb``; otherwise every epoch streams from the shards."""
    if data.cache == "auto":
        return prepared.decoded_bytes() <= data.cache_budget_mb * (1 << 20)
    return data.cache


def make_dataset(prepared: PreparedData, split: str, batch_size: int, *, training: bool = False,
                 augmentation=None, cache: bool = True, seed: int = 0):
    """Stream one split as batches of ``(float32 pixels in [0, 255], int label)``.

    Records are parsed in parallel and, with ``cache``, kept in memory as uint8 after the first
    epoch. Training batches are shuffled and, when ``augmentation`` is given, augmented on the
    fly; validation and test batches are never augmented and keep the manifest's order
    (``prepared.paths(split)``): their shards are read one after the other.
    """
    from .runtime import tf

    autotune = tf.data.AUTOTUNE
    shape = prepared.input_shape
    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        return tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape), example["label"]

    def to_float(images, labels):
        images = tf.cast(images, tf.float32)
        if training and augmentation is not None:
            images = augmentation(images, training=True)
        return images, labels

    dataset = tf.data.TFRecordDataset(prepared.shards(split), buffer_size=READ_BUFFER_BYTES,
                                      num_parallel_reads=autotune if training else None)
    # A known length lets Keras size its epochs instead of running into the end of the data.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(prepared.count(split)))
    dataset = dataset.map(parse, num_parallel_calls=autotune)
    if cache:
        dataset = dataset.cache()  # uint8: a quarter of the memory float32 would take
    if training:
        dataset = dataset.shuffle(4 * batch_size + 1024, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(to_float, num_parallel_calls=autotune)
    return dataset.prefetch(autotune)


def build_augmentation(augment: Section, seed: int):
    """The ``augment`` section as a Keras preprocessing pipeline, or None when it is disabled."""
    from .runtime import keras

    layers = keras.layers
    steps = []
    if augment.flip != "none":
        steps.append(layers.RandomFlip(augment.flip, seed=seed, name="random_flip"))
    if augment.rotation:
        steps.append(layers.RandomRotation(augment.rotation, fill_mode="constant", seed=seed,
                                           name="random_rotation"))
    if augment.zoom:
        steps.append(layers.RandomZoom(augment.zoom, fill_mode="constant", seed=seed,
                                       name="random_zoom"))
    if augment.translation:
        steps.append(layers.RandomTranslation(augment.translation, augment.translation,
                                              fill_mode="constant", seed=seed,
                                              name="random_translation"))
    if augment.contrast:
        steps.append(layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed,
                                           name="random_contrast"))
    if not augment.enabled or not steps:
        return None
    return keras.Sequential(steps, name="augmentation")
