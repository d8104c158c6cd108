"""Sweeps: many runs of the notebooks, one table to compare them (``imgcls sweep``).

A sweep is a grid of settings (or an explicit list of runs), each repeated for one or more
seeds. Every run's merged config is validated before the first run starts, so a typo in the
fifth combination fails within a second. Runs execute one after another into
``runs/<name>_<timestamp>/<run id>/``; a run that fails is a row with its error, not the end of
the sweep. Processed data is shared by every run whose data settings agree: its folder is
fingerprinted by those settings and reused (``data.processed``), so the first run with a setting
builds it and the others reuse it.

Running the same sweep again (same name, same runs) continues the newest folder of that name:
finished runs are skipped, failed and interrupted ones run again.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_config, parse_set_option
from ..errors import UserError
from ..training.progress import duration

SEED_KEY = "data.seed"
SPEC_FILE = "sweep.yaml"
RUN_FILE = "run.json"
RESULT_FILE = "result.json"
REPORT_NOTEBOOK = "Experiments"
# What a run's folder keeps of its model folder: enough for the report, without the weights.
REPORTED_FILES = ("history.csv", "metrics.json")
SPEC_KEYS = ("name", "grid", "runs", "seeds", "common")


class SweepError(UserError):
    """A sweep specification that cannot be run, naming the file or option and what to do."""


@dataclass(frozen=True)
class SweepRun:
    """One run: its id, the swept settings (``section.key -> value``) and its seed."""

    id: str
    settings: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class Sweep:
    """The runs of a sweep and the overrides they share; ``keys`` are the swept keys."""

    name: str
    keys: list[str]
    common: dict[str, Any]
    runs: list[SweepRun]

    def overrides(self, run: SweepRun) -> dict[str, Any]:
        return {**self.common, **run.settings, SEED_KEY: run.seed}

    def to_dict(self) -> dict:
        return {"name": self.name, "keys": self.keys, "common": self.common,
                "runs": [{"id": r.id, "settings": r.settings, "seed": r.seed} for r in self.runs]}


# ----------------------------------------------------------------------------- specification

def parse_grid_option(option: str) -> tuple[str, list[Any]]:
    """``"train.learning_rate=0.001,0.003"`` -> ``("train.learning_rate", [0.001, 0.003])``;
    values are read as YAML, so ``data.image_size=[16,16],[32,32]`` is two sizes."""
    key, raw = parse_set_option(option)[0], option.partition("=")[2]
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError:
        values = None
    if not values or None in values:
        raise SweepError(f"--grid {option!r}: expected section.key=value,value,... with at least "
                         "one value, e.g. --grid train.learning_rate=0.001,0.003")
    return key, values


def sweep_from_options(grid: list[str], name: str | None, seeds: int | None,
                       set_options: list[str] | None, base_seed: int) -> Sweep:
    """The sweep that ``--grid`` options describe (``--set`` options are shared by every run)."""
    pairs = [parse_grid_option(option) for option in grid]
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise SweepError(f"--grid names a key twice ({', '.join(keys)}); give each key once "
                         "with all its values")
    common = dict(parse_set_option(option) for option in set_options or [])
    return make_sweep(name or "sweep", dict(pairs), None, seeds or 1, common, base_seed, "--grid")


def sweep_from_file(path: Path, name: str | None, seeds: int | None,
                    set_options: list[str] | None, base_seed: int) -> Sweep:
    """The sweep a YAML file describes (``name``, ``grid`` or ``runs``, ``seeds``, ``common``);
    ``name``, ``seeds`` and ``set_options`` given on the command line win."""
    spec = _read_spec(path)
    common = {**_mapping(spec.get("common", {}), path, "common"),
              **dict(parse_set_option(option) for option in set_options or [])}
    return make_sweep(name or spec.get("name") or path.stem, spec.get("grid"), spec.get("runs"),
                      seeds or spec.get("seeds", 1), common, base_seed, str(path))


def _read_spec(path: Path) -> dict:
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SweepError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(spec, Mapping):
        raise SweepError(f"{path} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)}; a sweep file has "
                         f"{', '.join(SPEC_KEYS)}")
    if ("grid" in spec) == ("runs" in spec):
        raise SweepError(f"{path} needs exactly one of grid: (key: [values]) or runs: (a list "
                         "of override mappings)")
    return spec


def _mapping(value: Any, source: Any, what: str) -> dict:
    if not isinstance(value, Mapping):
        raise SweepError(f"{source}: {what} must be a mapping of section.key: value")
    return dict(value)


def make_sweep(name: str, grid: Mapping | None, runs: list | None, seeds: Any,
               common: dict[str, Any], base_seed: int, source: str) -> Sweep:
    """Expand a grid (every combination, in the order given) or take the explicit runs, and
    repeat each for ``seeds`` seeds (``base_seed``, ``base_seed + 1``, ...) or the listed ones."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
        raise SweepError(f"sweep name {name!r} ({source}): use letters, digits, '-' and '_'")
    settings = _grid_settings(grid, source) if grid is not None else _explicit_settings(runs, source)
    keys = list(dict.fromkeys(key for setting in settings for key in setting))
    if SEED_KEY in keys:
        raise SweepError(f"{source}: sweep the seed with seeds: (a count or a list), not as "
                         f"{SEED_KEY} in the grid or runs")
    seed_list = _seed_list(seeds, common.get(SEED_KEY, base_seed), source)
    combos = [(setting, seed) for setting in settings for seed in seed_list]
    width = max(2, len(str(len(combos))))
    return Sweep(str(name), keys, common, [SweepRun(run_id(number, setting, seed, width), setting, seed)
                                           for number, (setting, seed) in enumerate(combos, 1)])


def _grid_settings(grid: Any, source: str) -> list[dict[str, Any]]:
    grid = _mapping(grid, source, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{source}: grid key {key} needs a non-empty list of values, e.g. "
                             f"{key}: [a, b]")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _explicit_settings(runs: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(runs, list) or not runs:
        raise SweepError(f"{source}: runs must be a non-empty list of override mappings")
    return [_mapping(run, source, f"runs[{index}]") for index, run in enumerate(runs)]


def _seed_list(seeds: Any, base_seed: int, source: str) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        return [base_seed + repeat for repeat in range(seeds)]
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
        return list(seeds)
    raise SweepError(f"{source}: seeds = {seeds!r}: give a number of repeats (>= 1) or a list "
                     "of integer seeds")


def run_id(number: int, settings: Mapping[str, Any], seed: int, width: int = 2) -> str:
    """A short readable id: ``r03_family-cnn_learning_rate-0.003_seed-43``."""
    parts = [f"{key.split('.')[-1]}-{_slug(value)}" for key, value in settings.items()]
    return "_".join([f"r{number:0{width}d}", *(parts or ["defaults"]), f"seed-{seed}"])


def _slug(value: Any) -> str:
    """A value in a few id-safe characters: ``16x16`` for a size, a folder by its last name."""
    text = "x".join(map(str, value)) if isinstance(value, list) else str(value).rstrip("/")
    text = text.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:24] or "-"


def validate_sweep(sweep: Sweep, config_path: Path | None) -> None:
    """Validate every run's merged config; all problems in one ConfigError, each naming the
    runs it occurs in."""
    problems: dict[str, list[str]] = {}
    for run in sweep.runs:
        try:
            load_config(config_path, overrides=sweep.overrides(run))
        except ConfigError as error:
            for problem in error.problems:
                problems.setdefault(problem, []).append(run.id)
    if problems:
        raise ConfigError([f"{problem} (run{'s' * (len(ids) > 1)} {', '.join(ids)})"
                           for problem, ids in problems.items()])


# ----------------------------------------------------------------------------- folders

def sweep_folder(sweep: Sweep, runs_dir: Path, new: bool = False) -> tuple[Path, bool]:
    """The newest folder of a sweep of this name with the same runs (resumed), or a new
    ``<runs_dir>/<name>_<timestamp>/`` holding the spec; and whether it was resumed."""
    named = sorted(folder for folder in Path(runs_dir).glob(f"{sweep.name}_*")
                   if re.fullmatch(rf"{re.escape(sweep.name)}_\d{{8}}-\d{{6}}", folder.name)
                   and (folder / SPEC_FILE).is_file())
    if named and not new and yaml.safe_load((named[-1] / SPEC_FILE).read_text()) == sweep.to_dict():
        return named[-1], True
    folder = Path(runs_dir) / f"{sweep.name}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    # Through JSON: runs that share settings would otherwise be written as YAML anchors.
    spec = json.loads(json.dumps(sweep.to_dict()))
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder, False


def finished_result(run_folder: Path) -> dict | None:
    """The result of a run that finished (its model folder complete), else None."""
    path = run_folder / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    done = result["status"] == "ok" and (Path(result["model_folder"]) / "metrics.json").is_file()
    return result if done else None


# ----------------------------------------------------------------------------- running

RunNotebooks = Callable[[Path, dict[str, Any], Path], None]


def run_sweep(sweep: Sweep, folder: Path, run_notebooks: RunNotebooks,
              new_model_dir: Callable[[dict[str, Any]], Path]) -> list[dict]:
    """Run every unfinished run in order (``run_notebooks(run_dir, overrides, model_dir)``),
    printing a line as each starts and ends; the results, one per run, in order."""
    results, durations, started = [], [], time.monotonic()
    total = len(sweep.runs)
    for number, run in enumerate(sweep.runs, start=1):
        run_dir = folder / run.id
        previous = finished_result(run_dir)
        if previous:
            print(f"run {number}/{total} {run.id} finished before: test accuracy "
                  f"{previous['test_accuracy']:.4f} (skipped)", flush=True)
            results.append(previous)
            continue
        print(f"run {number}/{total} {run.id} started", flush=True)
        run_started = time.monotonic()
        result = _run_one(sweep, run, run_dir, run_notebooks, new_model_dir)
        durations.append(time.monotonic() - run_started)
        remaining = sum(not finished_result(folder / r.id) for r in sweep.runs[number:])
        outcome = (f"done in {durations[-1]:.0f} s: test accuracy {result['test_accuracy']:.4f}"
                   if result["status"] == "ok"
                   else f"failed after {durations[-1]:.0f} s: {result['error']}")
        print(f"run {number}/{total} {outcome} (elapsed {duration(time.monotonic() - started)}, "
              f"ETA {duration(remaining * sum(durations) / len(durations))})", flush=True)
        results.append(result)
    return results


def _run_one(sweep: Sweep, run: SweepRun, run_dir: Path, run_notebooks: RunNotebooks,
             new_model_dir: Callable[[dict[str, Any]], Path]) -> dict:
    """Execute one run into ``run_dir`` and write its result; a failure is the result's error."""
    overrides = sweep.overrides(run)
    _clear_interrupted(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model_dir = new_model_dir(overrides)
    (run_dir / RUN_FILE).write_text(json.dumps({"model_folder": str(model_dir)}, indent=2))
    result = {"run": run.id, **run.settings, "seed": run.seed}
    try:
        run_notebooks(run_dir, overrides, model_dir)
        result.update(status="ok", **model_results(model_dir, run_dir), error="")
    except Exception as error:  # noqa: BLE001 -- a failed run is a row; the sweep goes on
        message = str(error) if isinstance(error, UserError) else traceback.format_exception_only(
            error)[-1]
        print(f"imgcls: run {run.id}: {message.strip()}", flush=True)
        result.update(status="failed", model_folder=str(model_dir),
                      error=message.strip().splitlines()[0])
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def _clear_interrupted(run_dir: Path) -> None:
    """Remove what an interrupted or failed attempt of this run left: its notebooks, and the
    ``.resumable`` folder of the model it was training (the sweep made it; it starts over)."""
    info = run_dir / RUN_FILE
    if info.is_file():
        model_dir = Path(json.loads(info.read_text())["model_folder"])
        shutil.rmtree(model_dir.with_name(model_dir.name + ".resumable"), ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def model_results(model_dir: Path, run_dir: Path) -> dict:
    """A finished run's numbers from its model folder; its history and metrics are copied next
    to the executed notebooks, so that the report needs nothing from Trained_Models."""
    for name in REPORTED_FILES:
        shutil.copy(model_dir / name, run_dir / name)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    import pandas as pd

    history = pd.read_csv(model_dir / "history.csv")
    best_epoch = history.loc[history["val_loss"].idxmin()]
    return {"test_accuracy": metrics["test_accuracy"], "macro_f1": metrics["macro_f1"],
            "val_accuracy": float(best_epoch["val_accuracy"]),
            "parameters": metrics.get("parameters"),
            "training_seconds": metrics.get("training_seconds"), "model_folder": str(model_dir)}
