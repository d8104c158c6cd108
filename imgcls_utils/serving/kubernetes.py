"""``imgcls deploy --target kubernetes``: the replicas on a cluster, scaled with traffic.

From the same ``Deployment/deployment.yaml`` as compose (its ``kubernetes:`` section adds the
cluster's choices), one file of manifests, ``kubernetes.yaml``: the serve settings as a
ConfigMap; a Deployment of the serving image (resources, a startup probe long enough for
TensorFlow's import and the warm-up, readiness while the model's status is AVAILABLE, liveness
from ``/healthz``, a non-root user on a read-only root filesystem, the export from a volume); a
Service in front of it; a HorizontalPodAutoscaler adding replicas when their CPU use, or the
images each has in flight (``imgcls_queued_images``, through a metrics adapter), passes the
target measured by ``bench/capacity.py``; and a PodDisruptionBudget keeping all but one replica
up while nodes are drained.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .deployment import (GENERATED_HEADER, MODELS_MOUNT, DeploymentSettings, replica_arguments,
                         write_files)

MANIFESTS_FILE = "kubernetes.yaml"
TMP_MOUNT = "/tmp"  # the one writable place: TensorFlow's and Keras' scratch files
USER_ID = 10001  # Model_Serving/Dockerfile's USER
PROBE_PERIOD_S = 5
# The model's TensorFlow Serving status, as the readiness probe asks it (from inside the pod,
# with the API key when the pod has one): ready only while a version is AVAILABLE.
READINESS_SCRIPT = (
    "import json, os, urllib.request as u; "
    "r = u.Request('http://127.0.0.1:{port}/v1/models/{model}'); "
    "k = os.environ.get('{key_variable}'); k and r.add_header('X-API-Key', k); "
    "s = json.load(u.urlopen(r, timeout=2))['model_version_status']; "
    "raise SystemExit(0 if any(v['state'] == 'AVAILABLE' for v in s) else 1)")


def resource_name(settings: DeploymentSettings) -> str:
    """``imgcls-<model>`` as Kubernetes names allow (lower case letters, digits and '-')."""
    return f"imgcls-{settings.model.lower().replace('_', '-')}"


def readiness_script(settings: DeploymentSettings) -> str:
    return READINESS_SCRIPT.format(port=settings.replica_port, model=settings.model,
                                   key_variable=settings.api_key_variable)


def manifests(settings: DeploymentSettings) -> list[dict]:
    """The ConfigMap, Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget."""
    name, labels = resource_name(settings), _labels(settings)
    metadata = {"name": name, "namespace": settings.k8s["namespace"], "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**metadata,
                                                               "name": f"{name}-serve"},
         "data": {_variable(key): _text(value) for key, value in _configured(settings)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
         "spec": {"selector": {"matchLabels": labels},
                  "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": {"labels": labels, "annotations": {
                      "prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
                      "prometheus.io/port": str(settings.replica_port)}},
                      "spec": _pod(settings, name)}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
         "spec": {"selector": labels, "ports": [{"name": "http", "port": settings.replica_port,
                                                 "targetPort": "http"},
                                                {"name": "grpc", "port": settings.replica_grpc_port,
                                                 "targetPort": "grpc"}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": metadata,
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": name},
                  "minReplicas": settings.k8s["min_replicas"],
                  "maxReplicas": settings.k8s["max_replicas"],
                  "metrics": _scaling_metrics(settings)}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata,
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}},
    ]


def _labels(settings: DeploymentSettings) -> dict:
    return {"app.kubernetes.io/name": "imgcls-serve",
            "app.kubernetes.io/instance": resource_name(settings)}


def _variable(key: str) -> str:
    """The environment variable a serve setting reaches the container in."""
    return f"IMGCLS_SERVE_{key.upper()}"


def _configured(settings: DeploymentSettings) -> list[tuple[str, object]]:
    """The serve settings the ConfigMap holds: all but the API key's variable, which names the
    Secret's variable in the pod itself."""
    return [(key, value) for key, value in settings.serve if key != "api_key_variable"]


def _text(value) -> str:
    return yaml.safe_dump(value).splitlines()[0]


def _pod(settings: DeploymentSettings, name: str) -> dict:
    k8s = settings.k8s
    arguments = replica_arguments(settings)
    # The serve settings from the ConfigMap: Kubernetes expands $(VARIABLE) in arguments.
    arguments = [*arguments[:arguments.index("--set")],
                 *[item for key, _ in _configured(settings)
                   for item in ("--set", f"serve.{key}=$({_variable(key)})")],
                 "--set", f"serve.api_key_variable={settings.api_key_variable}"]
    container = {
        "name": "imgcls-serve", "image": settings.image, "args": arguments,
        "ports": [{"name": "http", "containerPort": settings.replica_port},
                  {"name": "grpc", "containerPort": settings.replica_grpc_port}],
        "envFrom": [{"configMapRef": {"name": f"{name}-serve"}}],
        "env": [{"name": settings.api_key_variable, "valueFrom": {"secretKeyRef": {
            "name": f"{name}-api-key", "key": "key", "optional": True}}}],
        "resources": {"requests": {"cpu": str(k8s["cpu_request"]),
                                   "memory": f"{k8s['memory_request_mb']}Mi"},
                      "limits": {"memory": f"{k8s['memory_limit_mb']}Mi"}},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                         "periodSeconds": PROBE_PERIOD_S,
                         "failureThreshold": -(-k8s["startup_seconds"] // PROBE_PERIOD_S)},
        "readinessProbe": {"exec": {"command": ["python", "-c", readiness_script(settings)]},
                           "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                          "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "exports", "mountPath": MODELS_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": TMP_MOUNT}],
    }
    return {"securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID,
                                "runAsGroup": USER_ID, "seccompProfile": {
                                    "type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "exports", "persistentVolumeClaim": {
                "claimName": k8s["exports_claim"], "readOnly": True}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]}


def _scaling_metrics(settings: DeploymentSettings) -> list[dict]:
    """CPU use against the request, and images in flight per replica when a target is set."""
    k8s = settings.k8s
    metrics = [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": k8s["target_cpu_percent"]}}}]
    if k8s["target_in_flight"] != "none":
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": "imgcls_queued_images"},
            "target": {"type": "AverageValue", "averageValue": str(k8s["target_in_flight"])}}})
    return metrics


def write_kubernetes(settings: DeploymentSettings) -> list[Path]:
    """kubernetes.yaml, rendered into the settings file's folder: its path."""
    return write_files(settings, {MANIFESTS_FILE: kubernetes_file(settings)})


def kubernetes_file(settings: DeploymentSettings) -> str:
    """kubernetes.yaml: every manifest, ``kubectl apply -f``-ready."""
    usage = (f"# kubectl create namespace {settings.k8s['namespace']}; "
             f"kubectl apply -f Deployment/{MANIFESTS_FILE}\n")
    return GENERATED_HEADER + usage + yaml.dump_all(manifests(settings), Dumper=_PlainDumper,
                                                    sort_keys=False, width=100)


class _PlainDumper(yaml.SafeDumper):
    """Every mapping written out where it is used (no YAML anchors for the shared labels)."""

    def ignore_aliases(self, data) -> bool:
        return True
