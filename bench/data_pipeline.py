"""Data pipeline benchmark: four figures, each a ratio measured in this run.

1. throughput: images/s of imgcls' training pipeline (preprocessed shards, cache, parallel
   parse, augmentation, prefetch) vs the TensorFlow tutorial's plain
   ``keras.utils.image_dataset_from_directory`` (decodes every JPEG every epoch), two epochs;
2. starvation: imgcls' delivery rate vs what the default CNN consumes when training;
3. memory: peak RSS of preprocessing + one epoch at N and 10N images (one subprocess each);
4. scan: files/s of the scan (header checks, decode at thumbnail size, content and perceptual
   hashes), first and cached.

    .venv/bin/python bench/data_pipeline.py            # about 3 minutes on 2 CPU cores

The generated JPEGs (mixed sizes, 4 classes) live in a temporary folder deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgcls_utils import data_utils, model_utils  # noqa: E402
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config  # noqa: E402

CLASSES = ("circles", "squares", "mixed", "stripes")
IMAGE_SIZE = [64, 64]
BATCH = 64


def write_jpeg(path: Path, seed: int) -> None:
    """A photo-sized JPEG (160-640 x 120-480) of random shapes."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(160, 641)), int(rng.integers(120, 481)))
    image = Image.new("RGB", size, tuple(rng.integers(0, 256, 3).tolist()))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        box = [x, y, x + int(rng.integers(10, size[0] // 2)), y + int(rng.integers(10, size[1] // 2))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            box, fill=tuple(rng.integers(0, 256, 3).tolist()))
    image.save(path, "JPEG", quality=90)


def generate(folder: Path, count: int) -> Path:
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    paths = [folder / CLASSES[i % len(CLASSES)] / f"{i:05d}.jpg" for i in range(count)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_jpeg, paths, range(count)))
    return folder


def subset(folder: Path, target: Path, every: int) -> Path:
    """Every ``every``-th image of ``folder`` (all classes), as hard links: no copies."""
    for path in sorted(folder.rglob("*.jpg"))[::every]:
        link = target / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)
    return target


def config(source: Path, processed: Path):
    return load_config(REPO / CONFIG_RELATIVE_PATH, overrides={
        "data.source": str(source), "data.image_size": IMAGE_SIZE, "data.channels": 3,
        "paths.processed_dir": str(processed), "train.batch_size": BATCH})


def epoch_rates(dataset, epochs: int = 2) -> list[float]:
    """Images per second of each full pass over ``dataset``."""
    rates = []
    for _ in range(epochs):
        started, images = time.perf_counter(), 0
        for batch, _ in dataset:
            images += int(batch.shape[0])
        rates.append(images / (time.perf_counter() - started))
    return rates


def tutorial_pipeline(folder: Path):
    from imgcls_utils.runtime import keras

    return keras.utils.image_dataset_from_directory(folder, image_size=tuple(IMAGE_SIZE),
                                                    batch_size=BATCH, seed=1, verbose=False)


def our_pipeline(cfg, prepared, augment: bool = True):
    """The training split as training reads it; ``augment=False`` does the tutorial's work."""
    augmentation = data_utils.build_augmentation(cfg.augment, cfg.data.seed) if augment else None
    return data_utils.make_dataset(prepared, "train", BATCH, training=True,
                                   augmentation=augmentation, seed=cfg.data.seed,
                                   cache=data_utils.should_cache(prepared, cfg.data))


def cnn_consumption_rate(cfg, num_classes: int, steps: int = 40) -> float:
    """Images/s the default CNN trains on when data costs nothing (one batch, in memory)."""
    from imgcls_utils.runtime import tf

    model = model_utils.build_model(cfg.model, cfg.transfer, (*IMAGE_SIZE, 3), num_classes)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    batch = (tf.random.uniform((BATCH, *IMAGE_SIZE, 3), 0, 255),
             tf.zeros((BATCH,), tf.int64))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)  # tracing, warm-up
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * BATCH / (time.perf_counter() - started)


def peak_rss_mib(folder: Path, processed: Path) -> float:
    """Peak RSS of a fresh process that preprocesses ``folder`` and runs one training epoch."""
    done = subprocess.run([sys.executable, __file__, "--memory-child", str(folder),
                           str(processed)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def memory_child(folder: Path, processed: Path) -> None:
    cfg = config(folder, processed)
    prepared = data_utils.prepare_data(cfg)
    epoch_rates(our_pipeline(cfg, prepared), epochs=1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def main(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        folder = generate(tmp / "photos", count)
        print(f"generated {count} JPEGs in {time.perf_counter() - started:.0f} s")
        cfg = config(folder, tmp / "processed")

        started = time.perf_counter()
        scan = data_utils.scan_image_folder(folder, cfg.data, tmp / "scan-cache.json")
        scan_rate = count / (time.perf_counter() - started)
        started = time.perf_counter()
        data_utils.scan_image_folder(folder, cfg.data, tmp / "scan-cache.json")
        cached_rate = count / (time.perf_counter() - started)

        started = time.perf_counter()
        prepared = data_utils.prepare_from_scan(scan, cfg.data, tmp / "processed")
        preprocessing = time.perf_counter() - started
        tutorial = epoch_rates(tutorial_pipeline(folder))
        plain = epoch_rates(our_pipeline(cfg, prepared, augment=False))
        augmented = epoch_rates(our_pipeline(cfg, prepared))
        consumption = cnn_consumption_rate(cfg, len(prepared.class_names))

        small = subset(folder, tmp / "small", every=10)
        rss_small = peak_rss_mib(small, tmp / "processed-small")
        rss_large = peak_rss_mib(folder, tmp / "processed-large")

    print(f"\n1. throughput, images/s in epochs 1 and 2 ({count} JPEGs, batch {BATCH}, "
          f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}x3):\n"
          f"   tutorial image_dataset_from_directory:   {tutorial[0]:7,.0f} {tutorial[1]:7,.0f}\n"
          f"   imgcls training pipeline, same work:     {plain[0]:7,.0f} {plain[1]:7,.0f}"
          f"   (after preprocessing once: {preprocessing:.1f} s)\n"
          f"   imgcls, with the default augmentation:   {augmented[0]:7,.0f} {augmented[1]:7,.0f}\n"
          f"   ratio on epoch 2, same work: {plain[1] / tutorial[1]:.1f}x (target >= 2x)")
    print(f"2. starvation: imgcls delivers {augmented[1]:,.0f} augmented images/s, the default "
          f"CNN trains on {consumption:,.0f} images/s: ratio {augmented[1] / consumption:.1f}x "
          "(target >= 3x)")
    print(f"3. memory, peak RSS of preprocessing + one epoch: {count // 10} images "
          f"{rss_small:,.0f} MiB, {count} images {rss_large:,.0f} MiB: ratio "
          f"{rss_large / rss_small:.2f} (target <= 1.3)")
    print(f"4. scan (header checks, thumbnail decode, sha256, perceptual hash): "
          f"{scan_rate:,.0f} files/s; re-scan with the cache: {cached_rate:,.0f} files/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="JPEGs to generate (10N)")
    parser.add_argument("--memory-child", nargs=2, type=Path, metavar=("FOLDER", "PROCESSED"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
    else:
        main(args.images)
