import shutil

import pytest

from imgcls_utils import data_utils, model_utils
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.training import baselines
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The embedded digits, processed with the default config."""
    root = tmp_path_factory.mktemp("project")
    (root / "config").mkdir()
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, root / CONFIG_RELATIVE_PATH)
    return data_utils.process_data(load_config(root / CONFIG_RELATIVE_PATH))


def test_the_baselines_learn_the_digits_on_the_same_split(digits):
    results = baselines.fit_baselines(digits)
    assert set(results) == {"logistic_regression", "rbf_svm"}
    for result in results.values():
        assert result["train_images"] == digits.count("train")
        assert 0.9 <= result["test_accuracy"] <= 1 and 0.9 <= result["macro_f1"] <= 1
    assert results["rbf_svm"]["C"] in (1.0, 10.0)
    assert results["logistic_regression"]["converged"] and results["rbf_svm"]["converged"]


def test_large_training_splits_are_sampled_down_to_the_cap(digits, monkeypatch):
    monkeypatch.setattr(baselines, "MAX_TRAIN_IMAGES", 200)
    images, labels = baselines.split_pixels(digits, "train", baselines.MAX_TRAIN_IMAGES)
    assert images.shape == (200, 16 * 16) and 0 <= images.min() and images.max() <= 1
    assert len(set(labels)) == 10  # the shards are in random order: a sample of every class
    assert baselines.fit_baselines(digits)["rbf_svm"]["train_images"] == 200


def test_the_comparison_names_the_best_baseline():
    metrics = {"test_accuracy": 0.991, "macro_f1": 0.99, "baselines": {
        "logistic_regression": {"test_accuracy": 0.95, "macro_f1": 0.94},
        "rbf_svm": {"test_accuracy": 0.987, "macro_f1": 0.986}}}
    assert baselines.comparison_line(metrics) == (
        "network 0.9910 (macro F1 0.9900) vs best classical baseline 0.9870 "
        "(macro F1 0.9860, rbf_svm)")
    assert model_utils.comparison_table(metrics).index.tolist() == [
        "network", "logistic_regression", "rbf_svm"]
    assert baselines.comparison_line({"test_accuracy": 0.5, "macro_f1": 0.4}) == (
        "network 0.5000 (macro F1 0.4000)")


def test_a_capped_logistic_regression_says_it_did_not_converge(digits, monkeypatch):
    monkeypatch.setattr(baselines, "MAX_ITERATIONS", 2)
    results = baselines.fit_baselines(digits)
    assert results["logistic_regression"]["converged"] is False
    assert results["rbf_svm"]["converged"] is True
