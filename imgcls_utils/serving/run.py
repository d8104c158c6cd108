"""Running the server: its sockets bound up front (a taken port is one clear error), uvicorn
(with the gRPC server in its event loop) until interrupted, and one line saying what is served
where once both listen."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from pathlib import Path

from ..errors import UserError
from .app import create_app
from .monitoring import configure_logging
from .settings import ServeSettings, resolve_target


def listening_socket(host: str, port: int, option: str = "--port (or serve.port)"
                     ) -> socket.socket:
    """The server's socket, bound now so that a taken port is one clear error (and port 0
    picks a free one, printed); ``option`` is how to choose another."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}; choose "
                        f"another with {option}") from None
    sock.set_inheritable(True)
    return sock


def address(host: str, port: int) -> str:
    return f"{f'[{host}]' if ':' in host else host}:{port}"


def url_of(sock: socket.socket) -> str:
    return "http://" + address(*sock.getsockname()[:2])


def check_grpc_port(host: str, port: int) -> None:
    """A taken gRPC port is one clear error before the model loads (gRPC binds its own
    sockets, later). Port 0 is not probed: gRPC picks a free one as it binds, as a probed port
    could be taken by another program before gRPC binds it."""
    if port:
        listening_socket(host, port, "--grpc-port (or serve.grpc_port)").close()


def announce_once_listening(app, line) -> None:
    """Make ``app``'s lifespan print ``line(app)`` once everything it starts (model, batcher,
    gRPC server) is up: a client reading that line finds both APIs listening."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app):
        async with inner(app):
            print(line(app), flush=True)
            yield

    app.router.lifespan_context = lifespan


def serve(target: Path, settings: ServeSettings) -> None:
    """Serve ``target`` until interrupted, printing one line with the URL and what is served."""
    import uvicorn

    from .grpc_api import serve_grpc_alongside
    from .whole_responses import WholeResponses

    target = resolve_target(target, settings.exports_dir)
    app = create_app(target, settings)
    sock = listening_socket(settings.host, settings.port)
    check_grpc_port(settings.host, settings.grpc_port)
    serve_grpc_alongside(app, settings.host, settings.grpc_port)
    configure_logging()
    batching = (f"batches of up to {settings.max_batch_size}" if settings.batching
                else "no batching")
    announce_once_listening(app, lambda app: (
        f"serving {target.name} ({target.describe()}; {batching}) at {url_of(sock)}/v1/models/"
        f"{target.name}:predict (TensorFlow Serving REST), POST /predict for uploads, "
        f"/healthz, /metrics; gRPC at {address(settings.host, app.state.grpc_port)} "
        "(TensorFlow Serving's PredictionService and ModelService)"))
    config = uvicorn.Config(app, http=WholeResponses, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
