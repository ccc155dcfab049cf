"""Real clients through a real gateway process, in front of a GitLab-like package registry.

curl, pip, npm and python-gitlab each talk to `python -m gateway serve` (a SQLite store loaded
by `python -m gateway store load`) on a loopback port, which forwards to the registry fixture
(tests/fixtures/registry.py). Each test checks what the client reports (exit status, output,
files) and what the registry received (raw path, credentials), or, for a denial, GitLab's
exact message and the gateway's reason, with nothing forwarded. No network beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gitlab
import pytest
import requests
from fixtures.proxy import GatewayProcess
from fixtures.registry import Registry
from job_grants import basic

from gateway.core import tokens

A_JOB_TOKEN = "glcbt-acme-app-job-7001"  # job 7001 of acme/app (#10)
REGISTRY_PROJECT = 20  # acme/app may read its packages and deployments
VAULT_PROJECT = 30  # acme/app may read its releases only

GRANTS = f"""
projects:
  - {{id: 10, path: acme/app}}
  - {{id: {REGISTRY_PROJECT}, path: acme/registry}}
  - {{id: {VAULT_PROJECT}, path: acme/vault}}
jobs:
  - {{token: {A_JOB_TOKEN}, job_id: 7001, project: acme/app, expires_at: "2099-01-01T00:00:00Z"}}
allowlists:
  - project: acme/registry
    entries:
      - {{source: acme/app, default_permissions: false,
          policies: [read_packages, read_deployments]}}
  - project: acme/vault
    entries:
      - {{source: acme/app, default_permissions: false, policies: [read_releases]}}
"""


def insufficient(project: int, permission: str) -> str:
    """GitLab's message (lib/api/helpers.rb `job_token_policies_unauthorized_message`)."""
    return (
        f"403 Forbidden - Insufficient permissions to access this resource in project "
        f"#{project}. The following token permission is required: {permission}."
    )


CLIENT_TIMEOUT = 60


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT
    )


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without any proxy, pip or npm settings of this machine."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if "proxy" not in name.lower() and not name.upper().startswith(("PIP_", "NPM_CONFIG_"))
    }
    return {**kept, "HOME": str(home), "NO_PROXY": "*", "no_proxy": "*", **extra}


# ---- fixtures


@pytest.fixture(scope="module")
def a_token_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store loaded with GRANTS by the real `store load` command."""
    directory = tmp_path_factory.mktemp("real-clients-store")
    grants = directory / "grants.yaml"
    grants.write_text(GRANTS)
    url = f"sqlite:///{directory / 'gateway.db'}"
    command = [sys.executable, "-m", "gateway", "store", "load", str(grants), "--store", url]
    command.append("--create")
    loaded = run(command, dict(os.environ), directory)
    assert loaded.returncode == 0, loaded.stderr
    assert A_JOB_TOKEN not in (directory / "gateway.db").read_bytes().decode("latin-1")
    return url


@pytest.fixture
def a_gateway_in_front(
    a_gateway_process: Callable[..., GatewayProcess], a_registry: Registry, a_token_store: str
) -> GatewayProcess:
    """`python -m gateway serve` in front of the registry, with the loaded store."""
    return a_gateway_process("--upstream", a_registry.url, "--store", a_token_store)


@pytest.fixture
def a_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


# ---- curl


@dataclass(frozen=True)
class CurlAnswer:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> object:
        return json.loads(self.body)


def curl(url: str, home: Path, *headers: str) -> CurlAnswer:
    command = ["curl", "-q", "-sS", "-i", "--max-time", "30", "--noproxy", "*", url]
    for header in headers:
        command += ["-H", header]
    done = subprocess.run(
        command, env=isolated_env(home), cwd=home, capture_output=True, timeout=CLIENT_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.decode().partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    fields = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return CurlAnswer(int(status_line.split()[1]), fields, body)


@pytest.fixture
def with_curl() -> None:
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is required in CI (scripts/system-deps.sh installs it)")
        pytest.skip("curl is not installed (make system-deps installs it as root)")


@pytest.mark.usefixtures("with_curl")
def test_curl_with_a_job_token_header_reaches_the_registry(
    a_gateway_in_front: GatewayProcess, a_registry: Registry, a_home: Path
) -> None:
    target = f"/api/v4/projects/{REGISTRY_PROJECT}/deployments"
    answer = curl(a_gateway_in_front.url + target, a_home, f"JOB-TOKEN: {A_JOB_TOKEN}")
    assert answer.status == 200
    assert answer.json() == [
        {
            "id": 41,
            "iid": 3,
            "ref": "main",
            "sha": "a91957a858320c0e17f3a0eca7cfacbff50ea29a",
            "status": "success",
            "created_at": "2024-05-01T10:00:00.000Z",
            "environment": {"id": 9, "name": "production", "project_id": REGISTRY_PROJECT},
        }
    ]
    assert answer.headers["x-total"] == "1"  # the registry's own headers come back
    (seen,) = a_registry.received
    assert seen.raw_path == target
    assert seen.header("JOB-TOKEN") == [A_JOB_TOKEN]
    line = a_gateway_in_front.wait_for_event("request")[-1]
    assert (line["status"], line["reason"]) == (200, "policies_granted")


@pytest.mark.usefixtures("with_curl")
def test_curl_is_refused_what_the_allowlist_does_not_grant(
    a_gateway_in_front: GatewayProcess, a_registry: Registry, a_home: Path
) -> None:
    target = f"/api/v4/projects/{VAULT_PROJECT}/deployments"
    answer = curl(a_gateway_in_front.url + target, a_home, f"JOB-TOKEN: {A_JOB_TOKEN}")
    assert answer.status == 403
    assert answer.json() == {"message": insufficient(VAULT_PROJECT, "read_deployments")}
    assert answer.headers["x-gateway-reason"] == "insufficient_permissions"
    assert answer.headers["content-type"].startswith("application/json")
    assert a_registry.received == []


@pytest.mark.usefixtures("with_curl")
def test_curl_with_a_token_in_the_query_is_forwarded_as_is_and_redacted_in_the_log(
    a_gateway_in_front: GatewayProcess, a_registry: Registry, a_home: Path
) -> None:
    target = f"/api/v4/projects/{REGISTRY_PROJECT}/deployments?job_token={A_JOB_TOKEN}&sort=desc"
    answer = curl(a_gateway_in_front.url + target, a_home)
    assert answer.status == 200
    (seen,) = a_registry.received
    assert seen.raw_path == target
    line = a_gateway_in_front.wait_for_event("request")[-1]
    assert line["path"] == (
        f"/api/v4/projects/{REGISTRY_PROJECT}/deployments?job_token=[REDACTED]&sort=desc"
    )
    assert line["fingerprint"] == tokens.fingerprint(tokens.digest(A_JOB_TOKEN))
    assert A_JOB_TOKEN not in a_gateway_in_front.log_text()


@pytest.mark.usefixtures("with_curl")
def test_curl_with_an_unknown_job_token_is_unauthorized(
    a_gateway_in_front: GatewayProcess, a_registry: Registry, a_home: Path
) -> None:
    target = f"/api/v4/projects/{REGISTRY_PROJECT}/deployments"
    answer = curl(a_gateway_in_front.url + target, a_home, "JOB-TOKEN: glcbt-no-such-job")
    assert answer.status == 401
    assert answer.json() == {"message": "401 Unauthorized"}
    assert answer.headers["x-gateway-reason"] == "token_invalid"
    assert a_registry.received == []


@pytest.mark.usefixtures("with_curl")
def test_curl_without_credentials_is_forwarded_and_the_registry_asks_for_them(
    a_gateway_in_front: GatewayProcess, a_registry: Registry, a_home: Path
) -> None:
    target = f"/api/v4/projects/{REGISTRY_PROJECT}/packages/pypi/simple/acme-widgets/"
    answer = curl(a_gateway_in_front.url + target, a_home)
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Basic realm="GitLab Packages Registry"'
    assert "x-gateway-reason" not in answer.headers  # the registry's answer, not the gateway's
    assert [seen.raw_path for seen in a_registry.received] == [target]


# ---- pip


def pip_download(index: str, destination: Path, home: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "download", "-vv", "--no-deps", "--isolated"]
    command += ["--no-cache-dir", "--disable-pip-version-check", "--no-input"]
    command += ["--keyring-provider", "disabled", "--retries", "0", "--timeout", "20"]
    command += ["--only-binary", ":all:", "--index-url", index, "acme-widgets"]
    command += ["-d", str(destination)]
    return run(command, isolated_env(home, PIP_CONFIG_FILE=os.devnull), home)


def pypi_index(gateway: GatewayProcess, project: int) -> str:
    """The index URL GitLab documents for CI jobs: the job token as gitlab-ci-token's password."""
    simple = f"/api/v4/projects/{project}/packages/pypi/simple"
    return f"http://gitlab-ci-token:{A_JOB_TOKEN}@127.0.0.1:{gateway.port}{simple}"


def test_pip_downloads_a_wheel_with_the_job_token_as_basic_auth(
    a_gateway_in_front: GatewayProcess, a_registry: Registry, a_home: Path
) -> None:
    downloads = a_home / "downloads"
    done = pip_download(pypi_index(a_gateway_in_front, REGISTRY_PROJECT), downloads, a_home)
    assert done.returncode == 0, done.stdout + done.stderr
    wheel = a_registry.wheel
    landed = downloads / wheel.filename
    assert landed.is_file(), done.stdout
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == wheel.sha256
    packages = f"/api/v4/projects/{REGISTRY_PROJECT}/packages/pypi"
    authorized = basic("gitlab-ci-token", A_JOB_TOKEN)
    asked = [(seen.raw_path, seen.header("Authorization")) for seen in a_registry.received]
    # pip sends the index URL's credentials up front, to the page and to the file it links.
    assert (f"{packages}/simple/acme-widgets/", [authorized]) in asked
    assert (f"{packages}/files/{wheel.sha256}/{wheel.filename}", [authorized]) in asked
    assert all(authorization == [authorized] for _, authorization in asked)
    lines = a_gateway_in_front.wait_for_event("request", count=len(asked))
    assert {(line["status"], line["reason"]) for line in lines} == {(200, "policies_granted")}


def test_pip_cannot_read_a_project_without_read_packages(
    a_gateway_in_front: GatewayProcess, a_registry: Registry, a_home: Path
) -> None:
    downloads = a_home / "downloads"
    done = pip_download(pypi_index(a_gateway_in_front, VAULT_PROJECT), downloads, a_home)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    page = f"/api/v4/projects/{VAULT_PROJECT}/packages/pypi/simple/acme-widgets/"
    forbidden = f"403 Client Error: Forbidden for url: {a_gateway_in_front.url}{page}"
    assert forbidden in output  # pip prints this with -vv
    assert "No matching distribution found for acme-widgets" in output
    assert not downloads.exists() or not any(downloads.iterdir())
    assert A_JOB_TOKEN not in output  # pip masks the index URL's password
    assert a_registry.received == []
    (line,) = a_gateway_in_front.wait_for_event("request")
    assert (line["status"], line["reason"], line["path"]) == (403, "insufficient_permissions", page)
    assert (line["required"], line["granted"]) == (["read_packages"], ["read_releases"])


# ---- python-gitlab


@pytest.fixture
def a_gitlab_client(
    a_gateway_in_front: GatewayProcess,
) -> tuple[gitlab.Gitlab, list[requests.Response]]:
    """python-gitlab with the job token, on a session that ignores this machine's
    proxies and netrc; every response it receives is kept for inspection."""
    session = requests.Session()
    session.trust_env = False
    answers: list[requests.Response] = []
    session.hooks["response"].append(lambda response, **_: answers.append(response))
    client = gitlab.Gitlab(
        a_gateway_in_front.url, job_token=A_JOB_TOKEN, session=session, timeout=30
    )
    return client, answers


def test_python_gitlab_lists_deployments_with_its_job_token(
    a_gateway_in_front: GatewayProcess,
    a_gitlab_client: tuple[gitlab.Gitlab, list[requests.Response]],
    a_registry: Registry,
) -> None:
    client, answers = a_gitlab_client
    deployments = client.projects.get(REGISTRY_PROJECT, lazy=True).deployments.list(get_all=False)
    assert [(d.id, d.ref, d.status) for d in deployments] == [(41, "main", "success")]
    assert deployments[0].environment["name"] == "production"
    (seen,) = a_registry.received
    assert seen.raw_path == f"/api/v4/projects/{REGISTRY_PROJECT}/deployments"
    assert seen.header("JOB-TOKEN") == [A_JOB_TOKEN]
    assert seen.header("X-Request-ID") != []
    # The registry receives python-gitlab's request as sent (no framing of the gateway's own:
    # this GET carries `Content-Type: application/json` and no body), plus the forwarding
    # headers the README lists; `Connection` is hop-by-hop.
    sent = {name.lower(): value for name, value in answers[-1].request.headers.items()}
    del sent["connection"]
    host = f"127.0.0.1:{a_gateway_in_front.port}"
    forwarding = {"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http"}
    expected = {**sent, "host": host, "x-forwarded-host": host, **forwarding}
    received = {name.lower(): value for name, value in seen.headers if name != "X-Request-ID"}
    assert received == expected


def test_python_gitlab_gets_gitlabs_403_for_a_permission_not_granted(
    a_gitlab_client: tuple[gitlab.Gitlab, list[requests.Response]], a_registry: Registry
) -> None:
    client, answers = a_gitlab_client
    project = client.projects.get(REGISTRY_PROJECT, lazy=True)
    with pytest.raises(gitlab.GitlabListError) as raised:
        project.releases.list(get_all=False)
    assert raised.value.response_code == 403
    assert raised.value.error_message == insufficient(REGISTRY_PROJECT, "read_releases")
    assert answers[-1].headers["X-Gateway-Reason"] == "insufficient_permissions"
    assert a_registry.received == []


# ---- npm


@pytest.fixture
def an_npm(a_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs npm with a job token for one registry URL, isolated from this machine's config."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (the npm tests need a real npm on PATH)")

    def run_npm(registry: str, *args: str) -> subprocess.CompletedProcess[str]:
        userconfig = a_home / ".npmrc"
        nerf_dart = registry.removeprefix("http:")  # //host:port/path/
        userconfig.write_text(f"{nerf_dart}:_authToken={A_JOB_TOKEN}\n")
        (a_home / "global-npmrc").write_text("")
        env = isolated_env(
            a_home,
            npm_config_userconfig=str(userconfig),
            npm_config_globalconfig=str(a_home / "global-npmrc"),
            npm_config_cache=str(a_home / "npm-cache"),
            npm_config_offline="false",
            npm_config_prefer_online="true",
            npm_config_update_notifier="false",
            npm_config_audit="false",
            npm_config_fund="false",
            npm_config_fetch_retries="0",
            npm_config_fetch_timeout="20000",
            npm_config_noproxy="*",
        )
        return run([npm, *args, "--registry", registry], env, a_home)

    return run_npm


def npm_registry(gateway: GatewayProcess, project: int) -> str:
    return f"http://127.0.0.1:{gateway.port}/api/v4/projects/{project}/packages/npm/"


def test_npm_views_a_scoped_package_with_a_bearer_job_token(
    a_gateway_in_front: GatewayProcess,
    a_registry: Registry,
    an_npm: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = an_npm(npm_registry(a_gateway_in_front, REGISTRY_PROJECT), "view", "@acme/pkg", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert (shown["name"], shown["version"]) == ("@acme/pkg", "4.5.6")
    assert shown["dist"]["integrity"] == a_registry.npm.integrity
    (seen,) = a_registry.received
    # npm escapes the scope's slash; the gateway forwards the raw `%2f` it authorized.
    assert seen.raw_path == f"/api/v4/projects/{REGISTRY_PROJECT}/packages/npm/@acme%2fpkg"
    assert seen.header("Authorization") == [f"Bearer {A_JOB_TOKEN}"]


def test_npm_packs_a_scoped_package_from_its_tarball_url(
    a_gateway_in_front: GatewayProcess,
    a_registry: Registry,
    an_npm: Callable[..., subprocess.CompletedProcess[str]],
    a_home: Path,
) -> None:
    registry = npm_registry(a_gateway_in_front, REGISTRY_PROJECT)
    done = an_npm(registry, "pack", "@acme/pkg", "--json", "--pack-destination", str(a_home))
    assert done.returncode == 0, done.stdout + done.stderr
    packed = a_home / "acme-pkg-4.5.6.tgz"
    assert packed.read_bytes() == a_registry.npm.tarball  # npm checked its integrity too
    tarball = f"/api/v4/projects/{REGISTRY_PROJECT}/packages/npm/@acme/pkg/-/@acme/pkg-4.5.6.tgz"
    paths = [seen.raw_path for seen in a_registry.received]
    assert tarball in paths
    assert all(
        seen.header("Authorization") == [f"Bearer {A_JOB_TOKEN}"] for seen in a_registry.received
    )


def test_npm_is_refused_a_project_without_read_packages(
    a_gateway_in_front: GatewayProcess,
    a_registry: Registry,
    an_npm: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = an_npm(npm_registry(a_gateway_in_front, VAULT_PROJECT), "view", "@acme/pkg", "--json")
    assert done.returncode != 0
    packument = f"/api/v4/projects/{VAULT_PROJECT}/packages/npm/@acme%2fpkg"
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "E403"
    assert (
        error["summary"]
        == f"403 Forbidden - GET http://127.0.0.1:{a_gateway_in_front.port}{packument}"
    )
    assert a_registry.received == []
    (line,) = a_gateway_in_front.wait_for_event("request")
    assert (line["status"], line["reason"]) == (403, "insufficient_permissions")
    assert line["path"] == packument
    assert (line["required"], line["granted"]) == (["read_packages"], ["read_releases"])
