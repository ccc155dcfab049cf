"""Header rules of the forwarding leg: what is end-to-end, what the gateway adds, whom it trusts.

- Hop-by-hop headers (RFC 9110 §7.6.1 and RFC 2616 §13.5.1) and every header named in
  `Connection` are dropped in both directions (reference aiohttp-proxying.md §1.7).
- `Expect` is answered by the gateway (after the decision) and never forwarded (§1.16).
- Headers that would make the upstream run another method or path (method-override and URL
  rewrite headers) are dropped (see `REINTERPRETING`).
- Names are compared as Rack/CGI read them (`fold`: `X_Forwarded_For` is `X-Forwarded-For`).
- `Content-Length` and `Transfer-Encoding` stay in the view even when `Connection` lists them:
  the body is there either way and the gate must be able to inspect it.
- `X-Request-Id` from the client is dropped: the gateway sends its own id upstream, so an
  upstream log correlation id is never client-chosen (one from a trusted proxy, if well-formed,
  becomes the gateway's own id: `gateway.ops.exchange.accepted_request_id`).
- Forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-Ip`, ...) are kept only from a peer
  in `trusted_proxies`; otherwise they are dropped and rebuilt from the socket (§1.11).
- `Host`: `preserve` forwards the client's Host (GitLab builds URLs from it, as behind nginx);
  `upstream` sends the upstream's own host. `X-Forwarded-Host` always carries the client's Host.

The headers the decision core sees (`inbound`) are exactly the end-to-end headers forwarded,
so what is authorized is what is sent; `outbound` only adds the gateway's forwarding headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from multidict import CIMultiDict

from gateway.core.request import Headers
from gateway.settings import HostPolicy, Settings

__all__ = [
    "HOP_BY_HOP",
    "REINTERPRETING",
    "HeaderPolicy",
    "connection_tokens",
    "is_upgrade",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# SECURITY: Rack derives the scheme and client address from all of these (Rack::Request
# `forwarded_scheme`, `ssl?`, `ip`; Rails `remote_ip`): a client must not choose them.
FORWARDING = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-real-ip",
        "front-end-https",
    }
)
# SECURITY: headers that make an upstream run another method or route another path than the
# one authorized: Rack::MethodOverride (in Rails' default stack, so GitLab's) turns a POST into
# the method `X-HTTP-Method-Override` names; IIS, Symfony (CVE-2018-14773) and nginx
# `auth_request` set-ups route on the rewrite headers.
REINTERPRETING = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-uri",
        "x-original-url",
        "x-rewrite-url",
    }
)
_REQUEST_DROP = HOP_BY_HOP | REINTERPRETING | {"expect", "x-request-id"}
_UNTRUSTED_DROP = _REQUEST_DROP | FORWARDING
# The body's framing, kept in the view by its exact name even when `Connection` lists it: the
# gate must see that a body exists (aiohttp reads it whatever `Connection` says) to inspect it.
# Transfer-Encoding is dropped on the way out (the client frames the body again, §1.7).
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_NONE: frozenset[str] = frozenset()
# SECURITY: Rack/CGI fold `-` and `_` (CGI-style servers every byte outside [A-Za-z0-9]) into
# one env key: `X_Forwarded_For` is HTTP_X_FORWARDED_FOR, which is how Puma let clients clobber
# proxy-set headers (CVE-2024-45614). Every rule compares names folded the same way.
_FOLD = str.maketrans(dict.fromkeys("!#$%&'*+.^_`|~", "-"))


def fold(name: str) -> str:
    """A header name as Rack/CGI sees it: lower case, every token punctuation as `-`."""
    return name.lower().translate(_FOLD)


def connection_tokens(headers: Headers) -> frozenset[str]:
    """The lower-cased header names listed in `Connection`: they are hop-by-hop too.

    Exact names, not folded: `Connection: Job_Token` removes `Job_Token`, never `JOB-TOKEN`.
    """
    values = headers.getall("Connection", ())
    if not values:
        return _NONE
    return frozenset(t.strip().lower() for v in values for t in v.split(",")) - {""}


def is_upgrade(headers: Headers) -> bool:
    """A protocol upgrade request (websocket, h2c): any `Upgrade` or `Connection: upgrade`."""
    return "Upgrade" in headers or "upgrade" in connection_tokens(headers)


class _Rule:
    """Which header names a rule drops by name (folded), memoized per exact spelling.

    Clients send the same few names on every request; a dictionary lookup is cheaper than
    lower-casing and folding each one. The memo is bounded (`_MEMO_SIZE` names of at most
    `_MEMO_NAME` characters); other names are judged afresh every time, so odd names cannot
    grow memory.
    """

    __slots__ = ("_drop", "_keep", "_memo")

    def __init__(self, drop: frozenset[str], keep: frozenset[str] = _NONE) -> None:
        self._drop = drop
        self._keep = keep
        self._memo: dict[str, bool] = {}

    def drops(self, name: str) -> bool:
        verdict = self._memo.get(name)
        if verdict is None:
            lowered = name.lower()
            verdict = lowered not in self._keep and lowered.translate(_FOLD) in self._drop
            if len(self._memo) < _MEMO_SIZE and len(name) <= _MEMO_NAME:
                self._memo[name] = verdict
        return verdict

    def lists(self, name: str, listed: frozenset[str]) -> bool:
        """Is `name` dropped because `Connection` lists it (`keep` names stay)?"""
        lowered = name.lower()
        return lowered in listed and lowered not in self._keep


_MEMO_SIZE = 512
_MEMO_NAME = 64


def _without(headers: Headers, rule: _Rule) -> Headers:
    """`headers` minus the names `rule` drops or `Connection` lists; `headers` itself (no
    copy) when nothing is dropped."""
    listed = connection_tokens(headers)
    drops = rule.drops
    if not listed:
        if not any(map(drops, headers.keys())):
            return headers
        return CIMultiDict([(name, value) for name, value in headers.items() if not drops(name)])
    lists = rule.lists
    return CIMultiDict(
        [
            (name, value)
            for name, value in headers.items()
            if not (drops(name) or lists(name, listed))
        ]
    )


class HeaderPolicy:
    """The header rules of one proxy, compiled from settings once (each rule owns its memo of
    header names)."""

    def __init__(self, settings: Settings) -> None:
        self._trusted = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.trusted_proxies
        )
        self._send_host = settings.host_policy is HostPolicy.PRESERVE
        self._trusted_rule = _Rule(_REQUEST_DROP, _FRAMING)
        self._untrusted_rule = _Rule(_UNTRUSTED_DROP, _FRAMING)
        self._response_rule = _Rule(HOP_BY_HOP)

    def trusts(self, remote: str | None) -> bool:
        """Is the socket peer one of `trusted_proxies`?"""
        if not self._trusted or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def inbound(self, request: web.BaseRequest) -> Headers:
        """The end-to-end request headers: what the decision core sees and what is forwarded
        (the request's own headers, read-only, when none is dropped)."""
        return self.inbound_from(request.headers, request.remote)

    def inbound_from(self, headers: Headers, remote: str | None) -> Headers:
        """`inbound` over plain values (the lean engine's; no aiohttp request)."""
        rule = self._trusted_rule if self.trusts(remote) else self._untrusted_rule
        return _without(headers, rule)

    def outbound(
        self, request: web.BaseRequest, headers: Headers, request_id: str
    ) -> CIMultiDict[str]:
        """`headers` plus the gateway's forwarding headers, per the Host policy."""
        return self.outbound_from(headers, request.remote, request.scheme, request_id)

    def outbound_from(
        self, headers: Headers, remote: str | None, scheme: str, request_id: str
    ) -> CIMultiDict[str]:
        """`outbound` over plain values (the lean engine's; no aiohttp request)."""
        out = CIMultiDict(headers)
        out.popall("Transfer-Encoding", None)  # the client leg frames the body itself
        out["X-Forwarded-For"] = _append(out.getall("X-Forwarded-For", ()), remote)
        if "X-Forwarded-Proto" not in out:
            out["X-Forwarded-Proto"] = scheme
        host = out.get("Host")
        if host is not None and "X-Forwarded-Host" not in out:
            out["X-Forwarded-Host"] = host
        if not self._send_host:
            out.popall("Host", None)
        out["X-Request-Id"] = request_id
        return out

    def response(self, headers: Headers) -> Headers:
        """The upstream's response headers minus hop-by-hop ones (every Set-Cookie kept)."""
        return _without(headers, self._response_rule)


def _append(prior: Iterable[str], remote: str | None) -> str:
    """X-Forwarded-For: the trusted chain so far, then the socket peer."""
    return ", ".join([*prior, remote or "unknown"])
