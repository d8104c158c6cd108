"""The server's ASGI middleware, outermost first: ``Observe`` (metrics and a JSON log line
per request; an unexpected exception is a JSON 500), ``RequireApiKey`` (401 without the key)
and ``LimitBody`` (413 over ``serve.max_request_mb``, counted while reading)."""

from __future__ import annotations

import hmac
import json
import time

from .monitoring import LOGGER, Metrics, endpoint_of, now
from .rest_api import error_body
from .settings import ServeSettings


async def send_json(send, status: int, message: str, headers=()) -> None:
    """Answer with ``{"error": message}`` straight from the middleware."""
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
                await send_json(observed_send, 500, f"internal error: {type(error).__name__}: "
                                 f"{error}")
        finally:
            seconds = time.perf_counter() - started
            endpoint = endpoint_of(scope["method"], scope["path"])
            self.metrics.requests.labels(endpoint, str(response["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            client = scope.get("client")
            LOGGER.info(json.dumps({
                "time": now(), "method": scope["method"], "path": scope["path"],
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
            await send_json(send, 401, f"{'wrong' if given else 'missing'} API key: send "
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
                return await send_json(send, 400, f"bad Content-Length: {length.decode()!r}")
            if int(length) > self.limit:
                return await send_json(send, 413, self._too_large(f"of {int(length):,} bytes"))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await send_json(send, 413, self._too_large("(streamed)"))
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
