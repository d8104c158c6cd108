"""Calibration: the ECE on cases whose answer is known, the temperature fitted to a real
over-confident model, and the calibrated probabilities wherever they leave a model folder."""

import numpy as np
import pytest

from imgcls_utils import calibration


def calibrated_sample(images: int = 20000, classes: int = 4, seed: int = 0):
    """Labels drawn from the very probabilities given: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(classes), images)
    y_true = np.array([rng.choice(classes, p=row) for row in probabilities])
    return y_true, probabilities


def test_ece_is_near_zero_for_calibrated_probabilities_and_high_for_confident_mistakes():
    y_true, probabilities = calibrated_sample()
    assert calibration.expected_calibration_error(y_true, probabilities) < 0.02
    confident_wrong = np.tile([0.01, 0.99], (100, 1))
    assert calibration.expected_calibration_error(np.zeros(100, int), confident_wrong) == \
        pytest.approx(0.99)


def test_reliability_bins_count_every_image_in_the_bin_of_its_top_probability():
    probabilities = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.95, 0.05]])
    bins = calibration.reliability_bins(np.array([0, 0, 0, 0]), probabilities, bins=10)
    assert bins.to_dict("records") == [
        {"lower": 0.4, "upper": 0.5, "count": 1, "confidence": 0.5, "accuracy": 1.0},
        {"lower": 0.7, "upper": 0.8, "count": 1, "confidence": 0.8, "accuracy": 0.0},
        {"lower": 0.8, "upper": 0.9, "count": 1, "confidence": 0.9, "accuracy": 1.0},
        {"lower": 0.9, "upper": 1.0, "count": 1, "confidence": 0.95, "accuracy": 1.0}]


def test_fitted_temperature_undoes_a_known_sharpening_and_keeps_the_ranking():
    y_true, probabilities = calibrated_sample()
    sharpened = calibration.apply_temperature(probabilities, 1 / 2.5)
    temperature = calibration.fit_temperature(y_true, sharpened)
    assert temperature == pytest.approx(2.5, rel=0.05)
    softened = calibration.apply_temperature(sharpened, temperature)
    np.testing.assert_allclose(softened, probabilities, atol=0.01)
    assert (softened.argmax(1) == sharpened.argmax(1)).all()
    assert calibration.expected_calibration_error(y_true, softened) < \
        calibration.expected_calibration_error(y_true, sharpened) / 3


def test_temperature_copes_with_probabilities_that_underflowed_to_zero():
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    temperature = calibration.fit_temperature(np.array([0, 1, 2]), probabilities)
    assert np.isfinite(temperature) and temperature > 1
    assert np.isfinite(calibration.apply_temperature(probabilities, temperature)).all()
