"""The whole train-and-evaluate job in one call, for the command line; the Model_Training
notebook walks through the same steps one cell at a time."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from . import data_utils, evaluation, model_utils, plots
from .config import Config


def make_datasets(cfg: Config, prepared: data_utils.PreparedData) -> dict:
    """Train (shuffled, augmented), val and test datasets for a prepared dataset."""
    augmentation = data_utils.build_augmentation(cfg.augment, cfg.data.seed)
    return {split: data_utils.make_dataset(prepared, split, cfg.train.batch_size,
                                           training=split == "train", cache=cfg.data.cache,
                                           augmentation=augmentation, seed=cfg.data.seed)
            for split in data_utils.SPLITS}


def result_figures(history: pd.DataFrame, metrics: dict) -> dict:
    """The figures saved with every model: training curves and the confusion matrix."""
    return {"training_curves": plots.plot_training_curves(history),
            "confusion_matrix": plots.plot_confusion_matrix(metrics["confusion_matrix"],
                                                            metrics["class_names"])}


def train_and_save(cfg: Config, model_dir: Path | None = None) -> tuple[Path, dict]:
    """Prepare the data, train, evaluate on the test split and save the model folder."""
    prepared = data_utils.prepare_data(cfg)
    datasets = make_datasets(cfg, prepared)
    model_utils.set_seed(cfg.data.seed)
    model = model_utils.compile_model(
        model_utils.build_model(cfg.model, prepared.input_shape, len(prepared.class_names)),
        cfg.train)
    work_dir = model_utils.new_model_folder(cfg, final=model_dir)
    history = model_utils.train_model(model, datasets["train"], datasets["val"], cfg.train, work_dir)
    metrics = evaluation.evaluate_model(model, datasets["test"], prepared.class_names)
    figures = result_figures(pd.DataFrame(history.history), metrics)
    folder = model_utils.save_model_folder(work_dir, model, cfg, prepared.class_names, metrics,
                                           figures, prepared.fingerprint)
    plt.close("all")
    return folder, metrics
