import numpy as np
import pytest
from PIL import Image

from imgcls_utils.data.images import decode_thumbnail
from imgcls_utils.data_utils import load_image
from tests.sample_files import photo


@pytest.mark.parametrize("mode, channels", [("L", 3), ("RGB", 1), ("RGBA", 3), ("P", 3),
                                            ("CMYK", 3), ("I;16", 1), ("LA", 1)])
def test_load_image_converts_any_mode_to_the_configured_shape(tmp_path, mode, channels):
    path = tmp_path / ("image.tiff" if mode == "CMYK" else "image.png")
    Image.new("RGB", (20, 10), (200, 40, 40)).convert(mode).save(path)
    pixels = load_image(path, (16, 24), channels)
    assert pixels.shape == (16, 24, channels) and pixels.dtype == np.uint8


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(path)
    assert load_image(path, (4, 4), 1).max() == 128


def test_transparency_becomes_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_image(path, (4, 4), 3).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    stored = np.zeros((10, 30), np.uint8)
    stored[:, 15:] = 255  # left half black, right half white, as stored
    image = Image.fromarray(stored).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left half ends on top
    image.save(path, exif=exif, quality=95)
    pixels = load_image(path, (30, 10), 1)[..., 0]
    assert pixels[:12].mean() < 30 and pixels[-12:].mean() > 225


def test_large_jpegs_decoded_at_reduced_scale_look_the_same(tmp_path):
    path = tmp_path / "large.jpg"
    photo(1, size=(1200, 900)).save(path, quality=95)
    reduced = load_image(path, (32, 32), 3).astype(int)
    with Image.open(path) as image:
        full = np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), int)
    assert np.abs(reduced - full).mean() < 4


def test_thumbnails_are_small_grayscale_and_fail_on_truncated_files(tmp_path):
    path = tmp_path / "large.jpg"
    photo(2, size=(1200, 900)).save(path)
    with Image.open(path) as image:
        thumbnail = decode_thumbnail(image, 128)
    assert thumbnail.mode == "L" and max(thumbnail.size) == 128
    path.write_bytes(path.read_bytes()[:2000])
    with Image.open(path) as image, pytest.raises(OSError):
        decode_thumbnail(image, 128)
