"""The server's FastAPI app: one router per API, on one ``ModelManager`` and one ``Batcher``.

- ``tensorflow_serving``: TensorFlow Serving's REST API under ``/v1/`` (``rest_api`` parses and
  answers its JSON);
- ``uploads``: ``POST /predict`` (an image file in, top-k labels out) and the web page at ``/``;
- ``operations``: ``/healthz`` and Prometheus' ``/metrics``.

A request's path: its route takes the version it names from the manager (``acquire``, held until
answered), is admitted by the batcher (``admit``: 429 when full), and waits for its rows of a
batched model call (``Batcher.classify_encoded``: its images checked from their headers and
decoded as training decodes them, with the batch's others, by the batcher).
"""

from __future__ import annotations

import html
import json
import os
import string
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

from ..errors import UserError
from .batching import Batcher
from .middleware import LimitBody, Observe, RequireApiKey
from .monitoring import Metrics
from .prediction import top_k
from .rest_api import (ApiError, InvalidArgument, ModelCall, decode_bytes, float32_value,
                       metadata_response, parse_json_body, parse_path, parse_predict, pixels_array,
                       predict_response, signature_name)
from .settings import ServeSettings, ServeTarget, resolve_target
from .versions import ModelManager, ServedVersion

RETRY_AFTER_SECONDS = "1"

tensorflow_serving = APIRouter()
uploads = APIRouter()
operations = APIRouter()


def create_app(target: Path | ServeTarget, settings: ServeSettings) -> FastAPI:
    """The server's FastAPI app for ``target`` (an export or a model folder: see
    ``settings.resolve_target``). Its lifespan starts the model manager and the batcher; until
    a version is AVAILABLE, /healthz and the model endpoints answer 503."""
    target = resolve_target(target, settings.exports_dir)
    api_key = _api_key(settings)
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
    app.state.api_key = api_key  # the gRPC API checks it too
    app.state.page = upload_page(manager.name, settings, api_key=api_key is not None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for router in (tensorflow_serving, uploads, operations):
        app.include_router(router)
    # Added last = outermost: every request is observed, then authenticated, then its body
    # read within the limit.
    app.add_middleware(LimitBody, settings=settings)
    if api_key is not None:
        app.add_middleware(RequireApiKey, key=api_key, variable=settings.api_key_variable)
    app.add_middleware(Observe, metrics=metrics)
    return app


def _api_key(settings: ServeSettings) -> str | None:
    """The API key clients must send (``$<serve.api_key_variable>``), or None for none."""
    api_key = os.environ.get(settings.api_key_variable)
    if api_key is not None and not api_key.strip():
        raise UserError(f"${settings.api_key_variable} is set but empty: set it to the API key "
                        "clients must send, or unset it to serve without one")
    return api_key


# ----------------------------------------------------------------------------- errors

def json_response(content, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(content), status_code=status, headers=headers,
                    media_type="application/json")


async def _api_error(request: Request, error: ApiError) -> Response:
    retry = {"Retry-After": RETRY_AFTER_SECONDS} if error.status in (429, 503) else None
    return json_response({"error": error.message}, error.status, retry)


async def _http_error(request: Request, error: HTTPException) -> Response:
    if request.url.path.startswith("/v1/"):
        return json_response({"error": f"Malformed request: {request.method} "
                                       f"{request.url.path}"}, 400)
    return json_response({"error": f"{error.detail}: {request.method} {request.url.path}"},
                         error.status_code)


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    problems = "; ".join(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
                         for problem in error.errors())
    return json_response({"error": f"invalid request: {problems}"}, 400)


def _noted(request: Request, version: ServedVersion, images: int) -> None:
    """What the request's log line says it used."""
    request.scope["imgcls"].update(model=request.app.state.manager.name, version=version.number,
                                   images=images)


# ----------------------------------------------------------------------------- TF Serving REST

async def tensorflow_serving_api(request: Request):
    manager = request.app.state.manager
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
        _noted(request, version, len(values))

        def where(index):
            return request_inputs.where(signature.input_name, index)

        with request.app.state.batcher.admit(len(values)) as ticket:
            if signature.takes_images:
                images = [decode_bytes(value, where(index)) for index, value in enumerate(values)]
                outputs = await request.app.state.batcher.classify_encoded(ticket, version,
                                                                           images, where)
            else:
                pixels = pixels_array(values, where, version.pixel_shape)
                outputs = await request.app.state.batcher.classify(ticket, version, pixels)
    return json_response(predict_response(outputs, request_inputs.row))


# A plain Starlette route: the endpoint reads its request itself, so FastAPI's parameter and
# dependency handling would only cost time on every call.
tensorflow_serving.add_route("/v1/{rest:path}", tensorflow_serving_api, methods=["GET", "POST"])


# ----------------------------------------------------------------------------- uploads and page

def upload_page(name: str, settings: ServeSettings, api_key: bool = False) -> str:
    """The page at / (package data ``web/index.html``), filled in once with the model's name
    (HTML-escaped: it is a folder name), the limits the page checks before uploading and
    whether it must ask for the API key."""
    page = (resources.files(__package__) / "web" / "index.html").read_text(encoding="utf-8")
    return string.Template(page).substitute(
        name=html.escape(name), name_in_url=html.escape(quote(name, safe="")),
        top_k=settings.top_k, max_bytes=settings.max_request_bytes,
        max_size=f"{settings.max_request_mb:g} MB", api_key="required" if api_key else "")


@uploads.get("/")
async def page(request: Request):
    return HTMLResponse(request.app.state.page)


@uploads.post("/predict")
async def upload(request: Request):
    manager = request.app.state.manager
    k = _top_k_parameter(request)
    data, filename = await _uploaded_file(request)
    with manager.acquire(ModelCall("predict", manager.name)) as version:
        _noted(request, version, 1)
        with request.app.state.batcher.admit(1) as ticket:
            outputs = await request.app.state.batcher.classify_encoded(
                ticket, version, [data], lambda index: f"file {filename!r}")
    probabilities = outputs["probabilities"][0]
    return json_response({"model": manager.name, "version": version.number, "predictions": [
        {"label": version.class_names[index], "probability": float32_value(probabilities[index])}
        for index in top_k(probabilities, k)]})


def _top_k_parameter(request: Request) -> int:
    top_k_text = request.query_params.get("top_k", str(request.app.state.settings.top_k))
    if not top_k_text.isdigit() or int(top_k_text) < 1:
        raise InvalidArgument(f"top_k must be a whole number >= 1, got {top_k_text!r}")
    return int(top_k_text)


async def _uploaded_file(request: Request) -> tuple[bytes, str]:
    """The bytes and name of the multipart field ``file``, or a 400 saying how to send it."""
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
        return await file.read(), file.filename
    finally:
        await form.close()


# ----------------------------------------------------------------------------- operations

@operations.get("/healthz")
async def healthz(request: Request):
    manager = request.app.state.manager
    version = manager.current
    if version is None:
        return json_response({"error": manager.waiting_for(), "status": "unavailable",
                              "model": manager.name}, 503, {"Retry-After": RETRY_AFTER_SECONDS})
    return json_response({"status": "ready", "model": manager.name, "version": version.number})


@operations.get("/metrics")
async def prometheus_metrics(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
