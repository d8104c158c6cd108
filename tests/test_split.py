import math

import pandas as pd
import pytest

from imgcls_utils import data_utils
from imgcls_utils.data import split
from imgcls_utils.data_utils import DataError, scan_image_folder
from tests.sample_files import write_copy, write_photo

FRACTIONS = {"data.train_fraction": 0.6, "data.val_fraction": 0.2, "data.test_fraction": 0.2}


@pytest.fixture
def with_copies(tmp_path, make_config):
    """Scanned images of 3 classes x 12 pictures, 6 of them with a resized JPEG copy."""
    folder = tmp_path / "images"
    for c, label in enumerate(("cat", "dog", "fox")):
        for i in range(12):
            original = write_photo(folder / label / f"{i:02d}.png", seed=100 * c + i)
            if i % 2:
                write_copy(original, folder / label / f"{i:02d}_copy.jpg", scale=0.7)
    return scan_image_folder(folder, make_config().data).images


@pytest.fixture
def official(tmp_path, make_config):
    """Scanned images of a folder that keeps an official test split: train/ 3 classes x 10
    pictures, test/ 3 x 4 others, and train/cat/copy_of_test.jpg, a resized JPEG copy of
    test/cat/00.png."""
    folder = tmp_path / "official"
    for c, label in enumerate(("cat", "dog", "fox")):
        for i in range(10):
            write_photo(folder / "train" / label / f"{i:02d}.png", seed=100 * c + i)
        for i in range(4):
            write_photo(folder / "test" / label / f"{i:02d}.png", seed=100 * c + 50 + i)
    write_copy(folder / "test" / "cat" / "00.png", folder / "train" / "cat" / "copy_of_test.jpg",
               scale=0.7)
    return scan_image_folder(folder, make_config().data).images


def test_source_test_split_is_the_test_folder_and_validation_comes_from_train(official,
                                                                            make_config):
    data = make_config(**{"data.test_split": "source"}).data
    images = split.split_images(official, data)
    assert images.equals(split.split_images(official.sample(frac=1, random_state=3), data))
    test_folder = official.loc[official["path"].str.startswith("test/"), "path"]
    assert len(test_folder) == 12 and set(images.loc[images["split"] == "test", "path"]) == set(
        test_folder)
    val = images[images["split"] == "val"]
    assert (val["part"] == "train").all()
    assert sorted(val["label"].unique()) == ["cat", "dog", "fox"]
    assert len(val) == math.ceil(31 * 0.15 / (0.7 + 0.15))  # 31 distinct pictures in train/


def test_fraction_split_pools_the_train_and_test_folders(official, make_config):
    images = split.split_images(official, make_config().data)
    sizes = data_utils.split_sizes(images)
    assert sizes.index.tolist() == ["cat", "dog", "fox", "total"]
    assert sizes.loc["total"].tolist() == [30, 6, 7, 43]  # 42 groups by 70/15/15 percent
    assert ((images["part"] == "test") & (images["split"] != "test")).sum() >= 12 - 7
    assert data_utils.groups_across_splits(images).empty


def test_test_copies_in_train_are_kept_and_shown_as_leakage_or_excluded(official, make_config,
                                                                       capsys):
    source = {"data.test_split": "source", "data.folds": 2}
    kept = split.split_images(official, make_config(**source).data)
    leaks = data_utils.groups_across_splits(kept)
    assert leaks["path"].tolist() == ["test/cat/00.png", "train/cat/copy_of_test.jpg"]
    assert kept.set_index("path").loc["test/cat/00.png", "fold"] == -1
    capsys.readouterr()
    excluded = split.split_images(official, make_config(**source, **{
        "data.test_copies_in_train": "exclude"}).data)
    assert "excluded 1 image(s) of the official train part" in capsys.readouterr().err
    assert set(official["path"]) - set(excluded["path"]) == {"train/cat/copy_of_test.jpg"}
    assert data_utils.groups_across_splits(excluded).empty


def test_source_test_split_needs_images_from_the_official_test_part(class_folder, make_config):
    images = scan_image_folder(class_folder).images
    with pytest.raises(DataError, match="no image to train on comes from the source's official "
                                        "test part"):
        split.split_images(images, make_config(**{"data.test_split": "source"}).data)


def test_split_is_stratified_and_reproducible(class_folder, make_config):
    cfg = make_config(**FRACTIONS)
    images = scan_image_folder(class_folder).images
    first = split.split_images(images, cfg.data)
    again = split.split_images(images.sample(frac=1, random_state=3), cfg.data)
    assert first.equals(again)
    assert data_utils.split_sizes(first).loc["cat"].tolist() == [6, 2, 2, 10]
    other_seed = make_config(**{"data.seed": 7, **FRACTIONS})
    assert not first["split"].equals(split.split_images(images, other_seed.data)["split"])


def test_copies_never_straddle_the_split(with_copies, make_config):
    assert (with_copies.groupby("group").size() == 2).sum() == 18
    for seed in range(8):
        images = split.split_images(with_copies, make_config(**{"data.seed": seed, **FRACTIONS}).data)
        assert (images.groupby("group")["split"].nunique() == 1).all()
        assert data_utils.groups_across_splits(images).empty
        assert data_utils.split_sizes(images).loc["total"].tolist()[:3] >= [7 * 3, 2 * 3, 2 * 3]


def test_folds_keep_groups_whole_and_hold_out_the_test_split(with_copies, make_config):
    data = make_config(**{"data.folds": 3, **FRACTIONS}).data
    images = split.split_images(with_copies, data)
    assert (images.loc[images["split"] == "test", "fold"] == -1).all()
    pool = images[images["split"] != "test"]
    assert sorted(pool["fold"].unique()) == [0, 1, 2]
    assert (images.groupby("group")["fold"].nunique() == 1).all()
    assert (pool.groupby(["fold", "label"]).size() >= 2).all()  # every class in every fold
    assert images.equals(split.split_images(with_copies, data))
    with pytest.raises(DataError, match="data.folds = 11"):
        split.split_images(with_copies, make_config(**{"data.folds": 11, **FRACTIONS}).data)


def test_each_cv_fold_is_the_validation_split_once_and_the_test_split_never_moves(
        with_copies, make_config):
    plain = split.split_images(with_copies, make_config(**{"data.folds": 3, **FRACTIONS}).data)
    validated = []
    for fold in range(3):
        data = make_config(**{"data.folds": 3, "data.cv_fold": fold, **FRACTIONS}).data
        images = split.split_images(with_copies, data)
        assert images["fold"].equals(plain["fold"])
        assert images["split"].eq("test").equals(plain["split"].eq("test"))
        assert set(images.loc[images["fold"] == fold, "split"]) == {"val"}
        assert set(images.loc[~images["fold"].isin([fold, -1]), "split"]) == {"train"}
        assert data_utils.groups_across_splits(images).empty
        validated += images.loc[images["split"] == "val", "path"].tolist()
    pool = plain.loc[plain["split"] != "test", "path"]
    assert sorted(validated) == sorted(pool)  # every train/val image validated exactly once


def test_too_few_images_for_three_splits_is_a_clear_error(class_folder, make_config):
    images = scan_image_folder(class_folder).images
    few = images.groupby("label").head(3)
    with pytest.raises(DataError, match="every class has fewer than 7 distinct images"):
        split.split_images(few, make_config().data)


def test_groups_across_splits_lists_every_copy_of_a_leaking_group():
    images = pd.DataFrame({"path": ["a.png", "b.jpg", "c.png", "d.png", "e.png"],
                             "label": ["x", "x", "y", "y", "y"],
                             "split": ["train", "test", "val", "val", "train"],
                             "group": [0, 0, 2, 2, 4]})
    leaks = data_utils.groups_across_splits(images)
    assert leaks[["path", "split"]].values.tolist() == [["a.png", "train"], ["b.jpg", "test"]]
