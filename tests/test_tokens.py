"""Finding the job token where GitLab looks (lib/gitlab/auth/auth_finders.rb), and refusing ambiguity."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from multidict import CIMultiDict

from gateway.core import params, tokens
from gateway.core.request import RequestView
from gateway.core.tokens import Carrier, Conflict, Credential, Malformed

A = "glcbt-aaaa"
B = "glcbt-bbbb"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def a_request(
    target: str = "/api/v4/projects/1/releases",
    headers: list[tuple[str, str]] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> RequestView:
    return RequestView(method, target, CIMultiDict(headers or []), body)


def credential(view: RequestView) -> Credential:
    found = tokens.extract(view)
    assert isinstance(found, Credential), found
    return found


@pytest.mark.parametrize(
    ("target", "headers", "carrier"),
    [
        ("/x?job_token=" + A, [], Carrier.JOB_TOKEN_PARAM),
        ("/x?token=" + A, [], Carrier.TOKEN_PARAM),
        ("/x", [("JOB-TOKEN", A)], Carrier.JOB_TOKEN_HEADER),
        ("/x", [("job-token", A)], Carrier.JOB_TOKEN_HEADER),
        ("/x", [("JOB_TOKEN", A)], Carrier.JOB_TOKEN_HEADER),
        ("/x", [("Authorization", basic("gitlab-ci-token", A))], Carrier.BASIC),
        ("/x", [("Authorization", "Bearer " + A)], Carrier.BEARER),
        ("/x", [("Authorization", "bearer " + A)], Carrier.BEARER),
        ("/x?access_token=" + A, [], Carrier.ACCESS_TOKEN_PARAM),
        ("/x?bearer_token=" + A, [], Carrier.BEARER_TOKEN_PARAM),
        # GitLab's package helpers take the Basic password whatever the user name.
        ("/x", [("Authorization", basic("conan-user", A))], Carrier.BASIC),
        # A legacy token without the prefix is still a job token in the job-token carriers.
        ("/x", [("Authorization", basic("gitlab-ci-token", "legacy123"))], Carrier.BASIC),
        ("/x?job_token=legacy123", [], Carrier.JOB_TOKEN_PARAM),
    ],
)
def test_every_carrier_gitlab_reads_is_found(
    target: str, headers: list[tuple[str, str]], carrier: Carrier
) -> None:
    found = credential(a_request(target, headers))
    assert found.carrier is carrier
    assert found.digest == tokens.digest(found.secret)


def test_the_same_token_in_several_carriers_reports_gitlabs_first_carrier() -> None:
    view = a_request("/x?token=" + A + "&job_token=" + A, [("JOB-TOKEN", A)])
    assert credential(view).carrier is Carrier.JOB_TOKEN_PARAM
    view = a_request("/x?job_token=" + A, [("Authorization", basic("gitlab-ci-token", A))])
    assert credential(view).carrier is Carrier.BASIC
    view = a_request("/x?access_token=" + A, [("Authorization", "Bearer " + A)])
    assert credential(view).carrier is Carrier.ACCESS_TOKEN_PARAM


def test_query_parameters_are_decoded_as_forms_are() -> None:
    found = credential(a_request("/x?job_token=glcbt-%61b+c&x=1".replace("+c", "c")))
    assert found.secret == "glcbt-abc"
    found = credential(a_request("/x?a=1;%20job_token=" + A))  # Rack 2 splits on ";" too
    assert found.secret == A
    found = credential(a_request("/x?%5Bjob_token%5D=" + A))  # Rack drops leading brackets
    assert found.secret == A


def test_empty_values_are_absent_as_with_presence() -> None:
    assert tokens.extract(a_request("/x?job_token=&token=", [("JOB-TOKEN", "  ")])) is None
    assert (
        tokens.extract(a_request("/x", [("Authorization", basic("gitlab-ci-token", ""))])) is None
    )


@pytest.mark.parametrize(
    ("target", "headers", "named"),
    [
        ("/x?job_token=" + A + "&job_token=" + B, [], ["job_token parameter"]),
        ("/x?job_token=" + A, [("JOB-TOKEN", B)], ["job_token parameter", "JOB-TOKEN header"]),
        ("/x?token=" + A, [("JOB-TOKEN", B)], ["token parameter", "JOB-TOKEN header"]),
        ("/x", [("JOB-TOKEN", A), ("JOB-TOKEN", B)], ["JOB-TOKEN header"]),
        ("/x", [("JOB-TOKEN", A), ("JOB-TOKEN", A)], ["JOB-TOKEN header repeated"]),
        ("/x", [("JOB-TOKEN", A), ("JOB_TOKEN", B)], ["JOB-TOKEN header"]),
        ("/x", [("JOB-TOKEN", A), ("Authorization", "Bearer " + B)], ["Authorization Bearer"]),
        ("/x", [("JOB-TOKEN", A), ("PRIVATE-TOKEN", "glpat-x")], ["PRIVATE-TOKEN header"]),
        ("/x?private_token=glpat-x", [("JOB-TOKEN", A)], ["private_token parameter"]),
        ("/x", [("JOB-TOKEN", A), ("DEPLOY-TOKEN", "gldt-x")], ["DEPLOY-TOKEN header"]),
        (
            "/x",
            [("JOB-TOKEN", A), ("Authorization", "Bearer oauth-or-pat")],
            ["Authorization Bearer"],
        ),
        (
            "/x",
            [("JOB-TOKEN", A), ("Authorization", basic("alice", "password"))],
            ["Authorization Basic"],
        ),
        ("/x?access_token=oauth-x", [("JOB-TOKEN", A)], ["access_token parameter"]),
        ("/x", [("JOB-TOKEN", A), ("Authorization", "Negotiate abc")], ["Authorization header"]),
        ("/x?job_token[]=" + A, [], ["job_token parameter is not a plain string"]),
        ("/x", [("Authorization", "Basic !!notbase64"), ("JOB-TOKEN", A)], ["does not decode"]),
        (
            "/x",
            [("Authorization", "Bearer " + A), ("Authorization", "Bearer " + A)],
            ["Authorization header repeated"],
        ),
        ("/x?token=glptt-trigger", [("JOB-TOKEN", A)], ["token parameter"]),
    ],
)
def test_ambiguous_credentials_are_a_conflict_naming_carriers_not_values(
    target: str, headers: list[tuple[str, str]], named: list[str]
) -> None:
    found = tokens.extract(a_request(target, headers))
    assert isinstance(found, Conflict), found
    for name in named:
        assert name in found.detail
    assert A not in found.detail
    assert B not in found.detail
    assert A not in repr(found)


def test_a_glcbt_private_token_is_ignored_as_gitlab_does() -> None:
    # `return if api_request? && ::Authn::Tokens::CiJobToken.prefix?(current_token)`
    assert tokens.extract(a_request("/x", [("PRIVATE-TOKEN", A)])) is None
    assert tokens.extract(a_request("/x?private_token=" + A)) is None
    assert (
        credential(a_request("/x", [("PRIVATE-TOKEN", A), ("JOB-TOKEN", A)])).carrier
        is Carrier.JOB_TOKEN_HEADER
    )
    assert credential(a_request("/x", [("PRIVATE-TOKEN", B), ("JOB-TOKEN", A)])).secret == A


def test_other_credentials_alone_are_not_ours_to_judge() -> None:
    for headers in (
        [("PRIVATE-TOKEN", "glpat-x")],
        [("Authorization", "Bearer some-oauth")],
        [("Authorization", basic("alice", "pw"))],
        [("DEPLOY-TOKEN", "gldt-x")],
    ):
        assert tokens.extract(a_request("/x", headers)) is None
    assert tokens.extract(a_request("/x?token=glptt-trigger")) is None  # the trigger API's own


@pytest.mark.parametrize(
    "value",
    ["glcbt-" + "a" * 8200, "glcbt-a\u00e9b", "glcbt-a b", "glcbt-a%00b"],
)
def test_malformed_tokens_are_recognized(value: str) -> None:
    found = tokens.extract(
        a_request(
            "/x",
            [("JOB-TOKEN", value)] if "%" not in value else [],
        )
    )
    if "%" in value:
        found = tokens.extract(a_request("/x?job_token=" + value))
    assert isinstance(found, Malformed)
    assert value not in repr(found)


def test_the_secret_never_shows_in_repr() -> None:
    found = credential(a_request("/x", [("JOB-TOKEN", A)]))
    assert A not in repr(found)
    assert A not in str(found)
    assert found.fingerprint.startswith("sha256:")
    assert len(found.fingerprint) == 19


class TestBodies:
    def form(
        self, body: str, content_type: str | None = "application/x-www-form-urlencoded"
    ) -> RequestView:
        headers = [("Content-Type", content_type)] if content_type else []
        return a_request(
            "/x", [*headers, ("Content-Length", str(len(body)))], "POST", body.encode()
        )

    def json(self, document: object) -> RequestView:
        body = json.dumps(document).encode()
        return a_request("/x", [("Content-Type", "application/json; charset=utf-8")], "PUT", body)

    def test_form_body_parameters_count(self) -> None:
        assert credential(self.form("a=1&job_token=" + A)).carrier is Carrier.JOB_TOKEN_PARAM
        assert (
            credential(self.form("token=" + A, content_type=None)).secret == A
        )  # Rack: POST w/o type

    def test_json_top_level_keys_count(self) -> None:
        assert (
            credential(self.json({"job_token": A, "ref": "main"})).carrier
            is Carrier.JOB_TOKEN_PARAM
        )
        assert tokens.extract(self.json({"variables": {"job_token": A}})) is None  # top level only

    def test_body_and_query_conflict(self) -> None:
        view = RequestView(
            "POST",
            "/x?job_token=" + B,
            CIMultiDict([("Content-Type", "application/json")]),
            json.dumps({"job_token": A}).encode(),
        )
        assert isinstance(tokens.extract(view), Conflict)
        assert isinstance(tokens.extract(self.form("job_token=" + A + "&job_token=" + B)), Conflict)

    def test_duplicate_json_keys_conflict(self) -> None:
        body = ('{"job_token": "' + A + '", "job_token": "' + B + '"}').encode()
        view = a_request("/x", [("Content-Type", "application/json")], "POST", body)
        assert isinstance(tokens.extract(view), Conflict)

    def test_non_string_json_token_is_refused(self) -> None:
        assert isinstance(tokens.extract(self.json({"job_token": [A]})), Conflict)

    def test_gitlabs_lfs_json_type_is_read_as_json(self) -> None:
        # GitLab registers application/vnd.git-lfs+json as JSON (config/initializers/mime_types.rb).
        body = json.dumps({"job_token": A}).encode()
        view = a_request("/x", [("Content-Type", "application/vnd.git-lfs+json")], "POST", body)
        assert credential(view).carrier is Carrier.JOB_TOKEN_PARAM

    def test_unparseable_json_raises(self) -> None:
        view = a_request("/x", [("Content-Type", "application/json")], "POST", b'{"job_token": ')
        with pytest.raises(params.BodyError):
            tokens.extract(view)

    def test_other_content_types_are_not_read(self) -> None:
        view = a_request(
            "/x", [("Content-Type", "application/octet-stream")], "PUT", b"job_token=" + A.encode()
        )
        assert tokens.extract(view) is None


def test_a_method_override_form_field_is_refused() -> None:
    # Rack::MethodOverride reads `_method` from a POST's form body and reroutes the request.
    for body in (b"_method=DELETE", b"a=1&%5F%6Dethod=DELETE", b"[_method]=DELETE"):
        view = a_request(
            "/x", [("Content-Type", "application/x-www-form-urlencoded")], "POST", body
        )
        with pytest.raises(params.BodyError, match="_method"):
            tokens.extract(view)
    put = a_request(
        "/x", [("Content-Type", "application/x-www-form-urlencoded")], "PUT", b"_method=GET"
    )
    assert tokens.extract(put) is None  # only POSTs are overridden


@pytest.mark.parametrize("ref", ["%D9%A2%D9%A0", "%C2%B2", "99999999999999999999999", "0", "-10"])
def test_only_ascii_bigint_ids_are_numeric(ref: str) -> None:
    from urllib.parse import unquote

    from gateway.stores.grants import project_key

    key = project_key(unquote(ref))
    assert key is None or (isinstance(key, str) and not key.isascii())
    assert project_key("20") == 20
    assert project_key("Acme/App") == "acme/app"


class TestMultipart:
    CT = "multipart/form-data; boundary=XyZ"

    def view(self, body: bytes, content_type: str = CT) -> RequestView:
        return a_request("/x", [("Content-Type", content_type)], "POST", body)

    def test_a_named_part_is_a_parameter(self) -> None:
        body = (
            b'--XyZ\r\nContent-Disposition: form-data; name="job_token"\r\n\r\n'
            + A.encode()
            + b'\r\n--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nhello\r\n--XyZ--\r\n"
        )
        assert credential(self.view(body)).carrier is Carrier.JOB_TOKEN_PARAM
        assert credential(self.view(body, 'multipart/mixed; boundary="XyZ"')).secret == A

    def test_a_token_part_that_is_a_file_is_refused(self) -> None:
        body = (
            b'--XyZ\r\nContent-Disposition: form-data; name="token"; filename="t"\r\n\r\n'
            + A.encode()
            + b"\r\n--XyZ--\r\n"
        )
        assert isinstance(tokens.extract(self.view(body)), Conflict)

    def test_parts_without_tokens_are_nothing(self) -> None:
        body = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx\r\n--XyZ--\r\n'
        assert tokens.extract(self.view(body)) is None

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [(b"--XyZ\r\nno headers", CT), (b"garbage", CT), (b"--XyZ--\r\n", "multipart/form-data")],
    )
    def test_unsplittable_bodies_are_refused(self, body: bytes, content_type: str) -> None:
        with pytest.raises(params.BodyError):
            tokens.extract(self.view(body, content_type))

    @pytest.mark.parametrize(
        "body",
        [
            # Go decodes quoted-printable (Workhorse), Rack does not: `glcbt-` to Rails.
            b'--XyZ\r\nContent-Disposition: form-data; name="access_token"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=67lcbt-aaaa\r\n--XyZ--\r\n",
            # LF-only lines: Go reads them, Rack needs CRLF.
            b'--XyZ\nContent-Disposition: form-data; name="job_token"\n\nglcbt-aaaa\n--XyZ--\n',
            # a folded header line: which name is it?
            b'--XyZ\r\nContent-Disposition: form-data;\r\n name="job_token"\r\n\r\n'
            b"glcbt-aaaa\r\n--XyZ--\r\n",
            # two Content-Dispositions: Rack 2.2 and Go read different names.
            b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n'
            b'Content-Disposition: form-data; name="job_token"\r\n\r\nglcbt-aaaa\r\n--XyZ--\r\n',
        ],
        ids=["quoted-printable", "LF-only", "folded header", "two Content-Dispositions"],
    )
    def test_parts_readers_could_read_differently_are_refused(self, body: bytes) -> None:
        # The buffered body is read by the streamed bodies' strict `multipart.Scanner`.
        with pytest.raises(params.BodyError):
            tokens.extract(self.view(body))

    def test_two_content_types_are_refused(self) -> None:
        body = b'--XyZ\r\nContent-Disposition: form-data; name="x"\r\n\r\nv\r\n--XyZ--\r\n'
        headers = [("Content-Type", self.CT), ("Content-Type", "multipart/form-data; boundary=Q")]
        with pytest.raises(params.BodyError, match="more than one Content-Type"):
            tokens.extract(a_request("/x", headers, "POST", body))


@pytest.mark.parametrize(
    "types",
    [
        ["text/plain", "application/x-www-form-urlencoded"],
        ["application/x-www-form-urlencoded", "text/plain"],
        ["application/json", "application/x-www-form-urlencoded"],
    ],
)
def test_a_body_under_two_content_types_is_read_then_refused(types: list[str]) -> None:
    # Rack has one CONTENT_TYPE; a front server may keep the first, the last, or join them.
    headers = [("Content-Type", kind) for kind in types]
    view = a_request("/x", headers, "PUT", b"job_token=glcbt-aaaa")
    assert params.body_kind(view.headers, view.method) == "ambiguous"
    with pytest.raises(params.BodyError, match="more than one Content-Type"):
        tokens.extract(view)


@pytest.mark.parametrize("name", ["Job.Token", "Job~Token", "job!token", "Private.Token"])
def test_header_names_that_fold_to_a_credential_header_count(name: str) -> None:
    # CGI-style servers map every byte outside [A-Za-z0-9] to `_` (HTTP_JOB_TOKEN).
    found = tokens.extract(
        a_request(
            "/x", [(name, A if "Job" in name or "job" in name else "glpat-x"), ("JOB-TOKEN", A)]
        )
    )
    if "Private" in name:
        assert isinstance(found, Conflict)
    else:
        assert isinstance(found, Conflict)  # JOB-TOKEN header repeated
    assert isinstance(credential(a_request("/x", [("Job.Token", A)])), Credential)


def test_a_method_override_multipart_field_is_refused() -> None:
    # Rack::MethodOverride reads `req.POST`, which includes multipart form data.
    body = b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--XyZ--\r\n'
    view = a_request("/x", [("Content-Type", "multipart/form-data; boundary=XyZ")], "POST", body)
    with pytest.raises(params.BodyError, match="_method"):
        tokens.extract(view)


# ---- the reader is an object the gateway builds once and passes down


def test_readers_with_different_instance_prefixes_do_not_affect_each_other() -> None:
    custom = "mycorp-glcbt-abc"
    view = a_request("/x", [("Authorization", f"Bearer {custom}")])
    mycorp = tokens.Reader(job_token_prefix="mycorp-", api_prefix="/api/v4", relative_url_root="")
    assert isinstance(mycorp.read(view), Credential)
    assert isinstance(tokens.read(view), tokens.Candidate)  # GitLab's defaults: no such prefix
    assert isinstance(mycorp.read(view), Credential)


def test_the_header_memo_is_the_readers_own_and_bounded() -> None:
    reader = tokens.Reader()
    many = [(f"X-Odd-{index}", "v") for index in range(600)]
    assert reader.extract(a_request("/x", [*many, ("JOB-TOKEN", A)])) == credential(
        a_request("/x", [("JOB-TOKEN", A)])
    )
    assert reader.extract(a_request("/x", [("X-Odd-599", "v"), ("Job.Token", B)])) == Credential(
        Carrier.JOB_TOKEN_HEADER, tokens.digest(B), B
    )
    assert reader.extract(a_request("/x", [("X-" + "n" * 70, A)])) is None


async def test_the_gate_reads_with_a_reader_built_from_its_settings() -> None:
    from job_grants import a_gate

    gate = await a_gate(job_token_prefix="mycorp-")
    try:
        view = a_request("/api/v4/job", [("Authorization", "Bearer mycorp-glcbt-abc")])
        assert isinstance(gate.tokens.read(view), Credential)
        assert isinstance(tokens.read(view), tokens.Candidate)
    finally:
        await gate.close()


def test_the_gateway_reads_requests_only_with_a_reader_it_was_given() -> None:
    """`tokens.read`/`tokens.extract` read as a default GitLab: the gateway's own code must use
    the reader built from its Settings (`Gate.tokens`), or an instance prefix would be ignored."""
    package = Path(tokens.__file__).parents[1]
    calls = re.compile(r"(?<![\w.])tokens\.(read|extract)\(")
    offenders = [
        f"{path.relative_to(package.parent)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "tokens.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if calls.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []
