"""What ``imgcls deploy`` writes into ``Deployment/monitoring/``: Prometheus' configuration
scraping every replica, and its recording and alerting rules.

The rules are written from ``deployment.yaml``'s ``monitoring:`` thresholds (and
``serve.max_queued_images``, which the queue's saturation is a share of), so what pages an
operator is set in the same file as what the replicas do. ``promtool check rules`` and
``promtool test rules`` check them (tests/test_prometheus_config.py), with series that fire each
alert and series that must not. The README's "When an alert fires" says what each one means.
"""

from __future__ import annotations

import yaml

from ..config_rules import Rule, fraction, integer, positive_number, text

MONITORING_DIR = "monitoring"  # next to deployment.yaml
PROMETHEUS_FILE = "prometheus.yml"
RULES_FILE = "rules.yml"
JOB = "imgcls"
PROMETHEUS_CONTAINER_DIR = "/etc/prometheus"
PROMETHEUS_CONTAINER_PORT = 9090
MODEL_ENDPOINTS = 'endpoint=~"predict|upload"'  # requests that reach the model
FAILED = f'{MODEL_ENDPOINTS}, status=~"5.."'
REPLICA_DOWN_FOR = "1m"  # a replica down is paged at once (nginx already routes around it)

MONITORING_RULES: dict[str, Rule] = {
    "monitoring.prometheus_image": text(),
    "monitoring.prometheus_host": text(),
    "monitoring.prometheus_port": integer(1, maximum=65535),
    "monitoring.scrape_interval_s": integer(1, maximum=300),
    "monitoring.alert_after_minutes": integer(1, maximum=1440),
    "monitoring.error_ratio": fraction(low_open=True),
    "monitoring.p99_latency_ms": integer(1),
    "monitoring.queue_saturation": fraction(low_open=True, high_open=False),
    "monitoring.drift_psi": positive_number(),
}


def prometheus_yml(targets: list[str], scrape_interval_s: int,
                   rule_files: tuple[str, ...] = (RULES_FILE,)) -> str:
    """Prometheus' configuration: every replica (``host:port``) scraped as job ``imgcls``,
    the rules evaluated as often."""
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s}s",
                   "evaluation_interval": f"{scrape_interval_s}s"},
        "rule_files": list(rule_files),
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics",
                            "static_configs": [{"targets": targets}]}],
    }
    return yaml.safe_dump(config, sort_keys=False, width=100)


def recording_rules() -> list[dict]:
    """What the alerts and the dashboard read: rates, ratios and quantiles over 5 minutes."""
    def rate(metric: str, selector: str = MODEL_ENDPOINTS, by: str = "job") -> str:
        return f"sum by ({by}) (rate({metric}{{{selector}}}[5m]))" if selector else \
            f"sum by ({by}) (rate({metric}[5m]))"

    return [
        {"record": "job_endpoint:imgcls_requests:rate5m",
         "expr": rate("imgcls_requests_total", "", "job, endpoint")},
        {"record": "job:imgcls_request_errors:ratio_rate5m",
         "expr": f"{rate('imgcls_requests_total', FAILED)} / {rate('imgcls_requests_total')}"},
        {"record": "job:imgcls_request_latency_seconds:p99_5m",
         "expr": "histogram_quantile(0.99, "
                 f"{rate('imgcls_request_latency_seconds_bucket', by='job, le')})"},
        {"record": "job:imgcls_overloaded_requests:rate5m",
         "expr": rate("imgcls_overloaded_requests_total", "")},
        {"record": "job:imgcls_batch_size:mean5m",
         "expr": f"{rate('imgcls_batch_size_sum', '')} / {rate('imgcls_batch_size_count', '')}"},
        {"record": "instance_model_version:imgcls_drift_psi:max",
         "expr": "max by (job, instance, model, version) (imgcls_drift_psi)"},
    ]


def alerting_rules(monitoring: dict, max_queued_images: int) -> list[dict]:
    """One alert per way the service or its model goes wrong, thresholds from ``monitoring``."""
    wait = f"{monitoring['alert_after_minutes']}m"
    saturated = round(monitoring["queue_saturation"] * max_queued_images, 3)
    return [
        _alert("ImgclsReplicaDown", f'up{{job="{JOB}"}} == 0', REPLICA_DOWN_FOR, "page",
               "Replica {{ $labels.instance }} does not answer Prometheus' scrape"),
        _alert("ImgclsNoVersionAvailable",
               f'up{{job="{JOB}"}} == 1 unless on (job, instance) imgcls_model_version', wait,
               "page", "Replica {{ $labels.instance }} answers but serves no model version"),
        _alert("ImgclsHighErrorRate",
               f"job:imgcls_request_errors:ratio_rate5m > {monitoring['error_ratio']}", wait,
               "page", "{{ $value | humanizePercentage }} of predictions failed (5xx) over 5 "
               f"minutes (over {monitoring['error_ratio']:.0%})"),
        _alert("ImgclsHighLatency",
               f"job:imgcls_request_latency_seconds:p99_5m > {monitoring['p99_latency_ms'] / 1000}",
               wait, "page", "p99 prediction latency is {{ $value | humanizeDuration }} (over "
               f"{monitoring['p99_latency_ms']} ms)"),
        _alert("ImgclsQueueSaturated", f"imgcls_queued_images > {saturated}", wait, "warning",
               "Replica {{ $labels.instance }} has {{ $value }} images waiting (over "
               f"{monitoring['queue_saturation']:.0%} of serve.max_queued_images = "
               f"{max_queued_images})"),
        _alert("ImgclsRequestsRefused", "job:imgcls_overloaded_requests:rate5m > 0", wait,
               "warning", '{{ $value | printf "%.2f" }} requests/s refused with 429: the '
               "replicas are full"),
        _alert("ImgclsVersionChanged", "changes(imgcls_model_version[10m]) > 0", None, "info",
               "Replica {{ $labels.instance }} changed the version of {{ $labels.model }} it "
               "serves ({{ $value }} time(s) in 10 minutes)"),
        _alert("ImgclsPredictionDrift",
               f"instance_model_version:imgcls_drift_psi:max > {monitoring['drift_psi']}", wait,
               "warning", "Predictions of {{ $labels.model }} version {{ $labels.version }} on "
               "{{ $labels.instance }} drifted from its validation reference (PSI "
               '{{ $value | printf "%.2f" }}' f", over {monitoring['drift_psi']})"),
    ]


def _alert(name: str, expr: str, wait: str | None, severity: str, summary: str) -> dict:
    rule = {"alert": name, "expr": expr}
    if wait:
        rule["for"] = wait
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary,
                           "runbook": f"README.md, When an alert fires: {name}"}
    return rule


def rules_yml(monitoring: dict, max_queued_images: int) -> str:
    """The rule file: the recording rules, then the alerts."""
    groups = {"groups": [{"name": "imgcls-recording", "rules": recording_rules()},
                         {"name": "imgcls-alerts",
                          "rules": alerting_rules(monitoring, max_queued_images)}]}
    return yaml.safe_dump(groups, sort_keys=False, width=100)


def prometheus_service(monitoring: dict, replicas: list[str]) -> dict:
    """compose.yaml's Prometheus: the rendered folder mounted read-only, its UI on the host.
    In the ``monitoring`` profile: ``--profile monitoring`` starts it with the stack (a cluster
    that has its own Prometheus loads monitoring/ there instead)."""
    return {
        "image": monitoring["prometheus_image"],
        "profiles": ["monitoring"],
        "command": [f"--config.file={PROMETHEUS_CONTAINER_DIR}/{PROMETHEUS_FILE}",
                    "--storage.tsdb.path=/prometheus"],
        "ports": [f"{monitoring['prometheus_host']}:{monitoring['prometheus_port']}:"
                  f"{PROMETHEUS_CONTAINER_PORT}"],
        "volumes": [f"./{MONITORING_DIR}:{PROMETHEUS_CONTAINER_DIR}:ro"],
        "depends_on": replicas,
        "restart": "unless-stopped",
    }
