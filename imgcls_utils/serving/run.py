"""Running the server: its socket bound up front (a taken port is one clear error), one line
saying what is served where, then uvicorn until interrupted."""

from __future__ import annotations

import socket
from pathlib import Path

from ..errors import UserError
from .app import create_app
from .monitoring import configure_logging
from .settings import ServeSettings, resolve_target


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
