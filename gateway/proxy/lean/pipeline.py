"""The lean engine's request pipeline: head -> decision -> upstream leg -> relay.

The same order and rules as the aiohttp handler (gateway/proxy/handler.py, whose docstring lists
them; the shared checks are `gateway.proxy.plan`), over `ClientConnection` and the upstream
`Pool` (gateway/wire/client.py):
  - the request head goes upstream in one write: `METHOD <raw target> HTTP/1.1`, the
    end-to-end headers the decision saw (`HeaderPolicy.inbound_from`), the gateway's
    forwarding headers (`outbound_from`), and the body's framing (the client's Content-Length,
    or chunked again); a buffered (inspected) body goes in the same write;
  - a response with a Content-Length up to `SMALL_BODY` goes back in one write; larger or
    unframed bodies stream, each chunk written once the client's buffer has room;
  - failures before the response started are 502/504 (gateway JSON), after it an aborted
    client connection (never a clean end to a cut body).
Every refusal is a `Decision` (gateway/core/decision.py), rendered by `refusal_bytes`.
Each request ends with one log line and its metrics (`gateway.ops.exchange.Recorder`).
"""

from __future__ import annotations

import asyncio
import weakref
from time import perf_counter
from typing import TYPE_CHECKING

import structlog
from multidict import CIMultiDict

from gateway.core.decision import Decision, Reason
from gateway.core.request import RequestView
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.ops import metrics
from gateway.ops.exchange import (
    Exchange,
    Recorder,
    RequestIds,
)
from gateway.proxy import bodyguard, plan
from gateway.proxy.forward import (
    SMALL_BODY,
    BodyTooLarge,
    ClientBodyError,
    Transfer,
    UpstreamBadResponse,
    inspect_chunk,
)
from gateway.proxy.handler import Decider
from gateway.proxy.headers import HeaderPolicy
from gateway.proxy.lean.connection import ClientConnection, ClientGone, Incoming, ParseFailed
from gateway.proxy.plan import Permit, Verdict
from gateway.proxy.responses import REQUEST_ID_HEADER, refusal
from gateway.settings import Mode, Settings
from gateway.wire.client import (
    Dropped,
    Pool,
    ResponseHead,
    TimedOut,
    Unreachable,
    UpstreamConnection,
    UpstreamFailure,
)
from gateway.wire.pipe import PipeTimeout

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LeanProxy", "refusal_bytes"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# RFC 9110 §9.2.1 safe methods: a stale keep-alive connection is retried only for these, and
# only without a body (the upstream cannot have acted on a request it never read whole).
_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_RETRIES = 3
_log = structlog.get_logger("gateway.engine")


def refusal_bytes(
    decision: Decision, request_id: str | None, *, head: bool = False, close: bool = False
) -> bytes:
    """A refusal (`gateway.proxy.responses.refusal`, the aiohttp engine's answer) as bytes;
    `Connection: close` when `close` or `decision.close`."""
    response = refusal(decision, request_id)
    body = response.body
    assert isinstance(body, bytes)
    lines = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in response.headers.items()]
    lines.append(f"Content-Length: {len(body)}\r\n")
    if close or decision.close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + (b"" if head else body)


class _Cut(Exception):
    """The upstream's body failed after its head arrived."""


class _Leg:
    """The upstream connection of one exchange, and the Task sending a streamed body."""

    __slots__ = ("upload", "upstream")

    def __init__(self) -> None:
        self.upstream: UpstreamConnection | None = None
        self.upload: asyncio.Task[None] | None = None


def _retrieve(task: asyncio.Task[None]) -> None:
    """The upload's outcome is read through `Transfer.body_failure`; mark it retrieved."""
    if not task.cancelled():
        task.exception()


def _gateway_error(exc: UpstreamFailure) -> GatewayError:
    """A failure before the upstream's response, as the aiohttp engine's error types."""
    if isinstance(exc, Unreachable):
        return UpstreamUnreachable(str(exc))
    if isinstance(exc, TimedOut):
        return UpstreamTimeout(str(exc))
    return UpstreamBadResponse(f"{type(exc).__name__}: {exc}")


class _Stop(Exception):
    """The request is over; the connection may carry another only if `keep`."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep


class LeanProxy:
    """`handle(conn, incoming)` is the `ClientConnection` handler of the proxy listener."""

    def __init__(
        self,
        settings: Settings,
        gate: Decider,
        headers: HeaderPolicy,
        recorder: Recorder,
        pool: Pool,
        upstream_host: str,
    ) -> None:
        self._gate = gate
        self._now: Callable[[RequestView], Decision | None] | None = getattr(
            gate, "evaluate_now", None
        )
        self._headers = headers
        self._recorder = recorder
        self._pool = pool
        self._upstream_host = upstream_host
        self._ids = RequestIds()
        self._trusts = headers.trusts
        # Requests being handled (their tasks), for the drain (`cut`).
        self._running: dict[asyncio.Task[object], ClientConnection] = {}
        self._cut: weakref.WeakSet[asyncio.Task[object]] = weakref.WeakSet()
        self._dry_run = settings.mode is Mode.DRY_RUN
        self._inspect_limit = settings.body_inspect_limit
        if settings.max_body_size:
            self._inspect_limit = min(self._inspect_limit, settings.max_body_size)
        self._max_body = settings.max_body_size
        self._body_timeout = settings.client_body_timeout
        self._read_timeout = settings.read_timeout

    def _begin(self, conn: ClientConnection, incoming: Incoming) -> Exchange:
        """The request's record (`plan.begin`)."""
        return plan.begin(
            self._ids, self._trusts, conn.peer, incoming.headers, incoming.method, incoming.target
        )

    @property
    def in_flight(self) -> int:
        """Requests being handled now."""
        return len(self._running)

    def cut(self) -> int:
        """End of the drain (`Proxy.cut`): cancel every request still running. One whose
        response has not started is answered 503 `drain_cut`; one whose response is streaming
        is cut (logged `drain_cut` with the status already sent)."""
        running = list(self._running.items())
        for task, _ in running:
            self._cut.add(task)
            task.cancel("drain_cut")
        return len(running)

    async def handle(self, conn: ClientConnection, incoming: Incoming) -> bool:
        exchange = self._begin(conn, incoming)
        metrics.IN_FLIGHT.inc()
        task = asyncio.current_task()
        if task is not None:
            self._running[task] = conn
        try:
            return await self._respond(conn, incoming, exchange)
        except asyncio.CancelledError:
            if task is None or task not in self._cut:  # the client went away
                exchange.status, exchange.transfer.error = 499, "client_disconnected"
                raise
            # SIGTERM's grace period ended (`cut`): answer 503 if nothing was sent yet.
            exchange.transfer.error = "drain_cut"
            sent = exchange.transfer.status
            exchange.reason, exchange.status = Reason.DRAIN_CUT, sent or 503
            if sent:
                conn.abort()
            else:
                self._refuse(conn, incoming, exchange, plan.DRAIN_CUT)
            return False
        except _Stop as stop:
            return stop.keep
        except ClientGone:  # left while its body was being read for the decision
            exchange.status, exchange.transfer.error = 499, "client_disconnected"
            return False
        except Exception as exc:  # a fault of ours while forwarding: fail closed
            _log.exception("forward_failed", request_id=exchange.transfer.request_id)
            exchange.transfer.error = f"internal_error: {type(exc).__name__}"
            if exchange.transfer.status:  # the response started: never a clean end to it
                exchange.status = exchange.transfer.status
                conn.abort()
                return False
            # Nothing sent back yet: a 500, as the aiohttp engine answers (`Proxy._respond`).
            self._refuse(conn, incoming, exchange, plan.closing(plan.INTERNAL_ERROR))
            return False
        finally:
            metrics.IN_FLIGHT.dec()
            if task is not None:
                self._running.pop(task, None)
            self._recorder.finish(exchange)

    # ---- deciding

    async def _respond(
        self, conn: ClientConnection, incoming: Incoming, exchange: Exchange
    ) -> bool:
        verdict = await self._judge(conn, incoming, exchange)
        if isinstance(verdict, Decision):
            return self._refuse(conn, incoming, exchange, verdict)
        if incoming.expect_continue and not conn.closing:
            conn.write(_CONTINUE)
            incoming.expect_continue = False
        return await self._forward(conn, incoming, exchange, verdict)

    async def _judge(
        self, conn: ClientConnection, incoming: Incoming, exchange: Exchange
    ) -> Verdict:
        """The verdict (`Proxy._judge`); with `Expect: 100-continue` a refusal closes and the
        100 goes out only once the request may go on. Fail closed: a fault is a 500."""
        try:
            refused = plan.precheck(
                incoming.method,
                incoming.target,
                incoming.version,
                incoming.headers,
                incoming.content_length,
                self._max_body,
            )
            if refused is not None:
                return self._expecting(incoming, refused)
            view = RequestView(
                incoming.method,
                incoming.target,
                self._headers.inbound_from(incoming.headers, conn.peer),
                None,
                conn.peer,
            )
            guard: bodyguard.Guard | None = None
            if incoming.has_body and self._gate.needs_body(view):
                streamed = plan.stream_guard(
                    view,
                    incoming.content_length,
                    self._inspect_limit,
                    self._gate.tokens,
                    dry_run=self._dry_run,
                )
                if isinstance(streamed, Decision):
                    return self._expecting(incoming, streamed)
                guard = streamed
                if guard is None:
                    if incoming.expect_continue:
                        conn.write(_CONTINUE)  # the body decides: it may come
                        incoming.expect_continue = False
                    body = await self._read_body(incoming)
                    if isinstance(body, Decision):
                        return body
                    view = RequestView(view.method, view.target, view.headers, body, view.remote)
            elif self._gate.needs_body(view):
                view = RequestView(view.method, view.target, view.headers, b"", view.remote)
            started = perf_counter()
            decision = self._now(view) if self._now is not None else None
            if decision is None:
                decision = await self._gate.evaluate(view)
            exchange.decision_seconds = perf_counter() - started
            judged = plan.verdict(view, exchange, decision, dry_run=self._dry_run)
            if isinstance(judged, Decision):
                return self._expecting(incoming, judged)
            return Permit(judged.view, guard) if guard is not None else judged
        except ClientGone:
            raise
        except Exception:
            _log.exception("decision_failed", request_id=exchange.transfer.request_id)
            return plan.INTERNAL_ERROR

    @staticmethod
    def _expecting(incoming: Incoming, refused: Decision) -> Decision:
        # A refused `Expect: 100-continue` client never gets its 100: answer and close, so it
        # never sends the (possibly GB-sized) body (reference aiohttp-proxying.md §1.16).
        return plan.closing(refused) if incoming.expect_continue else refused

    async def _read_body(self, incoming: Incoming) -> bytes | Decision:
        """The whole body, if it fits the inspection limit; never more (`Proxy._read_body`)."""
        limit = self._inspect_limit
        if incoming.content_length is not None and incoming.content_length > limit:
            return plan.NOT_INSPECTABLE
        buffer = bytearray()
        try:
            while chunk := await incoming.body.read(self._body_timeout):
                buffer += chunk
                if len(buffer) > limit:
                    return plan.NOT_INSPECTABLE
        except PipeTimeout:
            return plan.BODY_TIMEOUT
        except ClientGone:
            raise
        except ParseFailed as exc:  # its framing broke: nothing more can be read on it
            return plan.unreadable_body(str(exc), close=True)
        return bytes(buffer)

    def _refuse(
        self, conn: ClientConnection, incoming: Incoming, exchange: Exchange, decision: Decision
    ) -> bool:
        exchange.reason = decision.reason
        exchange.status = decision.status or 403  # a refusal always has one
        close = decision.close or not incoming.keep_alive or conn.closing
        data = refusal_bytes(
            decision, exchange.transfer.request_id, head=incoming.method == "HEAD", close=close
        )
        conn.write(data)
        return not close

    # ---- forwarding

    async def _forward(
        self, conn: ClientConnection, incoming: Incoming, exchange: Exchange, permit: Permit
    ) -> bool:
        transfer = exchange.transfer
        head, body = self._request_head(incoming, permit.view, transfer)
        started = perf_counter()
        leg = _Leg()
        try:
            answer = await self._send(incoming, permit, head, body, transfer, leg)
            transfer.upstream_seconds = perf_counter() - started
            exchange.status = answer.status
            assert leg.upstream is not None
            keep = await self._relay(conn, incoming, leg.upstream, answer, transfer)
            if leg.upload is not None and not leg.upload.done():
                leg.upload.cancel()  # the response is complete: the upstream wants no more
                leg.upstream.spoil()
            self._pool.release(leg.upstream)
            leg.upstream = None
            return keep
        except (UpstreamError, BodyTooLarge, ClientBodyError, bodyguard.Refused) as exc:
            return self._forward_failed(conn, incoming, exchange, exc)
        finally:
            if permit.guard is not None and permit.guard.violation is not None:
                # Dry-run, or refused after the response started: the denial is logged.
                plan.deny_streamed(exchange, permit.guard.violation, would=self._dry_run)
            if leg.upload is not None and not leg.upload.done():
                leg.upload.cancel()
            if leg.upstream is not None:
                leg.upstream.close()
                self._pool.release(leg.upstream)

    def _request_head(
        self, incoming: Incoming, view: RequestView, transfer: Transfer
    ) -> tuple[bytes, bytes | None]:
        """The upstream request head (one buffer) and the buffered body to send with it."""
        out = self._headers.outbound_from(view.headers, view.remote, "http", transfer.request_id)
        body = view.body
        if body is not None and incoming.has_body:
            # Authorized from this buffer: forward exactly these bytes, framed by their length.
            out.popall("Content-Length", None)
            out["Content-Length"] = str(len(body))
            transfer.bytes_in = len(body)
        elif body is None and incoming.chunked:
            out["Transfer-Encoding"] = "chunked"
        target = view.target
        if target.endswith("?") and target.count("?") == 1:
            # An empty query is dropped, as the aiohttp engine's client (yarl) does: the one
            # target change; no server tells the two apart.
            target = target[:-1]
        lines = [f"{view.method} {target} HTTP/1.1\r\n"]
        if "Host" not in out:
            lines.append(f"Host: {self._upstream_host}\r\n")
        lines += [f"{name}: {value}\r\n" for name, value in out.items()]
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        return head, (body if body else None)

    async def _send(
        self,
        incoming: Incoming,
        permit: Permit,
        head: bytes,
        body: bytes | None,
        transfer: Transfer,
        leg: _Leg,
    ) -> ResponseHead:
        """Connect (or reuse), send the request, and wait for the response head. A streamed
        body goes up in its own Task (`leg.upload`), so that an upstream that answers before
        the body is complete is relayed while the rest is still sent and checked."""
        streamed = permit.view.body is None and incoming.has_body
        retry = incoming.method in _SAFE and not incoming.has_body
        for attempt in range(_RETRIES):
            try:
                upstream = leg.upstream = await self._pool.acquire()
            except UpstreamFailure as exc:
                raise _gateway_error(exc) from exc
            upstream.begin(head_request=incoming.method == "HEAD")
            try:
                upstream.write(head + body if body is not None else head)
                if streamed:
                    leg.upload = asyncio.get_running_loop().create_task(
                        self._upload(incoming, permit.guard, upstream, transfer)
                    )
                    leg.upload.add_done_callback(_retrieve)
                else:
                    upstream.expect_response(self._read_timeout)
                return await upstream.response()
            except UpstreamFailure as exc:
                if transfer.body_failure is not None:  # our own body stream stopped it
                    raise transfer.body_failure from exc
                stale = upstream.reused and not upstream.received_any
                upstream.close()
                self._pool.release(upstream)
                leg.upstream = None
                if not (retry and stale and isinstance(exc, Dropped)) or attempt == _RETRIES - 1:
                    raise _gateway_error(exc) from exc
        raise AssertionError("unreachable")

    async def _upload(
        self,
        incoming: Incoming,
        guard: bodyguard.Guard | None,
        upstream: UpstreamConnection,
        transfer: Transfer,
    ) -> None:
        """Stream the client's body upstream; the guard sees each chunk before it goes, and
        the end before the last one does. A failure of ours closes the upstream connection
        (it never receives the request whole) and is in `transfer.body_failure`; any other
        fault closes it too (fail closed: the response side answers 502, never waits on an
        upstream that will not get the rest)."""
        try:
            await self._upload_body(incoming, guard, upstream, transfer)
        except UpstreamFailure:
            return  # the upstream closed or answered: the response side tells what happened
        except Exception:
            upstream.close()
            raise
        upstream.expect_response(self._read_timeout)

    async def _upload_body(
        self,
        incoming: Incoming,
        guard: bodyguard.Guard | None,
        upstream: UpstreamConnection,
        transfer: Transfer,
    ) -> None:
        pipe = incoming.body
        chunked = incoming.chunked
        length = incoming.content_length
        while True:
            try:
                chunk = await pipe.read(self._body_timeout)
            except PipeTimeout as exc:  # a stalled upload must not hold two connections open
                transfer.body_failure = ClientBodyError("client_body_timeout", timed_out=True)
                raise transfer.body_failure from exc
            except ParseFailed as exc:  # the client left or broke its chunked framing
                transfer.body_failure = ClientBodyError(str(exc))
                raise transfer.body_failure from exc
            if not chunk:
                if guard is not None:
                    inspect_chunk(guard, None, transfer)
                if chunked:
                    upstream.write(b"0\r\n\r\n")
                return
            transfer.bytes_in += len(chunk)
            if self._max_body and transfer.bytes_in > self._max_body:
                transfer.body_failure = BodyTooLarge(f"request body over {self._max_body} bytes")
                raise transfer.body_failure
            if guard is not None:
                last = length is not None and transfer.bytes_in >= length
                inspect_chunk(guard, chunk, transfer, last=last)
            upstream.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await upstream.drain()

    async def _relay(
        self,
        conn: ClientConnection,
        incoming: Incoming,
        upstream: UpstreamConnection,
        answer: ResponseHead,
        transfer: Transfer,
    ) -> bool:
        """Send the response; returns whether the client connection stays open."""
        status = answer.status
        no_body = incoming.method == "HEAD" or status in (204, 304)
        headers = self._headers.response(CIMultiDict(answer.headers))
        close = not incoming.keep_alive or conn.closing
        framed = no_body or answer.content_length is not None
        rechunk = not framed and incoming.version == "1.1"
        if not framed and not rechunk:
            close = True  # an HTTP/1.0 client: the body ends with the connection
        lines = [f"HTTP/1.1 {status} {answer.reason}\r\n"]
        lines += [
            f"{name}: {value}\r\n"
            for name, value in headers.items()
            if name.lower() != "x-request-id"
        ]
        # The gateway's request id, as on its own answers (`ClientForwarder._relay`).
        lines.append(f"{REQUEST_ID_HEADER}: {transfer.request_id}\r\n")
        if rechunk:
            lines.append("Transfer-Encoding: chunked\r\n")
        if close:
            lines.append("Connection: close\r\n")
        elif incoming.version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1", "replace")
        if no_body:
            conn.write(head)
            transfer.status = status
            return not close
        length = answer.content_length
        if length is not None and length <= SMALL_BODY:
            parts: list[bytes] = []
            try:
                while chunk := await self._upstream_chunk(upstream, transfer):
                    parts.append(chunk)
            except _Cut:
                conn.write(head + b"".join(parts))
                transfer.status = status
                self._abort_cut(conn, transfer)
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            transfer.bytes_out = len(body)
            conn.write(head + body)
            transfer.status = status
            return not close
        conn.write(head)
        transfer.status = status
        await self._copy(upstream, conn, transfer, rechunk)
        return not close

    async def _copy(
        self,
        upstream: UpstreamConnection,
        conn: ClientConnection,
        transfer: Transfer,
        rechunk: bool,
    ) -> None:
        try:
            while chunk := await self._upstream_chunk(upstream, transfer):
                transfer.bytes_out += len(chunk)
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if rechunk else chunk)
                try:
                    await conn.drain()  # waits for the client to read: memory stays bounded
                except ConnectionError:
                    transfer.error = "client_disconnected"
                    raise _Stop(keep=False) from None
        except _Cut:
            self._abort_cut(conn, transfer)
        if rechunk:
            conn.write(b"0\r\n\r\n")  # trailers are not relayed (nor are the request's)

    async def _upstream_chunk(self, upstream: UpstreamConnection, transfer: Transfer) -> bytes:
        try:
            return await upstream.body.read(self._read_timeout)
        except (UpstreamFailure, PipeTimeout) as exc:
            if transfer.body_failure is not None:  # our side stopped the upload
                transfer.error = f"request_body_failed: {transfer.body_failure}"
            else:
                transfer.error = f"upstream_body_failed: {type(exc).__name__}"
                metrics.UPSTREAM_ERRORS.labels("upstream_body_failed").inc()
            raise _Cut() from exc

    @staticmethod
    def _abort_cut(conn: ClientConnection, transfer: Transfer) -> None:
        # SECURITY: never end a cut body as if it were complete (reference
        # aiohttp-proxying.md §1.15; Home Assistant ingress served silently truncated files).
        conn.abort()
        raise _Stop(keep=False)

    def _forward_failed(
        self, conn: ClientConnection, incoming: Incoming, exchange: Exchange, exc: Exception
    ) -> bool:
        """A failure before the response started (`Proxy._forward_failed`)."""
        exchange.transfer.error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ClientBodyError):
            # The client dropped, broke or stalled its own upload: nobody is left to answer.
            exchange.status = 408 if exc.timed_out else 499
            conn.abort()
            return False
        if isinstance(exc, bodyguard.Refused):
            exchange.transfer.error = None  # a denial, not a failure
            plan.deny_streamed(exchange, exc.violation, would=False)
            return self._refuse(conn, incoming, exchange, exc.violation)
        if isinstance(exc, BodyTooLarge):
            return self._refuse(conn, incoming, exchange, plan.TOO_LARGE)
        # 502, or 504 for a timeout
        return self._refuse(conn, incoming, exchange, plan.upstream_failed(exc))
