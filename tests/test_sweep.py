"""imgcls sweep: grid and file parsing, validation of every run before the first starts, a real
sweep through the notebooks (one module-scoped sweep shared by most tests), failed runs as
rows, resuming, and the tables the report is made of."""

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from imgcls_utils.config import CONFIG_RELATIVE_PATH
from imgcls_utils.experiments import sweep_report, tables
from imgcls_utils.experiments.sweep import (SweepError, parse_grid_option, run_id, sweep_from_file,
                                            sweep_from_options)
from tests.conftest import REPO_ROOT
from tests.test_cli import imgcls, imgcls_light

EXAMPLE = REPO_ROOT / "docs" / "example_sweep"
QUICK = ["data.image_size=[16,16]", "train.epochs=1", "model.family=mlp", "model.dense_units=16",
         "train.min_steps_per_epoch=5", "train.verbose=0", "data.near_duplicate_distance=none",
         "train.classical_baselines=false"]


def test_grid_values_are_read_as_yaml():
    assert parse_grid_option("model.family=mlp,cnn") == ("model.family", ["mlp", "cnn"])
    assert parse_grid_option("train.learning_rate=0.001,0.003") == ("train.learning_rate",
                                                                     [0.001, 0.003])
    assert parse_grid_option("data.image_size=[16,16],[32, 32]") == ("data.image_size",
                                                                      [[16, 16], [32, 32]])
    with pytest.raises(SweepError, match="at least one value"):
        parse_grid_option("model.family=")


def test_a_grid_runs_every_combination_for_every_seed():
    sweep = sweep_from_options(["model.family=mlp,cnn", "train.learning_rate=0.001,0.003"],
                               None, 2, ["train.epochs=1"], base_seed=42)
    assert sweep.name == "sweep" and sweep.keys == ["model.family", "train.learning_rate"]
    assert len(sweep.runs) == 8 and len({run.id for run in sweep.runs}) == 8
    assert sweep.runs[0].id == "r01_family-mlp_learning_rate-0.001_seed-42"
    assert sweep.runs[7].id == "r08_family-cnn_learning_rate-0.003_seed-43"
    assert run_id(3, {"data.source": "/data/my images/", "data.image_size": [16, 16]}, 1) == \
        "r03_source-my-images_image_size-16x16_seed-1"
    assert sweep.overrides(sweep.runs[3]) == {"train.epochs": 1, "model.family": "mlp",
                                              "train.learning_rate": 0.003, "data.seed": 43}


def test_a_sweep_file_lists_runs_with_shared_overrides_and_seeds(tmp_path):
    spec = tmp_path / "sizes.yaml"
    spec.write_text("runs:\n  - {data.image_size: [16, 16]}\n"
                    "  - {data.image_size: [32, 32], model.family: mlp}\n"
                    "seeds: [1, 7]\ncommon: {train.epochs: 2}\n")
    sweep = sweep_from_file(spec, None, None, ["train.batch_size=8"], base_seed=42)
    assert sweep.name == "sizes" and sweep.keys == ["data.image_size", "model.family"]
    assert [run.id for run in sweep.runs] == [
        "r01_image_size-16x16_seed-1", "r02_image_size-16x16_seed-7",
        "r03_image_size-32x32_family-mlp_seed-1", "r04_image_size-32x32_family-mlp_seed-7"]
    assert sweep.common == {"train.epochs": 2, "train.batch_size": 8}


@pytest.mark.parametrize("text, message", [
    ("grid: {model.family: [mlp]}\nruns: [{}]\n", "exactly one of grid"),
    ("grid: {model.family: mlp}\n", "model.family needs a non-empty list"),
    ("grid: {data.seed: [1, 2]}\n", "sweep the seed with seeds:"),
    ("grids: {model.family: [mlp]}\n", "unknown key(s) grids"),
    ("grid: {model.family: [mlp]}\nseeds: 0\n", "seeds = 0"),
])
def test_a_bad_sweep_file_names_the_file_and_what_to_write(tmp_path, text, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(SweepError) as caught:
        sweep_from_file(spec, None, None, None, base_seed=42)
    assert message in str(caught.value) and str(spec) in str(caught.value)


def test_a_typo_in_a_later_run_fails_before_any_run_starts(project):
    spec = project / "typo.yaml"
    spec.write_text("runs:\n" + "  - {train.epochs: 1}\n" * 4 + "  - {train.epocs: 1}\n")
    done, heavy = imgcls_light("sweep", str(spec), cwd=project)
    assert done.returncode == 2 and not heavy, done.stderr
    assert "unknown key 'train.epocs'" in done.stderr and "did you mean 'train.epochs'" in done.stderr
    assert "(run r05_epocs-1_seed-42)" in done.stderr and "Traceback" not in done.stderr
    assert not (project / "runs").exists()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One real sweep in a scratch project: 16x16 digits (two seeds, one epoch of a small mlp)
    and a source folder that does not exist (its runs fail in their first notebook)."""
    project = tmp_path_factory.mktemp("sweep_project")
    (project / "config").mkdir()
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, project / CONFIG_RELATIVE_PATH)
    (project / "notebooks").symlink_to(REPO_ROOT / "notebooks")
    command = ["sweep", "--name", "quick", "--grid", f"data.source=digits,{project / 'missing'}",
               "--seeds", "2", *[f"--set={option}" for option in QUICK]]
    done, seconds = imgcls(*command, cwd=project, timeout=600)
    folders = list((project / "runs").glob("quick_*"))
    assert len(folders) == 1, done.stdout + done.stderr
    return project, command, done, folders[0]


def test_the_sweep_runs_every_run_and_reports_each_as_it_ends(swept):
    _, _, done, folder = swept
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert "run 1/4 r01_source-digits_seed-42 started" in lines
    assert any(line.startswith("run 2/4 done in ") and ": test accuracy 0." in line
               and "(elapsed " in line and ", ETA " in line for line in lines), lines
    assert any(line.startswith("run 4/4 failed after ") and "does not exist" in line
               for line in lines), lines
    assert "2 of 4 runs failed" in done.stderr and "\r" not in done.stdout
    assert f"report:  {folder / 'Experiments.ipynb'}" in lines


def test_the_results_table_has_every_run_failed_ones_with_their_error(swept):
    _, _, _, folder = swept
    results = sweep_report.load_results(folder)
    assert list(results["run"]) == ["r01_source-digits_seed-42", "r02_source-digits_seed-43",
                                    "r03_source-missing_seed-42", "r04_source-missing_seed-43"]
    assert list(results["status"]) == ["ok", "ok", "failed", "failed"]
    finished, failed = results.iloc[:2], results.iloc[2:]
    assert list(finished["seed"]) == [42, 43] and list(finished["data.source"]) == ["digits"] * 2
    assert (finished["test_accuracy"] > 0.2).all() and (finished["macro_f1"] > 0).all()
    assert (finished["val_accuracy"] > 0.2).all() and (finished["training_seconds"] > 0).all()
    assert (finished["parameters"] > 1000).all()
    assert all((Path(model) / "model.keras").is_file() for model in finished["model_folder"])
    assert failed["error"].str.startswith("Data_Exploration failed in cell [").all()
    assert failed["error"].str.contains("does not exist").all()
    assert "\n" not in "".join(failed["error"])
    run_dir = folder / "r01_source-digits_seed-42"
    assert {p.name for p in run_dir.iterdir()} >= {
        "1_Data_Exploration.ipynb", "2_Data_Preprocessing.ipynb", "3_Model_Training.ipynb",
        "config.yaml", "history.csv", "metrics.json"}


def test_seed_repeats_are_summarized_as_mean_and_std(swept):
    _, _, _, folder = swept
    summary = pd.read_csv(folder / "summary.csv")
    assert list(summary["setting"]) == ["source=digits"] and summary["runs"].item() == 2
    results = sweep_report.load_results(folder).iloc[:2]
    assert summary["test_accuracy_mean"].item() == pytest.approx(results["test_accuracy"].mean())
    assert summary["test_accuracy_std"].item() == pytest.approx(results["test_accuracy"].std())
    markdown = (folder / "results.md").read_text()
    assert "## Runs" in markdown and "## Mean ± std over seeds" in markdown
    assert markdown.count("| r0") == 4 and " ± " in markdown


def test_the_experiments_report_is_executed_into_the_sweep_folder(swept):
    _, _, _, folder = swept
    report = nbformat.read(folder / "Experiments.ipynb", as_version=4)
    outputs = [output for cell in report.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert f"sweep {folder.name}: 4 runs, 2 finished; swept: data.source" in text
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2


def test_running_the_same_sweep_again_skips_finished_runs(swept):
    project, command, _, folder = swept
    finished = sorted((folder / "r01_source-digits_seed-42").glob("*.ipynb"))
    modified = [path.stat().st_mtime_ns for path in finished]
    done, _ = imgcls(*command, cwd=project, timeout=600)
    assert done.returncode == 3, done.stderr
    assert f"continuing sweep {folder}: 4 runs" in done.stdout
    assert "run 1/4 r01_source-digits_seed-42 finished before: test accuracy" in done.stdout
    assert "run 2/4 r02_source-digits_seed-43 finished before" in done.stdout
    assert "run 3/4 r03_source-missing_seed-42 started" in done.stdout
    assert [path.stat().st_mtime_ns for path in finished] == modified
    assert len(list((project / "runs").glob("quick_*"))) == 1
    assert len(sweep_report.load_results(folder)) == 4


def test_the_committed_example_compares_two_settings_over_two_seeds():
    results = sweep_report.load_results(EXAMPLE)
    keys = sweep_report.swept_keys(EXAMPLE)
    summary = sweep_report.summarize(results, keys)
    assert keys == ["model.family"] and list(summary["runs"]) == [2, 2]
    differences = sweep_report.differences_from_best(summary)
    assert sorted(differences["larger than 2 x spread"])[0] == "best"
    best = sweep_report.best_runs(EXAMPLE, results)
    assert list(best) == list(sweep_report.ranked_runs(results)["run"][:2])
    history, metrics = next(iter(best.values()))
    assert {"epoch", "val_accuracy"} <= set(history.columns) and metrics["confusion_matrix"]
    assert json.loads((EXAMPLE / list(best)[0] / "metrics.json").read_text()) == metrics


def test_markdown_table_escapes_pipes_and_rounds_floats():
    table = tables.markdown_table(pd.DataFrame({"a": ["x|y"], "b": [0.123456]}))
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 0.1235 |"]
