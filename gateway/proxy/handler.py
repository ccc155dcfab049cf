"""The aiohttp adapter of the request pipeline: build a RequestView -> gate -> forward | deny.

Order on every request (cheap checks first, no I/O before them):
  1. `routes.check_target(raw_path)`: malformed targets -> 400 bad_target;
  2. upgrade requests -> 400 upgrade_refused; a Content-Length over `max_body_size` -> 413;
  3. the view (end-to-end headers, see `gateway.proxy.headers`), the body read only when the gate
     needs it (bounded by `body_inspect_limit`, 413 body_not_inspectable beyond), except a
     multipart/form-data body over that limit or chunked: decided on the headers and query, it
     is checked as it streams (`gateway.proxy.bodyguard.Guard`; a refusal stops it before the
     upstream has it whole, 400 if the response has not started). Form and JSON bodies are
     not parsed while streaming: API clients send them small, and 413 is the honest answer;
  4. `gate.evaluate(view)`: denied -> the gate's status and message (enforce) or a forward with
     `would_deny=true` (dry-run); anything unexpected -> 500 internal_error, never a forward;
  5. the forwarder; upstream failures before the response -> 502/504.
`Expect: 100-continue` runs steps 1-4 on the headers before answering 100 (`Proxy.expect`).
Each request ends with exactly one log line and its metrics (`gateway.ops.exchange`).
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Protocol

import aiohttp
import structlog
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.core import multipart, tokens
from gateway.core.decision import Audit, Decision, Reason
from gateway.core.request import RequestView
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.ops import metrics
from gateway.ops.exchange import (
    Exchange,
    Recorder,
    RequestIds,
    accepted_request_id,
    client_address,
)
from gateway.proxy import bodyguard
from gateway.proxy.forward import BodyTooLarge, ClientBodyError, Forwarder, Transfer
from gateway.proxy.headers import HeaderPolicy, is_upgrade
from gateway.proxy.responses import REASON_HEADER, gitlab_message, refusal
from gateway.routing import table as routes
from gateway.settings import Mode, Settings

__all__ = ["EXCHANGE", "Decider", "Permit", "Proxy", "Refuse"]

EXCHANGE = web.RequestKey("exchange", Exchange)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_log = structlog.get_logger("gateway.proxy.handler")


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the request ourselves."""

    reason: Reason
    status: int
    message: str
    close: bool = False  # close right after answering, without reading the body


@dataclass(frozen=True, slots=True)
class Permit:
    """Forward this view (its body, when set, is the buffer that was authorized); `guard`
    checks a streamed multipart body on its way."""

    view: RequestView
    guard: bodyguard.Guard | None = None


Verdict = Refuse | Permit


class Decider(Protocol):
    """The part of the Gate contract (gateway/core/gate.py) the request pipeline calls."""

    @property
    def tokens(self) -> tokens.Reader: ...  # the reader the gate judges requests with
    def needs_body(self, view: RequestView) -> bool: ...
    async def evaluate(self, view: RequestView) -> Decision: ...


class Proxy:
    """The request handler and the `Expect: 100-continue` handler of the proxy listener."""

    def __init__(
        self,
        settings: Settings,
        gate: Decider,
        forwarder: Forwarder,
        headers: HeaderPolicy,
        recorder: Recorder,
    ) -> None:
        self._settings = settings
        self._gate = gate
        self._forwarder = forwarder
        self._headers = headers
        self._recorder = recorder
        self._ids = RequestIds()
        self._trusts = headers.trusts
        # Requests being handled (their tasks), for the drain (`wait_idle`, `cut`), and the
        # transports they arrive on (`busy_transports`: the drain must not close those).
        self._running: dict[asyncio.Task[object], Exchange] = {}
        self._transports: dict[asyncio.Task[object], asyncio.BaseTransport | None] = {}
        self._draining = False
        self._idle = asyncio.Event()
        self._cut: weakref.WeakSet[asyncio.Task[object]] = weakref.WeakSet()
        self._dry_run = settings.mode is Mode.DRY_RUN
        self._inspect_limit = settings.body_inspect_limit
        if settings.max_body_size:
            self._inspect_limit = min(self._inspect_limit, settings.max_body_size)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Only a request with `Expect` went through `expect` (aiohttp's condition): the lookup
        # of a missing key costs a KeyError inside MutableMapping.get.
        exchange = (request.get(EXCHANGE) if "Expect" in request.headers else None) or (
            self._begin(request)
        )
        metrics.IN_FLIGHT.inc()
        task = asyncio.current_task()
        if task is not None:
            self._running[task] = exchange
            self._transports[task] = request.transport
        try:
            response = await self._respond(request, exchange)
        except asyncio.CancelledError:
            if task is None or task not in self._cut:  # the client went away (handler_cancellation)
                exchange.status, exchange.transfer.error = 499, "client_disconnected"
                raise
            # SIGTERM's grace period ended (`cut`): answer 503 if nothing was sent yet.
            exchange.transfer.error = "drain_cut"
            sent = exchange.transfer.status
            if sent or task.uncancel() > 0:
                exchange.reason, exchange.status = Reason.DRAIN_CUT, sent or 503
                raise
            response = self._refuse(exchange, Refuse(Reason.DRAIN_CUT, 503, gitlab_message(503)))
            response.force_close()
            exchange.status = 503
        else:
            exchange.status = exchange.status or response.status
            if self._draining:
                # The connection ends with this answer (`begin_drain`): no next request on it.
                response.force_close()
        finally:
            metrics.IN_FLIGHT.dec()
            if task is not None:
                self._running.pop(task, None)
                self._transports.pop(task, None)
                if not self._running:
                    self._idle.set()
            self._recorder.finish(exchange)
        return response

    @property
    def in_flight(self) -> int:
        """Requests being handled now."""
        return len(self._running)

    def begin_drain(self) -> None:
        """SIGTERM: every connection closes after its current answer (StreamResponse.force_close;
        an answer not yet started says `Connection: close`)."""
        self._draining = True

    def busy_transports(self) -> set[asyncio.BaseTransport]:
        """The transports of the requests being handled now (their bodies may still arrive)."""
        return {transport for transport in self._transports.values() if transport is not None}

    async def wait_idle(self, within: float) -> bool:
        """Wait (at most `within` s) until no request is being handled; True if none is."""
        if self._running and within > 0:
            self._idle.clear()
            try:
                async with asyncio.timeout(within):
                    while self._running:
                        await self._idle.wait()
                        self._idle.clear()
            except TimeoutError:
                pass
        return not self._running

    def cut(self) -> int:
        """End of the drain: cancel every request still running. One whose response has not
        started is answered 503 (reason `drain_cut`); one whose response is streaming is cut
        (logged `drain_cut` with the status already sent). Returns how many were cut."""
        tasks = list(self._running)
        for task in tasks:
            self._cut.add(task)
            task.cancel("drain_cut")
        return len(tasks)

    async def expect(self, request: web.Request) -> None:
        """Decide on the headers alone, then send `100 Continue` only if the request may go on.

        aiohttp's default handler sends 100 before any handler runs, so a refused client would
        start sending its (possibly GB-sized) body (reference aiohttp-proxying.md §1.16). A
        refusal is stored and answered by `handle`, which then never reads the body.
        """
        expectation = request.headers.get("Expect", "").lower()
        if request.version != HttpVersion11 or expectation != "100-continue":
            return  # unknown expectations are ignored (RFC 9110 §10.1.1) and never forwarded
        exchange = self._begin(request)
        request[EXCHANGE] = exchange  # for `handle` (aiohttp calls it next)
        exchange.verdict = await self._judge(request, exchange, headers_only=True)
        if isinstance(exchange.verdict, Refuse):
            exchange.verdict = replace(exchange.verdict, close=True)
            return
        try:
            await request.writer.write(_CONTINUE)
        except ConnectionError:
            return  # the client is gone; `handle` finds out when it reads the body

    def _begin(self, request: web.Request) -> Exchange:
        peer = request.remote
        if self._headers.trusts(peer):
            # Behind a trusted proxy: the log shows the real client (the proxy in `peer`), and
            # the proxy's request id is kept, so one id follows the request through every hop.
            headers = request.headers
            remote = client_address(peer, headers.getall("X-Forwarded-For", ()), self._trusts)
            kept = accepted_request_id(headers.getall("X-Request-Id", ()))
            return Exchange(
                transfer=Transfer(request_id=kept or self._ids.new()),
                method=request.method,
                target=request.raw_path,
                remote=remote,
                started=perf_counter(),
                peer=peer if remote != peer else None,
            )
        return Exchange(
            transfer=Transfer(request_id=self._ids.new()),
            method=request.method,
            target=request.raw_path,
            remote=peer,
            started=perf_counter(),
        )

    async def _respond(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        verdict = exchange.verdict
        if verdict is None:
            verdict = await self._judge(request, exchange, headers_only=False)
        if isinstance(verdict, Refuse):
            response = self._refuse(exchange, verdict)
            if verdict.close:
                await _answer_and_close(request, response)
            return response
        assert isinstance(verdict, Permit)
        try:
            forwarded = await self._forwarder.forward(
                request, verdict.view, exchange.transfer, verdict.guard
            )
        except (UpstreamError, BodyTooLarge, ClientBodyError, bodyguard.Refused) as exc:
            return self._forward_failed(request, exchange, exc)
        except Exception as exc:  # a fault before the response started (the forwarder's contract)
            _log.exception("forward_failed", request_id=exchange.transfer.request_id)
            exchange.transfer.error = f"{type(exc).__name__}: {exc}"
            return self._refuse(exchange, Refuse(Reason.INTERNAL_ERROR, 500, gitlab_message(500)))
        if verdict.guard is not None and verdict.guard.violation is not None:
            # Dry-run (or the upstream answered before the body was refused): log the denial.
            _deny(exchange, verdict.guard.violation, would=self._dry_run)
        return forwarded

    async def _judge(
        self, request: web.Request, exchange: Exchange, *, headers_only: bool
    ) -> Verdict | None:
        """The verdict, or None when only the body can tell (and we may not read it yet).

        Fail closed: an exception here is a gateway fault and ends in a 500, never a forward.
        """
        try:
            refused = self._precheck(request)
            if refused is not None:
                return refused
            view = RequestView(
                method=request.method,
                target=request.raw_path,
                headers=self._headers.inbound(request),
                remote=request.remote,
            )
            guard: bodyguard.Guard | None = None
            if self._gate.needs_body(view):
                streamed = self._stream_guard(request, view)
                if isinstance(streamed, Refuse):
                    return streamed
                guard = streamed
                if guard is None:
                    if headers_only:
                        return None
                    body = await self._read_body(request)
                    if isinstance(body, Refuse):
                        return body
                    view = RequestView(view.method, view.target, view.headers, body, view.remote)
            started = perf_counter()
            decision = await self._gate.evaluate(view)
            exchange.decision_seconds = perf_counter() - started
            verdict = self._verdict(view, exchange, decision)
            if guard is not None and isinstance(verdict, Permit):
                return replace(verdict, guard=guard)
            return verdict
        except Exception:
            _log.exception("decision_failed", request_id=exchange.transfer.request_id)
            return Refuse(Reason.INTERNAL_ERROR, 500, gitlab_message(500))

    def _precheck(self, request: web.Request) -> Refuse | None:
        """The checks that need no I/O and apply to every request."""
        # SECURITY: dot segments, `#`, backslashes and absolute-form targets are refused before
        # anything else: the upstream could read them differently from the route table, and an
        # absolute-form target names another host (reference aiohttp-proxying.md §1.3-1.4).
        problem = routes.check_target(request.raw_path)
        if problem is not None:
            return Refuse(Reason.BAD_TARGET, 400, gitlab_message(400, problem.detail))
        if request.method == "CONNECT":
            # A tunnel request: the gateway is no forward proxy and must never ask its upstream
            # for a tunnel (aiohttp's client would send it in authority-form).
            detail = "CONNECT is not supported"
            return Refuse(Reason.BAD_TARGET, 400, gitlab_message(400, detail), close=True)
        framing = _framing_problem(request)
        if framing is not None:
            return framing
        if is_upgrade(request.headers):
            # /api/v4 has no websocket endpoints; passing an upgrade through would not be
            # transparent anyway (reference aiohttp-proxying.md §1.18).
            detail = "protocol upgrades are not supported"
            return Refuse(Reason.UPGRADE_REFUSED, 400, gitlab_message(400, detail), close=True)
        limit = self._settings.max_body_size
        length = request.content_length
        if limit and length is not None and length > limit:
            return Refuse(Reason.BODY_TOO_LARGE, 413, gitlab_message(413))
        return None

    def _stream_guard(
        self, request: web.Request, view: RequestView
    ) -> bodyguard.Guard | Refuse | None:
        """A guard for a multipart/form-data body too large to buffer (or chunked), else None:
        the gate then decides on the headers and query, the guard checks the body's parts."""
        length = request.content_length
        if length is not None and length <= self._inspect_limit:
            return None
        types = view.headers.getall("Content-Type", ())
        if not types or not multipart.is_form_data(types[0]):
            return None
        try:
            if len(types) > 1:  # which one would Rack read? (one CONTENT_TYPE in its env)
                raise multipart.MultipartError("more than one Content-Type")
            boundary = multipart.boundary(types[0])
        except multipart.MultipartError as exc:
            return Refuse(Reason.BAD_BODY, 400, gitlab_message(400, str(exc)))
        return bodyguard.Guard(view, boundary, self._gate.tokens, enforce=not self._dry_run)

    async def _read_body(self, request: web.Request) -> bytes | Refuse:
        """The whole body, if it fits `body_inspect_limit` (and `max_body_size`); never more."""
        limit = self._inspect_limit
        too_large = Refuse(Reason.BODY_NOT_INSPECTABLE, 413, gitlab_message(413))
        length = request.content_length
        if length is not None and length > limit:
            return too_large
        buffer = bytearray()
        try:
            while chunk := await _read_within(request, self._settings.client_body_timeout):
                buffer += chunk
                if len(buffer) > limit:
                    return too_large
        except TimeoutError:
            return Refuse(Reason.CLIENT_TIMEOUT, 408, gitlab_message(408), close=True)
        except (aiohttp.ClientError, HttpProcessingError, ConnectionError) as exc:
            # The client broke its own upload (framing, disconnect): its fault, not ours.
            detail = f"the request body could not be read ({type(exc).__name__})"
            return Refuse(Reason.BAD_BODY, 400, gitlab_message(400, detail))
        return bytes(buffer)

    def _verdict(self, view: RequestView, exchange: Exchange, decision: Decision) -> Verdict:
        exchange.decision = decision
        if decision.allowed:
            return Permit(view)
        if self._dry_run:
            exchange.would_deny = True
            return Permit(view)
        status = decision.status or 403
        return Refuse(decision.reason, status, decision.message or gitlab_message(status))

    def _refuse(self, exchange: Exchange, verdict: Refuse) -> web.Response:
        exchange.reason = verdict.reason
        response = refusal(
            verdict.reason,
            verdict.message,
            status=verdict.status,
            request_id=exchange.transfer.request_id,
        )
        if verdict.reason is Reason.TOKEN_REVOKED:
            # The answer stays GitLab's (and an unknown token's) to the client: only the log
            # line and the metrics tell a revoked token from an unknown one.
            response.headers[REASON_HEADER] = Reason.TOKEN_INVALID.value
        if verdict.close:
            response.force_close()  # says `Connection: close`
        return response

    def _forward_failed(
        self, request: web.Request, exchange: Exchange, exc: Exception
    ) -> web.Response:
        exchange.transfer.error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ClientBodyError):
            # The client dropped, broke or stalled its own upload: nobody is left to answer.
            exchange.status = 408 if exc.timed_out else 499
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=400)
        if isinstance(exc, bodyguard.Refused):
            # The upstream got the body up to the chunk before the refused part's end, then a
            # closed connection: it never had the request whole. The client may still be
            # sending; aiohttp reads and discards the rest for a while, as for a 413.
            violation = exc.violation
            exchange.transfer.error = None  # a denial, not a failure
            _deny(exchange, violation)
            return self._refuse(exchange, Refuse(violation.reason, 400, violation.message))
        if isinstance(exc, BodyTooLarge):
            # The client may still be sending: aiohttp reads and discards the rest for a while
            # (lingering close) so the 413 is not lost to a connection reset.
            return self._refuse(exchange, Refuse(Reason.BODY_TOO_LARGE, 413, gitlab_message(413)))
        reason = _UPSTREAM_REASONS.get(type(exc), Reason.UPSTREAM_BAD_RESPONSE)
        metrics.UPSTREAM_ERRORS.labels(reason.value).inc()
        status = 504 if reason is Reason.UPSTREAM_TIMEOUT else 502
        return self._refuse(exchange, Refuse(reason, status, gitlab_message(status)))


_UPSTREAM_REASONS: dict[type[Exception], Reason] = {
    UpstreamUnreachable: Reason.UPSTREAM_UNREACHABLE,
    UpstreamTimeout: Reason.UPSTREAM_TIMEOUT,
}


def _deny(exchange: Exchange, violation: bodyguard.Violation, *, would: bool = False) -> None:
    """Record a refused streamed body as the request's decision (audit kept for the log)."""
    audit = exchange.decision.audit if exchange.decision is not None else Audit()
    exchange.decision = Decision(False, violation.reason, violation.message, audit)
    exchange.would_deny = exchange.would_deny or would


async def _read_within(request: web.Request, seconds: float) -> bytes:
    """The next piece of the body; TimeoutError when the client stays silent that long."""
    content = request.content
    chunk = content.read_nowait()  # what has arrived already needs no timer (~3 us to arm)
    if chunk or content.is_eof():
        return chunk
    async with asyncio.timeout(seconds):
        return await content.readany()


def _framing_problem(request: web.Request) -> Refuse | None:
    """Framings llhttp accepts that the gateway cannot forward faithfully (RFC 9112 §6.1).

    SECURITY: Transfer-Encoding in HTTP/1.0 "MUST be treated as faulty framing"; a coding other
    than `chunked` would be stripped by the parser and reach the upstream as a plain body (501,
    as RFC 9112 §6.1 asks for a coding the server does not understand); HTTP/0.9 has no headers.
    """
    if request.version < HttpVersion10:
        return Refuse(Reason.BAD_FRAMING, 400, gitlab_message(400, "HTTP/0.9"), close=True)
    codings = request.headers.getall("Transfer-Encoding", ())
    if not codings:
        return None
    if request.version == HttpVersion10:
        detail = "Transfer-Encoding in an HTTP/1.0 request"
        return Refuse(Reason.BAD_FRAMING, 400, gitlab_message(400, detail), close=True)
    if [c.strip().lower() for value in codings for c in value.split(",")] != ["chunked"]:
        detail = "only the chunked transfer coding is supported"
        return Refuse(Reason.BAD_FRAMING, 501, gitlab_message(501, detail), close=True)
    return None


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send the answer now and close: aiohttp would otherwise wait up to its lingering time
    for a body that a refused `Expect: 100-continue` client will never send."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return
    if request.transport is not None:
        request.transport.close()  # flushes the answer, then closes
