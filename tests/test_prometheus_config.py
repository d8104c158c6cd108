"""Deployment/monitoring/: the rules pass ``promtool check rules``, every alert fires on series
that should fire it and stays silent on series that must not (``promtool test rules``), and a
real Prometheus scrapes two ``imgcls serve`` replicas and computes the recording rules."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from imgcls_utils.serving.deployment import DEPLOYMENT_RELATIVE_PATH, free_loopback_port, \
    load_deployment
from imgcls_utils.serving.prometheus_config import prometheus_yml, rules_yml
from tests.conftest import REPO_ROOT
from tests.live_server import two_replicas
from tests.prometheus_tools import (local_prometheus, needs_prometheus, needs_promtool, promtool,
                                    query, rule_tests)

SETTINGS = load_deployment(REPO_ROOT / DEPLOYMENT_RELATIVE_PATH)
MONITORING = SETTINGS.monitoring
RULES = rules_yml(MONITORING, SETTINGS.max_queued_images)
A, B = "replica-1:8501", "replica-2:8501"  # two replicas: one in trouble, one fine
JOB = {"job": "imgcls"}


def labels(instance: str, **more: str) -> str:
    return "{" + ", ".join(f'{key}="{value}"' for key, value in
                           {**JOB, "instance": instance, **more}.items()) + "}"


def alert_test(name: str, series: dict[str, str], fired: dict[str, list[dict]]) -> dict:
    """A promtool test: ``series`` (one value a minute) and, for each eval time, the ``name``
    alerts expected firing then (``expected``; an empty list: none may fire)."""
    return {"interval": "1m",
            "input_series": [{"series": key, "values": values} for key, values in series.items()],
            "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": [
                {"exp_labels": {**JOB, "severity": severity(name), **alert["labels"]},
                 "exp_annotations": {"summary": alert["summary"],
                                     "runbook": f"README.md, When an alert fires: {name}"}}
                for alert in expected_list]} for at, expected_list in fired.items()]}


def severity(name: str) -> str:
    rules = yaml.safe_load(RULES)["groups"][1]["rules"]
    return next(rule["labels"]["severity"] for rule in rules if rule["alert"] == name)


def expected(summary: str, **labels_: str) -> dict:
    """An alert expected to fire: its summary as Prometheus renders it, its labels."""
    return {"summary": summary, "labels": labels_}


def request_counters(instance: str, ok_per_minute: float, failed_per_minute: float) -> dict:
    return {f"imgcls_requests_total{labels(instance, endpoint='predict', status='200')}":
            f"0+{ok_per_minute}x20",
            f"imgcls_requests_total{labels(instance, endpoint='predict', status='500')}":
            f"0+{failed_per_minute}x20"}


def latency_buckets(instance: str, fast_share: float) -> dict:
    """100 predictions a minute, ``fast_share`` of them within 0.1 s, the rest within 0.5 s."""
    return {f"imgcls_request_latency_seconds_bucket{labels(instance, endpoint='predict', le=le)}":
            f"0+{100 * share}x20" for le, share in (("0.1", fast_share), ("0.5", 1), ("+Inf", 1))}


ALERT_TESTS = [
    alert_test("ImgclsReplicaDown", {f"up{labels(A)}": "1 1 0x10", f"up{labels(B)}": "1x12"},
               {"2m": [], "4m": [expected(f"Replica {A} does not answer Prometheus' scrape",
                                          instance=A)]}),
    alert_test("ImgclsNoVersionAvailable",
               {f"up{labels(A)}": "1x12", f"up{labels(B)}": "1x12",
                f"imgcls_model_version{labels(B, model='digits_cnn')}": "1x12"},
               {"3m": [], "6m": [expected(f"Replica {A} answers but serves no model version",
                                instance=A)]}),
    alert_test("ImgclsHighErrorRate", request_counters(A, 100, 5),  # 4.8% failed
               {"3m": [], "10m": [expected("4.762% of predictions failed (5xx) over 5 minutes "
                                           "(over 1%)")]}),
    alert_test("ImgclsHighErrorRate", request_counters(A, 1000, 5),  # 0.5% failed: no alert
               {"10m": [], "20m": []}),
    alert_test("ImgclsHighLatency", latency_buckets(A, 0.5), {
        "3m": [], "10m": [expected("p99 prediction latency is 492ms (over 250 ms)")]}),
    alert_test("ImgclsHighLatency", latency_buckets(A, 1.0), {"10m": [], "20m": []}),
    alert_test("ImgclsQueueSaturated",
               {f"imgcls_queued_images{labels(A)}": f"{SETTINGS.max_queued_images}x12",
                f"imgcls_queued_images{labels(B)}": f"{SETTINGS.max_queued_images // 2}x12"},
               {"3m": [], "6m": [expected(
                   f"Replica {A} has 256 images waiting (over 80% of "
                   "serve.max_queued_images = 256)",
                   instance=A)]}),
    alert_test("ImgclsRequestsRefused",
               {f"imgcls_overloaded_requests_total{labels(A)}": "0+10x20",
                f"imgcls_overloaded_requests_total{labels(B)}": "5x20"},  # old 429s only
               {"3m": [], "10m": [expected("0.17 requests/s refused with 429: the replicas are "
                                           "full")]}),
    alert_test("ImgclsRequestsRefused",
               {f"imgcls_overloaded_requests_total{labels(B)}": "5x20"}, {"10m": []}),
    alert_test("ImgclsVersionChanged",
               {f"imgcls_model_version{labels(A, model='digits_cnn')}": "1 1 1 2x20",
                f"imgcls_model_version{labels(B, model='digits_cnn')}": "2x23"},
               {"2m": [], "4m": [expected(
                   f"Replica {A} changed the version of digits_cnn it serves (1 time(s) in 10 "
                   "minutes)",
                   instance=A, model="digits_cnn")],
                "20m": []}),
]


def drift_series(instance: str, values: str) -> dict:
    return {f"imgcls_drift_psi{labels(instance, model='digits_cnn', version='1', distribution=d)}":
            values for d in ("class", "confidence", "brightness")}


@needs_promtool
def test_the_rules_pass_promtool_check(tmp_path):
    (tmp_path / "rules.yml").write_text(RULES)
    done = promtool("check", "rules", str(tmp_path / "rules.yml"))
    assert done.returncode == 0 and "SUCCESS: 14 rules found" in done.stdout, done.stdout + \
        done.stderr
    (tmp_path / "prometheus.yml").write_text(prometheus_yml([A, B], 15))
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_every_alert_fires_on_trouble_and_stays_silent_otherwise(tmp_path):
    drift = {**drift_series(A, "_ _ 0.1x5 0.5x10"), **drift_series(B, "_ _ 0.1x15")}
    tests = [*ALERT_TESTS, alert_test("ImgclsPredictionDrift", drift, {
        "5m": [], "9m": [],
        "13m": [expected(
            f"Predictions of digits_cnn version 1 on {A} drifted from its validation reference "
            "(PSI 0.50, over 0.25)",
            instance=A, model="digits_cnn", version="1")]})]
    done = rule_tests(tmp_path, RULES, tests)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {test["alert_rule_test"][0]["alertname"] for test in tests}
    alerts = {rule["alert"] for rule in yaml.safe_load(RULES)["groups"][1]["rules"]}
    assert tested == alerts


@needs_promtool
def test_the_tests_can_fail(tmp_path):
    """An alert expected where the rules raise none fails promtool's run."""
    wrong = alert_test("ImgclsReplicaDown", {f"up{labels(A)}": "1x12"},
                       {"4m": [expected(f"Replica {A} does not answer Prometheus' scrape",
                                        instance=A)]})
    assert rule_tests(tmp_path, RULES, [wrong]).returncode != 0


@needs_promtool
def test_the_error_ratio_is_recorded_as_failed_over_all_predictions(tmp_path):
    test = {"interval": "1m", "input_series": [
        {"series": key, "values": values} for key, values in request_counters(A, 95, 5).items()],
        "promql_expr_test": [{"expr": "job:imgcls_request_errors:ratio_rate5m", "eval_time": "10m",
                              "exp_samples": [{"labels": "job:imgcls_request_errors:ratio_rate5m"
                                                         '{job="imgcls"}', "value": 0.05}]}]}
    done = rule_tests(tmp_path, RULES, [test])
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------- a real Prometheus

@needs_prometheus
def test_prometheus_scrapes_both_replicas_and_records_the_rules(served_model, tmp_path):
    cfg = served_model[0]
    digit = sorted((cfg.path("raw_dir") / "digits").glob("*/*.png"))[0].read_bytes()
    with two_replicas(served_model, tmp_path) as targets:
        (tmp_path / "prometheus.yml").write_text(prometheus_yml(targets, 1))
        (tmp_path / "rules.yml").write_text(RULES)
        with local_prometheus(tmp_path, free_loopback_port()) as prometheus:
            wait_for(prometheus, 'count(up{job="imgcls"} == 1) == 2')
            for _ in range(20):  # bounded traffic, over several 1 s scrapes: a rate to record
                for target in targets:
                    assert httpx.post(f"http://{target}/predict", files={
                        "file": ("digit.png", digit)}).status_code == 200
                time.sleep(0.2)
            wait_for(prometheus, 'sum(imgcls_requests_total{endpoint="upload"}) == 40')
            recorded = wait_for(prometheus, 'job_endpoint:imgcls_requests:rate5m'
                                            '{endpoint="upload"}')
            up = query(prometheus, 'up{job="imgcls"}')
            uploads = query(prometheus, 'sum by (instance) (imgcls_requests_total'
                                        '{endpoint="upload", status="200"})')
            predictions = query(prometheus, "sum(imgcls_predictions_total)")
            batch = wait_for(prometheus, "job:imgcls_batch_size:mean5m")
            p99 = wait_for(prometheus, "job:imgcls_request_latency_seconds:p99_5m")
    assert sorted(sample["metric"]["instance"] for sample in up) == sorted(targets)
    assert {sample["value"][1] for sample in up} == {"1"}
    assert {sample["metric"]["instance"]: float(sample["value"][1]) for sample in uploads} == \
        dict.fromkeys(targets, 20.0)
    assert float(recorded[0]["value"][1]) > 0
    assert float(predictions[0]["value"][1]) == 40  # the model's metrics too
    assert float(batch[0]["value"][1]) >= 1 and 0 < float(p99[0]["value"][1]) < 10


def wait_for(prometheus: str, expression: str, seconds: float = 60) -> list[dict]:
    """The query's result once it has a sample that is a number (rules need two scrapes)."""
    deadline = time.monotonic() + seconds
    while True:
        result = query(prometheus, expression)
        if result and result[0]["value"][1] not in ("NaN", "0"):
            return result
        assert time.monotonic() < deadline, f"{expression}: no value after {seconds} s"
        time.sleep(0.5)
