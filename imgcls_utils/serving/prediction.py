"""Using a trained model: top-k labels for new image files, with a model folder (preprocessed
exactly as in training), an export (decoded by its graph) or a TensorFlow Lite file.

Files are decoded on all cores, the next batch while the model classifies the current one, and
classified in batches. A file that cannot be classified (damaged, not an image, over the
model's ``data.max_pixels``) gets its reason instead of labels, and every other file is still
classified. ``top_k`` is the one ranking of classes: here, in the server and on its page.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import (DECODE_ERRORS, IMAGE_EXTENSIONS, is_hidden, load_image,
                           pixel_limit_checked_by_caller)
from ..errors import UserError
from ..quiet_tensorflow import keras
from ..training.model_folders import load_model_folder
from .export import ExportedVersion, find_version, is_export
from .graph import PROBABILITIES, ExportedGraph
from .graph_inputs import decode_as_training, graph_input_problem
from .tflite import load_tflite

BATCH_SIZE = 128


@dataclass(frozen=True)
class Prediction:
    """One file's top-k ``(class name, probability)``, or the reason it could not be read."""

    path: Path
    top: list[tuple[str, float]]
    error: str = ""

    def line(self) -> str:
        """``path: label probability, ...``, or why the file cannot be classified."""
        guesses = ", ".join(f"{label} {probability:.3f}" for label, probability in self.top)
        return f"{self.path}: {guesses or f'cannot be classified: {self.error}'}"


def image_files(paths: list[Path]) -> list[Path]:
    """The given image files, plus the image files under any given folder, sorted (hidden and
    system files such as ``._photo.jpg`` or ``.ipynb_checkpoints/`` left out)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                            and p.is_file()
                            and not any(map(is_hidden, p.relative_to(path).parts)))
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist; give image files or folders of images")
    return found


def predict_files(model: keras.Model, class_names: list[str], config: dict, paths: list[Path],
                  top_k: int = 3, batch_size: int = BATCH_SIZE) -> list[Prediction]:
    """A Prediction for every image file in ``paths``, in order, each preprocessed exactly as
    in training (image size, channels and pixel limit come from the model folder's config, not
    the current one; any further resizing or scaling is part of the model itself)."""
    return [prediction for batch in decoded_batches(paths, config["data"], batch_size)
            for prediction in classify_batch(model, class_names, batch, top_k)]


def decoded_batches(paths: list[Path], data: dict, batch_size: int = BATCH_SIZE
                    ) -> Iterator[list[tuple[Path, np.ndarray | None, str]]]:
    """The image files in ``paths`` decoded as in training (``data``: the model folder's data
    section), as ``(path, pixels or None, error)`` batch by batch; the next batch decodes on all
    cores while the caller works on the current one."""
    with pixel_limit_checked_by_caller(), ThreadPoolExecutor(os.cpu_count()) as pool:
        for chunk, decoded in _decoded_batches(image_files(paths), batch_size, data, pool):
            yield [(path, pixels, error) for path, (pixels, error) in zip(chunk, decoded)]


def classify_batch(model: keras.Model, class_names: list[str],
                   batch: list[tuple[Path, np.ndarray | None, str]], top_k: int) -> list[Prediction]:
    """A Prediction for each file of a ``decoded_batches`` batch, classified in one call."""
    good = [pixels for _, pixels, _ in batch if pixels is not None]
    probabilities = iter(model.predict_on_batch(np.stack(good).astype("float32")) if good else [])
    return [Prediction(path, [], error) if pixels is None else
            Prediction(path, _top(next(probabilities), class_names, top_k))
            for path, pixels, error in batch]


def predict_files_with_export(version: ExportedVersion, paths: list[Path], top_k: int = 3,
                              batch_size: int = BATCH_SIZE) -> list[Prediction]:
    """A Prediction for every image file by an exported model from the files' bytes, decoded by
    its graph as TensorFlow Serving runs it, or as training decodes them where the graph alone
    would not (``graph_inputs.decode_as_training``); a file neither takes gets its reason."""
    graph = ExportedGraph(version.folder)
    files = image_files(paths)
    errors = {path: graph_input_problem(path, version.info["max_pixels"]) for path in files}
    good = [path for path in files if not errors[path]]
    probabilities = {}
    for start in range(0, len(good), batch_size):
        batch = good[start:start + batch_size]
        decoded = decode_as_training([path.read_bytes() for path in batch], graph.decode,
                                     version.info)
        errors.update((path, pixels) for path, pixels in zip(batch, decoded)
                      if isinstance(pixels, str))
        taken = [(path, pixels) for path, pixels in zip(batch, decoded)
                 if not isinstance(pixels, str)]
        if taken:
            classified = graph.classify_pixels(np.stack([pixels for _, pixels in taken]))
            probabilities.update(zip([path for path, _ in taken], classified[PROBABILITIES]))
    return [Prediction(path, _top(probabilities[path], version.class_names, top_k))
            if path in probabilities else Prediction(path, [], errors[path]) for path in files]


def predict(model: Path, images: list[Path], top_k: int = 3) -> list[Prediction]:
    """Top-k labels of the images by a model folder, an export (``exports/<name>`` or one of
    its versions) or one of an export's ``.tflite`` files, whichever ``model`` is."""
    model = Path(model)
    if model.suffix == ".tflite":
        return predict_files(*load_tflite(model), images, top_k)
    if is_export(model):
        return predict_files_with_export(find_version(model), images, top_k)
    return predict_files(*load_model_folder(model), images, top_k)


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` most probable classes, most probable first. Equal probabilities
    keep class order (the class listed first wins a tie), so ``imgcls predict``, the server's
    upload answer and its page list tied classes alike."""
    return np.argsort(-np.asarray(probabilities), kind="stable")[:k]


def _decoded_batches(files: list[Path], batch_size: int, data: dict,
                     pool: ThreadPoolExecutor) -> Iterator[tuple[list[Path], list]]:
    """``(files, [(pixels or None, error)])`` batch by batch, the next batch already decoding on
    the pool while the caller works on the current one."""
    batches = [files[start:start + batch_size] for start in range(0, len(files), batch_size)]
    pending: deque = deque()
    for batch in batches:
        pending.append((batch, [pool.submit(_decode, path, data) for path in batch]))
        if len(pending) > 1:
            yield _finished(pending.popleft())
    while pending:
        yield _finished(pending.popleft())


def _finished(submitted: tuple[list[Path], list[Future]]) -> tuple[list[Path], list]:
    batch, futures = submitted
    return batch, [future.result() for future in futures]


def _decode(path: Path, data: dict) -> tuple[np.ndarray | None, str]:
    try:
        return load_image(path, tuple(data["image_size"]), data["channels"],
                          data["max_pixels"]), ""
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        return None, f"not a readable image ({error})"


def _top(probabilities: np.ndarray, class_names: list[str], k: int) -> list[tuple[str, float]]:
    return [(class_names[i], float(probabilities[i])) for i in top_k(probabilities, k)]
