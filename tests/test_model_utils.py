import json

import numpy as np
import pytest

from imgcls_utils import data_utils, model_utils, pipeline
from imgcls_utils.errors import UserError
from imgcls_utils.model_utils import ModelFolderError
from imgcls_utils.runtime import keras
from tests.conftest import write_image

SMALL = {"data.image_size": [16, 16], "model.conv_filters": [8], "model.dense_units": 16,
         "train.epochs": 2, "train.verbose": 0}


@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_build_model_families(make_config, family):
    cfg = make_config(**SMALL, **{"model.family": family})
    model = model_utils.build_model(cfg.model, (16, 16, 1), 5)
    assert model.output_shape == (None, 5)
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["image", "rescale"]
    assert ("block1_conv1" in names) == (family == "cnn")
    assert ("hidden" in names) == (family == "mlp")


def test_batch_norm_is_optional_and_uses_the_configured_momentum(make_config):
    with_bn = model_utils.build_model(make_config(**SMALL).model, (16, 16, 1), 3)
    bn = [layer for layer in with_bn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn) == 2 and bn[0].momentum == 0.9
    without = model_utils.build_model(make_config(**SMALL, **{"model.batch_norm": False}).model,
                                      (16, 16, 1), 3)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in without.layers)
    params = model_utils.count_parameters(with_bn)
    assert params["total"] == params["trainable"] + params["non_trainable"]
    assert params["non_trainable"] == 2 * 2 * 8  # moving mean and variance of two BN layers


@pytest.fixture
def trained(project, make_config, class_folder):
    cfg = make_config(**SMALL, **{"data.source": str(class_folder)})
    folder, metrics = pipeline.train_and_save(cfg)
    return cfg, folder, metrics


def test_train_and_save_writes_a_complete_folder(trained):
    cfg, folder, metrics = trained
    assert folder.parent == cfg.path("models_dir") and folder.name.startswith("digits_cnn_")
    assert not list(cfg.path("models_dir").glob("*.partial"))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["class_names.json", "config.yaml", "figures/confusion_matrix.png",
                     "figures/training_curves.png", "history.csv", "manifest.json",
                     "metrics.json", "model.keras"]
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert set(saved["per_class"]) == {"cat", "dog", "fox"}
    assert len((folder / "history.csv").read_text().splitlines()) == 1 + 2
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == cfg.data.seed and manifest["versions"]["tensorflow"]
    assert manifest["data_fingerprint"]


def test_loaded_model_predicts_like_the_trained_one(trained, class_folder):
    cfg, folder, _ = trained
    model, class_names, config = model_utils.load_model_folder(folder)
    assert class_names == ["cat", "dog", "fox"] and config["data"]["image_size"] == [16, 16]
    results = model_utils.predict_files(model, class_names, config, [class_folder / "dog"], 2)
    assert len(results) == 10
    path, top = results[0]
    assert path.name == "0.png" and len(top) == 2 and top[0][1] >= top[1][1]
    assert {label for _, guesses in results for label, _ in guesses} <= set(class_names)
    assert abs(sum(p for _, p in model_utils.predict_files(
        model, class_names, config, [path], 3)[0][1]) - 1) < 1e-4


def test_prediction_works_for_any_size_and_mode(trained, tmp_path):
    _, folder, _ = trained
    model, class_names, config = model_utils.load_model_folder(folder)
    odd = write_image(tmp_path / "big.jpg", size=(300, 120), mode="RGB", fmt="JPEG")
    gray = write_image(tmp_path / "gray.png", size=(5, 7), mode="L")
    assert [p.name for p, _ in model_utils.predict_files(model, class_names, config, [odd, gray])] \
        == ["big.jpg", "gray.png"]
    with pytest.raises(UserError, match="does not exist"):
        model_utils.predict_files(model, class_names, config, [tmp_path / "missing.png"])


def test_damaged_or_unfinished_folders_are_refused(trained):
    _, folder, _ = trained
    (folder / "class_names.json").unlink()
    with pytest.raises(ModelFolderError, match="damaged: missing class_names.json"):
        model_utils.load_model_folder(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelFolderError, match="not a finished model folder"):
        model_utils.load_model_folder(folder)


def test_a_crash_during_training_leaves_no_finished_looking_folder(make_config, class_folder):
    cfg = make_config(**{**SMALL, "data.source": str(class_folder), "train.epochs": 3})
    prepared = data_utils.prepare_data(cfg)
    datasets = pipeline.make_datasets(cfg, prepared)
    model = model_utils.compile_model(
        model_utils.build_model(cfg.model, prepared.input_shape, 3), cfg.train)
    work_dir = model_utils.new_model_folder(cfg)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        model.fit(datasets["train"], validation_data=datasets["val"], epochs=3, verbose=0,
                  shuffle=False,
                  callbacks=[*model_utils.training_callbacks(cfg.train, work_dir), Crash()])
    folders = sorted(p.name for p in cfg.path("models_dir").iterdir())
    assert folders == [work_dir.name] and work_dir.name.endswith(".partial")
    with pytest.raises(ModelFolderError, match="unfinished"):
        model_utils.load_model_folder(work_dir)


def test_model_folder_names_never_collide(make_config):
    cfg = make_config()
    first = model_utils.new_model_folder(cfg)
    second = model_utils.new_model_folder(cfg)
    assert first != second
    taken = first.with_name(first.name.removesuffix(".partial"))
    taken.mkdir()
    with pytest.raises(ModelFolderError, match="already exists"):
        model_utils.new_model_folder(cfg, final=taken)


def test_same_seed_gives_same_initial_weights(make_config):
    cfg = make_config(**SMALL)
    weights = []
    for _ in range(2):
        model_utils.set_seed(3)
        weights.append(model_utils.build_model(cfg.model, (16, 16, 1), 3).get_weights()[0])
    np.testing.assert_array_equal(*weights)
