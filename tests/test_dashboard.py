"""Deployment/monitoring/dashboard.json: every panel's query names a metric ``imgcls serve``
exports (or Prometheus' own ``up``), is valid PromQL, and the panels cover the service and the
model."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from imgcls_utils.serving.dashboard import dashboard
from imgcls_utils.serving.deployment import DEPLOYMENT_RELATIVE_PATH, load_deployment
from imgcls_utils.serving.monitoring import Metrics
from tests.conftest import REPO_ROOT
from tests.prometheus_tools import needs_promtool, promtool

SETTINGS = load_deployment(REPO_ROOT / DEPLOYMENT_RELATIVE_PATH)
COMMITTED = REPO_ROOT / "Deployment" / "monitoring" / "dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series_names() -> set[str]:
    """Every series name the server's /metrics can hold (a counter's ``_total``, a histogram's
    ``_bucket``, ``_sum`` and ``_count``...), from a fresh registry's exposition."""
    families = text_string_to_metric_families(Metrics().exposition().decode())
    return {family.name + suffix for family in families
            for suffix in SUFFIXES.get(family.type, ("",))}


def metric_names(expression: str) -> set[str]:
    """The metrics a PromQL expression reads: ours (``imgcls_...``) and Prometheus' ``up``."""
    return set(re.findall(r"\b(imgcls_\w+|up)\b(?!\s*\()", expression))


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard(0.25)["panels"]
            for target in panel.get("targets", [])]


def test_the_committed_dashboard_is_what_imgcls_deploy_renders():
    assert json.loads(COMMITTED.read_text()) == dashboard(SETTINGS.monitoring["drift_psi"])


def test_every_query_reads_a_metric_the_server_exports():
    exported = exported_series_names() | {"up"}
    assert {"imgcls_requests_total", "imgcls_drift_psi", "imgcls_predictions_total",
            "imgcls_prediction_confidence_bucket"} <= exported
    for title, expression in queries():
        names = metric_names(expression)
        assert names, f"{title}: {expression} reads no metric"
        assert names <= exported, f"{title}: {sorted(names - exported)} are not exported"


def test_the_check_catches_a_metric_the_server_does_not_export():
    assert metric_names("sum(rate(imgcls_requets_total[5m]))") - exported_series_names() == \
        {"imgcls_requets_total"}


def test_the_panels_cover_the_service_and_the_model():
    titles = " ".join(panel["title"] for panel in dashboard(0.25)["panels"]).lower()
    for topic in ("request rate", "latency", "errors", "model call", "queue depth",
                  "predicted classes", "confidence", "brightness", "drift score"):
        assert topic in titles
    drift = next(panel for panel in dashboard(0.4)["panels"] if panel["title"].startswith(
        "Drift"))
    assert drift["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 0.4


@needs_promtool
def test_every_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expression}
        for index, (_, expression) in enumerate(queries())]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("bad", ["sum(rate(imgcls_requests_total[5m])", "rate(up)"])
@needs_promtool
def test_promtool_refuses_a_bad_query(tmp_path, bad):
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "bad", "rules": [{"record": "bad:query", "expr": bad}]}]}))
    assert promtool("check", "rules", str(tmp_path / "bad.yml")).returncode != 0
