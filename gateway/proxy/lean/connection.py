"""One client connection of the lean proxy listener: llhttp in, a Task per request, bytes out.

The Protocol parses request heads with httptools (llhttp, every leniency off), enforces the
head limits (`max_line_size`, `max_field_size`, `max_headers`) and `client_header_timeout`,
and starts one `Exchange` Task per request as soon as its head is complete, so that the
decision can run (and answer `Expect: 100-continue`) before any body byte is read. The body
goes to that Task through a `Pipe`: over its high-water mark the socket stops being read
(back-pressure to the client). Responses go out through `write`/`drain`, which follow the
transport's write-buffer limits (`pause_writing`).

Pipelined requests are answered in order: a second head parsed while the first is in flight
waits in a queue and reading pauses; its Task starts when the first response is complete.
A request whose body was not read whole when its response ended is read to its end and
discarded (up to `_DISCARD_LIMIT` bytes and `client_body_timeout`), else the connection closes.

The parser, the head limits, the timer and the listener's bookkeeping are `gateway.wire.head`'s
(`HeadProtocol`, shared with the decision listener's connection).

SECURITY: see gateway/wire/head.py for the parser settings; docs/security.md ("The lean
engine's parser") maps each to the smuggling class it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import httptools
import structlog
from multidict import CIMultiDict

from gateway.wire.head import HEAD, IDLE, HeadProtocol, refused
from gateway.wire.pipe import Pipe

if TYPE_CHECKING:
    from gateway.proxy.lean.listener import LeanServer

__all__ = ["ClientConnection", "ClientGone", "Incoming", "ParseFailed"]

_DISCARD_LIMIT = 1024 * 1024
_log = structlog.get_logger("gateway.engine")
_BUSY = 2  # a request in flight (after `IDLE` and `HEAD`): no deadline


class ParseFailed(Exception):
    """The client's bytes broke HTTP/1.1 framing (inside a body: the body is unusable)."""


class ClientGone(ParseFailed):
    """The client closed its connection before its body was complete."""


class Incoming:
    """One request as parsed: the head, and its body as a `Pipe` (ended at once without one)."""

    __slots__ = (
        "body",
        "chunked",
        "content_length",
        "expect_continue",
        "has_body",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
        body: Pipe,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body
        self.content_length: int | None = None
        self.chunked = False
        self.has_body = False
        self.expect_continue = False


Handler = Callable[["ClientConnection", Incoming], Coroutine[Any, Any, bool]]


class ClientConnection(HeadProtocol):
    """See the module docstring. `handler(conn, incoming)` returns whether the connection may
    carry another request."""

    def __init__(self, server: LeanServer) -> None:
        super().__init__(server)
        self._server = server
        self._handler = server.handler
        self._queue: deque[Incoming] = deque()  # parsed, not yet answered (first: in flight)
        self._parsing: Incoming | None = None  # whose body the parser is reading
        self._task: asyncio.Task[bool] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._read_paused = 0  # bit 1: body back-pressure, bit 2: pipelining, bit 4: writes
        self._broken: tuple[int, str] | None = None
        self._discarding = 0  # bytes of an answered request's body still being read and dropped
        self._close_when_read = False  # close once that body is read (the answer said close)

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ClientGone("the client closed the connection")
        for incoming in self._queue:
            incoming.body.fail(lost)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: the upstream request is cancelled too
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("client gone"))
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._broken is not None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._queue and self._task is None and len(self._queue) == 1:
                # A complete head asking for a tunnel or an upgrade: the pipeline refuses it
                # with its own reason (`plan.precheck`, close); nothing after it is parsed.
                self._broken = (400, "protocol upgrades and CONNECT are not supported")
                self._closing = True
                self._pause(2)
                self._start(self._queue[0])
            else:
                self._broke(400, "protocol upgrades and CONNECT are not supported")
            return
        except httptools.HttpParserError as exc:
            # A callback's exception comes back wrapped (HttpParserCallbackError, context).
            refusal = refused(exc)
            # One INFO line naming the error class, as the aiohttp engine logs (gateway/ops/log.py
            # `_QuietParserErrors`); never the bytes, which may hold a token.
            _log.info(f"malformed request refused: {type(exc).__name__}", peer=self.peer)
            self._broke(*(refusal or (400, f"malformed request ({exc})")))
            return
        # SECURITY: a request's Task starts only once llhttp has accepted all the bytes of this
        # read: some framing errors (`Transfer-Encoding: xchunked`) are raised after
        # `on_headers_complete`, and such a request must never be acted on.
        if self._queue and self._task is None and not self._discarding:
            self._start(self._queue[0])

    def eof_received(self) -> bool | None:
        parsing = self._parsing
        if parsing is not None:
            parsing.body.fail(ClientGone("the client closed its side mid-body"))
        return None  # close the transport

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()
        self._pause(4)  # a client that does not read its answers sends no more requests

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        self._resume(4)

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        if self._phase == IDLE:
            self._arm(HEAD, self._limits.header_timeout, restart=False)

    def on_headers_complete(self) -> None:
        parser = self._parser
        target, headers = self._take_head()
        incoming = Incoming(
            parser.get_method().decode("ascii", "replace"),
            target,
            parser.get_http_version(),
            CIMultiDict(headers),
            parser.should_keep_alive(),
            Pipe(self._loop, self._pause_body, self._resume_body),
        )
        if self._framing_seen:  # a Content-Length, Transfer-Encoding or Expect header
            self._framing_seen = False
            _framing(incoming, headers)
        self._phase, self._deadline = _BUSY, 0.0
        self._parsing = incoming if incoming.has_body else None
        if not incoming.has_body:
            incoming.body.end()
        self._queue.append(incoming)
        if len(self._queue) > 1:
            self._pause(2)

    def on_body(self, body: bytes) -> None:
        parsing = self._parsing
        if parsing is None:
            return
        if parsing is not self._queue[0] or self._task is not None or not self._discarding:
            parsing.body.put(body)
            return
        self._discard(len(body))

    def on_message_complete(self) -> None:
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            parsing.body.end()
        if self._discarding:
            self._discarding = 0
            self._next()

    # ---- the Task side

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's write buffer is over its high-water mark; ConnectionError
        when the client is gone."""
        if self.transport is None:
            raise ConnectionResetError("client gone")
        if self._writable is not None:
            await asyncio.shield(self._writable)

    @property
    def closing(self) -> bool:
        return self._closing

    def _start(self, incoming: Incoming) -> None:
        self._task = self._loop.create_task(self._handler(self, incoming))
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[bool]) -> None:
        self._task = None
        keep = not task.cancelled() and task.exception() is None and task.result()
        if self.transport is None:
            return
        incoming = self._queue[0]
        answered = not task.cancelled() and task.exception() is None
        if not answered or self._broken is not None:
            self._close_after_answers()
            return
        body = incoming.body
        if not body.finished and self._parsing is incoming:
            # Answered before its body was read (a refusal): read the rest and drop it, also
            # when the connection closes after this answer: closing a socket with unread bytes
            # makes the kernel send a reset, which can destroy the answer before the client
            # reads it (nginx's lingering close does the same, for the same reason).
            self._close_when_read = self._close_when_read or not keep or self._closing
            if self._close_when_read and self.transport.can_write_eof():
                # Half-close at once: the client reads the answer to its end (a client waiting
                # on `Expect: 100-continue` never sends the body), what is still coming is
                # dropped until the body ends, its deadline passes or the limit is reached.
                self.transport.write_eof()
            body.read_nowait()
            self._discarding = 1
            self._discard(0)
            self._resume(1)
            self._arm(HEAD, self._limits.body_timeout)  # the rest must come in time
            return
        if not keep or self._closing or body.failed:
            self._close_after_answers()
            return
        self._next()

    def _discard(self, size: int) -> None:
        self._discarding += size
        if self._discarding > _DISCARD_LIMIT:
            self._closing = True
            if self.transport is not None:
                self.transport.close()

    def _next(self) -> None:
        """The first request is answered: start the next one, or wait for one."""
        if self._close_when_read:  # its unread body is read: now the close is clean
            self._close_after_answers()
            return
        self._queue.popleft()
        if self._queue:
            self._start(self._queue[0])
            if len(self._queue) == 1:
                self._resume(2)
            return
        self._resume(2)
        if self._closing:
            self._close_after_answers()
            return
        self._arm(IDLE, self._limits.header_timeout)

    def _close_after_answers(self) -> None:
        self._closing = True
        self._queue.clear()
        if self.transport is not None:
            self.transport.close()

    # ---- reading flow control

    def _pause_body(self) -> None:
        self._pause(1)

    def _resume_body(self) -> None:
        self._resume(1)

    def _pause(self, bit: int) -> None:
        if not self._read_paused and self.transport is not None:
            self.transport.pause_reading()
        self._read_paused |= bit

    def _resume(self, bit: int) -> None:
        if not self._read_paused & bit:
            return
        self._read_paused &= ~bit
        if not self._read_paused and self.transport is not None:
            self.transport.resume_reading()

    # ---- refusals the connection makes itself

    def _broke(self, status: int, detail: str) -> None:
        """The bytes cannot be parsed further: a body in progress fails; with nothing in
        flight, answer `status` and close; else close after the answers owed."""
        self._broken = (status, detail)
        self._deadline = 0.0
        failure = ParseFailed(detail)
        for incoming in self._queue:
            incoming.body.fail(failure)
        if self.transport is None:
            return
        self._pause(2)
        if self._task is None or (self._parsing is None and len(self._queue) == 0):
            self._refuse_and_close(status, detail)
        else:
            self._closing = True

    def _refuse_and_close(self, status: int, detail: str) -> None:
        self._queue.clear()
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.write(self._server.refusal(status, detail))
            self.transport.close()

    # ---- the head timer (`HeadProtocol._arm`)

    def _timed_out(self) -> None:
        if self._phase == _BUSY or self.transport is None:
            return
        if self._phase == IDLE or self._discarding:
            # An idle keep-alive connection, or the unread rest of an answered request's body
            # that stopped coming: a silent close (the answer has gone out already).
            self.transport.close()
        else:
            self._refuse_and_close(408, "the client took too long to send its request")

    # ---- draining

    def drain_connection(self) -> None:
        """Stop taking requests: close now if idle, else after the answer owed."""
        self._closing = True
        if not self._queue and self._phase == IDLE and self.transport is not None:
            self.transport.close()


def _framing(incoming: Incoming, headers: list[tuple[str, str]]) -> None:
    """How the body is framed (llhttp has already refused ambiguous framings)."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-length":
            incoming.content_length = int(value.strip())
        elif lowered == "transfer-encoding":
            incoming.chunked = True
        elif lowered == "expect":
            incoming.expect_continue = (
                incoming.version == "1.1" and value.strip().lower() == "100-continue"
            )
    incoming.has_body = incoming.chunked or bool(incoming.content_length)
