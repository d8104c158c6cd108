"""Typed run configuration: the YAML defaults, merged with overrides, validated once up front.

The defaults live only in ``config/Hyperparameters.yaml``; this module knows the type and the
allowed values of each key (``RULES``) and nothing else. Importing it does not import TensorFlow,
so a config mistake is reported within a second.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import UserError

CONFIG_RELATIVE_PATH = Path("config") / "Hyperparameters.yaml"
# Names a config file that replaces the project's own wherever none is given.
CONFIG_VARIABLE = "IMGCLS_CONFIG"


class ConfigError(UserError):
    """One or more problems in a run's configuration, each naming the key and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class Rule:
    """What a key accepts: a type check and an optional value check, each described in words.
    ``choices`` is the short list of spellings (``auto | true | false``) that the key's comment
    in the YAML file starts with (a test keeps the two equal)."""

    type_name: str
    is_type: Callable[[Any], bool]
    allowed: str = ""
    is_allowed: Callable[[Any], bool] = lambda value: True
    choices: str = ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(minimum: int, maximum: int | None = None) -> Rule:
    allowed = (f"an integer from {minimum} to {maximum}" if maximum is not None
               else f"an integer >= {minimum}")
    return Rule("integer", _is_int, allowed,
                lambda v: v >= minimum and (maximum is None or v <= maximum))


def fraction(low_open: bool = False, high_open: bool = True) -> Rule:
    """A number in [0, 1), or (0, 1) with ``low_open``: the range says which ends are allowed."""
    low, high = ("(" if low_open else "["), (")" if high_open else "]")
    return Rule("number", _is_number, f"a number in {low}0, 1{high}",
                lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1))


def positive_number() -> Rule:
    return Rule("number", _is_number, "a number > 0", lambda v: v > 0)


def boolean() -> Rule:
    return Rule("true/false", lambda v: isinstance(v, bool), "true or false")


def text(choices: str = "") -> Rule:
    return Rule("string", lambda v: isinstance(v, str) and v != "", "a non-empty string",
                choices=choices)


def choice(*options: Any) -> Rule:
    spelled = " | ".join(map(str, options))
    return Rule(type(options[0]).__name__, lambda v: type(v) is type(options[0]), spelled,
                lambda v: v in options, choices=spelled)


def auto_or_boolean() -> Rule:
    return Rule("auto/true/false", lambda v: v == "auto" or isinstance(v, bool),
                "auto, true or false", choices="auto | true | false")


def either(word: str, rule: Rule, short: str) -> Rule:
    """``word`` (``none`` or ``auto``) or a value ``rule`` accepts, ``short`` naming those."""
    return Rule(f"{word} or {rule.type_name}", lambda v: v == word or rule.is_type(v),
                f"{word} or {rule.allowed}", lambda v: v == word or rule.is_allowed(v),
                choices=f"{word} | {short}")


def int_list(length: int | None, minimum: int) -> Rule:
    count = f"{length} " if length else ""
    return Rule(f"list of {count}integers", lambda v: isinstance(v, list) and all(map(_is_int, v)),
                f"a list of {count}integers, each >= {minimum}",
                lambda v: (length is None or len(v) == length) and len(v) > 0
                and all(x >= minimum for x in v))


def folder_names(minimum: int = 2) -> Rule:
    """Distinct names that can each be a folder name (class names are class folders)."""
    return Rule("list of strings",
                lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                f"a list of at least {minimum} distinct, non-empty names without '/' or '\\' "
                "that do not start with '.'",
                lambda v: len(v) >= minimum and len(set(v)) == len(v)
                and all(x and not x.startswith(".") and not {"/", "\\"} & set(x) for x in v))


def identifier() -> Rule:
    return Rule("string", lambda v: isinstance(v, str), "letters, digits, '-' and '_' only",
                lambda v: v != "" and all(c.isalnum() or c in "-_" for c in v))


RULES: dict[str, Rule] = {
    "paths.raw_dir": text(),
    "paths.processed_dir": text(),
    "paths.models_dir": text(),
    "paths.runs_dir": text(),
    "paths.exports_dir": text(),
    "data.source": text(choices="digits | idx:<folder> | tfds:<name> | a folder of class folders"),
    "data.image_size": int_list(2, minimum=8),
    "data.channels": choice(1, 3),
    "data.train_fraction": fraction(low_open=True),
    "data.val_fraction": fraction(low_open=True),
    "data.test_fraction": fraction(low_open=True),
    "data.test_split": choice("fraction", "source"),
    "data.test_copies_in_train": choice("keep", "exclude"),
    "data.seed": integer(0),
    "data.class_names": either("auto", folder_names(), "a list of names"),
    "data.classes": either("all", folder_names(), "a list of class folders"),
    "data.exclude_classes": either("none", folder_names(minimum=1), "a list of class folders"),
    "data.min_images_per_class": integer(1),
    "data.untrainable_classes": choice("leave_out", "error"),
    "data.min_image_size": int_list(2, minimum=1),
    # Pillow refuses to open anything above twice its own warning threshold (178,956,970 pixels).
    "data.max_pixels": integer(1, maximum=178_956_970),
    # Further apart, the near-duplicate search compares most pairs of a large dataset, and
    # distinct pictures start to match.
    "data.near_duplicate_distance": either("none", integer(0, maximum=20),
                                           "an integer from 0 to 20"),
    "data.folds": either("none", integer(2), "an integer >= 2"),
    "data.cv_fold": either("none", integer(0), "an integer >= 0"),
    "data.cache": auto_or_boolean(),
    "data.cache_budget_mb": integer(0),
    "augment.enabled": boolean(),
    "augment.flip": choice("none", "horizontal", "vertical", "horizontal_and_vertical"),
    "augment.rotation": fraction(high_open=False),
    "augment.zoom": fraction(),
    "augment.translation": fraction(),
    "augment.contrast": fraction(),
    "model.name": either("auto", identifier(), "a name"),
    "model.family": choice("cnn", "mlp", "transfer"),
    "model.conv_filters": int_list(None, minimum=1),
    "model.dense_units": integer(1),
    "model.dropout": fraction(),
    "model.batch_norm": boolean(),
    "model.batch_norm_momentum": fraction(low_open=True),
    "model.residual": boolean(),
    "model.pooling": choice("average", "flatten"),
    "model.l2": fraction(),
    # The keys of imgcls_utils.models.BACKBONES (a test keeps them equal).
    "transfer.backbone": choice("mobilenet_v2", "efficientnet_b0", "resnet50", "inception_v3",
                                "vgg16"),
    "transfer.weights": text(choices="imagenet | none | a weights file"),
    "transfer.alpha": positive_number(),
    "transfer.input_size": either("auto", integer(32), "an integer >= 32"),
    "transfer.fine_tune_layers": integer(0),
    "transfer.fine_tune_epochs": integer(0),
    "transfer.fine_tune_learning_rate": positive_number(),
    "train.epochs": integer(1),
    "train.batch_size": integer(1),
    "train.min_steps_per_epoch": integer(1),
    "train.learning_rate": positive_number(),
    "train.optimizer": choice("adam", "adamw", "sgd"),
    "train.momentum": fraction(),
    "train.weight_decay": fraction(),
    "train.lr_schedule": choice("constant", "cosine", "step", "reduce_on_plateau"),
    "train.warmup_epochs": integer(0),
    "train.step_decay_epochs": integer(1),
    "train.step_decay_factor": fraction(low_open=True),
    "train.reduce_lr_factor": fraction(low_open=True),
    "train.reduce_lr_patience": integer(0),
    "train.early_stopping_patience": integer(0),
    "train.label_smoothing": fraction(),
    "train.class_weight": choice("none", "balanced"),
    "train.verbose": integer(0, 2),
    "train.classical_baselines": boolean(),
    "train.calibration": choice("temperature", "none"),
    "hardware.strategy": choice("auto", "cpu", "gpu", "mirrored", "multi_worker"),
    "hardware.mixed_precision": choice("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "hardware.jit_compile": auto_or_boolean(),
    "hardware.steps_per_execution": integer(1),
    "hardware.deterministic": auto_or_boolean(),
    "serve.host": text(),
    "serve.port": integer(0, maximum=65535),
    "serve.max_batch_size": integer(1),
    "serve.batch_timeout_ms": integer(0, maximum=1000),
    "serve.max_queued_images": integer(1),
    "serve.max_request_mb": positive_number(),
    "serve.poll_seconds": positive_number(),
    "serve.top_k": integer(1),
    "serve.api_key_variable": identifier(),
}

# Keys of earlier versions, and where they live now: an old name fails with the new one.
MOVED = {
    "train.strategy": "hardware.strategy",
    "train.mixed_precision": "hardware.mixed_precision",
    "train.jit_compile": "hardware.jit_compile",
    "train.steps_per_execution": "hardware.steps_per_execution",
    "train.deterministic": "hardware.deterministic",
    "model.backbone": "transfer.backbone",
    "model.weights": "transfer.weights",
    "model.backbone_alpha": "transfer.alpha",
    "model.backbone_input_size": "transfer.input_size",
    "model.fine_tune_layers": "transfer.fine_tune_layers",
    "train.fine_tune_epochs": "transfer.fine_tune_epochs",
    "train.fine_tune_learning_rate": "transfer.fine_tune_learning_rate",
}

# The named parameters a notebook's ``parameters`` cell may declare, and the key each sets.
NOTEBOOK_PARAMETERS = {
    "source": "data.source",
    "image_size": "data.image_size",
    "seed": "data.seed",
    "cv_fold": "data.cv_fold",
    "model_family": "model.family",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
}


def _cross_field_problems(values: Mapping[str, Any]) -> list[str]:
    """Checks that involve several keys; run only when every key is individually valid."""
    fractions = [values[f"data.{part}_fraction"] for part in ("train", "val", "test")]
    if abs(sum(fractions) - 1.0) > 1e-6:
        return [f"data.train_fraction + data.val_fraction + data.test_fraction = "
                f"{' + '.join(map(str, fractions))} = {sum(fractions):g}; they must sum to 1"]
    return _cross_validation_problems(values["data.folds"], values["data.cv_fold"])


def _cross_validation_problems(folds, cv_fold) -> list[str]:
    if cv_fold == "none":
        return []
    if folds == "none":
        return [f"data.cv_fold = {cv_fold} needs data.folds (the number of folds) set too"]
    if cv_fold >= folds:
        return [f"data.cv_fold = {cv_fold}: with data.folds = {folds} the folds are 0 to "
                f"{folds - 1}"]
    return []


class Section(Mapping):
    """One read-only config section with attribute access: ``cfg.train.epochs``."""

    def __init__(self, name: str, values: Mapping[str, Any]):
        self._name = name
        self._values = dict(values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config section '{self._name}' has no key '{key}'") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name}, {self._values})"


class Config(Mapping):
    """The merged, validated configuration of one run; sections are attributes (``cfg.data``)."""

    def __init__(self, values: Mapping[str, Mapping[str, Any]], root: Path):
        self._sections = {name: Section(name, section) for name, section in values.items()}
        self.root = Path(root)

    def __getattr__(self, name: str) -> Section:
        try:
            return self.__dict__["_sections"][name]
        except KeyError:
            raise AttributeError(f"config has no section '{name}'") from None

    def __getitem__(self, name: str) -> Section:
        return self._sections[name]

    def __iter__(self):
        return iter(self._sections)

    def __len__(self) -> int:
        return len(self._sections)

    def path(self, key: str) -> Path:
        """An entry of the ``paths`` section as an absolute path (relative ones are under root)."""
        return self.root / self.paths[key]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dict(section) for name, section in self._sections.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: Path) -> Path:
        Path(path).write_text(self.to_yaml())
        return Path(path)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) that holds the config file."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_RELATIVE_PATH).is_file():
            return folder
    raise ConfigError([f"no {CONFIG_RELATIVE_PATH} found in {start} or any folder above it; "
                       "run from inside the imgcls project or pass the config path"])


def parse_set_option(option: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is read as YAML (numbers, lists)."""
    key, sep, raw = option.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"--set {option!r}: expected section.key=value, e.g. train.epochs=3"])
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _flatten(nested: Mapping[str, Any], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in nested.items():
        if not isinstance(values, Mapping):
            raise ConfigError([f"{source}: section '{section}' must be a mapping of keys to values"])
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def _suggestion(key: str, known: list[str]) -> str:
    """The closest known key: same name in another section first, then the nearest spelling."""
    name = key.split(".")[-1]
    same_name = [k for k in known if k.split(".", 1)[1] == name]
    by_name = {k.split(".", 1)[1]: k for k in known}
    close = same_name or difflib.get_close_matches(key, known, n=1, cutoff=0.6) or [
        by_name[m] for m in difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)]
    return f"; did you mean '{close[0]}'?" if close else ""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_hint(value: Any) -> str:
    """Why YAML may have read a value as a type the user did not mean."""
    if isinstance(value, bool):
        return " (YAML reads an unquoted off, on, no or yes as false or true)"
    if value is None:
        return (" (null is no setting in imgcls: write none to turn a feature off, auto to let it "
                "choose)")
    return ""


def _key_problem(key: str, value: Any, source: str,
                 rules: Mapping[str, Rule] = RULES) -> str | None:
    rule = rules.get(key)
    if key in MOVED and MOVED[key] in rules:
        return f"'{key}' (from {source}) moved to '{MOVED[key]}'; use that name"
    if rule is None:
        return f"unknown key '{key}' (from {source}){_suggestion(key, list(rules))}"
    if not rule.is_type(value):
        return f"{key} = {_describe(value)}: expected {rule.allowed or rule.type_name}" \
               f"{_type_hint(value)}"
    if not rule.is_allowed(value):
        return f"{key} = {value!r}: allowed is {rule.allowed}"
    return None


def validate(values: Mapping[str, Any], source: str,
             rules: Mapping[str, Rule] = RULES) -> list[str]:
    """Every problem in a flat ``section.key -> value`` mapping, as one sentence each.
    ``rules``: another file's table (``Deployment/deployment.yaml``'s) checked the same way;
    the checks across keys belong to this config's own table."""
    problems = [problem for key, value in values.items()
                if (problem := _key_problem(key, value, source, rules))]
    problems += [f"missing key '{key}' in {source}" for key in rules if key not in values]
    return problems or (_cross_field_problems(values) if rules is RULES else [])


def request_bytes(megabytes: float) -> int:
    """``serve.max_request_mb`` in bytes, as the server, its page and nginx count it."""
    return int(megabytes * 1024 * 1024)


def read_flat(path: Path) -> dict[str, Any]:
    """A settings file's ``section.key -> value`` pairs, not yet validated."""
    if not path.is_file():
        raise ConfigError([f"config file {path} does not exist"])
    try:
        nested = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError([f"{path} is not valid YAML: {error}"]) from None
    if not isinstance(nested, Mapping):
        raise ConfigError([f"{path} must be a mapping of sections (section: then key: value "
                           f"lines), not a {type(nested).__name__}"])
    return _flatten(nested, str(path))


def default_config_path() -> Path:
    """``$IMGCLS_CONFIG`` when set, else the config file of the project around the cwd."""
    chosen = os.environ.get(CONFIG_VARIABLE)
    return Path(chosen) if chosen else find_project_root() / CONFIG_RELATIVE_PATH


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None,
                set_options: list[str] | None = None) -> Config:
    """Load the YAML defaults (``default_config_path()`` unless ``path`` is given), apply
    ``overrides`` (``section.key -> value``) and ``set_options`` (``section.key=value``
    strings), validate everything, and return the Config."""
    path = Path(path) if path else default_config_path()
    values = read_flat(path)
    problems = validate(values, str(path))
    if problems:
        raise ConfigError(problems)
    changes = dict(overrides or {})
    changes.update(parse_set_option(option) for option in set_options or [])
    merged = {**values, **copy.deepcopy(changes)}
    problems = validate(merged, "overrides")
    if problems:
        raise ConfigError(problems)
    return Config(_nest(merged), root=path.resolve().parent.parent)


def notebook_config(config_path: str | Path | None = None,
                    overrides: Mapping[str, Any] | None = None, **parameters: Any) -> Config:
    """The config of a notebook run: its named ``parameters`` (``epochs=3``; see
    ``NOTEBOOK_PARAMETERS``; None keeps the file's value) and then ``overrides``."""
    unknown = sorted(set(parameters) - set(NOTEBOOK_PARAMETERS))
    if unknown:
        raise ConfigError([f"unknown notebook parameter(s) {', '.join(unknown)}; known are "
                           f"{', '.join(NOTEBOOK_PARAMETERS)}; set other keys in overrides"])
    named = {NOTEBOOK_PARAMETERS[name]: value for name, value in parameters.items()
             if value is not None}
    return load_config(config_path, {**named, **(overrides or {})})


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested
