"""``imgcls serve``'s gRPC API, called with the stock stubs of ``tensorflow-serving-api``:
Predict, GetModelMetadata and GetModelStatus answer as the REST API does for the same images and
model, every error carries TensorFlow Serving's status code, the API key, the body limit and the
metrics are shared with REST, a version swapped in under gRPC load drops no call, and the
rendered nginx passes gRPC calls to the replicas: a call it cannot pass on is UNAVAILABLE, which
the retry policy `imgcls deploy` writes for clients resends, so such clients lose no call while
a replica is killed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
from contextlib import contextmanager

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from imgcls_utils.config import CONFIG_RELATIVE_PATH
from imgcls_utils.quiet_tensorflow import tf
from imgcls_utils.serving.app import create_app
from imgcls_utils.serving.deployment import (GRPC_SERVICE_CONFIG, free_loopback_port,
                                             load_deployment, local_nginx, nginx_conf,
                                             nginx_executable)
from imgcls_utils.serving.grpc_api import serve_grpc_alongside
from tests.live_server import live_server, live_servers, run_threads, swap_under_load
from tests.test_cli import imgcls
from tests.test_deployment import NGINX_MISSING, SETTINGS_PATH, needs_nginx, nginx_access_log
from tests.test_server import (NAME, PREDICT, TestClient, b64, digits,  # noqa: F401
                               settings_for, started)

Code = grpc.StatusCode


@contextmanager
def grpc_app(served_model, **settings):
    """The app on the export with its gRPC server on a free loopback port: ``(app, REST test
    client, gRPC channel)``."""
    app = create_app(served_model[2].parent, settings_for(served_model[0], **settings))
    serve_grpc_alongside(app, "127.0.0.1", 0)
    with started(app) as client, grpc.insecure_channel(
            f"127.0.0.1:{app.state.grpc_port}") as channel:
        yield app, client, channel


@pytest.fixture(scope="module")
def served(served_model):
    with grpc_app(served_model) as served:
        yield served


def predict_request(images: list[bytes], name: str = NAME, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def predict(channel, request, **kwargs) -> dict[str, np.ndarray]:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout=30, **kwargs)
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def error_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


# ----------------------------------------------------------------------------- the API

def test_predict_answers_as_rest_does_for_the_same_images(served, digits):
    _, client, channel = served
    rest = client.post(PREDICT, json={"instances": [b64(d) for d in digits]}).json()
    answer = predict(channel, predict_request(digits))
    assert [c.decode() for c in answer["classes"]] == [p["classes"] for p in rest["predictions"]]
    np.testing.assert_allclose(answer["probabilities"],
                               [p["probabilities"] for p in rest["predictions"]], atol=1e-6)
    assert answer["probabilities"].dtype == np.float32 and answer["probabilities"].shape == (10, 10)

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(digits[:2], version=1)
    request.output_filter.append("classes")
    response = stub.Predict(request)
    assert set(response.outputs) == {"classes"}
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == (NAME, 1, "serving_default")

    pixels = client.app.state.manager.current.decode(digits)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = NAME, "pixels"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels))
    np.testing.assert_allclose(predict(channel, request)["probabilities"],
                               answer["probabilities"], atol=1e-6)


def test_status_and_metadata_are_the_rest_answers_as_messages(served):
    _, client, channel = served
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = NAME
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert json_format.MessageToDict(status, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True) == \
        client.get(f"/v1/models/{NAME}").json()

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = NAME
    metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
    assert (metadata.model_spec.name, metadata.model_spec.version.value) == (NAME, 1)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert metadata.metadata["signature_def"].Unpack(signature_map)
    rest = client.get(f"/v1/models/{NAME}/metadata").json()["metadata"]["signature_def"]
    assert json_format.MessageToDict(signature_map, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True) == rest
    assert signature_map.signature_def["serving_default"].inputs["images"].dtype == tf.string


def bad_calls(digits: list[bytes]) -> list[tuple]:
    """``(what, stub method, request, gRPC code, message fragment)``."""
    wrong_input = predict_request(digits[:1])
    wrong_input.inputs["pictures"].CopyFrom(wrong_input.inputs.pop("images"))
    floats = predict_pb2.PredictRequest(inputs={"images": tf.make_tensor_proto([1.0])})
    floats.model_spec.name = NAME
    pixels = predict_pb2.PredictRequest(inputs={"pixels": tf.make_tensor_proto(
        np.zeros((1, 8, 8, 1), np.float32))})
    pixels.model_spec.name, pixels.model_spec.signature_name = NAME, "pixels"
    unfiltered = predict_request(digits[:1])
    unfiltered.output_filter.append("logits")
    no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    no_field.model_spec.name = NAME
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "cats"
    return [
        ("unknown model", "Predict", predict_request(digits[:1], name="cats"), Code.NOT_FOUND,
         "Servable not found for request: Latest(cats)"),
        ("unknown version", "Predict", predict_request(digits[:1], version=7), Code.NOT_FOUND,
         f"Servable not found for request: Specific({NAME}, 7)"),
        ("version label", "Predict", predict_request(digits[:1], version_label="stable"),
         Code.INVALID_ARGUMENT, "Unrecognized servable version label: stable"),
        ("unknown signature", "Predict", predict_request(digits[:1], signature_name="logits"),
         Code.INVALID_ARGUMENT, 'Serving signature name: "logits" not found in signature def'),
        ("wrong input name", "Predict", wrong_input, Code.INVALID_ARGUMENT,
         "input size does not match signature: 1!=1 len({pictures}) != len({images}). Sent "
         "extra: {pictures}. Missing but required: {images}."),
        ("floats for images", "Predict", floats, Code.INVALID_ARGUMENT,
         "input images: a DT_FLOAT tensor; this signature takes DT_STRING"),
        ("not an image", "Predict", predict_request([digits[0], b"hello"]),
         Code.INVALID_ARGUMENT, "images[1]: not a PNG, JPEG, GIF or BMP image"),
        ("truncated PNG", "Predict", predict_request([digits[1][:60]]), Code.INVALID_ARGUMENT,
         "images[0]: cannot decode the image"),
        ("pixels of the wrong shape", "Predict", pixels, Code.INVALID_ARGUMENT,
         "input pixels: shape [1, 8, 8, 1]; this model takes [images, height, width, channels] "
         "= [n, 16, 16, 1]"),
        ("unknown output", "Predict", unfiltered, Code.INVALID_ARGUMENT,
         "output tensor alias not found in signature: logits"),
        ("metadata without a field", "GetModelMetadata", no_field, Code.INVALID_ARGUMENT,
         "must specify at least one metadata_field"),
        ("classify", "Classify", predict_request(digits[:1]), Code.INVALID_ARGUMENT,
         "predict signatures only"),
        ("status of an unknown model", "GetModelStatus", status, Code.NOT_FOUND,
         "Could not find any versions of model cats"),
    ]


def test_each_bad_call_gets_tensorflow_servings_status_code(served, digits):
    from tensorflow_serving.apis import classification_pb2

    app, _, channel = served
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    wrong = []
    for what, method, request, code, message in bad_calls(digits):
        if method == "Classify":
            request = classification_pb2.ClassificationRequest(model_spec=request.model_spec)
        stub = models if method == "GetModelStatus" else predictions
        got = error_of(lambda: getattr(stub, method)(request, timeout=30))
        if got[0] != code or message not in got[1]:
            wrong.append(f"{what}: {got}")
    assert wrong == []

    limit = app.state.settings.max_queued_images
    with app.state.batcher.admit(limit):  # images other requests (of either API) hold
        code, message = error_of(lambda: predict(channel, predict_request(digits[:1])))
    assert code == Code.RESOURCE_EXHAUSTED and "the server is overloaded" in message
    assert predict(channel, predict_request(digits[:1]))["classes"].shape == (1,)


def test_grpc_calls_are_counted_in_the_shared_metrics(served, digits):
    _, client, channel = served
    predict(channel, predict_request(digits[:3]))
    error_of(lambda: predict(channel, predict_request(digits[:1], name="cats")))
    text = client.get("/metrics").text
    assert re.search(r'imgcls_requests_total\{endpoint="grpc_predict",status="OK"\} [1-9]', text)
    assert re.search(r'imgcls_requests_total\{endpoint="grpc_predict",status="NOT_FOUND"\} '
                     r'[1-9]', text)
    assert re.search(r'imgcls_request_latency_seconds_count\{endpoint="grpc_predict"\} [1-9]',
                     text)


# ----------------------------------------------------------------------------- settings

def test_the_api_key_is_grpc_metadata(served_model, digits, monkeypatch):
    monkeypatch.setenv("IMGCLS_API_KEY", "s3cret")
    with grpc_app(served_model) as (_, client, channel):
        request = predict_request(digits[:1])
        code, message = error_of(lambda: predict(channel, request))
        assert code == Code.UNAUTHENTICATED and "missing API key" in message
        code, message = error_of(lambda: predict(channel, request,
                                                 metadata=[("authorization", "Bearer nope")]))
        assert code == Code.UNAUTHENTICATED and "wrong API key" in message
        for metadata in ([("authorization", "Bearer s3cret")], [("x-api-key", "s3cret")]):
            assert predict(channel, request, metadata=metadata)["classes"].shape == (1,)
        assert client.post(PREDICT, json={"instances": [b64(digits[0])]}).status_code == 401


def test_messages_over_the_body_limit_are_resource_exhausted(served_model, digits):
    with grpc_app(served_model, max_request_mb=0.01) as (_, _, channel):
        big = predict_request(digits * 40)
        assert big.ByteSize() > 0.01 * 1024 * 1024
        code, message = error_of(lambda: predict(channel, big))
        assert code == Code.RESOURCE_EXHAUSTED, message
        assert predict(channel, predict_request(digits[:1]))["classes"].shape == (1,)


def test_no_version_yet_is_unavailable(served_model, digits, tmp_path):
    waiting = tmp_path / "exports" / NAME
    waiting.mkdir(parents=True)
    app = create_app(waiting, settings_for(served_model[0]))
    serve_grpc_alongside(app, "127.0.0.1", 0)
    with TestClient(app), grpc.insecure_channel(
            f"127.0.0.1:{app.state.grpc_port}") as channel:
        code, message = error_of(lambda: predict(channel, predict_request(digits[:1])))
        assert code == Code.UNAVAILABLE and f"no version of {NAME} under {waiting}" in message


def test_a_taken_grpc_port_is_one_clear_error(served_model, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done, _ = imgcls("serve", str(served_model[2]), "--port", "0", "--grpc-port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--grpc-port" in done.stderr


# ----------------------------------------------------------------------------- a real server

def test_a_version_swapped_under_grpc_load_drops_nothing(served_model, digits, tmp_path):
    folder = tmp_path / NAME
    shutil.copytree(served_model[2], folder / "1")
    config = served_model[0].root / CONFIG_RELATIVE_PATH
    with live_server(folder, config, tmp_path / "server.log", "serve.poll_seconds=0.2") as server:
        rest = httpx.post(f"{server.url}{PREDICT}",
                          json={"instances": [b64(d) for d in digits]}).json()["predictions"]
        codes, versions = [], set()

        def keep_asking(stop: threading.Event, offset: int) -> None:
            with grpc.insecure_channel(server.grpc) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                index = offset
                while not stop.is_set():
                    try:
                        response = stub.Predict(predict_request([digits[index % 10]]), timeout=30)
                    except grpc.RpcError as error:
                        codes.append(error.code())
                        continue
                    got = tf.make_ndarray(response.outputs["classes"])[0].decode()
                    codes.append(Code.OK if got == rest[index % 10]["classes"] else got)
                    versions.add(response.model_spec.version.value)
                    index += 1

        states = swap_under_load(server.url, folder, NAME, keep_asking)
    assert states == [("2", "AVAILABLE"), ("1", "END")]
    assert len(codes) > 20 and set(codes) == {Code.OK}
    assert versions == {1, 2}


@pytest.mark.skipif(nginx_executable() is None, reason=NGINX_MISSING)
def test_nginx_passes_grpc_calls_to_the_replicas(served_model, digits, tmp_path):
    config = served_model[0].root / CONFIG_RELATIVE_PATH
    port, grpc_port = free_loopback_port(), free_loopback_port()
    (tmp_path / "nginx").mkdir()
    with live_server(served_model[2], config, tmp_path / "server.log") as server:
        conf = nginx_conf(load_deployment(SETTINGS_PATH), [server.url.removeprefix("http://")],
                          f"127.0.0.1:{port}", grpc_upstreams=[server.grpc],
                          grpc_listen=f"127.0.0.1:{grpc_port}")
        with local_nginx(conf, tmp_path / "nginx", port), \
                grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, \
                grpc.insecure_channel(server.grpc) as direct:
            through = predict(channel, predict_request(digits))
            np.testing.assert_array_equal(through["probabilities"],
                                          predict(direct, predict_request(digits))["probabilities"])
            code, message = error_of(lambda: predict(channel, predict_request(digits, "cats")))
            assert code == Code.NOT_FOUND and "Latest(cats)" in message
    log = nginx_access_log(tmp_path / "nginx")
    assert [line["uri"] for line in log] == ["/tensorflow.serving.PredictionService/Predict"] * 2


def retrying_channel(target: str) -> grpc.Channel:
    """A channel with the retry policy ``imgcls deploy`` writes for the replicas' clients."""
    service_config = (SETTINGS_PATH.parent / GRPC_SERVICE_CONFIG).read_text()
    return grpc.insecure_channel(target, options=[("grpc.service_config", service_config)])


@needs_nginx
def test_a_grpc_call_no_replica_answers_is_unavailable_and_retried(digits, tmp_path):
    port, grpc_port = free_loopback_port(), free_loopback_port()
    down = [f"127.0.0.1:{free_loopback_port()}" for _ in range(2)]  # nothing listens there
    conf = nginx_conf(load_deployment(SETTINGS_PATH), down, f"127.0.0.1:{port}",
                      grpc_upstreams=down, grpc_listen=f"127.0.0.1:{grpc_port}")
    (tmp_path / "nginx").mkdir()
    with local_nginx(conf, tmp_path / "nginx", port), \
            retrying_channel(f"127.0.0.1:{grpc_port}") as channel:
        failure = error_of(lambda: predict(channel, predict_request(digits[:1])))
    assert failure == (Code.UNAVAILABLE, "no replica answered")
    service_config = json.loads((SETTINGS_PATH.parent / GRPC_SERVICE_CONFIG).read_text())
    attempts = service_config["methodConfig"][0]["retryPolicy"]["maxAttempts"]
    assert len(nginx_access_log(tmp_path / "nginx")) == attempts == 3


def call_stream(channel, digits, calls: int, clients: int, after: int, then) -> list:
    """``calls`` Predict calls by ``clients`` threads, ``then()`` run once ``after`` of them have
    ended: each call's gRPC code."""
    codes, lock = [], threading.Lock()

    def client() -> None:
        for _ in range(calls // clients):
            try:
                predict(channel, predict_request(digits[:1]))
                code = Code.OK
            except grpc.RpcError as error:
                code = error.code()
            with lock:
                codes.append(code)
                if len(codes) == after:
                    then()

    run_threads(client, clients)
    return codes


@needs_nginx
def test_grpc_clients_with_the_retry_policy_lose_no_call_while_a_replica_is_killed(
        served_model, digits, tmp_path):
    config = served_model[0].root / CONFIG_RELATIVE_PATH
    settings = load_deployment(SETTINGS_PATH)
    port, grpc_port = free_loopback_port(), free_loopback_port()
    (tmp_path / "nginx").mkdir()
    with live_servers(served_model[2].parent, config, [tmp_path / "a.log", tmp_path / "b.log"],
                      *settings.serve_options()) as (survivor, victim):
        conf = nginx_conf(settings, [server.url.removeprefix("http://")
                                     for server in (survivor, victim)], f"127.0.0.1:{port}",
                          grpc_upstreams=[survivor.grpc, victim.grpc],
                          grpc_listen=f"127.0.0.1:{grpc_port}")
        with local_nginx(conf, tmp_path / "nginx", port), \
                retrying_channel(f"127.0.0.1:{grpc_port}") as channel:
            codes = call_stream(channel, digits, calls=400, clients=4, after=100,
                                then=lambda: victim.process.send_signal(signal.SIGKILL))
        assert victim.process.wait(timeout=10) == -signal.SIGKILL
    assert len(codes) == 400 and set(codes) == {Code.OK}
    log = nginx_access_log(tmp_path / "nginx")
    assert {survivor.grpc, victim.grpc} <= {line["upstream_addr"] for line in log}
    unavailable = [line for line in log if line["status"] == 204]  # nginx's UNAVAILABLE
    assert unavailable, "no call failed on the killed replica: the test tested nothing"
    assert len(log) == 400 + len(unavailable)  # each of them sent again by its client
