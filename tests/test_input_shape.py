import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgcls_utils import data_utils
from imgcls_utils.data import input_shape
from tests.conftest import write_image


def sizes(*pairs) -> pd.DataFrame:
    return pd.DataFrame([{"height": height, "width": width} for height, width in pairs])


@pytest.mark.parametrize("images, chosen", [
    ([(8, 8)] * 5, (16, 16)),                      # the digits: enlarged to the smallest side
    ([(28, 28)] * 3 + [(8, 8)], (28, 28)),         # the median, not the smallest
    ([(48, 48)] * 3, (48, 48)),                    # icons: as they are
    ([(480, 640), (600, 800), (300, 400)], (48, 64)),  # photos: shrunk, aspect ratio kept
    ([(10, 600)], (16, 64)),                       # both bounds: each side clamped
])
def test_the_size_is_the_median_within_the_bounds(images, chosen):
    assert input_shape.choose_image_size(sizes(*images)) == chosen


def write_picture(path, colour: bool, mode="RGB", number=0):
    """A 24x24 picture: a red or gray disc on white, placed by ``number`` (each distinct)."""
    yy, xx = np.mgrid[:24, :24]
    disc = (yy - 4 - number % 16) ** 2 + (xx - 4 - number // 16 * 4) ** 2 < 16
    pixels = np.full((24, 24, 4), 255, np.uint8)
    pixels[disc] = (200, 30, 30, 255) if colour else (90, 90, 90, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels, "RGBA")
    (image if mode == "RGBA" else image.convert(mode)).save(path)
    return path


def scanned(folder) -> pd.DataFrame:
    return data_utils.scan_image_folder(folder).images


@pytest.mark.parametrize("colourful, mode, expected", [
    (0, "RGB", False),    # gray pictures saved as RGB stay gray
    (0, "L", False),
    (1, "RGB", False),    # one picture of 20 in colour: under 10%
    (4, "RGB", True),
    (20, "RGBA", True),   # colour icons with transparency
])
def test_channels_follow_the_colour_of_the_pictures(tmp_path, colourful, mode, expected):
    for i in range(20):
        write_picture(tmp_path / "pics" / f"c{i % 2}" / f"{i:02d}.png", colour=i < colourful,
                      mode=mode if i >= colourful else ("RGBA" if mode == "RGBA" else "RGB"),
                      number=i)
    assert len(scanned(tmp_path / "pics")) == 20
    assert input_shape.has_colour(tmp_path / "pics", scanned(tmp_path / "pics")) is expected


def test_processing_resolves_auto_and_the_run_config_records_it(tmp_path, make_config):
    for i in range(12):
        write_picture(tmp_path / "icons" / f"c{i % 2}" / f"{i:02d}.png", colour=True,
                      mode="RGBA", number=i)
        write_image(tmp_path / "icons" / f"c{i % 2}" / f"big{i:02d}.png", size=(40, 30), seed=i)
    cfg = make_config(**{"data.source": str(tmp_path / "icons")})
    assert (cfg.data.image_size, cfg.data.channels) == ("auto", "auto")
    processed = data_utils.process_data(cfg)
    assert processed.input_shape == (27, 32, 3)  # median 27 x 32 of 24x24 and 30x40 pictures
    assert processed.folder.name.startswith("icons-27x32x3-")
    assert data_utils.current_variant(cfg) == processed.folder
    explicit = data_utils.process_data(make_config(**{
        "data.source": str(tmp_path / "icons"), "data.image_size": [27, 32], "data.channels": 3}))
    assert explicit.folder == processed.folder and explicit.reused
