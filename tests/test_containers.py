"""The containers, built and run for real with podman (see tests/containers.py): the serving image
of Model_Serving/Dockerfile on an export mounted read-only, and Deployment/compose.yaml brought
up with nginx in front of two replicas, one of them stopped while clients keep sending images.

They take minutes the first time (debootstrap, pip installing TensorFlow in the build) and far
less once podman's storage holds the base image and the build layers; pytest's summary prints
their own time."""

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from imgcls_utils.serving.deployment import free_loopback_port
from imgcls_utils.serving.prediction import predict
from tests.conftest import REPO_ROOT
from tests.containers import (MISSING, TIMINGS, Podman, nginx_image, serve_image,
                              tools_missing)
from tests.test_deployment import digit_uploads, send_stream

pytestmark = pytest.mark.skipif(tools_missing(), reason=MISSING)
# What a serving image must not hold: the notebook and test stack.
NOT_IN_THE_IMAGE = ("jupyterlab", "papermill", "nbval", "matplotlib", "selenium", "ipykernel",
                    "scikit-learn", "pandas")
# Enough uploads that the stream outlasts podman stopping a replica (seconds here).
REQUESTS = 800
READY_SECONDS = 180  # TensorFlow's import and the warm-up, on 2 shared cores


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Podman:
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def image(podman) -> str:
    return serve_image(podman)


@pytest.fixture(scope="module")
def exports(served_model, tmp_path_factory) -> Path:
    """A copy of the served model's export, readable by the image's non-root user."""
    _, _, version = served_model
    folder = tmp_path_factory.mktemp("exports")
    shutil.copytree(version, folder / version.parent.name / "1")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def wait_until_ready(url: str, what: str, logs) -> float:
    """Seconds until ``url``/healthz answers 200."""
    started = time.monotonic()
    while time.monotonic() - started < READY_SECONDS:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {READY_SECONDS} s:\n{logs()[-3000:]}")


@pytest.fixture(scope="module")
def container(podman, image, exports):
    """The image serving the export (mounted read-only, root filesystem read-only) on a free
    loopback port: ``(url, container name)``."""
    name, port = f"imgcls-test-serve-{os.getpid()}", free_loopback_port()
    model = next(exports.iterdir()).name
    podman.run("run", "--detach", "--name", name, "--read-only", "--publish",
               f"127.0.0.1:{port}:8501", "--volume", f"{exports / model}:/models/{model}:ro",
               image, f"/models/{model}", "--host", "0.0.0.0", "--port", "8501")
    url = f"http://127.0.0.1:{port}"
    try:
        seconds = wait_until_ready(url, "the container",
                                   lambda: podman.run("logs", name, check=False).stderr)
        TIMINGS["container ready"] = f"{seconds:.1f} s after start"
        yield url, name
    finally:
        podman.run("rm", "--force", "--time", "0", name, check=False)


def test_the_image_holds_the_serving_install_only(podman, image):
    listed = podman.run("run", "--rm", "--entrypoint", "python", image, "-m", "pip", "list",
                        "--format", "json").stdout
    installed = {package["name"].lower().replace("_", "-") for package in json.loads(listed)}
    assert {"imgcls", "tensorflow-cpu", "fastapi", "uvicorn"} <= installed
    assert installed.isdisjoint(NOT_IN_THE_IMAGE), installed & set(NOT_IN_THE_IMAGE)
    history = podman.run("history", "--format", "{{.CreatedBy}}", image).stdout
    assert "pip install" not in history  # the installs ran in the build stage, not this one


def test_the_container_serves_the_export_as_the_host_does(container, podman, served_model,
                                                          exports, tmp_path):
    url, name = container
    cfg, _, version = served_model
    files = sorted((cfg.path("raw_dir") / "digits").glob("*/*.png"))[::45][:32]
    body = {"instances": [{"b64": base64.b64encode(path.read_bytes()).decode()} for path in files]}
    answer = httpx.post(f"{url}/v1/models/{version.parent.name}:predict", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    on_host = predict(version.parent, files, top_k=1)
    assert [row["classes"] for row in served] == [p.top[0][0] for p in on_host]
    assert np.allclose([max(row["probabilities"]) for row in served],
                       [p.top[0][1] for p in on_host], atol=1e-4)

    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and version.parent.name in page.text
    refused = httpx.post(f"{url}/predict", files={"file": ("notes.png", b"not an image")})
    assert refused.status_code == 400 and "not a PNG, JPEG, GIF or BMP" in refused.json()["error"]
    assert podman.run("exec", name, "id", "-u").stdout.strip() == "10001"
    assert podman.inspect(name)["Config"]["User"] == "10001"
    health = podman.run("healthcheck", "run", name, check=False)
    assert health.returncode == 0 and "unhealthy" not in health.stdout, health


# ----------------------------------------------------------------------------- compose

@pytest.fixture(scope="module")
def compose_stack(podman, image, exports, tmp_path_factory):
    """Deployment/deployment.yaml with this test's images, exports and a free loopback port,
    rendered by `imgcls deploy` and brought up with podman-compose (images built first, then
    `up -d`): ``(nginx url, {replica service: container name})``."""
    folder = tmp_path_factory.mktemp("deployment")
    settings = yaml.safe_load((REPO_ROOT / "Deployment" / "deployment.yaml").read_text())
    port = free_loopback_port()
    settings["model"].update(exports_dir=str(exports), name=next(exports.iterdir()).name)
    settings["replicas"].update(image=image)
    settings["nginx"].update(image=nginx_image(podman), host="127.0.0.1", port=port)
    (folder / "deployment.yaml").write_text(yaml.safe_dump(settings))
    done = subprocess.run([sys.executable, "-m", "imgcls_utils.cli", "deploy", "--settings",
                           str(folder / "deployment.yaml")], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    project = f"imgcls-test-{os.getpid()}"
    compose = [sys.executable, "-m", "podman_compose", "--project-name", project,
               "--file", str(folder / "compose.yaml")]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], env=podman.env, capture_output=True, text=True,
                              timeout=600)

    up = run("up", "--detach")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"
        seconds = wait_until_ready(url, "nginx and the replicas", lambda: run("logs").stdout)
        containers = {service: f"{project}_{service}_1" for service in ("replica-1", "replica-2")}
        TIMINGS["compose stack ready"] = f"{seconds:.1f} s after up -d"
        yield url, containers
    finally:
        run("down", "--timeout", "0")


def test_the_compose_stack_answers_every_upload_while_a_replica_is_stopped(
        compose_stack, podman, served_model):
    url, containers = compose_stack
    address = {service: f"{network_address(podman.inspect(name))}:8501"
               for service, name in containers.items()}
    for _ in range(20):  # both replicas ready behind nginx before the stream starts
        if {httpx.get(f"{url}/healthz").headers["x-upstream"] for _ in range(4)} == \
                set(address.values()):
            break
        time.sleep(1)
    stopped, stopped_at = threading.Event(), []

    def stop_replica() -> None:
        assert stopped.wait(timeout=120)
        podman.run("stop", "--time", "0", containers["replica-2"])
        stopped_at.append(time.monotonic())

    stopper = threading.Thread(target=stop_replica)
    stopper.start()
    started = time.monotonic()
    answers = send_stream(url, digit_uploads(served_model[0]), stopped, requests=REQUESTS)
    seconds = time.monotonic() - started
    stopper.join()
    failed = [answer for answer in answers if answer[1] != 200 or '"predictions"' not in answer[3]]
    answered_by = [(when, upstream.split(", ")[-1]) for when, _, upstream, _ in answers
                   if upstream]
    before = {who for when, who in answered_by if when < stopped_at[0]}
    after = {who for when, who in answered_by if when > stopped_at[0]}
    retried = sum(", " in (upstream or "") for _, _, upstream, _ in answers)
    TIMINGS["compose failover"] = (f"{len(answers)} uploads from 4 clients, replica-2 stopped "
                                   f"after a third: {len(failed)} failed, {retried} resent to "
                                   f"the survivor, {len(answers) / seconds:.0f} req/s")
    assert failed == [] and len(answers) == REQUESTS
    assert before == set(address.values()) and after == {address["replica-1"]}


def network_address(inspected: dict) -> str:
    networks = inspected["NetworkSettings"]["Networks"]
    return next(iter(networks.values()))["IPAddress"]
