"""The whole model life cycle through ``model_utils``: train and save a folder, load it, predict,
and refuse folders that are unfinished, incomplete or changed."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from imgcls_utils import model_utils
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.data_utils import load_image
from imgcls_utils.errors import UserError
from imgcls_utils.model_utils import ModelFolderError
from imgcls_utils.training.model_folders import file_hashes, model_name, resumable_folder
from tests.conftest import project_root, write_class_folder, write_image
from tests.sample_files import write_png_claiming_size
from tests.test_cli import imgcls
from tests.test_data_utils import disk_full
from tests.test_models import SMALL

RUN = {**SMALL, "train.epochs": 2, "train.verbose": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small CNN trained on ``write_class_folder``'s images, shared by the tests that read
    its model folder (``trained_copy`` for those that change it)."""
    root = project_root(tmp_path_factory.mktemp("project"))
    images = write_class_folder(root / "images")
    cfg = load_config(root / CONFIG_RELATIVE_PATH, overrides={**RUN, "data.source": str(images)})
    run = model_utils.train(cfg)
    return cfg, run.model_folder, run.evaluation.metrics


@pytest.fixture
def trained_copy(trained, tmp_path):
    """``trained`` with its model folder copied, for a test that damages it."""
    cfg, folder, metrics = trained
    return cfg, Path(shutil.copytree(folder, tmp_path / folder.name)), metrics


def test_train_writes_a_complete_folder_named_for_the_source_and_family(trained):
    cfg, folder, metrics = trained
    assert folder.parent == cfg.path("models_dir") and folder.name.startswith("images_cnn_")
    assert not list(cfg.path("models_dir").glob("*.resumable"))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert [name for name in files if not name.startswith("logs/")] == [
        "calibration.json", "class_names.json", "config.yaml", "figures/confusion_matrix.png",
        "figures/reliability_diagram.png", "figures/training_curves.png", "history.csv",
        "manifest.json", "metrics.json", "model.keras"]
    assert {name.split("/")[1] for name in files if name.startswith("logs/")} == \
        {"train", "validation"}  # TensorBoard
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert set(saved["per_class"]) == {"cat", "dog", "fox"}
    assert (folder / "history.csv").read_text().splitlines()[0].startswith("epoch,phase,")
    assert len((folder / "history.csv").read_text().splitlines()) == 1 + 2
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == cfg.data.seed and manifest["versions"]["tensorflow"]
    assert manifest["data_fingerprint"]
    assert manifest["hardware"]["precision"] == model_utils.choose_hardware(cfg.hardware).precision
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    assert model_utils.saved_files(folder) == [name for name in files if not name.startswith("logs/")]


def test_loaded_model_predicts_like_the_trained_one(trained, class_folder):
    cfg, folder, _ = trained
    model, class_names, config = model_utils.load_model_folder(folder)
    assert class_names == ["cat", "dog", "fox"] and config["data"]["image_size"] == [16, 16]
    results = model_utils.predict_files(model, class_names, config, [class_folder / "dog"], 2)
    assert len(results) == 10
    path, top = results[0].path, results[0].top
    assert path.name == "0.png" and len(top) == 2 and top[0][1] >= top[1][1]
    assert {label for result in results for label, _ in result.top} <= set(class_names)
    assert abs(sum(p for _, p in model_utils.predict_files(
        model, class_names, config, [path], 3)[0].top) - 1) < 1e-4


def test_batched_prediction_gives_each_image_its_own_probabilities(trained, class_folder):
    _, folder, _ = trained
    model, class_names, config = model_utils.load_model_folder(folder)
    files = sorted((class_folder / "fox").glob("*.png"))
    batched = model_utils.predict_files(model, class_names, config, files, 3, batch_size=4)
    for prediction in batched:
        pixels = load_image(prediction.path, (16, 16), 1)[None].astype("float32")
        alone = model.predict_on_batch(pixels)[0]
        labels, probabilities = zip(*prediction.top)
        # In a batch of 4 and alone: equal to 1e-5 (float kernels vary with the batch size), so
        # each label carries its own probability, and the order is by probability.
        assert probabilities == pytest.approx([alone[class_names.index(label)]
                                               for label in labels], abs=1e-5)
        assert list(probabilities) == sorted(probabilities, reverse=True)


def test_prediction_works_for_any_size_and_mode(trained, tmp_path):
    _, folder, _ = trained
    model, class_names, config = model_utils.load_model_folder(folder)
    odd = write_image(tmp_path / "big.jpg", size=(300, 120), mode="RGB", fmt="JPEG")
    gray = write_image(tmp_path / "gray.png", size=(5, 7), mode="L")
    predictions = model_utils.predict_files(model, class_names, config, [odd, gray])
    assert [(p.path.name, p.error) for p in predictions] == [("big.jpg", ""), ("gray.png", "")]
    for prediction in predictions:  # the top 3 of 3 classes: each class once, all the mass
        labels, probabilities = zip(*prediction.top)
        assert sorted(labels) == class_names and sum(probabilities) == pytest.approx(1, abs=1e-4)
    with pytest.raises(UserError, match="does not exist"):
        model_utils.predict_files(model, class_names, config, [tmp_path / "missing.png"])


def test_damaged_or_unfinished_folders_are_refused(trained_copy):
    _, folder, _ = trained_copy
    (folder / "class_names.json").unlink()
    with pytest.raises(ModelFolderError, match="damaged: missing class_names.json"):
        model_utils.load_model_folder(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelFolderError, match="not a finished model folder"):
        model_utils.load_model_folder(folder)
    partial = folder.with_name(folder.name + ".resumable")
    folder.rename(partial)
    with pytest.raises(ModelFolderError, match="unfinished training run.*--resume"):
        model_utils.load_model_folder(partial)


def test_a_changed_model_file_is_refused(trained_copy):
    _, folder, _ = trained_copy
    with zipfile.ZipFile(folder / "model.keras", "a") as archive:
        archive.writestr("extra.txt", "tampered")
    with pytest.raises(ModelFolderError, match="model.keras changed since training"):
        model_utils.load_model_folder(folder)


def test_a_corrupt_model_file_with_a_matching_hash_is_still_a_clear_error(trained_copy):
    _, folder, _ = trained_copy
    (folder / "model.keras").write_bytes(b"garbage")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.keras"] = file_hashes(folder)["model.keras"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="model.keras cannot be loaded"):
        model_utils.load_model_folder(folder)


def test_an_mlp_model_trains_saves_and_predicts(make_config, class_folder):
    """(The transfer family's model folder is trained, loaded and predicts in test_notebooks.)"""
    cfg = make_config(**{**RUN, "model.family": "mlp", "train.epochs": 1,
                         "data.source": str(class_folder)})
    folder = model_utils.train(cfg).model_folder
    model, class_names, config = model_utils.load_model_folder(folder)
    [prediction] = model_utils.predict_files(model, class_names, config,
                                             [class_folder / "fox" / "3.png"], 3)
    assert sorted(label for label, _ in prediction.top) == ["cat", "dog", "fox"]


def test_model_folder_names_never_collide(make_config):
    cfg = make_config()
    first = model_utils.new_run_folder(cfg)
    second = model_utils.new_run_folder(cfg)
    assert first != second
    taken = first.with_name(first.name.removesuffix(".resumable"))
    taken.mkdir()
    with pytest.raises(ModelFolderError, match="already exists"):
        model_utils.new_run_folder(cfg, final=taken)
    with pytest.raises(ModelFolderError, match="unfinished run already works in"):
        model_utils.new_run_folder(cfg, final=second.with_name(second.name.removesuffix(
            ".resumable")))


def test_a_name_claimed_by_a_run_started_at_the_same_moment_is_skipped(make_config,
                                                                       monkeypatch):
    """Another process creates the folder between the name's check and its creation."""
    cfg = make_config()
    pick = model_utils.unused_model_folder_name
    target = "imgcls_utils.training.model_folders.unused_model_folder_name"  # what it calls

    def raced(config):
        name = pick(config)
        resumable_folder(name).mkdir(parents=True)  # the other run's
        monkeypatch.setattr(target, pick)
        return name

    monkeypatch.setattr(target, raced)
    run_folder = model_utils.new_run_folder(cfg)
    assert run_folder.name.endswith("-2.resumable")
    assert (run_folder / "checkpoints").is_dir() and (run_folder / "config.yaml").is_file()


@pytest.mark.parametrize("settings, name", [
    ({}, "digits_cnn"),
    ({"data.source": "/photos/pets", "model.family": "mlp"}, "pets_mlp"),
    ({"data.source": "idx:/usr/share/datasets/fashion-mnist/", "model.family": "transfer",
      "transfer.backbone": "resnet50"}, "fashion-mnist_resnet50"),
    ({"data.source": "tfds:tf_flowers", "model.name": "flowers-v2"}, "flowers-v2"),
])
def test_model_folders_are_named_for_what_was_trained(make_config, settings, name):
    cfg = make_config(**settings)
    assert model_name(cfg) == name
    assert model_utils.unused_model_folder_name(cfg).name.startswith(f"{name}_")


def test_unfinished_runs_are_found_by_path_or_name(make_config):
    cfg = make_config()
    run_folder = model_utils.new_run_folder(cfg)
    models_dir = cfg.path("models_dir")
    final_name = run_folder.name.removesuffix(".resumable")
    assert model_utils.find_unfinished_run(run_folder, models_dir) == run_folder
    assert model_utils.find_unfinished_run(final_name, models_dir) == run_folder
    assert model_utils.find_unfinished_run(run_folder.name, models_dir) == run_folder
    assert model_utils.run_config(run_folder, cfg.root).to_dict() == cfg.to_dict()
    with pytest.raises(ModelFolderError, match=f"unfinished runs there: {run_folder.name}"):
        model_utils.find_unfinished_run("nope", models_dir)


def test_same_seed_gives_same_initial_weights(make_config):
    cfg = make_config(**SMALL)
    weights = []
    for _ in range(2):
        model_utils.set_seed(3)
        weights.append(model_utils.build_model(cfg.model, cfg.transfer, (16, 16, 1), 3)
                       .get_weights()[0])
    np.testing.assert_array_equal(*weights)


def test_prediction_skips_hidden_files_and_reports_damaged_images(trained, tmp_path):
    _, folder, _ = trained
    model, class_names, config = model_utils.load_model_folder(folder)
    images = tmp_path / "new"
    write_image(images / "a.png")
    (images / "._a.png").write_bytes(b"\0\5Mac resource fork")
    write_image(images / ".ipynb_checkpoints" / "a-checkpoint.png")
    assert [p.path.name for p in model_utils.predict_files(model, class_names, config,
                                                           [images])] == ["a.png"]


def test_a_messy_folder_is_classified_except_its_bad_files_each_named(trained, project, tmp_path):
    _, folder, _ = trained
    messy = tmp_path / "new"
    for i in range(3):
        write_image(messy / f"good{i}.png", seed=i)
    whole = write_image(tmp_path / "whole.png", size=(40, 40)).read_bytes()
    (messy / "cut.png").write_bytes(whole[:len(whole) // 2])
    (messy / "fake.jpg").write_text("not an image")
    write_png_claiming_size(messy / "bomb.png", 10_000, 10_000)  # over data.max_pixels: unread
    done, _ = imgcls("predict", str(folder), str(messy), cwd=project)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert sorted(Path(path).name for path in lines) == [
        "bomb.png", "cut.png", "fake.jpg", "good0.png", "good1.png", "good2.png"]
    bad = {Path(path).name: text for path, text in lines.items() if "cannot be classified" in text}
    assert sorted(bad) == ["bomb.png", "cut.png", "fake.jpg"]
    assert "100,000,000 pixels is over data.max_pixels = 89,478,485" in bad["bomb.png"]
    assert "imgcls: 3 of 6 file(s) could not be classified" in done.stderr


def trained_run(make_config, class_folder):
    """A TrainingRun trained and evaluated, not saved yet."""
    cfg = make_config(**{**RUN, "train.epochs": 1, "data.source": str(class_folder)})
    run = model_utils.TrainingRun(cfg)
    run.process_data()
    run.build_and_compile()
    run.fit()
    run.evaluate()
    return cfg, run


def test_saving_never_replaces_a_model_folder_of_the_same_name(make_config, class_folder):
    cfg, run = trained_run(make_config, class_folder)
    taken = cfg.path("models_dir") / run.run_folder.name.removesuffix(".resumable")
    taken.mkdir()
    (taken / "model.keras").write_text("someone else's model")
    with pytest.raises(ModelFolderError, match="appeared while this run trained"):
        run.save()
    assert (taken / "model.keras").read_text() == "someone else's model"
    assert (run.run_folder / "manifest.json").is_file()


def test_a_full_disk_while_saving_leaves_the_run_resumable(make_config, class_folder,
                                                           monkeypatch):
    cfg, run = trained_run(make_config, class_folder)
    monkeypatch.setattr(run.model, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run.save()
    models_dir = cfg.path("models_dir")
    assert model_utils.find_unfinished_run(run.run_folder.name, models_dir) == run.run_folder
    resumed = model_utils.train(cfg, resume=run.run_folder)  # space freed
    assert resumed.history["epoch"].tolist() == [1]
    model_utils.load_model_folder(resumed.model_folder)


@pytest.mark.parametrize("killed_at", ["publish", "_remove_checkpoints"])
def test_a_kill_while_saving_leaves_a_resumable_run_or_a_complete_folder(
        make_config, class_folder, monkeypatch, killed_at):
    cfg, run = trained_run(make_config, class_folder)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for kill -9 at this moment

    monkeypatch.setattr(f"imgcls_utils.training.model_folders.{killed_at}", killed)
    with pytest.raises(KeyboardInterrupt):
        run.save()
    final = run.run_folder.with_name(run.run_folder.name.removesuffix(".resumable"))
    if killed_at == "publish":  # before the rename: still a run to resume
        assert not final.exists() and (run.run_folder / "checkpoints" / "state.json").is_file()
    else:  # after it: a complete model folder, its checkpoints not yet deleted
        assert not run.run_folder.exists() and (final / "checkpoints").is_dir()
        model, class_names, _ = model_utils.load_model_folder(final)
        assert class_names == ["cat", "dog", "fox"]


@pytest.mark.parametrize("family, epochs, floor", [("cnn", 8, 0.95), ("mlp", 15, 0.85)])
def test_a_seeded_model_learns_the_digits_far_above_chance(make_config, family, epochs, floor):
    """Chance is 0.10: a model that stopped learning (a broken input pipeline, labels shuffled
    against images, inference-mode statistics off) fails here. An epoch is one pass over the
    training digits (the floors hold with a margin: 0.985 and 0.941 when written)."""
    cfg = make_config(**{"data.image_size": [16, 16], "model.family": family,
                         "train.epochs": epochs, "train.min_steps_per_epoch": 1,
                         "train.verbose": 0, "train.classical_baselines": False})
    metrics = model_utils.train(cfg).evaluation.metrics
    assert metrics["test_accuracy"] >= floor, metrics["confusion_matrix"]
