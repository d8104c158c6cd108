"""The notebooks as papermill runs them: parameters injected, every model family trained end to
end on the embedded digits in a throwaway project (nbval re-runs the committed default run)."""

import json

import nbformat
import papermill
import pytest

from imgcls_utils.cli import _kernel_name
from imgcls_utils.config import CONFIG_RELATIVE_PATH
from imgcls_utils.model_utils import load_model_folder
from tests.conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
QUICK = {"data.image_size": [16, 16], "train.epochs": 1, "model.dense_units": 16,
         "train.fine_tune_epochs": 1}


@pytest.mark.parametrize("family, options", [
    ("mlp", {}),
    ("transfer", {"model.backbone": "mobilenet_v2", "model.backbone_alpha": 0.35,
                  "model.weights": "none"}),
])
def test_model_training_notebook_trains_each_family(project, family, options, tmp_path):
    model_dir = project / "Trained_Models" / f"{family}_run"
    output = tmp_path / f"{family}.ipynb"
    papermill.execute_notebook(
        NOTEBOOKS / "Model_Training.ipynb", output, kernel_name=_kernel_name(),
        cwd=str(NOTEBOOKS), progress_bar=False,
        parameters={"config_path": str(project / CONFIG_RELATIVE_PATH), "model_family": family,
                    "overrides": {**QUICK, **options}, "model_dir": str(model_dir)})
    model, class_names, config = load_model_folder(model_dir)
    assert config["model"]["family"] == family and class_names == [str(d) for d in range(10)]
    assert json.loads((model_dir / "metrics.json").read_text())["test_images"] == 270
    executed = nbformat.read(output, as_version=4)
    text = "".join(out.get("text", "") for cell in executed.cells for out in cell.get("outputs", []))
    assert f"saved Trained_Models/{family}_run" in text
    assert ("backbone" in {layer.name for layer in model.layers}) == (family == "transfer")
