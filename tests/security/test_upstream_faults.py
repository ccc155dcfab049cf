"""Upstream faults (refused, reset mid-body, slow, garbage): denials never depend on the
upstream, failures are the gateway's own 502/504 (never a forward of something unapproved,
never a truncated body that looks complete, never a hung client), and service recovers.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from .conftest import ALLOWED, APP, DENIED, Attack, assert_refused, exchange, http, parse_answer


def a_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_upstream_is_502_and_denials_stay_denials(a_guarded_gateway, an_upstream):
    port = a_free_port()
    guarded = await a_guarded_gateway(upstream=f"http://127.0.0.1:{port}", connect_timeout=2)
    attack = Attack(guarded.port, an_upstream)

    allowed = await attack.send("GET", ALLOWED, token=APP)
    denied = await attack.send("GET", DENIED, token=APP)
    dotted = await attack.send("GET", ALLOWED + "/../releases", token=APP)

    assert_refused(allowed, 502, "upstream_unreachable")
    assert_refused(denied, 403, "insufficient_permissions")
    assert_refused(dotted, 400, "bad_target")

    # The upstream comes (back) up on that port: the next request goes through.
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="back")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        recovered = await attack.send("GET", ALLOWED, token=APP)
        again_denied = await attack.send("GET", DENIED, token=APP)
    finally:
        await runner.cleanup()

    assert recovered.status == 200, recovered.describe()
    assert recovered.body == b"back"
    assert_refused(again_denied, 403, "insufficient_permissions")
    assert seen == [ALLOWED]


async def test_garbage_from_the_upstream_is_502(a_guarded_gateway, an_upstream):
    guarded = await a_guarded_gateway(upstream=an_upstream.garbage_url)

    answer = await guarded.attack.send("GET", ALLOWED, token=APP)

    assert_refused(answer, 502, "upstream_bad_response")
    assert b"THIS IS NOT HTTP" not in answer.raw


async def test_a_slow_upstream_is_504_within_the_read_timeout(a_guarded_gateway):
    guarded = await a_guarded_gateway(read_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()

    answer = await guarded.attack.send("GET", "/-up-/slow?delay=5")

    assert_refused(answer, 504, "upstream_timeout")
    assert loop.time() - started < 3


async def test_an_upstream_reset_mid_body_never_looks_complete(guarded):
    for target in ("/-up-/reset", "/-up-/reset?chunked=1"):
        raw = await exchange(guarded.port, http("GET", target), 10)
        status, headers, body = parse_answer(raw)

        assert status == 200  # the headers had gone out already
        if "Content-Length" in headers:
            assert len(body) < int(headers["Content-Length"]), "a truncated body looked complete"
        else:
            assert not raw.endswith(b"0\r\n\r\n"), "a truncated chunked body was terminated"


async def test_a_client_that_leaves_frees_the_upstream_request(guarded):
    upstream = guarded.upstream
    _, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    writer.write(http("GET", "/-up-/hang"))
    await writer.drain()
    await asyncio.wait_for(upstream.hang_started.wait(), 5)

    writer.close()

    await asyncio.wait_for(upstream.hang_cancelled.wait(), 5)  # no connection left hanging
    answer = await guarded.attack.send("GET", ALLOWED, token=APP)
    assert answer.status == 200
