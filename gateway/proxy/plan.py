"""The request pipeline's checks as plain functions over a parsed head (no aiohttp types).

One copy for both engines (gateway/proxy/handler.py, gateway/proxy/lean/pipeline.py). Each check
returns a refusal `Decision` (gateway/core/decision.py), or None to go on; `verdict` turns the
gate's Decision into what the pipeline does next: a `Permit` to forward, or the Decision to
answer. The Decisions both engines make for the same failure (an uninspectable body, a stalled
upload, a fault of ours) are the constants below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from gateway.core import multipart, tokens
from gateway.core.decision import Audit, Decision, Reason, bad_target, refuse
from gateway.core.request import Headers, RequestView
from gateway.errors import UpstreamTimeout, UpstreamUnreachable
from gateway.ops import metrics
from gateway.ops.exchange import Exchange, RequestIds, accepted_request_id, client_address
from gateway.proxy import bodyguard
from gateway.proxy.forward import Transfer
from gateway.proxy.headers import is_upgrade
from gateway.routing import targets

__all__ = [
    "BODY_TIMEOUT",
    "DRAIN_CUT",
    "INTERNAL_ERROR",
    "NOT_INSPECTABLE",
    "TOO_LARGE",
    "Permit",
    "Verdict",
    "begin",
    "closing",
    "deny_streamed",
    "framing_problem",
    "precheck",
    "stream_guard",
    "unreadable_body",
    "upstream_failed",
    "verdict",
]

TOO_LARGE = refuse(Reason.BODY_TOO_LARGE)  # over `max_body_size`: 413
NOT_INSPECTABLE = refuse(Reason.BODY_NOT_INSPECTABLE)  # over `body_inspect_limit`: 413
BODY_TIMEOUT = refuse(Reason.CLIENT_TIMEOUT, close=True)  # 408: the upload stalled
INTERNAL_ERROR = refuse(Reason.INTERNAL_ERROR)  # 500: a fault of ours, never a forward
DRAIN_CUT = refuse(Reason.DRAIN_CUT, close=True)  # 503: SIGTERM's grace period ended
# An upstream failure before the response started: 502, or 504 for a timeout (`decision.STATUS`).
_UPSTREAM_UNREACHABLE = refuse(Reason.UPSTREAM_UNREACHABLE)
_UPSTREAM_TIMEOUT = refuse(Reason.UPSTREAM_TIMEOUT)
_UPSTREAM_BAD_RESPONSE = refuse(Reason.UPSTREAM_BAD_RESPONSE)


@dataclass(frozen=True, slots=True)
class Permit:
    """Forward this view (its body, when set, is the buffer that was authorized); `guard`
    checks a streamed multipart body on its way."""

    view: RequestView
    guard: bodyguard.Guard | None = None


Verdict = Decision | Permit  # a Decision here is always a refusal: answer it


def begin(
    ids: RequestIds,
    trusts: Callable[[str | None], bool],
    peer: str | None,
    headers: Headers,
    method: str,
    target: str,
) -> Exchange:
    """The request's record. Behind a trusted proxy (`trusts`, `HeaderPolicy.trusts`), the log
    shows the real client (the proxy in `peer`), and the proxy's well-formed request id is kept,
    so one id follows the request through every hop."""
    if trusts(peer):
        remote = client_address(peer, headers.getall("X-Forwarded-For", ()), trusts)
        kept = accepted_request_id(headers.getall("X-Request-Id", ()))
        return Exchange(
            transfer=Transfer(request_id=kept or ids.new()),
            method=method,
            target=target,
            remote=remote,
            started=perf_counter(),
            peer=peer if remote != peer else None,
        )
    return Exchange(
        transfer=Transfer(request_id=ids.new()),
        method=method,
        target=target,
        remote=peer,
        started=perf_counter(),
    )


def precheck(
    method: str,
    target: str,
    version: str,
    headers: Headers,
    content_length: int | None,
    max_body_size: int,
) -> Decision | None:
    """The checks that need no I/O and apply to every request: a refusal, or None."""
    # SECURITY: dot segments, `#`, backslashes and absolute-form targets are refused before
    # anything else: the upstream could read them differently from the route table, and an
    # absolute-form target names another host (reference aiohttp-proxying.md §1.3-1.4).
    problem = targets.check_target(target)
    if problem is not None:
        return bad_target(problem)
    if method == "CONNECT":
        # A tunnel request: the gateway is no forward proxy and must never ask its upstream
        # for a tunnel (aiohttp's client would send it in authority-form).
        return refuse(Reason.BAD_TARGET, "CONNECT is not supported", close=True)
    framing = framing_problem(version, headers)
    if framing is not None:
        return framing
    if is_upgrade(headers):
        # /api/v4 has no websocket endpoints; passing an upgrade through would not be
        # transparent anyway (reference aiohttp-proxying.md §1.18).
        return refuse(Reason.UPGRADE_REFUSED, "protocol upgrades are not supported", close=True)
    if max_body_size and content_length is not None and content_length > max_body_size:
        return TOO_LARGE
    return None


def framing_problem(version: str, headers: Headers) -> Decision | None:
    """Framings llhttp accepts that the gateway cannot forward faithfully (RFC 9112 §6.1).

    SECURITY: Transfer-Encoding in HTTP/1.0 "MUST be treated as faulty framing"; a coding other
    than `chunked` would be stripped by the parser and reach the upstream as a plain body (501,
    as RFC 9112 §6.1 asks for a coding the server does not understand); HTTP/0.9 has no headers.
    """
    if version not in ("1.0", "1.1"):
        return refuse(Reason.BAD_FRAMING, f"HTTP/{version}", close=True)
    codings = headers.getall("Transfer-Encoding", ())
    if not codings:
        return None
    if version == "1.0":
        return refuse(Reason.BAD_FRAMING, "Transfer-Encoding in an HTTP/1.0 request", close=True)
    found = [c.strip().lower() for value in codings for c in value.split(",")]
    if found[-1] != "chunked":
        # RFC 9112 §6.3: chunked not final in a request: the length cannot be determined
        # reliably, 400 and close (aiohttp's parser refuses these itself; httptools' llhttp
        # build lets `xchunked` through to us).
        detail = "the final transfer coding is not chunked"
        return refuse(Reason.BAD_FRAMING, detail, close=True)
    if found != ["chunked"]:
        detail = "only the chunked transfer coding is supported"
        return refuse(Reason.BAD_FRAMING, detail, status=501, close=True)
    return None


def stream_guard(
    view: RequestView,
    content_length: int | None,
    inspect_limit: int,
    reader: tokens.Reader,
    *,
    dry_run: bool,
) -> bodyguard.Guard | Decision | None:
    """A guard for a multipart/form-data body too large to buffer (or chunked), else None: the
    gate then decides on the headers and query, the guard checks the body's parts."""
    if content_length is not None and content_length <= inspect_limit:
        return None
    types = view.headers.getall("Content-Type", ())
    if not types or not multipart.is_form_data(types[0]):
        return None
    try:
        if len(types) > 1:  # which one would Rack read? (one CONTENT_TYPE in its env)
            raise multipart.MultipartError("more than one Content-Type")
        boundary = multipart.boundary(types[0])
    except multipart.MultipartError as exc:
        return refuse(Reason.BAD_BODY, str(exc))
    return bodyguard.Guard(view, boundary, reader, enforce=not dry_run)


def unreadable_body(detail: str, *, close: bool = False) -> Decision:
    """The client broke its own upload (framing, disconnect): its fault, a 400 `bad_body`."""
    return refuse(Reason.BAD_BODY, f"the request body could not be read ({detail})", close=close)


def upstream_failed(exc: Exception) -> Decision:
    """The refusal for an upstream failure before the response started (counted in
    `gateway_upstream_errors_total`): unreachable and timed out, else a bad response."""
    if isinstance(exc, UpstreamUnreachable):
        decision = _UPSTREAM_UNREACHABLE
    elif isinstance(exc, UpstreamTimeout):
        decision = _UPSTREAM_TIMEOUT
    else:
        decision = _UPSTREAM_BAD_RESPONSE
    metrics.UPSTREAM_ERRORS.labels(decision.reason.value).inc()
    return decision


def verdict(view: RequestView, exchange: Exchange, decision: Decision, *, dry_run: bool) -> Verdict:
    """The gate's decision as what the pipeline does next: forward (allowed, or denied in
    dry-run: `would_deny`), or answer the Decision itself."""
    exchange.decision = decision
    if decision.allowed:
        return Permit(view)
    if dry_run:
        exchange.would_deny = True
        return Permit(view)
    return decision


def closing(refused: Decision) -> Decision:
    """The refusal, answered and then closed (a refused `Expect: 100-continue` client)."""
    return refused if refused.close else refused._replace(close=True)


def deny_streamed(exchange: Exchange, violation: Decision, *, would: bool) -> None:
    """Record a refused streamed body as the request's decision (audit kept for the log)."""
    audit = exchange.decision.audit if exchange.decision is not None else Audit()
    exchange.decision = violation._replace(audit=audit)
    exchange.would_deny = exchange.would_deny or would
