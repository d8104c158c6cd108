"""Split: stratified, seeded train/validation/test assignment, optional cross-validation folds.

The unit of assignment is a duplicate group (``group`` column from the scan), not a file: all
copies of an image land on the same side, so a test image never has a twin in training. A class
with too few distinct images to put one in validation and one in test goes to training whole,
with a warning: it is learned, but validation and test do not measure it.
"""

from __future__ import annotations

import math

import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from .config import Section
from .errors import DataError, warn

SPLITS = ("train", "val", "test")


def split_images(images: pd.DataFrame, data: Section) -> pd.DataFrame:
    """Add a ``split`` column (and ``fold`` unless ``data.folds`` is none) to scanned images:
    stratified by label, seeded, the same for any row order, copies kept together."""
    images = images.sort_values("path").reset_index(drop=True)
    units = images.drop_duplicates("group")  # each group's first path stands for the group
    held_out = data.val_fraction + data.test_fraction
    needed = math.ceil(1 / min(data.val_fraction, data.test_fraction))
    counts = units["label"].value_counts()
    too_few = sorted(counts[counts < needed].index)
    if too_few:
        warn(f"class(es) {', '.join(too_few)} have fewer than {needed} distinct images, too few "
             "to put one in validation and one in test: all their images go to training, so "
             "validation and test do not measure them")
    units = units[~units["label"].isin(too_few)]
    if units.empty:
        raise DataError(f"every class has fewer than {needed} distinct images: too few to hold "
                        "any out for validation and test; add images or raise "
                        "data.val_fraction/test_fraction")
    _, rest = train_test_split(units, test_size=held_out, stratify=units["label"],
                               random_state=data.seed)
    val, test = train_test_split(rest, test_size=data.test_fraction / held_out,
                                 stratify=rest["label"], random_state=data.seed)
    split_of_group = pd.Series("train", index=images["group"].unique())
    split_of_group[val["group"]], split_of_group[test["group"]] = "val", "test"
    images["split"] = images["group"].map(split_of_group)
    if data.folds != "none":
        images["fold"] = assign_folds(images, data.folds, data.seed)
    return images


def assign_folds(images: pd.DataFrame, folds: int, seed: int) -> pd.Series:
    """Cross-validation fold (0 .. folds-1) of each train/val image, -1 for the test split: every
    fold is stratified by label and holds whole duplicate groups."""
    pool = images[images["split"] != "test"].drop_duplicates("group")
    counts = pool["label"].value_counts()
    if counts.min() < folds:
        raise DataError(f"data.folds = {folds}, but class {counts.idxmin()} has only "
                        f"{counts.min()} distinct train/val images; lower data.folds or add images")
    fold_of_group = pd.Series(-1, index=images["group"].unique())
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(pool, pool["label"])):
        fold_of_group[pool["group"].iloc[held].to_numpy()] = fold
    return images["group"].map(fold_of_group)


def groups_across_splits(images: pd.DataFrame) -> pd.DataFrame:
    """The rows of duplicate groups whose copies lie in more than one split: leakage, which
    inflates test accuracy. Empty for every split table ``split_images`` makes."""
    sides = images.groupby("group")["split"].transform("nunique")
    return images.loc[sides > 1, ["group", "path", "label", "split"]].sort_values(
        ["group", "path"]).reset_index(drop=True)


def split_sizes(images: pd.DataFrame) -> pd.DataFrame:
    """Images per class in each split: one row per class, one column per split, plus totals."""
    table = pd.crosstab(images["label"], images["split"], margins=True, margins_name="total")
    table = table[[*SPLITS, "total"]]
    table.index.name, table.columns.name = "class", None
    return table
