"""Small-data benchmark: does the default recipe beat the classical baselines without tuning?

1. digits: the default config on the embedded digits over 5 seeds (each seed draws its own split
   and initialisation): the network's test accuracy and macro F1 next to logistic regression and
   an RBF SVM fitted on the same split (``train.classical_baselines``); mean and lowest;
2. imbalanced: folders of real images with 10 classes in a 25:1 geometric imbalance, made from
   scikit-learn's digits and from Fashion-MNIST, each with a balanced test folder
   (``data.test_split: source``): the network's macro F1 vs the SVM's, over 3 seeds;
3. determinism: the default training on the digits with and without deterministic ops, the same
   epochs, processed once untimed, then interleaved rounds (each run a fresh process): the
   training time it costs, and whether the deterministic runs agree exactly;
4. icons: real third-party folders from Debian's icon themes (one class per icon category, 1 to
   hundreds of images each, RGBA): the kept model (``model.candidates``) and the network's own
   figures against the best classical baseline, accuracy and macro F1, 3 seeds, with times;
   the kept model as it was before its refit on training and validation; and, like for like
   with a kept baseline (refit), the best baseline refit the same way.

    .venv/bin/python bench/small_data.py                  # over an hour on 2 busy cores
    .venv/bin/python bench/small_data.py --only digits    # or imbalanced / determinism / icons
    .venv/bin/python bench/small_data.py --only icons --icons oxygen,tango --seeds 1
    .venv/bin/python bench/small_data.py --only imbalanced --set train.class_weight=none

``--set`` changes the defaults for every run, to measure what a default buys.

Fashion-MNIST comes from the Debian package dataset-fashion-mnist (part 2 skips it when it is
missing), the icons from oxygen-icon-theme, tango-icon-theme and adwaita-icon-theme (part 4 skips
a missing theme, naming its package). Everything is written to a temporary folder, deleted at the
end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgcls_utils import model_utils  # noqa: E402
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config, parse_set_option  # noqa: E402
from imgcls_utils.evaluation.metrics import macro_f1  # noqa: E402
from imgcls_utils.training import baselines  # noqa: E402
from imgcls_utils.training.baselines import comparison_line  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMBALANCE = 25
CLASSES = 10
CHANGED = {}  # --set: applied to every run
ICON_CHOICE = ["oxygen", "tango", "adwaita"]  # --icons
SEEDS = 3  # --seeds, of part 4


def project(folder: Path, **overrides):
    """The default config rooted in ``folder``, with ``overrides``."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / CONFIG_RELATIVE_PATH, folder / CONFIG_RELATIVE_PATH)
    return load_config(folder / CONFIG_RELATIVE_PATH,
                       overrides={"train.verbose": 0, **CHANGED, **overrides})


def train(folder: Path, refit: bool = False, **overrides) -> dict:
    """Train with the defaults and ``overrides``; the metrics with wall time and epochs (and,
    with ``refit``, ``refit_baselines``)."""
    started = time.perf_counter()
    run = model_utils.train(project(folder, **overrides))
    metrics = {**run.evaluation.metrics, "seconds": time.perf_counter() - started,
               "epochs": len(run.history)}
    return ({**metrics, "refit_baselines": refit_baselines(run.processed, metrics["baselines"])}
            if refit else metrics)


def refit_baselines(processed, fitted: dict) -> dict[str, float]:
    """Each baseline's test macro F1 when it too is refit on the training and validation
    images as a kept one is, with the C the run chose (``fitted``: the run's baseline results):
    the like-for-like competitor of a kept baseline."""
    test = baselines.split_pixels(processed, "test", baselines.MAX_EVALUATED_IMAGES)
    return {name: macro_f1(test[1], baselines.predict_classes(
        baselines.refit_with_validation(make(fitted[name]["C"]), processed)[0], test[0]))
        for name, (make, _) in baselines.BASELINES.items()}


def row(seed: int, metrics: dict) -> str:
    baselines = metrics["baselines"]
    return (f"   {seed:>4}  {metrics['test_accuracy']:.4f}  {metrics['macro_f1']:.4f}   "
            f"{baselines['logistic_regression']['test_accuracy']:.4f}  "
            f"{baselines['rbf_svm']['test_accuracy']:.4f}  {baselines['rbf_svm']['macro_f1']:.4f}"
            f"   {metrics['epochs']:>3}  {metrics['seconds']:5.0f} s")


HEADER = ("   seed  network accuracy / macro F1   logistic   SVM accuracy / macro F1"
          "   epochs  time")


# ----------------------------------------------------------------------------- 1. digits

def digits(tmp: Path, seeds: int = 5) -> None:
    print(f"\n1. digits, the default config, {seeds} seeds (test accuracy; macro F1):\n{HEADER}",
          flush=True)
    results = []
    for seed in range(1, seeds + 1):
        results.append(train(tmp / f"digits-{seed}", **{"data.seed": seed}))
        print(row(seed, results[-1]), flush=True)
    summarize(results, "test_accuracy")


def summarize(results: list[dict], key: str) -> None:
    network = [result[key] for result in results]
    svm = [result["baselines"]["rbf_svm"][key] for result in results]
    label = key.replace("test_", "").replace("_", " ")
    print(f"   network {label}: mean {statistics.mean(network):.4f}, lowest {min(network):.4f}; "
          f"SVM: mean {statistics.mean(svm):.4f}, lowest {min(svm):.4f}; network ahead in "
          f"{sum(n > s for n, s in zip(network, svm))} of {len(results)}", flush=True)


# ----------------------------------------------------------------------------- 2. imbalanced

def imbalanced_counts(largest: int) -> list[int]:
    """Images per class from ``largest`` down to ``largest / IMBALANCE``, geometrically."""
    return [round(largest * IMBALANCE ** (-label / (CLASSES - 1))) for label in range(CLASSES)]


def write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, counts: list[int],
                 test_per_class: int, seed: int) -> Path:
    """``train/<class>/`` with ``counts[c]`` images of class c and ``test/<class>/`` with
    ``test_per_class`` others, as PNG files."""
    rng = np.random.default_rng(seed)
    for label, count in enumerate(counts):
        chosen = rng.permutation(np.flatnonzero(labels == label))
        for part, indices in (("train", chosen[:count]),
                              ("test", chosen[count:count + test_per_class])):
            target = folder / part / f"class_{label}"
            target.mkdir(parents=True, exist_ok=True)
            for index in indices:
                Image.fromarray(images[index]).save(target / f"{index:05d}.png")
    return folder


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    digits_data = load_digits()
    return (digits_data.images * 255 / 16).round().astype(np.uint8), digits_data.target


def fashion_images() -> tuple[np.ndarray, np.ndarray]:
    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(FASHION_MNIST / name) as handle:
            return np.frombuffer(handle.read(), np.uint8, offset=offset)

    images = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    return images, read("train-labels-idx1-ubyte.gz", 8)


def imbalanced(tmp: Path, seeds: int = 3) -> None:
    sets = {"digits, 150 down to 6 per class": (digits_images, 150, 25),
            "Fashion-MNIST, 400 down to 16 per class": (fashion_images, 400, 100)}
    if not FASHION_MNIST.is_dir():
        print(f"   (Fashion-MNIST skipped: {FASHION_MNIST} is missing; "
              "apt-get install dataset-fashion-mnist)")
        sets.popitem()
    for number, (title, (load, largest, test_per_class)) in enumerate(sets.items()):
        counts = imbalanced_counts(largest)
        images, labels = load()
        folder = write_folder(tmp / f"imbalanced-{number}" / "images", images, labels, counts,
                              test_per_class, seed=number)
        print(f"\n2. imbalanced {title} ({sum(counts)} training images, 25:1; test: "
              f"{test_per_class} per class), the default config, {seeds} seeds:\n{HEADER}",
              flush=True)
        results = []
        for seed in range(1, seeds + 1):
            results.append(train(folder.parent / f"run-{seed}", **{
                "data.source": str(folder), "data.test_split": "source", "data.seed": seed}))
            print(row(seed, results[-1]), flush=True)
        summarize(results, "macro_f1")


# ----------------------------------------------------------------------------- 3. determinism

def determinism(tmp: Path, epochs: int = 8, rounds: int = 3) -> None:
    """Only the training is timed: the digits are written, scanned and processed once before
    (untimed), then runs with and without deterministic ops alternate, each its own process-wide
    setting (TensorFlow's op determinism cannot be switched off once on, so each run is a fresh
    process)."""
    fixed = {"train.epochs": epochs, "train.early_stopping_patience": epochs,
             "train.classical_baselines": False}
    model_utils.TrainingRun(project(tmp / "determinism", **fixed)).process_data()  # untimed
    times = {False: [], True: []}
    accuracies = []
    for _ in range(rounds):  # interleaved, so drift in the machine's speed hits both alike
        for deterministic in (False, True):
            result = fit_in_process(tmp / "determinism",
                                    {**fixed, "hardware.deterministic": deterministic})
            times[deterministic].append(result["training_seconds"])
            if deterministic:
                accuracies.append((result["test_accuracy"], result["test_loss"]))
    cost = statistics.median(times[True]) / statistics.median(times[False])
    print(f"\n3. determinism, the default training on the digits, {epochs} epochs, training "
          f"seconds (processing done once before), {rounds} interleaved rounds:\n"
          f"   non-deterministic {', '.join(f'{s:.1f}' for s in times[False])} s; deterministic "
          f"{', '.join(f'{s:.1f}' for s in times[True])} s; medians: x{cost:.2f} the time\n"
          f"   deterministic runs give the same test accuracy and loss: "
          f"{len(set(accuracies)) == 1} ({accuracies})", flush=True)


def fit_in_process(folder: Path, overrides: dict) -> dict:
    """The metrics of ``imgcls train`` on ``folder``'s project in a fresh process."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench.small_data import "
            "project, model_utils; from pathlib import Path; run = model_utils.train(project("
            "Path(sys.argv[2]), **json.loads(sys.argv[3]))); "
            "print(json.dumps(run.evaluation.metrics, default=str))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO), str(folder),
                           json.dumps({**CHANGED, **overrides})],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- 4. real folders

# Icon themes from Debian's packages: one class folder per icon category (apps, devices,
# places...), the theme's PNGs at one size, 1 to hundreds of images per class, RGBA.
ICON_FOLDERS = {
    "oxygen": ("oxygen-icon-theme", Path("/usr/share/icons/oxygen/base/48x48")),
    "tango": ("tango-icon-theme", Path("/usr/share/icons/Tango/32x32")),
    "adwaita": ("adwaita-icon-theme", Path("/usr/share/icons/Adwaita/48x48")),
}


def copy_png_folder(source: Path, target: Path) -> Path:
    """``target/<category>/<name>.png`` for every PNG file of ``source``'s category folders.
    Symbolic links are left out: a theme links one picture under several names (Tango 32x32:
    635 links to its 215 pictures), and their copies would make most of a test split a few
    pictures counted many times."""
    for category in sorted(path for path in source.iterdir() if path.is_dir()):
        for png in sorted(category.glob("*.png")):
            if png.is_file() and not png.is_symlink():
                (target / category.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, target / category.name / png.name)
    return target


def icons(tmp: Path) -> None:
    for name in ICON_CHOICE:
        package, source = ICON_FOLDERS[name]
        if not source.is_dir():
            print(f"   ({name} skipped: {source} is missing; apt-get install {package})")
            continue
        folder = copy_png_folder(source, tmp / f"icons-{name}" / "images")
        counts = sorted(len(list(path.iterdir())) for path in folder.iterdir())
        print(f"\n4. {name} icons ({package}, {source}): {sum(counts)} files in {len(counts)} "
              f"class folders of {counts[0]} to {counts[-1]}, the default config, {SEEDS} seeds:\n"
              f"{REAL_HEADER}", flush=True)
        results = []
        for seed in range(1, SEEDS + 1):
            results.append(train(folder.parent / f"run-{seed}", refit=True,
                                 **{"data.source": str(folder), "data.seed": seed}))
            print(f"{real_row(seed, results[-1])}\n         {comparison_line(results[-1])}",
                  flush=True)
        compare(results)


REAL_HEADER = ("   seed  kept model's accuracy / macro F1 (training seconds, epochs)   best "
               "classical baseline's accuracy / macro F1 (its seconds)")


def real_row(seed: int, metrics: dict) -> str:
    """The kept model (the network, or a baseline kept instead: then the network's own figures
    too), the baseline of the best macro F1 and, when measured, the best refit baseline."""
    name, best = max(metrics["baselines"].items(), key=lambda item: item[1]["macro_f1"])
    kept = metrics.get("kept", {})
    network = (f"kept {kept['model']}; the network {kept['network']['test_accuracy']:.4f} / "
               f"{kept['network']['macro_f1']:.4f}, " if kept.get("model", "network") != "network"
               else "")
    return (f"   {seed:>4}  {metrics['test_accuracy']:.4f} / {metrics['macro_f1']:.4f} "
            f"({network}{metrics['training_seconds']:.0f} s, {metrics['epochs']} epochs)   "
            f"{best['test_accuracy']:.4f} / {best['macro_f1']:.4f} ({name}, {best['seconds']:.1f} s)"
            + (f"; refit like a kept one: macro F1 {max(refit.values()):.4f} "
               f"({max(refit, key=refit.get)})" if (refit := metrics.get("refit_baselines"))
               else ""))


def compare(results: list[dict]) -> None:
    network = statistics.mean(result["macro_f1"] for result in results)
    best = statistics.mean(max(baseline["macro_f1"] for baseline in result["baselines"].values())
                           for result in results)
    own = statistics.mean(result.get("kept", {}).get("network", result)["macro_f1"]
                          for result in results)
    refit = statistics.mean(max(result["refit_baselines"].values()) for result in results)
    unrefit = statistics.mean(kept_before_refit(result) for result in results)
    print(f"   macro F1, mean of {len(results)}: kept model {network:.4f} (the network's own "
          f"{own:.4f}; the kept model before its refit {unrefit:.4f}), best classical baseline "
          f"{best:.4f}: "
          f"{'met' if network >= best else 'NOT met'} (kept model >= baseline); like for like, "
          f"against the best baseline refit on training and validation too as a kept one is: "
          f"{refit:.4f}, {'met' if network >= refit else 'NOT met'}", flush=True)


def kept_before_refit(metrics: dict) -> float:
    """The test macro F1 of the model validation chose as it was before any refit: the
    network, or the baseline fitted on the training split alone."""
    kept = metrics.get("kept", {}).get("model", "network")
    return metrics["macro_f1"] if kept == "network" else metrics["baselines"][kept]["macro_f1"]


PARTS = {"digits": digits, "imbalanced": imbalanced, "determinism": determinism,
         "icons": icons}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(PARTS), action="append",
                        help="run only this part (repeatable); default: all")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a default for every run (repeatable)")
    parser.add_argument("--icons", help="part 4's folders, comma-separated (default: all)")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="part 4's seeds")
    args = parser.parse_args()
    ICON_CHOICE[:] = args.icons.split(",") if args.icons else ICON_CHOICE
    SEEDS = args.seeds
    CHANGED.update(parse_set_option(option) for option in args.set)
    if CHANGED:
        print(f"changed defaults: {CHANGED}")
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as folder:
        for part in args.only or list(PARTS):
            PARTS[part](Path(folder))
