"""Header rules of the forwarding leg: what is end-to-end, what the gateway adds, whom it trusts.

- Hop-by-hop headers (RFC 9110 §7.6.1 and RFC 2616 §13.5.1) and every header named in
  `Connection` are dropped in both directions (reference aiohttp-proxying.md §1.7).
- `Expect` is answered by the gateway (after the decision) and never forwarded (§1.16).
- Headers that would make the upstream run another method or path (method-override and URL
  rewrite headers) and any header whose name contains `_` are dropped (see `REINTERPRETING`).
- `X-Request-Id` from the client is dropped: the gateway sends its own id upstream, so an
  upstream log correlation id is never client-chosen.
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

from gateway.request import Headers
from gateway.settings import HostPolicy, Settings

__all__ = [
    "HOP_BY_HOP",
    "REINTERPRETING",
    "HeaderPolicy",
    "connection_tokens",
    "is_upgrade",
    "response_headers",
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
_NONE: frozenset[str] = frozenset()


def connection_tokens(headers: Headers) -> frozenset[str]:
    """The lower-cased header names listed in `Connection` (they are hop-by-hop too)."""
    values = headers.getall("Connection", ())
    if not values:
        return _NONE
    return frozenset(t.strip().lower() for v in values for t in v.split(",")) - {""}


def is_upgrade(headers: Headers) -> bool:
    """A protocol upgrade request (websocket, h2c): any `Upgrade` or `Connection: upgrade`."""
    return "Upgrade" in headers or "upgrade" in connection_tokens(headers)


def _without(
    headers: Headers, drop: frozenset[str], *, underscores: bool = True
) -> CIMultiDict[str]:
    listed = connection_tokens(headers)
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in drop or lowered in listed or (not underscores and "_" in lowered):
            continue
        kept.add(name, value)
    return kept


def response_headers(headers: Headers) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones (every Set-Cookie kept)."""
    return _without(headers, HOP_BY_HOP)


class HeaderPolicy:
    """The request-side header rules, compiled from settings once."""

    def __init__(self, settings: Settings) -> None:
        self._trusted = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.trusted_proxies
        )
        self._send_host = settings.host_policy is HostPolicy.PRESERVE

    def trusts(self, remote: str | None) -> bool:
        """Is the socket peer one of `trusted_proxies`?"""
        if not self._trusted or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def inbound(self, request: web.BaseRequest) -> CIMultiDict[str]:
        """The end-to-end request headers: what the decision core sees and what is forwarded."""
        drop = _REQUEST_DROP if self.trusts(request.remote) else _UNTRUSTED_DROP
        # SECURITY: Rack/CGI maps `JOB_TOKEN` and `JOB-TOKEN` to the same HTTP_JOB_TOKEN (and
        # `X_Forwarded_For` to HTTP_X_FORWARDED_FOR): a name with `_` could smuggle a credential
        # or a forwarding header past every rule keyed on the `-` spelling. Dropped, as nginx
        # does by default (`underscores_in_headers off`).
        return _without(request.headers, drop, underscores=False)

    def outbound(
        self, request: web.BaseRequest, headers: Headers, request_id: str
    ) -> CIMultiDict[str]:
        """`headers` plus the gateway's forwarding headers, per the Host policy."""
        out = CIMultiDict(headers)
        out["X-Forwarded-For"] = _append(out.getall("X-Forwarded-For", ()), request.remote)
        if "X-Forwarded-Proto" not in out:
            out["X-Forwarded-Proto"] = request.scheme
        host = out.get("Host")
        if host is not None and "X-Forwarded-Host" not in out:
            out["X-Forwarded-Host"] = host
        if not self._send_host:
            out.popall("Host", None)
        out["X-Request-Id"] = request_id
        return out


def _append(prior: Iterable[str], remote: str | None) -> str:
    """X-Forwarded-For: the trusted chain so far, then the socket peer."""
    return ", ".join([*prior, remote or "unknown"])
