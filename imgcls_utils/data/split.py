"""Split: stratified, seeded train/validation/test assignment, optional cross-validation folds
(``data.cv_fold`` makes one fold the validation split, for one round of ``imgcls cv``).

The unit of assignment is a duplicate group (``group`` column from the scan), not a file: all
copies of an image land on the same side, so a test image never has a twin in training. A class
with too few distinct images to put one in validation and one in test goes to training whole,
with a warning: it is learned, but validation and test do not measure it.

With ``data.test_split: source`` the source's official test part is the test split, and
validation is drawn the same way from its train part: ``val_fraction / (train_fraction +
val_fraction)`` of it. The parts are fixed, so a group with copies in both cannot be kept on one
side: ``data.test_copies_in_train`` keeps its training copies (``groups_across_splits`` shows
them, and test accuracy stays comparable with results published on that split) or excludes them.
"""

from __future__ import annotations

import math

import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..config import Section
from ..errors import DataError, warn
from .sources import TEST_PART

SPLITS = ("train", "val", "test")
FRACTION_KEYS = {"validation": "val_fraction", "test": "test_fraction"}


def split_images(images: pd.DataFrame, data: Section) -> pd.DataFrame:
    """Add a ``split`` column (and ``fold`` unless ``data.folds`` is none) to scanned images:
    stratified by label, seeded, the same for any row order, copies kept together (except
    those across the official train and test parts, with ``data.test_split: source``)."""
    if not images["path"].is_monotonic_increasing:  # a scan's table is: no copy needed
        images = images.sort_values("path")
    images = images.reset_index(drop=True)
    if data.test_split == "source":
        images = _official_split(images, data)
    else:
        images = _fraction_split(images, data)
    if data.folds != "none":
        images["fold"] = assign_folds(images, data.folds, data.seed)
    if data.cv_fold != "none":
        images["split"] = validate_on_fold(images, data.cv_fold)
    return images


def _fraction_split(images: pd.DataFrame, data: Section) -> pd.DataFrame:
    """Whole duplicate groups to train, validation and test by ``data.*_fraction``."""
    # each group's first image stands for the group; only the columns the split reads
    units = images[["group", "label"]].drop_duplicates("group")
    units = _enough_to_hold_out(units, ["validation", "test"],
                                min(data.val_fraction, data.test_fraction))
    held_out = data.val_fraction + data.test_fraction
    _, rest = train_test_split(units, test_size=held_out, stratify=units["label"],
                               random_state=data.seed)
    val, test = train_test_split(rest, test_size=data.test_fraction / held_out,
                                 stratify=rest["label"], random_state=data.seed)
    split_of_group = pd.Series("train", index=images["group"].unique())
    split_of_group[val["group"]], split_of_group[test["group"]] = "val", "test"
    return images.assign(split=images["group"].map(split_of_group))


def _official_split(images: pd.DataFrame, data: Section) -> pd.DataFrame:
    """The official test part as the test split; validation drawn from whole groups of the
    train part, ``val_fraction / (train_fraction + val_fraction)`` of it."""
    images = _without_test_copies(images, data)
    in_test = images["part"] == TEST_PART
    if not in_test.any():
        raise DataError("data.test_split is source, but no image to train on comes from the "
                        "source's official test part (its test/ folder); add test images or set "
                        "data.test_split to fraction")
    share = data.val_fraction / (data.train_fraction + data.val_fraction)
    units = _enough_to_hold_out(images.loc[~in_test, ["group", "label"]].drop_duplicates("group"),
                                ["validation"], share, within=" in the official train part")
    _, val = train_test_split(units, test_size=share, stratify=units["label"],
                              random_state=data.seed)
    split = pd.Series("train", index=images.index)
    split[images["group"].isin(val["group"])] = "val"
    split[in_test] = "test"  # a test image's copies in the train part may be in validation
    return images.assign(split=split)


def _enough_to_hold_out(units: pd.DataFrame, held_out: list[str], fraction: float,
                        within: str = "") -> pd.DataFrame:
    """The units of the classes with enough distinct images to put one in each split of
    ``held_out`` (each gets ``fraction`` of them); the other classes' images go to training
    whole, with a warning."""
    needed = math.ceil(1 / fraction)
    counts = units["label"].value_counts()
    too_few = sorted(counts[counts < needed].index)
    splits = " and ".join(held_out)
    if too_few:
        warn(f"class(es) {', '.join(too_few)} have fewer than {needed} distinct images{within}, "
             f"too few to put one in {' and one in '.join(held_out)}: those images all go to "
             f"training, so {splits} cannot measure them")
    units = units[~units["label"].isin(too_few)]
    if units.empty:
        keys = "/".join(FRACTION_KEYS[name] for name in held_out)
        raise DataError(f"every class has fewer than {needed} distinct images{within}: too few "
                        f"to hold any out for {splits}; add images or raise data.{keys}")
    return units


def copies_of_test_images(images: pd.DataFrame) -> pd.Series:
    """Whether each image lies outside the source's official test part but has a copy in it
    (same duplicate group): leakage that ``data.test_split: source`` cannot split away."""
    in_test = images["part"] == TEST_PART
    return ~in_test & in_test.groupby(images["group"]).transform("any")


def _without_test_copies(images: pd.DataFrame, data: Section) -> pd.DataFrame:
    """``images`` without the training copies of official test images when
    ``data.test_copies_in_train`` is exclude, saying how many."""
    copies = copies_of_test_images(images)
    if data.test_copies_in_train == "keep" or not copies.any():
        return images
    warn(f"excluded {copies.sum()} image(s) of the official train part that are copies of "
         "official test images (data.test_copies_in_train is exclude)")
    return images[~copies].reset_index(drop=True)


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
    # A test image stays out of every fold, even when its copies in the train part are in one.
    return images["group"].map(fold_of_group).where(images["split"] != "test", -1)


def validate_on_fold(images: pd.DataFrame, fold: int) -> pd.Series:
    """The split column of cross-validation round ``fold``: that fold is the validation split,
    every other fold trains, the test split stays as it was."""
    split = images["split"].where(images["split"] == "test", "train")
    return split.mask(images["fold"] == fold, "val")


def groups_across_splits(images: pd.DataFrame) -> pd.DataFrame:
    """The rows of duplicate groups whose copies lie in more than one split: leakage, which
    inflates test accuracy. Empty for every split table ``split_images`` makes, except with
    ``data.test_split: source`` and ``data.test_copies_in_train: keep``: then it lists the
    copies across the source's official train and test parts."""
    sides = images.groupby("group")["split"].transform("nunique")
    return images.loc[sides > 1, ["group", "path", "label", "split"]].sort_values(
        ["group", "path"]).reset_index(drop=True)


def split_sizes(images: pd.DataFrame) -> pd.DataFrame:
    """Images per class in each split: one row per class, one column per split, plus totals."""
    table = pd.crosstab(images["label"], images["split"], margins=True, margins_name="total")
    table = table[[*SPLITS, "total"]]
    table.index.name, table.columns.name = "class", None
    return table
