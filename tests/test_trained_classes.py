import json

import pytest

from imgcls_utils import data_utils
from imgcls_utils.data_utils import DataError
from tests.conftest import write_image
from tests.sample_files import add_untrainable_classes
from tests.test_cli import imgcls


@pytest.fixture
def corners(class_folder):
    """``add_untrainable_classes`` to the three good classes."""
    return add_untrainable_classes(class_folder)


def test_every_class_folder_gets_a_status_and_the_report_names_the_untrainable(corners,
                                                                              make_config):
    data = make_config(**{"data.min_images_per_class": 2}).data
    scan = data_utils.scan_image_folder(corners, data)
    status = data_utils.class_status(scan, data).set_index("class")
    assert status.index.tolist() == ["cat", "copycat", "dog", "empty", "fox", "junk", "lonely"]
    assert status.loc["empty", "reason"] == "empty folder"
    assert status.loc["copycat", "reason"].startswith("all 1 file(s) excluded as copies")
    assert status.loc["junk", "reason"] == "none of its 2 file(s) is a usable image (see skipped files)"
    assert status.loc["lonely", "reason"] == "only 1 usable image(s); data.min_images_per_class is 2"
    assert status.loc[["cat", "fox"], "reason"].tolist() == ["", ""]
    assert status.loc["dog", "usable"] == 9  # its 0.png has a conflicting copy: excluded too
    report = data_utils.scan_report(scan, data)
    assert "classes that cannot be trained: 4\n  copycat: all 1 file(s)" in report
    assert "  empty: empty folder\n" in report


def test_untrainable_classes_are_left_out_with_a_warning_or_refused(corners, make_config, capsys):
    data = make_config().data
    scan = data_utils.scan_image_folder(corners, data)
    classes, left_out = data_utils.trainable_classes(scan, data)
    assert classes == ["cat", "dog", "fox", "lonely"]
    assert sorted(left_out) == ["copycat", "empty", "junk"]
    assert "imgcls warning: left out of training" in capsys.readouterr().err
    strict = make_config(**{"data.untrainable_classes": "error"}).data
    with pytest.raises(DataError, match="cannot be trained: copycat .*empty .*junk"):
        data_utils.trainable_classes(scan, strict)


def test_classes_can_be_chosen_or_excluded_without_touching_the_folder(corners, make_config):
    scan = data_utils.scan_image_folder(corners)
    chosen = make_config(**{"data.classes": ["cat", "fox", "empty"]}).data
    assert data_utils.trainable_classes(scan, chosen)[0] == ["cat", "fox"]
    excluded = make_config(**{"data.exclude_classes": ["dog", "lonely"]}).data
    classes, left_out = data_utils.trainable_classes(scan, excluded)
    assert classes == ["cat", "fox"] and left_out["dog"] == "in data.exclude_classes"
    with pytest.raises(DataError, match="data.classes names kitten, but .* has no such class"):
        data_utils.trainable_classes(scan, make_config(**{"data.classes": ["cat", "kitten"]}).data)
    with pytest.raises(DataError, match="1 class\\(es\\) can be trained \\(cat\\); .* at least 2"):
        data_utils.trainable_classes(scan, make_config(**{"data.classes": ["cat", "empty"]}).data)


def test_a_class_too_small_to_split_goes_to_training_whole(class_folder, make_config, capsys):
    write_image(class_folder / "rare" / "1.png", seed=501)
    write_image(class_folder / "rare" / "2.png", seed=502)
    cfg = make_config(**{"data.source": str(class_folder), "data.image_size": [16, 16]})
    processed = data_utils.process_data(cfg)
    rare = processed.images[processed.images["label"] == "rare"]
    assert rare["split"].tolist() == ["train", "train"]
    assert "rare have fewer than 7 distinct images" in capsys.readouterr().err
    assert processed.count("test") > 0 and "rare" in processed.class_names


def test_left_out_classes_are_recorded_with_the_processed_data(corners, make_config):
    cfg = make_config(**{"data.source": str(corners), "data.image_size": [16, 16]})
    processed = data_utils.process_data(cfg)
    assert processed.class_names == ["cat", "dog", "fox", "lonely"]
    recorded = json.loads((processed.folder / "dataset.json").read_text())["left_out_classes"]
    assert recorded == processed.left_out and set(recorded) == {"copycat", "empty", "junk"}


def test_scan_reports_everything_and_fails_only_when_nothing_can_be_trained(corners, project,
                                                                           tmp_path):
    done, _ = imgcls("scan", "--set", f"data.source={corners}", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "classes that cannot be trained: 3" in done.stdout
    assert "skipped files: 4" in done.stdout  # two junk files, a dog and its copy in copycat
    single = tmp_path / "single"
    write_image(single / "only" / "a.png")
    (single / "empty").mkdir()
    done, _ = imgcls("scan", "--set", f"data.source={single}", cwd=project)
    assert done.returncode == 2
    assert "usable images: 1 in 1 classes" in done.stdout
    assert "  empty: empty folder" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"imgcls: {single}: 1 class(es) can be trained (only); classification needs at least 2")
    assert "Traceback" not in done.stderr

