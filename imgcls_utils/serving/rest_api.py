"""TensorFlow Serving's REST API in JSON, as ``tensorflow_model_server`` speaks it (its
``api_rest.md``): request paths, predict requests in row (``instances``) and columnar
(``inputs``) format, responses, model status and metadata, and errors as ``{"error": "..."}``
with its HTTP status codes. A client written for TensorFlow Serving works unchanged against
``imgcls serve``.

This module knows JSON and HTTP only; the app (``app``) runs the model. Error messages follow
TensorFlow Serving's where a client could match on them (``Servable not found for request:
Latest(name)``, ``Serving signature name: "x" not found in signature def``), and otherwise name
the instance and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass

import numpy as np

B64_KEY = "b64"
ECHO_LIMIT = 120  # characters of a bad JSON value quoted back in an error message


class ApiError(Exception):
    """A request that fails: ``status`` is the HTTP status TensorFlow Serving maps the error's
    kind to, ``message`` the ``error`` text."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class ResourceExhausted(ApiError):
    status = 429


class Unavailable(ApiError):
    status = 503


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


# ----------------------------------------------------------------------------- paths

# TensorFlow Serving's own path patterns (http_rest_api_util.cc), case-insensitive as there.
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
                          r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?"
                         r"(?:/(metadata))?", re.IGNORECASE)


@dataclass(frozen=True)
class ModelCall:
    """What a ``/v1/...`` path asks for: ``method`` is predict, classify, regress, status or
    metadata; ``version`` None means the newest loaded one."""

    method: str
    name: str
    version: int | None = None
    label: str | None = None

    def servable(self) -> str:
        """TensorFlow Serving's name for the requested servable, as in its error messages."""
        if self.version is not None:
            return f"Specific({self.name}, {self.version})"
        if self.label is not None:
            return f"Labeled({self.name}, {self.label})"
        return f"Latest({self.name})"


def parse_path(http_method: str, path: str) -> ModelCall:
    """The model call a ``/v1/`` request names; anything else is TensorFlow Serving's
    ``Malformed request`` (400)."""
    malformed = InvalidArgument(f"Malformed request: {http_method} {path}")
    if http_method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
        name, version, label, method = match.groups()
        return ModelCall(method.lower(), name, _version(version), label)
    if http_method == "GET" and (match := STATUS_PATH.fullmatch(path)):
        name, version, label, metadata = match.groups()
        if not name:
            raise InvalidArgument("Missing model name in request.")
        return ModelCall("metadata" if metadata else "status", name, _version(version), label)
    raise malformed


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if len(text) > 18:  # int64, as TensorFlow Serving parses it
        raise InvalidArgument(f"Failed to convert version: {text} to numeric.")
    return int(text)


# ----------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class PredictRequest:
    """A parsed ``:predict`` body: the signature it names and its inputs, one list entry per
    instance (``row``: the ``instances`` format, answered with ``predictions``; else the
    columnar ``inputs`` format, answered with ``outputs``)."""

    signature_name: str
    row: bool
    inputs: dict[str, list]

    def where(self, input_name: str, index: int) -> str:
        """How an error names one instance of one input."""
        if self.row:
            return f"instances[{index}]"
        return f"inputs[{index}]" if len(self.inputs) == 1 else f"inputs.{input_name}[{index}]"


def parse_json_body(body: bytes) -> dict:
    """The request body as a JSON object (TensorFlow Serving's parse errors, 400)."""
    if not body.strip():
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise InvalidArgument("JSON Parse error: the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"JSON Value: {_echo(document)} Is not object")
    return document


def signature_name(document: dict) -> str:
    """The ``signature_name`` a predict body asks for ("" means ``serving_default``)."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument(f"JSON Value: {_echo(document)} not formatted correctly. "
                              "'signature_name' key must be a string value.")
    return name


def parse_predict(document: dict, input_names: list[str]) -> PredictRequest:
    """Split a predict body into per-instance values of each named input, as TensorFlow
    Serving does for the signature's ``input_names``."""
    name = signature_name(document)
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise InvalidArgument("JSON Value: {...} Not formatted correctly expecting only one of "
                              "'inputs' or 'instances' keys to exist")
    if has_instances:
        return PredictRequest(name, True, _from_instances(document["instances"], input_names))
    if has_inputs:
        return PredictRequest(name, False, _from_inputs(document["inputs"], input_names))
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64_KEY), str)


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _from_instances(instances, input_names: list[str]) -> dict[str, list]:
    if not isinstance(instances, list):
        raise InvalidArgument("JSON Value: {...} Excepting 'instances' to be an list/array")
    if not instances:
        raise InvalidArgument("JSON Value: {...} No values in 'instances' array")
    named = _is_named(instances[0])
    if not named and len(input_names) > 1:
        raise InvalidArgument("instances is a plain list, but expecting list of objects as "
                              "multiple input tensors required as per tensorinfo_map")
    columns: dict[str, list] = {name: [] for name in input_names}
    for index, instance in enumerate(instances):
        if named != _is_named(instance):
            kind = "object" if named else "value/list"
            raise InvalidArgument(f"Expecting {kind} but got "
                                  f"{'list' if named else 'object'} at item {index} of input "
                                  f"list (instances[{index}])")
        if not named:
            columns[input_names[0]].append(instance)
            continue
        if set(instance) != set(input_names):
            raise InvalidArgument(f"Failed to process element: {index} of 'instances' list. "
                                  f"JSON object: {_echo(instance)} keys must be equal to: "
                                  f"{','.join(sorted(input_names))}")
        for input_name in input_names:
            columns[input_name].append(instance[input_name])
    return columns


def _from_inputs(inputs, input_names: list[str]) -> dict[str, list]:
    if not _is_named(inputs):
        if len(input_names) > 1:
            raise InvalidArgument("inputs is a plain value/list, but expecting an object as "
                                  "multiple input tensors required as per tensorinfo_map")
        inputs = {input_names[0]: inputs}
    columns = {}
    for input_name in input_names:
        if input_name not in inputs:
            raise InvalidArgument(f"Missing named input: {input_name} in 'inputs' object.")
        value = inputs[input_name]
        if not isinstance(value, list):
            raise InvalidArgument(f"inputs: {input_name} must be a list with one entry per "
                                  f"image (a batch), got {_echo(value)}")
        if not value:
            raise InvalidArgument(f"inputs: {input_name} is an empty list; send at least one "
                                  "image")
        columns[input_name] = value
    unknown = sorted(set(inputs) - set(input_names))
    if unknown:
        raise InvalidArgument(f"inputs: unknown input(s) {', '.join(unknown)}; the signature's "
                              f"inputs are {', '.join(input_names)}")
    return columns


def decode_bytes(value, where: str) -> bytes:
    """One ``DT_STRING`` instance: ``{"b64": "<standard base64>"}`` or a plain JSON string."""
    if isinstance(value, str):
        return value.encode()
    if not _is_b64(value):
        raise InvalidArgument(f"{where}: JSON Value: {_echo(value)} not formatted correctly "
                              'for base64 data; send each image as {"b64": "<base64>"}')
    text = value[B64_KEY]
    if "-" in text or "_" in text:
        raise InvalidArgument(f"{where}: 'b64' holds URL-safe base64 ('-' or '_'); TensorFlow "
                              "Serving's JSON takes standard base64 ('+' and '/')")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{where}: Unable to base64 decode") from None


def pixels_array(values: list, where, shape: tuple[int, ...]) -> np.ndarray:
    """The instances of a ``DT_FLOAT`` pixels input as one float32 array of ``(n, *shape)``;
    ``where(i)`` names instance ``i`` in an error."""
    for index, value in enumerate(values):
        if isinstance(value, dict):
            raise InvalidArgument(f"{where(index)}: JSON Value: {_echo(value)} Type: Object is "
                                  "not of expected type: DT_FLOAT")
        try:
            array = np.asarray(value)
        except ValueError:
            raise InvalidArgument(f"{where(index)}: nested lists of unequal lengths; expected "
                                  f"shape {list(shape)}") from None
        if array.dtype.kind not in "iuf":
            raise InvalidArgument(f"{where(index)}: pixels must be numbers (JSON values of type "
                                  f"{array.dtype.kind!r} found); expected shape {list(shape)}")
        if array.shape != tuple(shape):
            raise InvalidArgument(f"{where(index)}: pixels of shape {list(array.shape)}; this "
                                  f"model takes [height, width, channels] = {list(shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidArgument(f"{where(index)}: pixels must be finite numbers (0-255)")
    return np.asarray(values, dtype=np.float32)


def _echo(value) -> str:
    """A JSON value quoted in an error message, cut short."""
    text = json.dumps(value)
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "...(cut)"


# ----------------------------------------------------------------------------- responses

def predict_response(outputs: dict[str, np.ndarray], row: bool) -> dict:
    """``{"predictions": [...]}`` (one entry per instance; an object of outputs when there are
    several) or ``{"outputs": ...}`` (columnar), values written as TensorFlow Serving writes
    them: float32 in their shortest round-tripping decimal, strings as text."""
    columns = {name: json_values(value) for name, value in sorted(outputs.items())}
    if not row:
        return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    count = len(next(iter(columns.values())))
    return {"predictions": [{name: values[index] for name, values in columns.items()}
                            for index in range(count)]}


def json_values(array: np.ndarray):
    """A tensor as nested JSON lists: float32 printed as float32 (``0.2``, not
    ``0.20000000298023224``), bytes as UTF-8 text."""
    array = np.asarray(array)
    if array.dtype == np.float32:
        return _nested(array, float32_value)
    if array.dtype.kind in "SO":
        return _nested(array, lambda value: value.decode(errors="replace")
                       if isinstance(value, bytes) else str(value))
    return array.tolist()


def _nested(array: np.ndarray, convert):
    if array.ndim == 0:
        return convert(array[()])
    if array.ndim == 1:  # its items: numpy scalars (float32) or bytes (strings)
        return [convert(item) for item in array]
    return [_nested(item, convert) for item in array]


def float32_value(value) -> float:
    number = float(str(value))  # numpy prints a float32 in its shortest round-tripping form
    return number if math.isfinite(number) else float(value)


def status_response(versions: list[tuple[int, str, str, str]]) -> dict:
    """GetModelStatus as TensorFlow Serving prints it: ``versions`` is ``(version, state,
    error_code, error_message)``, newest first."""
    return {"model_version_status": [
        {"version": str(version), "state": state,
         "status": {"error_code": code, "error_message": message}}
        for version, state, code, message in versions]}


def metadata_response(name: str, version: int, signature_defs: dict) -> dict:
    """GetModelMetadata as TensorFlow Serving prints it (its ``SignatureDefMap`` as JSON)."""
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}
