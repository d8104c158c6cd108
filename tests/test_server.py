"""``imgcls serve``: TensorFlow Serving's REST API on a real export (predict in every format,
status, metadata, its errors), uploads, every kind of bad input answered with a 4xx JSON error,
the API key, the body limit, /healthz and /metrics, warm-up, batching and hot reload on a real
uvicorn server. One tiny digits model is served_model and exported for the whole module."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from imgcls_utils.config import CONFIG_RELATIVE_PATH
from imgcls_utils.errors import UserError
from imgcls_utils.quiet_tensorflow import tf
from imgcls_utils.serving.app import create_app
from imgcls_utils.serving.export import ASSETS_EXTRA, EXPORT_INFO
from imgcls_utils.serving.settings import ServeSettings, resolve_target
from tests.live_server import live_server, swap_under_load
from tests.sample_files import write_png_claiming_size
from tests.test_cli import imgcls

with warnings.catch_warnings():  # Starlette would rather its TestClient ran on httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NAME = "digits_cnn"
PREDICT = f"/v1/models/{NAME}:predict"
FAST = {"poll_seconds": 0.2}


@pytest.fixture(scope="module")
def digits(served_model) -> list[bytes]:
    """Ten real digit PNGs, one per class."""
    raw = served_model[0].path("raw_dir") / "digits"
    return [sorted((raw / str(label)).glob("*.png"))[0].read_bytes() for label in range(10)]


@pytest.fixture(scope="module")
def saved_model(served_model):
    return tf.saved_model.load(str(served_model[2]))


def settings_for(cfg, **overrides) -> ServeSettings:
    return ServeSettings.from_config(cfg, **{**FAST, **overrides})


@contextmanager
def started(app) -> Iterator[TestClient]:
    """A TestClient whose lifespan has run and whose model is AVAILABLE."""
    with TestClient(app) as client:
        assert app.state.manager.available.wait(60), app.state.manager.waiting_for()
        yield client


@pytest.fixture(scope="module")
def served(served_model):
    """The app serving the export, shared by the tests that do not change its settings."""
    app = create_app(served_model[2].parent, settings_for(served_model[0]))
    with started(app) as client:
        yield app, client


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def png(size=(20, 20), fmt="PNG", mode="L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 200).save(buffer, fmt)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the API

def test_every_request_format_agrees_with_the_saved_model(served, saved_model, digits):
    _, client = served
    expected = saved_model.signatures["serving_default"](images=tf.constant(digits))
    probabilities = expected["probabilities"].numpy()
    classes = [name.decode() for name in expected["classes"].numpy()]

    rows = client.post(PREDICT, json={"instances": [b64(d) for d in digits]})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert [p["classes"] for p in predictions] == classes
    np.testing.assert_allclose([p["probabilities"] for p in predictions], probabilities,
                               atol=1e-6)

    named = client.post(f"/v1/models/{NAME}/versions/1:predict",
                        json={"instances": [{"images": b64(d)} for d in digits[:3]]}).json()
    # Three digits in a batch of 3 and in a batch of 10: float kernels may differ in the last
    # bits with the batch size, so the probabilities agree to 1e-6, not exactly.
    assert [p["classes"] for p in named["predictions"]] == classes[:3]
    np.testing.assert_allclose([p["probabilities"] for p in named["predictions"]],
                               probabilities[:3], atol=1e-6)

    for inputs in ({"images": [b64(d) for d in digits]}, [b64(d) for d in digits]):
        columns = client.post(PREDICT, json={"inputs": inputs})
        assert columns.status_code == 200, columns.text
        outputs = columns.json()["outputs"]
        assert outputs["classes"] == classes
        np.testing.assert_allclose(outputs["probabilities"], probabilities, atol=1e-6)

    pixels = saved_model.preprocess(tf.constant(digits)).numpy()
    direct = saved_model.signatures["pixels"](pixels=tf.constant(pixels))
    answer = client.post(PREDICT, json={"signature_name": "pixels",
                                        "instances": pixels.tolist()})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose([p["probabilities"] for p in answer.json()["predictions"]],
                               direct["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_allclose(direct["probabilities"].numpy(), probabilities, atol=1e-6)


def test_status_and_metadata_have_tensorflow_servings_shape(served, served_model):
    _, client = served
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert client.get(f"/v1/models/{NAME}").json() == status
    assert client.get(f"/v1/models/{NAME}/versions/1").json() == status
    metadata = client.get(f"/v1/models/{NAME}/metadata").json()
    assert metadata["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "pixels"} <= set(signatures)
    images = signatures["serving_default"]["inputs"]["images"]
    assert images["dtype"] == "DT_STRING" and images["name"].endswith(":0")
    assert images["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}],
                                      "unknown_rank": False}
    pixels = signatures["pixels"]["inputs"]["pixels"]
    assert [dim["size"] for dim in pixels["tensor_shape"]["dim"]] == ["-1", "16", "16", "1"]
    outputs = signatures["serving_default"]["outputs"]
    assert [dim["size"] for dim in outputs["probabilities"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert outputs["classes"]["dtype"] == "DT_STRING"
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert client.get(f"/v1/models/{NAME}/versions/1/metadata").json() == metadata


def test_upload_answers_the_top_k_labels(served, digits):
    _, client = served
    rows = client.post(PREDICT, json={"instances": [b64(digits[7])]}).json()["predictions"][0]
    answer = client.post("/predict?top_k=2", files={"file": ("seven.png", digits[7])})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["version"], len(body["predictions"])) == (NAME, 1, 2)
    best = np.argsort(rows["probabilities"])[::-1][:2]
    assert [p["label"] for p in body["predictions"]] == [str(i) for i in best]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(
        [rows["probabilities"][i] for i in best])
    default = client.post("/predict", files={"file": ("seven.png", digits[7])}).json()
    assert len(default["predictions"]) == 3  # serve.top_k
    for fmt, mode in (("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB")):
        other = client.post("/predict", files={"file": ("x", png((64, 48), fmt, mode))})
        assert other.status_code == 200, (fmt, other.text)
    assert client.get("/").status_code == 200 and 'name="file"' in client.get("/").text


def bad_requests(digits: list[bytes], tmp: Path) -> list[tuple]:
    """``(what, method, path, request arguments, status, message fragment)``."""
    truncated = digits[1][:60]
    bomb = write_png_claiming_size(tmp / "bomb.png", 30_000, 30_000).read_bytes()
    over = write_png_claiming_size(tmp / "over.png", 10_000, 9_000).read_bytes()
    safe = base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode()
    one = [b64(digits[0])]
    return [
        ("empty body", "POST", PREDICT, {"content": b""}, 400,
         "JSON Parse error: The document is empty"),
        ("malformed JSON", "POST", PREDICT, {"content": b'{"instances": ['}, 400,
         "JSON Parse error"),
        ("not UTF-8", "POST", PREDICT, {"content": b"\xff\xfe{}"}, 400, "JSON Parse error"),
        ("not an object", "POST", PREDICT, {"json": [1, 2]}, 400, "Is not object"),
        ("no instances", "POST", PREDICT, {"json": {"images": one}}, 400,
         "Missing 'inputs' or 'instances' key"),
        ("both formats", "POST", PREDICT, {"json": {"instances": one, "inputs": one}}, 400,
         "expecting only one of 'inputs' or 'instances'"),
        ("empty instances", "POST", PREDICT, {"json": {"instances": []}}, 400,
         "No values in 'instances' array"),
        ("instances not a list", "POST", PREDICT, {"json": {"instances": "x"}}, 400,
         "Excepting 'instances' to be an list/array"),
        ("URL-safe base64", "POST", PREDICT, {"json": {"instances": [*one, {"b64": safe}]}},
         400, "instances[1]: 'b64' holds URL-safe base64"),
        ("bad base64", "POST", PREDICT, {"json": {"instances": [{"b64": "a$b"}]}}, 400,
         "instances[0]: Unable to base64 decode"),
        ("b64 object with other keys", "POST", PREDICT,
         {"json": {"instances": [{"b64": "AA==", "x": 1}]}}, 400, "keys must be equal to"),
        ("wrong input name", "POST", PREDICT, {"json": {"instances": [{"image": one[0]}]}}, 400,
         "keys must be equal to: images"),
        ("missing named input", "POST", PREDICT, {"json": {"inputs": {"pictures": one}}}, 400,
         "Missing named input: images"),
        ("number for an image", "POST", PREDICT, {"json": {"instances": [3]}}, 400,
         "not formatted correctly for base64 data"),
        ("empty image", "POST", PREDICT, {"json": {"instances": [{"b64": ""}]}}, 400,
         "instances[0]: empty image (0 bytes)"),
        ("not an image", "POST", PREDICT, {"json": {"inputs": [*one, b64(b"hello world")]}},
         400, "inputs[1]: not a PNG, JPEG, GIF or BMP image"),
        ("TIFF", "POST", PREDICT, {"json": {"instances": [b64(png(fmt="TIFF"))]}}, 400,
         "not a PNG, JPEG, GIF or BMP image (Pillow reads it as TIFF)"),
        ("truncated PNG", "POST", PREDICT, {"json": {"instances": [*one, b64(truncated)]}}, 400,
         "instances[1]: cannot decode the image"),
        ("decompression bomb", "POST", PREDICT, {"json": {"instances": [b64(bomb)]}}, 400,
         "decompression bomb"),
        ("over max_pixels", "POST", PREDICT, {"json": {"instances": [b64(over)]}}, 400,
         "instances[0]: 10000 x 9000 = 90,000,000 pixels is over data.max_pixels"),
        ("unknown model", "POST", "/v1/models/cats:predict", {"json": {"instances": one}}, 404,
         "Servable not found for request: Latest(cats)"),
        ("unknown version", "POST", f"/v1/models/{NAME}/versions/7:predict",
         {"json": {"instances": one}}, 404, f"Servable not found for request: Specific({NAME}, 7)"),
        ("version label", "POST", f"/v1/models/{NAME}/labels/stable:predict",
         {"json": {"instances": one}}, 400, "Unrecognized servable version label: stable"),
        ("unknown signature", "POST", PREDICT,
         {"json": {"signature_name": "logits", "instances": one}}, 400,
         'Serving signature name: "logits" not found in signature def'),
        ("signature name not a string", "POST", PREDICT,
         {"json": {"signature_name": 3, "instances": one}}, 400,
         "'signature_name' key must be a string value"),
        ("pixels of the wrong shape", "POST", PREDICT,
         {"json": {"signature_name": "pixels", "instances": [[[[0]] * 8] * 8]}}, 400,
         "instances[0]: pixels of shape [8, 8, 1]; this model takes [height, width, channels] "
         "= [16, 16, 1]"),
        ("ragged pixels", "POST", PREDICT,
         {"json": {"signature_name": "pixels", "instances": [[[0], [0, 1]]]}}, 400,
         "instances[0]: nested lists of unequal lengths"),
        ("pixels that are text", "POST", PREDICT,
         {"json": {"signature_name": "pixels", "inputs": [[["a"] * 16] * 16]}}, 400,
         "inputs[0]: pixels must be numbers"),
        ("pixels as base64", "POST", PREDICT,
         {"json": {"signature_name": "pixels", "instances": one}}, 400,
         "not of expected type: DT_FLOAT"),
        ("classify", "POST", f"/v1/models/{NAME}:classify", {"json": {"examples": [{}]}}, 400,
         "predict signatures only"),
        ("GET on predict", "GET", PREDICT, {}, 400, f"Malformed request: GET {PREDICT}"),
        ("PUT", "PUT", f"/v1/models/{NAME}", {}, 400, f"Malformed request: PUT /v1/models/{NAME}"),
        ("status of an unknown model", "GET", "/v1/models/cats", {}, 404,
         "Could not find any versions of model cats"),
        ("status of an unknown version", "GET", f"/v1/models/{NAME}/versions/3", {}, 404,
         f"Could not find version 3 of model {NAME}"),
        ("metadata of an unknown model", "GET", "/v1/models/cats/metadata", {}, 404,
         "Servable not found for request: Latest(cats)"),
        ("no model name", "GET", "/v1/models", {}, 400, "Missing model name in request."),
        ("upload without a file", "POST", "/predict", {"data": {"x": "1"},
                                                       "files": {"other": ("a.png", b"1")}},
         400, "no field 'file' in the multipart body"),
        ("upload as JSON", "POST", "/predict", {"json": {"instances": one}}, 400,
         "send the image as multipart/form-data in field 'file'"),
        ("upload with text for the file", "POST", "/predict", {"data": {"file": "cat.png"},
                                                               "files": {"x": ("a", b"1")}},
         400, "field 'file' is text, not a file"),
        ("upload of a text file", "POST", "/predict",
         {"files": {"file": ("notes.txt", b"not an image")}}, 400,
         "file 'notes.txt': not a PNG, JPEG, GIF or BMP image"),
        ("upload of a truncated file", "POST", "/predict",
         {"files": {"file": ("one.png", truncated)}}, 400,
         "file 'one.png': cannot decode the image"),
        ("upload with a bad top_k", "POST", "/predict?top_k=zero",
         {"files": {"file": ("one.png", digits[1])}}, 400, "top_k must be a whole number >= 1"),
        ("unknown path", "GET", "/v2/models", {}, 404, "Not Found: GET /v2/models"),
    ]


def test_bad_requests_get_a_4xx_json_error_naming_the_problem(served, digits, tmp_path):
    _, client = served
    wrong = []
    for what, method, path, arguments, status, message in bad_requests(digits, tmp_path):
        response = client.request(method, path, **arguments)
        error = response.json().get("error", "") if response.headers.get(
            "content-type", "").startswith("application/json") else response.text
        if response.status_code != status or message not in error:
            wrong.append(f"{what}: {response.status_code} {error!r}")
    assert wrong == []
    assert client.post(PREDICT, json={"instances": [b64(digits[4])]}).status_code == 200


def test_a_full_queue_answers_429_until_there_is_room(served, digits):
    app, client = served
    limit = app.state.settings.max_queued_images
    with app.state.batcher.admit(limit):  # images other requests hold
        refused = client.post(PREDICT, json={"instances": [b64(digits[2])]})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "the server is overloaded" in refused.json()["error"]
    assert client.post(PREDICT, json={"instances": [b64(digits[2])]}).status_code == 200
    too_many = client.post(PREDICT, json={"instances": [b64(digits[2])] * (limit + 1)})
    assert too_many.status_code == 400 and "over serve.max_queued_images" in too_many.text


def test_metrics_count_requests_batches_and_warm_up(served, digits):
    _, client = served
    client.post(PREDICT, json={"instances": [b64(digits[0])]})
    client.post(PREDICT, content=b"")
    text = client.get("/metrics").text
    assert re.search(r'imgcls_requests_total\{endpoint="predict",status="200"\} [1-9]', text)
    assert re.search(r'imgcls_requests_total\{endpoint="predict",status="400"\} [1-9]', text)
    assert re.search(r'imgcls_request_latency_seconds_count\{endpoint="predict"\} [1-9]', text)
    assert re.search(r"imgcls_batch_size_count [1-9]", text)
    assert f'imgcls_model_version{{model="{NAME}"}} 1.0' in text
    # the export's warm-up file holds two requests (batch sizes 1 and 8), replayed at load
    assert f'imgcls_warmup_requests_total{{model="{NAME}"}} 2.0' in text


# ----------------------------------------------------------------------------- settings

def test_the_api_key_guards_every_endpoint_but_healthz_and_the_page(served_model, digits,
                                                                    monkeypatch):
    monkeypatch.setenv("IMGCLS_API_KEY", "s3cret")
    app = create_app(served_model[2].parent, settings_for(served_model[0]))
    with started(app) as client:
        body = {"instances": [b64(digits[3])]}
        assert client.get("/healthz").status_code == 200
        missing = client.post(PREDICT, json=body)
        assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = client.post(PREDICT, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]
        for path in ("/metrics", f"/v1/models/{NAME}", f"/v1/models/{NAME}/metadata"):
            assert client.get(path).status_code == 401
        page = client.get("/")  # it asks for the key and sends it with each image
        assert page.status_code == 200 and 'data-api-key="required"' in page.text
        assert client.post(PREDICT, json=body,
                           headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post(PREDICT, json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    monkeypatch.setenv("IMGCLS_API_KEY", " ")
    with pytest.raises(UserError, match="IMGCLS_API_KEY is set but empty"):
        create_app(served_model[2].parent, settings_for(served_model[0]))


def test_bodies_over_the_limit_are_refused_while_read(served_model, digits):
    app = create_app(served_model[2].parent, settings_for(served_model[0], max_request_mb=0.01))
    with started(app) as client:
        big = json.dumps({"instances": [b64(digits[0])] * 80}).encode()
        assert len(big) > 0.01 * 1024 * 1024
        declared = client.post(PREDICT, content=big, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert "is over serve.max_request_mb = 0.01 MB (10,485 bytes)" in declared.json()["error"]
        streamed = client.post(PREDICT, content=iter([big[:8000], big[8000:]]))
        assert streamed.status_code == 413 and "(streamed)" in streamed.json()["error"]
        small = client.post(PREDICT, content=iter([json.dumps({"instances": [b64(digits[0])]})
                                                   .encode()]))
        assert small.status_code == 200, small.text


def test_healthz_is_503_until_a_version_arrives(served_model, digits, tmp_path):
    waiting = tmp_path / "exports" / NAME
    waiting.mkdir(parents=True)
    app = create_app(waiting, settings_for(served_model[0]))
    with TestClient(app) as client:
        health = client.get("/healthz")
        assert health.status_code == 503 and health.headers["retry-after"] == "1"
        assert f"no version of {NAME} under {waiting}" in health.json()["error"]
        assert client.get(f"/v1/models/{NAME}").status_code == 404
        early = client.post(PREDICT, json={"instances": [b64(digits[5])]})
        assert early.status_code == 503 and "Servable not found" in early.json()["error"]
        staging = waiting / ".1.staging"
        shutil.copytree(served_model[2], staging)
        staging.rename(waiting / "1")
        assert app.state.manager.available.wait(60)
        assert client.get("/healthz").json() == {"status": "ready", "model": NAME, "version": 1}
        assert client.post(PREDICT, json={"instances": [b64(digits[5])]}).status_code == 200


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(served_model, digits, tmp_path):
    exports = tmp_path / NAME
    shutil.copytree(served_model[2], exports / "1")
    app = create_app(exports, settings_for(served_model[0]))
    with started(app) as client:
        broken = exports / ".2.staging"
        shutil.copytree(served_model[2], broken)
        shutil.rmtree(broken / "variables")
        broken.rename(exports / "2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses = client.get(f"/v1/models/{NAME}").json()["model_version_status"]
            if statuses[0]["state"] == "END":
                break
            time.sleep(0.1)
        assert [(s["version"], s["state"]) for s in statuses] == [("2", "END"), ("1", "AVAILABLE")]
        assert statuses[0]["status"]["error_code"] == "UNKNOWN"
        assert statuses[0]["status"]["error_message"]
        assert client.post(PREDICT, json={"instances": [b64(digits[6])]}).status_code == 200
    restarted = create_app(exports, settings_for(served_model[0]))  # the newest one never loads
    with started(restarted) as client:
        assert client.get("/healthz").json()["version"] == 1


def test_a_model_folder_is_exported_unless_its_newest_export_is_of_it(served_model, tmp_path):
    cfg, folder, version = served_model
    reused = resolve_target(folder, cfg.path("exports_dir"))
    assert reused.folder == version.parent and "version 1 is the export of" in reused.note
    exports = tmp_path / "exports"
    other = exports / NAME / "1"
    shutil.copytree(version, other)
    info = json.loads((other / ASSETS_EXTRA / EXPORT_INFO).read_text())
    (other / ASSETS_EXTRA / EXPORT_INFO).write_text(json.dumps({**info, "model_sha256": "0"}))
    fresh = resolve_target(folder, exports)
    assert fresh.folder == exports / NAME and "as version 2" in fresh.note
    assert (exports / NAME / "2" / "saved_model.pb").is_file()
    pinned = resolve_target(version)
    assert pinned.pinned and pinned.name == NAME
    with pytest.raises(UserError, match="neither an export"):
        resolve_target(cfg.path("raw_dir"))


def test_imgcls_serve_refuses_what_it_cannot_serve(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    done, _ = imgcls("serve", str(tmp_path))
    assert done.returncode == 2 and "is neither an export" in done.stderr
    done, _ = imgcls("serve", str(tmp_path), "--port", "70000")
    assert done.returncode == 2 and "serve.port = 70000: allowed is an integer from 0 to 65535" \
        in done.stderr


# ----------------------------------------------------------------------------- a real server

@pytest.fixture(scope="module")
def live(served_model, tmp_path_factory):
    """``imgcls serve`` in a subprocess (uvicorn on a free loopback port) on a copy of the
    export: ``(base url, export folder, stderr log file)``."""
    folder = tmp_path_factory.mktemp("live") / NAME
    shutil.copytree(served_model[2], folder / "1")
    config = served_model[0].root / CONFIG_RELATIVE_PATH
    with live_server(folder, config, folder.parent / "server.log", "serve.poll_seconds=0.2",
                     "serve.batch_timeout_ms=5") as server:
        yield server.url, folder, server.log


def concurrently(url: str, bodies: list[dict], clients: int) -> list[httpx.Response]:
    """Each body sent once, by ``clients`` threads with a keep-alive connection each."""
    answers: list = [None] * len(bodies)

    def work(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for index in range(offset, len(bodies), clients):
                answers[index] = client.post(PREDICT, json=bodies[index])

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def batch_counts(url: str) -> tuple[float, float]:
    """(model calls, model calls of one image) from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    return (float(re.search(r"imgcls_batch_size_count (\S+)", text)[1]),
            float(re.search(r'imgcls_batch_size_bucket\{le="1.0"\} (\S+)', text)[1]))


def test_concurrent_requests_are_batched_and_answered_as_if_alone(live, digits):
    url, _, log = live
    bodies = [{"instances": [b64(digits[index % 10])]} for index in range(160)]
    alone = {index: httpx.post(f"{url}{PREDICT}", json=bodies[index]).json()
             for index in range(10)}
    calls_before, singles_before = batch_counts(url)
    answers = concurrently(url, bodies, clients=16)
    assert [answer.status_code for answer in answers] == [200] * len(bodies)
    for index, answer in enumerate(answers):
        got, want = answer.json()["predictions"][0], alone[index % 10]["predictions"][0]
        assert got["classes"] == want["classes"]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    calls, singles = batch_counts(url)
    assert calls - calls_before < len(bodies)  # fewer model calls than requests
    assert calls - calls_before > singles - singles_before  # some calls held several images
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    loaded = [line for line in lines if line.get("event") == "loaded"]
    assert loaded[0]["version"] == 1 and loaded[0]["warmup_records"] == 2
    assert loaded[0]["warmup_batch_sizes"] == [1, 2, 4, 8, 16, 32]
    requests = [line for line in lines if line.get("path") == PREDICT]
    assert {"time", "method", "status", "latency_ms", "images", "model", "version",
            "client"} <= set(requests[-1])
    assert requests[-1]["model"] == NAME and requests[-1]["images"] == 1


def test_a_damaged_image_fails_only_its_own_request_in_a_batch(live, digits):
    # The batcher decodes the images of all the requests it batches in one call: a damaged
    # one must be its request's 400, naming it, while the others are answered as if alone.
    url, _, _ = live
    alone = httpx.post(f"{url}{PREDICT}", json={"instances": [b64(digits[2])]}).json()
    damaged = [b64(digits[2]), b64(digits[1][:60])]
    bodies = [{"instances": damaged if index % 6 == 0 else [b64(digits[2])]}
              for index in range(96)]
    calls_before, singles_before = batch_counts(url)
    answers = concurrently(url, bodies, clients=16)
    assert [answer.status_code for answer in answers] == [
        400 if index % 6 == 0 else 200 for index in range(len(bodies))]
    assert all(answer.json()["error"].startswith("instances[1]: cannot decode the image")
               for answer in answers[::6])
    for index, answer in enumerate(answers):
        if index % 6:
            np.testing.assert_allclose(answer.json()["predictions"][0]["probabilities"],
                                       alone["predictions"][0]["probabilities"], atol=1e-5)
    calls, singles = batch_counts(url)
    assert calls - calls_before > singles - singles_before  # some calls held several images


def test_a_new_version_is_swapped_in_while_requests_keep_succeeding(live, digits):
    url, folder, log = live
    statuses = []

    def keep_asking(stop: threading.Event, offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post(PREDICT, json={"instances": [b64(digits[8])]})
                                .status_code)

    states = swap_under_load(url, folder, NAME, keep_asking)
    assert states == [("2", "AVAILABLE"), ("1", "END")]
    assert len(statuses) > 20 and set(statuses) == {200}
    assert httpx.get(f"{url}/healthz").json()["version"] == 2
    old = httpx.post(f"{url}/v1/models/{NAME}/versions/1:predict",
                     json={"instances": [b64(digits[8])]})
    assert old.status_code == 404 and f"Specific({NAME}, 1)" in old.json()["error"]
    events = [json.loads(line).get("event") for line in log.read_text().splitlines()
              if line.startswith("{")]
    assert events.count("loaded") == 2 and "unloaded" in events
