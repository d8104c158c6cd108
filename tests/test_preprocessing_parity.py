"""One preprocessing definition serves training and prediction: an image gives the same pixels in
the Processed_Data shards the model trains on and in what ``predict_files`` feeds the model, and
a saved model folder predicts what the model that was trained did."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgcls_utils import data_utils, model_utils
from tests.sample_files import photo
from tests.test_model_utils import RUN

SIZE = (120, 90)   # width, height of the large pictures: larger than the target both ways
SMALL = (20, 14)   # smaller than the target both ways (upsampled)
TARGET = [24, 40]  # data.image_size: [height, width], not square


def _rgba(seed: int, size) -> Image.Image:
    """A picture with real transparency: an alpha ramp, and a fully transparent corner."""
    image = photo(seed, size).convert("RGBA")
    width, height = size
    alpha = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    alpha[: height // 3, : width // 3] = 0
    image.putalpha(Image.fromarray(alpha, "L"))
    return image


def _save_palette_with_transparency(seed: int, size, path: Path) -> None:
    image = photo(seed, size).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.save(path, transparency=int(np.asarray(image)[0, 0]))  # top-left colour: see-through


def _sixteen_bit(seed: int, size, top: int = 65535) -> Image.Image:
    """A 16-bit grayscale picture whose values span 0..``top`` (8-bit would lose its detail)."""
    width, height = size
    ramp = np.linspace(0, top, width * height).reshape(height, width)
    shapes = np.asarray(photo(seed, size, "L"), np.float64) * top / 255
    pixels = np.rint(0.75 * shapes + 0.25 * ramp).astype(np.uint16)  # detail in the low bits
    pixels[0, 0], pixels[-1, -1] = 0, top
    image = Image.fromarray(pixels)
    assert image.mode == "I;16"
    return image


def _rotated_jpeg(seed: int, size, path: Path) -> None:
    image = photo(seed, size)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    image.save(path, "JPEG", exif=exif)


def write_every_mode(folder: Path, seed: int) -> list[Path]:
    """One picture of each mode and format the library converts, large and small."""
    writers = {
        "gray.png": lambda p, s: photo(s, SIZE, "L").save(p),
        "rgb_large.png": lambda p, s: photo(s, SIZE).save(p),
        "rgb_small.png": lambda p, s: photo(s, SMALL).save(p),
        # 3x the target: JPEGs this size decode at reduced scale (libjpeg's DCT scaling).
        "rgb_large.jpg": lambda p, s: photo(s, (160, 96)).save(p, quality=90),
        "rgb_small.jpg": lambda p, s: photo(s, SMALL).save(p, quality=90),
        "rgba.png": lambda p, s: _rgba(s, SIZE).save(p),
        "rgba_small.png": lambda p, s: _rgba(s, SMALL).save(p),
        "palette.gif": lambda p, s: photo(s, SIZE, "P").save(p),
        "palette_transparent.png": lambda p, s: _save_palette_with_transparency(s, SIZE, p),
        "palette_transparent.gif": lambda p, s: _save_palette_with_transparency(s, SMALL, p),
        "cmyk.jpg": lambda p, s: photo(s, (160, 96), "CMYK").save(p, quality=90),
        "sixteen_bit.png": lambda p, s: _sixteen_bit(s, SIZE).save(p),
        "sixteen_bit_half.tif": lambda p, s: _sixteen_bit(s, SMALL, 32767).save(p),
        "gray_alpha.png": lambda p, s: _rgba(s, SIZE).convert("LA").save(p),
        "rotated.jpg": lambda p, s: _rotated_jpeg(s, SIZE, p),
    }
    folder.mkdir(parents=True)
    for offset, (name, write) in enumerate(writers.items()):
        write(folder / name, seed + offset)
    return sorted(folder / name for name in writers)


@pytest.fixture
def every_mode(tmp_path) -> Path:
    """Two classes, each holding every mode (different pictures)."""
    root = tmp_path / "modes"
    written = write_every_mode(root / "a", 1000) + write_every_mode(root / "b", 2000)
    with Image.open(root / "a" / "sixteen_bit.png") as image:  # what the test is about
        assert image.mode == "I;16" and np.asarray(image).max() == 65535
    with Image.open(root / "a" / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
    with Image.open(root / "a" / "palette_transparent.png") as image:
        assert image.mode == "P" and "transparency" in image.info
    with Image.open(root / "a" / "rgba.png") as image:
        assert image.mode == "RGBA" and image.getextrema()[3] == (0, 255)
    assert len(written) == 30
    return root


def shard_pixels(processed) -> dict[str, np.ndarray]:
    """Every image's pixels as training reads them from the shards (float32, as batched), by
    path: split by split, each in its shards' order."""
    pixels = {}
    for split in data_utils.SPLITS:
        assert processed.count(split) > 0  # every split holds some of the modes
        batches = [images.numpy() for images, _ in data_utils.make_dataset(
            processed, split, batch_size=8, cache=False)]
        pixels.update(zip(processed.paths(split), np.concatenate(batches)))
    return pixels


class RecordingModel:
    """Stands in for a model: keeps every batch ``predict_files`` feeds it."""

    def __init__(self, classes: int):
        self.classes, self.batches = classes, []

    def predict_on_batch(self, batch):
        self.batches.append(np.array(batch, copy=True))
        return np.full((len(batch), self.classes), 1 / self.classes, np.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_prediction_feeds_the_model_the_pixels_it_was_trained_on(make_config, every_mode,
                                                                 channels):
    cfg = make_config(**{"data.source": str(every_mode), "data.image_size": TARGET,
                         "data.channels": channels})
    processed = data_utils.process_data(cfg)
    trained = shard_pixels(processed)
    assert sorted(trained) == sorted(p.relative_to(every_mode).as_posix()
                                     for p in every_mode.rglob("*.*"))  # none left out
    # Not trivially equal: every picture gave its own, non-blank pixels.
    assert len({pixels.tobytes() for pixels in trained.values()}) == 30
    assert all(pixels.shape == (*TARGET, channels) and pixels.std() > 0
               for pixels in trained.values())

    # As ``imgcls predict`` gets it: the config saved in the model folder, read back from YAML.
    saved_config = yaml.safe_load(cfg.to_yaml())
    model = RecordingModel(len(processed.class_names))
    files = [processed.image_folder / path for path in trained]
    predictions = model_utils.predict_files(model, processed.class_names, saved_config, files,
                                            batch_size=4)
    assert [(p.path, p.error) for p in predictions] == [(file, "") for file in files]
    fed = np.concatenate(model.batches)
    assert fed.dtype == np.float32 and len(fed) == 30
    for (path, pixels), predicted_from in zip(trained.items(), fed):
        np.testing.assert_array_equal(predicted_from, pixels, err_msg=path)
        np.testing.assert_array_equal(  # the one definition, as the facade exports it
            data_utils.load_image(processed.image_folder / path, tuple(TARGET), channels),
            pixels.astype(np.uint8), err_msg=path)


def test_transparency_and_sixteen_bit_are_converted_as_documented(make_config, every_mode):
    """What the shards hold (and so, by the test above, what prediction sees): transparency
    composited onto white, 16-bit scaled by 65535, not clipped, nor stretched by each image's
    own maximum."""
    cfg = make_config(**{"data.source": str(every_mode), "data.image_size": TARGET,
                         "data.channels": 3})
    pixels = shard_pixels(data_utils.process_data(cfg))
    height, width = TARGET
    corner = pixels["a/rgba.png"][: height // 3 - 2, : width // 3 - 2]
    assert corner.min() == 255  # fully transparent: white
    for name in ("a/sixteen_bit.png", "a/sixteen_bit_half.tif"):  # 0..65535 onto 0..255
        with Image.open(every_mode / name) as image:
            eight_bit = np.rint(np.asarray(image, np.float64) * 255 / 65535).astype(np.uint8)
        expected = Image.fromarray(eight_bit).convert("RGB").resize(
            (width, height), Image.Resampling.BILINEAR)
        assert np.abs(pixels[name] - np.asarray(expected, np.float32)).mean() <= 1, name
    assert pixels["a/sixteen_bit_half.tif"].max() <= 128  # half the range: not stretched


def layer_precisions(model) -> dict[str, str]:
    return {layer.name: layer.dtype_policy.name for layer in model.layers
            if type(layer).__name__ != "InputLayer"}


def trained_run(make_config, class_folder, **overrides):
    """A TrainingRun of one epoch, trained, evaluated and saved."""
    cfg = make_config(**{**RUN, "train.epochs": 1, "train.classical_baselines": False,
                         "data.source": str(class_folder), **overrides})
    run = model_utils.TrainingRun(cfg)
    run.process_data()
    run.build_and_compile()
    run.fit()
    run.evaluate()
    run.save()
    return run


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_a_loaded_model_folder_predicts_what_the_trained_model_did(make_config, class_folder,
                                                                  precision):
    run = trained_run(make_config, class_folder, **{"hardware.mixed_precision": precision})
    expected = run.evaluation.calibrated_probabilities  # the folder applies its temperature
    test_paths = run.processed.paths("test")
    assert expected.shape == (len(test_paths), 3) and len(test_paths) >= 3
    model, class_names, config = model_utils.load_model_folder(run.model_folder)
    assert class_names == run.processed.class_names
    # Each layer computes in the precision it was trained in (mixed_bfloat16 on CPUs with native
    # bfloat16); the input layer's and the model's own policy are not saved, and do not matter.
    assert layer_precisions(model) == layer_precisions(run.model)
    assert run.hardware.precision in set(layer_precisions(model).values())

    test_split = data_utils.make_dataset(run.processed, "test", run.cfg.train.batch_size)
    loaded = model.predict(test_split, verbose=0)
    np.testing.assert_allclose(loaded, expected, rtol=0, atol=1e-6)

    predictions = model_utils.predict_files(model, class_names, config,
                                            [run.processed.image_folder / p for p in test_paths],
                                            top_k=len(class_names))
    assert [p.error for p in predictions] == [""] * len(test_paths)
    by_file = np.array([[dict(p.top)[name] for name in class_names] for p in predictions])
    np.testing.assert_allclose(by_file, expected, rtol=0, atol=1e-6)
    # Batches of another size than model.predict's: the top label is a most probable class of
    # ``expected`` to within the same 1e-6 (an exact argmax could flip on a near-tie).
    top = [class_names.index(p.top[0][0]) for p in predictions]
    assert (expected[np.arange(len(top)), top] >= expected.max(axis=1) - 1e-6).all()
