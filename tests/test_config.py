import re

import pytest
import yaml

from imgcls_utils.config import (CONFIG_RELATIVE_PATH, RULES, ConfigError, find_project_root,
                                 load_config, parse_set_option)
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


def test_every_key_in_the_yaml_has_a_comment():
    for line in YAML_PATH.read_text().splitlines():
        if re.match(r"^\s+\w+:", line):
            assert "#" in line, f"no comment on: {line}"


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
    ("data.channels", 2, "allowed is 1 or 3"),
    ("model.family", "transformer", "one of cnn, mlp"),
    ("augment.flip", "diagonal", "one of none, horizontal"),
    ("data.val_fraction", 1.5, "data.val_fraction = 1.5: allowed is a number in (0, 1)"),
])
def test_bad_values_name_the_key_and_what_is_allowed(key, value, expected):
    assert expected in problems_of(**{key: value})


def test_split_fractions_must_sum_to_one():
    message = problems_of(**{"data.val_fraction": 0.2})
    assert "must sum to 1" in message and "1.05" in message


def test_all_problems_are_reported_together():
    error_text = problems_of(**{"train.epochs": 0, "train.epocs": 1, "data.channels": 4})
    assert error_text.count("\n  - ") == 3


def test_none_overrides_keep_defaults_and_values_override():
    cfg = load_config(YAML_PATH, overrides={"train.epochs": None, "train.batch_size": 7})
    defaults = yaml.safe_load(YAML_PATH.read_text())
    assert cfg.train.epochs == defaults["train"]["epochs"]
    assert cfg.train.batch_size == 7


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
