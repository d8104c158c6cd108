"""Data flow: source -> Raw_Data -> scan -> stratified split -> Processed_Data shards -> tf.data.

Images are decoded once, with Pillow (every common format, any mode, EXIF orientation), resized
and converted to the configured channel count, and written as uint8 TFRecord shards under
``Processed_Data/<dataset>/`` together with the split manifest and a fingerprint of the inputs.
Training streams those shards, so the pipeline does not care which source the images came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from .config import Config, Section
from .errors import UserError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
DIGITS_SOURCE = "digits"
SHARD_SIZE = 2048
READ_BUFFER_BYTES = 1 << 20


class DataError(UserError):
    """A problem with the input data, naming the file or folder and what to do."""


# ----------------------------------------------------------------------------- sources

def materialize_digits(raw_dir: Path) -> Path:
    """Write scikit-learn's 1,797 handwritten digits as ``raw_dir/digits/<class>/<id>.png``.

    Idempotent: files that exist are left untouched, so Raw_Data is never rewritten.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = Path(raw_dir) / DIGITS_SOURCE
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        path = folder / str(label) / f"{index:04d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.round(image * (255 / 16)).astype(np.uint8)
            _write_atomically(path, lambda tmp: Image.fromarray(pixels, "L").save(tmp, "PNG"))
    return folder


def resolve_source(data: Section, raw_dir: Path) -> Path:
    """The image folder for ``data.source``: the embedded digits or a folder of class folders."""
    if data.source == DIGITS_SOURCE:
        return materialize_digits(raw_dir)
    folder = Path(data.source).expanduser()
    folder = folder if folder.is_absolute() else Path(raw_dir) / folder
    if not folder.is_dir():
        raise DataError(f"data.source: folder {folder} does not exist; give '{DIGITS_SOURCE}' "
                        "or a folder with one sub-folder of images per class")
    return folder


# ----------------------------------------------------------------------------- scan

@dataclass
class ScanResult:
    """Usable images (``images``: path, label, width, height, mode, sha256) and skipped files."""

    folder: Path
    images: pd.DataFrame
    skipped: pd.DataFrame

    @property
    def class_names(self) -> list[str]:
        return sorted(self.images["label"].unique())


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "Thumbs.db"


def _inspect_image(path: Path) -> dict:
    """Header facts of one image file; raises ValueError with a reason when it is unusable."""
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
            return {"width": image.width, "height": image.height, "mode": image.mode}
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"not a readable image: {error}") from None


def scan_image_folder(folder: Path) -> ScanResult:
    """Account for every file under ``folder``: each is a usable image or skipped with a reason."""
    folder = Path(folder)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))
    if not class_dirs:
        raise DataError(f"{folder} has no class sub-folders; expected <folder>/<class>/<image>")
    images, skipped = [], []
    for class_dir in class_dirs:
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not _is_hidden(p)):
            relative = path.relative_to(folder).as_posix()
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append({"path": relative, "reason": f"unsupported extension {path.suffix!r}"})
                continue
            try:
                facts = _inspect_image(path)
            except ValueError as error:
                skipped.append({"path": relative, "reason": str(error)})
                continue
            images.append({"path": relative, "label": class_dir.name, **facts,
                           "sha256": _file_sha256(path)})
    result = ScanResult(folder, pd.DataFrame(images, columns=[
        "path", "label", "width", "height", "mode", "sha256"]),
        pd.DataFrame(skipped, columns=["path", "reason"]))
    _check_usable(result, class_dirs)
    return result


def _check_usable(scan: ScanResult, class_dirs: list[Path]) -> None:
    used = set(scan.images["label"])
    empty = [d.name for d in class_dirs if d.name not in used]
    if empty:
        raise DataError(f"{scan.folder}: class folder(s) {', '.join(empty)} contain no usable "
                        "images; add images or remove the folder")
    if len(used) < 2:
        raise DataError(f"{scan.folder}: found {len(used)} class; classification needs at least 2 "
                        "class sub-folders")


def class_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Images per class, sorted by class name, with each class's share of the total."""
    counts = images["label"].value_counts().sort_index().rename("images").to_frame()
    counts["share"] = (counts["images"] / counts["images"].sum()).round(3)
    counts.index.name = "class"
    return counts


def image_size_summary(images: pd.DataFrame) -> pd.DataFrame:
    """How many images have each (width, height, mode) combination, most common first."""
    return (images.groupby(["width", "height", "mode"]).size().rename("images")
            .sort_values(ascending=False).reset_index())


def load_samples(scan: ScanResult, per_class: int, data: Section) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of each class (by path), decoded as for training:
    ``(images, labels)`` with labels as indices into ``scan.class_names``."""
    rows = scan.images.sort_values("path").groupby("label", sort=True).head(per_class)
    rows = rows.sort_values(["label", "path"])
    images = [load_image(scan.folder / path, tuple(data.image_size), data.channels)
              for path in rows["path"]]
    labels = [scan.class_names.index(label) for label in rows["label"]]
    return np.stack(images), np.array(labels)


def pixel_statistics(scan: ScanResult, data: Section, max_images: int = 2000) -> pd.DataFrame:
    """Mean, standard deviation, min and max of pixel values per channel, after decoding as for
    training, over all images or a seeded sample of ``max_images``."""
    rows = scan.images
    if len(rows) > max_images:
        rows = rows.sample(max_images, random_state=data.seed)
    pixels = np.stack([load_image(scan.folder / p, tuple(data.image_size), data.channels)
                       for p in rows["path"]]).reshape(-1, data.channels).astype(np.float64)
    names = ["gray"] if data.channels == 1 else ["red", "green", "blue"]
    return pd.DataFrame({"mean": pixels.mean(0), "std": pixels.std(0), "min": pixels.min(0),
                         "max": pixels.max(0)}, index=pd.Index(names, name="channel")).round(2)


# ----------------------------------------------------------------------------- split

def split_images(images: pd.DataFrame, data: Section) -> pd.DataFrame:
    """Add a ``split`` column: a stratified, seeded train/val/test assignment (reproducible)."""
    images = images.sort_values("path").reset_index(drop=True)
    held_out = data.val_fraction + data.test_fraction
    smallest = images["label"].value_counts().min()
    if smallest * min(data.val_fraction, data.test_fraction) < 1:
        raise DataError(f"the smallest class has {smallest} images: too few to put at least one in "
                        "each of train/val/test; add images or raise data.val_fraction/test_fraction")
    train, rest = train_test_split(images, test_size=held_out, stratify=images["label"],
                                   random_state=data.seed)
    val, test = train_test_split(rest, test_size=data.test_fraction / held_out,
                                 stratify=rest["label"], random_state=data.seed)
    split = pd.Series("train", index=images.index)
    split[val.index], split[test.index] = "val", "test"
    return images.assign(split=split)


def split_sizes(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per class in each split: one row per class, one column per split, plus totals."""
    table = pd.crosstab(manifest["label"], manifest["split"], margins=True, margins_name="total")
    table = table[[*SPLITS, "total"]]
    table.index.name, table.columns.name = "class", None
    return table


# ----------------------------------------------------------------------------- preprocessing

def load_image(path: Path, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode any supported image to uint8 ``(height, width, channels)``: EXIF orientation
    applied, first frame of animations, converted to grayscale or RGB, resized."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image = _to_mode(image, "L" if channels == 1 else "RGB")
        height, width = image_size
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert consistently: transparency onto white, 16-bit scaled to 8-bit."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(array.max(), 1.0) if image.mode == "I" else 255.0 / 65535.0
        image = Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


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

    def shards(self, split: str) -> list[str]:
        return sorted(str(p) for p in self.folder.glob(f"{split}-*.tfrecord"))


def fingerprint(scan: ScanResult, data: Section) -> str:
    """A hash of every used file's content and label plus the settings that shape the output."""
    digest = hashlib.sha256()
    settings = {k: data[k] for k in ("image_size", "channels", "train_fraction", "val_fraction",
                                     "test_fraction", "seed")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for row in scan.images.sort_values("path").itertuples():
        digest.update(f"{row.path}\0{row.label}\0{row.sha256}\n".encode())
    return digest.hexdigest()


def processed_folder(source_folder: Path, processed_dir: Path) -> Path:
    return Path(processed_dir) / Path(source_folder).name


def prepare_data(cfg: Config) -> PreparedData:
    """Scan the source, split it and materialize the shards, reusing them when nothing changed."""
    scan = scan_image_folder(resolve_source(cfg.data, cfg.path("raw_dir")))
    return prepare_from_scan(scan, cfg.data, cfg.path("processed_dir"))


def prepare_from_scan(scan: ScanResult, data: Section, processed_dir: Path) -> PreparedData:
    folder = processed_folder(scan.folder, processed_dir)
    key = fingerprint(scan, data)
    info_path = folder / "dataset.json"
    reused = info_path.is_file() and json.loads(info_path.read_text())["fingerprint"] == key
    if not reused:
        _write_processed(scan, data, folder, key)
    info = json.loads(info_path.read_text())
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"label": str})
    return PreparedData(folder, scan.folder, manifest, info["class_names"], tuple(info["image_size"]),
                        info["channels"], key, reused)


def _write_processed(scan: ScanResult, data: Section, folder: Path, key: str) -> None:
    """Build the processed folder next to the old one and swap it in only when complete."""
    manifest = split_images(scan.images, data)
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    class_index = {name: i for i, name in enumerate(scan.class_names)}
    progress = tqdm(total=len(manifest), desc=f"preprocessing {scan.folder.name}", unit="img",
                    leave=False, mininterval=1.0)
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        _write_shards(rows, scan.folder, tmp / split, class_index, data, progress)
    progress.close()
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
                  data: Section, progress: tqdm) -> None:
    from .runtime import tf

    count = max(1, -(-len(rows) // SHARD_SIZE))
    for shard in range(count):
        chunk = rows.iloc[shard * SHARD_SIZE:(shard + 1) * SHARD_SIZE]
        with tf.io.TFRecordWriter(f"{prefix}-{shard:05d}-of-{count:05d}.tfrecord") as writer:
            for row in chunk.itertuples():
                pixels = load_image(source / row.path, tuple(data.image_size), data.channels)
                writer.write(_example(pixels, class_index[row.label]))
                progress.update()


def _example(pixels: np.ndarray, label: int) -> bytes:
    from .runtime import tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# ----------------------------------------------------------------------------- tf.data

def make_dataset(prepared: PreparedData, split: str, batch_size: int, *, training: bool = False,
                 augmentation=None, cache: bool = True, seed: int = 0):
    """Stream one split as batches of ``(float32 pixels in [0, 255], int label)``.

    Training batches are shuffled and, when ``augmentation`` is given, augmented on the fly;
    validation and test batches are never augmented and keep their order.
    """
    from .runtime import tf

    autotune = tf.data.AUTOTUNE
    shape = prepared.input_shape
    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape)
        return tf.cast(image, tf.float32), example["label"]

    dataset = tf.data.TFRecordDataset(prepared.shards(split), buffer_size=READ_BUFFER_BYTES,
                                      num_parallel_reads=autotune)
    # A known length lets Keras size its epochs instead of running into the end of the data.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(prepared.count(split)))
    dataset = dataset.map(parse, num_parallel_calls=autotune)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(4 * batch_size + 1024, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augmentation is not None:
        dataset = dataset.map(lambda x, y: (augmentation(x, training=True), y),
                              num_parallel_calls=autotune)
    return dataset.prefetch(autotune)


def build_augmentation(augment: Section, seed: int):
    """The ``augment`` section as a Keras preprocessing pipeline, or None when it is disabled."""
    from .runtime import keras

    layers = keras.layers
    steps = []
    if augment.flip != "none":
        steps.append(layers.RandomFlip(augment.flip, seed=seed))
    if augment.rotation:
        steps.append(layers.RandomRotation(augment.rotation, fill_mode="constant", seed=seed))
    if augment.zoom:
        steps.append(layers.RandomZoom(augment.zoom, fill_mode="constant", seed=seed))
    if augment.translation:
        steps.append(layers.RandomTranslation(augment.translation, augment.translation,
                                              fill_mode="constant", seed=seed))
    if augment.contrast:
        steps.append(layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed))
    if not augment.enabled or not steps:
        return None
    return keras.Sequential(steps, name="augmentation")


# ----------------------------------------------------------------------------- helpers

def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename into place, so a crash never leaves a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
