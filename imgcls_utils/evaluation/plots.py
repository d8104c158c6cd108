"""Figures: one function per figure, each returning a matplotlib Figure for notebooks to show;
and ``overlay``, the heat map over an image that the explanation figures and ``imgcls explain``
draw (numpy and a colormap: no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..data.images import load_image

OVERLAY_OPACITY = 0.45


def plot_class_counts(counts: pd.DataFrame) -> Figure:
    """Bar chart of images per class (``counts`` from ``data_utils.class_counts``)."""
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(counts) + 2), 3.5))
    ax.bar(counts.index.astype(str), counts["images"], color="#4C72B0")
    ax.set(xlabel="class", ylabel="images", title="Images per class")
    ax.bar_label(ax.containers[0], fontsize=8)
    fig.tight_layout()
    return fig


def plot_image_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str],
                    columns: int, title: str = "") -> Figure:
    """Images in a grid, each titled with its class name."""
    return _grid(images, [class_names[label] for label in labels], columns, title, (1.2, 1.3))


def plot_top_losses(losses: pd.DataFrame, folder: Path, image_size, channels: int,
                    columns: int = 6) -> Figure:
    """The images the model got most wrong (``metrics.top_losses``), each titled with the
    predicted and true class and the probabilities given to them."""
    images = [load_image(Path(folder) / path, tuple(image_size), channels) for path in losses["path"]]
    titles = [f"{row.predicted} {row.p_predicted:.2f}\ntrue {row.true} {row.p_true:.2f}"
              for row in losses.itertuples()]
    return _grid(images, titles, columns, "Top losses: predicted (p) / true (p)", (1.6, 2.0))


def _grid(images, titles: list[str], columns: int, title: str, cell: tuple[float, float]) -> Figure:
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(cell[0] * columns, cell[1] * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles):
        _show_image(ax, image)
        ax.set_title(text, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_duplicate_groups(duplicates: pd.DataFrame, folder: Path, max_groups: int = 6,
                          max_copies: int = 6) -> Figure:
    """Each duplicate group (a ``ScanResult``'s ``duplicates``) as a row of its images side by side, titled
    with label and file name; groups whose labels conflict are titled in red."""
    groups = [rows.head(max_copies) for _, rows in duplicates.groupby("group")][:max_groups]
    if not groups:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no duplicates found", ha="center", va="center")
        ax.axis("off")
        return fig
    columns = max(len(rows) for rows in groups)
    fig, axes = plt.subplots(len(groups), columns, figsize=(1.7 * columns, 1.9 * len(groups)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax_row, rows in zip(axes, groups):
        for ax, row in zip(ax_row, rows.itertuples()):
            _show_image(ax, load_image(Path(folder) / row.path, (64, 64), 3))
            ax.set_title(f"{row.label}\n{Path(row.path).name}", fontsize=7,
                         color="red" if row.conflict else "black")
    fig.suptitle("Duplicate groups (one per row; red: conflicting labels, excluded)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_augmentation_preview(image: np.ndarray, augmentation, count: int = 8) -> Figure:
    """The same image under ``count`` random draws of ``augmentation`` (first panel: the
    original), titled with its transforms; with no augmentation, the image as training sees it."""
    batch = np.repeat(image[None].astype("float32"), count, axis=0)
    augmented = np.asarray(augmentation(batch, training=True)) if augmentation else batch
    fig, axes = plt.subplots(1, count + 1, figsize=(1.3 * (count + 1), 1.6))
    for ax, picture, name in zip(axes, [image, *augmented],
                                 ["original", *[f"#{i + 1}" for i in range(count)]]):
        _show_image(ax, picture)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    steps = [layer.name for layer in augmentation.layers] if augmentation else ["disabled"]
    fig.suptitle(f"Augmentation: {', '.join(steps)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curves(history: pd.DataFrame) -> Figure:
    """Accuracy and loss per epoch for training and validation, with the best epoch (lowest
    validation loss, whose weights the model keeps) marked."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        _draw_curves(ax, history, metric, metric.capitalize())
    fig.tight_layout()
    return fig


def _draw_curves(ax, history: pd.DataFrame, metric: str, title: str) -> None:
    best = history.loc[history["val_loss"].idxmin(), "epoch"]
    ax.plot(history["epoch"], history[metric], marker=".", label="train")
    ax.plot(history["epoch"], history[f"val_{metric}"], marker=".", label="validation")
    ax.axvline(best, color="gray", linestyle="--", linewidth=1, label=f"best epoch ({best})")
    ax.set(xlabel="epoch", ylabel=metric, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str]) -> Figure:
    """Heatmap of the confusion matrix: rows are true classes, columns predicted classes."""
    size = max(4, 0.55 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    _draw_confusion_matrix(ax, matrix, class_names, "Confusion matrix (test split)")
    fig.tight_layout()
    return fig


def _draw_confusion_matrix(ax, matrix, class_names: list[str], title: str) -> None:
    sns.heatmap(np.asarray(matrix), annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=class_names, yticklabels=class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def plot_runs_side_by_side(runs: dict[str, tuple[pd.DataFrame, dict]]) -> Figure:
    """Training curves (accuracy) above the test confusion matrix, one column per run:
    ``runs`` maps a label to the run's history and metrics."""
    fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 9), squeeze=False)
    for column, (label, (history, metrics)) in enumerate(runs.items()):
        _draw_curves(axes[0, column], history, "accuracy", label)
        _draw_confusion_matrix(axes[1, column], metrics["confusion_matrix"],
                               metrics["class_names"], "Confusion matrix (test split)")
    fig.tight_layout()
    return fig


def plot_sweep_accuracy(results: pd.DataFrame, keys: list[str],
                        metric: str = "test_accuracy") -> Figure:
    """``metric`` against each swept key: one line per combination of the other keys, the
    mean over seeds with their standard deviation as error bars."""
    finished = results[results["status"] == "ok"].astype({key: str for key in keys})
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.5),
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        others = [k for k in keys if k != key]
        groups = finished.groupby(others, sort=False) if others else [((), finished)]
        for values, group in groups:
            stats = group.groupby(key, sort=False)[metric].agg(["mean", "std"]).fillna(0)
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in
                              zip(others, values if isinstance(values, tuple) else (values,)))
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=4,
                        label=label or None)
        ax.set(xlabel=key, ylabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} "
               f"by {key.split('.')[-1]}")
        if others:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _show_image(ax, image: np.ndarray) -> None:
    image = np.clip(np.asarray(image), 0, 255).astype("uint8")
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)


def plot_explanations(images, heatmaps, titles: list[str], method: str = "",
                      title: str = "Where the model looked", columns: int = 6) -> Figure:
    """Heat maps over their images in a grid (``interpret.explain_examples`` gives all four
    arguments in order), the method named in the figure's title."""
    shown = method if len(images) else "no images"
    return _grid([overlay(image, heatmap) for image, heatmap in zip(images, heatmaps)], titles,
                 columns, f"{title} ({shown})" if shown else title, (1.6, 2.0))


def plot_cross_validation(folds: pd.DataFrame, ensemble_test_accuracy: float) -> Figure:
    """Validation and test accuracy of each fold's model (``crossval``), the validation mean
    ± one standard deviation as a band, and the k models' averaged test accuracy as a line."""
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(folds) + 2), 3.5))
    x, width = np.arange(len(folds)), 0.38
    ax.bar(x - width / 2, folds["val_accuracy"], width, label="validation fold", color="#4C72B0")
    ax.bar(x + width / 2, folds["test_accuracy"], width, label="test split", color="#DD8452")
    mean, std = folds["val_accuracy"].mean(), folds["val_accuracy"].std()
    ax.axhspan(mean - std, mean + std, color="#4C72B0", alpha=0.15,
               label=f"validation {mean:.4f} ± {std:.4f}")
    ax.axhline(ensemble_test_accuracy, color="#C44E52", linestyle="--",
               label=f"{len(folds)} models averaged, test {ensemble_test_accuracy:.4f}")
    low = min(folds[["val_accuracy", "test_accuracy"]].min().min(), ensemble_test_accuracy)
    ax.set(xticks=x, xticklabels=[f"fold {fold}" for fold in folds["fold"]], ylabel="accuracy",
           ylim=(max(0.0, low - 0.05), 1.0), title="Cross-validation")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    return fig


def plot_reliability_diagram(before, after=None) -> Figure:
    """Accuracy against confidence per bin (``calibration.reliability_bins``, or the records in
    calibration.json) before and after temperature scaling, with the diagonal a calibrated model
    follows and each ECE in the legend: bars below the diagonal mean over-confidence."""
    from .calibration import ece_of_bins

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
    shown = [(pd.DataFrame(bins), name, color) for bins, name, color in (
        (before, "before", "#DD8452"), (after, "after temperature scaling", "#4C72B0"))
        if bins is not None]
    for place, (bins, name, color) in enumerate(shown):  # side by side within each bin
        width = (bins["upper"] - bins["lower"]) / len(shown)
        ax.bar(bins["lower"] + place * width, bins["accuracy"], width=width, align="edge",
               color=color, edgecolor="white", label=f"{name} (ECE {ece_of_bins(bins):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
           title="Reliability diagram (test split)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_drift_reference(reference: dict, class_names: list[str]) -> Figure:
    """The distributions an export records for the server's drift score (``reference`` in its
    imgcls.json): the share of each predicted class, and the deciles of the top-1 confidence and
    of the mean brightness (the edges of the bins live traffic is counted in)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].bar(class_names, reference["class"], color="#4C72B0")
    axes[0].set(title="Predicted classes", ylabel="share of the validation split")
    axes[0].tick_params(axis="x", labelrotation=90 if len(class_names) > 12 else 0)
    for ax, name, bounds, label in ((axes[1], "confidence", (0, 1.02), "top-1 probability"),
                                    (axes[2], "brightness", (0, 255), "mean pixel value")):
        edges = reference[name]["edges"]
        ax.plot(np.arange(1, len(edges) + 1) * 100 / (len(edges) + 1), edges, marker="o",
                color="#55A868")
        ax.set(title=f"Top-1 {name}" if name == "confidence" else "Input brightness",
               xlabel="share of the validation images below (%)", ylabel=label, ylim=bounds,
               xlim=(0, 100))
    fig.suptitle(f"Drift reference: what the model predicted on {reference['images']} "
                 "validation images")
    fig.tight_layout()
    return fig


def overlay(image: np.ndarray, heatmap: np.ndarray,
            opacity: float = OVERLAY_OPACITY) -> np.ndarray:
    """``image`` (uint8, grey or RGB) as RGB uint8 with ``heatmap`` (in [0, 1], the same height
    and width) blended over it in the jet colormap: blue cold, red hot."""
    image = np.asarray(image, dtype=np.float32)
    rgb = np.broadcast_to(image.reshape(*image.shape[:2], -1), (*image.shape[:2], 3))
    colors = matplotlib.colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255
    return np.rint((1 - opacity) * rgb + opacity * colors).astype(np.uint8)
