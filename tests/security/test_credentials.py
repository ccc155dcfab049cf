"""Credentials: the job token the gateway judges is the one the upstream authenticates with.

GitLab reads a job token from many places (lib/gitlab/auth/auth_finders.rb): `job_token` and
`token` params (query, form, multipart and JSON bodies), the `JOB-TOKEN` header, Bearer and
Basic `Authorization`, `access_token`/`bearer_token` params. Rack folds `-` and `_` in header
names into one `HTTP_JOB_TOKEN` (and lighttpd/CGI-style servers fold every non-alphanumeric
byte), so spellings are one carrier. Anything the gateway cannot read the way the upstream will
(two tokens, a repeated header, a nested param, a body it did not inspect) is refused, never
forwarded unjudged: that is the oauth2-proxy/Oathkeeper class of "the proxy checked one
credential, the app used another".
"""

from __future__ import annotations

import base64
import json

import pytest

from .conftest import (
    ALLOWED,
    APP,
    DENIED,
    EXPIRED,
    OUTSIDER,
    assert_forwarded,
    assert_judged_or_dropped,
    assert_not_forwarded,
    assert_refused,
)

FORM = ("Content-Type", "application/x-www-form-urlencoded")
JSON = ("Content-Type", "application/json")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# Every way GitLab accepts APP's token: each must be judged (DENIED is a 403 for APP).
CARRIERS = {
    "JOB-TOKEN": ([("JOB-TOKEN", APP)], ""),
    "job-token lower case": ([("job-token", APP)], ""),
    "Bearer": ([("Authorization", f"Bearer {APP}")], ""),
    "bearer lower case": ([("Authorization", f"bearer  {APP}")], ""),
    "Basic gitlab-ci-token": ([("Authorization", basic("gitlab-ci-token", APP))], ""),
    "Basic any user (packages)": ([("Authorization", basic("x", APP))], ""),
    "job_token param": ([], f"?job_token={APP}"),
    "token param": ([], f"?token={APP}"),
    "access_token param": ([], f"?access_token={APP}"),
    "bearer_token param": ([], f"?bearer_token={APP}"),
    "encoded param name": ([], f"?job%5Ftoken={APP}"),
    "bracket-suffixed name": ([], f"?job_token]={APP}"),
    "semicolon separator": ([], f"?x=1;job_token={APP}"),
}


@pytest.mark.parametrize(("headers", "query"), CARRIERS.values(), ids=CARRIERS.keys())
async def test_every_carrier_gitlab_reads_is_judged(guarded, headers, query):
    answer = await guarded.attack.send("GET", DENIED + query, headers)

    assert_not_forwarded(answer, (400, 403))


@pytest.mark.parametrize(("headers", "query"), CARRIERS.values(), ids=CARRIERS.keys())
async def test_every_carrier_is_allowed_where_the_token_is(guarded, headers, query):
    answer = await guarded.attack.send("GET", ALLOWED + query, headers)

    assert_forwarded(answer, ALLOWED + query)


@pytest.mark.parametrize("name", ["JOB_TOKEN", "Job_Token", "Job.Token", "Job~Token", "job!token"])
async def test_a_header_name_that_folds_to_job_token_is_judged_or_dropped(guarded, name):
    # Rack folds `_` and `-` (HTTP_JOB_TOKEN); CGI-style servers (lighttpd's mod_cgi/fastcgi,
    # some WSGI/PHP set-ups) map every byte outside [A-Za-z0-9] to `_`, so `Job.Token` is
    # HTTP_JOB_TOKEN there. Judged as the job token, refused, or dropped before forwarding:
    # never forwarded as an unknown header that an upstream reads as the token.
    answer = await guarded.attack.send("GET", DENIED, [(name, APP)])

    assert_judged_or_dropped(answer)


DUPLICATES = {
    "JOB-TOKEN twice": [("JOB-TOKEN", APP), ("JOB-TOKEN", OUTSIDER)],
    "JOB-TOKEN twice, same value": [("JOB-TOKEN", APP), ("JOB-TOKEN", APP)],
    "JOB-TOKEN and JOB_TOKEN": [("JOB-TOKEN", APP), ("JOB_TOKEN", OUTSIDER)],
    "Authorization twice": [
        ("Authorization", f"Bearer {APP}"),
        ("Authorization", f"Bearer {OUTSIDER}"),
    ],
    "JOB-TOKEN and Bearer": [("JOB-TOKEN", APP), ("Authorization", f"Bearer {OUTSIDER}")],
    "JOB-TOKEN and Basic": [
        ("JOB-TOKEN", APP),
        ("Authorization", basic("gitlab-ci-token", OUTSIDER)),
    ],
    "JOB-TOKEN and PAT": [("JOB-TOKEN", OUTSIDER), ("PRIVATE-TOKEN", "glpat-xxxxxxxxxxxxxxxxxxxx")],
    "JOB-TOKEN and deploy token": [("JOB-TOKEN", OUTSIDER), ("DEPLOY-TOKEN", "gldt-xxxxxxxx")],
    "JOB-TOKEN and an unknown scheme": [("JOB-TOKEN", OUTSIDER), ("Authorization", "Token abc")],
    "comma-joined values": [("JOB-TOKEN", f"{APP}, {OUTSIDER}")],
}


@pytest.mark.parametrize("headers", DUPLICATES.values(), ids=DUPLICATES.keys())
async def test_ambiguous_header_credentials_are_refused(guarded, headers):
    # OUTSIDER may read #21; APP may not. Whichever the upstream picks, the gateway cannot know.
    answer = await guarded.attack.send("GET", "/api/v4/projects/21/deployments", headers)

    # 400/401, or 403 when a spelling was dropped and only APP was left to judge.
    assert_not_forwarded(answer, (400, 401, 403))


POLLUTION = {
    "job_token twice": f"?job_token={APP}&job_token={OUTSIDER}",
    "job_token and token": f"?token={OUTSIDER}&job_token={APP}",
    "job_token array": f"?job_token[]={OUTSIDER}",
    "job_token hash": f"?job_token[x]={OUTSIDER}",
    "leading bracket": f"?[job_token]={OUTSIDER}&job_token={APP}",
    "encoded name twice": f"?job_token={APP}&job%5ftoken={OUTSIDER}",
    "access_token and job_token": f"?access_token={OUTSIDER}&job_token={APP}",
    "private_token next to a job token": f"?private_token=glpat-x&job_token={OUTSIDER}",
}


@pytest.mark.parametrize("query", POLLUTION.values(), ids=POLLUTION.keys())
async def test_parameter_pollution_is_refused(guarded, query):
    answer = await guarded.attack.send("GET", "/api/v4/projects/21/deployments" + query)

    assert_refused(answer, 400, "credential_conflict")


async def test_a_query_token_and_a_header_token_that_differ_are_refused(guarded):
    answer = await guarded.attack.send(
        "GET", f"/api/v4/projects/21/deployments?job_token={OUTSIDER}", token=APP
    )

    assert_refused(answer, 400, "credential_conflict")


async def test_expired_and_unknown_tokens_are_401_in_every_carrier(guarded):
    for headers, query in ([("JOB-TOKEN", EXPIRED)], ""), ([], "?job_token=glcbt-nope"):
        answer = await guarded.attack.send("GET", ALLOWED + query, headers)

        assert_refused(answer, 401, None)
        assert answer.message == "401 Unauthorized"


# ---- tokens in bodies: Rack/Grape params include form, multipart and JSON bodies

BODY_CASES = {
    "form": ([FORM], f"job_token={APP}".encode()),
    "form, POST without Content-Type": ([], f"job_token={APP}".encode()),
    "form, token param": ([FORM], f"a=1&token={APP}".encode()),
    "json": ([JSON], json.dumps({"job_token": APP}).encode()),
    "json, escaped key": ([JSON], b'{"job\\u005ftoken": "' + APP.encode() + b'"}'),
    "json with charset": (
        [("Content-Type", "application/json; charset=utf-8")],
        json.dumps({"token": APP}).encode(),
    ),
}


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize(("headers", "body"), BODY_CASES.values(), ids=BODY_CASES.keys())
async def test_a_token_in_a_body_is_judged(guarded, headers, body):
    answer = await guarded.attack.send("POST", DENIED, headers, body)

    assert_not_forwarded(answer, (400, 403))


@pytest.mark.parametrize(("headers", "body"), BODY_CASES.values(), ids=BODY_CASES.keys())
async def test_a_token_in_a_chunked_body_is_judged(guarded, headers, body):
    # Transfer-Encoding is hop-by-hop: the gateway must still see that there is a body.
    framing = [*headers, ("Transfer-Encoding", "chunked")]

    answer = await guarded.attack.send("POST", DENIED, framing, chunked(body), length=False)

    assert_not_forwarded(answer, (400, 403, 411, 413))


MULTIPART = {
    "multipart/form-data": "multipart/form-data; boundary=XyZ",
    "multipart/mixed": "multipart/mixed; boundary=XyZ",
    "multipart/related": "multipart/related; boundary=XyZ",
}


@pytest.mark.parametrize("content_type", MULTIPART.values(), ids=MULTIPART.keys())
async def test_a_token_in_a_multipart_body_is_judged(guarded, content_type):
    # Rack::Multipart parses any multipart/* body into params (secure files, PyPI, NuGet
    # uploads are multipart): `params[:job_token]` then authenticates the request.
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="job_token"\r\n\r\n' + APP.encode() + b"\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nhello\r\n"
        b"--XyZ--\r\n"
    )

    answer = await guarded.attack.send("POST", DENIED, [("Content-Type", content_type)], body)

    assert_not_forwarded(answer, (400, 403, 413, 415))


@pytest.mark.parametrize("content_type", MULTIPART.values(), ids=MULTIPART.keys())
async def test_a_quoted_printable_token_part_is_refused_not_forwarded_as_tokenless(
    guarded, content_type
):
    # GitLab Workhorse reads uploads with Go's mime/multipart, which decodes quoted-printable
    # parts; Rack does not. `=67lcbt-...` is then APP's token to Rails, but no job token as
    # written: a gateway reading it literally forwards the request as carrying none.
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="access_token"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=67" + APP[1:].encode() + b"\r\n"
        b"--XyZ--\r\n"
    )

    answer = await guarded.attack.send("POST", DENIED, [("Content-Type", content_type)], body)

    assert_refused(answer, 400, "bad_body")


async def test_conflicting_tokens_between_header_and_body_are_refused(guarded):
    body = f"job_token={OUTSIDER}".encode()

    answer = await guarded.attack.send("POST", DENIED, [FORM], body, token=APP)

    assert_refused(answer, 400, "credential_conflict")


async def test_a_body_that_does_not_parse_is_refused_not_forwarded(guarded):
    answer = await guarded.attack.send("POST", DENIED, [JSON], b'{"job_token": "' + APP.encode())

    assert_refused(answer, 400, "bad_body")


async def test_a_trailer_cannot_carry_a_credential_to_the_upstream(guarded):
    # Chunked trailers are dropped: the upstream never sees a trailer field as a header.
    data = (
        f"POST {DENIED} HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: text/plain\r\nConnection: close\r\n\r\n"
        f"5\r\nhello\r\n0\r\nJOB-TOKEN: {APP}\r\n\r\n"
    ).encode()

    answer = await guarded.attack.raw(data)

    if answer.forwarded:
        assert answer.forwarded[0].header("JOB-TOKEN") == []
    else:
        assert answer.status == 400
