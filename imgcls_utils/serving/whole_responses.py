"""uvicorn's HTTP protocol with each response handed to the kernel in one write, so that a
replica killed mid-response has sent all of it or none of it.

uvicorn writes a response's status line and headers, then its body, in two calls. A replica
killed (SIGKILL, the OOM killer, a node lost) between the two leaves nginx holding headers it
has already passed on to the client: it can no longer retry the request on another replica,
and the client gets a truncated answer. With the two gathered into one write, nginx either
receives the whole response or sees the connection drop before any of it, and retries."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class OneWritePerTurn:
    """A transport whose writes made during one turn of the event loop leave in one write.

    An ASGI app that sends ``http.response.start`` and its body without waiting in between (as
    every response of ``imgcls serve`` does) thus leaves whole; a streamed body still goes out
    chunk by chunk, each at the end of the turn that wrote it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop, self._pending = transport, loop, []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._pending and not self._transport.is_closing():
            self._transport.write(b"".join(self._pending))
        self._pending.clear()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class WholeResponses(AutoHTTPProtocol):
    """The HTTP protocol uvicorn would pick (httptools when installed, else h11), writing
    through ``OneWritePerTurn``."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(OneWritePerTurn(transport, self.loop))
