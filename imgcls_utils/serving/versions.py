"""The versions of one export in the server: each loaded, warmed up and counted while requests
use it; the newest swapped in while the old one keeps serving, and unloaded once its last request
is answered. Each version's TensorFlow Serving state (LOADING, AVAILABLE, UNLOADING, END) is
what the status API reports.
"""

from __future__ import annotations

import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..quiet_tensorflow import tf
from .export import ASSETS_EXTRA, WARMUP_FILE, ExportedVersion, read_version, versions
from .drift import DriftMonitor
from .graph import PROBABILITIES, SERVING_SIGNATURE, ExportedGraph
from .monitoring import LOGGER, Metrics, log_event
from .rest_api import InvalidArgument, ModelCall, NotFound, Unavailable, status_response
from .settings import ServeSettings, ServeTarget


@dataclass(frozen=True)
class Signature:
    """A servable signature: its one input and whether it takes encoded images or pixels."""

    name: str
    input_name: str
    takes_images: bool


class ServedVersion:
    """One version of an export: loaded, warmed up, and counted while requests use it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.number = int(self.folder.name)
        self.state = "START"
        self.error_code, self.error_message = "OK", ""
        self.in_flight = 0
        self.exported: ExportedVersion | None = None
        self.signatures: dict[str, Signature] = {}
        self.signature_defs: dict = {}
        self.warmup: dict = {}
        self.graph: ExportedGraph | None = None
        self.monitor: DriftMonitor | None = None  # set when it starts serving requests

    @property
    def class_names(self) -> list[str]:
        return self.exported.class_names

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        height, width = self.exported.info["image_size"]
        return height, width, self.exported.info["channels"]

    @property
    def max_pixels(self) -> int:
        return self.exported.info["max_pixels"]

    def load(self) -> None:
        self.exported = read_version(self.folder)
        self.signature_defs = read_signature_defs(self.folder)
        self.signatures = servable_signatures(self.signature_defs)
        self.graph = ExportedGraph(self.folder)

    def release(self) -> None:
        self.graph = None

    def signature(self, name: str) -> Signature:
        name = name or SERVING_SIGNATURE
        if name not in self.signatures:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        return self.signatures[name]

    def decode(self, images: list[bytes]) -> np.ndarray:
        """Encoded images as float32 ``(n, H, W, C)`` pixels, decoded as training decodes."""
        return self.graph.decode(images)

    def classify(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """A request's model call: its predictions counted by the drift monitor."""
        outputs = self.graph.classify_pixels(pixels)
        self.monitor.observe(pixels, outputs[PROBABILITIES])
        return outputs

    def warm_up(self, batch_sizes: list[int]) -> dict:
        """Replay the version's warm-up requests (TensorFlow Serving's ``PredictionLog``
        records in ``assets.extra``) through decoding and the model, then run every batch size
        the batcher may use: the first real request finds everything traced and allocated."""
        from tensorflow_serving.apis import prediction_log_pb2

        started = time.perf_counter()
        replayed, skipped = 0, 0
        path = self.folder / ASSETS_EXTRA / WARMUP_FILE
        if path.is_file():
            for record in tf.data.TFRecordDataset(str(path)):
                log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
                if log.WhichOneof("log_type") != "predict_log":
                    skipped += 1  # classify/regress/multi-inference logs: not our signatures
                    continue
                request = log.predict_log.request
                signature = self.signature(request.model_spec.signature_name)
                values = tf.make_ndarray(request.inputs[signature.input_name])
                pixels = (self.decode(list(values.reshape(-1))) if signature.takes_images
                          else values.astype(np.float32))
                self.graph.classify_pixels(pixels)
                replayed += 1
        for size in batch_sizes:
            self.graph.classify_pixels(np.zeros((size, *self.pixel_shape), np.float32))
        return {"records": replayed, "skipped": skipped, "batch_sizes": batch_sizes,
                "seconds": round(time.perf_counter() - started, 3)}


def read_signature_defs(folder: Path) -> dict:
    """The SavedModel's signature defs as TensorFlow Serving's metadata prints them."""
    from google.protobuf.json_format import MessageToDict
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved = saved_model_pb2.SavedModel.FromString((Path(folder) / "saved_model.pb").read_bytes())
    graph = next((meta for meta in saved.meta_graphs if "serve" in meta.meta_info_def.tags),
                 saved.meta_graphs[0])
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in graph.signature_def.items():
        signature_map.signature_def[name].CopyFrom(signature)
    return MessageToDict(signature_map, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)["signature_def"]


def servable_signatures(signature_defs: dict) -> dict[str, Signature]:
    """The predict signatures of one input: a string input takes encoded images, a float one
    pixels (both end in the ``pixels`` signature's model call)."""
    found = {}
    for name, signature in signature_defs.items():
        inputs = signature.get("inputs", {})
        if name.startswith("__") or len(inputs) != 1:
            continue
        (input_name, info), = inputs.items()
        if info.get("dtype") in ("DT_STRING", "DT_FLOAT"):
            found[name] = Signature(name, input_name, info["dtype"] == "DT_STRING")
    return found


class ModelManager:
    """Loads, warms up, hot-swaps and unloads the versions of one export; keeps each version's
    TensorFlow Serving state (LOADING, AVAILABLE, UNLOADING, END) for the status API."""

    def __init__(self, target: ServeTarget, settings: ServeSettings, metrics: Metrics):
        self.target = target
        self.name = target.name
        self.settings = settings
        self.metrics = metrics
        self.current: ServedVersion | None = None
        self.known: dict[int, ServedVersion] = {}
        self._failed: dict[int, tuple] = {}  # version -> its folder's files when it failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = threading.Event()  # set once a first version is AVAILABLE
        self._unloaded = threading.Event()  # a version was released: its garbage is to collect

    # -- polling

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll_forever, name="imgcls-versions",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
                if self._unloaded.is_set():
                    self._unloaded.clear()
                    log_event("collected", model=self.name, pause_ms=collect_garbage())
            except Exception as error:  # a bad folder must not end the polling
                LOGGER.exception("polling %s failed: %s", self.target.folder, error)
            self._stop.wait(self.settings.poll_seconds)

    def on_disk(self) -> list[Path]:
        """The complete versions there are, newest first (the pinned one alone if pinned)."""
        if self.target.pinned:
            return [self.target.folder] if self.target.folder.is_dir() else []
        return [self.target.folder / str(number)
                for number in reversed(versions(self.target.folder))]

    def poll(self) -> None:
        """Serve the newest version there is: load it unless it is the one serving; one that
        failed to load (and has not changed since) is passed over for the next newest."""
        for folder in self.on_disk():
            if self.current and self.current.number == int(folder.name):
                return
            files = folder_files(folder)
            if self._failed.get(int(folder.name)) != files and self._load(folder, files):
                return

    def _load(self, folder: Path, files: tuple) -> bool:
        """Load, warm up and swap in one version; False when it cannot be loaded."""
        version = ServedVersion(folder)
        with self._lock:
            self.known[version.number] = version
            version.state = "LOADING"
        started = time.perf_counter()
        try:
            version.load()
            version.warmup = version.warm_up(self.settings.batch_sizes())
        except Exception as error:
            version.release()
            with self._lock:
                version.state, version.error_code = "END", "UNKNOWN"
                version.error_message = f"{type(error).__name__}: {error}"[:1000]
            self._failed[version.number] = files
            log_event("load_failed", model=self.name, version=version.number,
                      error=version.error_message)
            return False
        # Loading leaves the Python heap at about 400,000 objects (TensorFlow's own), which a
        # full garbage collection takes ~250 ms to scan, stalling every request: frozen, they
        # are no longer scanned (a first version with nothing serving yet collects first).
        if self.current is None:
            collect_garbage()
        else:
            gc.freeze()
        version.monitor = DriftMonitor(self.metrics.drift, self.name, version.number,
                                       version.class_names, version.exported.info.get("reference"),
                                       self.settings.drift_window)
        self.metrics.warmup_records.labels(self.name).inc(version.warmup["records"])
        self.metrics.warmup_seconds.labels(self.name).set(version.warmup["seconds"])
        with self._lock:
            old, self.current = self.current, version
            version.state = "AVAILABLE"
            ended = old is not None and self._retire(old)
        self.metrics.model_version.labels(self.name).set(version.number)
        self.available.set()
        log_event("loaded", model=self.name, version=version.number, folder=str(folder),
                  load_ms=round((time.perf_counter() - started) * 1000, 1),
                  warmup_ms=round(version.warmup["seconds"] * 1000, 1),
                  warmup_records=version.warmup["records"],
                  warmup_batch_sizes=version.warmup["batch_sizes"],
                  drift_reference=version.monitor.reference is not None,
                  replaced=old.number if old else None)
        if ended:
            self._ended(old)
        return True

    def _retire(self, version: ServedVersion) -> bool:
        """Mark ``version`` UNLOADING (under the lock); True when nothing uses it any more."""
        version.state = "UNLOADING"
        if version.in_flight:
            return False
        version.state = "END"
        return True

    def _ended(self, version: ServedVersion) -> None:
        version.release()
        version.monitor.forget()
        self._unloaded.set()  # its frozen objects are collected by the polling thread
        log_event("unloaded", model=self.name, version=version.number)

    # -- requests

    @contextmanager
    def acquire(self, call: ModelCall):
        """The loaded version a request names, held (not unloaded) until the block ends."""
        if call.label is not None:
            raise InvalidArgument(f"Unrecognized servable version label: {call.label}")
        with self._lock:
            version = self.current
            if call.name != self.name or (version and call.version not in (None, version.number)):
                raise NotFound(f"Servable not found for request: {call.servable()}")
            if version is not None:
                version.in_flight += 1
        if version is None:
            raise Unavailable(f"Servable not found for request: {call.servable()}: "
                              f"{self.waiting_for()}")
        try:
            yield version
        finally:
            with self._lock:
                version.in_flight -= 1
                ended = version.state == "UNLOADING" and version.in_flight == 0
                if ended:
                    version.state = "END"
            if ended:
                self._ended(version)

    def waiting_for(self) -> str:
        """Why no version is available yet, in words."""
        with self._lock:
            loading = [v.number for v in self.known.values() if v.state == "LOADING"]
            failed = [f"{v.number} ({v.error_message})" for v in self.known.values()
                      if v.error_code != "OK"]
        if loading:
            return f"version {loading[-1]} of {self.name} is loading"
        if failed:
            return f"no version of {self.name} could be loaded: {'; '.join(failed)}"
        return f"no version of {self.name} under {self.target.folder} yet"

    def status(self, call: ModelCall) -> dict:
        """GetModelStatus: every version this server has known, newest first."""
        if call.label is not None:
            raise InvalidArgument(f"Unrecognized servable version label: {call.label}")
        with self._lock:
            known = dict(self.known) if call.name == self.name else {}
            if call.version is not None:
                if call.version not in known:
                    raise NotFound(f"Could not find version {call.version} of model {call.name}")
                known = {call.version: known[call.version]}
            if not known:
                raise NotFound(f"Could not find any versions of model {call.name}")
            return status_response([(v.number, v.state, v.error_code, v.error_message)
                                    for _, v in sorted(known.items(), reverse=True)])


def collect_garbage() -> float:
    """Collect everything (an unloaded version's objects included), then freeze what is left:
    later collections scan only what serving creates. The pause, in ms."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return round((time.perf_counter() - started) * 1000, 1)


def folder_files(folder: Path) -> tuple:
    """Every file of a folder with its size and time: a failed version is retried once this
    changes (a copy that was still being written)."""
    files = []
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
        except OSError:  # removed while listed
            continue
    return tuple(sorted(files))
