"""``imgcls export``: TensorFlow Serving's layout and signatures, a graph that decodes as training
does, TensorFlow Lite variants run with LiteRT, and ``imgcls predict`` on all of them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgcls_utils import data_utils, model_utils
from imgcls_utils.cli import main
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.evaluation.calibration import apply_temperature
from imgcls_utils.quiet_tensorflow import keras, tf
from imgcls_utils.serving.export import (ASSETS_EXTRA, EXPORT_INFO, WARMUP_FILE, ExportError,
                                         find_version, float32_copy, split_arrays, versions)
from imgcls_utils.serving.graph import decode_image
from imgcls_utils.serving.prediction import graph_input_problem
from imgcls_utils.serving.tflite import TfliteClassifier
from tests.conftest import project_root
from tests.test_cli import imgcls
from tests.test_preprocessing_parity import TARGET, write_every_mode

# What TensorFlow's decoders do not reproduce (documented in serving_graph and the README).
NOT_REPRODUCED = {"rotated.jpg": "EXIF orientation", "palette_transparent.gif": "GIF transparency"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small digits CNN trained, exported with its TensorFlow Lite variants and report."""
    root = project_root(tmp_path_factory.mktemp("project"))
    cfg = load_config(root / CONFIG_RELATIVE_PATH, overrides={
        "data.image_size": [16, 16], "train.epochs": 4, "train.min_steps_per_epoch": 1,
        "train.verbose": 0, "train.classical_baselines": False})
    folder = model_utils.train(cfg).model_folder
    processed = data_utils.process_data(cfg)
    version = model_utils.export_model(folder, cfg.path("exports_dir"), processed)
    return cfg, folder, processed, version


def test_export_has_tensorflow_servings_layout_and_numbered_versions(exported):
    cfg, folder, _, version = exported
    assert version.folder == cfg.path("exports_dir") / "digits_cnn" / "1"
    files = {p.relative_to(version.folder).as_posix() for p in version.folder.rglob("*")
             if p.is_file()}
    assert {"saved_model.pb", "variables/variables.index", f"{ASSETS_EXTRA}/{EXPORT_INFO}",
            f"{ASSETS_EXTRA}/{WARMUP_FILE}", "tflite/float32.tflite", "tflite/float16.tflite",
            "tflite/int8.tflite", "tflite/labels.txt", "report.json"} <= files
    assert (version.folder / "tflite/labels.txt").read_text().split() == [str(d) for d in range(10)]
    second = model_utils.export_model(folder, cfg.path("exports_dir"))  # no TFLite this time
    assert second.version == 2 and versions(version.folder.parent) == [1, 2]
    assert find_version(version.folder.parent).folder == second.folder
    assert [p.name for p in version.folder.parent.iterdir() if p.name.startswith(".")] == []
    shutil.rmtree(second.folder)


def test_saved_model_cli_shows_the_bytes_and_pixels_signatures(exported):
    version = exported[3]
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--dir", str(version.folder), "--all"],
                           capture_output=True, text=True, timeout=120).stdout
    serving = shown.split("signature_def['serving_default']:")[1]
    pixels = shown.split("signature_def['pixels']:")[1].split("signature_def[")[0]
    assert "inputs['images'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in serving
    assert "inputs['pixels'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 16, 16, 1)" \
        in pixels
    for signature in (serving, pixels):
        assert "outputs['classes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" \
            in signature
        assert ("outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n"
                "        shape: (-1, 10)") in signature
        assert "Method name is: tensorflow/serving/predict" in signature


def test_exported_graph_agrees_with_imgcls_predict_on_the_test_split(exported):
    parity = exported[3].report["parity"]
    assert parity["images"] == parity["test_images"] == exported[2].count("test")
    assert parity["top1_agreement"] >= 0.995
    assert parity["max_pixel_difference"] <= 1  # rounding only: same decoder, same filter
    assert parity["max_probability_difference"] < 0.05


@pytest.mark.parametrize("channels", [1, 3])
def test_graph_decodes_every_mode_and_format_as_training_does(tmp_path, channels):
    for path in write_every_mode(tmp_path / "modes", 1):
        if graph_input_problem(path, 10**8) or path.name in NOT_REPRODUCED:
            continue  # TIFF: not a format TensorFlow decodes; imgcls serve refuses it by name
        if path.name == "cmyk.jpg" and channels == 1:
            continue  # libjpeg cannot convert CMYK to grayscale: a 4xx from the server
        graph = decode_image(tf.constant(path.read_bytes()), TARGET, channels).numpy()
        training = data_utils.load_image(path, TARGET, channels).astype(np.float32)
        assert np.abs(graph - training).max() <= 1, path.name


def test_warmup_file_holds_tensorflow_serving_prediction_logs(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    version = exported[3]
    records = [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in
               tf.data.TFRecordDataset(str(version.folder / ASSETS_EXTRA / WARMUP_FILE))]
    requests = [record.predict_log.request for record in records]
    assert [r.model_spec.name for r in requests] == ["digits_cnn", "digits_cnn"]
    assert {r.model_spec.signature_name for r in requests} == {"serving_default"}
    images = [tf.make_ndarray(r.inputs["images"]) for r in requests]
    assert [len(batch) for batch in images] == [1, 8]
    signature = tf.saved_model.load(str(version.folder)).signatures["serving_default"]
    assert signature(images=tf.constant(images[1]))["probabilities"].shape == (8, 10)


def test_tflite_variants_are_smaller_and_as_accurate_in_litert(exported):
    table = exported[3].tflite_table()
    assert list(table.index) == ["Keras (.keras)", "TFLite float32", "TFLite float16",
                                 "TFLite int8"]
    sizes = table["size_kb"]
    assert sizes["TFLite int8"] < sizes["TFLite float16"] < sizes["TFLite float32"]
    keras_accuracy = table.loc["Keras (.keras)", "test_accuracy"]
    assert keras_accuracy > 0.8
    assert (abs(table["test_accuracy"] - keras_accuracy) <= 0.03).all()
    # Each file was timed on the test images: within 100x of the Keras model's speed either way
    # (a row whose timer missed the work, or that timed nothing, would be far outside).
    speed = table["images_per_second"] / table.loc["Keras (.keras)", "images_per_second"]
    assert ((speed > 0.01) & (speed < 100)).all(), table
    int8 = TfliteClassifier(exported[3].folder / "tflite" / "int8.tflite")
    assert int8.input["dtype"] == np.uint8 and int8.image_shape == (16, 16, 1)


def test_tflite_gives_the_probabilities_calibrated_by_the_model_folders_temperature(exported):
    _, folder, processed, version = exported
    pixels = split_arrays(processed, "test")[0][:32]
    trained = float32_copy(keras.saving.load_model(folder / "model.keras")).predict_on_batch(
        pixels)  # TensorFlow Lite computes in float32 whatever the training precision
    float32 = TfliteClassifier(version.folder / "tflite" / "float32.tflite")
    np.testing.assert_allclose(float32.predict_on_batch(pixels),
                               apply_temperature(trained, version.info["temperature"]),
                               atol=1e-5)


def test_predict_takes_a_model_folder_an_export_or_a_tflite_file(exported, tmp_path, capsys):
    """``imgcls predict`` in this process (test_cli.py runs it from the shell)."""
    _, folder, processed, version = exported
    images = [processed.image_folder / path for path in processed.paths("test")[:12]]
    (tmp_path / "notes.png").write_text("not an image")
    tops = {}
    for model in (folder, version.folder.parent, version.folder / "tflite" / "float32.tflite",
                  version.folder / "tflite" / "int8.tflite"):
        capsys.readouterr()
        assert main(["predict", str(model), *map(str, images), str(tmp_path / "notes.png")]) == 3
        lines = capsys.readouterr().out.splitlines()
        assert lines[-1].endswith("cannot be classified: not a readable image (cannot identify "
                                  f"image file '{tmp_path / 'notes.png'}')")
        tops[model] = [line.split(": ")[1].split()[0] for line in lines[:-1]]
    agreeing = [np.mean(np.equal(tops[folder], top)) for top in tops.values()]
    assert min(agreeing) >= 11 / 12


def test_exports_and_tflite_files_that_are_not_are_clear_errors(tmp_path, exported):
    with pytest.raises(ExportError, match="holds no exported version"):
        find_version(tmp_path)
    lonely = tmp_path / "model.tflite"
    shutil.copy(exported[3].folder / "tflite" / "int8.tflite", lonely)
    done, _ = imgcls("predict", str(lonely), str(lonely))
    assert done.returncode == 2 and "labels.txt" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_export_leaves_no_version_behind(exported, monkeypatch):
    cfg, folder, _, version = exported
    from imgcls_utils.serving import export

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_warmup_requests", disk_full)
    with pytest.raises(OSError):
        model_utils.export_model(folder, cfg.path("exports_dir"))
    assert versions(version.folder.parent) == [1]
    assert not [p for p in version.folder.parent.iterdir() if p.name.endswith(".staging")]


def test_export_info_names_the_model_and_its_preprocessing(exported):
    _, folder, _, version = exported
    info = json.loads((version.folder / ASSETS_EXTRA / EXPORT_INFO).read_text())
    assert info["model_name"] == "digits_cnn" and info["image_size"] == [16, 16]
    assert info["channels"] == 1 and info["class_names"] == [str(d) for d in range(10)]
    assert Path(info["model_folder"]) == folder.resolve()
    calibration = json.loads((folder / "calibration.json").read_text())
    assert info["temperature"] == calibration["temperature"] != 1
