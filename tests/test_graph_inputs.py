"""Exports take every image training takes: the images the exported graph alone decodes otherwise
than training (CMYK JPEGs at 1 channel, EXIF-rotated photos, GIFs with transparency) through the
Model_Training notebook (what `imgcls run` runs last; it exports), `imgcls predict` on the export
and the server, each answered as training reads it."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from imgcls_utils import data_utils
from imgcls_utils.serving.export import find_version
from imgcls_utils.serving.graph import ExportedGraph
from imgcls_utils.serving.graph_inputs import (NOT_REPRODUCED, decode_as_training,
                                               file_not_reproduced, graph_input_problem,
                                               not_reproduced_inputs)
from imgcls_utils.serving.prediction import predict
from tests.conftest import REPO_ROOT
from tests.live_server import live_server
from tests.sample_files import photo
from tests.test_preprocessing_parity import write_every_mode

# The files of the held-out check, and the NOT_REPRODUCED case each is.
UNUSUAL = {"a/print.jpg": "cmyk_jpeg", "b/rotated.jpg": "exif_orientation",
           "c/transparent.gif": "gif_transparency"}
COLORS = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200)}


def write_unusual(path: Path, case: str, seed: int) -> None:
    picture = photo(seed, (64, 48))
    if case == "cmyk_jpeg":
        picture.convert("CMYK").save(path, quality=90)
    elif case == "exif_orientation":
        exif = picture.getexif()
        exif[0x0112] = 6  # "rotate 90 degrees to display"
        picture.save(path, "JPEG", exif=exif, quality=90)
    else:
        palette = picture.convert("P")
        palette.save(path, transparency=int(np.asarray(palette)[0, 0]))


def photos_source(root: Path) -> Path:
    """train/ and test/ of three classes of tinted photos; the unusual files in test/."""
    for part, count in (("train", 14), ("test", 3)):
        for index, (name, tint) in enumerate(COLORS.items()):
            for number in range(count):
                picture = Image.blend(photo(100 * index + number + (50 if part == "test" else 0),
                                            (64, 48)), Image.new("RGB", (64, 48), tint), 0.6)
                (root / part / name).mkdir(parents=True, exist_ok=True)
                picture.save(root / part / name / f"{number}.png")
    for number, (name, case) in enumerate(UNUSUAL.items()):
        write_unusual(root / "test" / name, case, 900 + number)
    return root


def test_decode_as_training_gives_trainings_pixels_for_every_mode(served_model, tmp_path):
    """Every mode and format the parity test writes, the graph's exceptions included, decodes
    to training's pixels (within rounding) by the path the server and predict take."""
    _, _, version_folder = served_model
    version = find_version(version_folder)
    graph = ExportedGraph(version.folder)
    paths = [path for path in write_every_mode(tmp_path / "modes", 7)
             if not graph_input_problem(path, 10**8)]  # TIFF: not a format the API takes
    decoded = decode_as_training([path.read_bytes() for path in paths], graph.decode,
                                 version.info)
    size, channels = tuple(version.info["image_size"]), version.info["channels"]
    for path, pixels in zip(paths, decoded):
        training = data_utils.load_image(path, size, channels).astype(np.float32)
        assert np.abs(pixels - training).max() <= 1, path.name
    assert version.info["graph_does_not_reproduce"] == not_reproduced_inputs(1) == NOT_REPRODUCED
    assert "cmyk_jpeg" not in not_reproduced_inputs(3)  # libjpeg converts CMYK to RGB


def test_unusual_images_through_the_notebook_predict_and_serve(project, tmp_path):
    """The Model_Training notebook, run by papermill with its export on (the export cell is
    where a CMYK test image used to fail the run), then the export on the unusual files."""
    source = photos_source(tmp_path / "photos")
    config = project / "config" / "Hyperparameters.yaml"
    overrides = {"data.source": str(source), "data.test_split": "source", "train.epochs": 1,
                 "train.min_steps_per_epoch": 1,
                 "data.image_size": [16, 16], "data.channels": 1, "train.classical_baselines": False}
    run = subprocess.run([sys.executable, "-m", "papermill", "--cwd", str(project), "--kernel",
                          "imgcls", str(REPO_ROOT / "notebooks" / "Model_Training.ipynb"),
                          str(tmp_path / "executed.ipynb"), "-p", "config_path", str(config),
                          "-p", "export", "True", "-y", yaml.safe_dump({"overrides": overrides}),
                          "-p", "model_dir", str(project / "Trained_Models" / "photos")],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    folder = project / "Trained_Models" / "photos"
    export = project / "exports" / "photos_cnn"
    version = find_version(export)
    left_out = version.report["parity"]["not_reproduced_by_graph"]
    assert left_out == {"count": 3, "files": {f"test/{name}": case
                                              for name, case in UNUSUAL.items()}}
    assert version.report["parity"]["images"] == 9  # the other test images, compared
    assert set(json.loads((version.folder / "assets.extra" / "imgcls.json").read_text())[
        "graph_does_not_reproduce"]) == set(UNUSUAL.values())

    files = [source / "test" / name for name in UNUSUAL]
    by_folder, by_export = predict(folder, files), predict(export, files)  # imgcls predict's
    assert [p.error for p in by_export] == ["", "", ""]
    assert [labels(p) for p in by_export] == [labels(p) for p in by_folder]
    assert np.allclose([[score for _, score in p.top] for p in by_export],
                       [[score for _, score in p.top] for p in by_folder], atol=0.02)

    with live_server(export, config, tmp_path / "serve.log") as server:
        served = [httpx.post(f"{server.url}/predict", files={"file": (path.name,
                                                                      path.read_bytes())})
                  for path in files]
    assert [answer.status_code for answer in served] == [200, 200, 200]
    assert [[row["label"] for row in answer.json()["predictions"]] for answer in served] == \
        [labels(p) for p in by_folder]


def labels(prediction) -> list[str]:
    return [label for label, _ in prediction.top]


@pytest.mark.parametrize("name, case", sorted(UNUSUAL.items()))
def test_the_header_names_each_case_the_graph_does_not_reproduce(tmp_path, name, case):
    path = tmp_path / Path(name).name
    write_unusual(path, case, 5)
    assert file_not_reproduced(path, channels=1) == case
    plain = tmp_path / f"plain{path.suffix}"
    photo(5, (64, 48)).save(plain)
    assert file_not_reproduced(plain, channels=1) == ""
