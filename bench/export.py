"""Export benchmark: the exported graph against ``imgcls predict``, and the TensorFlow Lite
variants against the Keras model they come from, on the official test split where there is one.

    .venv/bin/python bench/export.py                          # embedded digits, about 2 minutes
    .venv/bin/python bench/export.py --set data.source=idx:/usr/share/datasets/fashion-mnist \\
        --set data.test_split=source --set data.image_size=[28,28]

Trains the default model on the source (in a temporary project; nothing in this one changes),
exports it and prints:

- parity: on every test image, the SavedModel's ``serving_default`` fed the file's bytes
  (decoding in the graph) against ``imgcls predict`` (training's decoding, the model as
  trained): top-1 agreement, largest probability and pixel differences;
- the TensorFlow Lite table, measured here (the export's own report.json times one pass): each
  file's size next to the Keras model's weights alone (the ``.keras`` file also holds the
  optimizer state), test accuracy run with the LiteRT interpreter, and images/s (batches of 32)
  as the median of ``--passes`` passes over the test split, the models' passes interleaved;
  the Keras model both as trained (mixed precision where training chose it) and in float32,
  the precision the TFLite files compute in.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from imgcls_utils import data_utils, model_utils  # noqa: E402
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config  # noqa: E402
from imgcls_utils.serving.export import TFLITE_DIR, float32_copy, split_arrays  # noqa: E402
from imgcls_utils.serving.tflite import SPEED_BATCH, TfliteClassifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--passes", type=int, default=15, help="timed passes per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        root = Path(tmp)
        (root / "config").mkdir()
        shutil.copy(REPO / CONFIG_RELATIVE_PATH, root / CONFIG_RELATIVE_PATH)
        cfg = load_config(root / CONFIG_RELATIVE_PATH, set_options=args.set,
                          overrides={"train.verbose": 0, "train.classical_baselines": False})
        started = time.perf_counter()
        run = model_utils.train(cfg)
        print(f"trained {cfg.data.source} in {time.perf_counter() - started:.0f} s: test "
              f"accuracy {run.evaluation.metrics['test_accuracy']:.4f} "
              f"({run.hardware.precision})")
        started = time.perf_counter()
        exported = model_utils.export_model(run.model_folder, cfg.path("exports_dir"),
                                            data_utils.process_data(cfg))
        print(f"exported in {time.perf_counter() - started:.0f} s (SavedModel, 3 TFLite "
              "variants, parity and table)")
        parity = exported.report["parity"]
        print(f"\nparity on {parity['images']} of {parity['test_images']} test images: top-1 "
              f"agreement {parity['top1_agreement']:.4f}, largest probability difference "
              f"{parity['max_probability_difference']:.3g}, largest pixel difference "
              f"{parity['max_pixel_difference']:.0f}\n")
        print(tflite_table(run.model, exported, data_utils.process_data(cfg), args.passes,
                           root).to_string())


def tflite_table(model, exported, processed, passes: int, scratch: Path) -> pd.DataFrame:
    """Size, test accuracy and median images/s of the Keras model (as trained, and in float32)
    and of each TFLite file; sizes and speeds also relative to the float32 Keras row."""
    pixels, labels = split_arrays(processed, "test")
    # The weights alone: a compiled model's weights file also holds its optimizer's state, so
    # they are written from an uncompiled copy.
    weights, float32_model = scratch / "model.weights.h5", float32_copy(model)
    float32_model.save_weights(weights)
    predictors = {f"Keras, as trained ({model.dtype_policy.name})": (model.predict_on_batch, weights),
                  "Keras, float32": (float32_model.predict_on_batch, weights)}
    for path in sorted((exported.folder / TFLITE_DIR).glob("*.tflite")):
        predictors[f"TFLite {path.stem}"] = (TfliteClassifier(path).predict_on_batch, path)
    batches = [pixels[start:start + SPEED_BATCH] for start in range(0, len(pixels), SPEED_BATCH)]
    for predict, _ in predictors.values():  # a first call at each batch size traces or allocates
        for size in {len(batches[0]), len(batches[-1])}:
            predict(batches[0][:size])
    seconds = {name: [] for name in predictors}
    for turn in range(passes):  # interleaved, in alternating order
        for name in list(predictors)[::1 if turn % 2 == 0 else -1]:
            started = time.perf_counter()
            for batch in batches:
                predictors[name][0](batch)
            seconds[name].append(time.perf_counter() - started)
    rows = {name: {"size_kb": round(path.stat().st_size / 1024, 1),
                   "test_accuracy": round(float(np.mean(
                       np.concatenate([np.asarray(predict(b)) for b in batches]).argmax(-1)
                       == labels)), 4),
                   "images_per_second": round(len(pixels) / statistics.median(seconds[name]))}
            for name, (predict, path) in predictors.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    reference = table.loc["Keras, float32"]
    table["size vs Keras weights"] = (table["size_kb"] / reference["size_kb"]).round(2)
    table["speed vs Keras float32"] = (table["images_per_second"]
                                       / reference["images_per_second"]).round(2)
    return table


if __name__ == "__main__":
    main()
