"""What every server-side connection shares: the strict parser, the head within its limits, the
head timer, and the connection's place in its listener.

`HeadProtocol` is the base of the decision listener's connection (`gateway.wire.server`) and of
the lean proxy's client connection (`gateway.proxy.lean.connection`); each adds what it does
with a head once it is complete. `strict` is also the upstream side's (`gateway.wire.client`).

SECURITY: llhttp runs strict (every `set_dangerous_leniencies` flag off, as httptools' default,
set explicitly so a future default cannot loosen it): no bare LF, no obs-fold, no spaces in
header names, no Content-Length with Transfer-Encoding, no data after `Connection: close`
(reference aiohttp-proxying.md §1.24 lists the request-smuggling classes this closes;
docs/security.md, "The lean engine's parser", maps each flag to its class).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httptools

if TYPE_CHECKING:
    from gateway.wire.listener import Listener

__all__ = ["HEAD", "IDLE", "HeadProtocol", "Refused", "refused", "strict"]

# Phases every connection has; a subclass numbers its own from 2.
IDLE, HEAD = 0, 1
# Headers a connection looks at again once the head is complete (framing, `Expect`), found by
# their first byte before any lower-casing.
_FRAMING_NAMES = frozenset({"transfer-encoding", "content-length", "expect"})
_FRAMING_INITIALS = frozenset(bytes([c]) for c in b"TtCcEe")

Parser = TypeVar("Parser", httptools.HttpRequestParser, httptools.HttpResponseParser)


def strict(parser: Parser) -> Parser:
    """`parser` with every llhttp leniency off (see the module docstring)."""
    parser.set_dangerous_leniencies(
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
    return parser


class Refused(Exception):
    """Raised inside a parser callback to stop parsing with an answer: `status`, `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.refusal = (status, detail)


def refused(exc: BaseException) -> tuple[int, str] | None:
    """The (status, detail) a callback's `Refused` carries; llhttp hands it back wrapped in an
    `HttpParserCallbackError` (as its context). None for any other parse error."""
    for candidate in (exc, exc.__context__):
        if isinstance(candidate, Refused):
            return candidate.refusal
    return None


class HeadProtocol(asyncio.Protocol):
    """One client connection up to a complete head: strict llhttp, the head limits
    (`max_line_size`, `max_field_size`, `max_headers`: `Refused` 414/431), one deadline timer,
    membership of `listener.connections`.

    A subclass defines `on_message_begin`, `on_headers_complete` (taking the head with
    `_take_head`), the body callbacks, `_timed_out` (the deadline of its phase passed) and
    `drain_connection` (stop taking requests). It extends `connection_lost` and calls this one
    last: the listener's `idle` is set when its last connection is gone."""

    def __init__(self, listener: Listener[Any]) -> None:
        self._listener = listener
        self._loop = listener.loop
        self._limits = listener.limits
        self._parser = strict(httptools.HttpRequestParser(self))
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self._closing = False
        # the head being parsed
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: list[tuple[str, str]] = []
        self._framing_seen = False  # a Transfer-Encoding, Content-Length or Expect header
        # the one timer (a deadline checked lazily: no cancel/re-arm per request)
        self._phase = IDLE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self._listener.connections.add(self)
        self._arm(IDLE, self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.connections.discard(self)
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._listener.connections:
            self._listener.idle.set()

    # ---- httptools callbacks: the head

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > self._limits.max_line_size:
            raise Refused(414, "the request target is too long")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= self._limits.max_headers:
            raise Refused(431, "too many headers")
        if len(name) + len(value) > self._limits.max_field_size:
            raise Refused(431, "a header is too long")
        decoded = name.decode("utf-8", "surrogateescape")
        if name[:1] in _FRAMING_INITIALS and decoded.lower() in _FRAMING_NAMES:
            self._framing_seen = True
        headers.append((decoded, value.decode("utf-8", "surrogateescape")))

    def _take_head(self) -> tuple[str, list[tuple[str, str]]]:
        """The request target (decoded as aiohttp decodes it) and the header fields in order;
        the next head starts empty."""
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        headers = self._headers
        self._url, self._url_size, self._headers = [], 0, []
        return url.decode("utf-8", "surrogateescape"), headers

    # ---- the timer

    def _arm(self, phase: int, seconds: float, *, restart: bool = True) -> None:
        """Enter `phase`, due in `seconds` (with `restart=False`, a deadline already set stays)."""
        self._phase = phase
        if restart or not self._deadline:
            self._deadline = self._loop.time() + seconds
        if self._timer is not None and self._timer.when() > self._deadline:
            # A timer set for a later deadline (a longer phase) would check this one too late.
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._deadline or self.transport is None:
            return
        if self._loop.time() + 0.001 < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._timed_out()

    def _timed_out(self) -> None:
        raise NotImplementedError

    # ---- the listener's

    def drain_connection(self) -> None:
        """Stop taking requests: close now if idle, else after the answer owed."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection without a clean end."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
