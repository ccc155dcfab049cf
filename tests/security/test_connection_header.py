"""`Connection:` names headers as hop-by-hop, and the gateway drops them before forwarding.

The danger is a verdict on one view and a forward of another: a credential the gateway
authorized that vanishes, a credential it did not see that arrives, or a body it did not read
that the upstream parses. The gateway decides on exactly the end-to-end headers it forwards
(gateway/proxy/headers.py `HeaderPolicy.inbound`), so a Connection-listed credential is judged absent
and never sent, and listing a framing header must not hide a body from inspection.
"""

from __future__ import annotations

import pytest

from .conftest import ALLOWED, APP, DENIED, OUTSIDER, assert_forwarded, assert_not_forwarded


@pytest.mark.parametrize(
    "connection", ["JOB-TOKEN", "job-token", "close, JOB-TOKEN", "keep-alive,JOB-TOKEN ,x"]
)
async def test_a_connection_listed_job_token_is_neither_judged_nor_forwarded(guarded, connection):
    answer = await guarded.attack.send(
        "GET", DENIED, [("JOB-TOKEN", APP), ("Connection", connection)]
    )

    # Judged as the request the upstream gets: one without a token (forwarded anonymously,
    # GitLab then answers as for any anonymous caller), or refused outright.
    if answer.status == 400:
        assert answer.forwarded == []
        return
    received = assert_forwarded(answer, DENIED)
    assert received.header("JOB-TOKEN") == [], "a token the gateway never judged was forwarded"


@pytest.mark.parametrize(
    ("listed", "credential"),
    [
        ("Authorization", ("Authorization", f"Bearer {OUTSIDER}")),
        ("Private-Token", ("PRIVATE-TOKEN", "glpat-someone-else")),
        ("Job_Token", ("JOB_TOKEN", OUTSIDER)),
    ],
)
async def test_the_gateway_never_authorizes_one_credential_and_forwards_another(
    guarded, listed, credential
):
    # JOB-TOKEN (APP) is judged; the listed credential is dropped. What arrives upstream must
    # be exactly the credential that was judged.
    answer = await guarded.attack.send(
        "GET", ALLOWED, [("JOB-TOKEN", APP), credential, ("Connection", listed)]
    )

    if answer.status == 400:
        assert answer.forwarded == []
        return
    received = assert_forwarded(answer, ALLOWED)
    assert received.header("JOB-TOKEN") == [APP]
    assert received.header(credential[0]) == []


async def test_a_connection_listed_credential_cannot_unlock_a_denied_route(guarded):
    # APP alone is denied on DENIED; listing it in Connection must not make the gateway judge
    # OUTSIDER's Bearer instead and forward APP.
    answer = await guarded.attack.send(
        "GET",
        DENIED,
        [("JOB-TOKEN", APP), ("Authorization", f"Bearer {OUTSIDER}"), ("Connection", "JOB-TOKEN")],
    )

    assert_not_forwarded(answer, (400, 403))
    assert all(r.header("JOB-TOKEN") == [] for r in answer.forwarded)


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    "listed", ["Content-Length", "Content-Type", "Content-Length, Content-Type"]
)
async def test_listing_a_framing_header_does_not_hide_a_body_token(guarded, listed):
    # The body carries APP, which GitLab reads from `params[:job_token]`; the request is denied
    # for APP. The gateway must read and judge that body (or refuse), never forward it unjudged.
    body = f"job_token={APP}".encode()
    headers = [("Content-Type", FORM), ("Connection", listed)]

    answer = await guarded.attack.send("POST", "/api/v4/projects/20/releases", headers, body)

    assert_not_forwarded(answer, (400, 403, 411, 413))
