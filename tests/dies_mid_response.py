"""A server for tests/test_whole_responses.py that can die the way a replica does: killed
(SIGKILL) after its app has sent a response's headers and before it sends the body.

``python -m tests.dies_mid_response whole|uvicorn dies|lives`` prints its loopback port, then
serves until killed: through ``WholeResponses`` or uvicorn's own HTTP protocol; killing itself
on its first request, or answering every request."""

from __future__ import annotations

import os
import signal
import socket
import sys

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from imgcls_utils.serving.whole_responses import WholeResponses

BODY = b'{"predictions": [{"label": "3", "probability": 0.9}]}'


def app(dies: bool):
    async def answer(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(BODY)).encode())]})
        if dies:
            os.kill(os.getpid(), signal.SIGKILL)
        await send({"type": "http.response.body", "body": BODY})
    return answer


if __name__ == "__main__":
    protocol, fate = sys.argv[1:]
    sock = socket.create_server(("127.0.0.1", 0))  # not run.py's: it imports TensorFlow
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(
        app(fate == "dies"), http={"whole": WholeResponses, "uvicorn": AutoHTTPProtocol}[protocol],
        lifespan="off", log_level="warning")).run(sockets=[sock])
