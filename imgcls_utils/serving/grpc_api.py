"""TensorFlow Serving's gRPC API, as ``tensorflow_model_server`` speaks it on its port 8500:
``PredictionService.Predict`` and ``GetModelMetadata``, ``ModelService.GetModelStatus``, with
the request and response messages of ``tensorflow-serving-api``. A client written for
TensorFlow Serving (``prediction_service_pb2_grpc.PredictionServiceStub``) works unchanged.

The gRPC server runs in the REST app's event loop, started and stopped by its lifespan
(``serve_grpc_alongside``), and answers from the same ``ModelManager`` and ``Batcher``: both
APIs' images share model calls. The API key is read from the call's metadata
(``authorization: Bearer <key>`` or ``x-api-key``), ``serve.max_request_mb`` is gRPC's largest
received message, and each call is counted in the same Prometheus metrics and logged as one
JSON line. Errors carry the gRPC status codes TensorFlow Serving uses: INVALID_ARGUMENT,
NOT_FOUND, UNAVAILABLE, RESOURCE_EXHAUSTED (a full queue; gRPC itself for a message over the
limit), UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import time
from contextlib import asynccontextmanager

import grpc
import numpy as np
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from .monitoring import LOGGER, now
from .rest_api import ApiError, InvalidArgument, ModelCall

GRACE_SECONDS = 5  # calls in flight at shutdown get this long to finish


class Unauthenticated(ApiError):
    status = 401


GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              404: grpc.StatusCode.NOT_FOUND, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
              503: grpc.StatusCode.UNAVAILABLE}


def serve_grpc_alongside(app, host: str, port: int) -> None:
    """Make ``app``'s lifespan run the gRPC server on ``host:port`` (0: a free port, kept in
    ``app.state.grpc_port``): started once the model manager and batcher are, stopped before
    them, so that no call finds them gone."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app):
        async with inner(app):
            server = await start_grpc_server(app, host, port)
            try:
                yield
            finally:
                await server.stop(GRACE_SECONDS)

    app.router.lifespan_context = lifespan


async def start_grpc_server(app, host: str, port: int) -> grpc.aio.Server:
    """The gRPC server of ``app`` on ``host:port``, listening (in the running event loop)."""
    settings = app.state.settings
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.so_reuseport", 0)])  # a port another server holds is an error, not shared
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(app), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(app), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    app.state.grpc_port = server.add_insecure_port(address)
    await server.start()
    return server


# ----------------------------------------------------------------------------- calls

def rpc(endpoint: str):
    """An RPC handler of a servicer: the API key checked, an ``ApiError`` answered with its
    gRPC status code (anything else: INTERNAL, logged), the call counted in the metrics under
    ``endpoint`` and logged as one JSON line."""
    def decorate(handler):
        @functools.wraps(handler)
        async def answer(self, request, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            note, code = {}, grpc.StatusCode.OK
            try:
                self.authenticate(context)
                return await handler(self, request, note)
            except ApiError as error:
                code = GRPC_CODES.get(error.status, grpc.StatusCode.INTERNAL)
                await context.abort(code, error.message)
            except asyncio.CancelledError:  # the client went away or the deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                LOGGER.exception("unexpected error answering gRPC %s", endpoint)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, f"internal error: {type(error).__name__}: {error}")
            finally:
                self.observe(endpoint, code, time.perf_counter() - started, note, context)
        return answer
    return decorate


class Servicer:
    """What both services share: the app's state, the API key, metrics and the log line."""

    def __init__(self, app):
        state = app.state
        self.manager, self.batcher, self.metrics = state.manager, state.batcher, state.metrics
        self.variable = state.settings.api_key_variable
        self.api_key = state.api_key.encode() if state.api_key is not None else None

    def authenticate(self, context) -> None:
        if self.api_key is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get("x-api-key")
        authorization = metadata.get("authorization", "")
        if given is None and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), self.api_key):
            raise Unauthenticated(f"{'wrong' if given else 'missing'} API key: send the "
                                  "metadata 'authorization: Bearer <key>' or 'x-api-key: <key>' "
                                  f"(the key is the server's ${self.variable})")

    def observe(self, endpoint: str, code: grpc.StatusCode, seconds: float, note: dict,
                context) -> None:
        self.metrics.requests.labels(endpoint, code.name).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        LOGGER.info(json.dumps({
            "time": now(), "method": "gRPC", "path": endpoint, "status": code.name,
            "latency_ms": round(seconds * 1000, 2), "images": note.get("images", 0),
            "model": note.get("model"), "version": note.get("version"),
            "client": context.peer()}))


def model_call(method: str, spec) -> ModelCall:
    """What a request's ``ModelSpec`` names: a version number, a label, or the newest."""
    choice = spec.WhichOneof("version_choice")
    return ModelCall(method, spec.name, spec.version.value if choice == "version" else None,
                     spec.version_label if choice == "version_label" else None)


class PredictionService(Servicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata (the model has
    predict signatures only: Classify and Regress are refused as TensorFlow Serving refuses
    them; MultiInference is left unimplemented)."""

    @rpc("grpc_predict")
    async def Predict(self, request, note: dict):
        from tensorflow_serving.apis import predict_pb2

        with self.manager.acquire(model_call("predict", request.model_spec)) as version:
            signature = version.signature(request.model_spec.signature_name)
            tensor = signature_input(request.inputs, signature.input_name)
            wanted = output_filter(request.output_filter,
                                   version.signature_defs[signature.name]["outputs"])
            note.update(model=self.manager.name, version=version.number)
            if signature.takes_images:
                values = string_values(tensor, signature.input_name)
            else:
                values = pixel_values(tensor, signature.input_name, version.pixel_shape)
            note["images"] = len(values)
            with self.batcher.admit(len(values)) as ticket:
                if signature.takes_images:
                    outputs = await self.batcher.classify_encoded(
                        ticket, version, values, lambda index: f"{signature.input_name}[{index}]")
                else:
                    outputs = await self.batcher.classify(ticket, version, values)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.manager.name
        response.model_spec.version.value = version.number
        response.model_spec.signature_name = signature.name
        for name in wanted or outputs:
            response.outputs[name].CopyFrom(tensor_proto(outputs[name]))
        return response

    @rpc("grpc_metadata")
    async def GetModelMetadata(self, request, note: dict):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = list(request.metadata_field)
        if not fields:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one "
                                  "metadata_field")
        for field in fields:
            if field != "signature_def":
                raise InvalidArgument(f"Metadata field {field} is not supported")
        with self.manager.acquire(model_call("metadata", request.model_spec)) as version:
            signature_map = json_format.ParseDict({"signature_def": version.signature_defs},
                                                  get_model_metadata_pb2.SignatureDefMap())
            note.update(model=self.manager.name, version=version.number)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.manager.name
        response.model_spec.version.value = version.number
        response.metadata["signature_def"].Pack(signature_map)
        return response

    @rpc("grpc_classify")
    async def Classify(self, request, note: dict):
        self._refuse("classify", request.model_spec)

    @rpc("grpc_regress")
    async def Regress(self, request, note: dict):
        self._refuse("regress", request.model_spec)

    def _refuse(self, method: str, spec) -> None:
        with self.manager.acquire(model_call(method, spec)):
            raise InvalidArgument(f"Expected {method} signature method_name to be "
                                  f"tensorflow/serving/{method}: this model has predict "
                                  "signatures only; use Predict")


class ModelService(Servicer, model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus (HandleReloadConfigRequest is left
    unimplemented: the server serves the export it was started on)."""

    @rpc("grpc_status")
    async def GetModelStatus(self, request, note: dict):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        status = self.manager.status(model_call("status", request.model_spec))
        return json_format.ParseDict(status, get_model_status_pb2.GetModelStatusResponse())


# ----------------------------------------------------------------------------- tensors

def signature_input(inputs, input_name: str):
    """The request's one input tensor, or TensorFlow Serving's error when its inputs are not
    exactly the signature's."""
    sent, expected = set(inputs), {input_name}
    if sent != expected:
        def listed(names):
            return "{" + ",".join(sorted(names)) + "}"
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({listed(sent)}) != len({listed(expected)}). Sent extra: "
            f"{listed(sent - expected)}. Missing but required: {listed(expected - sent)}.")
    return inputs[input_name]


def output_filter(names, outputs: dict) -> list[str]:
    """The outputs a request's ``output_filter`` asks for (all when it is empty) of a
    signature's ``outputs``."""
    known = sorted(outputs)
    for name in names:
        if name not in known:
            raise InvalidArgument(f"output tensor alias not found in signature: {name} Outputs "
                                  f"expected to be in the set {{{','.join(known)}}}.")
    return list(names)


def _shape(tensor) -> list[int]:
    return [dim.size for dim in tensor.tensor_shape.dim]


def string_values(tensor, input_name: str) -> list[bytes]:
    """The encoded images of a ``DT_STRING`` tensor of shape ``[n]``."""
    from tensorflow.core.framework import types_pb2

    if tensor.dtype != types_pb2.DT_STRING:
        raise InvalidArgument(f"input {input_name}: a {types_pb2.DataType.Name(tensor.dtype)} "
                              "tensor; this signature takes DT_STRING, one encoded image per "
                              "element")
    shape, images = _shape(tensor), list(tensor.string_val)
    if len(shape) != 1 or shape[0] != len(images) or not images:
        raise InvalidArgument(f"input {input_name}: shape {shape} with {len(images)} string "
                              "value(s); send a 1-D tensor of at least one encoded image "
                              "(tf.make_tensor_proto([png_bytes, ...]))")
    return images


def pixel_values(tensor, input_name: str, pixel_shape: tuple[int, ...]) -> np.ndarray:
    """The float32 pixels of a ``DT_FLOAT`` tensor of shape ``[n, height, width, channels]``."""
    from tensorflow.core.framework import types_pb2

    from ..quiet_tensorflow import tf

    if tensor.dtype != types_pb2.DT_FLOAT:
        raise InvalidArgument(f"input {input_name}: a {types_pb2.DataType.Name(tensor.dtype)} "
                              "tensor; this signature takes DT_FLOAT pixels 0-255")
    shape = _shape(tensor)
    if len(shape) != 4 or shape[0] < 1 or tuple(shape[1:]) != tuple(pixel_shape):
        raise InvalidArgument(f"input {input_name}: shape {shape}; this model takes [images, "
                              f"height, width, channels] = [n, {', '.join(map(str, pixel_shape))}]")
    try:
        pixels = tf.make_ndarray(tensor)
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"input {input_name}: its values do not fill shape {shape} "
                              f"({error})") from None
    if not np.isfinite(pixels).all():
        raise InvalidArgument(f"input {input_name}: pixels must be finite numbers (0-255)")
    return pixels


def tensor_proto(array: np.ndarray):
    """An output as a ``TensorProto``: numbers as raw ``tensor_content``, strings as
    ``string_val`` (what ``tf.make_ndarray`` reads back)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    from ..quiet_tensorflow import tf

    array = np.asarray(array)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape])
    if array.dtype.kind in "SO":
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape,
                                      string_val=[bytes(value) for value in array.reshape(-1)])
    return tensor_pb2.TensorProto(dtype=tf.as_dtype(array.dtype).as_datatype_enum,
                                  tensor_shape=shape,
                                  tensor_content=np.ascontiguousarray(array).tobytes())
