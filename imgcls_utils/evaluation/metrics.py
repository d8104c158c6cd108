"""Evaluation: test loss/accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def labels_and_probabilities(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(true labels, predicted class probabilities)`` over a batched dataset, in its order."""
    truth, probabilities = [], []
    for images, labels in dataset:
        probabilities.append(model.predict_on_batch(images))
        truth.append(np.asarray(labels))
    probabilities = np.concatenate(probabilities)
    return np.concatenate(truth), probabilities


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, one row per class."""
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support},
                        index=pd.Index(class_names, name="class"))


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray,
                           class_names: list[str]) -> dict:
    """Metrics for ``metrics.json``: test loss (plain cross-entropy, without label smoothing or
    regularization terms) and accuracy, macro F1, per-class metrics, and the confusion matrix
    (rows: true class, columns: predicted class)."""
    y_pred = probabilities.argmax(axis=1)
    report = per_class_report(y_true, y_pred, class_names)
    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(class_names)))
    return {
        "test_loss": float(_cross_entropy(y_true, probabilities).mean()),
        "test_accuracy": float((y_pred == y_true).mean()),
        "test_images": int(len(y_true)),
        "macro_f1": macro_f1(y_true, y_pred),
        "per_class": {name: {k: float(v) for k, v in row.items()}
                      for name, row in report.iterrows()},
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean F1 over the classes that occur in ``y_true`` or ``y_pred`` (scikit-learn's
    ``f1_score(average="macro")``), the same for the network and the classical baselines: a class
    with no test images (all of a tiny class goes to training) that nothing predicts cannot be
    measured, and counting it as an F1 of 0 would lower one side's figure only."""
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _cross_entropy(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy loss: minus the log of the probability given to the true class."""
    true_probability = probabilities[np.arange(len(y_true)), y_true]
    return -np.log(np.clip(true_probability, 1e-7, 1.0))


def most_confused(matrix, class_names: list[str], top: int = 5) -> pd.DataFrame:
    """The ``top`` most frequent mistakes: true class, predicted class and how often, from a
    confusion matrix (rows true, columns predicted); fewer if there are fewer mistakes."""
    matrix = np.asarray(matrix)
    true, predicted = np.nonzero(matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype)))
    table = pd.DataFrame({"true": np.asarray(class_names)[true],
                          "predicted": np.asarray(class_names)[predicted],
                          "count": matrix[true, predicted]})
    return table.sort_values(["count", "true", "predicted"], ascending=[False, True, True],
                             ignore_index=True).head(top)


def top_losses(y_true: np.ndarray, probabilities: np.ndarray, paths: list[str],
               class_names: list[str], count: int = 12) -> pd.DataFrame:
    """The ``count`` images the model got most wrong (highest cross-entropy loss), with their
    true and predicted class and the probability given to each; ``paths[i]`` is image ``i``."""
    table = _examples(y_true, probabilities, paths, class_names)
    return table.sort_values(["loss", "path"], ascending=[False, True],
                             ignore_index=True).head(count)


def correct_examples(y_true: np.ndarray, probabilities: np.ndarray, paths: list[str],
                     class_names: list[str]) -> pd.DataFrame:
    """For each class, in class order, the correctly classified image the model was surest of
    (lowest loss), with the columns of ``top_losses``; a class never predicted right has none."""
    table = _examples(y_true, probabilities, paths, class_names)
    best = table[table["true"] == table["predicted"]].sort_values(["loss", "path"])
    return best.drop_duplicates("true").sort_values(
        "true", key=lambda names: names.map(list(class_names).index), ignore_index=True)


def _examples(y_true: np.ndarray, probabilities: np.ndarray, paths: list[str],
              class_names: list[str]) -> pd.DataFrame:
    """One row per image: path, true and predicted class, the probability given to each, loss."""
    return pd.DataFrame({"path": paths, "true": np.asarray(class_names)[y_true],
                         "predicted": np.asarray(class_names)[probabilities.argmax(axis=1)],
                         "p_true": probabilities[np.arange(len(y_true)), y_true],
                         "p_predicted": probabilities.max(axis=1),
                         "loss": _cross_entropy(y_true, probabilities)})
