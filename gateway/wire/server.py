"""The connection Protocol and the listener (see the package docstring for the contract).

Why not aiohttp's server: on a request answered without I/O, aiohttp's machinery (its request
and response objects, a Task per request, the writer's several writes) costs several times what
the decision itself does (docs/reference lean-http.md figures; bench/README.md). Here a request
costs one llhttp pass, one header multidict and one `transport.write`.

SECURITY: llhttp runs strict (every `set_dangerous_leniencies` flag off, as httptools' default,
set explicitly so a future default cannot loosen it): no bare LF, no obs-fold, no spaces in
header names, no Content-Length with Transfer-Encoding, no data after `Connection: close`
(reference aiohttp-proxying.md §1.24 lists the request-smuggling classes this closes). A parse
error answers 400 and closes; nothing is guessed.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol, cast

import httptools
from multidict import CIMultiDict

__all__ = ["Handler", "Limits", "Request", "Response", "WireServer"]

_PAUSE_QUEUE = 8  # pipelined requests parsed ahead of their answers before reading pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# Idle (between requests): a silent close, as every HTTP server does with an idle keep-alive
# connection; within a head or a body the client gets a 408 first.
_IDLE, _HEAD, _BODY, _HANDLING = 0, 1, 2, 3
# Headers `_Connection._framing` checks, found by their first byte before any lower-casing.
_FRAMING_NAMES = frozenset({"transfer-encoding", "content-length", "expect"})
_FRAMING_INITIALS = frozenset(bytes([c]) for c in b"TtCcEe")
_STATUS_LINES: dict[int, bytes] = {}


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


class Request:
    """One parsed request. `target` is the raw request-target (still percent-encoded);
    header names and values are decoded as aiohttp decodes them (UTF-8, surrogateescape), so
    the same bytes read the same on either server. `fields` are the headers in order, as
    received; `headers` is a case-insensitive multidict of them, built on first use."""

    __slots__ = ("_headers", "body", "fields", "keep_alive", "method", "peer", "target", "version")

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        fields: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
        peer: str | None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.body = body
        self.keep_alive = keep_alive
        self.peer = peer
        self._headers: CIMultiDict[str] | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict(self.fields)
        return self._headers


@dataclass(slots=True)
class Response:
    """An answer. Content-Length and Connection are the machinery's: never put them in
    `headers`. `close` ends the connection after this answer."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False


class Handler(Protocol):
    """What the listener calls; see the package docstring."""

    def handle(self, request: Request) -> Response | Awaitable[Response]: ...

    def error(self, status: int, detail: str) -> Response: ...


def serialize(response: Response, *, head: bool, close: bool, http10_keep_alive: bool) -> bytes:
    """The whole answer as one buffer. Raises ValueError for a header that would split it."""
    fields = "".join([name + value for name, value in response.headers])
    if "\r" in fields or "\n" in fields:
        raise ValueError("a response header contains CR or LF")
    lines = "".join([f"{name}: {value}\r\n" for name, value in response.headers])
    status_line = _STATUS_LINES.get(response.status)
    if status_line is None:
        reason = _REASONS.get(response.status, b"")
        status_line = b"HTTP/1.1 %d %s\r\n" % (response.status, reason)
        if len(_STATUS_LINES) < 128:
            _STATUS_LINES[response.status] = status_line
    connection = (
        b"Connection: close\r\n"
        if close
        else (b"Connection: keep-alive\r\n" if http10_keep_alive else b"")
    )
    body = b"" if head else response.body
    return b"".join(
        (
            status_line,
            lines.encode("latin-1"),
            b"Content-Length: %d\r\n" % len(response.body),
            connection,
            b"\r\n",
            body,
        )
    )


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the answer is in `_Connection._refusal`."""


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: WireServer) -> None:
        self._server = server
        self._handler = server.handler
        self._limits = server.limits
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        # SECURITY: strict llhttp; see the module docstring.
        self._parser.set_dangerous_leniencies(
            lenient_headers=False,
            lenient_chunked_length=False,
            lenient_keep_alive=False,
            lenient_transfer_encoding=False,
            lenient_version=False,
            lenient_data_after_close=False,
            lenient_optional_lf_after_cr=False,
            lenient_optional_cr_before_lf=False,
            lenient_optional_crlf_after_chunk=False,
            lenient_spaces_after_chunk_size=False,
        )
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[Response] | None = None
        self._paused = False
        self._closing = False
        self._refusal: tuple[int, str] | None = None
        # the message being parsed
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._method = ""
        self._version = ""
        self._in_message = False
        self._framing_seen = False  # a Transfer-Encoding, Content-Length or Expect header
        # the one timer (a deadline checked lazily: no cancel/re-arm per request)
        self._phase = _IDLE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        self._server.connections.add(self)
        self._expect(_IDLE, self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._server.connections:
            self._server.idle.set()

    def data_received(self, data: bytes) -> None:
        if self._closing and not self._in_message and not self._queue and self._task is None:
            return  # draining: no new request on this connection
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades and CONNECT are not supported")
            return
        except (httptools.HttpParserError, _Refused) as exc:
            status, detail = self._refusal or (400, _parser_detail(exc))
            self._fail(status, detail)
            return
        if self._phase == _BODY:
            self._deadline = self._loop.time() + self._limits.body_timeout
        if self._queue and self._task is None:
            self._process()

    def pause_writing(self) -> None:  # a slow reader: stop reading its requests too
        if self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    def resume_writing(self) -> None:
        if self._transport is not None and self._paused:
            self._transport.resume_reading()
            self._paused = False

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        if self._phase != _IDLE or not self._deadline:
            self._deadline = self._loop.time() + self._limits.header_timeout
        self._phase = _HEAD

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > self._limits.max_line_size:
            self._refuse(414, "the request target is too long")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= self._limits.max_headers:
            self._refuse(431, "too many headers")
        if len(name) + len(value) > self._limits.max_field_size:
            self._refuse(431, "a header is too long")
        decoded = name.decode("utf-8", "surrogateescape")
        if name[:1] in _FRAMING_INITIALS and decoded.lower() in _FRAMING_NAMES:
            self._framing_seen = True  # checked at the end of the head (`_framing`)
        headers.append((decoded, value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._method = parser.get_method().decode("ascii", "replace")
        self._version = parser.get_http_version()
        self._phase = _BODY
        self._deadline = self._loop.time() + self._limits.body_timeout
        if self._framing_seen:
            self._framing_seen = False
            problem = self._framing()
            if problem is not None:
                self._refuse(*problem)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            self._refuse(413, "the request body is too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        body = b"".join(self._body) if self._body else b""
        request = Request(
            self._method,
            url.decode("utf-8", "surrogateescape"),
            self._version,
            self._headers,
            body,
            self._parser.should_keep_alive(),
            self._peer,
        )
        self._url, self._url_size, self._headers = [], 0, []
        self._body, self._body_size = [], 0
        self._in_message = False
        self._phase, self._deadline = _HANDLING, 0.0
        self._queue.append(request)
        if len(self._queue) >= _PAUSE_QUEUE and self._transport is not None and not self._paused:
            self._transport.pause_reading()
            self._paused = True

    # ---- answering

    def _process(self) -> None:
        """Answer queued requests in order until one needs a Task (or none is left)."""
        while self._queue and self._transport is not None:
            request = self._queue.popleft()
            try:
                result = self._handler.handle(request)
            except Exception as exc:
                result = self._handler.error(500, f"{type(exc).__name__}")
            if isinstance(result, Response):
                if not self._answer(request, result):
                    return
                continue
            self._task = self._loop.create_task(_awaited(result))
            self._task.add_done_callback(functools.partial(self._answered, request))
            return
        self._idle()

    def _answered(self, request: Request, task: asyncio.Task[Response]) -> None:
        self._task = None
        if task.cancelled() or self._transport is None:
            return
        exc = task.exception()
        response = (
            self._handler.error(500, type(exc).__name__) if exc is not None else task.result()
        )
        if self._answer(request, response):
            self._process()

    def _answer(self, request: Request, response: Response) -> bool:
        """Write one answer; False when the connection closes with it."""
        transport = self._transport
        if transport is None:
            return False
        close = response.close or not request.keep_alive or self._closing
        try:
            data = serialize(
                response,
                head=request.method == "HEAD",
                close=close,
                http10_keep_alive=request.version == "1.0" and not close,
            )
        except ValueError:
            data = serialize(
                self._handler.error(500, "unsendable response header"),
                head=False,
                close=True,
                http10_keep_alive=False,
            )
            close = True
        transport.write(data)
        if close:
            self._queue.clear()
            transport.close()
            return False
        return True

    def _idle(self) -> None:
        """Nothing left to answer: resume reading; the idle timer runs unless a head has begun."""
        if self._paused and self._transport is not None:
            self._transport.resume_reading()
            self._paused = False
        if self._closing and not self._in_message:
            if self._transport is not None:
                self._transport.close()
            return
        if not self._in_message:
            self._expect(_IDLE, self._limits.header_timeout)

    def _refuse(self, status: int, detail: str) -> None:
        self._refusal = (status, detail)
        raise _Refused(detail)

    def _fail(self, status: int, detail: str) -> None:
        """Answer a request the machinery refused, after any answers still owed, and close."""
        self._deadline = 0.0
        self._closing = True
        transport = self._transport
        if transport is None:
            return
        if self._task is not None:  # an earlier request is still being answered: drop it
            self._task.cancel()
            self._task = None
        self._queue.clear()
        response = self._handler.error(status, detail)
        transport.write(serialize(response, head=False, close=True, http10_keep_alive=False))
        transport.close()

    def _framing(self) -> tuple[int, str] | None:
        """SECURITY: framings llhttp accepts that the gateway will not act on (RFC 9112 §6.1):
        Transfer-Encoding in HTTP/1.0 is faulty framing; a coding other than chunked is not
        understood (501)."""
        codings = [v for k, v in self._headers if k.lower() == "transfer-encoding"]
        expect = [v for k, v in self._headers if k.lower() == "expect"]
        if codings:
            if self._version != "1.1":
                return 400, "Transfer-Encoding in an HTTP/1.0 request"
            found = [c.strip().lower() for value in codings for c in value.split(",")]
            if found != ["chunked"]:
                return 501, "only the chunked transfer coding is supported"
        lengths = [v for k, v in self._headers if k.lower() == "content-length"]
        if lengths and lengths[0].strip().isdigit() and int(lengths[0]) > self._limits.max_body:
            return 413, "the request body is too large"
        continues = (
            expect and self._version == "1.1" and expect[0].strip().lower() == "100-continue"
        )
        if continues and self._transport is not None and not self._queue and self._task is None:
            self._transport.write(_CONTINUE)
        return None

    # ---- timers

    def _expect(self, phase: int, seconds: float) -> None:
        self._phase = phase
        self._deadline = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._deadline or self._transport is None:
            return
        if self._loop.time() + 0.001 < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        if self._phase == _IDLE:
            self._transport.close()
        elif self._phase in (_HEAD, _BODY):
            self._fail(408, "the client took too long to send its request")

    # ---- draining

    def drain(self) -> None:
        """Stop taking requests: close now if idle, else after the answer owed."""
        self._closing = True
        if (
            not self._in_message
            and not self._queue
            and self._task is None
            and self._transport is not None
        ):
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def _awaited(result: Awaitable[Response]) -> Response:
    return await result


def _parser_detail(exc: BaseException) -> str:
    return f"malformed request ({type(exc).__name__})"


class _Overloaded(asyncio.Protocol):
    """Over `max_connections`: the 503 and a close, before reading anything."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(self._answer)
        writer.close()


class WireServer:
    """A listener whose connections are `_Connection`s (see the package docstring)."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler = handler
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.idle = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        overloaded = handler.error(503, "too many connections")
        self._overloaded = serialize(overloaded, head=False, close=True, http10_keep_alive=False)
        self.on_overload: list[Callable[[], None]] = []  # run per refused connection

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        def protocol() -> asyncio.BaseProtocol:
            if len(self.connections) < self.limits.max_connections:
                return _Connection(self)
            for hook in self.on_overload:
                hook()
            return _Overloaded(self._overloaded)

        self._server = await self.loop.create_server(
            protocol, host, port, reuse_port=reuse_port or None, backlog=1024
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting; answers owed are given for up to `grace` seconds; then close all."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.drain()
        if self.connections:
            self.idle.clear()
            try:
                async with asyncio.timeout(grace):
                    while self.connections:
                        await self.idle.wait()
                        self.idle.clear()
            except TimeoutError:
                pass
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
