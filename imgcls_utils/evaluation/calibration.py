"""Calibration: probabilities you can trust, by temperature scaling (Guo et al., 2017).

A network trained to minimise cross-entropy tends to end over-confident: among the images it
gives 0.99, fewer than 99% are right. The expected calibration error (ECE) measures the gap;
one temperature ``T`` fitted on the validation split, ``softmax(log p / T)``, closes most of
it. Dividing every log-probability by the same positive ``T`` keeps their order, so the
predicted class, and with it the accuracy, is unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

BINS = 15
# Temperatures searched: far beyond what over- or under-confident networks need.
TEMPERATURE_RANGE = (0.05, 20.0)
# Probabilities are floored here before their log: an underflowed 0 stays a finite score.
SMALLEST_PROBABILITY = 1e-45


def reliability_bins(y_true: np.ndarray, probabilities: np.ndarray, bins: int = BINS
                     ) -> pd.DataFrame:
    """Each non-empty confidence bin of equal width on (0, 1]: its bounds, how many images have
    their top probability in it, their mean top probability and how many of them are right."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    table = pd.DataFrame({"bin": index, "confidence": confidence, "accuracy": correct})
    table = table.groupby("bin").agg(count=("confidence", "size"),
                                     confidence=("confidence", "mean"),
                                     accuracy=("accuracy", "mean")).reset_index()
    table.insert(1, "lower", table["bin"] / bins)
    table.insert(2, "upper", (table["bin"] + 1) / bins)
    return table.drop(columns="bin").astype({"count": int})


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray,
                               bins: int = BINS) -> float:
    """Top-label ECE: the gap between confidence and accuracy in each bin, weighted by the
    share of images in it (0: calibrated)."""
    return ece_of_bins(reliability_bins(y_true, probabilities, bins))


def ece_of_bins(bins: pd.DataFrame) -> float:
    """The ECE of a ``reliability_bins`` table (or its records, as saved in calibration.json)."""
    bins = pd.DataFrame(bins)
    gaps = (bins["accuracy"] - bins["confidence"]).abs()
    return float((gaps * bins["count"]).sum() / bins["count"].sum())


def negative_log_likelihood(y_true: np.ndarray, probabilities: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean cross-entropy of the true classes after scaling by ``temperature``."""
    scaled = log_softmax(_log(probabilities) / temperature, axis=1)
    return float(-scaled[np.arange(len(y_true)), y_true].mean())


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``softmax(log p / T)`` on
    held-out predictions (the validation split's): above 1 softens an over-confident model."""
    y_true = np.asarray(y_true)
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(y_true, probabilities,
                                                                   np.exp(log_t)),
                             bounds=(low, high), method="bounded")
    return float(np.exp(result.x))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row, as float32: the same ranking, softer above 1."""
    return np.exp(log_softmax(_log(probabilities) / temperature, axis=1)).astype(np.float32)


def calibration_report(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                       bins: int = BINS) -> dict:
    """``calibration.json``: the temperature fitted on the validation split's ``(labels,
    probabilities)``, its NLL there before and after, and the test split's ECE and reliability
    bins before and after."""
    temperature = fit_temperature(*val)
    test_true, test_probabilities = test
    before = reliability_bins(test_true, test_probabilities, bins)
    after = reliability_bins(test_true, apply_temperature(test_probabilities, temperature), bins)
    return {"method": "temperature", "temperature": temperature,
            "val_nll_before": negative_log_likelihood(*val),
            "val_nll_after": negative_log_likelihood(*val, temperature),
            "test_ece_before": ece_of_bins(before), "test_ece_after": ece_of_bins(after),
            "bins": bins, "test_bins_before": before.to_dict("records"),
            "test_bins_after": after.to_dict("records")}


def calibration_metrics(test: tuple[np.ndarray, np.ndarray], report: dict | None) -> dict:
    """``metrics.json``'s ``ece``, ``ece_calibrated`` and ``temperature``: from ``report``, or
    for an uncalibrated model (no report) its ECE and temperature 1."""
    if report is None:
        ece = expected_calibration_error(*test)
        return {"ece": ece, "ece_calibrated": ece, "temperature": 1.0}
    return {"ece": report["test_ece_before"], "ece_calibrated": report["test_ece_after"],
            "temperature": report["temperature"]}


def _log(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), SMALLEST_PROBABILITY))
