"""The request pipeline's checks as plain functions over a parsed head (no aiohttp types).

These are the rules of `gateway.proxy.handler.Proxy` (`_precheck`, `_framing_problem`,
`_stream_guard`, `_verdict`, `_deny`) restated over plain values, so that the lean engine
applies exactly the same ones; the aiohttp handler can move onto them later (one copy).
"""

from __future__ import annotations

from dataclasses import replace

from gateway.core import multipart, tokens
from gateway.core.decision import Audit, Decision, Reason
from gateway.core.request import Headers, RequestView
from gateway.ops.exchange import Exchange
from gateway.proxy import bodyguard
from gateway.proxy.handler import Permit, Refuse, Verdict
from gateway.proxy.headers import is_upgrade
from gateway.proxy.responses import gitlab_message
from gateway.routing import table as routes

__all__ = ["deny_streamed", "framing_problem", "precheck", "stream_guard", "verdict"]


def precheck(
    method: str,
    target: str,
    version: str,
    headers: Headers,
    content_length: int | None,
    max_body_size: int,
) -> Refuse | None:
    """The checks that need no I/O and apply to every request (`Proxy._precheck`)."""
    # SECURITY: dot segments, `#`, backslashes and absolute-form targets are refused before
    # anything else: the upstream could read them differently from the route table, and an
    # absolute-form target names another host (reference aiohttp-proxying.md §1.3-1.4).
    problem = routes.check_target(target)
    if problem is not None:
        return Refuse(Reason.BAD_TARGET, 400, gitlab_message(400, problem.detail))
    if method == "CONNECT":
        detail = "CONNECT is not supported"
        return Refuse(Reason.BAD_TARGET, 400, gitlab_message(400, detail), close=True)
    framing = framing_problem(version, headers)
    if framing is not None:
        return framing
    if is_upgrade(headers):
        # /api/v4 has no websocket endpoints (reference aiohttp-proxying.md §1.18).
        detail = "protocol upgrades are not supported"
        return Refuse(Reason.UPGRADE_REFUSED, 400, gitlab_message(400, detail), close=True)
    if max_body_size and content_length is not None and content_length > max_body_size:
        return Refuse(Reason.BODY_TOO_LARGE, 413, gitlab_message(413))
    return None


def framing_problem(version: str, headers: Headers) -> Refuse | None:
    """Framings llhttp accepts that the gateway cannot forward faithfully (RFC 9112 §6.1).

    SECURITY: Transfer-Encoding in HTTP/1.0 "MUST be treated as faulty framing"; a coding other
    than `chunked` would be stripped by the parser and reach the upstream as a plain body (501).
    """
    if version not in ("1.0", "1.1"):
        return Refuse(Reason.BAD_FRAMING, 400, gitlab_message(400, f"HTTP/{version}"), close=True)
    codings = headers.getall("Transfer-Encoding", ())
    if not codings:
        return None
    if version == "1.0":
        detail = "Transfer-Encoding in an HTTP/1.0 request"
        return Refuse(Reason.BAD_FRAMING, 400, gitlab_message(400, detail), close=True)
    found = [c.strip().lower() for value in codings for c in value.split(",")]
    if found[-1] != "chunked":
        # RFC 9112 §6.3: chunked not final in a request: the length cannot be determined
        # reliably, 400 and close (aiohttp's parser refuses these itself; httptools' llhttp
        # build lets `xchunked` through to us).
        detail = "the final transfer coding is not chunked"
        return Refuse(Reason.BAD_FRAMING, 400, gitlab_message(400, detail), close=True)
    if found != ["chunked"]:
        detail = "only the chunked transfer coding is supported"
        return Refuse(Reason.BAD_FRAMING, 501, gitlab_message(501, detail), close=True)
    return None


def stream_guard(
    view: RequestView,
    content_length: int | None,
    inspect_limit: int,
    reader: tokens.Reader,
    *,
    dry_run: bool,
) -> bodyguard.Guard | Refuse | None:
    """A guard for a multipart/form-data body too large to buffer (or chunked), else None
    (`Proxy._stream_guard`)."""
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
        return Refuse(Reason.BAD_BODY, 400, gitlab_message(400, str(exc)))
    return bodyguard.Guard(view, boundary, reader, enforce=not dry_run)


def verdict(view: RequestView, exchange: Exchange, decision: Decision, *, dry_run: bool) -> Verdict:
    """The gate's decision as what the pipeline does next (`Proxy._verdict`)."""
    exchange.decision = decision
    if decision.allowed:
        return Permit(view)
    if dry_run:
        exchange.would_deny = True
        return Permit(view)
    status = decision.status or 403
    return Refuse(decision.reason, status, decision.message or gitlab_message(status))


def closing(refused: Refuse) -> Refuse:
    return refused if refused.close else replace(refused, close=True)


def deny_streamed(exchange: Exchange, violation: bodyguard.Violation, *, would: bool) -> None:
    """Record a refused streamed body as the request's decision (audit kept for the log)."""
    audit = exchange.decision.audit if exchange.decision is not None else Audit()
    exchange.decision = Decision(False, violation.reason, violation.message, audit)
    exchange.would_deny = exchange.would_deny or would
