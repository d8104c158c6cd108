import re

import pytest
import yaml

from imgcls_utils.config import (CONFIG_RELATIVE_PATH, CONFIG_VARIABLE, ConfigError,
                                 find_project_root, load_config, notebook_config, parse_set_option)
from imgcls_utils.config_rules import MOVED, NOTEBOOK_PARAMETERS, RULES
from tests.conftest import REPO_ROOT

YAML_PATH = REPO_ROOT / CONFIG_RELATIVE_PATH


def problems_of(**overrides) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(YAML_PATH, overrides=overrides)
    return str(caught.value)


def test_defaults_load_and_every_rule_has_a_default():
    cfg = load_config(YAML_PATH)
    flat = {f"{s}.{k}" for s, section in cfg.to_dict().items() for k in section}
    assert flat == set(RULES)
    assert cfg.train.epochs >= 1 and cfg.data.source == "digits"


def key_comments() -> dict[str, str]:
    """``section.key -> its comment`` from the YAML file's lines."""
    comments, section = {}, None
    for line in YAML_PATH.read_text().splitlines():
        if match := re.match(r"^(\w+):", line):
            section = match[1]
        elif match := re.match(r"^\s+(\w+):[^#]*#\s*(.*)$", line):
            comments[f"{section}.{match[1]}"] = match[2]
    return comments


def test_every_key_has_a_one_line_comment_of_at_most_100_characters():
    assert set(key_comments()) == set(RULES)
    too_long = [line for line in YAML_PATH.read_text().splitlines() if len(line) > 100]
    assert not too_long


def test_comments_name_exactly_the_values_the_rules_accept():
    comments = key_comments()
    enumerated = {key: rule.choices for key, rule in RULES.items() if rule.choices}
    assert len(enumerated) >= 15
    for key, choices in enumerated.items():
        assert re.match(re.escape(choices) + "(:|$)", comments[key]), \
            f"{key}: the comment should start with '{choices}:', it reads '{comments[key]}'"
    listed = {key for key, comment in comments.items() if " | " in comment.split(":")[0]}
    assert listed == set(enumerated), "a comment lists values its rule does not enumerate"


def test_one_spelling_for_off_and_for_automatic():
    values = yaml.safe_load(YAML_PATH.read_text())
    flat = {f"{s}.{k}": v for s, section in values.items() for k, v in section.items()}
    assert None not in flat.values()
    for key, rule in RULES.items():
        words = set(re.findall(r"\b(none|null|off|auto|automatic)\b", rule.choices))
        assert words <= {"none", "auto"}, f"{key} spells off/automatic as {words}"


def test_unknown_key_suggests_the_closest_known_one():
    message = problems_of(**{"train.epocs": 3})
    assert "train.epocs" in message and "did you mean 'train.epochs'" in message


def test_unknown_key_with_wrong_section_suggests_by_name():
    assert "did you mean 'train.batch_size'" in problems_of(**{"model.batch_size": 8})


@pytest.mark.parametrize("key, value, expected", [
    ("train.epochs", -1, "train.epochs = -1: allowed is an integer >= 1"),
    ("train.epochs", "three", "expected an integer >= 1"),
    ("train.epochs", True, "expected an integer >= 1"),
    ("train.learning_rate", 0, "allowed is a number > 0"),
    ("data.image_size", [32], "list of 2 integers"),
    ("data.channels", 2, "allowed is auto or 1 | 3"),
    ("model.family", "transformer", "allowed is cnn | mlp | transfer"),
    ("augment.flip", "diagonal", "allowed is none | horizontal"),
    ("data.folds", 1, "allowed is none or an integer >= 2"),
    ("transfer.input_size", 0, "allowed is auto or an integer >= 32"),
    ("hardware.mixed_precision", "off", "allowed is auto | float32 | mixed_float16"),
    ("data.val_fraction", 1.5, "data.val_fraction = 1.5: allowed is a number in (0, 1)"),
    ("data.test_split", "official", "data.test_split = 'official': allowed is fraction | source"),
    ("data.test_copies_in_train", "drop", "allowed is keep | exclude"),
])
def test_bad_values_name_the_key_and_what_is_allowed(key, value, expected):
    assert expected in problems_of(**{key: value})


def test_split_fractions_must_sum_to_one():
    message = problems_of(**{"data.val_fraction": 0.2})
    assert "must sum to 1" in message and "1.05" in message


def test_all_problems_are_reported_together():
    error_text = problems_of(**{"train.epochs": 0, "train.epocs": 1, "data.channels": 4})
    assert error_text.count("\n  - ") == 3


def test_off_written_as_yaml_says_it_is_read_as_a_boolean():
    with pytest.raises(ConfigError) as caught:
        load_config(YAML_PATH, set_options=["hardware.mixed_precision=off"])
    assert "hardware.mixed_precision = False (bool): expected auto | float32" in str(caught.value)
    assert "YAML reads an unquoted off" in str(caught.value)
    cfg = load_config(YAML_PATH, set_options=["hardware.mixed_precision=float32",
                                              "data.folds=none", "data.class_names=[a, b]"])
    assert (cfg.hardware.mixed_precision, cfg.data.folds) == ("float32", "none")


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_a_moved_key_names_its_new_place(old, new):
    assert f"'{old}' (from overrides) moved to '{new}'" in problems_of(**{old: 1})
    assert new in RULES


def test_notebook_parameters_keep_the_file_value_when_none_and_overrides_win():
    cfg = notebook_config(YAML_PATH, {"train.batch_size": 7}, epochs=None, learning_rate=0.01)
    defaults = yaml.safe_load(YAML_PATH.read_text())
    assert cfg.train.epochs == defaults["train"]["epochs"]
    assert (cfg.train.batch_size, cfg.train.learning_rate) == (7, 0.01)
    assert set(NOTEBOOK_PARAMETERS.values()) <= set(RULES)
    with pytest.raises(ConfigError, match="unknown notebook parameter.*epoch.*set other keys"):
        notebook_config(YAML_PATH, epoch=3)
    with pytest.raises(ConfigError, match="data.near_duplicate_distance = None .*null is no"):
        notebook_config(YAML_PATH, {"data.near_duplicate_distance": None})


def test_imgcls_config_names_the_config_used_when_none_is_given(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere" / CONFIG_RELATIVE_PATH
    other.parent.mkdir(parents=True)
    other.write_text(YAML_PATH.read_text().replace("epochs: 40 ", "epochs: 7 "))
    monkeypatch.setenv(CONFIG_VARIABLE, str(other))
    cfg = load_config()
    assert cfg.train.epochs == 7 and cfg.root == tmp_path / "elsewhere"
    assert load_config(YAML_PATH).train.epochs == 40


def test_set_options_are_parsed_as_yaml_values():
    assert parse_set_option("train.epochs=3") == ("train.epochs", 3)
    assert parse_set_option("data.image_size=[16, 16]") == ("data.image_size", [16, 16])
    assert parse_set_option("data.source=my images") == ("data.source", "my images")
    cfg = load_config(YAML_PATH, set_options=["train.epochs=3", "augment.enabled=false"])
    assert cfg.train.epochs == 3 and cfg.augment.enabled is False


def test_set_option_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set_option("train.epochs")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(YAML_PATH, overrides={"train.epochs": 5})
    saved = cfg.save(tmp_path / "config.yaml")
    assert yaml.safe_load(saved.read_text()) == cfg.to_dict()
    assert load_config(saved).to_dict() == cfg.to_dict()


def test_paths_resolve_under_the_project_root():
    cfg = load_config(YAML_PATH)
    assert cfg.root == REPO_ROOT
    assert cfg.path("raw_dir") == REPO_ROOT / "data" / "Raw_Data"
    assert find_project_root(REPO_ROOT / "notebooks") == REPO_ROOT


def test_missing_config_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- train\n- epochs\n")
    with pytest.raises(ConfigError, match="listed.yaml must be a mapping of sections .* not a list"):
        load_config(listed)


def test_a_cv_fold_needs_folds_and_must_be_one_of_them():
    assert "data.cv_fold = 1 needs data.folds" in problems_of(**{"data.cv_fold": 1})
    assert "with data.folds = 3 the folds are 0 to 2" in problems_of(
        **{"data.folds": 3, "data.cv_fold": 3})
    assert load_config(YAML_PATH, overrides={"data.folds": 3, "data.cv_fold": 2}).data.cv_fold == 2
