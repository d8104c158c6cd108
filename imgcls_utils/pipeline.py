"""The whole train-and-evaluate job in one call, for the command line; the Model_Training
notebook walks through the same steps one cell at a time."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from . import data_utils, evaluation, model_utils, plots
from .checkpoints import CHECKPOINT_DIR
from .config import Config


def make_datasets(cfg: Config, prepared: data_utils.PreparedData) -> dict:
    """Train (shuffled, augmented), val and test datasets for a prepared dataset."""
    augmentation = data_utils.build_augmentation(cfg.augment, cfg.data.seed)
    return {split: data_utils.make_dataset(prepared, split, cfg.train.batch_size,
                                           training=split == "train",
                                           cache=data_utils.use_cache(prepared, cfg.data),
                                           augmentation=augmentation, seed=cfg.data.seed)
            for split in data_utils.SPLITS}


def result_figures(history: pd.DataFrame, metrics: dict) -> dict:
    """The figures saved with every model: training curves and the confusion matrix."""
    return {"training_curves": plots.plot_training_curves(history),
            "confusion_matrix": plots.plot_confusion_matrix(metrics["confusion_matrix"],
                                                            metrics["class_names"])}


def train_and_save(cfg: Config, model_dir: Path | None = None, resume: Path | None = None,
                   callbacks: list | None = None) -> tuple[Path | None, dict]:
    """Prepare the data, train (or continue the interrupted run in the ``.partial`` folder
    ``resume``), evaluate on the test split and save the model folder. ``callbacks`` are added
    to the standard ones. Returns the folder and the test metrics (None and {} on a
    multi-worker run's other workers: the chief does both)."""
    # First: a multi-worker strategy must be set up before TensorFlow runs anything.
    hardware = model_utils.choose_hardware(cfg.train)
    print(f"training on: {hardware.describe()}", flush=True)
    prepared = data_utils.prepare_data(cfg)
    datasets = {split: hardware.shardable(dataset)
                for split, dataset in make_datasets(cfg, prepared).items()}
    model_utils.set_seed(cfg.data.seed)
    with hardware.scope():
        model = model_utils.build_model(cfg.model, prepared.input_shape, len(prepared.class_names))
        model_utils.compile_model(model, cfg.train, len(datasets["train"]), hardware)
    with _work_folder(cfg, hardware, model_dir, resume) as work_dir:
        history = model_utils.train_model(
            model, datasets["train"], datasets["val"], cfg.train, work_dir, hardware=hardware,
            fine_tune_layers=cfg.model.fine_tune_layers, class_weight=class_weight(cfg, prepared),
            callbacks=callbacks, data_fingerprint=prepared.fingerprint)
        if not hardware.is_chief:
            return None, {}
        if hardware.is_multi_worker:
            model = model_utils.local_copy(model, cfg.train)
        metrics = evaluation.evaluate_model(model, datasets["test"], prepared.class_names)
        figures = result_figures(history, metrics)
        folder = model_utils.save_model_folder(work_dir, model, cfg, prepared.class_names,
                                               metrics, figures, prepared.fingerprint, hardware)
    plt.close("all")
    return folder, metrics


@contextmanager
def _work_folder(cfg: Config, hardware, model_dir: Path | None, resume: Path | None):
    """Where this process keeps the run's state: the ``.partial`` folder (new, or ``resume``);
    a multi-worker run's other workers use a private copy that is deleted afterwards."""
    if hardware.is_chief:
        yield Path(resume) if resume else model_utils.new_model_folder(cfg, final=model_dir)
        return
    with tempfile.TemporaryDirectory(prefix="imgcls-worker-") as private:
        if resume:
            shutil.copytree(Path(resume) / CHECKPOINT_DIR, Path(private) / CHECKPOINT_DIR)
        yield Path(private)


def class_weight(cfg: Config, prepared: data_utils.PreparedData) -> dict[int, float] | None:
    """``train.class_weight: balanced`` -> weights from the class counts of the training split."""
    if cfg.train.class_weight == "none":
        return None
    train_labels = prepared.manifest.loc[prepared.manifest["split"] == "train", "label"]
    counts = train_labels.value_counts()
    return model_utils.balanced_class_weights([int(counts.get(name, 0))
                                               for name in prepared.class_names])
