"""The Grafana dashboard ``imgcls deploy`` writes into ``Deployment/monitoring/dashboard.json``:
the service's health (request rate, latency quantiles, errors, batch sizes, queue depth, refusals,
replicas up, the served version) and the model's (predicted classes, confidence, input brightness
and the drift score against the export's reference, with the alert's threshold drawn).

Import it in Grafana (Dashboards > New > Import) and pick the Prometheus data source that scrapes
the replicas. Every query reads a metric ``imgcls serve`` exports (tests/test_dashboard.py checks).
"""

from __future__ import annotations

import json

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL_REQUESTS = 'endpoint=~"predict|upload"'
PANEL_WIDTH, PANEL_HEIGHT = 12, 8


def _panel(title: str, targets: list[tuple[str, str]], unit: str = "short",
           description: str = "", thresholds: list[dict] | None = None) -> dict:
    """A time-series panel of ``(query, legend)`` targets."""
    defaults = {"unit": unit}
    if thresholds:
        defaults.update(thresholds={"mode": "absolute", "steps": thresholds},
                        custom={"thresholdsStyle": {"mode": "line"}})
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": DATASOURCE, "fieldConfig": {"defaults": defaults, "overrides": []},
            "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                         "refId": chr(ord("A") + index)}
                        for index, (expr, legend) in enumerate(targets)]}


def _quantiles(histogram: str, by: str, selector: str = "", quantiles=(0.5, 0.9, 0.99),
               window: str = "5m") -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le{by}) (rate({histogram}_bucket{selector}"
             f"[{window}])))", f"p{int(q * 100)}" + ("" if not by else " {{version}}"))
            for q in quantiles]


def service_panels() -> list[dict]:
    return [
        _panel("Request rate by endpoint", [
            ("sum by (endpoint) (rate(imgcls_requests_total[5m]))", "{{endpoint}}")], "reqps"),
        _panel("Prediction latency", _quantiles("imgcls_request_latency_seconds", "",
                                                f"{{{MODEL_REQUESTS}}}"), "s"),
        _panel("Errors by status", [
            ('sum by (status) (rate(imgcls_requests_total{status=~"4..|5.."}[5m]))',
             "{{status}}")], "reqps", "4xx: bad requests (the client's); 5xx: the server's"),
        _panel("Images per model call (dynamic batching)", [
            ("sum(rate(imgcls_batch_size_sum[5m])) / sum(rate(imgcls_batch_size_count[5m]))",
             "mean"),
            *_quantiles("imgcls_batch_size", "", quantiles=(0.9,))]),
        _panel("Queue depth and refusals", [
            ("imgcls_queued_images", "queued {{instance}}"),
            ("sum(rate(imgcls_overloaded_requests_total[5m]))", "429/s")]),
        _panel("Replicas up and the version each serves", [
            ('up{job="imgcls"}', "up {{instance}}"),
            ("imgcls_model_version", "version {{instance}}")]),
    ]


def model_panels(drift_psi: float) -> list[dict]:
    return [
        _panel("Predicted classes (share over 15 min)", [
            ("sum by (class) (rate(imgcls_predictions_total[15m])) / ignoring (class) "
             "group_left sum(rate(imgcls_predictions_total[15m]))", "{{class}}")], "percentunit"),
        _panel("Top-1 confidence", _quantiles("imgcls_prediction_confidence", ", version",
                                              quantiles=(0.1, 0.5), window="15m"),
               "percentunit", "A falling confidence: inputs the model is unsure about"),
        _panel("Input brightness (mean pixel value)", _quantiles(
            "imgcls_input_brightness", ", version", quantiles=(0.1, 0.5, 0.9), window="15m")),
        _panel("Drift score (PSI against the validation reference)", [
            ("max by (version, distribution) (imgcls_drift_psi)",
             "{{distribution}} v{{version}}"),
            ("max by (version) (imgcls_drift_window_images)", "window images v{{version}}")],
            description="Below 0.1: the same population; over the line: the drift alert",
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": drift_psi}]),
    ]


def dashboard(drift_psi: float) -> dict:
    """The dashboard: two rows of panels, service then model."""
    panels = []
    for row, (title, row_panels) in enumerate((("Service", service_panels()),
                                               ("Model", model_panels(drift_psi)))):
        panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"x": 0, "y": row * 100, "w": 24, "h": 1}})
        for index, panel in enumerate(row_panels):
            panel["gridPos"] = {"x": index % 2 * PANEL_WIDTH,
                                "y": row * 100 + 1 + index // 2 * PANEL_HEIGHT,
                                "w": PANEL_WIDTH, "h": PANEL_HEIGHT}
            panels.append(panel)
    for number, panel in enumerate(panels, 1):
        panel["id"] = number
    return {"title": "imgcls serve", "uid": "imgcls-serve", "schemaVersion": 39,
            "tags": ["imgcls"], "timezone": "utc", "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"},
            "templating": {"list": [{"name": "datasource", "label": "Prometheus",
                                     "type": "datasource", "query": "prometheus"}]},
            "panels": panels}


def dashboard_json(drift_psi: float) -> str:
    return json.dumps(dashboard(drift_psi), indent=2) + "\n"
