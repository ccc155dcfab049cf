"""Request-target forms other than origin-form, and methods: only origin-form targets and the
methods GitLab routes for job tokens are ever decided; nothing else is forwarded with a token.

aiohttp accepts absolute-form (`GET http://evil/x`), whose raw_path is then the whole URL; a
proxy that joins it to its upstream base can be pointed at another host (SSRF).
"""

from __future__ import annotations

import pytest

from .conftest import ALLOWED, APP, DENIED, assert_forwarded, assert_not_forwarded, assert_refused

FORMS = {
    "absolute-form to the gateway": f"GET http://gateway.test{ALLOWED} HTTP/1.1",
    "absolute-form elsewhere": f"GET http://evil.example{ALLOWED} HTTP/1.1",
    "absolute-form https": f"GET https://evil.example:443{DENIED} HTTP/1.1",
    "scheme-relative": f"GET //evil.example{DENIED} HTTP/1.1",
    "authority-form GET": "GET evil.example:443 HTTP/1.1",
    "authority-form CONNECT": "CONNECT evil.example:443 HTTP/1.1",
    "asterisk-form OPTIONS": "OPTIONS * HTTP/1.1",
    "asterisk-form GET": "GET * HTTP/1.1",
    "empty path with query": "GET ?x=1 HTTP/1.1",
}


@pytest.mark.parametrize("line", FORMS.values(), ids=FORMS.keys())
async def test_a_target_that_is_not_origin_form_is_never_forwarded(guarded, line):
    data = f"{line}\r\nHost: gateway.test\r\nJOB-TOKEN: {APP}\r\nConnection: close\r\n\r\n"

    answer = await guarded.attack.raw(data.encode())

    assert_not_forwarded(answer, (400, 403))


@pytest.mark.parametrize("token", [APP, None])
async def test_absolute_form_is_refused_with_or_without_a_token(guarded, token):
    answer = await guarded.attack.send("GET", f"http://evil.example{ALLOWED}", token=token)

    assert_refused(answer, 400, "bad_target")


async def test_a_scheme_relative_target_stays_a_path_on_the_upstream(guarded):
    # `//evil.example/x` with no token: forwarded, but to the upstream, as a path (never
    # URL.join'ed into another host), and GitLab squeezes it to `/evil.example/x`.
    answer = await guarded.attack.send("GET", "//evil.example/x")

    assert_forwarded(answer, "//evil.example/x")


@pytest.mark.parametrize("token", [APP, None])
async def test_connect_with_a_path_is_answered_by_the_gateway(guarded, token):
    # CONNECT asks a proxy for a tunnel; the gateway is not one, and an upstream that is (a
    # misconfigured forward proxy) must never be asked for one through it.
    answer = await guarded.attack.send("CONNECT", ALLOWED, token=token)

    assert_not_forwarded(answer, (400, 403, 405))
    assert answer.reason is not None, "the upstream answered: the CONNECT was forwarded"


async def test_head_is_decided_as_get(guarded):
    # Grape's mount_in adds a HEAD twin of every GET route with the same route settings.
    allowed = await guarded.attack.send("HEAD", ALLOWED, token=APP)
    denied = await guarded.attack.send("HEAD", DENIED, token=APP)

    assert len(allowed.forwarded) == 1
    assert allowed.forwarded[0].method == "HEAD"
    assert allowed.forwarded[0].raw_path == ALLOWED
    assert_refused(denied, 403, "insufficient_permissions")


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PROPFIND", "PURGE"])
async def test_a_method_no_job_token_route_has_is_denied(guarded, method):
    answer = await guarded.attack.send(method, ALLOWED, token=APP)

    assert_not_forwarded(answer, (400, 403, 405))


@pytest.mark.parametrize("method", ["get", "Get", "hEAD", "G\x00T", "GE", "GETS"])
async def test_a_method_spelled_otherwise_is_refused_by_the_parser(guarded, method):
    # GitLab (Rack) compares methods case-sensitively; llhttp refuses unknown methods.
    answer = await guarded.attack.send(method, ALLOWED, token=APP)

    assert_not_forwarded(answer, (400, 403, 405, 501))


async def test_lower_case_methods_do_not_reach_a_denied_route(guarded):
    for method in ("post", "delete", "put"):
        answer = await guarded.attack.send(method, "/api/v4/projects/20/releases", token=APP)

        assert_not_forwarded(answer, (400, 403, 405, 501))
