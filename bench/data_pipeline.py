"""Data pipeline benchmark: four figures, each against a baseline measured in this run.

1. throughput: images/s of imgcls' training split (``make_datasets`` on the processed data,
   augmentation off, as the tutorial has none) vs the TensorFlow tutorial's pipeline as it
   writes it (``image_dataset_from_directory`` with ``validation_split``/``subset``, then
   ``cache().shuffle(1000).prefetch(AUTOTUNE)``): same files, same training-split size, same
   output size, batch and channels. Epoch 1 is charged with each side's one-time work from a
   cold start (imgcls: ``process_data``, the scan and the shards, with no Processed_Data and no
   scan cache; the tutorial: its file listing, and the decoding and cache fill of its first
   epoch); epoch 2 reads both caches. The rate with the default augmentation is shown too.
   Median of interleaved rounds, each side from a cold start in every round.
2. memory: peak RSS (``VmHWM``) of preprocessing + one training epoch at N and 10N images, one
   fresh process each, at 160x160x3 so that the decoded images weigh beside TensorFlow's own
   memory: streaming (``cache: auto`` with ``data.cache_budget_mb: 0``, which nothing fits in)
   and cached (``cache: true``, whose memory grows with the decoded images, printed too).
3. starvation: training images/s of the default CNN, built and compiled as ``TrainingRun`` does
   (at the precision chosen for this machine), fed by the augmented training pipeline vs fed the
   same batches already in memory, in the same process on the same cores (1.00: the pipeline
   never keeps training waiting); and the pipeline's delivery rate on its own.
4. scan: files/s of the scan (header checks, decode at thumbnail size, content and perceptual
   hashes), first and with its cache.

    .venv/bin/python bench/data_pipeline.py                # about 8 minutes on 2 CPU cores
    .venv/bin/python bench/data_pipeline.py --images 600   # a quick check of the script

The generated JPEGs (mixed sizes, 4 classes) live in a temporary folder deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
CHANNELS = 3
BATCH = 64
THROUGHPUT_ROUNDS = 3
TRAINING_ROUNDS = 3  # epochs of each feed, interleaved: pipeline first, then memory first...
# Larger than the other figures' images, so that holding the decoded images would show: 10N of
# them take hundreds of MiB, beside the few hundred MiB of TensorFlow itself.
MEMORY_IMAGE_SIZE = [160, 160]
MEMORY_MODES = {"streaming": {"data.cache": "auto", "data.cache_budget_mb": 0},
                "cached": {"data.cache": True}}
TUTORIAL = "tutorial image_dataset_from_directory"
PLAIN = "imgcls training split, no augmentation"
AUGMENTED = "imgcls, with the default augmentation"


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


def config(source: Path, processed_dir: Path, overrides: dict | None = None):
    """The project's default config on ``source``, its Processed_Data in ``processed_dir``."""
    return load_config(REPO / CONFIG_RELATIVE_PATH, overrides={
        "data.source": str(source), "data.image_size": IMAGE_SIZE, "data.channels": CHANNELS,
        "paths.processed_dir": str(processed_dir), "train.batch_size": BATCH, **(overrides or {})})


def training_split(cfg, processed):
    """The training dataset exactly as training reads it."""
    return data_utils.make_datasets(cfg, processed)["train"]


# ----------------------------------------------------------------------------- 1. throughput

def epoch_rates(make_dataset, one_time_seconds: float = 0.0) -> list[float]:
    """Images/s of two passes over the dataset ``make_dataset()`` returns; epoch 1 is charged
    with making it and with ``one_time_seconds`` of work done for it beforehand."""
    started = time.perf_counter()
    dataset = make_dataset()
    rates, one_time = [], one_time_seconds + time.perf_counter() - started
    for _ in range(2):
        started, images = time.perf_counter(), 0
        for batch, _ in dataset:
            images += int(batch.shape[0])
        rates.append(images / (one_time + time.perf_counter() - started))
        one_time = 0.0
    return rates


def tutorial_pipeline(folder: Path, images: int, train_images: int):
    """The "Load and preprocess images" tutorial's training dataset, as it writes it, holding
    ``train_images`` of the ``images`` files."""
    from imgcls_utils.quiet_tensorflow import tf

    train_ds = tf.keras.utils.image_dataset_from_directory(
        folder, validation_split=(images - train_images + 0.5) / images, subset="training",
        seed=123, image_size=tuple(IMAGE_SIZE), batch_size=BATCH,
        color_mode="rgb" if CHANNELS == 3 else "grayscale")
    assert len(train_ds.file_paths) == train_images, "the tutorial's split differs from ours"
    AUTOTUNE = tf.data.AUTOTUNE  # as the tutorial writes it
    return train_ds.cache().shuffle(1000).prefetch(buffer_size=AUTOTUNE)


def imgcls_rates(folder: Path, processed_dir: Path) -> tuple[int, list[float], list[float]]:
    """Training images, and images/s of epochs 1 and 2 of imgcls' training split without and
    with augmentation; epoch 1 of each is charged with preparing the data from nothing (no
    Processed_Data, no scan cache): the scan and the shards."""
    started = time.perf_counter()
    cfg = config(folder, processed_dir)
    processed = data_utils.process_data(cfg)
    preparing = time.perf_counter() - started
    assert not processed.reused and data_utils.should_cache(processed, cfg.data)
    plain_cfg = config(folder, processed_dir, {"augment.enabled": False})
    plain = epoch_rates(lambda: training_split(plain_cfg, processed), preparing)
    augmented = epoch_rates(lambda: training_split(cfg, processed), preparing)
    return processed.count("train"), plain, augmented


def throughput(folder: Path, images: int, work: Path, rounds: int) -> tuple[int, dict]:
    """Training images, and for each pipeline the median images/s of epochs 1 and 2 over
    ``rounds`` rounds that alternate which side goes first, each side from a cold start."""
    runs = {TUTORIAL: [], PLAIN: [], AUGMENTED: []}
    train_images = 0
    for turn in range(rounds):
        for side in ("imgcls", "tutorial")[::1 if turn % 2 == 0 else -1]:
            if side == "imgcls":
                train_images, plain, augmented = imgcls_rates(folder, work / f"processed-{turn}")
                runs[PLAIN].append(plain)
                runs[AUGMENTED].append(augmented)
            else:
                runs[TUTORIAL].append(epoch_rates(
                    lambda: tutorial_pipeline(folder, images, train_images)))
    medians = {name: [statistics.median(run[epoch] for run in values) for epoch in (0, 1)]
               for name, values in runs.items()}
    return train_images, medians


# ----------------------------------------------------------------------------- 2. memory

def memory_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB. Not
    ``ru_maxrss``: a process started by another keeps its parent's peak there."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(folder: Path, processed_dir: Path, mode: str) -> None:
    """Preprocess ``folder`` and run one training epoch; print what ``memory_use`` reads."""
    from imgcls_utils.quiet_tensorflow import tf  # noqa: F401  (the floor: TensorFlow loaded)

    floor = memory_mib("VmRSS")
    cfg = config(folder, processed_dir, {"data.image_size": MEMORY_IMAGE_SIZE, **MEMORY_MODES[mode]})
    processed = data_utils.process_data(cfg)
    dataset = training_split(cfg, processed)
    for batch, _ in enumerate(dataset, start=1):
        if batch == (len(dataset) + 1) // 2:
            halfway = memory_mib("VmHWM")
    print(json.dumps({"peak": memory_mib("VmHWM"), "floor": floor, "halfway": halfway,
                      "cached": data_utils.should_cache(processed, cfg.data),
                      "decoded": processed.decoded_bytes() / 2**20}))


def memory_use(folder: Path, processed_dir: Path, mode: str) -> dict:
    """Peak RSS (MiB) of a fresh process that preprocesses ``folder`` and runs one training
    epoch in ``mode``, and at the middle of the epoch; its RSS once TensorFlow is loaded;
    whether it cached; the decoded MiB."""
    done = subprocess.run([sys.executable, __file__, "--memory-child", str(folder),
                           str(processed_dir), mode], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the memory measurement ({mode}, {folder.name}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- 3. starvation

def training_rates(folder: Path, processed_dir: Path) -> tuple[str, dict[str, list[float]]]:
    """The precision training uses here, and images/s of the default CNN's training epochs on
    the augmented training split fed by its pipeline and fed the same batches from memory,
    interleaved; first the copy in memory is filled (one pass of the pipeline, which fills its
    own cache too) and one epoch traces the training step."""
    run = model_utils.TrainingRun(config(folder, processed_dir))
    run.process_data()
    run.build_and_compile()
    pipeline = run.datasets["train"]
    in_memory = pipeline.cache()  # one epoch of augmented batches, kept as they are
    # The images an epoch yields: a small training split is passed over several times per epoch
    # (train.min_steps_per_epoch), so this is more than the split holds.
    images = sum(int(batch.shape[0]) for batch, _ in in_memory)
    feeds = {"pipeline": pipeline, "memory": in_memory}
    run.model.fit(pipeline, epochs=1, verbose=0, shuffle=False)
    rates = {name: [] for name in feeds}
    for turn in range(TRAINING_ROUNDS):
        for name in list(feeds)[::1 if turn % 2 == 0 else -1]:
            started = time.perf_counter()
            run.model.fit(feeds[name], epochs=1, verbose=0, shuffle=False)
            rates[name].append(images / (time.perf_counter() - started))
    return run.hardware.precision, rates


# ----------------------------------------------------------------------------- 4. scan

def scan_rates(folder: Path, images: int, manifest: Path) -> list[float]:
    """Files/s of a scan of ``folder`` without its manifest, then with it."""
    cfg = config(folder, manifest.parent)
    rates = []
    for _ in range(2):
        started = time.perf_counter()
        data_utils.scan_image_folder(folder, cfg.data, manifest)
        rates.append(images / (time.perf_counter() - started))
    return rates


# ----------------------------------------------------------------------------- report

def report_throughput(images: int, train_images: int, rates: dict) -> None:
    tutorial, plain = rates[TUTORIAL], rates[PLAIN]
    print(f"\n1. throughput, training images/s ({train_images:,} of {images:,} JPEGs, batch "
          f"{BATCH}, {'x'.join(map(str, [*IMAGE_SIZE, CHANNELS]))}), median of "
          f"{THROUGHPUT_ROUNDS} interleaved rounds, each from a cold start;\n"
          "   epoch 1 includes each side's one-time work (imgcls: scan + shards; tutorial: "
          "file listing, decode + cache fill)")
    print(f"   {'':<40} {'epoch 1':>8} {'epoch 2':>8}")
    for name, (first, second) in rates.items():
        print(f"   {name:<40} {first:8,.0f} {second:8,.0f}")
    print(f"   imgcls (no augmentation) vs tutorial: epoch 1 {plain[0] / tutorial[0]:.2f}x, "
          f"epoch 2 {plain[1] / tutorial[1]:.2f}x")


def report_memory(small: int, large: int, used: dict) -> None:
    shape = "x".join(map(str, [*MEMORY_IMAGE_SIZE, CHANNELS]))
    print(f"\n2. memory, peak RSS (MiB) of preprocessing + one training epoch, one process each, "
          f"{shape}:\n   {'':<11} {small:>7,} images {large:>7,} images  ratio")
    for mode, (at_small, at_large) in used.items():
        assert at_small["cached"] == at_large["cached"] == (mode == "cached"), used
        target = "   (target <= 1.3)" if mode == "streaming" else ""
        print(f"   {mode + ':':<11} {at_small['peak']:14,.0f} {at_large['peak']:14,.0f}"
              f"  {at_large['peak'] / at_small['peak']:5.2f}{target}")
    floor = max(run["floor"] for runs in used.values() for run in runs)
    print(f"   above the {floor:,.0f} MiB of TensorFlow loaded: " + "; ".join(
        f"{mode} {small_run['peak'] - small_run['floor']:,.0f} vs "
        f"{large_run['peak'] - large_run['floor']:,.0f}"
        for mode, (small_run, large_run) in used.items()))
    print(f"   {large:,} images, peak by the middle of the epoch vs at its end: " + "; ".join(
        f"{mode} {large_run['halfway']:,.0f} vs {large_run['peak']:,.0f}"
        for mode, (_, large_run) in used.items()))
    small_run, large_run = used["streaming"]
    print(f"   decoded images (all splits): {small_run['decoded']:,.0f} vs "
          f"{large_run['decoded']:,.0f} MiB; streaming: cache auto, data.cache_budget_mb 0 "
          f"(cached: {small_run['cached']} at both sizes); cached: cache true")


def report_training(precision: str, rates: dict, delivery: float) -> None:
    fed, memory = (statistics.median(rates[name]) for name in ("pipeline", "memory"))
    print(f"\n3. starvation: the default CNN training ({precision}, batch {BATCH}), images/s, "
          f"median of {TRAINING_ROUNDS} interleaved epochs each:\n"
          f"   fed by the augmented pipeline {fed:,.0f} vs fed from memory {memory:,.0f}: "
          f"ratio {fed / memory:.2f} (1.00 = no starvation)\n"
          f"   each epoch: pipeline {', '.join(f'{r:,.0f}' for r in rates['pipeline'])}; "
          f"memory {', '.join(f'{r:,.0f}' for r in rates['memory'])}\n"
          f"   the augmented pipeline alone delivers {delivery:,.0f} images/s (1., epoch 2): "
          f"{delivery / memory:.1f}x what training consumes")


def main(images: int) -> None:
    from imgcls_utils.quiet_tensorflow import keras

    keras.config.disable_interactive_logging()  # the tutorial's "Using N files for training."
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        folder = generate(work / "photos", images)
        small = subset(folder, work / "small", every=10)
        small_images = sum(1 for _ in small.rglob("*.jpg"))
        print(f"generated {images:,} JPEGs in {time.perf_counter() - started:.0f} s", flush=True)

        scan = scan_rates(folder, images, work / "scan" / "photos.manifest")
        throughput(small, small_images, work / "warm-up", rounds=1)  # imports, first tf.data use
        train_images, rates = throughput(folder, images, work / "throughput", THROUGHPUT_ROUNDS)
        print(f"throughput done after {time.perf_counter() - started:.0f} s", flush=True)
        precision, training = training_rates(folder, work / "throughput" / "processed-0")
        print(f"starvation done after {time.perf_counter() - started:.0f} s", flush=True)
        used = {mode: [memory_use(source, work / f"memory-{mode}-{source.name}", mode)
                       for source in (small, folder)] for mode in MEMORY_MODES}
        print(f"memory done after {time.perf_counter() - started:.0f} s", flush=True)

    report_throughput(images, train_images, rates)
    report_memory(small_images, images, used)
    report_training(precision, training, rates[AUGMENTED][1])
    print(f"\n4. scan (header checks, thumbnail decode, sha256, perceptual hash): "
          f"{scan[0]:,.0f} files/s; re-scan with the cache: {scan[1]:,.0f} files/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="JPEGs to generate (10N)")
    parser.add_argument("--memory-child", nargs=3, metavar=("FOLDER", "PROCESSED", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        folder, processed_dir, mode = args.memory_child
        memory_child(Path(folder), Path(processed_dir), mode)
    else:
        main(args.images)
