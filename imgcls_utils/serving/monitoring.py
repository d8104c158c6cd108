"""What the server tells its operator: Prometheus metrics (``/metrics``) and one JSON log line
per request and per version event (loaded, unloaded, failed, collected) on stderr."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from .drift import DriftMetrics
from .rest_api import PREDICT_PATH, STATUS_PATH

LOGGER = logging.getLogger("imgcls.server")


class Metrics:
    """Prometheus metrics in a registry of their own (one per app)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("imgcls_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("imgcls_request_latency_seconds", "Time to answer a request",
                                 ["endpoint"], registry=registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                          2.5, 5, 10))
        self.batch_size = Histogram("imgcls_batch_size", "Images per model call",
                                    registry=registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.model_version = Gauge("imgcls_model_version", "The version being served",
                                   ["model"], registry=registry)
        self.warmup_records = Counter("imgcls_warmup_requests",
                                      "Warm-up requests replayed when versions loaded",
                                      ["model"], registry=registry)
        self.warmup_seconds = Gauge("imgcls_warmup_seconds",
                                    "How long the last version's warm-up took", ["model"],
                                    registry=registry)
        self.admitted = Gauge("imgcls_queued_images",
                              "Images admitted and not yet answered", registry=registry)
        self.rejected = Counter("imgcls_overloaded_requests",
                                "Requests refused with 429 (serve.max_queued_images)",
                                registry=registry)
        self.drift = DriftMetrics(registry)  # what the model predicts, against its reference

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def endpoint_of(method: str, path: str) -> str:
    """A bounded label for metrics: which of the server's endpoints a path is."""
    if path.startswith("/v1/"):
        if PREDICT_PATH.fullmatch(path):
            return "predict"
        match = STATUS_PATH.fullmatch(path)
        return ("metadata" if match.group(4) else "status") if match else "malformed"
    return {"/predict": "upload", "/healthz": "healthz", "/metrics": "metrics",
            "/": "page"}.get(path, "other")


def configure_logging() -> None:
    """The server's JSON lines on stderr, one per request and per version event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def log_event(event: str, **fields) -> None:
    """One JSON line on the server's log."""
    LOGGER.info(json.dumps({"time": now(), "event": event, **fields}))


def now() -> str:
    """The time of a log line: UTC, to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
