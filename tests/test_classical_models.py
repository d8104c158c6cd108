"""The classical baselines in Keras form decide as scikit-learn does, and a run whose network
loses to one on validation keeps the baseline, which then saves, loads, predicts and exports like
any model (``model.candidates: network_and_classical``)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from imgcls_utils import model_utils
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.serving.prediction import predict_files_with_export
from imgcls_utils.evaluation.calibration import negative_log_likelihood
from imgcls_utils.training.baselines import (MAX_ITERATIONS, comparison_line, predict_classes,
                                              split_pixels)
from imgcls_utils.training.classical_models import classical_keras_model
from imgcls_utils.training.models import output_layer
from tests.conftest import project_root


def digits(classes: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    chosen = data.target < classes
    return (data.images[chosen] * 255 / 16).round()[..., None].astype("float32"), \
        data.target[chosen]


@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize("make", [lambda: SVC(C=10.0), lambda: LogisticRegression(max_iter=300)],
                         ids=["rbf_svm", "logistic_regression"])
def test_the_keras_form_decides_as_scikit_learn(make, classes):
    images, labels = digits(classes)
    pixels = images.reshape(len(images), -1) / 255
    fitted = make().fit(pixels[:150], labels[:150])
    model = classical_keras_model(fitted, (8, 8, 1), classes)
    probabilities = model.predict_on_batch(images[150:])
    assert output_layer(model).name == "probabilities"
    assert (probabilities.argmax(axis=1) == predict_classes(fitted, pixels[150:])).all()
    assert probabilities.sum(axis=1) == pytest.approx(1, abs=1e-5)
    if isinstance(fitted, LogisticRegression):
        assert probabilities == pytest.approx(fitted.predict_proba(pixels[150:]), abs=1e-5)


@pytest.fixture(scope="module")
def svm_kept(tmp_path_factory):
    """A run whose network cannot learn (an MLP, one epoch at a learning rate of 1e-7)."""
    root = project_root(tmp_path_factory.mktemp("project"))
    cfg = load_config(root / CONFIG_RELATIVE_PATH, overrides={
        "data.image_size": [8, 8], "model.family": "mlp", "model.dense_units": 8,
        "train.epochs": 1, "train.min_steps_per_epoch": 1, "train.learning_rate": 1e-7,
        "train.verbose": 0})
    return cfg, model_utils.train(cfg)


def test_a_baseline_better_on_validation_is_kept_and_says_so(svm_kept):
    cfg, run = svm_kept
    metrics = run.evaluation.metrics
    kept = metrics["kept"]
    assert kept["model"] in ("rbf_svm", "logistic_regression")
    assert kept["val_macro_f1"][kept["model"]] > 0.9 > kept["val_macro_f1"]["network"]
    assert kept["network"]["test_accuracy"] < 0.5  # the network's own figures are kept too
    table = model_utils.comparison_table(metrics)
    assert table.index.tolist()[:2] == [f"kept: {kept['model']}", "network"]
    assert table.loc[f"kept: {kept['model']}", "train_images"] == kept["refit_images"] > \
        table.loc[kept["model"], "train_images"]
    assert f"refit on {kept['refit_images']} training and validation images" in \
        comparison_line(metrics)


def test_a_kept_baseline_is_refit_on_training_and_validation(svm_kept):
    """Its test figures are those of the baseline (its C) fitted on both splits; the temperature
    is fitted on the validation answers of the baseline fitted on training alone, which the
    refit model would answer from memory."""
    cfg, run = svm_kept
    metrics, processed = run.evaluation.metrics, run.processed
    name = metrics["kept"]["model"]
    make = {"rbf_svm": lambda: SVC(C=metrics["baselines"][name]["C"]),
            "logistic_regression": lambda: LogisticRegression(max_iter=MAX_ITERATIONS)}[name]
    train, val, test = (split_pixels(processed, split, 10**6) for split in ("train", "val", "test"))
    both = make().fit(np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    assert metrics["kept"]["refit_images"] == len(train[1]) + len(val[1])
    assert metrics["test_accuracy"] == pytest.approx(
        (predict_classes(both, test[0]) == test[1]).mean())
    alone = classical_keras_model(make().fit(*train), processed.input_shape,
                                  len(processed.class_names))
    assert run.evaluation.calibration["val_nll_before"] == pytest.approx(negative_log_likelihood(
        val[1], alone.predict_on_batch(val[0].reshape(-1, *processed.input_shape) * 255)),
        rel=1e-4)


def test_a_kept_baseline_loads_predicts_and_exports_like_a_network(svm_kept, tmp_path):
    cfg, run = svm_kept
    model, class_names, config = model_utils.load_model_folder(run.model_folder)
    files = sorted(cfg.path("raw_dir").glob("digits/*/*.png"))[:40:4]
    loaded = model_utils.predict_files(model, class_names, config, files, 1)
    assert [p.top[0][0] for p in loaded] == [p.parent.name for p in files]
    version = model_utils.export_model(run.model_folder, tmp_path / "exports")
    exported = predict_files_with_export(version, files, 1)
    assert [p.top[0][0] for p in exported] == [p.top[0][0] for p in loaded]


def test_the_network_stays_when_candidates_is_network(make_config, class_folder):
    cfg = make_config(**{"data.source": str(class_folder), "data.image_size": [8, 8],
                         "model.family": "mlp", "train.epochs": 1, "train.verbose": 0,
                         "train.learning_rate": 1e-7, "model.candidates": "network"})
    metrics = model_utils.train(cfg).evaluation.metrics
    assert "kept" not in metrics and set(metrics["baselines"]) == {"logistic_regression", "rbf_svm"}
