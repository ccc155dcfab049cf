"""The supplementary route file (policies/routes-supplementary.yaml): route families GitLab opens
to job tokens outside the generated page, decided allowlist-only through the real gateway to a
real upstream; the trigger route's trigger tokens; Workhorse body-file routes forwarded without
body inspection; and the start-up checks of the file."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.proxy import Answer, call
from fixtures.upstream import Upstream
from job_grants import APP, TOOL, write_grants

from gateway.errors import PolicyFileError
from gateway.routing.table import RouteTable
from gateway.routing.values import RouteRule
from gateway.settings import DEFAULT_ROUTES, DEFAULT_SUPPLEMENTARY_ROUTES

API = "/api/v4"
TARGET = "/projects/acme%2Fplatform%2Fdeployer"  # #20: admits acme/app (#10), not other/tool
MULTIPART = "multipart/form-data; boundary=XyZ"


def multipart(name: str, filename: str, content: bytes) -> bytes:
    return (
        b"--XyZ\r\n"
        + f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + content
        + b"\r\n--XyZ--\r\n"
    )


# (family, method, path under the target project, body, Content-Type). The job token travels
# in JOB-TOKEN here; the carriers each family's clients use (Basic with any user, X-Nuget-Apikey,
# a bare Authorization) are gateway/core/tokens.py's (issue 10 point 1).
FAMILIES: list[tuple[str, str, str, bytes | None, str | None]] = [
    ("nuget index", "GET", "/packages/nuget/index.json", None, None),
    ("nuget metadata", "GET", "/packages/nuget/metadata/MyPkg/index.json", None, None),
    ("nuget download", "GET", "/packages/nuget/download/mypkg/1.0.0/mypkg.1.0.0.nupkg", None, None),
    (
        "nuget publish",
        "PUT",
        "/packages/nuget",
        multipart("package", "p.nupkg", b"PK.."),
        MULTIPART,
    ),
    ("helm index", "GET", "/packages/helm/stable/index.yaml", None, None),
    ("helm chart", "GET", "/packages/helm/stable/charts/mychart-1.0.0.tgz", None, None),
    (
        "helm upload",
        "POST",
        "/packages/helm/api/stable/charts",
        multipart("chart", "c.tgz", b"\x1f\x8b"),
        MULTIPART,
    ),
    ("terraform module", "GET", "/packages/terraform/modules/infra/aws/1.2.0", None, None),
    (
        "terraform upload",
        "PUT",
        "/packages/terraform/modules/infra/aws/1.2.0/file",
        b"\x1f\x8bTGZ",
        "application/octet-stream",
    ),
    ("debian release", "GET", "/packages/debian/dists/stable/Release", None, None),
    (
        "debian packages",
        "GET",
        "/packages/debian/dists/stable/main/binary-amd64/Packages",
        None,
        None,
    ),
    (
        "debian upload",
        "PUT",
        "/packages/debian/hello_1.0_amd64.deb",
        b"!<arch>\n",
        "application/octet-stream",
    ),
    ("rubygems download", "GET", "/packages/rubygems/gems/hello-1.0.gem", None, None),
    (
        "rubygems upload",
        "POST",
        "/packages/rubygems/api/v1/gems",
        b"GEMDATA",
        "application/octet-stream",
    ),
    ("rubygems deps", "GET", "/packages/rubygems/api/v1/dependencies?gems=hello", None, None),
]


async def a_granting_gateway(a_gateway: Any, upstream: Upstream, tmp_path: Path) -> str:
    grants = write_grants(tmp_path / "grants.yaml")
    gateway = await a_gateway(upstream.url, store=f"file://{grants}")
    return f"{gateway.url}{API}"


EACH_FAMILY = pytest.mark.parametrize(
    ("family", "method", "path", "body", "ctype"), FAMILIES, ids=[f[0] for f in FAMILIES]
)


async def a_family_call(
    a_gateway: Any,
    upstream: Upstream,
    tmp_path: Path,
    token: str,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str | None,
) -> Answer:
    """The family's call with this job token, through a gateway granting `write_grants`."""
    api = await a_granting_gateway(a_gateway, upstream, tmp_path)
    headers = {"JOB-TOKEN": token, **({"Content-Type": ctype} if ctype else {})}
    return await call(method, f"{api}{TARGET}{path}", data=body, headers=headers)


@EACH_FAMILY
async def test_an_admitted_job_token_reaches_the_upstream_unchanged(
    a_gateway: Any,
    an_upstream: Upstream,
    tmp_path: Path,
    family: str,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str | None,
) -> None:
    got = await a_family_call(a_gateway, an_upstream, tmp_path, APP, method, path, body, ctype)
    assert got.status == 200, got.body
    seen = an_upstream.last
    assert (seen.method, seen.raw_path) == (method, f"{API}{TARGET}{path}")
    assert seen.body_sha256 == hashlib.sha256(body or b"").hexdigest()
    assert seen.header("JOB-TOKEN") == [APP]


@EACH_FAMILY
async def test_a_job_token_the_allowlist_does_not_admit_reaches_nothing(
    a_gateway: Any,
    an_upstream: Upstream,
    tmp_path: Path,
    family: str,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str | None,
) -> None:
    got = await a_family_call(a_gateway, an_upstream, tmp_path, TOOL, method, path, body, ctype)
    assert got.status == 403
    assert got.headers["X-Gateway-Reason"] == "not_allowlisted"
    assert got.json()["message"] == (
        "403 Forbidden - Authentication by CI/CD job token not allowed from tool to project #20."
    )
    assert an_upstream.received == []


# ---- the trigger route (lib/api/ci/triggers.rb, Ci::PipelineTriggerService)


@pytest.mark.parametrize("path", ["/trigger/pipeline", "/ref/feature/x/trigger/pipeline"])
async def test_the_trigger_route_judges_a_job_token(
    a_gateway: Any, an_upstream: Upstream, tmp_path: Path, path: str
) -> None:
    api = await a_granting_gateway(a_gateway, an_upstream, tmp_path)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    refused = await call(
        "POST", f"{api}{TARGET}{path}", data=f"ref=main&token={TOOL}", headers=form
    )
    assert refused.status == 403
    assert refused.headers["X-Gateway-Reason"] == "not_allowlisted"
    assert an_upstream.received == []
    body = f"ref=main&token={APP}"
    got = await call("POST", f"{api}{TARGET}{path}", data=body, headers=form)
    assert got.status == 200, got.body
    assert an_upstream.last.raw_path == f"{API}{TARGET}{path}"
    assert an_upstream.last.body_sha256 == hashlib.sha256(body.encode()).hexdigest()


@pytest.mark.parametrize("token", ["glptt-0123456789abcdef", "6d056f63e50fe6f8c5f8f4aa10edb7"])
async def test_a_trigger_token_is_forwarded_unjudged(
    a_gateway: Any, an_upstream: Upstream, tmp_path: Path, token: str
) -> None:
    # A `token` that is no job token is a pipeline trigger token (tried first by
    # Ci::PipelineTriggerService): GitLab's own credential, forwarded as is.
    api = await a_granting_gateway(a_gateway, an_upstream, tmp_path)
    target = f"{api}/projects/12/trigger/pipeline?token={token}&ref=main"
    got = await call("POST", target)
    assert got.status == 200, got.body
    assert an_upstream.last.raw_path == f"{API}/projects/12/trigger/pipeline?token={token}&ref=main"


async def test_an_unknown_prefixed_job_token_on_the_trigger_route_is_401(
    a_gateway: Any, an_upstream: Upstream, tmp_path: Path
) -> None:
    api = await a_granting_gateway(a_gateway, an_upstream, tmp_path)
    got = await call("POST", f"{api}/projects/12/trigger/pipeline?token=glcbt-unknown&ref=main")
    assert got.status == 401
    assert an_upstream.received == []


# ---- Workhorse body-file routes (workhorse/internal/upstream/routes.go, requestBodyUploader)


async def test_a_gzip_json_file_uploaded_to_a_generic_package_is_forwarded_byte_for_byte(
    a_gateway: Any, an_upstream: Upstream, tmp_path: Path
) -> None:
    # Workhorse stores this body as the package file; Rails never parses it for params.
    api = await a_granting_gateway(a_gateway, an_upstream, tmp_path)
    payload = gzip.compress(json.dumps({"job_token": TOOL, "data": [1, 2, 3]}).encode(), mtime=0)
    headers = {"JOB-TOKEN": APP, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    path = f"{API}/projects/10/packages/generic/report/1.0.0/report.json"
    got = await call("PUT", f"{api}{path[len(API) :]}", data=payload, headers=headers)
    assert got.status == 200, got.body
    assert an_upstream.last.raw_path == path
    assert an_upstream.last.body_sha256 == hashlib.sha256(payload).hexdigest()
    assert an_upstream.last.body_length == len(payload)


async def test_a_body_rails_parses_is_still_inspected(
    a_gateway: Any, an_upstream: Upstream, tmp_path: Path
) -> None:
    # The same body on a route whose body Rails reads for params: it must parse to be judged.
    api = await a_granting_gateway(a_gateway, an_upstream, tmp_path)
    payload = gzip.compress(b'{"a": 1}', mtime=0)
    headers = {"JOB-TOKEN": APP, "Content-Type": "application/json"}
    got = await call("POST", f"{api}/projects/10/deployments", data=payload, headers=headers)
    assert got.status == 400
    assert got.headers["X-Gateway-Reason"] == "bad_body"
    assert an_upstream.received == []


def test_the_workhorse_body_file_routes_are_route_data() -> None:
    table = RouteTable.load(DEFAULT_ROUTES, supplementary=DEFAULT_SUPPLEMENTARY_ROUTES)
    files = {route.name for route in table if route.body_file}
    assert (
        "PUT /projects/:id/packages/generic/:package_name/*package_version/(*path/):file_name"
        in files
    )
    assert "PUT /projects/:id/packages/maven/*path/:file_name" in files
    assert "PUT /projects/:id/packages/debian/:file_name" in files
    assert "POST /projects/:id/packages/rubygems/api/v1/gems" in files
    assert "POST /projects/:id/terraform/state/:name" in files
    # Multipart uploads keep their other fields as params (mimeMultipartUploader), and
    # Workhorse proxies the lock and npm dist-tags routes as they are.
    assert "PUT /projects/:id/packages/nuget" not in files
    assert "POST /projects/:id/packages/helm/api/:channel/charts" not in files
    assert "POST /projects/:id/terraform/state/:name/lock" not in files
    assert "PUT /projects/:id/packages/npm/-/package/*package_name/dist-tags/:tag" not in files
    assert "POST /jobs/:id/artifacts" not in files


# ---- the file itself


def test_the_shipped_file_compiles_with_the_generated_table() -> None:
    table = RouteTable.load(DEFAULT_ROUTES, supplementary=DEFAULT_SUPPLEMENTARY_ROUTES)
    extra = [route for route in table if route.rule is not RouteRule.PAGE]
    assert len(extra) >= 40
    assert all(not route.permissions and not route.controllable for route in extra)


def _write(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "supplementary.yaml"
    path.write_text("version: 1\nroutes:\n" + rows)
    return path


def test_a_row_repeating_a_generated_route_stops_start_up(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "- {method: GET, path: /job, rule: allowlist, description: d,"
        " source: lib/api/ci/jobs.rb get ''}\n",
    )
    with pytest.raises(PolicyFileError, match="GET /job conflicts with the generated route table"):
        RouteTable.load(DEFAULT_ROUTES, supplementary=path)


def test_a_row_matching_the_same_paths_as_a_generated_route_stops_start_up(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "- {method: GET, path: '/projects/:project/releases', rule: allowlist, description: d,"
        " source: lib/api/releases.rb get}\n",
    )
    with pytest.raises(PolicyFileError, match="match the same paths"):
        RouteTable.load(DEFAULT_ROUTES, supplementary=path)


def test_a_row_without_its_gitlab_source_stops_start_up(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "- {method: GET, path: /x, rule: allowlist, description: d, source: trust me}\n"
    )
    with pytest.raises(
        PolicyFileError, match=r"supplementary.yaml:3: routes\[0\] \(GET /x\): source"
    ):
        RouteTable.load(DEFAULT_ROUTES, supplementary=path)


def test_the_supplementary_rows_overlap_only_integer_package_ids() -> None:
    # `routes --overlaps` lists three pairs with different authorization, all against the
    # packages API's `:package_id`, which GitLab declares `type: Integer` (lib/api/packages.rb,
    # lib/api/package_files.rb): `rubygems` or `nuget` is never a package id there.
    table = RouteTable.load(DEFAULT_ROUTES, supplementary=DEFAULT_SUPPLEMENTARY_ROUTES)
    significant = [o for o in table.overlaps() if o.significant]
    assert len(significant) == 3
    for overlap in significant:
        assert ":package_id" in overlap.first.path
        assert overlap.winner is overlap.second
        assert overlap.second.rule is RouteRule.ALLOWLIST


def test_routes_lists_the_supplementary_rows() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gateway", "routes"], capture_output=True, text=True, check=True
    ).stdout
    assert "150 routes: 125 controllable, 25 None" in out
    assert "supplementary routes" in out
    assert "None (own_job)" in out


# ---- the rules at the gate (no network)

LEGACY_GRANTS = """
projects:
  - {id: 10, path: acme/app}
  - {id: 20, path: acme/platform/deployer}
jobs:
  - {token: legacy-unprefixed-job-token, job_id: 6001, project: acme/app}
  - {token: glcbt-revoked-job, job_id: 6002, project: acme/app}
allowlists:
  - project: acme/platform/deployer
    entries:
      - {source: acme/app, default_permissions: false, policies: [read_jobs]}
"""


async def test_an_unprefixed_job_token_the_store_knows_is_judged_on_the_trigger_route() -> None:
    from job_grants import a_gate, a_request

    from gateway.stores.grants import parse_grants
    from gateway.stores.memory import MemoryStore

    gate = await a_gate(MemoryStore(parse_grants(LEGACY_GRANTS, "legacy grants")))
    known = "legacy-unprefixed-job-token"
    decision = await gate.evaluate(
        a_request("POST", f"{API}/projects/12/trigger/pipeline?ref=main&token={known}")
    )
    assert decision.reason.value == "not_allowlisted"  # project 12 is unknown: fail closed
    decision = await gate.evaluate(
        a_request("POST", f"{API}/projects/20/trigger/pipeline?ref=main&token={known}")
    )
    assert decision.allowed
    assert decision.reason.value == "uncontrolled_endpoint"
    await gate.close()
    # Revoked, it stays a job token: 401, never forwarded as a trigger token.
    store = MemoryStore(parse_grants(LEGACY_GRANTS, "legacy grants"))
    await store.revoke(job_id=6001)
    gate = await a_gate(store)
    decision = await gate.evaluate(
        a_request("POST", f"{API}/projects/20/trigger/pipeline?ref=main&token={known}")
    )
    assert (decision.allowed, decision.reason.value) == (False, "token_revoked")
    await gate.close()


async def test_the_own_job_rule_at_the_gate() -> None:
    from job_grants import EXPIRED, a_gate, a_request, the_grants

    from gateway.stores.grants import parse_grants
    from gateway.stores.memory import MemoryStore

    gate = await a_gate(MemoryStore(the_grants()))
    # Its own job, past its expires_at: GitLab's NotRunningJobError message.
    decision = await gate.evaluate(a_request("PUT", f"{API}/jobs/5000", EXPIRED))
    assert (decision.allowed, decision.status) == (False, 403)
    assert decision.message == "403 Forbidden - Job is not processing on runner"
    # Unknown token: 403 as GitLab's authenticate_job!, not 401.
    decision = await gate.evaluate(a_request("PATCH", f"{API}/jobs/5001/trace", "glcbt-nobody"))
    assert (decision.reason.value, decision.status) == ("job_token_mismatch", 403)
    await gate.close()
    store = MemoryStore(parse_grants(LEGACY_GRANTS, "legacy grants"))
    await store.revoke(job_id=6002)
    gate = await a_gate(store)
    decision = await gate.evaluate(a_request("PUT", f"{API}/jobs/6002", "glcbt-revoked-job"))
    assert (decision.reason.value, decision.message) == ("job_token_mismatch", "403 Forbidden")
    await gate.close()
