"""Lean HTTP/1.1 server machinery: an asyncio Protocol per connection, llhttp (via httptools).

OWNS: reading requests off a socket (strict parsing, limits, timeouts, keep-alive, pipelining,
the connection limit) and writing each response in one `write`. It knows nothing of tokens,
policies or GitLab: a `Handler` turns a `Request` into a `Response`.
MAY IMPORT: the standard library, `httptools` and `multidict` only (no `gateway.*` module), so
that the decision listener (gateway/authz) and a later forwarding engine share it unchanged.

CONTRACT:
    server = WireServer(handler, limits)
    await server.start(host, port, reuse_port=...)   # OSError when the address is unusable
    server.port                                      # the bound port
    await server.stop(grace)   # stop accepting; let requests in flight finish for up to
                               # `grace` seconds; close every connection
A `Handler`'s `handle(request)` returns a `Response` (answered at once, no Task is created: the
cheap path) or an awaitable of one (run in a Task; the connection reads no further request
until it is answered). `error(status, detail)` shapes the answers the machinery makes itself
(400 malformed, 408 timeouts, 413, 431, 501, 503 over the connection limit); they all close.
Pipelined requests are answered in order, one at a time; reading pauses while requests wait.

The parts another listener builds on (the lean proxy's, gateway/proxy/lean): `Listener` (bind,
the connection limit, drain: `start`, `stop(grace, cut)`, `port`, `urls`), `HeadProtocol` (a
connection's strict parser, head limits, head timer; `strict(parser)`, `Refused`) and
`Overloaded(answer)` (the answer over `max_connections`: written at once, then a lingering
close).

Not here yet (what a forwarding engine, issue 13, adds on this base): request bodies are
buffered whole up to `Limits.max_body` (enough for check requests; streaming with back-pressure
needs a body callback), responses are whole buffers (no chunked or streamed answers), and there
is no client side. No `Date` or `Server` header is sent.
"""

from gateway.wire.head import HeadProtocol, Refused, strict
from gateway.wire.listener import Limits, Listener, Overloaded
from gateway.wire.server import Handler, Request, Response, WireServer

__all__ = [
    "Handler",
    "HeadProtocol",
    "Limits",
    "Listener",
    "Overloaded",
    "Refused",
    "Request",
    "Response",
    "WireServer",
    "strict",
]
