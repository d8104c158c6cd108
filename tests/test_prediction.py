"""One ranking of classes everywhere: ``imgcls predict`` on a model folder or an export, and the
server's upload answer (which its page shows as it is), list tied classes in the same order."""

import json
import shutil

import numpy as np

from imgcls_utils import model_utils
from imgcls_utils.quiet_tensorflow import keras
from imgcls_utils.serving.app import create_app
from imgcls_utils.serving.prediction import predict, top_k
from imgcls_utils.serving.settings import ServeSettings
from imgcls_utils.training.model_folders import MANIFEST_FILE, MODEL_FILE, file_hashes
from imgcls_utils.training.models import output_layer
from tests.conftest import write_image
from tests.test_server import started


def test_top_k_orders_by_probability_and_keeps_class_order_among_ties():
    assert top_k(np.array([0.1, 0.3, 0.1, 0.3, 0.2]), 5).tolist() == [1, 3, 4, 0, 2]
    assert top_k(np.full(10, 0.1, np.float32), 3).tolist() == [0, 1, 2]
    assert top_k(np.array([0.5, 0.5]), 1).tolist() == [0]


def tied_model_folder(served_model, tmp_path):
    """The session's model folder with its output layer zeroed: every class gets exactly 0.1
    (its manifest rewritten, as training would have written it)."""
    _, folder, _ = served_model
    tied = shutil.copytree(folder, tmp_path / "tied_digits")
    model = keras.saving.load_model(tied / MODEL_FILE)
    for weight in output_layer(model).weights:
        weight.assign(np.zeros(weight.shape, weight.dtype))
    model.save(tied / MODEL_FILE)
    manifest = json.loads((tied / MANIFEST_FILE).read_text())
    manifest["files"] = file_hashes(tied)
    (tied / MANIFEST_FILE).write_text(json.dumps(manifest))
    return tied


def test_tied_classes_are_ranked_alike_by_predict_the_export_and_the_server(served_model,
                                                                           tmp_path):
    cfg, _, _ = served_model
    folder = tied_model_folder(served_model, tmp_path)
    image = write_image(tmp_path / "digit.png", size=(16, 16), mode="L", seed=4)
    export = model_utils.export_model(folder, tmp_path / "exports").folder

    expected = [("0", 0.1), ("1", 0.1), ("2", 0.1)]
    for model in (folder, export):
        [prediction] = predict(model, [image], top_k=3)
        assert [label for label, _ in prediction.top] == [label for label, _ in expected]
        np.testing.assert_allclose([p for _, p in prediction.top], 0.1, atol=1e-6)

    app = create_app(export.parent, ServeSettings.from_config(cfg))
    with started(app) as client:
        answer = client.post("/predict?top_k=3", files={"file": ("digit.png", image.read_bytes())})
    assert answer.status_code == 200, answer.text
    assert [p["label"] for p in answer.json()["predictions"]] == [label for label, _ in expected]
