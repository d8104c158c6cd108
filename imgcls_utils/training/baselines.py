"""Classical baselines: scikit-learn models fitted on the same split, on the same resized pixels.

Every training run fits them next to the network, so a user sees at once whether the network
earns its keep: on a few hundred small images an RBF SVM on raw pixels is a strong competitor.
They are scikit-learn's models as its documentation writes them (pixels scaled to [0, 1]; the
SVM with its default ``gamma="scale"``, its regularisation strength C chosen on the validation
split; logistic regression with scikit-learn's defaults but an iteration cap), fitted on at
most ``MAX_TRAIN_IMAGES`` training images so they take seconds, not minutes, on large datasets
(the SVM's cost grows with the square of the images).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from ..data.processed import ProcessedData
from ..evaluation.metrics import macro_f1

MAX_TRAIN_IMAGES = 5000
MAX_ITERATIONS = 300  # logistic regression: a cap that keeps it to seconds (see "converged")
MAX_EVALUATED_IMAGES = 20000
# Each baseline with the values of C tried (the one best on validation is kept).
BASELINES = {
    "logistic_regression": (lambda strength: LogisticRegression(C=strength,
                                                                max_iter=MAX_ITERATIONS), (1.0,)),
    "rbf_svm": (lambda strength: SVC(C=strength), (1.0, 10.0)),
}


def split_pixels(processed: ProcessedData, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` images of ``split`` as rows of pixels in [0, 1], and their labels. The
    shards hold each split in random order, so the first ``limit`` are a random sample."""
    from ..data.input_pipeline import make_dataset

    dataset = make_dataset(processed, split, batch_size=1024, cache=False).unbatch().take(limit)
    images, labels = [], []
    for image, label in dataset.batch(1024).as_numpy_iterator():
        images.append(image.reshape(len(image), -1) / 255.0)
        labels.append(label)
    return np.concatenate(images).astype(np.float32), np.concatenate(labels)


def fit_baselines(processed: ProcessedData) -> dict:
    """Each baseline's test accuracy and macro F1, its validation macro F1, the C chosen on
    validation, the images it was trained on and its seconds (fitting and choosing included)."""
    return {name: results for name, (results, _) in fit_baseline_models(processed).items()}


def fit_baseline_models(processed: ProcessedData) -> dict[str, tuple[dict, object]]:
    """``fit_baselines``' results of each baseline, with the fitted scikit-learn model."""
    train = split_pixels(processed, "train", MAX_TRAIN_IMAGES)
    val = split_pixels(processed, "val", MAX_EVALUATED_IMAGES)
    test = split_pixels(processed, "test", MAX_EVALUATED_IMAGES)
    if len(np.unique(train[1])) < 2:
        return {}
    return {name: _fit_one(make, strengths, train, val, test)
            for name, (make, strengths) in BASELINES.items()}


def refit_with_validation(model, processed: ProcessedData):
    """A copy of a fitted baseline (its settings, the C chosen on validation) fitted again on
    the training and validation images together (up to ``MAX_TRAIN_IMAGES`` of each), and
    their count. Once validation has chosen the model, its images are worth more as training
    data, as after scikit-learn's searches (``refit=True``). On Debian's icon folders the kept
    model then beat the best baseline fitted on training alone (``bench/small_data.py --only
    icons``)."""
    train = split_pixels(processed, "train", MAX_TRAIN_IMAGES)
    val = split_pixels(processed, "val", MAX_TRAIN_IMAGES)
    pixels, labels = np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clone(model).fit(pixels, labels), len(labels)


def predict_classes(model, pixels: np.ndarray) -> np.ndarray:
    """The class of the highest decision: for the SVM scikit-learn's one-vs-rest decision
    function (votes, ties broken by confidence), which its Keras form reproduces; libsvm's own
    ``predict`` breaks ties by class order instead."""
    decisions = model.decision_function(pixels)
    if decisions.ndim == 1:
        return model.classes_[(decisions > 0).astype(int)]
    return model.classes_[decisions.argmax(axis=1)]


def _fit_one(make, strengths, train, val, test) -> tuple[dict, object]:
    start = time.perf_counter()
    with warnings.catch_warnings():  # reported as "converged" instead of a warning per run
        warnings.simplefilter("ignore", ConvergenceWarning)
        candidates = [make(strength).fit(*train) for strength in strengths]
    best = max(candidates, key=lambda model: model.score(*val)) if len(val[1]) else candidates[0]
    predicted = predict_classes(best, test[0])
    results = {"test_accuracy": float((predicted == test[1]).mean()),
               "macro_f1": macro_f1(test[1], predicted),
               "val_macro_f1": macro_f1(val[1], predict_classes(best, val[0])) if len(val[1])
               else None,
               "C": best.C, "converged": _converged(best), "train_images": int(len(train[1])),
               "seconds": round(time.perf_counter() - start, 1)}
    return results, best


def _converged(model) -> bool:
    """Whether the fit stopped before its iteration cap (scikit-learn's SVC has none: -1)."""
    return bool(model.max_iter <= 0 or np.max(model.n_iter_) < model.max_iter)


def best_baseline(baselines: dict) -> tuple[str, dict] | None:
    """The baseline with the highest test accuracy, as ``(name, its results)``."""
    if not baselines:
        return None
    return max(baselines.items(), key=lambda item: item[1]["test_accuracy"])


def comparison_line(metrics: dict) -> str:
    """``network 0.991 vs best classical baseline 0.987 (rbf_svm)``: test accuracy, and macro F1
    too, which matters more on imbalanced classes; when a baseline was kept instead of the
    network (``model.candidates``), which one, why, and the network's own figures."""
    line = f"network {metrics['test_accuracy']:.4f} (macro F1 {metrics['macro_f1']:.4f})"
    kept = metrics.get("kept", {})
    if kept.get("model", "network") != "network":
        network, scores = kept["network"], kept["val_macro_f1"]
        refit = (f", refit on {kept['refit_images']} training and validation images,"
                 if "refit_images" in kept else "")  # model folders from before the refit
        line = (f"kept {kept['model']}{refit} {metrics['test_accuracy']:.4f} (macro F1 "
                f"{metrics['macro_f1']:.4f}; validation macro F1 {scores[kept['model']]:.4f} vs "
                f"the network's {scores['network']:.4f}; the network {network['test_accuracy']:.4f},"
                f" macro F1 {network['macro_f1']:.4f})")
    best = best_baseline(metrics.get("baselines", {}))
    if best is None:
        return line
    name, result = best
    return (f"{line} vs best classical baseline {result['test_accuracy']:.4f} "
            f"(macro F1 {result['macro_f1']:.4f}, {name})")


def comparison_table(metrics: dict) -> pd.DataFrame:
    """The kept model (the network, or a baseline kept instead, with the training and
    validation images it was refit on), the network when it was not kept, and each baseline:
    test accuracy, macro F1, training images, seconds."""
    kept = metrics.get("kept", {}).get("model", "network")
    rows = {"network" if kept == "network" else f"kept: {kept}":
            {"test_accuracy": metrics["test_accuracy"], "macro_f1": metrics["macro_f1"]}}
    if kept != "network":
        rows[f"kept: {kept}"]["train_images"] = metrics["kept"].get("refit_images")
        rows["network"] = metrics["kept"]["network"]
    rows.update(metrics.get("baselines", {}))
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table.reindex(columns=["test_accuracy", "macro_f1", "C", "train_images", "seconds"])
