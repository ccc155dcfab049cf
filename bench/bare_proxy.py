"""The bare forwarder: the gateway's forwarding settings with no policy at all.

It is the yardstick for "what does the policy cost": same aiohttp server and client, same
uvloop, same forwarding choices as the gateway (raw request-target sent with `encoded=True`,
hop-by-hop headers stripped both ways, `auto_decompress=False` on both sides, one keep-alive
pool, bodies streamed both ways with `iter_any`), and nothing else: no token, no route, no log
line, no metrics.

Usage: python bench/bare_proxy.py --upstream http://127.0.0.1:8081 --port 8080
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# RFC 9110 §7.6.1, plus `Expect` (aiohttp answers 100-continue itself).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "expect",
    }
)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
BASE: web.AppKey[str] = web.AppKey("base", str)


def strip_hop_by_hop(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = set(HOP_BY_HOP)
    for value in headers.getall("Connection", ()):
        drop.update(token.strip().lower() for token in value.split(","))
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


async def forward(request: web.Request) -> web.StreamResponse:
    target = request.raw_path
    if not target.startswith("/"):
        raise web.HTTPBadRequest()
    headers = strip_hop_by_hop(request.headers)
    body = request.content if request.body_exists else None
    url = URL(request.app[BASE] + target, encoded=True)
    session = request.app[SESSION]
    try:
        async with session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            length = upstream.content_length
            if length is not None and 0 < length <= SMALL_BODY and request.method != "HEAD":
                # The gateway's one-write path for small framed answers (gateway/proxy/forward.py),
                # so the yardstick forwards exactly as the gateway does.
                return web.Response(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=strip_hop_by_hop(upstream.headers),
                    body=await upstream.read(),
                )
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=strip_hop_by_hop(upstream.headers),
            )
            if (framed := upstream.headers.get("Content-Length")) is not None:
                response.content_length = int(framed)
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientConnectorError:
        return web.Response(status=502)
    except TimeoutError:
        return web.Response(status=504)


SMALL_BODY = 64 * 1024  # as gateway/proxy/forward.py


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=0)
    app[BASE] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=15)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
        app[SESSION] = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        auto_decompress=False,
        handler_cancellation=True,
        loop=uvloop.new_event_loop(),
        print=lambda *_: print(f"bare proxy on http://{args.host}:{args.port}", flush=True),
        backlog=4096,
    )


if __name__ == "__main__":
    main()
