import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from imgcls_utils import data_utils, model_utils
from imgcls_utils.data_utils import scan_image_folder
from imgcls_utils.evaluation import plots
from tests.sample_files import write_copy, write_photo


def test_duplicate_groups_are_shown_side_by_side_one_row_per_group(tmp_path, make_config):
    folder = tmp_path / "images"
    for c, label in enumerate(("cat", "dog")):
        for i in range(3):
            write_photo(folder / label / f"{i}.png", seed=10 * c + i)
    write_copy(folder / "cat" / "0.png", folder / "dog" / "copy_of_cat.jpg", scale=1.5)
    write_copy(folder / "cat" / "1.png", folder / "cat" / "1_small.jpg", scale=0.7)
    scan = scan_image_folder(folder, make_config().data)
    fig = data_utils.plot_duplicate_groups(scan.duplicates, scan.folder)
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4 and fig.axes[0].get_subplotspec().get_geometry()[:2] == (2, 2)
    conflict_titles = [ax.get_title() for ax in shown if ax.title.get_color() == "red"]
    assert conflict_titles == ["cat\n0.png", "dog\ncopy_of_cat.jpg"]
    plt.close("all")


def test_no_duplicates_is_a_figure_that_says_so(class_folder):
    scan = scan_image_folder(class_folder)
    fig = data_utils.plot_duplicate_groups(scan.duplicates, scan.folder)
    assert fig.axes[0].texts[0].get_text() == "no duplicates found"
    plt.close("all")


def test_top_losses_are_shown_with_predicted_and_true_class(class_folder):
    probabilities = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4]])
    losses = model_utils.top_losses(np.array([0, 0, 2]), probabilities,
                                   ["cat/0.png", "cat/1.png", "fox/2.png"], ["cat", "dog", "fox"], 2)
    fig = model_utils.plot_top_losses(losses, class_folder, (8, 8), 3, columns=4)
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["dog 0.70\ntrue cat 0.10", "fox 0.40\ntrue fox 0.40"]
    assert shown[0].images[0].get_array().shape == (8, 8, 3)
    plt.close("all")


def test_training_curves_have_whole_epochs_and_mark_the_best_one():
    import pandas as pd

    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9],
                            "val_accuracy": [0.4, 0.6, 0.7, 0.65, 0.6],
                            "loss": [1.0, 0.8, 0.6, 0.5, 0.4], "val_loss": [1.2, 0.9, 0.7, 0.8, 0.7]})
    fig = model_utils.plot_training_curves(history)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [3]
        assert "best epoch (3)" in [text.get_text() for text in ax.get_legend().get_texts()]
    plt.close("all")


def test_sweep_accuracy_has_one_line_per_other_setting_with_seed_error_bars():
    import pandas as pd

    results = pd.DataFrame({"model.family": ["mlp", "mlp", "cnn", "cnn", "cnn"],
                            "train.learning_rate": [0.1, 0.1, 0.1, 0.1, 0.2],
                            "test_accuracy": [0.8, 0.9, 0.95, 0.97, 0.5],
                            "status": ["ok", "ok", "ok", "ok", "failed"]})
    fig = plots.plot_sweep_accuracy(results, ["model.family", "train.learning_rate"])
    by_family, by_rate = fig.axes
    assert [t.get_text() for t in by_family.get_legend().get_texts()] == ["learning_rate=0.1"]
    line = by_family.lines[0]
    assert list(line.get_xdata()) == ["mlp", "cnn"]
    assert np.allclose(line.get_ydata(), [0.85, 0.96])
    assert len(by_rate.get_legend().get_texts()) == 2  # the failed run is not plotted
    plt.close("all")


def test_runs_side_by_side_put_curves_above_confusion_matrices():
    import pandas as pd

    history = pd.DataFrame({"epoch": [1, 2], "accuracy": [0.5, 0.8], "val_accuracy": [0.6, 0.7],
                            "loss": [1.0, 0.5], "val_loss": [0.9, 0.8]})
    metrics = {"confusion_matrix": [[3, 1], [0, 4]], "class_names": ["a", "b"]}
    fig = plots.plot_runs_side_by_side({"best": (history, metrics), "next": (history, metrics)})
    assert [ax.get_title() for ax in fig.axes] == ["best", "next", "Confusion matrix (test split)",
                                                   "Confusion matrix (test split)"]
    plt.close("all")


def test_reliability_diagram_shows_bins_before_and_after_with_their_ece():
    from imgcls_utils.evaluation import calibration
    y_true = np.array([0, 0, 1, 1])
    sharp = np.array([[0.99, 0.01], [0.99, 0.01], [0.99, 0.01], [0.02, 0.98]])
    before = model_utils.reliability_bins(y_true, sharp)
    after = model_utils.reliability_bins(y_true, calibration.apply_temperature(sharp, 3.0))
    fig = model_utils.plot_reliability_diagram(before, after.to_dict("records"))
    ax = fig.axes[0]
    assert [len(bars) for bars in ax.containers] == [len(before), len(after)]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["calibrated",
                      f"before (ECE {calibration.ece_of_bins(before):.3f})",
                      f"after temperature scaling (ECE {calibration.ece_of_bins(after):.3f})"]
    plt.close("all")


def test_drift_reference_shows_class_shares_and_the_deciles():
    from imgcls_utils.serving.drift import drift_reference

    rng = np.random.default_rng(0)
    reference = drift_reference(rng.dirichlet(np.ones(3), 200), rng.uniform(0, 255, (200, 4, 4, 1)))
    fig = model_utils.plot_drift_reference(reference, ["cat", "dog", "fox"])
    classes, confidence, brightness = fig.axes
    assert [bar.get_height() for bar in classes.patches] == reference["class"]
    for ax, name in ((confidence, "confidence"), (brightness, "brightness")):
        deciles, edges = ax.lines[0].get_data()
        assert list(edges) == reference[name]["edges"]
        np.testing.assert_allclose(deciles, np.arange(10, 100, 10))
    assert "200 validation images" in fig._suptitle.get_text()
    plt.close(fig)
