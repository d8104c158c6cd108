"""k-fold cross-validation: one model per fold of ``data.folds``, each validating on its fold.

A single validation split gives one number whose spread is unknown; k models on k folds give k
validation scores, so the estimate comes with a standard deviation. The test split is no part
of any fold and is used for nothing but the last line: the k models' averaged probabilities on
it, evaluated once (what a user who keeps all k models would get).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import Config, ConfigError, load_config
from ..evaluation.metrics import classification_metrics, labels_and_probabilities
from ..evaluation.plots import plot_cross_validation
from ..training.progress import duration
from .tables import markdown_table, plus_minus

if TYPE_CHECKING:  # training imports TensorFlow: fold_configs validates without it
    from ..training.recipe import TrainingRun

SCORES = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")


@dataclass
class CrossValidation:
    """The folder holding everything, one row per fold, and the k models' test evaluation."""

    folder: Path
    folds: pd.DataFrame
    ensemble: dict

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation (ddof 1) of each score over the folds."""
        return self.folds[list(SCORES)].agg(["mean", "std"])

    def report(self) -> str:
        """The per-fold table, mean ± std of each score, and the ensemble's test line, as
        Markdown."""
        summary = self.summary()
        spread = pd.DataFrame({"score": SCORES, "mean ± std": [
            plus_minus(summary.at["mean", score], summary.at["std", score])
            for score in SCORES]})
        return (f"{markdown_table(self.folds.drop(columns=['model_folder']))}\n\n"
                f"{markdown_table(spread)}\n\n"
                f"Test split, the {len(self.folds)} models' averaged probabilities: accuracy "
                f"{self.ensemble['test_accuracy']:.4f}, macro F1 {self.ensemble['macro_f1']:.4f} "
                f"({self.ensemble['test_images']} images).\n")


def fold_configs(cfg_path: Path | None, set_options: list[str], folds: int | None) -> list[Config]:
    """The config of each fold (``data.cv_fold`` = 0 .. k-1), every one validated before any
    training starts. ``folds`` overrides ``data.folds``."""
    extra = [f"data.folds={folds}"] if folds else []
    base = load_config(cfg_path, set_options=[*set_options, *extra])
    if base.data.folds == "none":
        raise ConfigError(["imgcls cv needs the number of folds: pass --folds K or set data.folds"])
    return [load_config(cfg_path, set_options=[*set_options, *extra, f"data.cv_fold={fold}"])
            for fold in range(base.data.folds)]


def cross_validate(configs: list[Config], folder: Path) -> CrossValidation:
    """Train one model per fold config into ``folder/fold_<i>``, then write the tables, the
    figure and each fold's scores into ``folder``."""
    from ..training.recipe import train

    folder.mkdir(parents=True, exist_ok=True)
    configs[0].save(folder / "config.yaml")
    rows, test_probabilities, started = [], [], time.monotonic()
    for fold, cfg in enumerate(configs):
        print(f"fold {fold} ({fold + 1} of {len(configs)}): training", flush=True)
        fold_started = time.monotonic()
        run = train(cfg, model_dir=folder / f"fold_{fold}")
        rows.append(fold_scores(fold, run, time.monotonic() - fold_started))
        test_probabilities.append(run.evaluation.probabilities)
        print(f"fold {fold} ({fold + 1} of {len(configs)}) done: validation accuracy "
              f"{rows[-1]['val_accuracy']:.4f} ({_elapsed(started)} elapsed, ETA "
              f"{_eta(started, fold + 1, len(configs))})", flush=True)
    ensemble = classification_metrics(run.evaluation.y_true, np.mean(test_probabilities, axis=0),
                                      run.processed.class_names)
    result = CrossValidation(folder, pd.DataFrame(rows), ensemble)
    _write(result)
    return result


def fold_scores(fold: int, run: TrainingRun, seconds: float) -> dict:
    """One fold's row: its validation fold's and the test split's accuracy and macro F1."""
    y_true, probabilities = labels_and_probabilities(run.model, run.datasets["val"])
    validation = classification_metrics(y_true, probabilities, run.processed.class_names)
    test = run.evaluation.metrics
    return {"fold": fold, "val_images": validation["test_images"],
            "val_accuracy": validation["test_accuracy"], "val_macro_f1": validation["macro_f1"],
            "test_accuracy": test["test_accuracy"], "test_macro_f1": test["macro_f1"],
            "epochs": len(run.history), "train_seconds": round(seconds, 1),
            "model_folder": str(run.model_folder)}


def _write(result: CrossValidation) -> None:
    result.folds.to_csv(result.folder / "cv_folds.csv", index=False)
    result.summary().to_csv(result.folder / "cv_summary.csv")
    (result.folder / "cv_report.md").write_text(result.report())
    figure = plot_cross_validation(result.folds, result.ensemble["test_accuracy"])
    figure.savefig(result.folder / "cv_folds.png", dpi=100)
    plt.close(figure)


def _elapsed(started: float) -> str:
    return duration(time.monotonic() - started)


def _eta(started: float, done: int, total: int) -> str:
    return duration((time.monotonic() - started) / done * (total - done))
