"""The training recipe: named steps from the hardware choice to a saved model folder.

``imgcls train`` runs them in a row (``train``); the Model_Training notebook runs the same
steps one per cell, so the two cannot drift apart::

    run = TrainingRun(cfg)      # the hardware first: a multi-worker strategy must be set up
                                # before TensorFlow runs anything
    run.process_data()          # Processed_Data, and the datasets each worker reads its part of
    run.build_and_compile()
    run.fit()                   # resumable, in <name>_<timestamp>.resumable/
    run.evaluate()              # the test split, once (and the validation split, calibrating)
    run.save()                  # the model folder, published when complete

In a multi-worker cluster every worker runs every step; only the chief's folder is kept, the
other workers work and save in a private temporary folder.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import Config
from ..data.input_pipeline import STATISTICS, make_datasets
from ..data.processed import ProcessedData, process_data
from ..evaluation.calibration import apply_temperature, calibration_metrics, calibration_report
from ..evaluation.metrics import classification_metrics, labels_and_probabilities, macro_f1
from ..evaluation.plots import plot_confusion_matrix, plot_reliability_diagram, plot_training_curves
from ..quiet_tensorflow import keras
from .baselines import fit_baseline_models, refit_with_validation
from .classical_models import classical_keras_model
from .checkpoints import run_identity
from .hardware import choose_hardware
from .loop import class_weights, compile_model, local_copy, set_seed, train_model
from .model_folders import CHECKPOINT_DIR, new_run_folder, resumable_folder, save_model_folder
from .models import build_model, count_parameters


@dataclass
class Evaluation:
    """The network's predictions on the test split (in ``processed.paths("test")`` order), the
    metrics computed from them, and with ``train.calibration: temperature`` the calibration
    report (``calibration.json``)."""

    y_true: np.ndarray
    probabilities: np.ndarray
    metrics: dict
    calibration: dict | None = None

    @property
    def predicted(self) -> np.ndarray:
        """The predicted class of each image."""
        return self.probabilities.argmax(axis=1)

    @property
    def temperature(self) -> float:
        """The temperature the saved model applies (1: none)."""
        return self.calibration["temperature"] if self.calibration else 1.0

    @property
    def calibrated_probabilities(self) -> np.ndarray:
        """The probabilities the saved model folder gives for the test images."""
        return apply_temperature(self.probabilities, self.temperature)


class TrainingRun:
    """One training run of ``cfg``: each step stores what it made (``processed``, ``datasets``,
    ``model``, ``run_folder`` where ``fit`` keeps the resumable state, ``history``,
    ``evaluation``, ``model_folder``) and returns it.

    ``model_dir`` names the model folder to save (default: a new ``<name>_<timestamp>``);
    ``resume`` is the ``.resumable`` folder of an interrupted run to continue.
    """

    def __init__(self, cfg: Config, model_dir: Path | None = None, resume: Path | None = None):
        self.cfg = cfg
        self.hardware = choose_hardware(cfg.hardware)
        self.model_dir, self.resume = model_dir, resume
        self.processed: ProcessedData | None = None
        self.datasets: dict = {}
        self.model: keras.Model | None = None
        self.history: pd.DataFrame | None = None
        self.evaluation: Evaluation | None = None
        self.model_folder: Path | None = None
        self.run_folder: Path | None = None
        self.training_seconds: float | None = None
        self._private = None if self.hardware.is_chief else tempfile.TemporaryDirectory(
            prefix="imgcls-worker-")

    # Names of earlier versions (notebooks written for them keep working, with a warning).
    RENAMED = {"prepare_data": "process_data", "prepared": "processed"}

    def __getattr__(self, name: str):
        if name in TrainingRun.RENAMED:
            warnings.warn(f"TrainingRun.{name} is now TrainingRun.{TrainingRun.RENAMED[name]}",
                          FutureWarning, stacklevel=2)
            return getattr(self, TrainingRun.RENAMED[name])
        raise AttributeError(f"'TrainingRun' object has no attribute {name!r}")

    def process_data(self) -> ProcessedData:
        """Scan, split and preprocess the source (reused when unchanged); make the datasets.
        From here on ``cfg`` holds the image size and channels used (``auto`` resolved), as the
        model folder's config will."""
        self.processed = process_data(self.cfg)
        self.cfg = self.cfg.updated({"data.image_size": list(self.processed.image_size),
                                     "data.channels": self.processed.channels})
        # Every worker recomputes batch-norm statistics on the same (unsharded) sample.
        self.datasets = {split: dataset if split == STATISTICS else self.hardware.shardable(dataset)
                         for split, dataset in make_datasets(self.cfg, self.processed).items()}
        return self.processed

    def build_and_compile(self) -> keras.Model:
        """The seeded network, compiled, with its variables where the strategy puts them."""
        set_seed(self.cfg.data.seed)
        with self.hardware.scope():
            self.model = build_model(self.cfg.model, self.cfg.transfer, self.processed.input_shape,
                                     len(self.processed.class_names))
            compile_model(self.model, self.cfg.train, len(self.datasets["train"]), self.hardware)
        return self.model

    def fit(self, callbacks: list | None = None) -> pd.DataFrame:
        """Train every phase, checkpointing each epoch; the model keeps its best epoch.
        ``callbacks`` are added to the standard ones. Returns the history."""
        self.run_folder = self._start_run_folder()
        started = time.monotonic()
        self.history = train_model(
            self.model, self.datasets, self.cfg.train, self.cfg.transfer, self.run_folder,
            hardware=self.hardware, callbacks=callbacks,
            identity=run_identity(self.processed.fingerprint, self.cfg.to_yaml()),
            class_weight=class_weights(self.cfg.train, self.processed.label_counts("train")))
        self.training_seconds = time.monotonic() - started
        if self.hardware.is_multi_worker:
            self.model = local_copy(self.model, self.cfg.train)
        return self.history

    def evaluate(self) -> Evaluation:
        """Predict the test split once; metrics, confusion matrix and top losses come from it.
        The metrics also hold the parameter count and the seconds ``fit`` took (since it
        resumed, for a resumed run) for comparing runs; with ``train.calibration: temperature``
        the validation split is predicted too, to fit the temperature; with
        ``train.classical_baselines``, the metrics hold the baselines' results too, and with
        ``model.candidates: network_and_classical`` a baseline better than the network on the
        validation split replaces it (``keep_best_candidate``)."""
        fitted = fit_baseline_models(self.processed) if self.cfg.train.classical_baselines else {}
        network = self.model
        # predicted once for both the choice of the kept model and the calibration
        network_val = functools.cache(
            lambda: labels_and_probabilities(network, self.datasets["val"]))
        kept = self.keep_best_candidate(fitted, network_val) if fitted else None
        test = labels_and_probabilities(self.model, self.datasets["test"])
        metrics = classification_metrics(*test, self.processed.class_names)
        metrics["parameters"] = count_parameters(self.model)["total"]
        metrics["training_seconds"] = round(self.training_seconds, 1)
        calibration = None
        if self.cfg.train.calibration == "temperature":
            # fitted on the model validation chose, before any refit: a baseline refit on the
            # validation images would answer them from memory
            val = (network_val() if not kept or kept["model"] == "network" else
                   labels_and_probabilities(self.keras_form(fitted[kept["model"]][1]),
                                            self.datasets["val"]))
            calibration = calibration_report(val, test)
        metrics.update(calibration_metrics(test, calibration))
        if fitted:
            metrics["baselines"] = {name: results for name, (results, _) in fitted.items()}
        if kept:
            metrics["kept"] = kept
        self.evaluation = Evaluation(*test, metrics, calibration)
        return self.evaluation

    def keep_best_candidate(self, fitted: dict,
                            network_val: Callable[[], tuple]) -> dict | None:
        """With ``model.candidates: network_and_classical``, the classical baseline whose
        validation macro F1 beats the network's becomes the run's model, refit on the training
        and validation images (``refit_with_validation``), in its Keras form, which saves,
        predicts, exports and serves like the network; the network's own test figures are kept
        in the metrics. ``network_val()``: the network's ``(labels, probabilities)`` on the
        validation split. Returns what was kept and why, or None when nothing was compared (no
        validation images, or ``network`` only)."""
        if self.cfg.model.candidates != "network_and_classical" or not self.processed.count("val"):
            return None
        labels, probabilities = network_val()
        scores = {"network": macro_f1(labels, probabilities.argmax(axis=1)),
                  **{name: results["val_macro_f1"] for name, (results, _) in fitted.items()}}
        best = max(scores, key=lambda name: (scores[name], name == "network"))
        kept = {"model": best, "val_macro_f1": scores}
        if best != "network":
            network = classification_metrics(*labels_and_probabilities(
                self.model, self.datasets["test"]), self.processed.class_names)
            kept["network"] = {key: network[key] for key in ("test_accuracy", "macro_f1")}
            refit, kept["refit_images"] = refit_with_validation(fitted[best][1], self.processed)
            self.model = self.keras_form(refit)
        return kept

    def keras_form(self, fitted) -> keras.Model:
        """A fitted baseline as a compiled Keras model of this run's images (never trained:
        compiled to save like any)."""
        return compile_model(classical_keras_model(fitted, self.processed.input_shape,
                                                   len(self.processed.class_names)),
                             self.cfg.train, steps_per_epoch=1)

    def save(self) -> Path:
        """Write the model folder (model, class names, config, history, metrics, calibration,
        figures, manifest) and publish it under its final name."""
        metrics, calibration = self.evaluation.metrics, self.evaluation.calibration
        figures = {"training_curves": plot_training_curves(self.history),
                   "confusion_matrix": plot_confusion_matrix(metrics["confusion_matrix"],
                                                             metrics["class_names"])}
        if calibration:
            figures["reliability_diagram"] = plot_reliability_diagram(
                calibration["test_bins_before"], calibration["test_bins_after"])
        self.model_folder = save_model_folder(self.run_folder, self.model, self.cfg,
                                              self.processed, metrics, figures, self.hardware,
                                              calibration)
        for figure in figures.values():
            plt.close(figure)
        return self.model_folder

    def _start_run_folder(self) -> Path:
        """The chief's ``.resumable`` folder (new, or ``resume``); other workers' private one,
        holding a copy of the checkpoints they resume from."""
        if self._private is None:
            return Path(self.resume) if self.resume else new_run_folder(self.cfg, self.model_dir)
        private = resumable_folder(Path(self._private.name) / "worker")
        if self.resume:
            shutil.copytree(Path(self.resume) / CHECKPOINT_DIR, private / CHECKPOINT_DIR)
        private.mkdir(exist_ok=True)
        return private


def train(cfg: Config, model_dir: Path | None = None, resume: Path | None = None,
          callbacks: list | None = None) -> TrainingRun:
    """Every step of the recipe in a row, as ``imgcls train`` runs it."""
    run = TrainingRun(cfg, model_dir, resume)
    print(f"training on: {run.hardware.describe()}", flush=True)
    run.process_data()
    run.build_and_compile()
    run.fit(callbacks)
    run.evaluate()
    run.save()
    return run
