"""Scale benchmark: does the cost per image stay flat from 1x to 100x images?

Generates (once, reused across runs) a corpus of varied 32 x 32 pictures in 10 class folders, 1%
of them byte copies (hard links) and 1% resized JPEG copies of other pictures; the 1x and 10x
corpora are hard links to the first images of the 100x one. Each size is scanned and processed
from nothing (inspect, duplicate grouping, split, shards at 32x32x1) in a fresh process on the
engine given (Ray with 2 workers by default), which prints, per size: wall time per stage,
images/s, the peak memory of the driver process and the candidate pairs checked. Then the
inspect stage alone on the 10x corpus with 1 and with 2 workers, a sample of ~70 KB JPEGs
(inspect, and shards at 224x224x3) for the extrapolation, and the goals:

- images/s at 100x >= 0.8 x images/s at 1x;
- driver memory growth <= 1 KB per image (peak at 100x minus peak at 1x, per added image);
- candidate-pair growth exponent <= 1.2 (log of the ratio at 100x / 1x over log 100);
- 2 workers >= 1.6 x 1 worker on the inspect stage.

    .venv/bin/python bench/scale.py                    # 5k, 50k, 500k: ~30 min on 2 free cores
    .venv/bin/python bench/scale.py --base 500         # a quick look: 500, 5k, 50k
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.sample_files import photo, write_copy  # noqa: E402

CLASSES = 10
SIDE = 32
CORPUS_MARKER = ".complete"
COPY_EVERY = 100  # one byte copy and one resized JPEG copy per 100 images
JPEG_SAMPLE = 200  # ~70 KB photos of 500x375 for the ImageNet-like per-image costs
GOALS = {"rate": 0.8, "memory_kb": 1.0, "exponent": 1.2, "workers": 1.6}


# ----------------------------------------------------------------------------- corpus

def corpus(root: Path, count: int) -> Path:
    """``count`` images in ``root/<count>/`` (class folders), generated once."""
    folder = root / str(count)
    if (folder / CORPUS_MARKER).is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_chunk, [(folder, start, min(count, start + 5000))
                                for start in range(0, count, 5000)])
    for index in range(COPY_EVERY - 1, count, COPY_EVERY):
        source = _image_path(folder, index - COPY_EVERY // 2)
        os.link(source, folder / source.parent.name / f"exact_{index:07d}.png")
        write_copy(_image_path(folder, index - 1), folder / f"c{index % CLASSES}" /
                   f"near_{index:07d}.jpg", scale=1.25, quality=90)
    (folder / CORPUS_MARKER).touch()
    return folder


def _image_path(folder: Path, index: int) -> Path:
    return folder / f"c{index % CLASSES}" / f"{index:07d}.png"


def _write_chunk(task: tuple[Path, int, int]) -> None:
    folder, start, stop = task
    for name in range(CLASSES):
        (folder / f"c{name}").mkdir(parents=True, exist_ok=True)
    for index in range(start, stop):
        photo(index, (SIDE, SIDE)).save(_image_path(folder, index))


def subset(full: Path, root: Path, count: int) -> Path:
    """The first ``count`` images of ``full`` (and their copies), as hard links."""
    folder = root / f"first-{count}"
    if (folder / CORPUS_MARKER).is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for path in full.glob("*/*.*"):
        if int(path.stem.split("_")[-1]) < count:
            (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(path, folder / path.parent.name / path.name)
    (folder / CORPUS_MARKER).touch()
    return folder


def jpeg_sample(root: Path) -> Path:
    folder = root / "jpeg"
    if not (folder / CORPUS_MARKER).is_file():
        rng = np.random.default_rng(0)
        for index in range(JPEG_SAMPLE):
            image = np.asarray(photo(index, (500, 375)), np.int16)
            noisy = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            (folder / f"c{index % 2}").mkdir(parents=True, exist_ok=True)
            from PIL import Image
            Image.fromarray(noisy).save(folder / f"c{index % 2}" / f"{index:04d}.jpg", quality=90)
        (folder / CORPUS_MARKER).touch()
    return folder


# ----------------------------------------------------------------------------- one measured run

def child(folder: Path, work: Path, runner: str, workers: int, stages: str,
          image_size: int, channels: int) -> None:
    """Scan (and process) ``folder`` from nothing in this fresh process; print one JSON line."""
    from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
    from imgcls_utils.data.engine import Engine
    from imgcls_utils.data.processed import process_scan
    from imgcls_utils.data_utils import scan_image_folder

    cfg = load_config(REPO / CONFIG_RELATIVE_PATH, overrides={
        "data.image_size": [image_size, image_size], "data.channels": channels,
        "engine.runner": runner, "engine.workers": workers})
    engine = Engine.from_config(cfg.engine)
    started = time.perf_counter()
    engine.map(_nothing, [0, 1])  # the engine's start-up, timed on its own
    times = {"start-up": time.perf_counter() - started}
    started = time.perf_counter()
    scan = scan_image_folder(folder, cfg.data, work / "images.manifest", engine)
    times["scan"] = time.perf_counter() - started
    if stages == "all":
        if runner == "local":  # the driver's one-time TensorFlow import is not a per-image cost
            from imgcls_utils.quiet_tensorflow import tf  # noqa: F401
        started = time.perf_counter()
        process_scan(scan, cfg.data, work, engine)
        times["process"] = time.perf_counter() - started
    print(json.dumps({"images": scan.stats["files"], "times": times,
                      "inspect": scan.stats["inspect_seconds"],
                      "pairs": scan.stats["candidate_pairs"],
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _nothing(item, shared):
    return item


def measure(folder: Path, work: Path, runner: str, workers: int, stages: str = "all",
            image_size: int = 32, channels: int = 1) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    done = subprocess.run([sys.executable, __file__, "--child", str(folder), str(work), runner,
                           str(workers), stages, str(image_size), str(channels)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the run on {folder} failed:\n{done.stderr[-4000:]}")
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report

def report(runs: dict[int, dict], workers: dict[int, dict], jpeg: dict, load: list) -> None:
    sizes = sorted(runs)
    print("\n| images | engine start-up s | scan s (inspect s) | process s | total s | images/s "
          "| images/s after start-up | peak driver MiB | candidate pairs |\n|---|---|---|---|---|"
          "---|---|---|---|")
    for size in sizes:
        run = runs[size]
        times = run["times"]
        total = sum(times.values())
        print(f"| {run['images']:,} | {times['start-up']:.1f} | {times['scan']:.1f} "
              f"({run['inspect']:.1f}) | {times['process']:.1f} | {total:.1f} | "
              f"{run['images'] / total:,.0f} | {run['images'] / (total - times['start-up']):,.0f}"
              f" | {run['peak_mib']:,.0f} | {run['pairs']:,} |")
    small, large = runs[sizes[0]], runs[sizes[-1]]
    rate = [run["images"] / sum(run["times"].values()) for run in (small, large)]
    steady = [run["images"] / (sum(run["times"].values()) - run["times"]["start-up"])
              for run in (small, large)]
    added = large["images"] - small["images"]
    memory_kb = (large["peak_mib"] - small["peak_mib"]) * 1024 / added
    exponent = np.log(large["pairs"] / small["pairs"]) / np.log(large["images"] / small["images"])
    one, two = (workers[n]["images"] / workers[n]["inspect"] for n in (1, 2))
    print(f"\ninspect stage on {workers[1]['images']:,} images: 1 worker {one:,.0f} images/s, "
          f"2 workers {two:,.0f} images/s")
    checks = [
        ("images/s at 100x / at 1x", rate[1] / rate[0], GOALS["rate"], ">="),
        ("  the same after the engine's start-up", steady[1] / steady[0], GOALS["rate"], ">="),
        ("driver memory growth, KB per image", memory_kb, GOALS["memory_kb"], "<="),
        ("candidate-pair growth exponent", exponent, GOALS["exponent"], "<="),
        ("inspect, 2 workers / 1 worker", two / one, GOALS["workers"], ">="),
    ]
    print("\n| goal | measured | target | met |\n|---|---|---|---|")
    for name, value, target, sense in checks:
        met = value >= target if sense == ">=" else value <= target
        print(f"| {name} | {value:.2f} | {sense} {target} | {'yes' if met else 'NO'} |")
    extrapolate(large, jpeg, memory_kb, exponent)
    print(f"\nload average (1 min) before / after the runs: {load[0]:.2f} / {load[1]:.2f} "
          f"on {os.cpu_count()} cores")


def extrapolate(large: dict, jpeg: dict, memory_kb: float, exponent: float) -> None:
    """ImageNet-1k and 10M images from the measured per-image costs: inspect and shards at the
    ~70 KB JPEG sample's rates, grouping and the rest at the 100x corpus's, pairs by the
    measured exponent; N workers assumed to scale as 2 did (the ratio above)."""
    inspect_rate = jpeg["inspect_rate"]
    shard_rate = jpeg["shard_rate"]
    rest = (sum(large["times"].values()) - large["times"]["start-up"] - large["inspect"]) \
        / large["images"]
    print("\n| images | inspect (JPEGs ~70 KB) | shards 224x224x3 | grouping, split, rest | "
          "total, 2 workers | total, 64 workers | driver memory | candidate pairs |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, count in (("ImageNet-1k", 1_281_167), ("10M", 10_000_000)):
        inspect, shards, other = count / inspect_rate, count / shard_rate, count * rest
        total = inspect + shards + other
        pairs = large["pairs"] * (count / large["images"]) ** exponent
        memory = (large["peak_mib"] + (count - large["images"]) * memory_kb / 1024) / 1024
        print(f"| {name} ({count:,}) | {_hours(inspect)} | {_hours(shards)} | {_hours(other)} | "
              f"{_hours(total)} | {_hours((inspect + shards) / 32 + other)} | {memory:.1f} GiB | "
              f"{pairs:,.0f} |")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(base: int, root: Path, runner: str) -> None:
    load = [os.getloadavg()[0]]
    started = time.perf_counter()
    larger = [int(path.parent.name) for path in root.glob(f"*/{CORPUS_MARKER}")
              if path.parent.name.isdigit() and int(path.parent.name) > base * 100]
    full = corpus(root, min(larger, default=base * 100))
    folders = {size: subset(full, root, size) if size < int(full.name) else full
               for size in (base, base * 10, base * 100)}
    jpegs = jpeg_sample(root)
    print(f"corpora ready after {time.perf_counter() - started:.0f} s", flush=True)
    runs = {}
    for size, folder in folders.items():
        runs[size] = measure(folder, root / "work", runner, 2)
        print(f"{size:,} images: {json.dumps(runs[size])}", flush=True)
    workers = {n: measure(folders[base * 10], root / "work", runner, n, stages="scan")
               for n in (1, 2)}
    print(f"workers: {json.dumps(workers)}", flush=True)
    inspected = measure(jpegs, root / "work", "local", 2, stages="scan")
    processed = measure(jpegs, root / "work", "local", 2, image_size=224, channels=3)
    jpeg = {"inspect_rate": inspected["images"] / inspected["inspect"],
            "shard_rate": processed["images"] / processed["times"]["process"]}
    print(f"jpeg sample: {json.dumps(jpeg)}", flush=True)
    load.append(os.getloadavg()[0])
    report(runs, workers, jpeg, load)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=5000, help="images at 1x (default 5,000)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/imgcls-scale"),
                        help="where the corpora are generated and kept between runs")
    parser.add_argument("--runner", default="ray", help="engine.runner (default ray)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, work, runner, workers, stages, size, channels = args.child
        child(Path(folder), Path(work), runner, int(workers), stages, int(size), int(channels))
    else:
        main(args.base, args.root, args.runner)
