"""The exported model's graph: encoded image bytes in, class probabilities and names out
(``ServingModule`` writes it, ``ExportedGraph`` loads it back).

The decoding is written in TensorFlow ops so that TensorFlow Serving (which runs no Python) can
serve the model, and it reproduces ``images.load_image``, the decoding used for training, step
by step: JPEGs are decoded at a reduced DCT scale exactly when Pillow's ``draft`` would be,
transparency is composited onto white, grayscale uses Pillow's integer weights, and the resize
is the same antialiased bilinear filter, rounded to uint8. (Not reproduced: EXIF orientation and
transparency in GIFs, which TensorFlow's decoders ignore.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..quiet_tensorflow import keras, tf

SERVING_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "pixels"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
PROBABILITIES = "probabilities"
CLASSES = "classes"
JPEG_SCALES = (8, 4, 2, 1)  # the DCT scales libjpeg (and Pillow's draft) can decode at
# Pillow's ITU-R 601-2 luma transform in 16-bit fixed point: L = (R*19595 + G*38470 + B*7471) >> 16
LUMA_WEIGHTS = (19595, 38470, 7471)


class ServingModule(tf.Module):
    """A Keras model with its preprocessing and class names, ready for ``tf.saved_model.save``:
    ``classify_bytes`` and ``classify_pixels`` are the two serving signatures, ``preprocess``
    the decoding alone (restored by the server to decode each request before batching)."""

    def __init__(self, model: keras.Model, class_names: list[str], image_size: tuple[int, int],
                 channels: int):
        super().__init__()
        self.model = model
        self.class_names = tf.constant(class_names)
        self.image_size = tuple(image_size)
        self.channels = channels
        height, width = self.image_size
        self.preprocess = tf.function(
            self._preprocess, input_signature=[tf.TensorSpec([None], tf.string, IMAGES_INPUT)])
        self.classify_bytes = tf.function(
            self._classify_bytes, input_signature=[tf.TensorSpec([None], tf.string, IMAGES_INPUT)])
        self.classify_pixels = tf.function(
            self._classify_pixels,
            input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32,
                                           PIXELS_INPUT)])

    def _preprocess(self, images):
        """Each encoded image decoded as training decodes it: float32 ``(n, H, W, C)``, 0-255."""
        return tf.map_fn(lambda data: decode_image(data, self.image_size, self.channels),
                         images, fn_output_signature=tf.TensorSpec([*self.image_size,
                                                                    self.channels], tf.float32))

    def _classify_bytes(self, images):
        return self._classify_pixels(self._preprocess(images))

    def _classify_pixels(self, pixels):
        probabilities = tf.cast(self.model(pixels, training=False), tf.float32)
        return {PROBABILITIES: probabilities,
                CLASSES: tf.gather(self.class_names, tf.argmax(probabilities, axis=-1))}


def decode_image(data: tf.Tensor, image_size: tuple[int, int], channels: int) -> tf.Tensor:
    """One encoded PNG, JPEG, GIF or BMP as float32 ``(H, W, channels)`` pixels 0-255."""
    pixels = tf.cond(tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff",
                     lambda: _decode_jpeg(data, channels, max(image_size)),
                     lambda: _decode_other(data, channels))
    return _resized(pixels, image_size)


def _decode_jpeg(data: tf.Tensor, channels: int, min_side: int) -> tf.Tensor:
    """Decoded at the largest DCT scale 1/8, 1/4, 1/2 that keeps both sides >= ``min_side``
    (Pillow's ``draft``), converted to ``channels`` by libjpeg itself, as Pillow does."""
    height_width = tf.io.extract_jpeg_shape(data)[:2]
    fits = tf.maximum(tf.reduce_min(height_width // min_side), 1)
    branch = tf.argmax(tf.constant(JPEG_SCALES, tf.int32) <= fits, output_type=tf.int32)
    decoders = [lambda scale=scale: tf.io.decode_jpeg(
        data, channels=channels, ratio=scale, dct_method="INTEGER_ACCURATE")
                for scale in JPEG_SCALES]
    return tf.cast(tf.switch_case(branch, decoders), tf.int32)


def _decode_other(data: tf.Tensor, channels: int) -> tf.Tensor:
    """PNG (8 or 16 bit), GIF (first frame) or BMP in any channel count, transparency onto
    white, then grayscale or RGB."""
    image = tf.cast(tf.io.decode_image(data, channels=0, expand_animations=False), tf.int32)
    count = tf.shape(image)[-1]
    color = tf.cond(count >= 3, lambda: image[..., :3], lambda: tf.repeat(image[..., :1], 3, -1))
    alpha = tf.cond(count % 2 == 0, lambda: image[..., -1:], lambda: tf.fill(
        tf.shape(image[..., :1]), 255))
    color = _on_white(color, alpha)
    return _luma(color) if channels == 1 else color


def _on_white(color: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """Pillow's ``alpha_composite`` onto opaque white, rounded."""
    return (color * alpha + 255 * (255 - alpha) + 127) // 255


def _luma(color: tf.Tensor) -> tf.Tensor:
    red, green, blue = LUMA_WEIGHTS
    weighted = color[..., 0:1] * red + color[..., 1:2] * green + color[..., 2:3] * blue
    return tf.bitwise.right_shift(weighted + (1 << 15), 16)


def _resized(pixels: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Pillow's bilinear resize (a triangle filter widened when shrinking), rounded to uint8
    values; an image already of that size is left exactly as it is."""
    pixels = tf.cast(pixels, tf.float32)
    same_size = tf.reduce_all(tf.shape(pixels)[:2] == tf.constant(image_size))
    resized = tf.cond(same_size, lambda: pixels, lambda: tf.clip_by_value(tf.round(
        tf.image.resize(pixels, image_size, method="bilinear", antialias=True)), 0, 255))
    return tf.ensure_shape(resized, [*image_size, None])


class ExportedGraph:
    """An export's SavedModel restored, the one place one is loaded (export's parity check,
    ``imgcls predict`` on an export, the server): its decoding alone and its two signatures."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._module = tf.saved_model.load(str(self.folder))

    def decode(self, images: list[bytes]) -> np.ndarray:
        """Encoded images as float32 ``(n, H, W, C)`` pixels, decoded as training decodes them."""
        return self._module.preprocess(tf.constant(images, tf.string)).numpy()

    def classify_images(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """The ``serving_default`` signature: encoded images in, its outputs as arrays."""
        outputs = self._module.signatures[SERVING_SIGNATURE](images=tf.constant(images, tf.string))
        return {name: value.numpy() for name, value in outputs.items()}

    def classify_pixels(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The ``pixels`` signature: decoded float32 pixels in, its outputs as arrays."""
        outputs = self._module.signatures[PIXELS_SIGNATURE](pixels=tf.constant(pixels, tf.float32))
        return {name: value.numpy() for name, value in outputs.items()}
