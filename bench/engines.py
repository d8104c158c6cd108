"""Which distributed engine runs the data stages: Ray or Apache Beam, measured in one run.

For each engine importable here (and this process's thread pool, ``local``, as the baseline):
its start-up (a fresh process until a trivial task has run), the inspect stage of the scan
(``imgcls_utils.data.scan.inspect_batch`` on the same batches of files, each batch's records
written as a manifest part) with 1 and 2 workers, and the peak memory of the whole process tree
meanwhile. Beam runs as its docs write a local run: the DirectRunner in multi-processing mode
(``--direct_num_workers``, ``--direct_running_mode=multi_processing``); Ray as imgcls runs it.
Then, without installing anything, what pip resolves for each engine next to this project's
pinned TensorFlow (``pip install --dry-run``): the packages it adds, their installed size here,
and the packages of the project's own install it would change.

    pip install apache-beam 'ray>=2.40'    # in a scratch copy of the environment: Beam
                                           # downgrades protobuf, Pillow and pyarrow
    python bench/engines.py                # about 5 minutes on 2 free cores
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.scale import corpus  # noqa: E402

IMAGES = 6000
ENGINES = {"local": None, "ray": "ray>=2.40", "beam": "apache-beam"}
MODULES = {"ray": "ray", "beam": "apache_beam"}


# ----------------------------------------------------------------------------- measured child

def child(engine: str, workers: int, folder: Path, work: Path) -> None:
    """Start the engine, then inspect every file of ``folder`` on it; print one JSON line."""
    from imgcls_utils.data.engine import Engine
    from imgcls_utils.data.manifest import Manifest
    from imgcls_utils.data.listing import list_files
    from imgcls_utils.data.scan import INSPECT_BATCH, Limits

    started = time.perf_counter()
    if engine == "beam":
        def run(function, items, context):
            return _beam_map(function, items, context, workers)
    else:
        run = Engine(engine, workers).map
    run(_nothing, [0, 1], None)
    start_up = time.perf_counter() - started
    candidates, _ = list_files(folder, False)
    limits = Limits()
    manifest = Manifest(work / "images.manifest", limits.manifest_settings())
    manifest.start()
    work = [candidates.iloc[start:start + INSPECT_BATCH]
            for start in range(0, len(candidates), INSPECT_BATCH)]
    started = time.perf_counter()
    run(_inspect_and_save, work, (folder, limits, manifest))
    seconds = time.perf_counter() - started
    assert len(manifest.load().records) == len(candidates)
    print(json.dumps({"start_up": start_up, "inspect": seconds, "images": len(candidates)}))


def _nothing(item, shared):
    return item


def _inspect_and_save(files, context: tuple) -> int:
    from imgcls_utils.data.scan import inspect_batch

    return inspect_batch(files, context)


def _beam_map(function, items: list, context, workers: int) -> None:
    """``function(item, context)`` for every item, as a Beam pipeline on the DirectRunner."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions([f"--direct_num_workers={workers}",
                               "--direct_running_mode=multi_processing"])
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline | beam.Create(items) | beam.Reshuffle()
             | beam.Map(function, context))


def measure(engine: str, workers: int, folder: Path) -> dict:
    """One child run, with the peak resident memory of its whole process tree."""
    with tempfile.TemporaryDirectory(prefix="imgcls-engines-") as work:
        run = subprocess.Popen([sys.executable, __file__, "--child", engine, str(workers),
                                str(folder), work], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        peak = [0]
        sampler = threading.Thread(target=_sample_memory, args=(run, peak), daemon=True)
        sampler.start()
        out, err = run.communicate()
        sampler.join()
    if run.returncode:
        sys.exit(f"{engine} with {workers} worker(s) failed:\n{err[-4000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": peak[0] / 2**20}


def _sample_memory(run: subprocess.Popen, peak: list) -> None:
    while run.poll() is None:
        try:
            tree = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
            peak[0] = max(peak[0], sum(_rss(process) for process in tree))
        except psutil.Error:
            pass
        time.sleep(0.1)


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


# ----------------------------------------------------------------------------- pip

def resolved(*requirements: str) -> dict[str, str]:
    """What pip would install for the project plus ``requirements``, from nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                               "--ignore-installed", "--report", str(report),
                               f"{REPO}[dev,serving]", "tensorflow==2.21.*", *requirements],
                              capture_output=True, text=True)
        if done.returncode:
            return {"error": done.stderr.strip().splitlines()[-1]}
        return {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}


def installed_mib(names: list[str]) -> float:
    total = 0
    for name in names:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            return float("nan")
        total += sum(file.locate().stat().st_size for file in files if file.locate().is_file())
    return total / 2**20


def compatibility(base: dict, requirement: str) -> tuple[str, float, int]:
    with_engine = resolved(requirement)
    if "error" in with_engine:
        return f"no: {with_engine['error']}", float("nan"), 0
    added = sorted(set(with_engine) - set(base))
    changed = [f"{name} {base[name]} -> {with_engine[name]}" for name in sorted(base)
               if name in with_engine and with_engine[name] != base[name]]
    return (f"yes, changing {', '.join(changed)}" if changed else "yes, changing nothing",
            installed_mib(added), len(added))


def main(images: int, root: Path) -> None:
    folder = corpus(root, images)
    load = os.getloadavg()[0]
    engines = [name for name in ENGINES if name == "local"
               or importlib.util.find_spec(MODULES[name]) is not None]
    rows = {}
    for rounds in range(2):  # interleaved, so a change of load hits every engine alike
        for name in engines:
            for workers in (1, 2):
                result = measure(name, workers, folder)
                rows.setdefault((name, workers), []).append(result)
                print(f"{name} x{workers}: {json.dumps(result)}", flush=True)
    base = resolved()
    print(f"\n{images:,} images of 32x32 (PNG), batches of 256 files; best of 2 interleaved "
          f"rounds; load average {load:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} "
          "cores\n\n| engine | start-up s | inspect images/s, 1 worker | 2 workers | 2 / 1 | "
          "peak memory MiB (2 workers, all processes) | install | resolves with tensorflow==2.21 "
          "and the project's pins |\n|---|---|---|---|---|---|---|---|")
    for name in engines:
        one, two = (min(rows[(name, n)], key=lambda r: r["inspect"]) for n in (1, 2))
        rate = [run["images"] / run["inspect"] for run in (one, two)]
        if name == "local":
            verdict, size_text = "-", "(the base install)"
        else:
            verdict, size, added = compatibility(base, ENGINES[name])
            size_text = f"{size:,.0f} MiB, {added} packages"
        print(f"| {name} | {min(r['start_up'] for r in rows[(name, 2)]):.1f} | {rate[0]:,.0f} | "
              f"{rate[1]:,.0f} | {rate[1] / rate[0]:.2f} | {two['peak_mib']:,.0f} | {size_text} "
              f"| {verdict} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--root", type=Path, default=Path("/tmp/imgcls-scale"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, workers, folder, work = args.child
        child(engine, int(workers), Path(folder), Path(work))
    else:
        main(args.images, args.root)
