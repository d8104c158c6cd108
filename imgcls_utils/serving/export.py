"""Exporting a model folder for TensorFlow Serving: ``exports/<model name>/<version>/``.

Each export is a new integer version (TensorFlow Serving serves the highest and picks up new
ones), built under a hidden staging name and renamed into place when complete, so a server
polling the folder never sees half a version. A version holds the SavedModel with two
signatures (``serving_default``: encoded image bytes in; ``pixels``: decoded pixels in; both
return ``probabilities`` and the top class name in ``classes``), ``assets.extra/`` with the
warm-up requests TensorFlow Serving replays at load and ``imgcls.json`` (class names, image
size, temperature, where it came from), and the TensorFlow Lite variants in ``tflite/``. The
model folder's temperature is in the network's weights, so every variant gives the calibrated
probabilities ``imgcls predict`` gives.

The SavedModel computes at the precision the model trained at (so it agrees with ``imgcls
predict``); the TensorFlow Lite variants start from a float32 copy, TensorFlow Lite having no
bfloat16 kernels.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..config import Config
from ..errors import UserError
from ..files import file_sha256, locked, staged
from ..quiet_tensorflow import keras, tensorflow_logs_above_warnings, tf
from ..training.model_folders import MODEL_FILE, load_model_folder, model_name, temperature
from . import tflite
from .drift import drift_reference
from .graph import (IMAGES_INPUT, PIXELS_SIGNATURE, PROBABILITIES, SERVING_SIGNATURE, ExportedGraph,
                    ServingModule)
from .graph_inputs import file_not_reproduced, graph_decoded, not_reproduced_inputs

if TYPE_CHECKING:  # the report's data stage; an export without it (and the server) needs none
    import pandas as pd

    from ..data.processed import ProcessedData

ASSETS_EXTRA = "assets.extra"
EXPORT_INFO = "imgcls.json"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_BATCH_SIZES = (1, 8)  # TensorFlow Serving replays each record once at load
REPORT_FILE = "report.json"
TFLITE_DIR = "tflite"
LABELS_FILE = "labels.txt"
PARITY_BATCH = 64


class ExportError(UserError):
    """An export folder that is missing, empty or not written by ``imgcls export``."""


@dataclass(frozen=True)
class ExportedVersion:
    """One complete version of an export: its folder and what ``imgcls.json`` says about it."""

    folder: Path
    info: dict

    @property
    def name(self) -> str:
        return self.info["model_name"]

    @property
    def version(self) -> int:
        return int(self.folder.name)

    @property
    def class_names(self) -> list[str]:
        return self.info["class_names"]

    @property
    def report(self) -> dict | None:
        """``report.json`` (parity and the TensorFlow Lite table), when the export has one."""
        path = self.folder / REPORT_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def report_text(self) -> str:
        """The report as ``imgcls export`` prints it: the graph's parity (and the test files it
        does not decode as training does), then the TensorFlow Lite table."""
        parity = self.report["parity"]
        lines = [f"graph vs imgcls predict on {parity['images']} test images: top-1 agreement "
                 f"{_number(parity['top1_agreement'], '.4f')}, largest probability difference "
                 f"{_number(parity['max_probability_difference'], '.2g')}, largest pixel "
                 f"difference {_number(parity['max_pixel_difference'], '.0f')}"]
        left_out = parity.get("not_reproduced_by_graph", {"files": {}})["files"]
        if left_out:
            lines.append(f"{len(left_out)} test image(s) the graph alone does not decode as "
                         "training does (imgcls serve and predict decode them as training "
                         f"does; {REPORT_FILE} lists them): " + ", ".join(
                             f"{name} ({why})" for name, why in list(left_out.items())[:5])
                         + (", ..." if len(left_out) > 5 else ""))
        return "\n".join([*lines, self.tflite_table().to_string()])

    def tflite_table(self) -> pd.DataFrame:
        """File size, test accuracy and images/s of the Keras model and each ``.tflite`` file."""
        import pandas as pd

        return pd.DataFrame(self.report["tflite"]).set_index("model")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def export_model(model_folder: Path, exports_dir: Path, processed: ProcessedData | None = None,
                 tflite_variants: bool = True) -> ExportedVersion:
    """Write the next version of the model folder's export under ``exports_dir/<model name>``;
    with the model's ``processed`` data, also the drift reference of its validation split in
    ``imgcls.json`` (``drift.drift_reference``) and, unless not ``tflite_variants``, the
    TensorFlow Lite variants and ``report.json`` (their size, accuracy and speed, and the
    exported graph's agreement with training's preprocessing on the test split)."""
    model, class_names, config = load_model_folder(model_folder)
    name = model_name(Config(config, root=Path(model_folder)))
    data = config["data"]
    module = ServingModule(model, class_names, tuple(data["image_size"]), data["channels"])
    info = {"model_name": name, "class_names": class_names,
            "image_size": list(data["image_size"]), "channels": data["channels"],
            "max_pixels": data["max_pixels"], "temperature": temperature(model_folder),
            "model_folder": str(Path(model_folder).resolve()),
            "model_sha256": file_sha256(Path(model_folder) / MODEL_FILE),
            "graph_does_not_reproduce": not_reproduced_inputs(data["channels"]),
            "created": datetime.now().isoformat(timespec="seconds")}
    if processed is not None and processed.count("val"):
        info["reference"] = validation_reference(model, processed)
    model_exports = Path(exports_dir) / name
    with locked(model_exports), tensorflow_logs_above_warnings():
        final = model_exports / str(next_version(model_exports))
        with staged(final) as building:
            tf.saved_model.save(module, str(building), signatures={
                SERVING_SIGNATURE: module.classify_bytes,
                PIXELS_SIGNATURE: module.classify_pixels})
            (building / ASSETS_EXTRA).mkdir()
            (building / ASSETS_EXTRA / EXPORT_INFO).write_text(json.dumps(info, indent=2))
            write_warmup_requests(building / ASSETS_EXTRA / WARMUP_FILE, name, info)
            if processed is not None and tflite_variants:
                pixels, labels = split_arrays(processed, "test")
                report = {"parity": graph_parity(building, model, processed, data, pixels),
                          "tflite": tflite_report(model, building, processed, model_folder,
                                                  pixels, labels)}
                (building / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return ExportedVersion(final, info)


def tflite_report(model: keras.Model, folder: Path, processed: ProcessedData, model_folder: Path,
                  pixels: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Write ``tflite/<variant>.tflite`` (converted from the model computing in float32) and
    ``tflite/labels.txt``; the rows of their table on the test ``pixels``, the Keras ``model``
    as trained first."""
    tflite_dir = Path(folder) / TFLITE_DIR
    tflite_dir.mkdir()
    (tflite_dir / LABELS_FILE).write_text("\n".join(processed.class_names) + "\n")
    variants = tflite.write_variants(float32_copy(model), tflite_dir,
                                     calibration_images(processed))
    table = tflite.compare(model, Path(model_folder) / MODEL_FILE, variants, pixels, labels)
    return table.to_dict("records")


def calibration_images(processed: ProcessedData) -> np.ndarray:
    """Training images in shuffled order (all classes), for the int8 variant's ranges."""
    from ..data.input_pipeline import make_dataset

    dataset = make_dataset(processed, "train", tflite.CALIBRATION_IMAGES, training=True,
                           cache=False)
    images, _ = next(iter(dataset))
    return images.numpy()


def split_arrays(processed: ProcessedData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's float32 pixels and labels, in its shards' order."""
    from ..data.input_pipeline import make_dataset

    batches = list(make_dataset(processed, split, 256, cache=False))
    return (np.concatenate([images.numpy() for images, _ in batches]),
            np.concatenate([labels.numpy() for _, labels in batches]))


def graph_parity(folder: Path, model: keras.Model, processed: ProcessedData, data: dict,
                 pixels: np.ndarray) -> dict:
    """The exported graph on the test split's files (decoding included) against the model as
    trained on training's pixels for them (the test shards' ``pixels``, which are what ``imgcls
    predict`` feeds it: tests/test_preprocessing_parity.py): top-1 agreement and the largest
    probability and pixel differences. Files the graph alone does not decode as training does
    (``graph_inputs.NOT_REPRODUCED``, or refused by it) are counted and listed, not compared:
    imgcls serve and predict decode them as training does."""
    paths = [processed.image_folder / path for path in processed.paths("test")]
    compared, graph, graph_pixels, left_out = _graph_on_files(ExportedGraph(folder), paths,
                                                              data["channels"])
    return {"images": len(compared), "test_images": processed.count("test"),
            **_agreement(model, graph, graph_pixels, pixels[compared]),
            "not_reproduced_by_graph": {
                "count": len(left_out),
                "files": {str(paths[index].relative_to(processed.image_folder)): why
                          for index, why in sorted(left_out.items())}}}


def _agreement(model: keras.Model, graph: np.ndarray, graph_pixels: np.ndarray,
               training_pixels: np.ndarray) -> dict:
    """Top-1 agreement and the largest differences of the graph's probabilities and pixels
    with the model's on training's pixels (None for no image)."""
    if not len(graph):
        return dict.fromkeys(("top1_agreement", "max_probability_difference",
                              "max_pixel_difference"))
    trained = predict_in_batches(model, training_pixels)
    return {"top1_agreement": float(np.mean(graph.argmax(-1) == trained.argmax(-1))),
            "max_probability_difference": float(np.abs(graph - trained).max()),
            "max_pixel_difference": float(np.abs(graph_pixels - training_pixels).max())}


def predict_in_batches(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """The model's probabilities for ``pixels``, batch by batch as imgcls predict runs it
    (Keras' predict on an array builds a tf.data pipeline that TensorFlow 2.21 rewrites, logging
    an E0000 line, under op determinism)."""
    return np.concatenate([np.asarray(model.predict_on_batch(pixels[start:start + PARITY_BATCH]),
                                      np.float32)
                           for start in range(0, len(pixels), PARITY_BATCH)])


def validation_reference(model: keras.Model, processed: ProcessedData) -> dict:
    """What the model predicts on the validation split, as the server's drift scores compare
    against: ``drift.drift_reference``."""
    pixels, _ = split_arrays(processed, "val")
    return drift_reference(predict_in_batches(model, pixels), pixels)


def _graph_on_files(exported: ExportedGraph, paths: list[Path], channels: int):
    """``(indices compared, the graph's probabilities and pixels for them, {index: why left
    out})``: each file decoded and classified by the graph alone, batch by batch."""
    compared, probabilities, pixels, left_out = [], [], [], {}
    for start in range(0, len(paths), PARITY_BATCH):
        batch = {}
        for index, path in enumerate(paths[start:start + PARITY_BATCH], start):
            if case := file_not_reproduced(path, channels):
                left_out[index] = case
            else:
                batch[index] = path.read_bytes()
        decoded, refused = graph_decoded(exported.decode, batch)
        left_out.update((index, f"refused by the graph: {why}") for index, why in refused.items())
        if decoded:
            compared += list(decoded)
            pixels.append(np.stack(list(decoded.values())))
            probabilities.append(exported.classify_pixels(pixels[-1])[PROBABILITIES])
    if not compared:
        return compared, np.zeros((0, 0)), np.zeros((0, 0)), left_out
    return compared, np.concatenate(probabilities), np.concatenate(pixels), left_out


def float32_copy(model: keras.Model) -> keras.Model:
    """The same network and weights computing in float32 (a model trained with mixed precision
    keeps float32 weights, so nothing is lost)."""
    copy = model.__class__.from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def _float32_config(config):
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def next_version(model_exports: Path) -> int:
    return max(versions(model_exports), default=0) + 1


def versions(model_exports: Path) -> list[int]:
    """The complete versions under ``exports/<name>``, oldest first (staging folders are
    hidden, and a folder without ``saved_model.pb`` is not a version)."""
    if not Path(model_exports).is_dir():
        return []
    return sorted(int(path.name) for path in Path(model_exports).iterdir()
                  if is_version_folder(path))


def is_version_folder(path: Path) -> bool:
    """``exports/<name>/<number>`` holding a SavedModel."""
    return path.name.isdigit() and (path / "saved_model.pb").is_file()


def write_warmup_requests(path: Path, name: str, info: dict) -> None:
    """TensorFlow Serving's warm-up file: ``PredictionLog`` records, one per batch size, of a
    plain gray PNG at the model's image size (its graph is traced and its kernels chosen before
    the first real request arrives)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    height, width = info["image_size"]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch_size in WARMUP_BATCH_SIZES:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=SERVING_SIGNATURE))
            request.inputs[IMAGES_INPUT].CopyFrom(
                tf.make_tensor_proto([warmup_image(width, height)] * batch_size))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def warmup_image(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def find_version(path: Path) -> ExportedVersion:
    """The version an export path names: ``exports/<name>/<version>`` itself, or the newest
    version under ``exports/<name>``."""
    path = Path(path)
    if is_version_folder(path):
        return read_version(path)
    found = versions(path)
    if not found:
        raise ExportError(f"{path} holds no exported version (no <number>/saved_model.pb); "
                          "export a model folder with `imgcls export <model folder>`")
    return read_version(path / str(found[-1]))


def read_version(folder: Path) -> ExportedVersion:
    info_file = Path(folder) / ASSETS_EXTRA / EXPORT_INFO
    if not info_file.is_file():
        raise ExportError(f"{folder} has no {ASSETS_EXTRA}/{EXPORT_INFO}: not written by "
                          "`imgcls export`")
    return ExportedVersion(Path(folder), json.loads(info_file.read_text()))


def is_export(path: Path) -> bool:
    """Whether ``path`` is an export (``exports/<name>`` or one of its versions)."""
    path = Path(path)
    return (path / "saved_model.pb").is_file() or bool(versions(path))

