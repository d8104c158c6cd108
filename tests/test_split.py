import pandas as pd
import pytest

from imgcls_utils import data_utils, split
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
