"""The upstream side of the lean engine: one HTTP/1.1 connection per exchange, from a pool.

OWNS: connecting (TCP_NODELAY, `connect_timeout`), writing a request head and body with
back-pressure, parsing the response with llhttp (httptools, strict), handing its body out
through a `Pipe`, and keeping connections alive in a LIFO `Pool` (bounded size, idle timeout).
MAY IMPORT: the standard library, `httptools` and `gateway.wire` only.

CONTRACT:
    pool = Pool(host, port, limit=..., idle_timeout=..., connect_timeout=...)
    conn = await pool.acquire()            # Unreachable / TimedOut
    conn.write(head_bytes); conn.write(body_part); await conn.drain()
    head = await conn.response(timeout)    # TimedOut / Malformed / Dropped
    chunk = await conn.body.read(timeout)  # ... b"" at the end; Malformed / Dropped / PipeTimeout
    pool.release(conn)                     # kept only when the exchange ended cleanly
A `Dropped` before any response byte on a connection that had served before (`conn.reused`)
is the stale keep-alive race (the upstream closed it as we sent): the caller may retry a safe,
body-less request once on a fresh connection.

SECURITY: the response parser runs with every llhttp leniency off, as the request parser
does (gateway/wire/server.py): a response the gateway cannot frame unambiguously is a 502,
never relayed with a guessed length.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import cast

import httptools

from gateway.wire.head import strict
from gateway.wire.pipe import Pipe

__all__ = [
    "Dropped",
    "Malformed",
    "Pool",
    "ResponseHead",
    "TimedOut",
    "Unreachable",
    "UpstreamConnection",
    "UpstreamFailure",
]


class UpstreamFailure(Exception):
    """The upstream leg failed."""


class Unreachable(UpstreamFailure):
    """The connection could not be made."""


class TimedOut(UpstreamFailure):
    """Connecting, or waiting for the response, took longer than allowed."""


class Malformed(UpstreamFailure):
    """The upstream sent something that is not a valid HTTP/1.x response."""


class Dropped(UpstreamFailure):
    """The upstream closed the connection before the response was complete."""


class ResponseHead:
    """A parsed response head. `headers` are (name, value) in order, decoded latin-1."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked


_MAX_HEAD = 256 * 1024  # an upstream head over this is malformed (GitLab's are ~4 KiB)
_MAX_HEADERS = 512


class UpstreamConnection(asyncio.Protocol):
    """One upstream connection; see the module docstring."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.reused = False  # has completed an exchange before this one
        self.idle_since = 0.0
        self._parser = self._new_parser()
        self._head: ResponseHead | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._failure: UpstreamFailure | None = None
        self._head_size = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._skip_body = False  # a response to HEAD: no body whatever it says
        self._received_any = False
        self._writable: asyncio.Future[None] | None = None
        self.complete = False  # the response of the current exchange was read whole
        self._spoiled = False  # the current request was not sent whole
        self._late: asyncio.TimerHandle | None = None  # the response head's deadline
        self.body = Pipe(self._loop, self._pause, self._resume)

    def _new_parser(self) -> httptools.HttpResponseParser:
        return strict(httptools.HttpResponseParser(self))  # SECURITY: gateway.wire.head

    # ---- the exchange

    def begin(self, *, head_request: bool) -> None:
        """Start an exchange on this connection (fresh state, a new body pipe)."""
        self._head = None
        self._head_waiter = None
        self._head_size = 0
        self._reason = ""
        self._headers = []
        self._skip_body = head_request
        self._received_any = False
        self.complete = False
        self._spoiled = False
        self.body = Pipe(self._loop, self._pause, self._resume)

    @property
    def alive(self) -> bool:
        return self.transport is not None and self._failure is None

    @property
    def received_any(self) -> bool:
        return self._received_any

    def write(self, data: bytes) -> None:
        if self.transport is None:
            raise self._failure or Dropped("connection closed")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark, or the response started
        (the upstream answered early: the caller stops sending), or the connection failed."""
        while self._writable is not None and self._head is None and self._failure is None:
            await asyncio.shield(self._writable)

    def expect_response(self, within: float) -> None:
        """The request is sent: its response head must begin within `within` seconds, else
        the exchange fails with `TimedOut` (aiohttp's `sock_read` for the first byte)."""
        if self._head is None and self._failure is None and self._late is None:
            self._late = self._loop.call_later(within, self._too_late, within)

    def _too_late(self, within: float) -> None:
        self._late = None
        if self._head is None and not self._received_any:
            self._fail(TimedOut(f"no response within {within} s"))
            if self.transport is not None:
                self.transport.abort()

    async def response(self) -> ResponseHead:
        """The response head (the deadline is `expect_response`'s)."""
        if self._head is not None:
            return self._head
        if self._failure is not None:
            raise self._failure
        waiter = self._head_waiter = self._loop.create_future()
        head: ResponseHead = await waiter
        return head

    def close(self) -> None:
        """Close (abort) this connection; it never goes back to the pool."""
        self._fail(Dropped("closed by the gateway"))
        if self.transport is not None:
            self.transport.abort()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        head = self._head
        if (
            exc is None
            and head is not None
            and not self.complete
            and head.content_length is None
            and not head.chunked
        ):
            # A close-delimited body (RFC 9112 §6.3 point 8) ends with the connection
            # (httptools exposes no llhttp_finish to say so to the parser).
            self._message_done(reusable=False)
        self._fail(Dropped(f"connection lost ({type(exc).__name__ if exc else 'closed'})"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None
        self._pool.discard(self)

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Malformed("an upgrade response"))
        except httptools.HttpParserError as exc:
            # A callback's exception comes back wrapped (HttpParserCallbackError, context).
            if isinstance(exc.__context__, _HeadDone):
                # A response to HEAD: its head is the whole message. Bytes after it on the
                # same read cannot belong to a request we sent: never reuse the connection.
                self._message_done(reusable=False)
            else:
                self._fail(Malformed(f"{type(exc.__context__ or exc).__name__}: {exc}"))
        if self._failure is not None and self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # ---- httptools callbacks

    def on_status(self, status: bytes) -> None:
        self._head_size += len(status)
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > _MAX_HEAD or len(self._headers) >= _MAX_HEADERS:
            raise _Refused("response head too large")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise _Refused("101 Switching Protocols to a request that asked for none")
            # An interim response (103 Early Hints, a stray 100): dropped, as aiohttp's client
            # does; llhttp completes it and parses the final response next.
            self._headers, self._reason, self._head_size = [], "", 0
            return
        chunked = False
        length: int | None = None
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "transfer-encoding":
                chunked = True  # llhttp refused every other coding arrangement it cannot frame
            elif lowered == "content-length":
                length = int(value.strip())  # llhttp accepted it: digits, one value
        head = ResponseHead(
            status, self._reason, self._headers, parser.should_keep_alive(), length, chunked
        )
        self._head = head
        if self._late is not None:
            self._late.cancel()
            self._late = None
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(head)
        if self._skip_body:
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        self.body.put(body)

    def on_message_complete(self) -> None:
        if self._head is None:
            return  # the end of an interim response
        self._message_done(reusable=self._head.keep_alive)

    def _message_done(self, *, reusable: bool) -> None:
        self.complete = True
        if not reusable:
            self._failure = self._failure or Dropped("not reusable")
        self.body.end()

    # ---- internals

    def _fail(self, failure: UpstreamFailure) -> None:
        if self._late is not None:
            self._late.cancel()
            self._late = None
        if self._failure is None:
            self._failure = failure
        if self._head is None:
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(failure)
        if not self.complete:
            self.body.fail(failure)

    def _pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def spoil(self) -> None:
        """The request was not sent whole: never reuse this connection."""
        self._spoiled = True

    @property
    def reusable(self) -> bool:
        return self.complete and self.alive and self._writable is None and not self._spoiled


class _HeadDone(Exception):
    """Stops parsing after the head of a response to HEAD."""


class _Refused(Exception):
    pass


class Pool:
    """A LIFO pool of keep-alive connections to one upstream (see the module docstring).

    At most `limit` connections exist at once (busy or idle); `acquire` waits for one to be
    released beyond that, as aiohttp's connector does. Idle connections older than
    `idle_timeout` are closed (below the upstream's own keep-alive timeout, so that the
    gateway, not the upstream, closes them: fewer stale-connection races).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limit: int,
        idle_timeout: float,
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._tls = tls
        self._host = host
        self._port = port
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._idle: list[UpstreamConnection] = []
        self._count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def acquire(self) -> UpstreamConnection:
        """A connection for one exchange (`begin` is the caller's)."""
        now = self.loop.time()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.alive and now - conn.idle_since < self._idle_timeout:
                return conn
            self._drop(conn)
        while self._count >= self._limit:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self._idle:
                return await self.acquire()
        self._count += 1
        try:
            return await self._connect()
        except BaseException:
            self._count -= 1
            self._wake()
            raise

    async def _connect(self) -> UpstreamConnection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self._host, self._port, ssl=self._tls
                )
        except TimeoutError:
            raise TimedOut(f"connect took over {self._connect_timeout} s") from None
        except OSError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        return protocol

    def release(self, conn: UpstreamConnection) -> None:
        """The exchange on `conn` is over: keep it if it ended cleanly, else close it."""
        if not self._closed and conn.reusable:
            conn.reused = True
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
            self._arm_sweeper()
            self._wake()
            return
        self._drop(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """`conn` was lost (called by the connection itself)."""
        if conn in self._idle:
            self._idle.remove(conn)
            self._count -= 1
            self._wake()

    def _drop(self, conn: UpstreamConnection) -> None:
        if conn.transport is not None:
            conn.close()
        if conn in self._idle:
            self._idle.remove(conn)
        self._count -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _arm_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self.loop.time() - self._idle_timeout
        for conn in [c for c in self._idle if c.idle_since <= deadline]:
            self._drop(conn)
        if self._idle:
            self._arm_sweeper()

    def close(self) -> None:
        """Close every idle connection; busy ones close when released."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._idle):
            self._drop(conn)
