"""The decision suite on the current page's table (`--routes current`): a real gateway
(`a_gateway` + the real Gate over a memory store) in front of the real recording upstream, on
the routes and permissions where the current table differs from the seed's."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures.proxy import call

from gateway.core.gate import Gate
from gateway.settings import Settings, shipped_table
from gateway.stores.grants import parse_grants
from gateway.stores.memory import MemoryStore

API = "/api/v4"
APP = "glcbt-app-job"  # job 5001 in acme/app (#10)
OPS = "glcbt-ops-job"  # job 5004 in acme/ops (#13)
TOOL = "glcbt-tool-job"  # job 5002 in other/tool (#12), on no allowlist

GRANTS = """
projects:
  - {id: 10, path: acme/app}
  - {id: 12, path: other/tool}
  - {id: 13, path: acme/ops}
  - {id: 20, path: acme/platform/target}
jobs:
  - {token: glcbt-app-job, job_id: 5001, project: acme/app}
  - {token: glcbt-tool-job, job_id: 5002, project: other/tool}
  - {token: glcbt-ops-job, job_id: 5004, project: acme/ops}
allowlists:
  - project: acme/platform/target
    entries:
      - {source: acme/app, default_permissions: false,
         policies: [read_pipelines, read_jobs, read_repositories, admin_pipelines]}
      - {source: acme/ops, default_permissions: false, policies: [admin_jobs]}
"""


async def a_gateway_on(table: str, a_gateway: Any, an_upstream: Any) -> tuple[Any, Gate]:
    settings = Settings(store="memory://", routes=table)  # type: ignore[arg-type]
    gate = await Gate.open(settings, store=MemoryStore(parse_grants(GRANTS, "grants")))
    return await a_gateway(an_upstream.url, gate=gate, routes=table), gate


def test_the_setting_names_the_shipped_tables() -> None:
    assert Settings(routes="current").routes == shipped_table("current")  # type: ignore[arg-type]
    assert Settings(routes="seed").routes == Settings().routes  # type: ignore[arg-type]
    assert shipped_table("current").name == "routes-current.yaml"


@pytest.mark.parametrize(
    "target",
    [
        f"{API}/projects/20/pipelines?status=success",
        f"{API}/projects/acme%2Fplatform%2Ftarget/pipelines/77",
        f"{API}/projects/20/pipelines/77/jobs",
        f"{API}/projects/20/jobs?scope%5B%5D=failed",
        f"{API}/projects/20/repository/files/ci%2Fdeploy.yml/raw?ref=main",
        f"{API}/projects/20/repository/tags",
    ],
)
async def test_routes_only_the_current_table_has_reach_the_upstream(
    a_gateway: Any, an_upstream: Any, target: str
) -> None:
    gateway, gate = await a_gateway_on("current", a_gateway, an_upstream)
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": APP})
    assert answer.status == 200, answer.body
    assert an_upstream.last.raw_path == target
    assert answer.headers.get("X-Gateway-Reason") is None
    await gate.close()
    # The seed's table has no such route: the same request never leaves the gateway.
    an_upstream.received.clear()
    gateway, gate = await a_gateway_on("seed", a_gateway, an_upstream)
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": APP})
    assert (answer.status, answer.headers["X-Gateway-Reason"]) == (403, "route_not_available")
    assert an_upstream.received == []
    await gate.close()


async def test_the_pipeline_metadata_route_needs_admin_pipelines_in_the_current_table(
    a_gateway: Any, an_upstream: Any
) -> None:
    target = f"{API}/projects/20/pipelines/77/metadata"
    gateway, gate = await a_gateway_on("current", a_gateway, an_upstream)
    answer = await call("PUT", gateway.url + target, headers={"JOB-TOKEN": OPS}, data=b"name=x")
    assert answer.status == 403
    assert answer.json() == {
        "message": "403 Forbidden - Insufficient permissions to access this resource in project "
        "#20. The following token permission is required: admin_pipelines."
    }
    assert an_upstream.received == []
    answer = await call("PUT", gateway.url + target, headers={"JOB-TOKEN": APP}, data=b"name=x")
    assert answer.status == 200
    assert an_upstream.last.raw_path == target
    await gate.close()
    # The seed's page maps the route to admin_jobs: OPS's grant is enough there.
    gateway, gate = await a_gateway_on("seed", a_gateway, an_upstream)
    answer = await call("PUT", gateway.url + target, headers={"JOB-TOKEN": OPS}, data=b"name=x")
    assert answer.status == 200
    await gate.close()


async def test_a_source_off_the_allowlist_is_refused_on_new_routes(
    a_gateway: Any, an_upstream: Any
) -> None:
    gateway, gate = await a_gateway_on("current", a_gateway, an_upstream)
    answer = await call(
        "GET", gateway.url + f"{API}/projects/20/issues", headers={"JOB-TOKEN": TOOL}
    )
    assert (answer.status, answer.headers["X-Gateway-Reason"]) == (403, "not_allowlisted")
    # Allowlisted, but read_work_items is not granted.
    answer = await call(
        "GET", gateway.url + f"{API}/projects/20/issues/3", headers={"JOB-TOKEN": APP}
    )
    assert answer.status == 403
    assert answer.json()["message"].endswith("permission is required: read_work_items.")
    assert an_upstream.received == []
    await gate.close()


@pytest.mark.parametrize(
    ("target", "allowlisted"),
    [
        # "Unavailable API endpoints" = GitLab's skip_job_token_policies routes: any allowlisted
        # source may call them, whatever its grants; a source off the allowlist may not.
        (f"{API}/projects/20/packages/conan/v2/conans/search?q=pkg", OPS),
        # The Conan v2 token exchange: the Conan JWT it issues is read on every Conan route
        # (gateway/core/conan_jwt.py), so the exchange is decided like any `None` row:
        # allowlisted sources only.
        (f"{API}/projects/20/packages/conan/v2/users/authenticate", APP),
    ],
    ids=["an_unavailable_endpoint", "the_conan_v2_token_exchange"],
)
async def test_an_allowlist_only_route_admits_any_allowlisted_source(
    a_gateway: Any, an_upstream: Any, target: str, allowlisted: str
) -> None:
    gateway, gate = await a_gateway_on("current", a_gateway, an_upstream)
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": allowlisted})
    assert answer.status == 200
    assert an_upstream.last.raw_path == target
    answer = await call("GET", gateway.url + target, headers={"JOB-TOKEN": TOOL})
    assert (answer.status, answer.headers["X-Gateway-Reason"]) == (403, "not_allowlisted")
    assert len(an_upstream.received) == 1
    await gate.close()
