"""Headers that make an upstream believe another path, method, host or client: the verdict is
on the request line, and a client-chosen value never reaches the upstream (or the request is
refused).

- `X-Forwarded-*`, `Forwarded`, `X-Real-Ip`: Rack derives scheme, host and client IP from
  them (Rack::Request#forwarded_scheme, #host, Rails #remote_ip). Trusted only from
  `trusted_proxies`, otherwise dropped and rebuilt from the socket.
- `X-Original-URI` / `X-Original-URL` / `X-Rewrite-URL`: nginx `auth_request` set-ups, IIS
  URL Rewrite and Symfony route on them (Symfony CVE-2018-14773 was exactly this bypass).
- `X-HTTP-Method-Override` and a `_method` form field: Rack::MethodOverride, in Rails' default
  middleware stack (so in GitLab's), turns a POST into the method they name. The gateway must
  decide on the method the upstream will run, or refuse.
"""

from __future__ import annotations

import pytest

from .conftest import ALLOWED, APP, DENIED, assert_forwarded, assert_not_forwarded

SPOOFED = [
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-Host", "gitlab.internal"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/api/v4/projects/20/releases"),
    ("X-Forwarded-Ssl", "on"),
    ("Forwarded", "for=10.0.0.1;host=gitlab.internal;proto=https"),
    ("X-Real-Ip", "10.0.0.1"),
]


@pytest.mark.parametrize(("name", "value"), SPOOFED, ids=[name for name, _ in SPOOFED])
async def test_client_forwarding_headers_are_replaced_not_trusted(guarded, name, value):
    answer = await guarded.attack.send("GET", ALLOWED, [(name, value)], token=APP)

    received = assert_forwarded(answer, ALLOWED)
    assert value not in received.header(name), f"{name} reached the upstream as sent"
    assert received.header("X-Forwarded-For") == ["127.0.0.1"]  # the socket peer only


async def test_forwarding_headers_from_a_trusted_proxy_are_kept(a_guarded_gateway):
    guarded = await a_guarded_gateway(trusted_proxies=["127.0.0.0/8"])

    answer = await guarded.attack.send("GET", ALLOWED, [("X-Forwarded-For", "10.0.0.1")], token=APP)

    received = assert_forwarded(answer, ALLOWED)
    assert received.header("X-Forwarded-For") == ["10.0.0.1, 127.0.0.1"]


REWRITES = ["X-Original-URI", "X-Original-URL", "X-Rewrite-URL"]


@pytest.mark.parametrize("name", REWRITES)
async def test_a_rewrite_header_does_not_make_a_denied_target_allowed(guarded, name):
    answer = await guarded.attack.send("GET", DENIED, [(name, ALLOWED)], token=APP)

    assert_not_forwarded(answer, (400, 403))


@pytest.mark.parametrize("name", REWRITES)
async def test_a_rewrite_header_pointing_elsewhere_never_reaches_the_upstream(guarded, name):
    # Allowed on its request line; an upstream that routes on the header would serve DENIED.
    answer = await guarded.attack.send("GET", ALLOWED, [(name, DENIED)], token=APP)

    if answer.status == 400:
        assert answer.forwarded == []
        return
    received = assert_forwarded(answer, ALLOWED)
    assert received.header(name) == [], f"client-chosen {name} reached the upstream"


# POST .../environments/7/stop needs admin_environments (granted); the same path with DELETE is
# no route at all, and GET .../releases needs read_releases (not granted).
STOP = "/api/v4/projects/20/environments/7/stop"


@pytest.mark.parametrize(
    "name",
    ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X_HTTP_METHOD_OVERRIDE"],
)
async def test_a_method_override_header_is_refused_or_never_forwarded(guarded, name):
    answer = await guarded.attack.send("POST", STOP, [(name, "DELETE")], b"{}", token=APP)

    if answer.status == 400:
        assert answer.forwarded == []
        return
    # Forwarded only if the method the upstream runs is the one authorized.
    received = assert_forwarded(answer, STOP, "POST")
    assert received.header(name) == [], f"{name} reached the upstream: it would run DELETE"


async def test_a_method_override_cannot_turn_a_denied_request_into_an_allowed_one(guarded):
    # The other direction: denied as POST, whatever the header claims.
    answer = await guarded.attack.send(
        "POST", DENIED, [("X-HTTP-Method-Override", "GET")], b"{}", token=APP
    )

    assert_not_forwarded(answer, (400, 403))


async def test_a_method_override_form_field_is_refused_or_decided_as_that_method(guarded):
    # Rack::MethodOverride reads `_method` from the form body of a POST.
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    answer = await guarded.attack.send("POST", STOP, form, b"_method=DELETE", token=APP)

    # DELETE .../environments/7/stop is no job-token route: 403, or 400 for the override.
    assert_not_forwarded(answer, (400, 403))
