"""Headers: end-to-end ones pass untouched, hop-by-hop ones stop, the gateway adds only its own."""

from __future__ import annotations

import aiohttp
import pytest
from fixtures.proxy import ScriptedGate, call
from test_forward_target import raw_request
from yarl import URL


def names(pairs: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in pairs]


async def test_hop_by_hop_and_connection_listed_request_headers_are_dropped(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    head = (
        "GET /h HTTP/1.1\r\nHost: g\r\n"
        "Connection: close, X-Client-Hop\r\nX-Client-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        "TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic eDp5\r\n"
        "Proxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n"
    )

    await raw_request(gateway.port, head)

    seen = names(an_upstream.last.headers)
    for hop in ("connection", "x-client-hop", "keep-alive", "te", "trailer", "proxy-authorization"):
        assert hop not in seen
    assert "proxy-connection" not in seen
    assert an_upstream.last.header("X-End-To-End") == ["kept"]


async def test_the_client_adds_no_headers_of_its_own(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)

    await raw_request(
        gateway.port,
        "POST /h HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )

    assert sorted(names(an_upstream.last.headers)) == sorted(
        ["host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
         "x-request-id"]
    )  # fmt: skip


async def test_hop_by_hop_response_headers_are_dropped_and_cookies_all_kept(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(gateway.url + "/-up-/hop") as hop:
            hop_headers = hop.headers
        async with client.get(gateway.url + "/-up-/cookies") as cookies:
            set_cookies = cookies.headers.getall("Set-Cookie")

    assert "X-Secret" not in hop_headers  # listed in the upstream's Connection header
    assert "Keep-Alive" not in hop_headers
    assert "Proxy-Authenticate" not in hop_headers
    assert hop_headers["X-Kept"] == "yes"
    assert set_cookies == ["a=1; Path=/", "b=2; HttpOnly", "c=3; Secure"]


FORGED = (
    "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n"
    "Forwarded: for=6.6.6.6\r\nX-Real-Ip: 6.6.6.6\r\nX-Forwarded-Ssl: on\r\n"
    "X-Request-Id: client-chosen\r\n"
)


async def test_forwarding_headers_from_an_untrusted_peer_are_replaced(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)

    await raw_request(
        gateway.port, f"GET /f HTTP/1.1\r\nHost: api.test\r\n{FORGED}Connection: close\r\n\r\n"
    )

    seen = an_upstream.last
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == ["api.test"]
    for spoofable in ("Forwarded", "X-Real-Ip", "X-Forwarded-Ssl"):
        assert seen.header(spoofable) == []
    assert seen.header("X-Request-Id") != ["client-chosen"]


async def test_forwarding_headers_from_a_trusted_proxy_are_kept_and_extended(
    an_upstream, a_gateway
):
    gateway = await a_gateway(an_upstream.url, trusted_proxies=["127.0.0.0/8"])

    await raw_request(
        gateway.port, f"GET /f HTTP/1.1\r\nHost: api.test\r\n{FORGED}Connection: close\r\n\r\n"
    )

    seen = an_upstream.last
    assert seen.header("X-Forwarded-For") == ["6.6.6.6, 127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["https"]
    assert seen.header("X-Forwarded-Host") == ["evil.example"]
    assert seen.header("Forwarded") == ["for=6.6.6.6"]
    assert seen.header("X-Request-Id") == ["client-chosen"]  # a trusted proxy's id is kept


@pytest.mark.parametrize("policy", ["preserve", "upstream"])
async def test_the_host_policy_decides_which_host_the_upstream_sees(an_upstream, a_gateway, policy):
    gateway = await a_gateway(an_upstream.url, host_policy=policy)

    await raw_request(
        gateway.port, "GET /h HTTP/1.1\r\nHost: gitlab.example\r\nConnection: close\r\n\r\n"
    )

    expected = "gitlab.example" if policy == "preserve" else an_upstream.url.removeprefix("http://")
    assert an_upstream.last.header("Host") == [expected]
    assert an_upstream.last.header("X-Forwarded-Host") == ["gitlab.example"]


async def test_gateway_made_answers_carry_the_request_id_sent_upstream(an_upstream, a_gateway):
    gateway = await a_gateway(an_upstream.url)
    refused = await call("GET", URL(gateway.url + "/a/%2e%2e/b", encoded=True))

    assert refused.status == 400
    assert refused.headers["X-Gateway-Reason"] == "bad_target"
    assert len(refused.headers["X-Request-Id"]) == 16
    assert an_upstream.received == []


async def test_headers_that_reinterpret_the_request_never_reach_the_upstream(
    an_upstream, a_gateway
):
    gateway = await a_gateway(an_upstream.url)
    head = (
        "POST /api/v4/projects/1/environments/7/stop HTTP/1.1\r\nHost: g\r\n"
        "X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\n"
        "X-Original-URL: /admin\r\nX-Original-URI: /admin\r\nX-Rewrite-URL: /admin\r\n"
        "X_Forwarded_For: 6.6.6.6\r\nX.Forwarded.Host: evil\r\nX-HTTP-Method_Override: GET\r\n"
        "X-Kept: yes\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    )

    await raw_request(gateway.port, head)

    seen = an_upstream.last
    assert seen.method == "POST"
    assert sorted(names(seen.headers)) == sorted(
        ["host", "content-length", "x-kept", "x-forwarded-for", "x-forwarded-proto",
         "x-forwarded-host", "x-request-id"]
    )  # fmt: skip
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]


async def test_listing_the_framing_in_connection_does_not_hide_the_body(an_upstream, a_gateway):
    gate = ScriptedGate(wants_body=True)
    gateway = await a_gateway(an_upstream.url, gate=gate)
    head = (
        "POST /form HTTP/1.1\r\nHost: g\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 7\r\nConnection: close, Content-Length\r\n\r\n"
    )

    await raw_request(gateway.port, head, b"a=1&b=2")

    (view,) = gate.seen
    assert view.body == b"a=1&b=2"
    assert view.headers["Content-Length"] == "7"
    assert an_upstream.last.body_length == 7


async def test_the_gate_sees_a_chunked_body_is_there(an_upstream, a_gateway):
    gate = ScriptedGate(wants_body=True)
    gateway = await a_gateway(an_upstream.url, gate=gate)
    head = (
        "POST /form HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )

    await raw_request(gateway.port, head, b"3\r\na=1\r\n0\r\n\r\n")

    (view,) = gate.seen
    assert view.headers["Transfer-Encoding"] == "chunked"
    assert view.body == b"a=1"
    assert an_upstream.last.header("Transfer-Encoding") == []  # re-framed: a buffer has a length
    assert an_upstream.last.header("Content-Length") == ["3"]
