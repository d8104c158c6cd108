"""Training benchmark: six figures, each measured in this run.

1. fashion: the strong CNN (``FASHION_CNN``) trained on Fashion-MNIST from the Debian package's
   IDX files with 3 seeds, tested on the official 10,000 test images: test accuracy (mean and
   spread), training wall time, time to 0.93 validation accuracy, images/s;
2. wrappers: images/s of imgcls' training as ``imgcls train`` runs it (tf.data from the shards,
   callbacks, per-epoch checkpoints, TensorBoard) vs a plain Keras script (the same model
   compiled with "adam", ``fit`` on NumPy arrays) in float32 and in the precision imgcls picks
   automatically where that is not float32, same images, same batch size; and, as an ablation,
   imgcls without its batch-norm refresh before each validation;
3. knobs: images/s of the default CNN's training step with each speed knob (mixed precision,
   XLA, steps_per_execution, batch size, deterministic ops) relative to an explicit float32
   baseline, on data already in memory;
4. epoch: where the default digits run's epoch time goes (steps, between steps, the batch-norm
   refresh, validation, the callbacks and checkpoint after it), and the steps taken apart (the
   input pipeline with and without augmentation, the step alone with and without deterministic
   ops);
5. digits: the default digits run against the previous defaults (32x32x1), 5 seeds, interleaved:
   test accuracy and training time;
6. budget: what the strong CNN's recipe buys on Fashion-MNIST's official test split, one seed:
   the recipe as in 1, with random shifts added, and with twice the epochs; each also tested
   with horizontal-flip test-time augmentation (its prediction time against plain prediction).

    .venv/bin/python bench/training.py                  # all six, about 110 minutes on 2 cores
    .venv/bin/python bench/training.py --only digits    # or fashion / wrappers / knobs / epoch /
                                                        # budget (about 50 minutes)

Needs the Debian package dataset-fashion-mnist (``apt-get install dataset-fashion-mnist``) for
1, 2 and 6. Everything it writes goes to a temporary project folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgcls_utils import data_utils, model_utils  # noqa: E402
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config  # noqa: E402
from imgcls_utils.quiet_tensorflow import keras, tf  # noqa: E402
from imgcls_utils.training import loop  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_DATA = {
    "data.source": f"idx:{FASHION_MNIST}", "data.image_size": [28, 28],
    "data.class_names": ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle_boot"],
    # the official 10,000 test images (test_fraction is unused); validation: 0.05 / 0.9 of the
    # 60,000 official training images
    "data.test_split": "source", "data.train_fraction": 0.85, "data.val_fraction": 0.05,
    "data.test_fraction": 0.1,
}
FASHION_SEEDS = (1, 2, 3)
FASHION_CNN = {
    "model.pooling": "flatten", "train.epochs": 9, "train.batch_size": 128,
    "train.lr_schedule": "cosine",
    "train.optimizer": "adamw", "train.learning_rate": 0.003, "train.label_smoothing": 0.1,
    "train.early_stopping_patience": 9,
    "augment.flip": "horizontal", "augment.rotation": 0.0, "augment.zoom": 0.0,
    "augment.translation": 0.0,
}
TARGET_ACCURACY = 0.93
FLOAT32 = {"hardware.mixed_precision": "float32", "hardware.jit_compile": False,
           "hardware.steps_per_execution": 1, "hardware.deterministic": False}
BFLOAT16 = {"hardware.mixed_precision": "mixed_bfloat16"}
# Each knob changes the explicit float32 baseline in one respect (the last row in two).
KNOBS = {
    "mixed precision bfloat16": BFLOAT16,
    "mixed precision float16": {"hardware.mixed_precision": "mixed_float16"},
    "XLA (jit_compile)": {"hardware.jit_compile": True},
    "steps_per_execution 8": {"hardware.steps_per_execution": 8},
    "batch size 32": {"train.batch_size": 32},
    "batch size 128": {"train.batch_size": 128},
    "batch size 256": {"train.batch_size": 256},
    "deterministic ops": {"hardware.deterministic": True},
    "deterministic ops + bfloat16": {"hardware.deterministic": True, **BFLOAT16},
}


class EpochClock(keras.callbacks.Callback):
    """Wall time of every epoch, begin to begin (so the work of every other callback counts),
    the time since the start at which validation accuracy first reached a target, and the
    model's parameter count."""

    def __init__(self, target: float = TARGET_ACCURACY):
        super().__init__()
        self.target, self.starts, self.reached, self.parameters = target, [], None, 0

    def on_train_begin(self, logs=None):
        self.parameters = self.model.count_params()

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        if self.reached is None and (logs or {}).get("val_accuracy", 0) >= self.target:
            self.reached = (epoch + 1, time.perf_counter() - self.starts[0])

    def on_train_end(self, logs=None):
        self.starts.append(time.perf_counter())

    def durations(self) -> list[float]:
        return list(np.diff(self.starts))


def project(folder: Path, **overrides):
    """A config rooted in ``folder`` (its own Trained_Models; built-in sources and processed
    data live next to it, shared by all parts)."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / CONFIG_RELATIVE_PATH, folder / CONFIG_RELATIVE_PATH)
    return load_config(folder / CONFIG_RELATIVE_PATH, overrides={
        "train.verbose": 0, "paths.raw_dir": str(folder.parent / "Raw_Data"),
        "paths.processed_dir": str(folder.parent / "Processed_Data"), **overrides})


# ----------------------------------------------------------------------------- 1. fashion

def fashion(tmp: Path) -> None:
    results = [fashion_run(tmp, seed) for seed in FASHION_SEEDS]
    accuracies = [result["test_accuracy"] for result in results]
    minutes = [result["minutes"] for result in results]
    print(f"   mean test accuracy {statistics.mean(accuracies):.4f} +- "
          f"{statistics.stdev(accuracies):.4f} (lowest {min(accuracies):.4f}), training "
          f"{statistics.mean(minutes):.1f} min on average ({', '.join(f'{m:.1f}' for m in minutes)})",
          flush=True)


def fashion_run(tmp: Path, seed: int) -> dict:
    cfg = project(tmp / "fashion", **FASHION_DATA, **FASHION_CNN, **{"data.seed": seed})
    started = time.perf_counter()
    processed = data_utils.process_data(cfg)
    preparing = time.perf_counter() - started
    clock = EpochClock()
    metrics = model_utils.train(cfg, callbacks=[clock]).evaluation.metrics
    epochs = clock.durations()
    training = sum(epochs)
    svm = metrics["baselines"]["rbf_svm"]
    reached = (f"epoch {clock.reached[0]}, {clock.reached[1] / 60:.1f} min" if clock.reached
               else "not reached")
    print(f"\n1. Fashion-MNIST, strong CNN, seed {seed} ({clock.parameters:,} parameters, "
          f"{len(epochs)} epochs; train {processed.count('train')} / val {processed.count('val')} / "
          f"official test {processed.count('test')} images):\n"
          f"   test accuracy {metrics['test_accuracy']:.4f} (macro F1 {metrics['macro_f1']:.4f}); "
          f"RBF SVM on {svm['train_images']} images {svm['test_accuracy']:.4f}\n"
          f"   training wall time {training / 60:.1f} min "
          f"({processed.count('train') * len(epochs) / training:,.0f} images/s), "
          f"preparing the data {preparing:.0f} s\n"
          f"   validation accuracy >= {TARGET_ACCURACY}: {reached}", flush=True)
    return {"test_accuracy": metrics["test_accuracy"], "minutes": training / 60}


# ----------------------------------------------------------------------------- 2. wrappers

def wrappers(tmp: Path, images: int = 8000, epochs: int = 6, rounds: int = 3) -> None:
    source = subset(tmp / "fashion-subset", images)
    run = {"data.source": str(source), "train.epochs": epochs,
           "train.early_stopping_patience": epochs}
    configs = {  # the same work as the plain script first: float32, no augmentation
        "ours": project(tmp / "float32", **run, **{"augment.enabled": False,
                                                   "hardware.mixed_precision": "float32"}),
        "auto": project(tmp / "auto", **run, **{"augment.enabled": False}),
        "augmented": project(tmp / "augmented", **run),
    }
    cfg = configs["ours"]
    arrays = {split: as_arrays(data_utils.make_dataset(data_utils.process_data(cfg), split, 256))
              for split in ("train", "val")}
    auto = model_utils.choose_hardware(configs["auto"].hardware).precision
    plain = {"plain": "float32"}
    if auto != "float32":  # else the automatic rows would repeat the float32 ones
        plain["plain_auto"] = auto
    else:
        del configs["auto"]
    times = {**{name: [] for name in plain}, **{name: [] for name in configs}, "no_refresh": []}
    for _ in range(rounds):  # interleaved, so drift in the machine's speed hits all alike
        for name, precision in plain.items():
            times[name] += plain_keras_epochs(cfg, arrays, precision)[1:]
        for name, config in configs.items():
            times[name] += imgcls_epochs(config)[1:]
        with no_batch_norm_refresh():
            times["no_refresh"] += imgcls_epochs(cfg)[1:]
    count = len(arrays["train"][1])
    # Epoch times on this shared 2-core machine vary by up to 2x from one epoch to the next;
    # the median of many epochs and the fastest epoch are the two robust figures.
    rate = {name: count / statistics.median(values) for name, values in times.items()}
    best = {name: count / min(values) for name, values in times.items()}
    labels = {"plain": "plain Keras (compile('adam'), fit on NumPy arrays), float32",
              "plain_auto": f"plain Keras, set_dtype_policy('{auto}')",
              "ours": "imgcls train (tf.data, callbacks, checkpoints), float32",
              "auto": f"imgcls, automatic precision ({auto})",
              "augmented": "imgcls, automatic precision and the default augmentation",
              "no_refresh": "ablation: imgcls, float32, no batch-norm refresh"}
    print(f"\n2. wrappers, images/s of training epochs 2-{epochs} ({count} Fashion-MNIST images, "
          f"batch {cfg.train.batch_size}, {'x'.join(map(str, arrays['train'][0].shape[1:]))}, "
          f"{rounds} runs each, validation included); median epoch, ratio | fastest epoch, ratio:")
    for name in times:
        label = labels[name]
        target = "   (target >= 0.95)" if name == "ours" else ""
        print(f"   {label:<62} {rate[name]:6,.0f} x{rate[name] / rate['plain']:.2f} | "
              f"{best[name]:6,.0f} x{best[name] / best['plain']:.2f}{target}")


@contextmanager
def no_batch_norm_refresh():
    """imgcls' training without its batch-norm statistics refresh before each validation: what
    that refresh costs (it stays: skipping it cost the digits accuracy, see training/loop.py)."""
    refresh = loop.BatchNormRefresh.on_test_begin
    loop.BatchNormRefresh.on_test_begin = lambda self, logs=None: None
    try:
        yield
    finally:
        loop.BatchNormRefresh.on_test_begin = refresh


def subset(target: Path, count: int) -> Path:
    """Every n-th image of the materialized Fashion-MNIST folder, as hard links."""
    cfg = project(target.parent / "materialize", **FASHION_DATA)
    folder = data_utils.resolve_source(cfg.data, cfg.path("raw_dir"))
    files = sorted(folder.rglob("*.png"))
    for path in files[::len(files) // count][:count]:
        link = target / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.hardlink_to(path)
    return target


def as_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    batches = list(dataset.as_numpy_iterator())
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def plain_keras_epochs(cfg, arrays: dict, precision: str) -> list[float]:
    """The tutorial way: the same network, compiled with defaults, fit on NumPy arrays; in
    ``precision``, set as Keras' mixed precision guide sets it (a global dtype policy before
    the model is built; the network's softmax layer is already float32)."""
    model_utils.set_seed(cfg.data.seed)
    classes = int(arrays["train"][1].max()) + 1
    keras.config.set_dtype_policy(precision)
    try:
        model = model_utils.build_model(cfg.model, cfg.transfer, arrays["train"][0].shape[1:],
                                        classes)
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    clock = EpochClock()
    model.fit(*arrays["train"], batch_size=cfg.train.batch_size, epochs=cfg.train.epochs,
              validation_data=arrays["val"], callbacks=[clock], verbose=0)
    return clock.durations()


def imgcls_epochs(cfg) -> list[float]:
    """imgcls' way: ``imgcls train`` (processed data reused; evaluation and saving not timed)."""
    clock = EpochClock()
    model_utils.train(cfg, callbacks=[clock])
    return clock.durations()


# ----------------------------------------------------------------------------- 3. knobs

def knobs(tmp: Path, rounds: int = 3, steps: int = 120) -> None:
    cfg = project(tmp / "knobs")
    processed = data_utils.process_data(cfg)  # the input shape the defaults resolve to
    names = ["float32", *KNOBS]
    rates = {name: [] for name in names}
    for _ in range(rounds):  # interleaved, so drift in the machine's speed hits all alike
        for name in names:
            knob = project(tmp / "knobs", **{**input_shape_of(processed), **FLOAT32,
                                             **KNOBS.get(name, {})})
            rates[name].append(step_rate(knob, steps))
    median = {name: statistics.median(runs) for name, runs in rates.items()}
    print(f"\n3. speed knobs, images/s of the default CNN's training step ("
          f"{'x'.join(map(str, processed.input_shape))}, batch {cfg.train.batch_size} unless "
          f"named; data in memory; median of {rounds}), relative to float32 without XLA, "
          "steps_per_execution 1, non-deterministic ops:")
    for name in names:
        print(f"   {name:<30} {median[name]:7,.0f}   x{median[name] / median['float32']:.2f}   "
              f"(runs: {', '.join(f'{r:,.0f}' for r in rates[name])})")
    hardware = model_utils.choose_hardware(cfg.hardware)
    cost = median["deterministic ops + bfloat16"] / median["mixed precision bfloat16"]
    print(f"   automatic choices here: {hardware.describe()}\n"
          f"   deterministic ops at bfloat16 vs bfloat16: x{cost:.2f}")


def input_shape_of(processed) -> dict:
    """The settings fixing the input shape ``processed`` resolved (``auto`` sizes and channels
    chosen from the data): ``step_rate`` builds its model from the config alone."""
    return {"data.image_size": list(processed.image_size), "data.channels": processed.channels}


def step_rate(cfg, steps: int) -> float:
    hardware = model_utils.choose_hardware(cfg.hardware)
    size, batch = (*cfg.data.image_size, cfg.data.channels), cfg.train.batch_size
    images = tf.random.uniform((batch, *size), 0, 255, seed=1)
    data = tf.data.Dataset.from_tensors((images, tf.zeros((batch,), tf.int64))).repeat()
    with hardware.scope():
        model = model_utils.build_model(cfg.model, cfg.transfer, size, 10)
        model_utils.compile_model(model, cfg.train, steps, hardware)
    model.fit(data, steps_per_epoch=2 * hardware.steps_per_execution, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - started)


# ----------------------------------------------------------------------------- 4. epoch

class EpochParts(keras.callbacks.Callback):
    """Where each epoch's wall time goes, from the callbacks' own moments: the training steps
    (each step's batch comes out of the tf.data pipeline inside the step), the gaps between
    steps, what runs before validation (the batch-norm refresh), validation, and what runs
    after it (the schedule, early stopping, TensorBoard, the epoch line and the checkpoint,
    which comes last). Appended after the standard callbacks but before the checkpoint."""

    PARTS = ("steps", "between steps", "before validation (batch-norm refresh)", "validation",
             "after validation (callbacks, checkpoint)")

    def __init__(self):
        super().__init__()
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self.epochs, self.last = 0, None

    def _add(self, part: str) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.totals[part] += now - self.last
        self.last = now

    def on_epoch_begin(self, epoch, logs=None):
        if self.last is not None:
            self._add("after validation (callbacks, checkpoint)")
        self.last, self.epochs = time.perf_counter(), self.epochs + 1

    def on_train_batch_begin(self, batch, logs=None):
        self._add("between steps")

    def on_train_batch_end(self, batch, logs=None):
        self._add("steps")

    def on_test_begin(self, logs=None):
        self._add("before validation (batch-norm refresh)")

    def on_test_end(self, logs=None):
        self._add("validation")

    def on_train_end(self, logs=None):
        self._add("after validation (callbacks, checkpoint)")


def epoch(tmp: Path, epochs: int = 6, steps: int = 100) -> None:
    """The default digits run's epochs split by ``EpochParts``; then, on the same model and
    data, the training steps taken apart: the input pipeline alone (with and without the
    augmentation), and the step alone on one batch in memory with and without deterministic
    ops."""
    cfg = project(tmp / "epoch", **{"train.epochs": epochs,
                                     "train.early_stopping_patience": epochs})
    parts = EpochParts()
    run = model_utils.train(cfg, callbacks=[parts])
    total = sum(parts.totals.values())
    print(f"\n4. where the default digits run's epochs go ({run.processed.input_shape}, batch "
          f"{cfg.train.batch_size}, {len(run.datasets['train'])} steps an epoch, "
          f"{run.hardware.describe()}); seconds per epoch, mean of {parts.epochs} epochs:")
    for part, seconds in parts.totals.items():
        print(f"   {part:<44} {seconds / parts.epochs:6.2f} s  {seconds / total:4.0%}")
    print(f"   {'total':<44} {total / parts.epochs:6.2f} s")
    print("   the steps taken apart (ms per step):")
    pipeline = {"input pipeline with augmentation": run.datasets["train"],
                "input pipeline without augmentation": data_utils.make_dataset(
                    run.processed, "train", cfg.train.batch_size, training=True,
                    seed=cfg.data.seed, min_steps=cfg.train.min_steps_per_epoch)}
    for name, dataset in pipeline.items():
        started, count = time.perf_counter(), sum(1 for _ in dataset)
        print(f"   {name:<44} {1000 * (time.perf_counter() - started) / count:6.1f}")
    for deterministic in (True, False):
        rate = step_rate(project(tmp / "epoch", **input_shape_of(run.processed),
                                 **{"hardware.deterministic": deterministic}), steps)
        name = f"the step alone, {'deterministic' if deterministic else 'non-deterministic'} ops"
        print(f"   {name:<44} {1000 * cfg.train.batch_size / rate:6.1f}")


# ----------------------------------------------------------------------------- 5. digits

# The digits' default recipe before the input shape was chosen from the images: every image
# resized to 32x32 (the 8x8 digits upsampled 16-fold), in gray.
PREVIOUS_DEFAULTS = {"data.image_size": [32, 32], "data.channels": 1}
DIGITS_SEEDS = (1, 2, 3, 4, 5)


def digits(tmp: Path) -> None:
    """The default digits run against the previous defaults, seed by seed (interleaved, so that
    drift in the machine's speed hits both alike): test accuracy and training time (``fit``'s
    wall time, validation and checkpoints included)."""
    recipes = {"previous defaults (32x32x1)": PREVIOUS_DEFAULTS, "defaults": {}}
    results = {name: [] for name in recipes}
    print("\n5. the default digits run vs the previous defaults (test accuracy, training time):")
    for seed in DIGITS_SEEDS:
        for name, overrides in recipes.items():
            cfg = project(tmp / "digits", **overrides, **{"data.seed": seed})
            run = model_utils.train(cfg)
            metrics = run.evaluation.metrics
            results[name].append((metrics["test_accuracy"], run.training_seconds))
            print(f"   seed {seed}, {name:<28} {run.processed.input_shape}: test accuracy "
                  f"{metrics['test_accuracy']:.4f}, {len(run.history)} epochs, "
                  f"{run.training_seconds:5.1f} s", flush=True)
    for name, rows in results.items():
        accuracies = [accuracy for accuracy, _ in rows]
        print(f"   {name:<28} mean test accuracy {statistics.mean(accuracies):.4f} (lowest "
              f"{min(accuracies):.4f}), training {sum(seconds for _, seconds in rows):6.1f} s "
              "in all")
    previous, now = (sum(seconds for _, seconds in rows) for rows in results.values())
    print(f"   training time, defaults / previous defaults: {now / previous:.2f} (goal <= 0.25; "
          "accuracy goal: mean >= 0.99, none below 0.985)")


# ----------------------------------------------------------------------------- 6. budget

BUDGET_VARIANTS = {
    "the recipe of 1 (9 epochs)": {},
    "and random shifts up to 10%": {"augment.translation": 0.1},
    "twice the epochs (18)": {"train.epochs": 18, "train.early_stopping_patience": 18},
}


def budget(tmp: Path, seed: int = FASHION_SEEDS[0]) -> None:
    print(f"\n6. Fashion-MNIST, the strong CNN's recipe and what changes to it buy, seed {seed}, "
          "official test split; test accuracy, then with horizontal-flip test-time augmentation:",
          flush=True)
    for name, changes in BUDGET_VARIANTS.items():
        cfg = project(tmp / "fashion", **{**FASHION_DATA, **FASHION_CNN, "data.seed": seed,
                                          **changes})
        clock = EpochClock()
        run = model_utils.train(cfg, callbacks=[clock])
        plain, flipped = flip_test_time_augmentation(run.model, run.datasets["test"])
        print(f"   {name:<30} {run.evaluation.metrics['test_accuracy']:.4f} | with flips "
              f"{flipped['accuracy']:.4f} (prediction {flipped['seconds']:.1f} s vs "
              f"{plain['seconds']:.1f} s) | training {sum(clock.durations()) / 60:.1f} min, "
              f"{len(clock.durations())} epochs", flush=True)


def flip_test_time_augmentation(model, dataset) -> tuple[dict, dict]:
    """Test accuracy and prediction seconds of the model alone and of the mean of its
    probabilities on each image and on its mirror image."""
    def predict_with_flips(images):
        return (model.predict_on_batch(images) + model.predict_on_batch(images[:, :, ::-1])) / 2

    return scored(dataset, model.predict_on_batch), scored(dataset, predict_with_flips)


def scored(dataset, predict) -> dict:
    started, correct, count = time.perf_counter(), 0, 0
    for images, labels in dataset.as_numpy_iterator():
        correct += int((predict(images).argmax(axis=1) == labels).sum())
        count += len(labels)
    return {"accuracy": correct / count, "seconds": time.perf_counter() - started}


PARTS = {"fashion": fashion, "wrappers": wrappers, "knobs": knobs, "epoch": epoch,
         "digits": digits, "budget": budget}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(PARTS), action="append",
                        help="run only this part (repeatable); default: all")
    args = parser.parse_args()
    wanted = args.only or list(PARTS)
    if {"fashion", "wrappers", "budget"} & set(wanted) and not FASHION_MNIST.is_dir():
        sys.exit(f"{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist")
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as folder:
        for part in wanted:
            PARTS[part](Path(folder))
