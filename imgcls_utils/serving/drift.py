"""Watching the model itself: what it predicts in production against what it predicted on its
validation split.

A served model whose inputs drift away from its training data keeps answering, confidently, and
request metrics do not show it. The export records a *reference* (``reference`` in
``imgcls.json``): on the validation split, the share of each predicted class, and the
distributions of the top-1 confidence and of the input's mean brightness over bins cut at the
reference's own deciles. The server keeps the same three distributions over the last
``serve.drift_window`` images of each version, in fixed arrays (a ring of bin indices and their
counts: memory does not grow with traffic), and exports the population stability index (PSI,
``sum((live - reference) * ln(live / reference))``) of each against the reference. Rules of thumb
for PSI: below 0.1 the same population, 0.1-0.25 a moderate shift, above 0.25 a major one.
"""

from __future__ import annotations

import math
import threading

import numpy as np

REFERENCE_BINS = 10  # deciles of the reference: each bin holds a tenth of its images
PSI_FLOOR = 1e-4  # an empty bin's share, so that ln() stays finite (the usual convention)
MIN_WINDOW_IMAGES = 100  # fewer images than this (or a smaller window) give no score yet
DISTRIBUTIONS = ("class", "confidence", "brightness")
CONFIDENCE_BUCKETS = (.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .99, 1.0)
BRIGHTNESS_BUCKETS = tuple(range(16, 256, 16))


# ----------------------------------------------------------------------------- the reference

def drift_reference(probabilities: np.ndarray, pixels: np.ndarray) -> dict:
    """What the export records: the distributions of a split's predicted classes, top-1
    confidence and mean brightness (of ``pixels`` 0-255), the latter two over bins cut at the
    split's deciles (``edges``: the inner bin edges)."""
    classes = probabilities.argmax(-1)
    reference = {"images": int(len(probabilities)),
                 "class": _shares(np.bincount(classes, minlength=probabilities.shape[-1]))}
    for name, values in (("confidence", probabilities.max(-1)), ("brightness",
                                                                   mean_brightness(pixels))):
        edges = np.unique(np.quantile(values, np.arange(1, REFERENCE_BINS) / REFERENCE_BINS))
        bins = np.searchsorted(edges, values, side="right")
        reference[name] = {"edges": [float(edge) for edge in edges],
                           "shares": _shares(np.bincount(bins, minlength=len(edges) + 1))}
    return reference


def mean_brightness(pixels: np.ndarray) -> np.ndarray:
    """Each image's mean pixel value, 0-255: the cheapest statistic of what comes in."""
    return pixels.reshape(len(pixels), -1).mean(axis=1)


def _shares(counts: np.ndarray) -> list[float]:
    total = max(int(counts.sum()), 1)
    return [float(count) / total for count in counts]


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """The population stability index of ``live`` shares against ``reference`` shares."""
    reference = np.maximum(np.asarray(reference, float), PSI_FLOOR)
    live = np.maximum(np.asarray(live, float), PSI_FLOOR)
    return float(np.sum((live - reference) * np.log(live / reference)))


# ----------------------------------------------------------------------------- the live window

class SlidingCounts:
    """The bin counts of the last ``size`` values: a ring of bin indices and their counts,
    fixed in size whatever the traffic."""

    def __init__(self, size: int, bins: int):
        self.ring = np.zeros(size, np.int32)
        self.counts = np.zeros(bins, np.int64)
        self.filled = 0
        self.head = 0

    def add(self, bins: np.ndarray) -> None:
        size = len(self.ring)
        bins = np.asarray(bins, np.int32)[-size:]  # older ones would be pushed out at once
        positions = (self.head + np.arange(len(bins))) % size
        # The ring fills from 0 before it wraps: the last `overwritten` positions hold values.
        overwritten = max(0, self.filled + len(bins) - size)
        replaced = self.ring[positions[len(bins) - overwritten:]]
        self.counts -= np.bincount(replaced, minlength=len(self.counts))
        self.ring[positions] = bins
        self.counts += np.bincount(bins, minlength=len(self.counts))
        self.head = (self.head + len(bins)) % size
        self.filled = min(size, self.filled + len(bins))

    def shares(self) -> np.ndarray:
        return self.counts / max(self.filled, 1)

    @property
    def nbytes(self) -> int:
        return self.ring.nbytes + self.counts.nbytes


class DriftMetrics:
    """The model's Prometheus metrics, per model and version: the live distributions (counters
    and histograms, for dashboards and rates) and the drift scores over the window."""

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        labels = ["model", "version"]
        self.predictions = Counter("imgcls_predictions", "Images classified, by predicted class",
                                   [*labels, "class"], registry=registry)
        self.confidence = Histogram("imgcls_prediction_confidence",
                                    "Top-1 probability of each image classified", labels,
                                    buckets=CONFIDENCE_BUCKETS, registry=registry)
        self.brightness = Histogram("imgcls_input_brightness",
                                    "Mean pixel value (0-255) of each image classified", labels,
                                    buckets=BRIGHTNESS_BUCKETS, registry=registry)
        self.psi = Gauge("imgcls_drift_psi", "Population stability index of the last "
                         "serve.drift_window images against the export's validation reference",
                         [*labels, "distribution"], registry=registry)
        self.window = Gauge("imgcls_drift_window_images",
                            "Images in the drift window (at most serve.drift_window)", labels,
                            registry=registry)


class DriftMonitor:
    """One served version's live distributions and drift scores. Without a reference (an
    export made without its processed data: ``imgcls export --no-tflite``) it counts and
    histograms the predictions but scores nothing."""

    def __init__(self, metrics: DriftMetrics, model: str, version: int, class_names: list[str],
                 reference: dict | None, window: int):
        self.metrics, self.labels = metrics, (model, str(version))
        self.class_names = class_names
        self.reference = reference if _fits(reference, class_names) else None
        self.min_images = min(MIN_WINDOW_IMAGES, window)
        self.windows = {} if self.reference is None else {
            "class": SlidingCounts(window, len(class_names)),
            **{name: SlidingCounts(window, len(self.reference[name]["shares"]))
               for name in DISTRIBUTIONS[1:]}}
        self._lock = threading.Lock()
        self.scores = dict.fromkeys(self.windows, math.nan)  # each distribution's PSI now
        for name in self.windows:
            metrics.psi.labels(*self.labels, name).set(math.nan)

    def observe(self, pixels: np.ndarray, probabilities: np.ndarray) -> None:
        """Count one model call's images: ``pixels`` as the model took them (0-255) and the
        probabilities it answered."""
        values = {"class": probabilities.argmax(-1), "confidence": probabilities.max(-1),
                  "brightness": mean_brightness(pixels)}
        with self._lock:
            self._export_distributions(values)
            if self.reference is not None:
                self._score(values)

    def _export_distributions(self, values: dict) -> None:
        for index, count in enumerate(np.bincount(values["class"],
                                                  minlength=len(self.class_names))):
            if count:
                self.metrics.predictions.labels(*self.labels, self.class_names[index]).inc(
                    int(count))
        for metric, name in ((self.metrics.confidence, "confidence"),
                             (self.metrics.brightness, "brightness")):
            series = metric.labels(*self.labels)
            for value in values[name]:
                series.observe(float(value))

    def _score(self, values: dict) -> None:
        for name, window in self.windows.items():
            bins = values[name] if name == "class" else np.searchsorted(
                self.reference[name]["edges"], values[name], side="right")
            window.add(bins)
        filled = self.windows["class"].filled
        self.metrics.window.labels(*self.labels).set(filled)
        for name, window in self.windows.items():
            reference = self.reference[name] if name == "class" else self.reference[name]["shares"]
            score = psi(reference, window.shares()) if filled >= self.min_images else math.nan
            self.scores[name] = score
            self.metrics.psi.labels(*self.labels, name).set(score)

    def forget(self) -> None:
        """Remove the version's series: an unloaded version leaves no metrics behind."""
        for name in self.windows:
            self.metrics.psi.remove(*self.labels, name)
        for metric in (self.metrics.window, self.metrics.confidence, self.metrics.brightness):
            try:
                metric.remove(*self.labels)
            except KeyError:  # never observed
                pass
        for class_name in self.class_names:
            try:
                self.metrics.predictions.remove(*self.labels, class_name)
            except KeyError:
                pass


def _fits(reference: dict | None, class_names: list[str]) -> bool:
    """A reference of this model's classes (one recorded for another label set is no use)."""
    return bool(reference) and len(reference.get("class", [])) == len(class_names)
