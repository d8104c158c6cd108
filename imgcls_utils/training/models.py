"""Building the network for ``model.family``: ``mlp``, ``cnn`` (optionally residual) or
``transfer`` (a keras.applications backbone, set up by the ``transfer`` section, with a new
classification head).

Every model takes raw pixels in [0, 255] (what the data pipeline and ``predict`` feed) and does
its own scaling inside, so a saved model needs nothing but an image of the trained size.
The output layer always computes in float32, so mixed precision never rounds the probabilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Section
from ..errors import UserError
from ..quiet_tensorflow import keras


class ModelConfigError(UserError):
    """A ``model.*`` setting that cannot be built, naming the key and what to do."""


@dataclass(frozen=True)
class Backbone:
    """A keras.applications network: its class, the module holding its ``preprocess_input``, and
    the smallest input side it accepts."""

    application: str
    module: str
    min_size: int


BACKBONES = {
    "mobilenet_v2": Backbone("MobileNetV2", "mobilenet_v2", 32),
    "efficientnet_b0": Backbone("EfficientNetB0", "efficientnet", 32),
    "resnet50": Backbone("ResNet50", "resnet50", 32),
    "inception_v3": Backbone("InceptionV3", "inception_v3", 75),
    "vgg16": Backbone("VGG16", "vgg16", 32),
}
BACKBONE_LAYER = "backbone"
# Width multipliers for which Keras publishes ImageNet weights of MobileNetV2.
MOBILENET_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def build_model(model: Section, transfer: Section, input_shape: tuple[int, int, int],
                num_classes: int) -> keras.Model:
    """The network for ``model.family``; inputs are raw pixels in [0, 255]."""
    inputs = keras.Input(shape=input_shape, name="image")
    if model.family == "transfer":
        x = _transfer_body(inputs, transfer)
    else:
        x = {"cnn": _cnn_body, "mlp": _mlp_body}[model.family](inputs, model)
    if model.dropout:
        x = keras.layers.Dropout(model.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 kernel_regularizer=_l2(model), name="probabilities")(x)
    return keras.Model(inputs, outputs, name=model.family)


def output_layer(model: keras.Model) -> keras.layers.Dense:
    """The softmax Dense layer ``build_model`` ends every network with: temperature scaling
    rescales its weights, Grad-CAM takes the class score before its softmax."""
    output = model.layers[-1]
    if not (isinstance(output, keras.layers.Dense) and
            output.get_config()["activation"] == "softmax"):
        raise ValueError(f"model {model.name} does not end in a Dense softmax layer (its last "
                         f"layer is {output.name}, {type(output).__name__})")
    return output


def _l2(model: Section):
    return keras.regularizers.L2(model.l2) if model.l2 else None


def _rescaled(inputs):
    return keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)


# ----------------------------------------------------------------------------- mlp and cnn

def _mlp_body(inputs, model: Section):
    """The dense baseline: flatten, one hidden layer."""
    x = keras.layers.Flatten(name="flatten")(_rescaled(inputs))
    return keras.layers.Dense(model.dense_units, activation="relu", kernel_regularizer=_l2(model),
                              name="hidden")(x)


def _cnn_body(inputs, model: Section):
    """Conv blocks (two 3x3 convs, plain or residual, then 2x2 max pooling), global average
    pooling or flattening, and a dense layer."""
    x = _rescaled(inputs)
    block = _residual_block if model.residual else _plain_block
    for number, filters in enumerate(model.conv_filters, start=1):
        x = block(x, filters, model, f"block{number}")
        x = keras.layers.MaxPooling2D(name=f"block{number}_pool")(x)
    if model.pooling == "flatten":
        x = keras.layers.Flatten(name="flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.layers.Dense(model.dense_units, activation="relu", kernel_regularizer=_l2(model),
                              name="dense")(x)


def _conv_bn(x, filters: int, model: Section, name: str, kernel: int = 3, relu: bool = True):
    """A convolution, batch normalization when enabled, and ReLU unless the caller adds first."""
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=not model.batch_norm,
                            kernel_regularizer=_l2(model), name=name)(x)
    if model.batch_norm:
        x = keras.layers.BatchNormalization(momentum=model.batch_norm_momentum, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _plain_block(x, filters: int, model: Section, name: str):
    x = _conv_bn(x, filters, model, f"{name}_conv1")
    return _conv_bn(x, filters, model, f"{name}_conv2")


def _residual_block(x, filters: int, model: Section, name: str):
    """Two convs whose output is added to the block's input (projected by a 1x1 conv when the
    filter count changes), as in ResNet: gradients reach early layers through the shortcut."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, model, f"{name}_shortcut", kernel=1, relu=False)
    x = _conv_bn(x, filters, model, f"{name}_conv1")
    x = _conv_bn(x, filters, model, f"{name}_conv2", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


# ----------------------------------------------------------------------------- transfer

@keras.saving.register_keras_serializable(package="imgcls")
class BackbonePreprocessing(keras.layers.Layer):
    """The backbone's own ``preprocess_input`` (e.g. [-1, 1] scaling, or BGR mean subtraction)
    as a layer, so it is saved inside the model and applied identically by ``predict``."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images):
        module = getattr(keras.applications, BACKBONES[self.backbone].module)
        return module.preprocess_input(images)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


def _transfer_body(inputs, transfer: Section):
    """Resize to the backbone's input size, grayscale to RGB, the backbone's preprocessing,
    the backbone and global average pooling. A pretrained backbone starts frozen (the new head
    is trained first, then ``unfreeze_top_layers`` fine-tunes it); with ``transfer.weights:
    none`` there is nothing to protect, so the whole network trains from scratch in one phase."""
    size = backbone_input_size(transfer, inputs.shape[1:3])
    x = inputs
    if tuple(inputs.shape[1:3]) != size:
        x = keras.layers.Resizing(*size, name="resize")(x)
    if inputs.shape[-1] == 1:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = BackbonePreprocessing(transfer.backbone, name="preprocess")(x)
    backbone = _backbone(transfer, (*size, 3))
    if transfer.weights == "none":
        x = backbone(x)
    else:
        backbone.trainable = False
        # training=False keeps BatchNormalization in inference mode even while fine-tuning, so
        # the small new dataset never overwrites the statistics learned on the large one.
        x = backbone(x, training=False)
    return keras.layers.GlobalAveragePooling2D(name="global_pool")(x)


def backbone_input_size(transfer: Section, image_size) -> tuple[int, int]:
    """``transfer.input_size`` (square), or with ``auto`` each image side raised to the
    backbone's minimum."""
    minimum = BACKBONES[transfer.backbone].min_size
    if transfer.input_size == "auto":
        return tuple(max(int(side), minimum) for side in image_size)
    if transfer.input_size < minimum:
        raise ModelConfigError(f"transfer.input_size = {transfer.input_size} is below "
                               f"{transfer.backbone}'s minimum of {minimum}; set at least "
                               f"{minimum}, or auto")
    return (transfer.input_size,) * 2


def _backbone(transfer: Section, input_shape: tuple[int, int, int]) -> keras.Model:
    spec = BACKBONES[transfer.backbone]
    options = {"include_top": False, "input_shape": input_shape, "weights": _weights(transfer)}
    if transfer.backbone == "mobilenet_v2":
        options["alpha"] = transfer.alpha
        if options["weights"] == "imagenet" and transfer.alpha not in MOBILENET_IMAGENET_ALPHAS:
            raise ModelConfigError(
                f"transfer.alpha = {transfer.alpha}: ImageNet weights of mobilenet_v2 exist "
                f"only for {', '.join(map(str, MOBILENET_IMAGENET_ALPHAS))}; pick one of those "
                "or set transfer.weights to none")
    try:
        network = getattr(keras.applications, spec.application)(**options)
    except Exception as error:  # Keras reports a failed download as a bare Exception
        if "URL fetch failure" in str(error):
            raise _offline_error(transfer, error) from None
        raise ModelConfigError(f"transfer.weights = {transfer.weights}: {spec.application} could not "
                               f"load them ({error}); give imagenet, none or a weights file made "
                               f"for {spec.application} without its top layers") from None
    network.name = BACKBONE_LAYER
    return network


def _weights(transfer: Section) -> str | None:
    """``imagenet``, None for ``none``, or the path of an existing weights file."""
    if transfer.weights in ("imagenet", "none"):
        return None if transfer.weights == "none" else "imagenet"
    path = Path(transfer.weights).expanduser().resolve()
    if not path.is_file():
        raise ModelConfigError(f"transfer.weights: file {path} does not exist; give imagenet, none "
                               "or the path of a weights file (.h5)")
    return str(path)


def _offline_error(transfer: Section, error: Exception) -> ModelConfigError:
    url = re.search(r"https?://\S+?\.h5", str(error))
    where = url.group(0) if url else "the Keras applications weights file"
    return ModelConfigError(
        f"transfer.weights = imagenet: could not download the ImageNet weights of {transfer.backbone} "
        f"(this machine seems offline); download {where} on a machine with internet, copy it "
        "here and set transfer.weights to its path, or set transfer.weights to none")


def has_frozen_backbone(model: keras.Model) -> bool:
    """Whether ``model`` is a transfer model whose pretrained backbone awaits fine-tuning."""
    return any(layer.name == BACKBONE_LAYER and not layer.trainable for layer in model.layers)


def unfreeze_top_layers(model: keras.Model, count: int) -> int:
    """Make the top ``count`` backbone layers trainable for fine-tuning, except BatchNormalization
    layers (their statistics stay frozen); returns how many layers became trainable."""
    backbone = model.get_layer(BACKBONE_LAYER)
    backbone.trainable = True
    top = {id(layer) for layer in backbone.layers[-count:]}
    for layer in backbone.layers:
        layer.trainable = (id(layer) in top
                           and not isinstance(layer, keras.layers.BatchNormalization))
    return sum(layer.trainable for layer in backbone.layers)


def count_parameters(model: keras.Model) -> dict[str, int]:
    """Total, trainable and non-trainable parameter counts."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}
