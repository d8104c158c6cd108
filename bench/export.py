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
- the TensorFlow Lite table: file size, test accuracy run with the LiteRT interpreter, and
  images/s (batches of 32, 2 threads) next to the Keras model's ``predict_on_batch``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgcls_utils import data_utils, model_utils  # noqa: E402
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
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
        table = exported.tflite_table()
        keras_row = table.loc["Keras (.keras)"]
        table["size vs Keras"] = (table["size_kb"] / keras_row["size_kb"]).round(2)
        table["speed vs Keras"] = (table["images_per_second"]
                                   / keras_row["images_per_second"]).round(2)
        print(table.to_string())


if __name__ == "__main__":
    main()
