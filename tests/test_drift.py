"""Model drift: the reference the export records, the bounded sliding window and its PSI, and a
real server's drift score on in-distribution digits (low) and on a shifted stream (over the
alert's threshold), with the metrics' labels never taken from what a client sends."""

from __future__ import annotations

import base64
import io
import math
import random
import shutil
import string

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from imgcls_utils.config import CONFIG_RELATIVE_PATH
from imgcls_utils.data_utils import process_data
from imgcls_utils.serving.drift import (DriftMetrics, DriftMonitor, SlidingCounts, drift_reference,
                                        psi)
from imgcls_utils.serving.deployment import DEPLOYMENT_RELATIVE_PATH, load_deployment
from imgcls_utils import model_utils
from imgcls_utils.serving.export import read_version
from imgcls_utils.serving.prometheus_config import rules_yml
from tests.conftest import REPO_ROOT
from tests.live_server import live_server
from tests.prometheus_tools import rule_tests, series_values

NAME = "digits_cnn"
PREDICT = f"/v1/models/{NAME}:predict"
WINDOW = 200
SETTINGS = load_deployment(REPO_ROOT / DEPLOYMENT_RELATIVE_PATH)
MAJOR_SHIFT = SETTINGS.monitoring["drift_psi"]  # 0.25: the rule of thumb for a major shift


# ----------------------------------------------------------------------------- pure parts

def test_the_window_counts_exactly_the_last_values_in_fixed_memory():
    window = SlidingCounts(50, 4)
    size = window.nbytes
    values = np.random.default_rng(0).integers(0, 4, 20_000)
    start = 0
    for chunk in [1, 7, 49, 50, 51, 3, 300, 2] * 40:
        window.add(values[start:start + chunk])
        start += chunk
        expected = np.bincount(values[max(0, start - 50):start], minlength=4)
        assert window.counts.tolist() == expected.tolist()
    assert window.filled == 50 and window.nbytes == size


def test_psi_is_zero_for_the_same_shares_and_large_for_a_shift():
    assert psi([0.25] * 4, [0.25] * 4) == 0
    assert 0 < psi([0.25] * 4, [0.3, 0.2, 0.25, 0.25]) < 0.1
    assert psi([0.25] * 4, [1, 0, 0, 0]) > 5  # an empty bin counts, it does not divide by 0


def test_the_reference_holds_class_shares_and_decile_bins():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(3), 500)
    pixels = rng.uniform(0, 255, (500, 4, 4, 1))
    reference = drift_reference(probabilities, pixels)
    assert reference["images"] == 500 and len(reference["class"]) == 3
    assert math.isclose(sum(reference["class"]), 1)
    for name in ("confidence", "brightness"):
        assert len(reference[name]["edges"]) == 9
        np.testing.assert_allclose(reference[name]["shares"], 0.1, atol=0.01)


def test_an_unloaded_versions_series_are_removed():
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    metrics = DriftMetrics(registry)
    rng = np.random.default_rng(2)
    reference = drift_reference(rng.dirichlet(np.ones(3), 300), rng.uniform(0, 255, (300, 4)))
    monitors = [DriftMonitor(metrics, "m", version, ["a", "b", "c"], reference, 50)
                for version in (1, 2)]
    for monitor in monitors:
        monitor.observe(rng.uniform(0, 255, (120, 4)), rng.dirichlet(np.ones(3), 120))
    assert 'version="1"' in generate_latest(registry).decode()
    assert all(not math.isnan(score) for score in monitors[0].scores.values())
    monitors[0].forget()
    text = generate_latest(registry).decode()
    assert 'version="1"' not in text and 'version="2"' in text


# ----------------------------------------------------------------------------- a real server

@pytest.fixture(scope="module")
def reference_export(served_model, tmp_path_factory):
    """The shared model exported with its processed data (so with a drift reference, and no
    TensorFlow Lite variants): ``(version folder, processed data)``."""
    cfg, folder, _ = served_model
    processed = process_data(cfg)  # the fixture's own, reused
    exported = model_utils.export_model(folder, tmp_path_factory.mktemp("drift_exports"),
                                        processed, tflite_variants=False)
    return exported.folder, processed


def test_the_export_records_the_validation_splits_distributions(reference_export):
    folder, processed = reference_export
    reference = read_version(folder).info["reference"]
    assert reference["images"] == processed.count("val")
    assert len(reference["class"]) == len(processed.class_names)
    assert math.isclose(sum(reference["confidence"]["shares"]), 1)
    assert 0 < reference["brightness"]["edges"][0] < 255


@pytest.fixture(scope="module")
def drift_server(served_model, reference_export, tmp_path_factory):
    folder, _ = reference_export
    log = tmp_path_factory.mktemp("drift_server") / "server.log"
    config = served_model[0].root / CONFIG_RELATIVE_PATH
    with live_server(folder.parent, config, log, f"serve.drift_window={WINDOW}") as server:
        yield server


def test_images(processed) -> list[np.ndarray]:
    """The test split's digits as uint8 arrays (images the model never trained on)."""
    return [np.asarray(Image.open(processed.image_folder / path).convert("L"))
            for path in processed.paths("test")]


test_images.__test__ = False  # a helper, not a test


def encoded(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def stream(url: str, images: list[np.ndarray], per_request: int = 32, after_each=None) -> None:
    """The images sent in requests of ``per_request``; ``after_each()`` called after each."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(images), per_request):
            answer = client.post(PREDICT, json={"instances": [
                {"b64": encoded(image)} for image in images[start:start + per_request]]})
            assert answer.status_code == 200, answer.text
            if after_each:
                after_each()


def metric_samples(url: str, name: str) -> list:
    """Every sample of metric family ``name`` on the server's /metrics."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return [sample for family in families if family.name == name for sample in family.samples]


def drift_scores(url: str) -> dict[str, float]:
    """The served version's PSI of each distribution."""
    return {sample.labels["distribution"]: sample.value
            for sample in metric_samples(url, "imgcls_drift_psi")}


def test_drift_stays_low_in_distribution_and_crosses_the_threshold_on_a_shift(
        drift_server, reference_export, tmp_path):
    url = drift_server.url
    images = test_images(reference_export[1])
    assert len(images) >= WINDOW
    recorded: list[dict] = []  # the scores after each request, as a scrape would see them

    def record() -> None:
        recorded.append(drift_scores(url))

    stream(url, images, after_each=record)
    in_distribution, calm = max(recorded[-1].values()), len(recorded)
    stream(url, [255 - image for image in images], after_each=record)  # white on black
    inverted = max(recorded[-1].values())
    stream(url, [images[0]] * WINDOW)  # one image over and over: one class only
    one_class = drift_scores(url)
    print(f"\ndrift score (largest PSI of class, confidence, brightness; window {WINDOW}): "
          f"in-distribution {in_distribution:.3f} ({recorded[calm - 1]}), inverted digits "
          f"{inverted:.3f}, one class {max(one_class.values()):.3f} ({one_class})")
    # In distribution the PSI is sampling noise: about (bins - 1) * (1/window + 1/reference).
    assert in_distribution < MAJOR_SHIFT < inverted
    assert one_class["class"] > MAJOR_SHIFT
    window = metric_samples(url, "imgcls_drift_window_images")
    assert [sample.value for sample in window] == [WINDOW]
    assert {sample.labels["version"] for sample in window} == {"1"}
    if shutil.which("promtool"):
        alert_fires_on_the_recorded_scores(tmp_path, recorded, calm)


def alert_fires_on_the_recorded_scores(folder, recorded: list[dict], calm: int) -> None:
    """The recorded scores as scraped series, one request's scores a minute, each stream's
    last ones held while the replica waits for traffic (a gauge keeps its value): the drift
    alert stays silent through the in-distribution stream and fires on the shifted one."""
    hold = [recorded[calm - 1]] * 6
    minutes = [*recorded[:calm], *hold, *recorded[calm:], *[recorded[-1]] * 6]
    labels = 'job="imgcls", instance="replica-1:8501", model="digits_cnn", version="1"'
    series = [{"series": f'imgcls_drift_psi{{{labels}, distribution="{name}"}}',
               "values": series_values([None if math.isnan(scores[name]) else scores[name]
                                        for scores in minutes])}
              for name in recorded[0]]
    rules = rules_yml(SETTINGS.monitoring, SETTINGS.max_queued_images)
    threshold = SETTINGS.monitoring["drift_psi"]
    firing = {"exp_labels": {"job": "imgcls", "instance": "replica-1:8501", "model": "digits_cnn",
                             "version": "1", "severity": "warning"},
              "exp_annotations": {
                  "summary": "Predictions of digits_cnn version 1 on replica-1:8501 drifted from "
                             f"its validation reference (PSI {max(minutes[-1].values()):.2f}, "
                             f"over {threshold})",
                  "runbook": "README.md, When an alert fires: ImgclsPredictionDrift"}}
    done = rule_tests(folder, rules, [{"interval": "1m", "input_series": series,
                                       "alert_rule_test": [
        {"eval_time": f"{calm + len(hold) - 1}m", "alertname": "ImgclsPredictionDrift",
         "exp_alerts": []},
        {"eval_time": f"{len(minutes) - 1}m", "alertname": "ImgclsPredictionDrift",
         "exp_alerts": [firing]}]}])
    assert done.returncode == 0, done.stdout


def test_the_window_stays_bounded_under_a_flood(drift_server, reference_export):
    url = drift_server.url
    images = test_images(reference_export[1])[:64]
    rss_before = resident_kb(drift_server.process.pid)
    for _ in range(3):
        stream(url, images * 10, per_request=64)  # 640 images a round
    counted = sum(sample.value for sample in metric_samples(url, "imgcls_predictions"))
    assert counted >= 3 * 640
    assert [sample.value for sample in metric_samples(url, "imgcls_drift_window_images")] \
        == [WINDOW]
    # The window is a few kB; decoding and batching may settle a few MB, never per image.
    assert resident_kb(drift_server.process.pid) - rss_before < 64 * 1024


def resident_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def test_metric_labels_never_come_from_request_data(drift_server, reference_export):
    url = drift_server.url
    image = encoded(test_images(reference_export[1])[0])

    def requests_with_random_names(count: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for name in random_names(count):
                assert client.post(f"/v1/models/{name}:predict",
                                   json={"instances": [{"b64": image}]}).status_code == 404
                client.get(f"/v1/models/{NAME}/versions/{random.randint(2, 10**9)}")
                client.get(f"/{name}", headers={"X-Model": name, "User-Agent": name})
                client.post(f"/v1/models/{NAME}/labels/{name}:predict", json={"instances": []})
                client.get(f"/v1/{name}/{name}")

    requests_with_random_names(3)  # every endpoint and status these requests can reach
    before = series(url)
    requests_with_random_names(50)
    after = series(url)
    assert after == before  # the same series, their values changed: none per name, path, header


def random_names(count: int) -> list[str]:
    return ["".join(random.choices(string.ascii_letters, k=12)) for _ in range(count)]


def series(url: str) -> set[tuple]:
    """Every series on /metrics: its name and labels."""
    return {(sample.name, tuple(sorted(sample.labels.items())))
            for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
            for sample in family.samples}
