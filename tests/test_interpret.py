"""Heat maps that mean something: on images whose class is a small patch, the map's peak falls
on the patch once the model has learnt it (and does not before)."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from imgcls_utils import cli, model_utils
from imgcls_utils.evaluation import interpret
from tests.conftest import write_image

SIDE = 24
PATCH = 6


def patch_images(count: int, seed: int, spot=None):
    """Grey noise with a PATCH x PATCH square, white for class 1 and black for class 0, at
    ``spot`` (row, column) or anywhere: ``(images, labels, top-left corners)``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(64, 192, (count, SIDE, SIDE, 1)).astype("float32")
    labels = rng.integers(0, 2, count)
    corners = (np.tile(spot, (count, 1)) if spot else
               rng.integers(0, SIDE - PATCH + 1, (count, 2)))
    for image, label, (row, column) in zip(images, labels, corners):
        image[row:row + PATCH, column:column + PATCH] = 255 * label
    return images, labels, corners


def share_of_peaks_on_the_patch(heatmaps: np.ndarray, corners: np.ndarray) -> float:
    peaks = [np.unravel_index(heatmap.argmax(), heatmap.shape) for heatmap in heatmaps]
    return np.mean([row <= peak_row < row + PATCH and column <= peak_column < column + PATCH
                    for (peak_row, peak_column), (row, column) in zip(peaks, corners)])


def trained_model(make_config, family: str, spot=None, epochs: int = 5, **overrides):
    """The project's ``family`` network, small, built and trained as ``imgcls train`` does
    (inside the hardware scope) on patch images (``epochs=0``: untrained)."""
    cfg = make_config(**{"model.family": family, "model.conv_filters": [8, 16],
                         "model.dense_units": 16, "hardware.mixed_precision": "float32",
                         **overrides})
    model_utils.set_seed(0)
    images, labels, _ = patch_images(400, seed=1, spot=spot)
    with model_utils.choose_hardware(cfg.hardware).scope():
        model = model_utils.build_model(cfg.model, cfg.transfer, images.shape[1:], 2)
        model_utils.compile_model(model, cfg.train, steps_per_epoch=13)
    if epochs:
        model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("overrides", [{}, {"model.residual": True},
                                       {"hardware.mixed_precision": "mixed_bfloat16"}],
                         ids=["plain", "residual", "mixed_bfloat16"])
def test_grad_cam_of_a_cnn_peaks_on_the_patch_wherever_it_is(make_config, overrides):
    model = trained_model(make_config, "cnn", **overrides)
    images, labels, corners = patch_images(50, seed=2)
    assert (model.predict(images, verbose=0).argmax(axis=1) == labels).mean() >= 0.9
    heatmaps, method = interpret.explain(model, images)
    assert method == interpret.GRAD_CAM and heatmaps.shape == (50, SIDE, SIDE)
    assert heatmaps.min() >= 0 and heatmaps.max() == pytest.approx(1)
    assert share_of_peaks_on_the_patch(heatmaps, corners) >= 0.8


def test_an_untrained_cnn_does_not_find_the_patch(make_config):
    images, _, corners = patch_images(50, seed=2)
    heatmaps, _ = interpret.explain(trained_model(make_config, "cnn", epochs=0), images)
    assert share_of_peaks_on_the_patch(heatmaps, corners) <= 0.3


def test_the_mlp_gets_a_saliency_map_that_peaks_on_the_patch(make_config):
    model = trained_model(make_config, "mlp", spot=(3, 14))
    images, _, corners = patch_images(50, seed=2, spot=(3, 14))
    heatmaps, method = interpret.explain(model, images)
    assert method == interpret.SALIENCY and heatmaps.shape == (50, SIDE, SIDE)
    assert share_of_peaks_on_the_patch(heatmaps, corners) >= 0.8
    with pytest.raises(ValueError, match="no convolutional feature map"):
        interpret.grad_cam(model, images)


def test_grad_cam_reaches_into_a_transfer_models_nested_backbone(make_config):
    cfg = make_config(**{"model.family": "transfer", "transfer.weights": "none",
                         "transfer.alpha": 0.35, "hardware.mixed_precision": "float32"})
    # mobilenet_v2 divides its input side by 32: 64x64 grey images give 2x2 maps.
    model = model_utils.build_model(cfg.model, cfg.transfer, (64, 64, 1), 2)
    assert tuple(interpret.last_feature_map(model).shape) == (None, 2, 2, 1280)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 1)).astype("float32")
    heatmaps, method = interpret.explain(model, images, class_indices=[0, 1, 1])
    assert method == interpret.GRAD_CAM and heatmaps.shape == (3, 64, 64)
    assert np.isfinite(heatmaps).all() and 0 <= heatmaps.min() and heatmaps.max() <= 1


def test_overlay_is_rgb_and_shows_both_image_and_heat():
    grey = np.full((4, 5, 1), 200, np.uint8)
    heat = np.zeros((4, 5))
    heat[0, 0] = 1
    picture = interpret.overlay(grey, heat)
    assert picture.dtype == np.uint8 and picture.shape == (4, 5, 3)
    assert picture[0, 0, 0] > picture[0, 0, 2]  # hot: red
    assert picture[3, 4, 2] > picture[3, 4, 0]  # cold: blue
    assert picture[3, 4, 1] > 50  # the grey image still shows through


def test_explanation_figures_of_top_losses_and_correct_examples(tmp_path, make_config):
    model = trained_model(make_config, "cnn", epochs=0)
    images, labels, _ = patch_images(4, seed=3)
    paths = [f"{i}.png" for i in range(4)]
    for path, image in zip(paths, images):
        Image.fromarray(image[..., 0].astype(np.uint8)).save(tmp_path / path)
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    truth = np.array([0, 1, 1, 1])
    data = {"image_size": [SIDE, SIDE], "channels": 1}
    explained = model_utils.explain_examples(model, model_utils.top_losses(
        truth, probabilities, paths, ["black", "white"], count=1), tmp_path, data)
    assert explained.titles == ["black 0.60\ntrue white"]
    fig = model_utils.plot_explanations(*explained, title="Top losses")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 1 and shown[0].images[0].get_array().shape == (SIDE, SIDE, 3)
    assert fig._suptitle.get_text() == "Top losses (gradcam)"
    never_right = model_utils.correct_examples(truth, 1 - np.eye(2)[truth], paths,
                                              ["black", "white"])
    empty = model_utils.plot_explanations(*model_utils.explain_examples(model, never_right, tmp_path, data),
                                    title="One correct example per class")
    assert empty._suptitle.get_text() == "One correct example per class (no images)"
    plt.close("all")


@pytest.fixture(scope="module")
def digits_folder(served_model):
    """The session's small digits CNN (two epochs at 16x16): explaining only reads its folder."""
    return served_model[1]


def test_explain_files_writes_one_overlay_per_readable_image(digits_folder, tmp_path):
    first = write_image(tmp_path / "a" / "digit.png", size=(20, 30), mode="L")
    second = write_image(tmp_path / "b" / "digit.png", size=(16, 16))
    broken = tmp_path / "b" / "broken.png"
    broken.write_bytes(b"not a png")
    explanations = interpret.explain_files(digits_folder, [first, tmp_path / "b"],
                                           tmp_path / "out", top_k=2)
    by_path = {explanation.prediction.path: explanation for explanation in explanations}
    assert by_path[broken].overlay is None and "not a readable image" in by_path[broken].prediction.error
    assert by_path[first].overlay.name == "digit.png.gradcam.png"
    assert by_path[second].overlay.name == "digit.png.2.gradcam.png"
    for path in (first, second):
        assert len(by_path[path].prediction.top) == 2
        with Image.open(by_path[path].overlay) as written:
            assert written.mode == "RGB" and written.size == (16, 16)


def imgcls(capsys, *args) -> tuple[int, str, str]:
    """``imgcls *args`` in this process (TensorFlow is loaded already): exit code, out, err."""
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_imgcls_explain_prints_labels_and_the_overlay_written(digits_folder, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = write_image(tmp_path / "digit.png", size=(16, 16), mode="L")
    code, out, err = imgcls(capsys, "explain", str(digits_folder), str(image), "--top-k", "2")
    assert code == 0, err
    line = out.strip()
    assert line.startswith(f"{image}: ") and line.endswith(
        " -> explanations/digit.png.gradcam.png")
    assert len(line.split(": ", 1)[1].split(" -> ")[0].split(", ")) == 2
    assert (tmp_path / "explanations" / "digit.png.gradcam.png").is_file()


def test_imgcls_explain_reports_bad_inputs_in_one_line(digits_folder, tmp_path, capsys):
    code, _, err = imgcls(capsys, "explain", str(tmp_path), str(tmp_path))
    assert code == 2 and err.startswith("imgcls: ") and "not a finished model folder" in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    code, out, err = imgcls(capsys, "explain", str(digits_folder), str(broken),
                            "--out", str(tmp_path / "x"))
    assert code == 3
    assert out.startswith(f"{broken}: cannot be classified: not a readable image")
    assert err == "imgcls: 1 of 1 file(s) could not be classified\n"
