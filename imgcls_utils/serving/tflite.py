"""TensorFlow Lite variants of a model, run with the LiteRT interpreter (``ai-edge-litert``).

Three variants: ``float32`` (the network as it is), ``float16`` (weights stored in half
precision: half the file) and ``int8`` (full-integer: weights and activations quantized with
ranges calibrated on training images; uint8 pixels in, uint8 probabilities out). Each is
measured like the Keras model: file size, test accuracy and images per second.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.images import PILLOW_PIXEL_LIMIT
from ..errors import UserError
from ..quiet_tensorflow import keras, tf, without_tflite_notices

if TYPE_CHECKING:
    import pandas as pd

VARIANTS = ("float32", "float16", "int8")
CALIBRATION_IMAGES = 256
SPEED_BATCH = 32  # images per call when measuring speed, the same for every variant


def convert(model: keras.Model, variant: str, calibration: np.ndarray) -> bytes:
    """The ``.tflite`` flatbuffer of ``model`` (computing in float32) as ``variant``."""
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, verbose=False)  # Keras 3's way to a SavedModel for the converter
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        _configure(converter, variant, calibration)
        return converter.convert()


def _configure(converter, variant: str, calibration: np.ndarray) -> None:
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8


class TfliteClassifier:
    """A ``.tflite`` model in the LiteRT interpreter, called like a Keras model's
    ``predict_on_batch``: float32 pixels 0-255 in, float32 class probabilities out, whatever the
    file's input and output types (quantized ones are scaled with the file's own parameters)."""

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        with without_tflite_notices():
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch_size = 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of the images the file takes."""
        return tuple(int(size) for size in self.input["shape"][1:])

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) != self.batch_size:
            self.interpreter.resize_tensor_input(self.input["index"], pixels.shape)
            with without_tflite_notices():  # XNNPACK announces itself when it takes over
                self.interpreter.allocate_tensors()
            self.batch_size = len(pixels)
        self.interpreter.set_tensor(self.input["index"], _quantized(pixels, self.input))
        self.interpreter.invoke()
        return _dequantized(self.interpreter.get_tensor(self.output["index"]), self.output)


def load_tflite(path: Path) -> tuple[TfliteClassifier, list[str], dict]:
    """A ``.tflite`` file of an export, ready for ``prediction.predict_files``: the classifier,
    the class names (``labels.txt`` beside it) and the data settings to decode images with (its
    input shape; the pixel limit from the export's ``imgcls.json`` when there is one)."""
    path = Path(path)
    labels = path.parent / "labels.txt"
    if not path.is_file() or not labels.is_file():
        raise UserError(f"{path}: give a .tflite file written by `imgcls export` (with the "
                        f"labels.txt beside it){'' if path.is_file() else '; it does not exist'}")
    classifier = TfliteClassifier(path)
    height, width, channels = classifier.image_shape
    info = path.parent.parent / "assets.extra" / "imgcls.json"
    max_pixels = json.loads(info.read_text())["max_pixels"] if info.is_file() else PILLOW_PIXEL_LIMIT
    data = {"image_size": [height, width], "channels": channels, "max_pixels": max_pixels}
    return classifier, labels.read_text().splitlines(), {"data": data}


def _quantized(values: np.ndarray, tensor: dict) -> np.ndarray:
    scale, zero_point = tensor["quantization"]
    if not scale:
        return values.astype(tensor["dtype"])
    limits = np.iinfo(tensor["dtype"])
    return np.clip(np.rint(values / scale + zero_point), limits.min, limits.max).astype(
        tensor["dtype"])


def _dequantized(values: np.ndarray, tensor: dict) -> np.ndarray:
    scale, zero_point = tensor["quantization"]
    if not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def write_variants(model: keras.Model, folder: Path, calibration: np.ndarray) -> dict[str, Path]:
    """``<variant>.tflite`` for every variant in ``folder``."""
    paths = {}
    with without_tflite_notices():
        for variant in VARIANTS:
            paths[variant] = Path(folder) / f"{variant}.tflite"
            paths[variant].write_bytes(convert(model, variant, calibration))
    return paths


def compare(model: keras.Model, model_file: Path, variants: dict[str, Path],
            pixels: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """File size, test accuracy and images/s of the Keras model and of each variant."""
    import pandas as pd  # the export's report alone: imgcls predict on a .tflite file needs none

    rows = [_measured("Keras (.keras)", model_file, lambda batch: model.predict_on_batch(batch),
                      pixels, labels)]
    for variant, path in variants.items():
        rows.append(_measured(f"TFLite {variant}", path, TfliteClassifier(path).predict_on_batch,
                              pixels, labels))
    return pd.DataFrame(rows)


def _measured(name: str, path: Path, predict, pixels: np.ndarray, labels: np.ndarray) -> dict:
    batches = [pixels[start:start + SPEED_BATCH] for start in range(0, len(pixels), SPEED_BATCH)]
    for size in (len(batches[-1]), len(batches[0])):  # a first call at each batch size traces
        predict(batches[0][:size])  # (Keras) or allocates (LiteRT): not timed
    start = time.perf_counter()
    probabilities = np.concatenate([np.asarray(predict(batch)) for batch in batches])
    seconds = time.perf_counter() - start
    return {"model": name, "size_kb": round(Path(path).stat().st_size / 1024, 1),
            "test_accuracy": round(float(np.mean(probabilities.argmax(-1) == labels)), 4),
            "images_per_second": round(len(pixels) / seconds)}
