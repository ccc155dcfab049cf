"""`DecisionService`: one check request -> the original request's `RequestView` -> a verdict.

Where the original request is read from, in this order (issue 12 point 2):
  - `nginx`: `X-Original-Method` + `X-Original-URI` (the recipe sets them from
    `$request_method` and the raw `$request_uri`);
  - `forwarded`: `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik ForwardAuth, Caddy
    forward_auth);
  - `envoy`: the check request's own method and target, after `decision_path_prefix` (Envoy
    HTTP `ext_authz` sends the original method and path, with `path_prefix` in front).
SECURITY: the choice must not be the client's. A client can send any of these headers to the
outer proxy; each recipe overwrites (nginx: `proxy_set_header`; Traefik and Caddy set theirs)
or never passes the others, and a check request carrying the headers of two protocols (or one
of them twice, or Envoy's prefix plus either) is refused (403 `bad_check_request`), so a
client-added pair can never replace the proxy's. Only peers in `decision_trusted_peers` are
believed at all (403 `untrusted_peer`).

The view's headers are the check request's minus its hop-by-hop and forwarding headers, the
protocol headers and its own framing: what the asking proxy forwards upstream (the recipes pass
every request header to the check). A header that makes GitLab run another method or path than
the one judged (Rack::MethodOverride's `X-HTTP-Method-Override`, URL-rewrite headers) cannot be
dropped here, as the proxy port drops it: it is refused (403 `reinterpreting_header`).

Bodies (point 4): only Envoy's `with_request_body` brings one (marked by
`x-envoy-auth-partial-body: false`); otherwise a request whose body the carriers would read
(`Gate.needs_body`) is refused with 403 `body_not_visible`, and the recipes send such requests
to the proxy listener instead.

Answers (point 3): allow -> 200, empty, `X-Gateway-Reason`, `X-Gateway-Request-Id` and, for a
judged job token, `X-Gateway-Job-Id` and `X-Gateway-Source-Project`; deny -> 401/403 with
GitLab's JSON body and the message in `X-Gateway-Message` (escaped as a JSON string's
contents, so a proxy can rebuild the body from it). To nginx the body is not sent: nginx never
passes an auth subrequest's body on, and one it does not read makes it close the keep-alive
connection (measured: one new connection per denial); its recipe builds the JSON from the header. nginx turns any other status of an
auth subrequest into 500, so a refusal that is another 4xx on the proxy port is a 403 here,
keeping its own reason code; a 5xx stays (nginx's 500 then fails closed). Dry-run allows what
enforce would deny (`X-Gateway-Would-Deny: true`, `would_deny` in the log line) but still
refuses what the listener cannot judge.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Awaitable
from time import perf_counter
from typing import Protocol

import orjson
import structlog
from multidict import CIMultiDict

from gateway.core.decision import Decision, Reason, gitlab_message, refuse
from gateway.core.request import RequestView
from gateway.ops import metrics
from gateway.ops.exchange import Exchange, Recorder, RequestIds, client_address
from gateway.proxy.forward import Transfer
from gateway.proxy.headers import FORWARDING, HOP_BY_HOP, REINTERPRETING, fold
from gateway.settings import Mode, Settings
from gateway.wire import Request, Response

__all__ = ["NGINX_HEADERS", "Decider", "DecisionService"]

_log = structlog.get_logger("gateway.authz")

NGINX_HEADERS = ("X-Original-Method", "X-Original-URI")
FORWARDED_HEADERS = ("X-Forwarded-Method", "X-Forwarded-Uri")
# What a check request's header is to the view (`DecisionService._kind`).
_KEEP, _DROP, _REWRITE, _ENVOY_BODY, _FORWARDED_FOR, _NGINX_METHOD = 0, 1, 2, 3, 4, 5
_PROTOCOL_KINDS = {
    name.lower(): _NGINX_METHOD + index
    for index, name in enumerate((*NGINX_HEADERS, *FORWARDED_HEADERS))
}
_PROTOCOL_KINDS["x-envoy-auth-partial-body"] = _ENVOY_BODY
_PROTOCOL_KINDS["x-forwarded-for"] = _FORWARDED_FOR  # dropped from the view, read for the log
# Dropped from the view: the check request's own framing and hop-by-hop headers, the
# forwarding headers the asking proxy sets, the protocol headers spelled otherwise.
_DROP_NAMES = (
    HOP_BY_HOP
    | FORWARDING
    | frozenset(fold(n) for n in (*NGINX_HEADERS, *FORWARDED_HEADERS))
    | {"content-length", "expect", "x-envoy-expected-rq-timeout-ms"}
)
_REWRITES = REINTERPRETING - {"x-original-uri"}
_MEMO = 512
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_PEER_MEMO = 256
_JSON = ("Content-Type", "application/json")
_NO_CACHE = ("Cache-Control", "no-cache")


class Decider(Protocol):
    """The part of the Gate contract (gateway/core/gate.py) the listener calls."""

    def needs_body(self, view: RequestView) -> bool: ...
    def evaluate_now(self, view: RequestView) -> Decision | None: ...
    async def evaluate(self, view: RequestView) -> Decision: ...


class _Refusal(Exception):
    """The check request cannot be judged: leaves `_view` with the refusal's Decision (a 403,
    whatever the reason's status on the proxy port: see the module docstring)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.decision = refuse(reason, detail, status=403)


_INTERNAL_ERROR = refuse(Reason.INTERNAL_ERROR)  # 500: nginx's 500 then fails closed


class DecisionService:
    """The wire handler of the decision listener (see the module docstring)."""

    def __init__(self, settings: Settings, gate: Decider, recorder: Recorder) -> None:
        self._gate = gate
        self._recorder = recorder
        self._ids = RequestIds()
        self._dry_run = settings.mode is Mode.DRY_RUN
        self._prefix = settings.decision_path_prefix
        self._trusted = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.decision_trusted_peers
        )
        self._peers: dict[str | None, bool] = {}
        self._kinds: dict[str, int] = {}  # header name -> what it is to the view (memo)
        self._checks = {
            name: metrics.DECISION_CHECKS.labels(name)
            for name in ("nginx", "forwarded", "envoy", "none")
        }

    # ---- gateway.wire.Handler

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        started = perf_counter()
        exchange = Exchange(
            transfer=Transfer(request_id=self._ids.new()),
            method=request.method,
            target=request.target,
            remote=request.peer,
            started=started,
        )
        try:
            view = self._view(request, exchange)
            decision = self._gate.evaluate_now(view)
        except _Refusal as refusal:
            return self._finish(exchange, self._refuse(exchange, refusal.decision))
        except Exception:
            _log.exception("decision_failed", request_id=exchange.transfer.request_id)
            return self._finish(exchange, self._refuse(exchange, _INTERNAL_ERROR))
        if decision is None:
            return self._later(view, exchange)  # a store lookup: the wire runs it in a Task
        exchange.decision_seconds = perf_counter() - started
        return self._finish(exchange, self._answer(exchange, decision))

    def error(self, status: int, detail: str) -> Response:
        """The machinery's own refusals (malformed, limits, timeouts, overload)."""
        reason = Reason.OVERLOADED if status == 503 else Reason.BAD_CHECK_REQUEST
        if status == 408:
            reason = Reason.CLIENT_TIMEOUT
        elif status >= 500 and status != 503:
            reason = Reason.INTERNAL_ERROR
        message = gitlab_message(status, detail if 400 <= status < 500 else None)
        return _json(status, reason, message, None, True)

    # ---- the view

    def _view(self, request: Request, exchange: Exchange) -> RequestView:
        """The original request, in one pass over the check request's headers."""
        if not self._trusts(request.peer):
            self._checks["none"].inc()
            raise _Refusal(Reason.UNTRUSTED_PEER, "the decision listener does not trust this peer")
        kinds = self._kinds
        kept: list[tuple[str, str]] = []
        counts = [0, 0, 0, 0]  # X-Original-Method/-URI, X-Forwarded-Method/-Uri
        values = ["", "", "", ""]
        envoy_body: str | None = None
        forwarded_for: list[str] = []
        for name, value in request.fields:
            kind = kinds.get(name)
            if kind is None:
                kind = self._kind(name)
            if kind == _KEEP:
                kept.append((name, value))
            elif kind >= _NGINX_METHOD:
                counts[kind - _NGINX_METHOD] += 1
                values[kind - _NGINX_METHOD] = value
            elif kind == _ENVOY_BODY:
                envoy_body = value
            elif kind == _FORWARDED_FOR:
                forwarded_for.append(value)
            elif kind == _REWRITE:
                raise _Refusal(
                    Reason.REINTERPRETING_HEADER,
                    "a header that makes GitLab run another method or path than the one "
                    "judged cannot be passed through the decision endpoint",
                )
        protocol, method, target = self._original(request, counts, values)
        if forwarded_for:  # the log line's `remote` is the client, as on the proxy port
            exchange.remote = client_address(request.peer, forwarded_for, self._trusts)
            if exchange.remote != request.peer:
                exchange.peer = request.peer
        exchange.protocol = protocol
        exchange.method, exchange.target = method, target
        self._checks[protocol].inc()
        if not _METHOD.fullmatch(method):
            raise _Refusal(Reason.BAD_CHECK_REQUEST, "the original method is not a token")
        if method == "CONNECT":
            raise _Refusal(Reason.BAD_TARGET, "CONNECT is not supported")
        body: bytes | None = None
        if protocol == "envoy" and envoy_body == "false":
            # Envoy's with_request_body: the whole body came along (partial ones are not used).
            body = request.body
            kept.append(("Content-Length", str(len(body))))
        view = RequestView(method, target, CIMultiDict(kept), body, request.peer)
        if body is None and self._gate.needs_body(view):
            raise _Refusal(
                Reason.BODY_NOT_VISIBLE,
                "this request's body may carry a CI/CD job token and the decision endpoint "
                "cannot see it; send it to the gateway's proxy listener",
            )
        return view

    def _original(
        self, request: Request, counts: list[int], values: list[str]
    ) -> tuple[str, str, str]:
        """(protocol, method, target) of the original request; see the module docstring."""
        has_nginx, has_forwarded = bool(counts[0] or counts[1]), bool(counts[2] or counts[3])
        target = request.target
        prefix = self._prefix
        prefixed = bool(prefix) and (target == prefix or target.startswith(prefix + "/"))
        if has_nginx + has_forwarded + prefixed > 1:
            raise _Refusal(
                Reason.BAD_CHECK_REQUEST,
                "the check request names its original request in more than one way",
            )
        for name, first, present in (("nginx", 0, has_nginx), ("forwarded", 2, has_forwarded)):
            if present:
                if counts[first] != 1 or counts[first + 1] != 1:
                    raise _Refusal(
                        Reason.BAD_CHECK_REQUEST,
                        "the original method and target must each be given exactly once",
                    )
                return name, values[first].strip(), values[first + 1].strip()
        if prefix:
            if not prefixed:
                raise _Refusal(
                    Reason.BAD_CHECK_REQUEST, "the check request names no original request"
                )
            target = target[len(prefix) :]
        return "envoy", request.method, target

    def _kind(self, name: str) -> int:
        """What a header name is to the view (memoized per exact spelling, bounded)."""
        lowered = name.lower()
        kind = _PROTOCOL_KINDS.get(lowered)
        if kind is None:
            folded = fold(name)
            # X-Original-URI spelled otherwise (X_Original_URI) is a rewrite header, not ours.
            if folded in _REWRITES or folded == "x-original-uri":
                kind = _REWRITE
            else:
                kind = _DROP if folded in _DROP_NAMES else _KEEP
        if len(self._kinds) < _MEMO and len(name) <= 64:
            self._kinds[name] = kind
        return kind

    def _trusts(self, peer: str | None) -> bool:
        trusted = self._peers.get(peer)
        if trusted is None:
            try:
                address = ipaddress.ip_address(peer or "")
            except ValueError:
                trusted = False
            else:
                trusted = any(address in network for network in self._trusted)
            if len(self._peers) < _PEER_MEMO:
                self._peers[peer] = trusted
        return trusted

    # ---- answers

    async def _later(self, view: RequestView, exchange: Exchange) -> Response:
        try:
            decision = await self._gate.evaluate(view)
        except asyncio.CancelledError:  # the asking proxy went away: still one log line
            exchange.status, exchange.transfer.error = 499, "client_disconnected"
            self._recorder.finish(exchange)
            raise
        except Exception:
            _log.exception("decision_failed", request_id=exchange.transfer.request_id)
            return self._finish(exchange, self._refuse(exchange, _INTERNAL_ERROR))
        exchange.decision_seconds = perf_counter() - exchange.started
        return self._finish(exchange, self._answer(exchange, decision))

    def _answer(self, exchange: Exchange, decision: Decision) -> Response:
        exchange.decision = decision
        request_id = exchange.transfer.request_id
        if decision.allowed or self._dry_run:
            headers = [("X-Gateway-Reason", decision.reason.value)]
            headers.append(("X-Gateway-Request-Id", request_id))
            audit = decision.audit
            if audit.job_id is not None:
                headers.append(("X-Gateway-Job-Id", str(audit.job_id)))
                if audit.source_project:
                    headers.append(("X-Gateway-Source-Project", _printable(audit.source_project)))
            if not decision.allowed:
                exchange.would_deny = True
                headers.append(("X-Gateway-Would-Deny", "true"))
            return Response(200, headers)
        original = decision.status or 403
        status = _status(original)
        message = decision.message or gitlab_message(status)
        if status != original:  # "400 Bad request - <detail>" -> "403 Forbidden - <detail>"
            message = gitlab_message(status, message.partition(" - ")[2] or None)
        return _json(status, decision.reason, message, request_id, exchange.protocol != "nginx")

    def _refuse(self, exchange: Exchange, decision: Decision) -> Response:
        """A check request refused before the gate: logged with its reason, not as a decision."""
        exchange.reason = decision.reason
        status = _status(decision.status or 403)
        request_id = exchange.transfer.request_id
        nginx = exchange.protocol == "nginx"
        return _json(status, decision.reason, decision.message, request_id, not nginx)

    def _finish(self, exchange: Exchange, response: Response) -> Response:
        exchange.status = response.status
        self._recorder.finish(exchange)
        return response


def _status(status: int) -> int:
    """401 and 403 as they are; any other 4xx becomes 403 (nginx makes it a 500 otherwise)."""
    return 403 if 400 <= status < 500 and status != 401 else status


def _json(
    status: int, reason: Reason, message: str, request_id: str | None, body: bool
) -> Response:
    """A denial. Without `body` (nginx: it never passes an auth subrequest's body on, and a
    body it does not read costs it the keep-alive connection) the message is in the header
    only, and the recipe rebuilds GitLab's JSON from it."""
    headers = [_JSON, _NO_CACHE] if body else [_NO_CACHE]
    headers.append(("X-Gateway-Reason", reason.value))
    if request_id is not None:
        headers.append(("X-Gateway-Request-Id", request_id))
    # The message as a JSON string's contents (ASCII, quotes and controls escaped): a header
    # value that cannot split the answer, and that nginx can splice into `{"message":"..."}`.
    headers.append(("X-Gateway-Message", json.dumps(message)[1:-1]))
    if not body:
        return Response(status, headers)
    return Response(status, headers, orjson.dumps({"message": message}))


def _printable(text: str) -> str:
    """A header value: printable ASCII only (others become `?`), so no header can be split."""
    return text if text.isascii() and text.isprintable() else _UNPRINTABLE.sub("?", text)
