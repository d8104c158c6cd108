"""What a scan found, in tables and words: images per class and the imbalance, sizes, pixel
statistics, sample images, and the whole report (skipped files with their reasons, duplicate
groups, classes that cannot be trained) that ``imgcls scan`` prints and Data_Exploration shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Section
from .duplicates import largest_first
from .images import load_image
from .input_shape import resolve_input_shape
from .scan import ScanResult
from .split import copies_of_test_images
from .trained_classes import class_status, untrainable

# At scale a report lists the largest groups only (a group of 3,000 copies once took 60 KB on
# one line); the scan writes every group in full to a file that the report names.
REPORTED_GROUPS = 20
GROUP_MEMBERS_SHOWN = 4


def class_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Images per class, sorted by class name, with each class's share of the total."""
    counts = images["label"].value_counts().sort_index().rename("images").to_frame()
    counts["share"] = (counts["images"] / counts["images"].sum()).round(3)
    counts.index.name = "class"
    return counts


def class_imbalance(images: pd.DataFrame) -> dict:
    """The largest and smallest class and the ratio of their image counts (1.0 = balanced)."""
    counts = images["label"].value_counts().sort_index()
    largest, smallest = counts.idxmax(), counts.idxmin()
    return {"largest": largest, "largest_images": int(counts[largest]), "smallest": smallest,
            "smallest_images": int(counts[smallest]),
            "ratio": round(float(counts[largest] / counts[smallest]), 2)}


def image_size_summary(images: pd.DataFrame) -> pd.DataFrame:
    """How many images have each (width, height, mode) combination, most common first."""
    return (images.groupby(["width", "height", "mode"]).size().rename("images")
            .sort_values(ascending=False).reset_index())


def animated_images(scan: ScanResult) -> pd.DataFrame:
    """Usable images with several frames (animated GIF/WebP/PNG, multi-page TIFF): training
    uses their first frame."""
    return scan.images.loc[scan.images["frames"] > 1, ["path", "label", "format", "frames"]]


def load_samples(scan: ScanResult, per_class: int, data: Section) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of each class (by path), decoded as for training:
    ``(images, labels)`` with labels as indices into ``scan.class_names``."""
    data = resolve_input_shape(data, scan)
    rows = scan.images.sort_values("path").groupby("label", sort=True).head(per_class)
    rows = rows.sort_values(["label", "path"])
    images = [load_image(scan.folder / path, tuple(data.image_size), data.channels)
              for path in rows["path"]]
    labels = [scan.class_names.index(label) for label in rows["label"]]
    return np.stack(images), np.array(labels)


def pixel_statistics(scan: ScanResult, data: Section, max_images: int = 2000) -> pd.DataFrame:
    """Mean, standard deviation, min and max of pixel values per channel, after decoding as for
    training, over all images or a seeded sample of ``max_images``."""
    data = resolve_input_shape(data, scan)
    rows = scan.images
    if len(rows) > max_images:
        rows = rows.sample(max_images, random_state=data.seed)
    pixels = np.stack([load_image(scan.folder / p, tuple(data.image_size), data.channels)
                       for p in rows["path"]]).reshape(-1, data.channels).astype(np.float64)
    names = ["gray"] if data.channels == 1 else ["red", "green", "blue"]
    return pd.DataFrame({"mean": pixels.mean(0), "std": pixels.std(0), "min": pixels.min(0),
                         "max": pixels.max(0)}, index=pd.Index(names, name="channel")).round(2)


def scan_report(scan: ScanResult, data: Section) -> str:
    """The whole scan as text: counts per class, imbalance, every skipped file with its reason,
    animated images, duplicate groups and conflicting labels (with ``data.test_split: source``,
    also those across the official train and test parts, which the split cannot keep on one
    side), and the classes that cannot be trained (or that the config leaves out) with the
    reason."""
    lines = [f"source: {scan.folder}",
             f"usable images: {len(scan.images)} in {len(scan.class_names)} classes; "
             f"skipped files: {len(scan.skipped)}"]
    if not scan.images.empty:
        imbalance = class_imbalance(scan.images)
        lines += ["", class_counts(scan.images).to_string(), "",
                  f"class imbalance: largest {imbalance['largest']} "
                  f"({imbalance['largest_images']}), smallest {imbalance['smallest']} "
                  f"({imbalance['smallest_images']}), ratio {imbalance['ratio']}"]
    lines += _section("skipped files", [f"{r.path}: {r.reason}" for r in scan.skipped.itertuples()])
    lines += _section("animated images (first frame used)",
                      [f"{r.path}: {r.format}, {r.frames} frames"
                       for r in animated_images(scan).itertuples()])
    lines += _group_section("duplicate groups (each kept on one side of the split)",
                            scan.duplicates, scan.duplicates_file)
    if data.test_split == "source":
        across = copies_of_test_images(scan.images)
        crossing = scan.duplicates[scan.duplicates["group"].isin(scan.images["group"][across])]
        lines += _group_section("duplicate groups across the official train and test parts "
                                "(training copies: data.test_copies_in_train is "
                                f"{data.test_copies_in_train})", crossing, scan.duplicates_file)
    status = class_status(scan, data)
    lines += _section("classes that cannot be trained",
                      [f"{name}: {reason}" for name, reason in untrainable(status).items()])
    chosen_out = status[~status["chosen"]]
    if not chosen_out.empty:
        lines += _section("classes the config leaves out",
                          [f"{r['class']}: {r['reason']}" for _, r in chosen_out.iterrows()])
    return "\n".join(lines)


def _group_section(title: str, table: pd.DataFrame, full_lists: Path | None) -> list[str]:
    """The largest ``REPORTED_GROUPS`` groups, a line each with its size and first members;
    how many more there are and how large; and the file that lists every member of every group."""
    ordered = largest_first(table)
    groups = list(ordered.groupby("group", sort=False))
    lines = [_group_line(group, rows) for group, rows in groups[:REPORTED_GROUPS]]
    if len(groups) > REPORTED_GROUPS:
        sizes = [len(rows) for _, rows in groups[REPORTED_GROUPS:]]
        lines.append(f"... and {len(sizes):,} more groups of {min(sizes):,} to {max(sizes):,} "
                     "images")
    if full_lists is not None and groups:
        lines.append(f"every group with all its images: {full_lists}")
    section = _section(title, lines)
    section[1] = f"{title}: {len(groups) or 'none'}"
    return section


def _group_line(group: int, rows: pd.DataFrame) -> str:
    conflict = ", conflicting labels: excluded" if rows["conflict"].iloc[0] else ""
    shown = [f"{p} [{label}]" for p, label in zip(rows["path"][:GROUP_MEMBERS_SHOWN],
                                                   rows["label"][:GROUP_MEMBERS_SHOWN])]
    hidden = len(rows) - GROUP_MEMBERS_SHOWN
    more = f", ... ({hidden:,} more)" if hidden > 0 else ""
    return (f"group {group} ({rows['match'].iloc[0]}{conflict}, {len(rows):,} images): "
            + ", ".join(shown) + more)


def _section(title: str, entries: list[str]) -> list[str]:
    return ["", f"{title}: {len(entries) or 'none'}", *(f"  {entry}" for entry in entries)]
