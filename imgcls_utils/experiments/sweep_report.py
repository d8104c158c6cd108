"""A sweep's results as tables: one row per run, mean ± std over seeds per setting, and which
settings differ from the best by more than the seed-to-seed spread.

Everything is read from the sweep folder (``results.csv``, ``sweep.yaml`` and each run's
``history.csv`` and ``metrics.json``), never from Trained_Models, so a sweep folder without its
models (``docs/example_sweep``) still makes its report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from .sweep import SPEC_FILE
from .tables import markdown_table, plus_minus

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
SUMMARY_CSV = "summary.csv"
METRICS = ("test_accuracy", "macro_f1", "val_accuracy")
# A difference counts as real when it exceeds this many pooled seed standard deviations.
SPREADS = 2


def swept_keys(folder: Path) -> list[str]:
    """The keys a sweep varied, in the order of its grid."""
    return yaml.safe_load((Path(folder) / SPEC_FILE).read_text())["keys"]


def results_table(results: list[dict], keys: list[str]) -> pd.DataFrame:
    """One row per run: its settings, seed, metrics, model folder, status and error."""
    columns = ["run", *keys, "seed", "test_accuracy", "macro_f1", "val_accuracy", "parameters",
               "training_seconds", "model_folder", "status", "error"]
    return pd.DataFrame(results).reindex(columns=columns)


def write_tables(folder: Path, results: pd.DataFrame, keys: list[str]) -> list[Path]:
    """``results.csv``, ``summary.csv`` and ``results.md`` (both tables) in the sweep folder."""
    folder = Path(folder)
    summary = summarize(results, keys)
    results.to_csv(folder / RESULTS_CSV, index=False)
    summary.to_csv(folder / SUMMARY_CSV, index=False)
    (folder / RESULTS_MD).write_text(
        f"# Sweep {folder.name}\n\n## Runs\n\n{markdown_table(results.fillna(''))}\n\n"
        f"## Mean ± std over seeds\n\n{markdown_table(with_spread(summary, keys))}\n")
    return [folder / RESULTS_CSV, folder / SUMMARY_CSV, folder / RESULTS_MD]


def load_results(folder: Path) -> pd.DataFrame:
    """The runs table of a sweep folder."""
    return pd.read_csv(Path(folder) / RESULTS_CSV, keep_default_na=False, na_values=[""])


def setting_label(row: pd.Series, keys: list[str]) -> str:
    """``family=cnn, learning_rate=0.003``: a setting by the last part of each swept key."""
    return ", ".join(f"{key.split('.')[-1]}={row[key]}" for key in keys) or "defaults"


def summarize(results: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per setting (finished runs only): runs, mean and std of each metric (std NaN for one
    seed), mean training seconds; in the order the sweep ran them."""
    finished = results[results["status"] == "ok"].copy()
    finished["setting"] = [setting_label(row, keys) for _, row in finished.iterrows()]
    grouped = finished.groupby("setting", sort=False)
    summary = grouped[list(keys)].first() if keys else pd.DataFrame(index=grouped.size().index)
    summary["runs"] = grouped.size()
    for metric in METRICS:
        summary[f"{metric}_mean"] = grouped[metric].mean()
        summary[f"{metric}_std"] = grouped[metric].std()
    summary["training_seconds_mean"] = grouped["training_seconds"].mean()
    return summary.reset_index()


def with_spread(summary: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The summary as people read it: ``0.9815 ± 0.0040`` per metric."""
    shown = summary[[*keys, "runs"]].copy()
    for metric in METRICS:
        shown[metric] = [plus_minus(mean, std) for mean, std in
                         zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
    shown["training_seconds"] = summary["training_seconds_mean"].round(1)
    return shown


def differences_from_best(summary: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """Each setting against the one with the best mean validation accuracy: the difference in
    mean ``metric``, the pooled seed std, and whether the difference is larger than
    ``SPREADS`` pooled stds (unknown with one seed per setting)."""
    best = summary.loc[summary["val_accuracy_mean"].idxmax()]
    rows = []
    for _, row in summary.iterrows():
        difference = row[f"{metric}_mean"] - best[f"{metric}_mean"]
        pooled = math.sqrt((row[f"{metric}_std"] ** 2 + best[f"{metric}_std"] ** 2) / 2)
        larger = "best" if row["setting"] == best["setting"] else (
            "unknown (one seed)" if math.isnan(pooled) else
            "yes" if abs(difference) > SPREADS * pooled else "no")
        rows.append({"setting": row["setting"], "runs": row["runs"],
                     f"{metric}_mean": round(row[f"{metric}_mean"], 4),
                     "difference": round(difference, 4), "pooled_std": round(pooled, 4),
                     f"larger than {SPREADS} x spread": larger})
    return pd.DataFrame(rows)


def ranked_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Finished runs, best first by validation accuracy (the test split does not choose)."""
    finished = results[results["status"] == "ok"]
    return finished.sort_values(["val_accuracy", "test_accuracy"], ascending=False)


def run_history(folder: Path, run: str) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / run / "history.csv")


def run_metrics(folder: Path, run: str) -> dict:
    return json.loads((Path(folder) / run / "metrics.json").read_text())


def newest_sweep(runs_dir: Path, example: Path) -> Path:
    """The newest sweep folder with results under ``runs_dir``, else ``example``."""
    folders = sorted(p.parent for p in Path(runs_dir).glob(f"*/{RESULTS_CSV}")
                     if (p.parent / SPEC_FILE).is_file())
    return max(folders, key=lambda p: (p / RESULTS_CSV).stat().st_mtime) if folders else Path(example)


def best_runs(folder: Path, results: pd.DataFrame, count: int = 2) -> dict[str, tuple]:
    """The ``count`` best runs by validation accuracy: run id -> (history, metrics)."""
    return {run: (run_history(folder, run), run_metrics(folder, run))
            for run in ranked_runs(results)["run"].head(count)}
