"""Regressions for the four findings of the outside parser review (issue 16), end to end.

Each was checked against the real Ruby parsers GitLab uses (tests/oracle/): the gateway read a
request differently from Rack / ActionPack / Doorkeeper, so a job token GitLab authenticates
with went through unjudged (1, 2), a token reached a log line (3), or a client could make the
gateway answer 500 (4). Every test here fails on the code before the fix.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets

import pytest
from fixtures.proxy import call

from .conftest import ALLOWED, APP, DENIED, assert_not_forwarded, assert_refused

FORM = "application/x-www-form-urlencoded"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------- 1. media type cut at `,` too

# Rack::MediaType.type splits on [;,]; ActionDispatch's content_mime_type reads /^([^,;]*)/.
# An empty Content-Type is none at all for Rack (`Rack::Request#content_type`), so a POST with
# one is a form (`form_data?`).
HIDDEN_BODIES = {
    "form, comma": (f"{FORM}, text/plain", f"name=x&job_token={APP}".encode()),
    "form, comma without space": (f"{FORM},text/plain", f"job_token={APP}".encode()),
    "form, upper case, space before comma": (f"{FORM.upper()} ,x", f"job_token={APP}".encode()),
    "json, comma": ("application/json, text/plain", json.dumps({"job_token": APP}).encode()),
    "json, comma then parameter": (
        "application/json,x;charset=utf-8",
        b'{"token": "%s"}' % APP.encode(),
    ),
    "empty Content-Type on a POST": ("", f"job_token={APP}".encode()),
}


@pytest.mark.parametrize(("content_type", "body"), HIDDEN_BODIES.values(), ids=HIDDEN_BODIES.keys())
async def test_a_comma_in_the_content_type_does_not_hide_a_body_token(guarded, content_type, body):
    headers = [("Content-Type", content_type)]
    answer = await guarded.attack.send("POST", DENIED, headers, body)
    assert_not_forwarded(answer, statuses=(403,))  # judged: APP may not create releases


async def test_a_comma_in_the_content_type_does_not_hide_a_method_override(guarded):
    headers = [("Content-Type", f"{FORM}, text/plain")]
    answer = await guarded.attack.send("POST", ALLOWED, headers, b"_method=DELETE", token=APP)
    assert_refused(answer, 400, "bad_body")


# --------------------------------------------- 2. Authorization scheme split on any whitespace

# ActionPack's auth_scheme / auth_param: `request.authorization.to_s.split(" ", 2)` (Ruby's
# awk-style split: any run of ASCII whitespace, leading whitespace skipped).
SCHEME_SPACING = {
    "Basic TAB": f"Basic\t{basic('gitlab-ci-token', APP)}",
    "Basic TAB space": f"Basic \t {basic('gitlab-ci-token', APP)}",
    "basic TAB, any user": f"basic\t{basic('x', APP)}",
    "Basic TAB, trailing TAB": f"Basic\t{basic('gitlab-ci-token', APP)}\t",
    "Bearer TAB": f"Bearer\t{APP}",
}


@pytest.mark.parametrize("authorization", SCHEME_SPACING.values(), ids=SCHEME_SPACING.keys())
async def test_the_authorization_scheme_ends_at_any_whitespace(guarded, authorization):
    answer = await guarded.attack.send("GET", DENIED, [("Authorization", authorization)])
    assert_not_forwarded(answer, statuses=(403,))


# ------------------------------------- 3. bracket spellings of credential parameters redacted

SPELLINGS = [
    "?[job_token]={}",
    "?job_token]={}",
    "?%5Bjob_token%5D={}",
    "?x=1;[token]={}",
    "?[private_token]={}",
    "?a=1&[[access_token]]={}&b=2",
    "?%5bbearer_token%5d={}",
]


async def test_bracket_spellings_of_credential_params_never_reach_the_log(
    a_served_gateway, an_upstream
):
    gateway = a_served_gateway(an_upstream.url, "--log-level", "debug")
    secrets_sent = []
    for spelling in SPELLINGS:
        secret = f"glcbt-{secrets.token_hex(10)}"  # unknown to the store, still logged
        secrets_sent.append(secret)
        answer = await call("GET", gateway.url + ALLOWED + spelling.format(secret))
        if "X-Gateway-Reason" in answer.headers:  # gateway-made, not the upstream's echo
            assert secret not in answer.body.decode(errors="replace")
    gateway.wait_for_event("request", count=len(SPELLINGS))
    await asyncio.sleep(0.1)
    logs = gateway.log_text()
    for secret in secrets_sent:
        assert secret not in logs
    assert logs.count("[REDACTED]") >= len(SPELLINGS)


# ---------------------------------------------------------- 4. a body parser failure is a 400

DEEP = {
    "nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "nested arrays": b"[" * 100_000 + b"]" * 100_000,
    "nested under a token key": b'{"job_token":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("body", DEEP.values(), ids=DEEP.keys())
async def test_deeply_nested_json_is_bad_body_not_500(guarded, body):
    headers = [("Content-Type", "application/json")]
    answer = await guarded.attack.send("POST", ALLOWED, headers, body, token=APP)
    assert_refused(answer, 400, "bad_body")
    assert b"Traceback" not in answer.body


# ------------------------------------- found by the oracle: a form body splits on `&` only

# Rack 2.2 `Rack::Request#POST` parses a form body with `parse_query(form_vars, '&')`; only the
# query string is split on `;` too. The gateway judged `APP` here while GitLab reads the value
# `APP;x=1` (a token no job has, so a 401 there, but not the token the gateway judged).


async def test_a_semicolon_in_a_form_body_is_part_of_the_value(guarded):
    headers = [("Content-Type", FORM)]
    answer = await guarded.attack.send("GET", ALLOWED, headers, f"job_token={APP};x=1".encode())
    assert_refused(answer, 401, None)  # the value `APP;x=1` is judged: no such job


# ------------------- found by the oracle: Basic credentials GitLab reads whatever the scheme

# TokenLocator's `http_basic_auth` (NuGet, Debian, RPM, Maven, virtual registries) calls
# ActionPack's `user_name_and_password`, which decodes the Authorization parameter without
# checking the scheme; the package helpers' `decode_token` reads what follows the first
# literal `Basic ` anywhere in the value. Both with Ruby's lenient Base64.
HIDDEN_BASIC = {
    "Bearer scheme": f"Bearer {basic('x', APP)}",
    "unknown scheme": f"Foo {basic('gitlab-ci-token', APP)}",
    "unpadded, junk byte": "Token "
    + basic("x", APP).rstrip("=")[:4]
    + "*"
    + basic("x", APP).rstrip("=")[4:],
    "after a literal 'Basic '": f"Token realm=Basic {basic('x', APP)}",
}


@pytest.mark.parametrize("authorization", HIDDEN_BASIC.values(), ids=HIDDEN_BASIC.keys())
async def test_basic_credentials_under_another_scheme_are_judged(guarded, authorization):
    answer = await guarded.attack.send("GET", DENIED, [("Authorization", authorization)])
    assert_not_forwarded(answer, statuses=(400, 403))
