"""Model folders: create a run's ``.resumable`` folder, find it again to resume, save, load.

``Trained_Models/<name>_<timestamp>/`` is self-contained: the ``.keras`` model, class names,
merged config, history, metrics, ``calibration.json`` (the temperature that calibrates its
probabilities), figures, TensorBoard logs and ``manifest.json`` (versions, seed, hardware, data
fingerprint, and the sha256 of every file). A run works in ``<name>_<timestamp>.resumable/``,
which is renamed into place only when complete, so a crash never leaves a folder that looks like
a finished model; ``imgcls train --resume`` continues it.
"""

from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from ..config import Config, load_config
from ..data.sources import source_name
from ..errors import UserError
from ..files import file_sha256, publish, relative_files
from ..quiet_tensorflow import keras, tf
from .hardware import Hardware
from .models import output_layer

if TYPE_CHECKING:  # only named: loading a model folder needs none of the data stage
    from ..data.processed import ProcessedData

# The layout of a model folder (and of its run's .resumable folder), in one place.
MODEL_FILE = "model.keras"
CLASS_NAMES_FILE = "class_names.json"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"
MANIFEST_FILE = "manifest.json"
FIGURES_DIR = "figures"
TENSORBOARD_DIR = "logs"
CHECKPOINT_DIR = "checkpoints"  # the run's resumable state; removed once the folder is published
RESUMABLE_SUFFIX = ".resumable"
REQUIRED_FILES = (MODEL_FILE, CLASS_NAMES_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE)


class ModelFolderError(UserError):
    """A model folder that is missing, unfinished or damaged."""


# ----------------------------------------------------------------------------- create / find

def model_name(cfg: Config) -> str:
    """``model.name``, or with ``auto`` what was trained on what: ``<source>_<family>`` (the
    backbone for transfer models), e.g. ``digits_cnn`` or ``pets_mobilenet_v2``."""
    if cfg.model.name != "auto":
        return cfg.model.name
    family = cfg.transfer.backbone if cfg.model.family == "transfer" else cfg.model.family
    return f"{source_name(cfg.data.source)}_{family}"


def unused_model_folder_name(cfg: Config) -> Path:
    """``<models_dir>/<name>_<timestamp>``, with a counter added if that name is taken."""
    timestamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    final = cfg.path("models_dir") / f"{model_name(cfg)}_{timestamp}"
    suffix = 1
    while final.exists() or resumable_folder(final).exists():
        suffix += 1
        final = cfg.path("models_dir") / f"{model_name(cfg)}_{timestamp}-{suffix}"
    return final


def new_run_folder(cfg: Config, final: Path | None = None) -> Path:
    """Create the ``.resumable`` folder of a run whose model will be saved as ``final``,
    holding the run's config from the start (``--resume`` trains with it). Without ``final``,
    the name is claimed by creating the folder, so runs started in the same second (two
    terminals, a shell loop) each get their own name instead of a crash."""
    while True:
        name = Path(final) if final else unused_model_folder_name(cfg)
        if name.exists():
            raise ModelFolderError(f"model folder {name} already exists; choose another name")
        run_folder = resumable_folder(name)
        try:
            run_folder.mkdir(parents=True)
            break
        except FileExistsError:
            if final:
                raise ModelFolderError(
                    f"an unfinished run already works in {run_folder}; resume it "
                    "(imgcls train --resume) or choose another name") from None
    (run_folder / CHECKPOINT_DIR).mkdir()
    cfg.save(run_folder / CONFIG_FILE)
    return run_folder


def resumable_folder(final: Path) -> Path:
    return final.with_name(final.name + RESUMABLE_SUFFIX)


def final_folder(folder: Path) -> Path:
    """The finished model folder's name for a ``.resumable`` folder (or for itself)."""
    return folder.with_name(folder.name.removesuffix(RESUMABLE_SUFFIX))


def find_unfinished_run(run: str | Path, models_dir: Path) -> Path:
    """The ``.resumable`` folder of an interrupted run, given its path (with or without the
    suffix) or its run id (the folder name under ``models_dir``)."""
    given = Path(run).expanduser()
    final = final_folder(given if given.is_absolute() or given.exists()
                         else Path(models_dir) / given)
    if resumable_folder(final).is_dir():
        return resumable_folder(final)
    if (final / MANIFEST_FILE).is_file():
        raise ModelFolderError(f"{final} is a finished model folder, nothing to resume; "
                               "start a new run with `imgcls train`")
    unfinished = sorted(p.name for p in Path(models_dir).glob(f"*{RESUMABLE_SUFFIX}"))
    raise ModelFolderError(f"--resume {run}: no unfinished run of that name in {models_dir} "
                           f"(unfinished runs there: {', '.join(unfinished) or 'none'}); give "
                           f"the path of a {RESUMABLE_SUFFIX} folder or one of those names")


def run_config(run_folder: Path, root: Path) -> Config:
    """The config an unfinished run started with (saved in its folder), for a project ``root``."""
    saved = load_config(Path(run_folder) / CONFIG_FILE)
    return Config(saved.to_dict(), root=root)


# ----------------------------------------------------------------------------- save

def save_model_folder(run_folder: Path, model: keras.Model, cfg: Config, processed: ProcessedData,
                      metrics: dict, figures: dict | None = None,
                      hardware: Hardware | None = None, calibration: dict | None = None) -> Path:
    """Write everything into the ``.resumable`` folder, rename it to its final name, then drop
    the checkpoints: a crash at any moment leaves a resumable run or a complete model folder
    (at worst one still holding its checkpoints), never neither. The model is saved as trained;
    ``calibration`` (``calibration.calibration_report``) holds the temperature loading applies."""
    run_folder = Path(run_folder)
    model.save(run_folder / MODEL_FILE)
    (run_folder / CLASS_NAMES_FILE).write_text(json.dumps(processed.class_names, indent=2))
    cfg.save(run_folder / CONFIG_FILE)
    (run_folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if calibration:
        (run_folder / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2))
    for name, figure in (figures or {}).items():
        (run_folder / FIGURES_DIR).mkdir(exist_ok=True)
        figure.savefig(run_folder / FIGURES_DIR / f"{name}.png", dpi=100, bbox_inches="tight")
    manifest = model_manifest(cfg, processed, hardware, file_hashes(run_folder))
    (run_folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    try:
        final = publish(run_folder, final_folder(run_folder), replace=False)
    except FileExistsError:
        raise ModelFolderError(f"{final_folder(run_folder)} appeared while this run trained; it "
                               f"is kept, and so is the finished run in {run_folder}: rename "
                               "one of them by hand") from None
    _remove_checkpoints(final)
    return final


def _remove_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder / CHECKPOINT_DIR, ignore_errors=True)


def model_manifest(cfg: Config, processed: ProcessedData, hardware: Hardware | None,
                   files: dict[str, str]) -> dict:
    """What is needed to reproduce or audit a model: versions, seed, hardware, data
    fingerprint, the class folders it was not trained on (with the reason), and the sha256 of
    every file so that a changed file is noticed on load."""
    return {
        "created": datetime.now().isoformat(timespec="seconds"),
        "seed": cfg.data.seed,
        "data_fingerprint": processed.fingerprint,
        "left_out_classes": processed.left_out,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "hardware": hardware.to_dict() if hardware else None,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__},
        "files": files,
    }


def file_hashes(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder``, except the manifest and the
    run's checkpoints."""
    return {name: file_sha256(Path(folder) / name)
            for name in relative_files(folder, skip=(CHECKPOINT_DIR,)) if name != MANIFEST_FILE}


def saved_files(folder: Path) -> list[str]:
    """The files of a model folder, relative to it, without the TensorBoard logs."""
    return relative_files(folder, skip=(TENSORBOARD_DIR,))


# ----------------------------------------------------------------------------- load

def load_model_folder(folder: Path) -> tuple[keras.Model, list[str], dict]:
    """The model (loaded in Keras safe mode, its probabilities calibrated by the folder's
    temperature), its class names and the config it was trained with, after checking every
    file against the sha256 recorded in the manifest."""
    folder = Path(folder)
    config = trained_config(folder)
    try:
        model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True)
    except Exception as error:  # a damaged archive fails in zipfile, h5py or Keras
        raise ModelFolderError(f"{folder / MODEL_FILE} cannot be loaded ({error}); restore the "
                               "folder from a backup or retrain") from None
    class_names = json.loads((folder / CLASS_NAMES_FILE).read_text())
    return with_temperature(model, temperature(folder)), class_names, config


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` giving ``softmax(log p / T)``: its softmax output layer's kernel and bias
    divided by ``T`` in place (``softmax(z / T)`` is the same thing), so every copy of the
    model, exported graphs and TensorFlow Lite files included, computes the calibrated
    probabilities with no extra layer."""
    output = output_layer(model)
    if temperature != 1.0:
        for weight in (output.kernel, output.bias):
            if weight is not None:
                weight.assign(weight / temperature)
    return model


def temperature(folder: Path) -> float:
    """The temperature fitted when the model was trained; 1 (probabilities as the network gives
    them) for a folder trained with ``train.calibration: none`` or before imgcls calibrated."""
    path = Path(folder) / CALIBRATION_FILE
    return json.loads(path.read_text())["temperature"] if path.is_file() else 1.0


def trained_config(folder: Path) -> dict:
    """The config a finished model folder was trained with, after the same checks as
    ``load_model_folder`` (without loading the model)."""
    folder = Path(folder)
    if folder.name.endswith(RESUMABLE_SUFFIX):
        raise ModelFolderError(f"{folder} is an unfinished training run, not a model folder; "
                               f"finish it with `imgcls train --resume {folder}`")
    _check_files(folder)
    return yaml.safe_load((folder / CONFIG_FILE).read_text())


def left_out_classes(folder: Path) -> dict[str, str]:
    """The class folders of the training data that the model was not trained on, with the
    reason (none recorded by models saved before imgcls recorded them)."""
    manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    return manifest.get("left_out_classes", {})


def _check_files(folder: Path) -> None:
    """Refuse a folder without a manifest, with files missing, or with changed files."""
    if not (folder / MANIFEST_FILE).is_file():
        raise ModelFolderError(f"{folder} is not a finished model folder: {MANIFEST_FILE} is "
                               "missing; give a folder written by `imgcls train`")
    recorded = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    missing = [name for name in [*REQUIRED_FILES, *recorded] if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is damaged: missing {', '.join(sorted(set(missing)))}; "
                               "restore the folder from a backup or retrain")
    changed = [name for name, digest in recorded.items() if file_sha256(folder / name) != digest]
    if changed:
        raise ModelFolderError(f"{folder} is damaged: {', '.join(changed)} changed since training "
                               f"(sha256 differs from {MANIFEST_FILE}); restore the folder "
                               "from a backup or retrain")
