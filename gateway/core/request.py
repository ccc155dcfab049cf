"""A plain, framework-free view of an incoming request: what the decision core reads.

The proxy builds one from an aiohttp request, the `check` command from its arguments, and a
future decision endpoint (nginx `auth_request`, Traefik ForwardAuth, Envoy `ext_authz`) from
the original-request headers it is given. Nothing downstream of this type imports aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["Headers", "RequestView"]

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


@dataclass(frozen=True, slots=True)
class RequestView:
    """The request as the gateway authorizes it.

    `target` is the raw request-target exactly as received (still percent-encoded, with the
    query); the same bytes are forwarded. `body` is set only when the gateway read the body to
    look for token parameters (small form or JSON bodies); it is then forwarded from this buffer.
    """

    method: str
    target: str
    headers: Headers
    body: bytes | None = None
    remote: str | None = None
