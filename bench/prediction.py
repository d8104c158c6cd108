"""Prediction benchmark: images/s of ``imgcls predict`` on a folder of photo-sized JPEGs, against
the loop it replaced (decode one file, ``predict_on_batch`` on it, next file), same model, same
files, same preprocessing, measured in this run; next to the competitor at its best, the
pipeline TensorFlow's image-loading tutorial writes (tf.data decoding and resizing in parallel,
batched, prefetched, then ``model.predict``); and its two shares apart, the network on pixels
decoded beforehand and the decoding without the network, each a ceiling for the whole.

    .venv/bin/python bench/prediction.py            # about 2 minutes on 2 CPU cores

The JPEGs (3,000, mixed sizes) are generated in a temporary folder deleted at the end; the
model is the default config's (the CNN at the input shape ``auto`` chooses from these JPEGs, at
the precision training would choose here; its weights do not change its speed).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_pipeline import CLASSES, generate  # noqa: E402

from imgcls_utils import data_utils, model_utils  # noqa: E402
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config  # noqa: E402
from imgcls_utils.data.input_shape import resolve_input_shape  # noqa: E402
from imgcls_utils.quiet_tensorflow import tf  # noqa: E402
from imgcls_utils.serving.prediction import BATCH_SIZE, decoded_batches, top_k  # noqa: E402

IMAGES = 3000
ROUNDS = 2
BASELINE = "one at a time (before)"
OURS = "imgcls predict_files"
TF_DATA = "tf.data + model.predict"


def one_at_a_time(model, class_names: list[str], settings: dict, files: list[Path]) -> None:
    """The loop ``predict_files`` used before: one file decoded and classified at a time."""
    for path in files:
        pixels = data_utils.load_image(path, tuple(settings["data"]["image_size"]),
                                       settings["data"]["channels"])
        probabilities = model.predict_on_batch(pixels[None].astype("float32"))[0]
        [class_names[i] for i in top_k(probabilities, 3)]


def tf_data_way(model, data: dict, files: list[Path]) -> None:
    """The competitor at its best, as TensorFlow's "Load and preprocess images" tutorial writes
    a pipeline ("Using tf.data for finer control"): file paths, ``decode_jpeg`` and
    ``tf.image.resize`` in a parallel ``map``, ``batch``, ``prefetch``; then ``model.predict``."""
    def decode(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=data["channels"])
        return tf.image.resize(image, data["image_size"])

    dataset = (tf.data.Dataset.from_tensor_slices([str(path) for path in files])
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH_SIZE)
               .prefetch(tf.data.AUTOTUNE))
    model.predict(dataset, verbose=0)


def model_alone(model, pixels: np.ndarray) -> None:
    """The network's share of ``predict_files``: its batches, on pixels decoded beforehand."""
    for start in range(0, len(pixels), BATCH_SIZE):
        model.predict_on_batch(pixels[start:start + BATCH_SIZE].astype("float32"))


def decoding_alone(settings: dict, files: list[Path]) -> None:
    """The other share: ``predict_files``' decoding, on all cores, without the network."""
    for _ in decoded_batches(files, settings["data"]):
        pass


def images_per_second(predict, files: list[Path]) -> float:
    started = time.perf_counter()
    predict(files)
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        folder = generate(Path(tmp) / "images", IMAGES)
        cfg = load_config(REPO / CONFIG_RELATIVE_PATH)
        data = resolve_input_shape(cfg.data, data_utils.scan_image_folder(folder, cfg.data))
        shape = (*data.image_size, data.channels)
        with model_utils.choose_hardware(cfg.hardware).scope():  # as training builds it
            model = model_utils.build_model(cfg.model, cfg.transfer, shape, len(CLASSES))
        settings, names = {**cfg.to_dict(), "data": dict(data)}, list(CLASSES)
        files = sorted(folder.rglob("*.jpg"))
        pixels = np.stack([image for batch in decoded_batches(files, settings["data"])
                           for _, image, _ in batch])
        ways = {BASELINE: lambda f: one_at_a_time(model, names, settings, f),
                OURS: lambda f: model_utils.predict_files(
                    model, names, settings, f),
                TF_DATA: lambda f: tf_data_way(model, settings["data"], f),
                "its network alone": lambda f: model_alone(model, pixels[:len(f)]),
                "its decoding alone": lambda f: decoding_alone(settings, f)}
        for predict in ways.values():
            predict(files[:200])  # tracing and warm-up
        rates = {name: [] for name in ways}
        for _ in range(ROUNDS):  # interleaved, so drift in the machine's speed hits both alike
            for name, predict in ways.items():
                rates[name].append(images_per_second(predict, files))
    base = statistics.median(rates[BASELINE])
    print(f"prediction, images/s over {IMAGES:,} JPEGs (160-640 x 120-480), the default "
          f"config's model ({'x'.join(map(str, shape))} input), median of {ROUNDS}:")
    for name, values in rates.items():
        rate = statistics.median(values)
        target = "   (target >= 5x)" if name == OURS else ""
        print(f"   {name:<24} {rate:7,.0f}   x{rate / base:.2f}{target}")
    print(f"   {OURS} vs {TF_DATA}: "
          f"x{statistics.median(rates[OURS]) / statistics.median(rates[TF_DATA]):.2f}")


if __name__ == "__main__":
    main()
