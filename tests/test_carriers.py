"""Route-family carriers (gateway/core/carriers.py) and what `tokens.read` makes of each of them.

Every family reads APIGuard's carriers plus its own (GitLab's `authenticate_with` declarations
and package helpers); a prefixed value is a job token, an unprefixed one in a carrier GitLab
shares with other credentials is a `Candidate` the gate resolves.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys

import pytest
from multidict import CIMultiDict

from gateway.core import conan_jwt, tokens
from gateway.core.carriers import DEFAULT, CarrierMap, Reading
from gateway.core.decision import Reason
from gateway.core.gate import Gate, unknown_credential_mode
from gateway.core.request import RequestView
from gateway.core.tokens import Candidate, Carrier, Conflict, Credential
from gateway.errors import ConfigError
from gateway.settings import Settings, UnknownCredential

API = "/api/v4"
JOB = "glcbt-carrier-job"
LEGACY = "a1b2c3d4e5f6legacy"  # a job token of GitLab < 16.9: no prefix


def view(target: str, headers: list[tuple[str, str]] | None = None) -> RequestView:
    return RequestView("GET", target, CIMultiDict(headers or []), None)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# ---- the family map


FAMILIES = {
    "/api/v4/projects/1/packages/conan/v1/conans/a/1/b+c/stable": "conan",
    "/api/v4/packages/conan/v1/ping": "conan",
    "/api/v4/projects/acme%2Fapp/packages/rubygems/api/v1/gems": "rubygems",
    "/api/v4/projects/1/packages/cargo/config.json": "cargo",
    "/api/v4/packages/terraform/modules/v1/grp/mod/aws/1.0.0/file?token=x": "terraform-modules",
    "/api/v4/packages/terraform/v1/modules/grp/mod/aws/versions": "terraform-modules",
    "/api/v4/projects/1/dependency_proxy/packages/npm/p/-/p-1.tgz": "dependency-proxy",
    "/api/v4/projects/1/packages/nuget/v2": "nuget",
    "/api/v4/groups/7/-/packages/nuget/index.json": "nuget",
    "/api/v4/projects/1/packages/pypi/simple": "packages",
    "/api/v4/projects/1/packages/%72ubygems/gems/x.gem": "rubygems",  # decoded, as Rails routes
    "/api/v4//projects/1/packages//rubygems/gems/x.gem": "rubygems",  # squeezed, as Rails does
    "/api/v4/projects/1/packages%2Fnuget/v2": "nuget",  # should %2F be read as a slash
    "/api/v4/projects/acme%2Fapp/%70ackages/nuget/v2": "nuget",  # `packages` itself escaped
    "/api/v4/projects/acme%2fapp/packages/cargo/x": "cargo",  # only encoded slashes (any case)
    "/api/v4/projects/acme%2Fapp/jobs/1/artifacts": "api",
    "/api/v4/projects/1/releases": "api",
    "/api/v4/projects/1/packages": "packages",
    "/gitlab/api/v4/projects/1/packages/pypi": "api",  # another root: not this map's
}


@pytest.mark.parametrize(("target", "family"), FAMILIES.items(), ids=FAMILIES.keys())
def test_each_target_has_its_family(target: str, family: str) -> None:
    assert CarrierMap(api_prefix=API, relative_url_root="").family_for(target).name == family


def test_the_map_follows_the_relative_url_root() -> None:
    carriers = CarrierMap(api_prefix=API, relative_url_root="/gitlab")
    assert carriers.family_for("/gitlab/api/v4/projects/1/packages/cargo/x").name == "cargo"
    assert carriers.family_for("/api/v4/projects/1/packages/cargo/x") is DEFAULT


def test_every_family_cites_gitlab() -> None:
    carriers = CarrierMap(api_prefix=API, relative_url_root="")
    for family in carriers.families:
        assert family.source.startswith(("lib/", "ee/lib/")), family.name
        assert family.paths
        assert family.readings
    assert carriers.headers == {"X-NUGET-APIKEY"}


# ---- what each carrier yields


def read(
    target: str, headers: list[tuple[str, str]], reader: tokens.Reader = tokens.DEFAULT_READER
) -> tokens.Extraction:
    return reader.read(view(target, headers))


CONAN = f"{API}/projects/1/packages/conan/v1/conans/a/1/b+c/stable"
RUBYGEMS = f"{API}/projects/1/packages/rubygems/api/v1/dependencies"
CARGO = f"{API}/projects/1/packages/cargo/config.json"
TERRAFORM = f"{API}/packages/terraform/modules/v1/grp/mod/aws/versions"
NUGET = f"{API}/projects/1/packages/nuget/v2"
PYPI = f"{API}/projects/1/packages/pypi/simple"
PLAIN = f"{API}/projects/1/releases"

JOB_TOKENS = {
    "Bearer": (PLAIN, [("Authorization", f"Bearer {JOB}")], Carrier.BEARER),
    "bare Authorization (RubyGems)": (
        RUBYGEMS,
        [("Authorization", JOB)],
        Carrier.AUTHORIZATION_VALUE,
    ),
    "any scheme, last word (Cargo)": (
        CARGO,
        [("Authorization", f"Token {JOB}")],
        Carrier.AUTHORIZATION_LAST_WORD,
    ),
    "last word, no scheme (Terraform modules)": (
        TERRAFORM,
        [("Authorization", JOB)],
        Carrier.AUTHORIZATION_LAST_WORD,
    ),
    "X-Nuget-Apikey": (NUGET, [("X-Nuget-Apikey", JOB)], Carrier.API_KEY_HEADER),
    "X_NuGet_ApiKey (Rack folds it)": (NUGET, [("X_NuGet_ApiKey", JOB)], Carrier.API_KEY_HEADER),
    "Conan JWT": (
        CONAN,
        [("Authorization", "Bearer " + jwt({"access_token": JOB, "user_id": 3}))],
        Carrier.CONAN_JWT,
    ),
    "Basic any user (Conan)": (
        CONAN,
        [("Authorization", basic("x", JOB))],
        Carrier.BASIC_ANY_USER,
    ),
}


@pytest.mark.parametrize(("target", "headers", "carrier"), JOB_TOKENS.values(), ids=JOB_TOKENS)
def test_a_prefixed_value_in_a_family_carrier_is_a_job_token(
    target: str, headers: list[tuple[str, str]], carrier: Carrier
) -> None:
    found = read(target, headers)
    assert isinstance(found, Credential)
    assert (found.carrier, found.digest) == (carrier, tokens.digest(JOB))


CANDIDATES = {
    "Bearer": (PLAIN, [("Authorization", f"Bearer {LEGACY}")], Carrier.BEARER),
    "access_token param": (f"{PLAIN}?access_token={LEGACY}", [], Carrier.ACCESS_TOKEN_PARAM),
    "bare Authorization (RubyGems)": (
        RUBYGEMS,
        [("Authorization", LEGACY)],
        Carrier.AUTHORIZATION_VALUE,
    ),
    "any scheme, last word (Cargo)": (
        CARGO,
        [("Authorization", f"Token {LEGACY}")],
        Carrier.AUTHORIZATION_LAST_WORD,
    ),
    "X-Nuget-Apikey": (NUGET, [("X-Nuget-Apikey", LEGACY)], Carrier.API_KEY_HEADER),
    "Conan JWT": (
        CONAN,
        [("Authorization", "Bearer " + jwt({"access_token": LEGACY, "user_id": 3}))],
        Carrier.CONAN_JWT,
    ),
    "Basic any user (Conan)": (
        CONAN,
        [("Authorization", basic("x", LEGACY))],
        Carrier.BASIC_ANY_USER,
    ),
    "Basic any user (PyPI)": (
        PYPI,
        [("Authorization", basic("x", LEGACY))],
        Carrier.BASIC_ANY_USER,
    ),
}


@pytest.mark.parametrize(("target", "headers", "carrier"), CANDIDATES.values(), ids=CANDIDATES)
def test_an_unprefixed_value_in_a_shared_carrier_is_a_candidate(
    target: str, headers: list[tuple[str, str]], carrier: Carrier
) -> None:
    found = read(target, headers)
    assert isinstance(found, Candidate)
    assert (found.carrier, found.digest, found.others) == (carrier, tokens.digest(LEGACY), ())
    assert LEGACY not in repr(found)
    # `extract` keeps its contract: definite job tokens only.
    assert tokens.extract(view(target, headers)) is None


def test_family_carriers_are_not_read_on_other_routes() -> None:
    assert read(PLAIN, [("Authorization", JOB)]) is None  # a bare value: not http_token here
    assert read(PLAIN, [("X-Nuget-Apikey", JOB)]) is None
    assert read(PLAIN, [("Authorization", basic("x", LEGACY))]) is None  # only gitlab-ci-token
    conan = "Bearer " + jwt({"access_token": JOB, "user_id": 3})
    assert isinstance(read(PLAIN, [("Authorization", conan)]), Candidate)  # a JWT, as Bearer


def test_other_gitlab_token_types_are_never_candidates() -> None:
    for value in ("glpat-abc", "gldt-abc", "gloas-abc"):
        assert read(PLAIN, [("Authorization", f"Bearer {value}")]) is None
        assert read(NUGET, [("X-Nuget-Apikey", value)]) is None
    # A Conan JWT wrapping a personal access token wraps its numeric id: not a token.
    pat = "Bearer " + jwt({"access_token": 42, "user_id": 3})
    assert isinstance(read(CONAN, [("Authorization", pat)]), Candidate)  # the JWT itself
    deploy = "Bearer " + jwt({"access_token": "gldt-abc", "user_id": "deployer"})
    assert read(CONAN, [("Authorization", deploy)]) is None


def test_the_instance_prefix_makes_a_job_token() -> None:
    custom = "mycorp-glcbt-abc"
    assert isinstance(read(PLAIN, [("Authorization", f"Bearer {custom}")]), Candidate)
    mycorp = tokens.Reader(job_token_prefix="mycorp-", api_prefix=API, relative_url_root="")
    found = read(PLAIN, [("Authorization", f"Bearer {custom}")], mycorp)
    assert isinstance(found, Credential)
    assert found.digest == tokens.digest(custom)
    assert isinstance(read(PLAIN, [("Authorization", f"Bearer {JOB}")], mycorp), Credential)
    # The instance's other token types are not job tokens either.
    assert read(PLAIN, [("Authorization", "Bearer mycorp-glpat-abc")], mycorp) is None
    # PRIVATE-TOKEN skips the bare prefix only (find_personal_access_token).
    assert read(PLAIN, [("PRIVATE-TOKEN", JOB)], mycorp) is None
    # Another credential, not skipped:
    assert read(PLAIN, [("PRIVATE-TOKEN", custom)], mycorp) is None


def test_the_terraform_registry_jwt_in_the_token_param_wraps_the_job_token() -> None:
    target = f"{API}/packages/terraform/modules/v1/grp/mod/aws/1.0.0/file?token="
    found = read(target + jwt({"token": JOB}), [])
    assert isinstance(found, Credential)
    assert (found.carrier, found.digest) == (Carrier.TOKEN_PARAM_JWT, tokens.digest(JOB))
    # Elsewhere the `token` param is a job token as written.
    plain = read(f"{PLAIN}?token=" + jwt({"token": JOB}), [])
    assert isinstance(plain, Credential)
    assert plain.carrier is Carrier.TOKEN_PARAM


CONFLICTS = {
    "a job token and a candidate": (PLAIN, [("JOB-TOKEN", JOB), ("Authorization", "Bearer x")]),
    "two different candidates": (f"{PLAIN}?access_token=one", [("Authorization", "Bearer two")]),
    "Basic anywhere in the value (Conan)": (CONAN, [("Authorization", "Bearer Basic eHg6eXk=")]),
    "the key header twice": (NUGET, [("X-Nuget-Apikey", "one"), ("X-Nuget-Apikey", "one")]),
    "the last word and Basic disagree": (CARGO, [("Authorization", basic("gitlab-ci-token", JOB))]),
    "bare value and JOB-TOKEN differ": (
        RUBYGEMS,
        [("Authorization", JOB), ("JOB-TOKEN", "glcbt-2")],
    ),
}


@pytest.mark.parametrize(
    "case", [c for c in CONFLICTS.values() if c], ids=[k for k, c in CONFLICTS.items() if c]
)
def test_conflict_rules_extend_to_every_carrier(case: tuple[str, list[tuple[str, str]]]) -> None:
    target, headers = case
    assert isinstance(read(target, headers), Conflict)


def test_a_candidate_remembers_the_other_credentials_next_to_it() -> None:
    found = read(PLAIN, [("Authorization", f"Bearer {LEGACY}"), ("PRIVATE-TOKEN", "glpat-x")])
    assert isinstance(found, Candidate)
    assert found.others == ("PRIVATE-TOKEN header",)
    conflict = found.conflict()
    assert conflict is not None
    assert "other credentials" in conflict.detail
    alone = read(PLAIN, [("Authorization", f"Bearer {LEGACY}")])
    assert isinstance(alone, Candidate)
    assert alone.conflict() is None
    assert alone.credential().digest == tokens.digest(LEGACY)


def test_the_same_value_as_job_token_and_candidate_is_one_job_token() -> None:
    found = read(PLAIN, [("JOB-TOKEN", LEGACY), ("Authorization", f"Bearer {LEGACY}")])
    assert isinstance(found, Credential)
    assert found.digest == tokens.digest(LEGACY)


def test_a_malformed_candidate_is_another_credential() -> None:
    assert read(PLAIN, [("Authorization", "Bearer " + "x" * 9000)]) is None


# ---- the JWT reader


def test_the_conan_jwt_reader_needs_both_claims_and_a_jwt_shape() -> None:
    assert conan_jwt.conan_access_token(jwt({"access_token": JOB, "user_id": 1})) == JOB
    assert conan_jwt.conan_access_token(jwt({"access_token": JOB})) is None  # no user_id
    assert conan_jwt.conan_access_token(jwt({"access_token": ""})) is None
    assert conan_jwt.conan_access_token("not.a.jwt") is None
    assert conan_jwt.conan_access_token("a.b") is None
    assert conan_jwt.conan_access_token("x." + "e" * 20000 + ".y") is None
    deep = base64.urlsafe_b64encode(b"[" * 100000).decode()
    assert conan_jwt.claim(f"a.{deep}.b", "token") is None
    assert conan_jwt.claim(jwt({"token": ["x"]}), "token") is None


def test_readings_are_labels() -> None:
    assert {reading.value for reading in Reading} >= {"Conan JWT", "Authorization last word"}


# ---- settings


def test_the_carrier_settings_are_validated() -> None:
    assert Settings().unknown_credential is UnknownCredential.AUTO
    assert Settings().job_token_prefix == ""
    assert Settings(job_token_prefix="mycorp-").job_token_prefix == "mycorp-"
    for bad in ({"job_token_prefix": "my corp"}, {"unknown_credential": "maybe"}):
        with pytest.raises(ConfigError, match="--"):
            Settings.build(**bad)


def test_auto_resolves_with_upstream_validation() -> None:
    assert unknown_credential_mode(Settings()) is UnknownCredential.FORWARD
    on = Settings(upstream="http://127.0.0.1:9", upstream_validation=True)
    assert unknown_credential_mode(on) is UnknownCredential.UPSTREAM
    forced = Settings(upstream_validation=True, unknown_credential="forward")
    assert unknown_credential_mode(forced) is UnknownCredential.FORWARD


def test_check_reads_the_instance_prefix() -> None:
    # `check --header` decides a request as the proxy would, with the same prefix setting.
    args = [sys.executable, "-m", "gateway", "check", "GET", f"{PLAIN}", "--store", "memory://"]
    args += ["--header", "Authorization: Bearer mycorp-glcbt-x"]
    plain = subprocess.run(args, capture_output=True, text=True, check=False)
    assert plain.returncode == 0
    assert "no_token" in plain.stdout
    prefixed = subprocess.run(
        [*args, "--job-token-prefix", "mycorp-"], capture_output=True, text=True, check=False
    )
    assert prefixed.returncode == 1
    assert "token_invalid" in prefixed.stdout


def test_serve_refuses_upstream_mode_without_upstream_validation() -> None:
    args = [sys.executable, "-m", "gateway", "serve", "--upstream", "http://127.0.0.1:9"]
    args += ["--store", "memory://", "--port", "0", "--admin-port", "0"]
    answer = subprocess.run(
        [*args, "--unknown-credential", "upstream"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert answer.returncode == 2
    assert "--unknown-credential upstream needs --upstream-validation" in answer.stderr


async def test_a_candidate_is_never_forwarded_when_the_store_cannot_answer() -> None:
    # Fail closed: an unrecognised value may be a job token the store would know.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(store=f"redis://127.0.0.1:{port}/0", store_timeout=0.5)
    gate = await Gate.open(settings)
    try:
        decision = await gate.evaluate(view(PLAIN, [("Authorization", f"Bearer {LEGACY}")]))
    finally:
        await gate.close()
    assert (decision.reason, decision.status) == (Reason.STORE_UNAVAILABLE, 503)
