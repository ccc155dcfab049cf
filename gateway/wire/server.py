"""The connection Protocol and the listener (see the package docstring for the contract).

Why not aiohttp's server: on a request answered without I/O, aiohttp's machinery (its request
and response objects, a Task per request, the writer's several writes) costs several times what
the decision itself does (docs/reference lean-http.md figures; bench/README.md). Here a request
costs one llhttp pass, one header multidict and one `transport.write`.

SECURITY: llhttp runs strict (`gateway.wire.head`, shared with the lean proxy's connection). A
parse error answers 400 and closes; nothing is guessed.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import httptools
from multidict import CIMultiDict

from gateway.wire.head import HEAD, IDLE, HeadProtocol, Refused, refused
from gateway.wire.listener import Limits, Listener, Overloaded

__all__ = ["Handler", "Limits", "Request", "Response", "WireServer"]

_PAUSE_QUEUE = 8  # pipelined requests parsed ahead of their answers before reading pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# Idle (between requests, `IDLE`): a silent close, as every HTTP server does with an idle
# keep-alive connection; within a head (`HEAD`) or a body the client gets a 408 first.
_BODY, _HANDLING = 2, 3
_STATUS_LINES: dict[int, bytes] = {}


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


class _Connection(HeadProtocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: WireServer) -> None:
        super().__init__(server)
        self._handler = server.handler
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[Response] | None = None
        self._paused = False
        # the message being parsed
        self._body: list[bytes] = []
        self._body_size = 0
        self._method = ""
        self._version = ""
        self._in_message = False

    # ---- asyncio.Protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing and not self._in_message and not self._queue and self._task is None:
            return  # draining: no new request on this connection
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades and CONNECT are not supported")
            return
        except (httptools.HttpParserError, Refused) as exc:
            status, detail = refused(exc) or (400, _parser_detail(exc))
            self._fail(status, detail)
            return
        if self._phase == _BODY:
            self._deadline = self._loop.time() + self._limits.body_timeout
        if self._queue and self._task is None:
            self._process()

    def pause_writing(self) -> None:  # a slow reader: stop reading its requests too
        if self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def resume_writing(self) -> None:
        if self.transport is not None and self._paused:
            self.transport.resume_reading()
            self._paused = False

    # ---- httptools callbacks (the head's own: `HeadProtocol`)

    def on_message_begin(self) -> None:
        self._in_message = True
        self._arm(HEAD, self._limits.header_timeout, restart=self._phase != IDLE)

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
                raise Refused(*problem)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            raise Refused(413, "the request body is too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        target, fields = self._take_head()
        body = b"".join(self._body) if self._body else b""
        request = Request(
            self._method,
            target,
            self._version,
            fields,
            body,
            self._parser.should_keep_alive(),
            self.peer,
        )
        self._body, self._body_size = [], 0
        self._in_message = False
        self._phase, self._deadline = _HANDLING, 0.0
        self._queue.append(request)
        if len(self._queue) >= _PAUSE_QUEUE and self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True

    # ---- answering

    def _process(self) -> None:
        """Answer queued requests in order until one needs a Task (or none is left)."""
        while self._queue and self.transport is not None:
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
        if task.cancelled() or self.transport is None:
            return
        exc = task.exception()
        response = (
            self._handler.error(500, type(exc).__name__) if exc is not None else task.result()
        )
        if self._answer(request, response):
            self._process()

    def _answer(self, request: Request, response: Response) -> bool:
        """Write one answer; False when the connection closes with it."""
        transport = self.transport
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
        if self._paused and self.transport is not None:
            self.transport.resume_reading()
            self._paused = False
        if self._closing and not self._in_message:
            if self.transport is not None:
                self.transport.close()
            return
        if not self._in_message:
            self._arm(IDLE, self._limits.header_timeout)

    def _fail(self, status: int, detail: str) -> None:
        """Answer a request the machinery refused, after any answers still owed, and close."""
        self._deadline = 0.0
        self._closing = True
        transport = self.transport
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
        if continues and self.transport is not None and not self._queue and self._task is None:
            self.transport.write(_CONTINUE)
        return None

    def _timed_out(self) -> None:
        if self._phase == IDLE:
            if self.transport is not None:
                self.transport.close()
        elif self._phase in (HEAD, _BODY):
            self._fail(408, "the client took too long to send its request")

    # ---- draining

    def drain_connection(self) -> None:
        self._closing = True
        if (
            not self._in_message
            and not self._queue
            and self._task is None
            and self.transport is not None
        ):
            self.transport.close()


async def _awaited(result: Awaitable[Response]) -> Response:
    return await result


def _parser_detail(exc: BaseException) -> str:
    return f"malformed request ({type(exc).__name__})"


class WireServer(Listener[_Connection]):
    """A listener whose connections are `_Connection`s (see the package docstring)."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        super().__init__(limits)
        self.handler = handler
        overloaded = handler.error(503, "too many connections")
        self._overloaded = serialize(overloaded, head=False, close=True, http10_keep_alive=False)
        self.on_overload: list[Callable[[], None]] = []  # run per refused connection

    def connection(self) -> _Connection:
        return _Connection(self)

    def overloaded(self) -> asyncio.BaseProtocol:
        for hook in self.on_overload:
            hook()
        return Overloaded(self._overloaded)
