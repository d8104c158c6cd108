"""The notebooks as papermill runs them (nbval re-runs the committed default run): the
Model_Training notebook trains exactly as `imgcls train` does, every model family runs through
it, and each notebook's parameters cell declares only what the notebook uses."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import papermill
import pytest

from imgcls_utils.config import CONFIG_RELATIVE_PATH, Section
from imgcls_utils.config_rules import NOTEBOOK_PARAMETERS
from imgcls_utils.experiments.notebook_runs import kernel_name
from imgcls_utils.model_utils import load_model_folder, predict_files
from tests.conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
# An epoch is one pass over the digits' training split (the default 50 steps make it 2.5 passes).
QUICK = {"data.image_size": [16, 16], "train.epochs": 1, "model.dense_units": 16,
         "transfer.fine_tune_epochs": 1, "train.min_steps_per_epoch": 1}


def run_model_training(project: Path, output: Path, overrides: dict, model_dir: Path,
                       export: bool = False):
    """Model_Training through papermill; without the export (test_export.py tests it) unless
    ``export``."""
    papermill.execute_notebook(
        NOTEBOOKS / "Model_Training.ipynb", output, kernel_name=kernel_name(),
        cwd=str(NOTEBOOKS), progress_bar=False,
        parameters={"config_path": str(project / CONFIG_RELATIVE_PATH), "overrides": overrides,
                    "model_dir": str(model_dir), "export": export})


def test_the_notebook_and_the_command_line_train_the_same_model(project, tmp_path):
    run = {"data.image_size": [16, 16], "model.family": "mlp", "model.dense_units": 64,
           "train.epochs": 4, "train.min_steps_per_epoch": 1, "train.verbose": 2,
           "hardware.deterministic": True}
    from_notebook = project / "Trained_Models" / "from_notebook"
    run_model_training(project, tmp_path / "run.ipynb", run, from_notebook)
    done = subprocess.run([sys.executable, "-m", "imgcls_utils.cli", "train",
                           *[f"--set={key}={json.dumps(value)}" for key, value in run.items()]],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("epoch ")] \
        == [f"epoch {epoch}/4 (train)" for epoch in range(1, 5)]
    # Deterministic ops with the augmentation once made tf.data log an E0000 line every run.
    assert not [line for line in done.stderr.splitlines() if line.startswith("E0000")], done.stderr
    from_cli = Path(done.stdout.split("model folder: ")[1].split("\n")[0].strip())
    notebook, cli = (json.loads((folder / "metrics.json").read_text())
                     for folder in (from_notebook, from_cli))
    assert notebook["test_accuracy"] > 0.5  # it learned: the equality below is not two guesses
    assert notebook["test_accuracy"] == cli["test_accuracy"]
    assert notebook["confusion_matrix"] == cli["confusion_matrix"]
    pd.testing.assert_frame_equal(pd.read_csv(from_notebook / "history.csv"),
                                  pd.read_csv(from_cli / "history.csv"), check_exact=True)


def test_model_training_notebook_trains_a_transfer_model(project, tmp_path):
    model_dir = project / "Trained_Models" / "transfer_run"
    output = tmp_path / "transfer.ipynb"
    run_model_training(project, output, {
        **QUICK, "model.family": "transfer", "transfer.backbone": "mobilenet_v2",
        "transfer.alpha": 0.35, "transfer.weights": "none",
        # An epoch from scratch can lose to the SVM on validation: keep the transfer model itself.
        "model.candidates": "network"}, model_dir)
    model, class_names, config = load_model_folder(model_dir)
    assert config["model"]["family"] == "transfer" and class_names == [str(d) for d in range(10)]
    assert "backbone" in {layer.name for layer in model.layers}
    three = next((project / "data" / "Raw_Data" / "digits" / "3").glob("*.png"))
    [prediction] = predict_files(model, class_names, config, [three], 10)  # the loaded model
    assert sorted(label for label, _ in prediction.top) == class_names
    assert json.loads((model_dir / "metrics.json").read_text())["test_images"] == 271
    executed = nbformat.read(output, as_version=4)
    text = "".join(out.get("text", "") for cell in executed.cells for out in cell.get("outputs", []))
    assert "saved Trained_Models/transfer_run" in text


def code_cells(name: str) -> list[nbformat.NotebookNode]:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def names_used(source: str) -> set[str]:
    return {node.id for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


@pytest.fixture
def keys_read(monkeypatch) -> set[str]:
    """The ``section.key`` names that code reads from a Config by attribute while the test
    runs (saving or fingerprinting a whole section reads it by iteration, which is not counted)."""
    read = set()
    original = Section.__getattr__

    def recording(self, key):
        read.add(f"{self._name}.{key}")
        return original(self, key)

    monkeypatch.setattr(Section, "__getattr__", recording)
    return read


@pytest.mark.parametrize("name", ["Data_Exploration", "Data_Preprocessing", "Model_Training"])
def test_each_notebook_declares_only_parameters_it_uses(name, project, keys_read, monkeypatch):
    """Runs the notebook's code in this process with quick settings, recording which config keys
    it reads: a parameter for a key the notebook never reads (epochs in Data_Exploration) fails."""
    matplotlib.use("Agg")
    cells = code_cells(name)
    parameters_cell = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    declared = {target.id for node in ast.parse(parameters_cell.source).body
                for target in node.targets}
    later = set().union(*(names_used(cell.source) for cell in cells if cell is not parameters_cell))
    assert not declared - later, f"{name} declares parameters it never uses: {declared - later}"

    namespace: dict = {}
    exec(parameters_cell.source, namespace)
    namespace.update(config_path=str(project / CONFIG_RELATIVE_PATH),
                     overrides={**QUICK, "model.family": "mlp", "train.verbose": 0},
                     model_dir=str(project / "Trained_Models" / "parameters_run"), export=False)
    monkeypatch.chdir(NOTEBOOKS)
    for cell in cells[cells.index(parameters_cell) + 1:]:
        exec(cell.source, namespace)
        plt.close("all")  # Agg keeps every figure a cell shows
    unread = {parameter: NOTEBOOK_PARAMETERS[parameter] for parameter in declared
              if parameter in NOTEBOOK_PARAMETERS and NOTEBOOK_PARAMETERS[parameter] not in keys_read}
    assert not unread, f"{name} declares parameters for keys it never reads: {unread}"
