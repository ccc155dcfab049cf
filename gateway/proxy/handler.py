"""The aiohttp adapter of the request pipeline: build a RequestView -> gate -> forward | deny.

Order on every request (cheap checks first, no I/O before them):
  1. `targets.check_target(raw_path)`: malformed targets -> 400 bad_target;
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
`Expect: 100-continue` runs steps 1-4 on the headers before answering 100 (`Proxy.expect`),
and hands its verdict to `handle` in the request's dict under this module's own key.
Every refusal, wherever it starts, is a `Decision` (gateway/core/decision.py; the checks are
`gateway.proxy.plan`'s, shared with the lean engine) answered by `responses.refusal`.
Each request ends with exactly one log line and its metrics (`gateway.ops.exchange`).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from time import perf_counter
from typing import NamedTuple, Protocol

import aiohttp
import structlog
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.core import tokens
from gateway.core.decision import Decision, Reason
from gateway.core.request import RequestView
from gateway.errors import UpstreamError
from gateway.ops import metrics
from gateway.ops.exchange import (
    Exchange,
    Recorder,
    RequestIds,
)
from gateway.proxy import bodyguard, plan
from gateway.proxy.forward import BodyTooLarge, ClientBodyError, Forwarder
from gateway.proxy.headers import HeaderPolicy
from gateway.proxy.plan import Permit, Verdict
from gateway.proxy.responses import refusal
from gateway.settings import Mode, Settings

__all__ = ["Decider", "Proxy"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_log = structlog.get_logger("gateway.handler")


class Expected(NamedTuple):
    """What `Proxy.expect` hands to `Proxy.handle`: the request's record, begun there, and the
    verdict on its headers (None: only the body can tell)."""

    exchange: Exchange
    verdict: Verdict | None


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

    async def handle(
        self, request: web.BaseRequest, expected: Expected | None = None
    ) -> web.StreamResponse:
        """Answer `request`: refused, or forwarded and relayed. `expected` is what `expect`
        returned for it, when it carried `Expect: 100-continue`."""
        if expected is None:
            exchange, verdict = self._begin(request), None
        else:
            exchange, verdict = expected
        metrics.IN_FLIGHT.inc()
        task = asyncio.current_task()
        if task is not None:
            self._running[task] = exchange
            self._transports[task] = request.transport
        try:
            response = await self._respond(request, exchange, verdict)
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
            response = self._refuse(exchange, plan.DRAIN_CUT)  # closes: says `Connection: close`
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

    async def expect(self, request: web.BaseRequest) -> Expected | None:
        """Decide on the headers alone, then send `100 Continue` only if the request may go on.

        aiohttp's default handler sends 100 before any handler runs, so a refused client would
        start sending its (possibly GB-sized) body (reference aiohttp-proxying.md §1.16). The
        caller passes what this returns to `handle` for the same request; a refusal is answered
        there, closing, and the body is never read. None: no expectation this handler meets.
        """
        expectation = request.headers.get("Expect", "").lower()
        if request.version != HttpVersion11 or expectation != "100-continue":
            return None  # unknown expectations are ignored (RFC 9110 §10.1.1), never forwarded
        exchange = self._begin(request)
        verdict = await self._judge(request, exchange, headers_only=True)
        if isinstance(verdict, Decision):
            return Expected(exchange, plan.closing(verdict))
        # A client gone by now is found out by `handle`, when it reads the body.
        with contextlib.suppress(ConnectionError):
            await request.writer.write(_CONTINUE)
        return Expected(exchange, verdict)

    def _begin(self, request: web.BaseRequest) -> Exchange:
        return plan.begin(
            self._ids,
            self._trusts,
            request.remote,
            request.headers,
            request.method,
            request.raw_path,
        )

    async def _respond(
        self, request: web.BaseRequest, exchange: Exchange, verdict: Verdict | None
    ) -> web.StreamResponse:
        if verdict is None:
            verdict = await self._judge(request, exchange, headers_only=False)
        if isinstance(verdict, Decision):
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
            return self._refuse(exchange, plan.INTERNAL_ERROR)
        if verdict.guard is not None and verdict.guard.violation is not None:
            # Dry-run (or the upstream answered before the body was refused): log the denial.
            plan.deny_streamed(exchange, verdict.guard.violation, would=self._dry_run)
        return forwarded

    async def _judge(
        self, request: web.BaseRequest, exchange: Exchange, *, headers_only: bool
    ) -> Verdict | None:
        """The verdict, or None when only the body can tell (and we may not read it yet).

        Fail closed: an exception here is a gateway fault and ends in a 500, never a forward.
        """
        try:
            refused = plan.precheck(
                request.method,
                request.raw_path,
                _version(request),
                request.headers,
                request.content_length,
                self._settings.max_body_size,
            )
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
                streamed = plan.stream_guard(
                    view,
                    request.content_length,
                    self._inspect_limit,
                    self._gate.tokens,
                    dry_run=self._dry_run,
                )
                if isinstance(streamed, Decision):
                    return streamed
                guard = streamed
                if guard is None:
                    if headers_only:
                        return None
                    body = await self._read_body(request)
                    if isinstance(body, Decision):
                        return body
                    view = RequestView(view.method, view.target, view.headers, body, view.remote)
            started = perf_counter()
            decision = await self._gate.evaluate(view)
            exchange.decision_seconds = perf_counter() - started
            verdict = plan.verdict(view, exchange, decision, dry_run=self._dry_run)
            if guard is not None and isinstance(verdict, Permit):
                return Permit(verdict.view, guard)
            return verdict
        except Exception:
            _log.exception("decision_failed", request_id=exchange.transfer.request_id)
            return plan.INTERNAL_ERROR

    async def _read_body(self, request: web.BaseRequest) -> bytes | Decision:
        """The whole body, if it fits `body_inspect_limit` (and `max_body_size`); never more."""
        limit = self._inspect_limit
        length = request.content_length
        if length is not None and length > limit:
            return plan.NOT_INSPECTABLE
        buffer = bytearray()
        try:
            while chunk := await _read_within(request, self._settings.client_body_timeout):
                buffer += chunk
                if len(buffer) > limit:
                    return plan.NOT_INSPECTABLE
        except TimeoutError:
            return plan.BODY_TIMEOUT
        except (aiohttp.ClientError, HttpProcessingError, ConnectionError) as exc:
            # The client broke its own upload (framing, disconnect): its fault, not ours.
            return plan.unreadable_body(type(exc).__name__)
        return bytes(buffer)

    def _refuse(self, exchange: Exchange, decision: Decision) -> web.Response:
        exchange.reason = decision.reason
        return refusal(decision, exchange.transfer.request_id)

    def _forward_failed(
        self, request: web.BaseRequest, exchange: Exchange, exc: Exception
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
            exchange.transfer.error = None  # a denial, not a failure
            plan.deny_streamed(exchange, exc.violation, would=False)
            return self._refuse(exchange, exc.violation)
        if isinstance(exc, BodyTooLarge):
            # The client may still be sending: aiohttp reads and discards the rest for a while
            # (lingering close) so the 413 is not lost to a connection reset.
            return self._refuse(exchange, plan.TOO_LARGE)
        return self._refuse(exchange, plan.upstream_failed(exc))  # 502, or 504 for a timeout


async def _read_within(request: web.BaseRequest, seconds: float) -> bytes:
    """The next piece of the body; TimeoutError when the client stays silent that long."""
    content = request.content
    chunk = content.read_nowait()  # what has arrived already needs no timer (~3 us to arm)
    if chunk or content.is_eof():
        return chunk
    async with asyncio.timeout(seconds):
        return await content.readany()


def _version(request: web.BaseRequest) -> str:
    """The request's HTTP version as `plan.framing_problem` reads it: HTTP/0.9 is refused
    there; anything aiohttp's parser accepts above 1.1 is read as 1.1, as it always was."""
    version = request.version
    if version < HttpVersion10:
        return "0.9"
    return "1.0" if version == HttpVersion10 else "1.1"


async def _answer_and_close(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Send the answer now and close: aiohttp would otherwise wait up to its lingering time
    for a body that a refused `Expect: 100-continue` client will never send."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return
    if request.transport is not None:
        request.transport.close()  # flushes the answer, then closes
