"""Models: build -> compile -> train (callbacks, checkpoints) -> save / load a model folder.

A model folder ``Trained_Models/<name>_<timestamp>/`` is self-contained: the ``.keras`` model,
class names, merged config, history, metrics, figures and a manifest. It is assembled in
``<name>_<timestamp>.partial/`` and renamed into place only when complete, so a crash never
leaves a folder that looks like a finished model.
"""

from __future__ import annotations

import json
import platform
import random
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from .config import Config, Section
from .data_utils import IMAGE_EXTENSIONS, load_image
from .errors import UserError
from .runtime import keras, tf

MODEL_FILE = "model.keras"
CLASS_NAMES_FILE = "class_names.json"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
BEST_CHECKPOINT = "checkpoints/best.keras"
PARTIAL_SUFFIX = ".partial"


class ModelFolderError(UserError):
    """A model folder that is missing, unfinished or damaged."""


def set_seed(seed: int) -> None:
    """One seed for Python, NumPy and TensorFlow (and so Keras weight initialisation)."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


# ----------------------------------------------------------------------------- build

def build_model(model: Section, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The network for ``model.family``; inputs are raw pixels in [0, 255]."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    builders = {"cnn": _cnn_body, "mlp": _mlp_body}
    x = builders[model.family](x, model)
    if model.dropout:
        x = keras.layers.Dropout(model.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=model.name)


def _conv_bn_relu(x, filters: int, model: Section, name: str):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not model.batch_norm, name=name)(x)
    if model.batch_norm:
        x = keras.layers.BatchNormalization(momentum=model.batch_norm_momentum, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _cnn_body(x, model: Section):
    """Conv blocks (two 3x3 convs, then 2x2 max pooling), global pooling, a dense layer."""
    for block, filters in enumerate(model.conv_filters, start=1):
        x = _conv_bn_relu(x, filters, model, f"block{block}_conv1")
        x = _conv_bn_relu(x, filters, model, f"block{block}_conv2")
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.layers.Dense(model.dense_units, activation="relu", name="dense")(x)


def _mlp_body(x, model: Section):
    """The dense baseline: flatten, one hidden layer."""
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.layers.Dense(model.dense_units, activation="relu", name="hidden")(x)


def compile_model(model: keras.Model, train: Section) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=train.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def count_parameters(model: keras.Model) -> dict[str, int]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


# ----------------------------------------------------------------------------- train

def unused_model_folder_name(cfg: Config) -> Path:
    """``<models_dir>/<name>_<timestamp>``, with a counter added if that name is taken."""
    timestamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    final = cfg.path("models_dir") / f"{cfg.model.name}_{timestamp}"
    suffix = 1
    while final.exists() or _partial(final).exists():
        suffix += 1
        final = cfg.path("models_dir") / f"{cfg.model.name}_{timestamp}-{suffix}"
    return final


def new_model_folder(cfg: Config, final: Path | None = None) -> Path:
    """Create the ``.partial`` work folder of a run whose model will be saved as ``final``."""
    final = Path(final) if final else unused_model_folder_name(cfg)
    if final.exists():
        raise ModelFolderError(f"model folder {final} already exists; choose another name")
    partial = _partial(final)
    (partial / "checkpoints").mkdir(parents=True, exist_ok=False)
    return partial


def _partial(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


def training_callbacks(train: Section, work_dir: Path) -> list:
    """Early stopping (best weights restored), best checkpoint, CSV history, stop on NaN, and
    the learning-rate schedule when it reacts to validation loss."""
    schedule = []
    if train.lr_schedule == "reduce_on_plateau":
        schedule.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train.reduce_lr_factor, patience=train.reduce_lr_patience,
            min_lr=train.learning_rate / 1000))
    return schedule + [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=train.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(work_dir / BEST_CHECKPOINT), monitor="val_loss",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(str(work_dir / HISTORY_FILE)),
        keras.callbacks.TerminateOnNaN(),
    ]


def train_model(model: keras.Model, train_ds, val_ds, train: Section, work_dir: Path):
    """Fit with the standard callbacks; returns the Keras History."""
    return model.fit(train_ds, validation_data=val_ds, epochs=train.epochs,
                     callbacks=training_callbacks(train, Path(work_dir)), verbose=train.verbose,
                     shuffle=False)  # the training dataset shuffles itself


# ----------------------------------------------------------------------------- save / load

def save_model_folder(work_dir: Path, model: keras.Model, cfg: Config, class_names: list[str],
                      metrics: dict, figures: dict | None = None,
                      data_fingerprint: str = "") -> Path:
    """Write everything into the ``.partial`` folder, then rename it to its final name."""
    work_dir = Path(work_dir)
    model.save(work_dir / MODEL_FILE)
    (work_dir / CLASS_NAMES_FILE).write_text(json.dumps(class_names, indent=2))
    cfg.save(work_dir / CONFIG_FILE)
    (work_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    for name, figure in (figures or {}).items():
        (work_dir / "figures").mkdir(exist_ok=True)
        figure.savefig(work_dir / "figures" / f"{name}.png", dpi=100, bbox_inches="tight")
    shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
    manifest = run_manifest(cfg, data_fingerprint)
    (work_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    final = work_dir.with_name(work_dir.name.removesuffix(PARTIAL_SUFFIX))
    work_dir.rename(final)
    return final


def run_manifest(cfg: Config, data_fingerprint: str) -> dict:
    """What is needed to reproduce or audit a model: versions, seed, device, data fingerprint."""
    return {
        "created": datetime.now().isoformat(timespec="seconds"),
        "seed": cfg.data.seed,
        "data_fingerprint": data_fingerprint,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__},
        "files": sorted([MODEL_FILE, CLASS_NAMES_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE]),
    }


def load_model_folder(folder: Path) -> tuple[keras.Model, list[str], dict]:
    """The model (loaded in Keras safe mode), its class names and the config it was trained with."""
    folder = Path(folder)
    if folder.name.endswith(PARTIAL_SUFFIX):
        raise ModelFolderError(f"{folder} is an unfinished training run, not a model folder")
    if not (folder / MANIFEST_FILE).is_file():
        raise ModelFolderError(f"{folder} is not a finished model folder: {MANIFEST_FILE} is missing")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    missing = [name for name in manifest["files"] if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is damaged: missing {', '.join(missing)}")
    model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True)
    class_names = json.loads((folder / CLASS_NAMES_FILE).read_text())
    config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    return model, class_names, config


def image_files(paths: list[Path]) -> list[Path]:
    """The given image files, plus the image files under any given folder, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist")
    return found


def predict_files(model: keras.Model, class_names: list[str], config: dict, paths: list[Path],
                  top_k: int = 3) -> list[tuple[Path, list[tuple[str, float]]]]:
    """Top-k ``(class name, probability)`` per image, preprocessed exactly as in training
    (image size and channels come from the model folder's config, not the current one)."""
    data = config["data"]
    results = []
    for path in image_files(paths):
        try:
            pixels = load_image(path, tuple(data["image_size"]), data["channels"])
        except OSError as error:
            raise UserError(f"{path} is not a readable image: {error}") from None
        probabilities = model.predict_on_batch(pixels[None].astype("float32"))[0]
        best = np.argsort(probabilities)[::-1][:top_k]
        results.append((path, [(class_names[i], float(probabilities[i])) for i in best]))
    return results
