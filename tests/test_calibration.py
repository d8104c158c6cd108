"""Calibration: the ECE on cases whose answer is known, the temperature fitted to a real
over-confident model, and the calibrated probabilities wherever they leave a model folder."""

import json
import shutil

import numpy as np
import pytest

from imgcls_utils import model_utils
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.evaluation import calibration
from imgcls_utils.model_utils import ModelFolderError
from imgcls_utils.quiet_tensorflow import tf
from tests.conftest import REPO_ROOT
from tests.test_cli import imgcls


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
    bins = model_utils.reliability_bins(np.array([0, 0, 0, 0]), probabilities, bins=10)
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


# A wide MLP without dropout or augmentation, fitted fast on a tenth of the digits: it ends
# over-confident, the case temperature scaling is for.
OVER_CONFIDENT = {"data.image_size": [8, 8], "model.family": "mlp", "model.dense_units": 256,
                  "model.dropout": 0.0, "augment.enabled": False, "train.learning_rate": 0.01,
                  "train.epochs": 20, "train.min_steps_per_epoch": 10,
                  "data.train_fraction": 0.1, "data.val_fraction": 0.45,
                  "data.test_fraction": 0.45, "data.near_duplicate_distance": "none",
                  "hardware.mixed_precision": "float32", "train.verbose": 0,
                  "train.classical_baselines": False}


@pytest.fixture(scope="module")
def over_confident(tmp_path_factory):
    """``(config, run)`` of the over-confident digits MLP, trained and saved once."""
    root = tmp_path_factory.mktemp("project")
    (root / "config").mkdir()
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, root / CONFIG_RELATIVE_PATH)
    cfg = load_config(root / CONFIG_RELATIVE_PATH, overrides=OVER_CONFIDENT)
    return cfg, model_utils.train(cfg)


def test_temperature_fitted_on_validation_lowers_the_test_ece_of_an_over_confident_model(
        over_confident):
    _, run = over_confident
    report, metrics = run.evaluation.calibration, run.evaluation.metrics
    assert report["temperature"] > 1.1 and metrics["temperature"] == report["temperature"]
    assert report["val_nll_after"] < report["val_nll_before"]
    assert metrics["ece_calibrated"] < 0.7 * metrics["ece"]
    assert (run.evaluation.calibrated_probabilities.argmax(1) == run.evaluation.predicted).all()
    saved = json.loads((run.model_folder / "metrics.json").read_text())
    assert (saved["ece"], saved["ece_calibrated"]) == (metrics["ece"], metrics["ece_calibrated"])


def test_the_model_folder_keeps_the_calibration_and_predicts_calibrated_probabilities(
        over_confident):
    _, run = over_confident
    folder = run.model_folder
    saved = json.loads((folder / "calibration.json").read_text())
    assert saved["temperature"] == run.evaluation.temperature
    assert sum(row["count"] for row in saved["test_bins_after"]) == run.processed.count("test")
    assert "calibration.json" in json.loads((folder / "manifest.json").read_text())["files"]
    assert (folder / "figures" / "reliability_diagram.png").is_file()
    np.testing.assert_allclose(predicted_probabilities(folder, run),
                               run.evaluation.calibrated_probabilities, atol=1e-5)


def test_imgcls_predict_prints_the_calibrated_probabilities(over_confident):
    _, run = over_confident
    raw = run.evaluation.probabilities.max(1)
    calibrated = run.evaluation.calibrated_probabilities.max(1)
    softened = np.argsort(calibrated - raw)[:5]  # the images temperature scaling softens most
    assert (raw[softened] - calibrated[softened] > 0.01).all()
    test_paths = run.processed.paths("test")
    paths = [run.processed.image_folder / test_paths[i] for i in softened]
    done, _ = imgcls("predict", str(run.model_folder), *map(str, paths), "--top-k", "1")
    assert done.returncode == 0, done.stderr
    printed = [float(line.split()[-1]) for line in done.stdout.splitlines()]
    np.testing.assert_allclose(printed, calibrated[softened], atol=1e-3)


def test_a_changed_calibration_is_refused_and_an_old_folder_without_one_predicts_as_trained(
        over_confident, tmp_path):
    _, run = over_confident
    old = shutil.copytree(run.model_folder, tmp_path / "old")
    calibration_file = old / "calibration.json"
    changed = json.loads(calibration_file.read_text())
    calibration_file.write_text(json.dumps({**changed, "temperature": 9.0}))
    with pytest.raises(ModelFolderError, match="calibration.json changed since training"):
        model_utils.load_model_folder(old)
    calibration_file.unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["calibration.json"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    np.testing.assert_allclose(predicted_probabilities(old, run), run.evaluation.probabilities,
                               atol=1e-5)


def test_the_export_bakes_the_temperature_into_every_signature(over_confident):
    cfg, run = over_confident
    version = model_utils.export_model(run.model_folder, cfg.path("exports_dir"))
    assert version.info["temperature"] == run.evaluation.temperature
    exported = tf.saved_model.load(str(version.folder))
    paths = [run.processed.image_folder / path for path in run.processed.paths("test")]
    from_bytes = exported.signatures["serving_default"](
        images=tf.constant([path.read_bytes() for path in paths]))["probabilities"].numpy()
    expected = run.evaluation.calibrated_probabilities
    np.testing.assert_allclose(from_bytes, expected, atol=1e-5)
    pixels = exported.preprocess(tf.constant([path.read_bytes() for path in paths]))
    from_pixels = exported.signatures["pixels"](pixels=pixels)["probabilities"].numpy()
    np.testing.assert_allclose(from_pixels, expected, atol=1e-5)


def predicted_probabilities(folder, run) -> np.ndarray:
    """What ``predict_files`` gives for the test images with the model folder, as a matrix."""
    model, class_names, config = model_utils.load_model_folder(folder)
    paths = [run.processed.image_folder / path for path in run.processed.paths("test")]
    predictions = model_utils.predict_files(model, class_names, config, paths,
                                            top_k=len(class_names))
    return np.array([[dict(p.top)[name] for name in class_names] for p in predictions])
