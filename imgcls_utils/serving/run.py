"""Running the server: its sockets bound up front (a taken port is one clear error), one line
saying what is served where, then uvicorn (with the gRPC server in its event loop) until
interrupted."""

from __future__ import annotations

import socket
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


def url_of(sock: socket.socket, scheme: str = "http://") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}{f'[{host}]' if ':' in host else host}:{port}"


def free_grpc_port(host: str, port: int) -> socket.socket:
    """A socket on the gRPC port, bound to check that it is free (and to pick one for port 0),
    to be closed just before the gRPC server binds it (gRPC binds its own sockets)."""
    return listening_socket(host, port, "--grpc-port (or serve.grpc_port)")


def serve(target: Path, settings: ServeSettings) -> None:
    """Serve ``target`` until interrupted, printing one line with the URL and what is served."""
    import uvicorn

    from .grpc_api import serve_grpc_alongside

    target = resolve_target(target, settings.exports_dir)
    app = create_app(target, settings)
    sock = listening_socket(settings.host, settings.port)
    with free_grpc_port(settings.host, settings.grpc_port) as probe:
        grpc_address = url_of(probe, scheme="")
        grpc_port = probe.getsockname()[1]
    serve_grpc_alongside(app, settings.host, grpc_port)
    configure_logging()
    batching = (f"batches of up to {settings.max_batch_size}" if settings.batching
                else "no batching")
    print(f"serving {target.name} ({target.describe()}; {batching}) at {url_of(sock)}/v1/models/"
          f"{target.name}:predict (TensorFlow Serving REST), POST /predict for uploads, "
          f"/healthz, /metrics; gRPC at {grpc_address} (TensorFlow Serving's PredictionService "
          "and ModelService)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
