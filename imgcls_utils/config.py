"""Typed run configuration: the YAML defaults, merged with overrides, validated once up front.

The defaults live only in ``config/Hyperparameters.yaml``; ``config_rules`` knows the type and
the allowed values of each key (``RULES``) and nothing else; this module merges and checks. Importing it does not import TensorFlow,
so a config mistake is reported within a second.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config_rules import MOVED, NOTEBOOK_PARAMETERS, RULES, Rule, cross_field_problems
from .errors import UserError

CONFIG_RELATIVE_PATH = Path("config") / "Hyperparameters.yaml"
# Names a config file that replaces the project's own wherever none is given.
CONFIG_VARIABLE = "IMGCLS_CONFIG"


class ConfigError(UserError):
    """One or more problems in a run's configuration, each naming the key and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


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

    def updated(self, changes: Mapping[str, Any]) -> Config:
        """A copy with ``section.key -> value`` changes: the values a run chose for ``auto``
        settings, so that what it saves says what it used."""
        values = self.to_dict()
        for key, value in changes.items():
            section, name = key.split(".", 1)
            values[section][name] = value
        return Config(values, self.root)

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
    return problems or (cross_field_problems(values) if rules is RULES else [])


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
