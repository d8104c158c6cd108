"""``imgcls cv``: one model per fold, each validated on its own fold, every train/validation
image validated exactly once, the test split untouched by the folds and evaluated once by the
k models together."""

import shutil

import pandas as pd
import pytest

from imgcls_utils import model_utils
from imgcls_utils.config import CONFIG_RELATIVE_PATH, ConfigError
from imgcls_utils.experiments.crossval import cross_validate, fold_configs
from tests.conftest import REPO_ROOT
from tests.test_cli import imgcls

QUICK = ["data.image_size=[16,16]", "model.family=mlp", "model.dense_units=32", "train.epochs=2",
         "train.verbose=0", "train.classical_baselines=false"]


@pytest.fixture(scope="module")
def crossvalidated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv_project")
    (root / "config").mkdir()
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, root / CONFIG_RELATIVE_PATH)
    configs = fold_configs(root / CONFIG_RELATIVE_PATH, QUICK, folds=3)
    return configs, cross_validate(configs, root / "runs" / "cv")


def test_every_fold_config_is_validated_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="needs the number of folds"):
        fold_configs(None, QUICK, folds=None)
    with pytest.raises(ConfigError, match="train.epocs"):
        fold_configs(None, [*QUICK, "train.epocs=2"], folds=3)
    configs = fold_configs(None, QUICK, folds=4)
    assert [cfg.data.cv_fold for cfg in configs] == [0, 1, 2, 3]


def test_each_fold_validates_on_its_own_fold_and_the_test_split_never_moves(crossvalidated):
    configs, result = crossvalidated
    assert list(result.folds["fold"]) == [0, 1, 2]
    for fold, row in result.folds.iterrows():
        _, _, saved = model_utils.load_model_folder(row["model_folder"])
        assert saved["data"]["cv_fold"] == fold
    assert result.folds["val_images"].sum() == 1797 - 271  # each train/val image validated once
    assert result.ensemble["test_images"] == 271 and (result.folds["epochs"] == 2).all()


def test_the_report_holds_every_fold_the_spread_and_the_k_models_on_the_test_split(
        crossvalidated):
    _, result = crossvalidated
    report = (result.folder / "cv_report.md").read_text()
    summary = pd.read_csv(result.folder / "cv_summary.csv", index_col=0)
    assert summary.loc["mean", "val_accuracy"] == pytest.approx(result.folds["val_accuracy"].mean())
    assert summary.loc["std", "val_accuracy"] == pytest.approx(result.folds["val_accuracy"].std())
    assert f"{summary.loc['mean', 'val_accuracy']:.4f} ± {summary.loc['std', 'val_accuracy']:.4f}" \
        in report
    assert f"accuracy {result.ensemble['test_accuracy']:.4f}" in report
    assert (result.folder / "cv_folds.png").stat().st_size > 10_000
    assert result.summary().loc["mean", "val_accuracy"] > 0.5  # chance is 0.1


def test_imgcls_cv_without_folds_is_a_one_line_error(project):
    done, _ = imgcls("cv", "--set", "train.epochs=1", cwd=project)
    assert done.returncode == 2 and "pass --folds K or set data.folds" in done.stderr
