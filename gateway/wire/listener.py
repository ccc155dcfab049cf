"""A listening socket and its connections: bind, the connection limit, drain.

`Listener` is the base of the decision listener (`gateway.wire.server.WireServer`) and of the
lean proxy's (`gateway.proxy.lean.listener.LeanServer`): a subclass says which connection a
new client gets (`connection`) and what one over `max_connections` gets (`overloaded`, usually
an `Overloaded` with the listener's 503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from gateway.wire.head import HeadProtocol

__all__ = ["OVERLOAD_LINGER", "Limits", "Listener", "Overloaded"]

OVERLOAD_LINGER = 2.0  # seconds a refused connection may keep sending before it is aborted


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may send. Sizes in bytes, times in seconds."""

    max_line_size: int = 8190  # the request target (method and version are bounded by llhttp)
    max_field_size: int = 8190  # one header: name + value
    max_headers: int = 128
    max_body: int = 0  # the largest body buffered for the handler; 0 = no body accepted
    header_timeout: float = 60.0  # from connect / the previous answer to a complete head
    body_timeout: float = 60.0  # the longest silence while a body is being sent
    max_connections: int = 10_000


class Overloaded(asyncio.Protocol):
    """A connection over `max_connections`: `answer` at once, without reading the request, then
    a clean close.

    The answer is written, then the write side is shut (FIN after the answer), and what the
    client sends meanwhile is read and dropped until it closes its side (at most `linger`
    seconds): closing a socket with unread bytes would send a RST, and a RST can destroy the
    answer in the client's receive buffer (nginx's lingering close, for the same reason).
    """

    def __init__(self, answer: bytes, linger: float = OVERLOAD_LINGER) -> None:
        self._answer = answer
        self._linger = linger
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A streaming protocol is given a Transport (asyncio docs, "Streaming Protocols");
        # uvloop's has that interface without subclassing asyncio.Transport, so no isinstance.
        stream = cast(asyncio.Transport, transport)
        stream.write(self._answer)
        if stream.can_write_eof():
            stream.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self._linger, stream.abort)

    def data_received(self, data: bytes) -> None:
        return None  # the request is never read: dropped

    def eof_received(self) -> bool:
        return False  # the client is done: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


Connection = TypeVar("Connection", bound=HeadProtocol)


class Listener(Generic[Connection]):
    """The listening socket; `connections` are the open ones (each adds and removes itself),
    `idle` is set when the last one is gone."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.idle = asyncio.Event()
        self._server: asyncio.Server | None = None

    def connection(self) -> Connection:
        """The protocol of a newly accepted client."""
        raise NotImplementedError

    def overloaded(self) -> asyncio.BaseProtocol:
        """The protocol of a client accepted over `max_connections`."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    @property
    def urls(self) -> list[str]:
        return [
            f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
            for host, port in self.addresses
        ]

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Bind and listen; OSError when the address is unusable."""
        limit = self.limits.max_connections

        def protocol() -> asyncio.BaseProtocol:
            if len(self.connections) < limit:
                return self.connection()
            return self.overloaded()

        self._server = await self.loop.create_server(
            protocol, host, port, reuse_port=reuse_port or None, backlog=1024
        )

    async def stop(self, grace: float, cut: Callable[[], object] | None = None) -> None:
        """Stop accepting and end within `grace` seconds: idle connections close now, busy ones
        after the answer owed; what is left at the end is aborted. With `cut`, it is called
        once the grace period minus a cut window (min(1 s, 20%)) has passed with connections
        still open, and they get half that window to end (`gateway.proxy.server.drain`'s
        rule)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.drain_connection()
        if cut is None:
            await self._wait_idle(grace)
        else:
            window = min(1.0, grace * 0.2)
            if not await self._wait_idle(grace - window):
                cut()
                await self._wait_idle(window / 2)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _wait_idle(self, within: float) -> bool:
        if self.connections and within > 0:
            self.idle.clear()
            try:
                async with asyncio.timeout(within):
                    while self.connections:
                        await self.idle.wait()
                        self.idle.clear()
            except TimeoutError:
                pass
        return not self.connections
