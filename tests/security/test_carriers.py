"""Every carrier GitLab reads a job token from is judged: a real gateway in front of a real
GitLab-like upstream (it answers `GET /api/v4/job` as lib/api/ci/jobs.rb does and records
everything else).

Each case sends a job token of acme/app (#10) to a project whose allowlist does not admit it
(or to a route job tokens cannot use through the gateway): the gateway must answer itself and
the upstream must receive nothing. The tokens: an unprefixed one of GitLab < 16.9 the store
knows, one with the instance prefix, one only the upstream knows, and the usual prefixed one,
in each family's carriers (gateway/core/carriers.py). Then `--unknown-credential` decides what an
unrecognised value in a shared carrier is.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from fixtures.upstream import Received, Upstream

from gateway.core import tokens
from gateway.core.gate import Gate
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.stores.grants import parse_grants
from gateway.stores.memory import MemoryStore

from .conftest import APP, GRANTS_YAML, Answer, Attack, assert_forwarded, http

LEGACY = "a1b2c3legacyappjob"  # job 7101 in acme/app, no prefix (GitLab < 16.9), in the store
CUSTOM = "mycorp-glcbt-app-job"  # job 7102 in acme/app, the instance prefix `mycorp-`
UPSTREAM_ONLY = "d4e5f6upstreamonly"  # job 7103 in acme/app: only the upstream knows it
NOT_A_JOB = "z9y8x7oauthtoken"  # an OAuth token, say: the upstream says it is no job token

EXTRA_JOBS = f"""
  - {{token: {LEGACY}, job_id: 7101, project: acme/app, expires_at: "2099-01-01T00:00:00Z"}}
  - {{token: {CUSTOM}, job_id: 7102, project: acme/app, expires_at: "2099-01-01T00:00:00Z"}}
allowlists:"""

DENIED = "/api/v4/projects/20/releases"  # acme/app may not read_releases on #20
ALLOWED = "/api/v4/projects/20/deployments"  # read_deployments: granted
SECRET = "/api/v4/projects/21"  # acme/secret admits only other/outsider


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def jwt(claims: dict[str, object]) -> str:
    """A JWT shaped like GitLab's (the gateway reads its claims, GitLab checks its signature)."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class GitLab:
    """The upstream: `GET /api/v4/job` answers for UPSTREAM_ONLY (and the store's tokens, as a
    real GitLab would); every other request is recorded in `upstream.received`."""

    def __init__(self) -> None:
        self.upstream = Upstream()
        self.job_checks: list[str] = []  # fingerprints of the values asked about

    async def job(self, request: web.Request) -> web.Response:
        token = request.headers.get("JOB-TOKEN", "")
        self.job_checks.append(tokens.fingerprint(tokens.digest(token)))
        known = {UPSTREAM_ONLY: 7103, LEGACY: 7101, CUSTOM: 7102, APP: 7001}
        if token not in known:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        job_id = known[token]
        body = {
            "id": job_id,
            "status": "running",
            "pipeline": {"id": 1, "project_id": 10},
            "web_url": f"http://{request.host}/acme/app/-/jobs/{job_id}",
        }
        return web.json_response(body)

    async def record(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.upstream.received.append(
            Received(request.method, request.raw_path, list(request.headers.items()), len(body), "")
        )
        return web.json_response({"path": request.raw_path})


@pytest.fixture
async def a_gitlab(aiohttp_server: Any) -> GitLab:
    gitlab = GitLab()
    app = web.Application()
    app.router.add_get("/api/v4/job", gitlab.job)
    app.router.add_route("*", "/{tail:.*}", gitlab.record)
    server = await aiohttp_server(app)
    gitlab.upstream.url = str(server.make_url("")).rstrip("/")
    return gitlab


Start = Callable[..., Awaitable[Attack]]


@pytest.fixture
async def a_carrier_gateway(
    a_gitlab: GitLab, a_gateway: Callable[..., Awaitable[Any]]
) -> AsyncIterator[Start]:
    """A real gateway (`a_gateway`) over a memory store with the security grants plus LEGACY
    and CUSTOM, instance prefix `mycorp-`, in front of `a_gitlab`."""
    gates: list[Gate] = []

    async def start(**overrides: Any) -> Attack:
        overrides.setdefault("job_token_prefix", "mycorp-")
        url = a_gitlab.upstream.url
        settings = Settings(upstream=url, store="memory://", **overrides)
        grants = parse_grants(GRANTS_YAML.replace("allowlists:", EXTRA_JOBS, 1), "carriers")
        gate = await Gate.open(settings, store=MemoryStore(grants))
        gates.append(gate)
        running = await a_gateway(url, gate=gate, **overrides)
        return Attack(running.port, a_gitlab.upstream)

    yield start
    for gate in gates:
        await gate.close()


def assert_judged(answer: Answer) -> None:
    """The gateway answered itself (401/403, its reason set) and the upstream got nothing."""
    assert answer.status in (401, 403), answer.describe()
    assert answer.reason is not None, answer.describe()
    assert answer.forwarded == [], answer.describe()


CONAN_JWT = jwt({"access_token": APP, "user_id": 3})
CONAN_LEGACY_JWT = jwt({"access_token": LEGACY, "user_id": 3})
TERRAFORM_FILE = "/api/v4/packages/terraform/modules/v1/acme/mod/aws/1.0.0/file"

# (method, target, headers): a job token of acme/app where its grants do not reach.
CARRIERS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "Bearer, unprefixed (GitLab < 16.9)": ("GET", DENIED, [("Authorization", f"Bearer {LEGACY}")]),
    "Bearer, instance prefix": ("GET", DENIED, [("Authorization", f"Bearer {CUSTOM}")]),
    "Bearer, known upstream only": ("GET", DENIED, [("Authorization", f"Bearer {UPSTREAM_ONLY}")]),
    "access_token param, unprefixed": ("GET", f"{DENIED}?access_token={LEGACY}", []),
    "bearer_token param, instance prefix": ("GET", f"{DENIED}?bearer_token={CUSTOM}", []),
    "Basic any user (Conan)": (
        "GET",
        f"{SECRET}/packages/conan/v1/conans/search?q=x",
        [("Authorization", basic("anyone", LEGACY))],
    ),
    "Basic any user (PyPI)": (
        "GET",
        f"{SECRET}/packages/pypi/simple",
        [("Authorization", basic("anyone", UPSTREAM_ONLY))],
    ),
    "Conan JWT (job token inside)": (
        "GET",
        f"{SECRET}/packages/conan/v1/conans/search?q=x",
        [("Authorization", f"Bearer {CONAN_JWT}")],
    ),
    "Conan JWT (unprefixed job token inside)": (
        "GET",
        f"{SECRET}/packages/conan/v1/users/check_credentials",
        [("Authorization", f"Bearer {CONAN_LEGACY_JWT}")],
    ),
    "Conan users/authenticate, Basic any user": (
        "GET",
        f"{SECRET}/packages/conan/v1/users/authenticate",
        [("Authorization", basic("anyone", APP))],
    ),
    "bare Authorization (RubyGems)": (
        "GET",
        f"{SECRET}/packages/rubygems/api/v1/dependencies",
        [("Authorization", LEGACY)],
    ),
    "bare Authorization, prefixed (RubyGems)": (
        "POST",
        f"{SECRET}/packages/rubygems/api/v1/gems",
        [("Authorization", APP)],
    ),
    "any scheme, last word (Cargo)": (
        "GET",
        f"{SECRET}/packages/cargo/config.json",
        [("Authorization", f"Token {LEGACY}")],
    ),
    "any scheme, last word (Terraform modules)": (
        "GET",
        "/api/v4/packages/terraform/modules/v1/acme/mod/aws/versions",
        [("Authorization", f"Anything {UPSTREAM_ONLY}")],
    ),
    "Terraform registry JWT in ?token=": (
        "GET",
        f"{TERRAFORM_FILE}?token={jwt({'token': APP})}",
        [],
    ),
    "X-Nuget-Apikey (NuGet)": ("PUT", f"{SECRET}/packages/nuget/", [("X-Nuget-Apikey", LEGACY)]),
    "X-NuGet-ApiKey, prefixed (NuGet)": (
        "DELETE",
        f"{SECRET}/packages/nuget/pkg/1.0.0",
        [("X-NuGet-ApiKey", CUSTOM)],
    ),
}


@pytest.mark.parametrize(("method", "target", "headers"), CARRIERS.values(), ids=CARRIERS)
async def test_every_carrier_gitlab_reads_is_judged(
    a_carrier_gateway: Start, method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    attack = await a_carrier_gateway(upstream_validation=True)  # unknown_credential: auto

    answer = await attack.raw(http(method, target, headers))

    assert_judged(answer)


async def test_the_same_carriers_reach_the_upstream_where_the_grants_allow(
    a_carrier_gateway: Start,
) -> None:
    attack = await a_carrier_gateway(upstream_validation=True)
    own_conan = "/api/v4/projects/10/packages/conan/v1/users/authenticate"
    for target, headers in (
        (ALLOWED, [("Authorization", f"Bearer {LEGACY}")]),
        (ALLOWED, [("Authorization", f"Bearer {CUSTOM}")]),
        (ALLOWED, [("Authorization", f"Bearer {UPSTREAM_ONLY}")]),
        (f"{ALLOWED}?access_token={LEGACY}", []),
        (own_conan, [("Authorization", basic("anyone", LEGACY))]),  # the exchange: no refusal
        (
            "/api/v4/projects/10/packages/conan/v1/conans/search",
            [("Authorization", f"Bearer {CONAN_JWT}")],
        ),
    ):
        received = assert_forwarded(await attack.raw(http("GET", target, headers)), target)
        for name, value in headers:  # forwarded unchanged
            assert received.header(name) == [value]


async def test_a_job_token_next_to_another_credential_is_a_conflict_in_every_carrier(
    a_carrier_gateway: Start,
) -> None:
    attack = await a_carrier_gateway(upstream_validation=True)
    cases = [
        (DENIED, [("JOB-TOKEN", APP), ("Authorization", f"Bearer {UPSTREAM_ONLY}")]),
        (DENIED, [("Authorization", f"Bearer {LEGACY}"), ("PRIVATE-TOKEN", "glpat-x")]),
        (f"{SECRET}/packages/nuget/", [("X-Nuget-Apikey", LEGACY), ("JOB-TOKEN", APP)]),
        (
            f"{SECRET}/packages/rubygems/api/v1/gems",
            [("Authorization", CUSTOM), ("JOB-TOKEN", APP)],
        ),
        (f"{DENIED}?access_token={LEGACY}", [("Authorization", f"Bearer {UPSTREAM_ONLY}")]),
    ]
    for target, headers in cases:
        answer = await attack.raw(http("GET", target, headers))
        assert answer.status == 400, answer.describe()
        assert answer.reason == "credential_conflict", answer.describe()
        assert answer.forwarded == [], answer.describe()


# ---- --unknown-credential: an unrecognised value in a shared carrier


async def test_upstream_mode_asks_the_upstream_and_judges_what_it_recognises(
    a_carrier_gateway: Start, a_gitlab: GitLab
) -> None:
    attack = await a_carrier_gateway(upstream_validation=True, unknown_credential="upstream")

    judged = await attack.raw(http("GET", DENIED, [("Authorization", f"Bearer {UPSTREAM_ONLY}")]))
    assert_judged(judged)
    assert judged.reason == "insufficient_permissions"

    other = [("Authorization", f"Bearer {NOT_A_JOB}")]
    for _ in range(3):  # another credential: forwarded unchanged, asked about once
        received = assert_forwarded(await attack.raw(http("GET", DENIED, other)), DENIED)
        assert received.header("Authorization") == [f"Bearer {NOT_A_JOB}"]
    assert a_gitlab.job_checks.count(tokens.fingerprint(tokens.digest(NOT_A_JOB))) == 1


async def test_forward_mode_forwards_what_the_store_does_not_know(
    a_carrier_gateway: Start, a_gitlab: GitLab, captured_logs: Any
) -> None:
    attack = await a_carrier_gateway(upstream_validation=True, unknown_credential="forward")

    headers = [("Authorization", f"Bearer {UPSTREAM_ONLY}")]
    received = assert_forwarded(await attack.raw(http("GET", DENIED, headers)), DENIED)
    assert received.header("Authorization") == [f"Bearer {UPSTREAM_ONLY}"]
    assert a_gitlab.job_checks == []  # never asked: treated as another credential
    # Logged with its reason, by fingerprint only.
    text = json.dumps(captured_logs.lines())
    assert "forwarded as another credential" in text
    assert tokens.fingerprint(tokens.digest(UPSTREAM_ONLY)) in text
    assert UPSTREAM_ONLY not in text
    # What the store knows is still a job token, and judged.
    assert_judged(await attack.raw(http("GET", DENIED, [("Authorization", f"Bearer {LEGACY}")])))


async def test_auto_without_upstream_validation_forwards(
    a_carrier_gateway: Start, a_gitlab: GitLab
) -> None:
    attack = await a_carrier_gateway()  # upstream_validation off: auto is forward
    headers = [("Authorization", f"Bearer {NOT_A_JOB}")]
    assert_forwarded(await attack.raw(http("GET", DENIED, headers)), DENIED)
    assert a_gitlab.job_checks == []


async def test_upstream_mode_without_upstream_validation_refuses_to_start() -> None:
    settings = Settings(
        upstream="http://127.0.0.1:9", store="memory://", unknown_credential="upstream"
    )
    with pytest.raises(
        ConfigError, match="--unknown-credential upstream needs --upstream-validation"
    ):
        await Gate.open(settings, store=MemoryStore())
