"""Looking inside a model: heat maps of the pixels a prediction rests on, over the image.

Models with convolutions (``cnn``, ``transfer``) get Grad-CAM: the last convolutional feature
map, each channel weighted by the average gradient of the class score, so the map shows which
regions the head used, at the feature map's resolution resized to the image. The ``mlp`` has no
feature map, so it gets a plain gradient saliency map instead (see ``saliency``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from ..data.images import load_image
from ..quiet_tensorflow import keras, tf
from ..serving.prediction import Prediction, classify_batch, decoded_batches
from ..training.model_folders import load_model_folder
from ..training.models import output_layer
from .plots import overlay

GRAD_CAM = "gradcam"
SALIENCY = "saliency"
POOLING_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
TO_VECTOR_LAYERS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
                    keras.layers.Flatten)


@dataclass(frozen=True)
class Explanation:
    """One file's Prediction and the overlay PNG written for its top class (None when the file
    could not be read: ``prediction.error`` says why)."""

    prediction: Prediction
    overlay: Path | None


# ----------------------------------------------------------------------------- heat maps

def explain(model: keras.Model, pixels: np.ndarray, class_indices=None) -> tuple[np.ndarray, str]:
    """``(heat maps, method)`` for a batch of raw pixels: Grad-CAM where the model has a
    convolutional feature map, else a saliency map. Maps are ``(n, height, width)`` in [0, 1];
    each is for ``class_indices[i]``, by default the predicted class."""
    if last_feature_map(model) is None:
        return saliency(model, pixels, class_indices), SALIENCY
    return grad_cam(model, pixels, class_indices), GRAD_CAM


def grad_cam(model: keras.Model, pixels: np.ndarray, class_indices=None) -> np.ndarray:
    """Grad-CAM heat maps (Selvaraju et al. 2017) at the image resolution, in [0, 1]."""
    feature_map = last_feature_map(model)
    if feature_map is None:
        raise ValueError(f"model {model.name} has no convolutional feature map for Grad-CAM; "
                         "use explain(), which gives it a saliency map")
    probe = keras.Model(model.inputs, [feature_map, output_layer(model).input])
    images = tf.convert_to_tensor(pixels, tf.float32)
    with tf.GradientTape() as tape:
        features, hidden = probe(images, training=False)
        scores = _class_scores(model, hidden, class_indices)
    gradients = tf.cast(tape.gradient(scores, features), tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1)
    return _normalised(tf.nn.relu(cam), images.shape[1:3])


def saliency(model: keras.Model, pixels: np.ndarray, class_indices=None) -> np.ndarray:
    """|d class score / d pixel|, the largest over the channels, in [0, 1]: for the mlp, whose
    every pixel reaches the score through its own weights, the weight map its active hidden
    units give each pixel, in one backward pass. Occlusion would need a forward pass per patch
    position and a patch size to choose; SmoothGrad's averaging over noisy copies is made for
    the ragged gradients of deep networks."""
    probe = keras.Model(model.inputs, output_layer(model).input)
    images = tf.convert_to_tensor(pixels, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        scores = _class_scores(model, probe(images, training=False), class_indices)
    gradients = tf.abs(tf.cast(tape.gradient(scores, images), tf.float32))
    return _normalised(tf.reduce_max(gradients, axis=-1), images.shape[1:3])


def last_feature_map(model: keras.Model):
    """The last convolutional feature map as a tensor of ``model``'s graph (taken before a
    pooling layer, at twice its resolution), or None when the model has no convolutions (mlp).

    It is the input of the layer that turns the map into a vector (global pooling or flatten):
    unlike a nested backbone's own ``output``, that tensor is connected to the model's input."""
    if not any(isinstance(layer, (keras.layers.Conv2D, keras.Model)) for layer in model.layers):
        return None
    feature_map = next(layer for layer in model.layers if isinstance(layer, TO_VECTOR_LAYERS)).input
    producers = {id(layer.output): layer for layer in model.layers
                 if not isinstance(layer, keras.Model)}
    while isinstance(producers.get(id(feature_map)), POOLING_LAYERS):
        feature_map = producers[id(feature_map)].input
    return feature_map


def _class_scores(model: keras.Model, hidden, class_indices):
    """Each image's score for its class before the softmax, as Grad-CAM prescribes: a confident
    probability saturates near 1 and its gradient vanishes. Default class: the predicted one."""
    output = output_layer(model)
    logits = tf.matmul(tf.cast(hidden, tf.float32), output.kernel) + output.bias
    classes = (tf.argmax(logits, axis=1) if class_indices is None
               else tf.constant(class_indices, tf.int64))
    return tf.gather(logits, classes, axis=1, batch_dims=1)


def _normalised(maps, size) -> np.ndarray:
    """Maps resized to ``size`` (bilinear), each divided by its maximum (all-zero maps stay 0)."""
    maps = tf.image.resize(maps[..., None], size)[..., 0]
    peaks = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(maps, peaks).numpy()


# ----------------------------------------------------------------------------- pictures

class ExplainedExamples(NamedTuple):
    """Images, their heat maps for the predicted class, titles and the method, in the order
    ``plots.plot_explanations`` takes them."""

    images: np.ndarray
    heatmaps: np.ndarray
    titles: list[str]
    method: str


def explain_examples(model: keras.Model, examples: pd.DataFrame, folder: Path,
                     data) -> ExplainedExamples:
    """Heat maps for the predicted class of example images, e.g. ``metrics.top_losses`` or
    ``metrics.correct_examples``: files under ``folder`` loaded at the ``data`` section's size
    and channels; titled with the predicted class and, when wrong, the true one. No examples
    (a tiny test split where no class was predicted right) give no maps."""
    if examples.empty:
        height, width = data["image_size"]
        return ExplainedExamples(np.zeros((0, height, width, data["channels"])),
                                 np.zeros((0, height, width)), [], "")
    images = np.stack([load_image(Path(folder) / path, tuple(data["image_size"]), data["channels"])
                       for path in examples["path"]])
    heatmaps, method = explain(model, images)
    titles = [f"{row.predicted} {row.p_predicted:.2f}" + ("" if row.predicted == row.true
                                                          else f"\ntrue {row.true}")
              for row in examples.itertuples()]
    return ExplainedExamples(images, heatmaps, titles, method)


def explain_files(model_folder: Path, paths: list[Path], out_dir: Path,
                  top_k: int = 3) -> list[Explanation]:
    """Top-k labels for image files (and folders of them) as ``imgcls predict`` gives them, and
    for each readable file an overlay PNG in ``out_dir`` of where its top class was seen."""
    model, class_names, config = load_model_folder(model_folder)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    return [explanation for batch in decoded_batches(paths, config["data"])
            for explanation in _explain_batch(model, class_names, batch, top_k, out_dir, taken)]


def _explain_batch(model: keras.Model, class_names: list[str], batch: list, top_k: int,
                   out_dir: Path, taken: set[str]) -> list[Explanation]:
    """A ``decoded_batches`` batch classified, with an overlay PNG written per readable file."""
    readable = [i for i, (_, pixels, _) in enumerate(batch) if pixels is not None]
    written = {}
    if readable:
        heatmaps, method = explain(model, np.stack([batch[i][1] for i in readable]))
        for i, heatmap in zip(readable, heatmaps):
            path, pixels, _ = batch[i]
            written[i] = out_dir / _overlay_name(path, method, taken)
            Image.fromarray(overlay(pixels, heatmap)).save(written[i])
    return [Explanation(prediction, written.get(i))
            for i, prediction in enumerate(classify_batch(model, class_names, batch, top_k))]


def _overlay_name(path: Path, method: str, taken: set[str]) -> str:
    """``<file name>.<method>.png``, numbered when two inputs share a file name."""
    name, number = f"{path.name}.{method}.png", 1
    while name in taken:
        number += 1
        name = f"{path.name}.{number}.{method}.png"
    taken.add(name)
    return name
