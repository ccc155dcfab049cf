"""Shared test data for the decision core: a grants file covering every allowlist rule."""

from __future__ import annotations

import base64
from pathlib import Path

from multidict import CIMultiDict

from gateway.core.gate import Gate
from gateway.core.request import RequestView
from gateway.settings import Settings
from gateway.stores import Store
from gateway.stores.grants import Grants, parse_grants
from gateway.stores.memory import MemoryStore

APP = "glcbt-app-job"  # job 5001 in acme/app (#10)
WORKER = "glcbt-worker-job"  # job 5003 in acme/platform/sub/worker (#11)
TOOL = "glcbt-tool-job"  # job 5002 in other/tool (#12), on no allowlist
EXPIRED = "glcbt-expired-job"  # job 5000 in acme/app, expired

GRANTS_YAML = """
projects:
  - {id: 10, path: acme/app}
  - {id: 11, path: acme/platform/sub/worker}
  - {id: 12, path: other/tool}
  - {id: 20, path: acme/platform/deployer}
  - {id: 30, path: open/target}
  - {id: 40, path: acme/legacy}
  - {id: 50, path: acme/groupy}
jobs:
  - {token: glcbt-app-job, job_id: 5001, project: acme/app, expires_at: "2099-01-01T00:00:00Z"}
  - {token: glcbt-tool-job, job_id: 5002, project: 12}
  - {token: glcbt-worker-job, job_id: 5003, project: acme/platform/sub/worker}
  - {token: glcbt-expired-job, job_id: 5000, project: acme/app, expires_at: "2020-01-01T00:00:00Z"}
allowlists:
  - project: acme/platform/deployer
    entries:
      - {source: acme/app, default_permissions: false,
         policies: [read_deployments, admin_packages, admin_deployments]}
      - {source: acme/platform, kind: group, default_permissions: false, policies: [read_releases]}
      - {source: acme, kind: group, default_permissions: true}
  - project: open/target
    enabled: false
  - project: acme/legacy
    entries:
      - {source: acme, default_permissions: true}
  - project: acme/groupy
    entries:
      - {source: acme, default_permissions: false, policies: [read_releases, read_deployments]}
      - {source: 10, default_permissions: false, policies: [read_packages]}
"""


def the_grants() -> Grants:
    return parse_grants(GRANTS_YAML, "test grants")


def write_grants(path: Path, text: str = GRANTS_YAML) -> Path:
    path.write_text(text)
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def a_request(
    method: str,
    target: str,
    token: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> RequestView:
    all_headers = list(headers or [])
    if token is not None:
        all_headers.append(("JOB-TOKEN", token))
    return RequestView(method, target, CIMultiDict(all_headers), body)


async def a_gate(store: Store | None = None, **settings: object) -> Gate:
    return await Gate.open(
        Settings(store="memory://", **settings),  # type: ignore[arg-type]
        store=store if store is not None else MemoryStore(the_grants()),
    )
