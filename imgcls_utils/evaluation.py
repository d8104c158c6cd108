"""Evaluation: test loss/accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def predict_labels(model, dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(true labels, predicted labels, probabilities)`` over a batched dataset, in order."""
    truth, probabilities = [], []
    for images, labels in dataset:
        probabilities.append(model.predict_on_batch(images))
        truth.append(np.asarray(labels))
    probabilities = np.concatenate(probabilities)
    return np.concatenate(truth), probabilities.argmax(axis=1), probabilities


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, one row per class."""
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support},
                        index=pd.Index(class_names, name="class"))


def evaluate_model(model, test_ds, class_names: list[str]) -> dict:
    """Metrics for ``metrics.json``: test loss and accuracy, macro F1, per-class metrics, and
    the confusion matrix (rows: true class, columns: predicted class)."""
    loss, accuracy = model.evaluate(test_ds, verbose=0)
    y_true, y_pred, _ = predict_labels(model, test_ds)
    report = per_class_report(y_true, y_pred, class_names)
    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(class_names)))
    return {
        "test_loss": float(loss),
        "test_accuracy": float(accuracy),
        "test_images": int(len(y_true)),
        "macro_f1": float(report["f1"].mean()),
        "per_class": {name: {k: float(v) for k, v in row.items()}
                      for name, row in report.iterrows()},
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }
