"""`imgcls deploy --target kubernetes`: every manifest valid against Kubernetes' own schemas
(offline, kubernetes-validate), the committed file what the renderer writes, the pods' arguments
ones `imgcls serve` accepts, and the readiness probe's check run against a real server."""

import os
import subprocess
import sys
from dataclasses import replace

import kubernetes_validate
import pytest
import yaml

from imgcls_utils.cli import _parser, main
from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config
from imgcls_utils.serving.deployment import (DEPLOYMENT_RELATIVE_PATH, free_loopback_port,
                                             load_deployment)
from imgcls_utils.serving.kubernetes import (MANIFESTS_FILE, manifests, readiness_script,
                                             write_kubernetes)
from tests.conftest import REPO_ROOT
from tests.live_server import live_server

SETTINGS_PATH = REPO_ROOT / DEPLOYMENT_RELATIVE_PATH
# The oldest Kubernetes release still maintained when this was written, and the newest the
# schemas ship with.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def rendered(**changes) -> dict[str, dict]:
    settings = load_deployment(SETTINGS_PATH)
    settings = replace(settings, k8s={**settings.k8s, **changes})
    return {manifest["kind"]: manifest for manifest in manifests(settings)}


def test_committed_manifests_are_what_imgcls_deploy_renders(tmp_path):
    settings = replace(load_deployment(SETTINGS_PATH), folder=tmp_path)
    (path,) = write_kubernetes(settings)
    assert (SETTINGS_PATH.parent / MANIFESTS_FILE).read_text() == path.read_text(), \
        f"Deployment/{MANIFESTS_FILE} is stale: run imgcls deploy --target kubernetes"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_kubernetes_schemas(version):
    documents = list(yaml.safe_load_all((SETTINGS_PATH.parent / MANIFESTS_FILE).read_text()))
    assert [document["kind"] for document in documents] == [
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)  # raises when invalid


def test_a_broken_manifest_is_caught_by_the_schemas():
    """The check above can fail: a misspelled field and a wrong type are both refused."""
    deployment = rendered()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    hpa = rendered()["HorizontalPodAutoscaler"]
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)


def test_the_pods_are_probed_limited_and_locked_down():
    settings = load_deployment(SETTINGS_PATH)
    deployment = rendered()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= \
        settings.k8s["startup_seconds"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["exec"]["command"] == ["python", "-c",
                                                              readiness_script(settings)]
    assert container["resources"]["requests"] == {
        "cpu": str(settings.k8s["cpu_request"]),
        "memory": f"{settings.k8s['memory_request_mb']}Mi"}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and "/tmp" in mounts
    claim = next(volume for volume in pod["volumes"] if volume["name"] == "exports")
    assert claim["persistentVolumeClaim"]["claimName"] == settings.k8s["exports_claim"]
    assert rendered()["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_the_pods_arguments_from_the_configmap_are_ones_imgcls_serve_accepts():
    objects = rendered()
    variables = objects["ConfigMap"]["data"]
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    arguments = list(container["args"])
    for name, value in variables.items():  # what Kubernetes does with $(NAME) in args
        arguments = [argument.replace(f"$({name})", value) for argument in arguments]
    assert not [argument for argument in arguments if "$(" in argument]
    args = _parser().parse_args(["serve", *arguments])
    assert (args.handler.__name__, args.host, args.target.name) == ("cmd_serve", "0.0.0.0",
                                                                     "digits_cnn")
    cfg = load_config(REPO_ROOT / CONFIG_RELATIVE_PATH, set_options=args.set)
    settings = load_deployment(SETTINGS_PATH)
    assert {f"serve.{key}": value for key, value in settings.serve} == {
        f"serve.{key}": cfg.serve[key] for key, _ in settings.serve}


def test_the_autoscaler_follows_cpu_and_images_in_flight_or_cpu_alone():
    settings = load_deployment(SETTINGS_PATH)
    spec = rendered()["HorizontalPodAutoscaler"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (settings.k8s["min_replicas"],
                                                          settings.k8s["max_replicas"])
    cpu, in_flight = spec["metrics"]
    assert cpu["resource"]["target"]["averageUtilization"] == settings.k8s["target_cpu_percent"]
    assert in_flight["pods"]["metric"]["name"] == "imgcls_queued_images"  # the server's gauge
    assert in_flight["pods"]["target"]["averageValue"] == str(settings.k8s["target_in_flight"])
    cpu_only = rendered(target_in_flight="none")["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert [metric["type"] for metric in cpu_only] == ["Resource"]


def test_imgcls_deploy_writes_the_kubernetes_file(tmp_path, capsys):
    settings = tmp_path / "deployment.yaml"
    settings.write_text(SETTINGS_PATH.read_text().replace("max_replicas: 10 ", "max_replicas: 4 "))
    assert main(["deploy", "--settings", str(settings), "--target", "kubernetes"]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(tmp_path / MANIFESTS_FILE)]
    documents = list(yaml.safe_load_all((tmp_path / MANIFESTS_FILE).read_text()))
    assert documents[3]["spec"]["maxReplicas"] == 4


def test_the_readiness_check_passes_on_an_available_model_only(served_model, tmp_path):
    cfg, _, version = served_model
    settings = load_deployment(SETTINGS_PATH)
    nothing_there = replace(settings, replica_port=free_loopback_port())

    def ready(deployment) -> int:
        return subprocess.run([sys.executable, "-c", readiness_script(deployment)],
                              capture_output=True, timeout=60,
                              env={**os.environ, "IMGCLS_API_KEY": "k"}).returncode

    assert ready(nothing_there) != 0
    with live_server(version.parent, cfg.root / CONFIG_RELATIVE_PATH, tmp_path / "serve.log",
                     env={**os.environ, "IMGCLS_API_KEY": "k"}) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert ready(replace(settings, replica_port=port)) == 0  # with the pod's API key
        assert ready(replace(settings, replica_port=port, model="cats")) != 0  # not served
