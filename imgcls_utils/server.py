"""``imgcls serve``: an export behind TensorFlow Serving's REST API, with uploads, batching,
hot reload and monitoring.

One FastAPI app (``create_app``, run by uvicorn in ``serve``) holds:

- a ``ModelManager`` that loads the newest version of ``exports/<name>/``, replays its warm-up
  requests and the batch sizes the batcher will use before calling it AVAILABLE, polls the
  folder for newer versions, loads and warms each while the old one keeps serving, swaps it in
  atomically and unloads the old one once its in-flight requests are answered;
- a ``Batcher``: each request's images are checked from their headers and decoded (the
  export's own ``preprocess``, the decoding training used) on their own, then queued; a single
  worker thread runs the ``pixels`` signature on up to ``serve.max_batch_size`` queued images at
  a time and hands each request its rows back. The queue is bounded (429 when full);
- middleware that limits body sizes while reading (413), checks an optional API key (401),
  counts and times every request for ``/metrics`` and writes one JSON log line per request.

TensorFlow Serving's JSON (paths, formats, errors) lives in ``serving_api``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import hmac
import html
import io
import json
import logging
import os
import socket
import string
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np
import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

from .config import Config, request_bytes
from .errors import UserError
from .export import (ASSETS_EXTRA, WARMUP_FILE, ExportedVersion, ExportError, export_model,
                     find_version, read_version, versions)
from .files import file_sha256
from .images import DECODE_ERRORS, pixel_limit_checked_by_caller
from .model_folders import CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, model_name
from .prediction import NOT_A_GRAPH_FORMAT, graph_header_problem
from .runtime import tf
from .serving_graph import PIXELS_SIGNATURE, SERVING_SIGNATURE
from .serving_api import (PREDICT_PATH, STATUS_PATH, ApiError, InvalidArgument, ModelCall,
                          NotFound, ResourceExhausted, Unavailable, decode_bytes, error_body,
                          float32_value, metadata_response, parse_json_body, parse_path,
                          parse_predict, pixels_array, predict_response, signature_name,
                          status_response)

LOGGER = logging.getLogger("imgcls.server")
RETRY_AFTER_SECONDS = "1"


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class ServeSettings:
    """The ``serve:`` section of the config (its defaults live in Hyperparameters.yaml) and
    the project's ``exports_dir`` (where a model folder given to serve is exported)."""

    host: str
    port: int
    max_batch_size: int
    batch_timeout_ms: float
    max_queued_images: int
    max_request_mb: float
    poll_seconds: float
    top_k: int
    api_key_variable: str
    exports_dir: Path | None = None

    @classmethod
    def from_config(cls, cfg: Config, **overrides) -> "ServeSettings":
        """The settings of ``cfg``; ``overrides`` (``max_batch_size=1``) replace single ones."""
        values = {**dict(cfg.serve), "exports_dir": cfg.path("exports_dir"), **overrides}
        return cls(**values)

    @property
    def max_request_bytes(self) -> int:
        """The largest request body accepted; the web page checks a file against it too."""
        return request_bytes(self.max_request_mb)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    def batch_sizes(self) -> list[int]:
        """The batch sizes warmed up at load: powers of two up to ``max_batch_size`` and it."""
        sizes = {1, self.max_batch_size}
        size = 2
        while size < self.max_batch_size:
            sizes.add(size)
            size *= 2
        return sorted(sizes)


# ----------------------------------------------------------------------------- target

@dataclass(frozen=True)
class ServeTarget:
    """What is served: ``exports/<name>`` (its newest version, polled for newer ones) or one
    version folder (``pinned``); ``note`` says how it was chosen."""

    name: str
    folder: Path
    pinned: bool = False
    note: str = ""

    def describe(self) -> str:
        what = (f"version {self.folder.name} of {self.folder.parent} only" if self.pinned
                else f"the newest version under {self.folder}")
        return f"{what}{'; ' + self.note if self.note else ''}"


def resolve_target(path: Path | ServeTarget, exports_dir: Path | None = None) -> ServeTarget:
    """An export (``exports/<name>``, one of its versions) or a model folder, which is exported
    into ``exports_dir`` first unless its newest export is of this very ``model.keras``."""
    if isinstance(path, ServeTarget):
        return path
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; serve an export (exports/<name>, or one of its "
                        "version folders) or a model folder")
    if (path / MANIFEST_FILE).is_file():
        return _exported_model_folder(path, exports_dir)
    if (path / "saved_model.pb").is_file():
        if not path.name.isdigit():
            raise ExportError(f"{path} is a SavedModel, but not a version folder: TensorFlow "
                              "Serving's layout is exports/<name>/<version number>/")
        return ServeTarget(read_version(path).name, path.resolve(), pinned=True)
    found = versions(path)
    if found:
        read_version(path / str(found[-1]))  # not written by imgcls export: say so now
        return ServeTarget(path.resolve().name, path.resolve())
    if path.is_dir() and not [child for child in path.iterdir() if not child.name.startswith(".")]:
        return ServeTarget(path.resolve().name, path.resolve(),
                           note="no version there yet: waiting for one")
    raise ExportError(f"{path} is neither an export (exports/<name> holding <version>/"
                      "saved_model.pb, or one such version folder) nor a model folder (with "
                      f"{MANIFEST_FILE})")


def _exported_model_folder(folder: Path, exports_dir: Path | None) -> ServeTarget:
    """Serve a model folder: its newest export when that is of the same ``model.keras``
    (sha256), else a new export, which becomes the newest version."""
    if exports_dir is None:
        raise UserError(f"{folder} is a model folder; serving it exports it first, and no "
                        "exports_dir was given")
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
        name = model_name(Config(config, root=folder))
        newest = find_version(Path(exports_dir) / name)  # ExportError when there is none
        if newest.info.get("model_sha256") == file_sha256(folder / MODEL_FILE):
            return ServeTarget(name, (Path(exports_dir) / name).resolve(),
                               note=f"version {newest.version} is the export of {folder}")
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError, UserError):
        pass  # exporting reports what is wrong with the folder
    exported = export_model(folder, Path(exports_dir))
    return ServeTarget(exported.name, exported.folder.parent.resolve(),
                       note=f"exported {folder} as version {exported.version}")


# ----------------------------------------------------------------------------- one version

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
        self._module = self._pixels = self._preprocess = None

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
        self._module = tf.saved_model.load(str(self.folder))
        self._pixels = self._module.signatures[PIXELS_SIGNATURE]
        self._preprocess = self._module.preprocess

    def release(self) -> None:
        self._module = self._pixels = self._preprocess = None

    def signature(self, name: str) -> Signature:
        name = name or SERVING_SIGNATURE
        if name not in self.signatures:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        return self.signatures[name]

    def decode(self, images: list[bytes]) -> np.ndarray:
        """Encoded images as float32 ``(n, H, W, C)`` pixels, decoded as training decodes."""
        return self._preprocess(tf.constant(images, tf.string)).numpy()

    def classify(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._pixels(pixels=tf.constant(pixels, tf.float32))
        return {name: value.numpy() for name, value in outputs.items()}

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
                self.classify(pixels)
                replayed += 1
        for size in batch_sizes:
            self.classify(np.zeros((size, *self.pixel_shape), np.float32))
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


# ----------------------------------------------------------------------------- versions

class ModelManager:
    """Loads, warms up, hot-swaps and unloads the versions of one export; keeps each version's
    TensorFlow Serving state (LOADING, AVAILABLE, UNLOADING, END) for the status API."""

    def __init__(self, target: ServeTarget, settings: ServeSettings, metrics: "Metrics"):
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


# ----------------------------------------------------------------------------- batching

@dataclass
class _Queued:
    version: ServedVersion
    pixels: np.ndarray
    future: concurrent.futures.Future


@dataclass
class Ticket:
    """One admitted request: its images count against ``serve.max_queued_images`` until it
    is answered; ``queued`` once it has left decoding for the model."""

    images: int
    queued: bool = False


class Batcher:
    """Dynamic batching: requests' decoded images are queued; one worker thread takes up to
    ``max_batch_size`` images of the same version at a time, waiting up to
    ``batch_timeout_ms`` for more only while other admitted requests are still being decoded
    (a lone client never waits), runs one model call and splits its rows back. With
    ``max_batch_size`` 1 each request is one model call of its own, in a worker thread."""

    def __init__(self, settings: ServeSettings, metrics: "Metrics"):
        self.settings = settings
        self.metrics = metrics
        self._queue: collections.deque[_Queued] = collections.deque()
        self._condition = threading.Condition()
        self._admitted = 0  # images of requests admitted and not yet answered
        self._arriving = 0  # admitted requests not yet queued (being checked and decoded)
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.batching:
            self._thread = threading.Thread(target=self._work, name="imgcls-batcher",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        if self._thread:
            self._thread.join(timeout=30)

    @contextmanager
    def admit(self, images: int):
        """Room for a request of ``images`` images, or 429 when the queue is full."""
        limit = self.settings.max_queued_images
        if images > limit:
            raise InvalidArgument(f"{images} images in one request is over "
                                  f"serve.max_queued_images = {limit}; send fewer per request")
        with self._condition:
            if self._admitted + images > limit:
                self.metrics.rejected.inc()
                raise ResourceExhausted(
                    f"the server is overloaded: {self._admitted} images are waiting "
                    f"(serve.max_queued_images = {limit}); retry later")
            self._admitted += images
            self._arriving += 1
            self.metrics.admitted.set(self._admitted)
        ticket = Ticket(images)
        try:
            yield ticket
        finally:
            with self._condition:
                self._admitted -= images
                if not ticket.queued:
                    self._arriving -= 1
                self.metrics.admitted.set(self._admitted)
                self._condition.notify_all()

    async def classify(self, ticket: Ticket, version: ServedVersion,
                       pixels: np.ndarray) -> dict[str, np.ndarray]:
        if not self.settings.batching:
            ticket.queued = True
            with self._condition:
                self._arriving -= 1
            self.metrics.batch_size.observe(len(pixels))
            return await run_in_threadpool(version.classify, pixels)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            if self._stopped:
                raise Unavailable("the server is shutting down")
            self._queue.append(_Queued(version, pixels, future))
            ticket.queued = True
            self._arriving -= 1
            self._condition.notify_all()
        return await asyncio.wrap_future(future)

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopped:
                    self._condition.wait()
                if not self._queue:
                    return
                batch = self._collect()
            self._run(batch)

    def _collect(self) -> list[_Queued]:
        """The next batch (called holding the condition): the oldest request, then more of the
        same version while they fit, waiting for those still being decoded until the timeout."""
        first = self._queue.popleft()
        batch, size = [first], len(first.pixels)
        deadline = time.monotonic() + self.settings.batch_timeout_ms / 1000
        while size < self.settings.max_batch_size:
            if self._queue:
                following = self._queue[0]
                if (following.version is not first.version
                        or size + len(following.pixels) > self.settings.max_batch_size):
                    break
                batch.append(self._queue.popleft())
                size += len(following.pixels)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._arriving or self._stopped:
                break
            self._condition.wait(remaining)
        return batch

    def _run(self, batch: list[_Queued]) -> None:
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            pixels = np.concatenate([item.pixels for item in batch])
            self.metrics.batch_size.observe(len(pixels))
            outputs = batch[0].version.classify(pixels)
        except Exception as error:  # each request answers it (500), the worker goes on
            for item in batch:
                item.future.set_exception(error)
            return
        start = 0
        for item in batch:
            end = start + len(item.pixels)
            item.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end


# ----------------------------------------------------------------------------- images

def check_image(data: bytes, where: str, max_pixels: int) -> None:
    """Refuse from its header alone what is not a PNG, JPEG, GIF or BMP, or has more than
    ``max_pixels`` pixels (a decompression bomb is never decoded)."""
    if not data:
        raise InvalidArgument(f"{where}: empty image (0 bytes); {NOT_A_GRAPH_FORMAT}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            problem = graph_header_problem(image, max_pixels)
    except Image.DecompressionBombError as error:
        raise InvalidArgument(f"{where}: {error} (over data.max_pixels = {max_pixels:,}): not "
                              "decoded") from None
    except (UnidentifiedImageError, *DECODE_ERRORS):
        raise InvalidArgument(f"{where}: {NOT_A_GRAPH_FORMAT}") from None
    if problem:
        raise InvalidArgument(f"{where}: {problem}")


def decode_images(version: ServedVersion, images: list[bytes], where) -> np.ndarray:
    """The images through the export's ``preprocess``; a file it cannot decode (a truncated
    one, say) is a 400 naming it (``where(i)``)."""
    try:
        return version.decode(images)
    except tf.errors.InvalidArgumentError as error:
        for index, image in enumerate(images if len(images) > 1 else []):
            try:
                version.decode([image])
            except tf.errors.InvalidArgumentError as alone:
                raise InvalidArgument(f"{where(index)}: cannot decode the image: "
                                      f"{tf_message(alone)}") from None
        raise InvalidArgument(f"{where(0)}: cannot decode the image: {tf_message(error)}") \
            from None


def tf_message(error: Exception) -> str:
    """The line of a TensorFlow op error that says what is wrong (not where in the graph)."""
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()]
    useful = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces", "[[", "{{"))]
    return (useful or lines or ["undecodable"])[0]


# ----------------------------------------------------------------------------- monitoring

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

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def log_event(event: str, **fields) -> None:
    """One JSON line on the server's log."""
    LOGGER.info(json.dumps({"time": _now(), "event": event, **fields}))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def endpoint_of(method: str, path: str) -> str:
    """A bounded label for metrics: which of the server's endpoints a path is."""
    if path.startswith("/v1/"):
        if PREDICT_PATH.fullmatch(path):
            return "predict"
        match = STATUS_PATH.fullmatch(path)
        return ("metadata" if match.group(4) else "status") if match else "malformed"
    return {"/predict": "upload", "/healthz": "healthz", "/metrics": "metrics",
            "/": "page"}.get(path, "other")


async def _send_json(send, status: int, message: str, headers=()) -> None:
    body = error_body(message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Observe:
    """ASGI middleware: metrics and one JSON log line per request; an unexpected exception is
    a JSON 500 (and its traceback logged), never a dropped connection."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        scope["imgcls"] = note = {}
        response = {"status": 500, "started": False}

        async def observed_send(message):
            if message["type"] == "http.response.start":
                response["status"], response["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception as error:
            LOGGER.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if not response["started"]:
                await _send_json(observed_send, 500, f"internal error: {type(error).__name__}: "
                                 f"{error}")
        finally:
            seconds = time.perf_counter() - started
            endpoint = endpoint_of(scope["method"], scope["path"])
            self.metrics.requests.labels(endpoint, str(response["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            client = scope.get("client")
            LOGGER.info(json.dumps({
                "time": _now(), "method": scope["method"], "path": scope["path"],
                "status": response["status"], "latency_ms": round(seconds * 1000, 2),
                "images": note.get("images", 0), "model": note.get("model"),
                "version": note.get("version"),
                "client": f"{client[0]}:{client[1]}" if client else None}))


# Open without the API key: the health check, and the page (it holds nothing of the model's;
# its requests carry the key the user types into it).
PUBLIC_PATHS = ("/healthz", "/")


class RequireApiKey:
    """ASGI middleware: with an API key set, every endpoint but PUBLIC_PATHS needs it, as
    ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (401 otherwise)."""

    def __init__(self, app, key: str, variable: str):
        self.app, self.key, self.variable = app, key.encode(), variable

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        authorization = headers.get(b"authorization", b"")
        if given is None and authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        if given is None or not hmac.compare_digest(given, self.key):
            await _send_json(send, 401, f"{'wrong' if given else 'missing'} API key: send "
                             "'Authorization: Bearer <key>' or 'X-API-Key: <key>' (the key is "
                             f"the server's ${self.variable})",
                             [(b"www-authenticate", b'Bearer realm="imgcls"')])
            return
        await self.app(scope, receive, send)


class LimitBody:
    """ASGI middleware: a body over ``limit`` bytes is refused with 413, from its
    Content-Length before reading, else as soon as the bytes read pass the limit."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.megabytes = app, settings.max_request_mb
        self.limit = settings.max_request_bytes

    def _too_large(self, size: str) -> str:
        return (f"request body {size} is over serve.max_request_mb = {self.megabytes:g} MB "
                f"({self.limit:,} bytes)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _send_json(send, 400, f"bad Content-Length: {length.decode()!r}")
            if int(length) > self.limit:
                return await _send_json(send, 413, self._too_large(f"of {int(length):,} bytes"))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_json(send, 413, self._too_large("(streamed)"))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


# ----------------------------------------------------------------------------- the app

def upload_page(name: str, settings: ServeSettings, api_key: bool = False) -> str:
    """The page at / (package data ``web/index.html``), filled in once with the model's name
    (HTML-escaped: it is a folder name), the limits the page checks before uploading and
    whether it must ask for the API key."""
    page = (resources.files(__package__) / "web" / "index.html").read_text(encoding="utf-8")
    return string.Template(page).substitute(
        name=html.escape(name), name_in_url=html.escape(quote(name, safe="")),
        top_k=settings.top_k, max_bytes=settings.max_request_bytes,
        max_size=f"{settings.max_request_mb:g} MB", api_key="required" if api_key else "")


def json_response(content, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(content), status_code=status, headers=headers,
                    media_type="application/json")


def create_app(target: Path | ServeTarget, settings: ServeSettings):
    """The server's FastAPI app for ``target`` (an export or a model folder: see
    ``resolve_target``). Its lifespan starts the model manager and the batcher; until a version
    is AVAILABLE, /healthz and the model endpoints answer 503."""
    target = resolve_target(target, settings.exports_dir)
    api_key = os.environ.get(settings.api_key_variable)
    if api_key is not None and not api_key.strip():
        raise UserError(f"${settings.api_key_variable} is set but empty: set it to the API key "
                        "clients must send, or unset it to serve without one")
    metrics = Metrics()
    batcher = Batcher(settings, metrics)
    manager = ModelManager(target, settings, metrics)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        manager.start()
        try:
            yield
        finally:
            manager.stop()
            batcher.stop()

    app = FastAPI(title=f"imgcls serve: {target.name}", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.settings, app.state.target = settings, target
    app.state.manager, app.state.batcher, app.state.metrics = manager, batcher, metrics

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        retry = {"Retry-After": RETRY_AFTER_SECONDS} if error.status in (429, 503) else None
        return json_response({"error": error.message}, error.status, retry)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        if request.url.path.startswith("/v1/"):
            return json_response({"error": f"Malformed request: {request.method} "
                                           f"{request.url.path}"}, 400)
        return json_response({"error": f"{error.detail}: {request.method} {request.url.path}"},
                             error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
                             for problem in error.errors())
        return json_response({"error": f"invalid request: {problems}"}, 400)

    async def classify_images(ticket: Ticket, version: ServedVersion, images: list[bytes],
                              where) -> dict[str, np.ndarray]:
        with pixel_limit_checked_by_caller():
            for index, image in enumerate(images):
                check_image(image, where(index), version.max_pixels)
        pixels = await run_in_threadpool(decode_images, version, images, where)
        return await batcher.classify(ticket, version, pixels)

    def noted(request: Request, version: ServedVersion, images: int) -> None:
        request.scope["imgcls"].update(model=manager.name, version=version.number,
                                       images=images)

    @app.get("/healthz")
    async def healthz():
        version = manager.current
        if version is None:
            return json_response({"error": manager.waiting_for(), "status": "unavailable",
                                  "model": manager.name}, 503,
                                 {"Retry-After": RETRY_AFTER_SECONDS})
        return json_response({"status": "ready", "model": manager.name,
                              "version": version.number})

    @app.get("/metrics")
    async def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    page_text = upload_page(manager.name, settings, api_key=api_key is not None)

    @app.get("/")
    async def page():
        return HTMLResponse(page_text)

    @app.post("/predict")
    async def upload(request: Request):
        top_k = request.query_params.get("top_k", str(settings.top_k))
        if not top_k.isdigit() or int(top_k) < 1:
            raise InvalidArgument(f"top_k must be a whole number >= 1, got {top_k!r}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidArgument("send the image as multipart/form-data in field 'file', "
                                  "e.g. curl -F file=@image.png")
        try:
            form = await request.form(max_files=1, max_fields=10)
        except HTTPException as error:
            raise InvalidArgument(f"malformed multipart body: {error.detail}") from None
        try:
            file = form.get("file")
            if file is None:
                raise InvalidArgument("no field 'file' in the multipart body; send the image as "
                                      "-F file=@image.png")
            if isinstance(file, str):
                raise InvalidArgument("field 'file' is text, not a file: send the image as "
                                      "-F file=@image.png")
            data, filename = await file.read(), file.filename
        finally:
            await form.close()
        with manager.acquire(ModelCall("predict", manager.name)) as version:
            noted(request, version, 1)
            with batcher.admit(1) as ticket:
                outputs = await classify_images(ticket, version, [data],
                                                lambda index: f"file {filename!r}")
        probabilities = outputs["probabilities"][0]
        best = np.argsort(-probabilities, kind="stable")[:int(top_k)]
        return json_response({"model": manager.name, "version": version.number, "predictions": [
            {"label": version.class_names[index],
             "probability": float32_value(probabilities[index])} for index in best]})

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST"])
    async def tensorflow_serving(request: Request):
        call = parse_path(request.method, request.url.path)
        if call.method == "status":
            return json_response(manager.status(call))
        if call.method == "metadata":
            with manager.acquire(call) as version:
                return json_response(metadata_response(manager.name, version.number,
                                                       version.signature_defs))
        document = parse_json_body(await request.body())
        name = signature_name(document)
        with manager.acquire(call) as version:
            if call.method != "predict":
                raise InvalidArgument(f"Expected {call.method} signature method_name to be "
                                      f"tensorflow/serving/{call.method}: this model has predict "
                                      "signatures only; use :predict")
            signature = version.signature(name)
            request_inputs = parse_predict(document, [signature.input_name])
            values = request_inputs.inputs[signature.input_name]
            noted(request, version, len(values))

            def where(index):
                return request_inputs.where(signature.input_name, index)

            with batcher.admit(len(values)) as ticket:
                if signature.takes_images:
                    images = [decode_bytes(value, where(index))
                              for index, value in enumerate(values)]
                    outputs = await classify_images(ticket, version, images, where)
                else:
                    pixels = pixels_array(values, where, version.pixel_shape)
                    outputs = await batcher.classify(ticket, version, pixels)
        return json_response(predict_response(outputs, request_inputs.row))

    # Added last = outermost: every request is observed, then authenticated, then its body
    # read within the limit.
    app.add_middleware(LimitBody, settings=settings)
    if api_key is not None:
        app.add_middleware(RequireApiKey, key=api_key, variable=settings.api_key_variable)
    app.add_middleware(Observe, metrics=metrics)
    return app


# ----------------------------------------------------------------------------- running it

def configure_logging() -> None:
    """The server's JSON lines on stderr, one per request and per version event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound now so that a taken port is one clear error (and port 0
    picks a free one, printed)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}; choose "
                        "another with --port (or serve.port)") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(target: Path, settings: ServeSettings) -> None:
    """Serve ``target`` until interrupted, printing one line with the URL and what is served."""
    import uvicorn

    target = resolve_target(target, settings.exports_dir)
    app = create_app(target, settings)
    sock = listening_socket(settings.host, settings.port)
    configure_logging()
    batching = (f"batches of up to {settings.max_batch_size}" if settings.batching
                else "no batching")
    print(f"serving {target.name} ({target.describe()}; {batching}) at {url_of(sock)}/v1/models/"
          f"{target.name}:predict (TensorFlow Serving REST), POST /predict for uploads, "
          "/healthz, /metrics", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
