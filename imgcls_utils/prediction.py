"""Using a trained model: top-k labels for new image files, preprocessed as in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .images import DECODE_ERRORS, IMAGE_EXTENSIONS, is_hidden, load_image
from .runtime import keras


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
                  top_k: int = 3) -> list[tuple[Path, list[tuple[str, float]]]]:
    """Top-k ``(class name, probability)`` per image, preprocessed exactly as in training
    (image size and channels come from the model folder's config, not the current one; any
    further resizing or scaling is part of the model itself)."""
    data = config["data"]
    results = []
    for path in image_files(paths):
        try:
            pixels = load_image(path, tuple(data["image_size"]), data["channels"])
        except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
            raise UserError(f"{path} is not a readable image ({error}); give PNG, JPEG, BMP, "
                            "GIF, WebP or TIFF files") from None
        probabilities = model.predict_on_batch(pixels[None].astype("float32"))[0]
        best = np.argsort(probabilities)[::-1][:top_k]
        results.append((path, [(class_names[i], float(probabilities[i])) for i in best]))
    return results
