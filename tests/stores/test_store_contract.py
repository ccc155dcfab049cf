"""One contract, every backend: memory, sqlite, file, redis (a real redis-server)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from job_grants import APP, GRANTS_YAML
from store_backends import BACKENDS, a_backend

from gateway.core import tokens
from gateway.errors import ConfigError
from gateway.stores import Store
from gateway.stores.file import FileStore
from gateway.stores.grants import EntryKind, Project, parse_grants


@pytest.fixture(params=BACKENDS)
async def a_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend, holding `job_grants.GRANTS_YAML`."""
    async with a_backend(request, tmp_path, GRANTS_YAML, 5) as store:
        yield store


async def test_a_job_is_found_by_the_digest_of_its_token(a_store: Store) -> None:
    job = await a_store.job(tokens.digest(APP))
    assert job is not None
    assert (job.job_id, job.project, job.revoked) == (5001, Project(10, "acme/app"), False)
    assert job.expires_at == 4070908800.0
    assert await a_store.job(tokens.digest("glcbt-nobody")) is None


async def test_a_job_is_found_by_its_id(a_store: Store) -> None:
    job = await a_store.job_by_id(5002)
    assert job is not None
    assert job.project == Project(12, "other/tool")
    assert job.expires_at is None
    assert await a_store.job_by_id(1) is None


@pytest.mark.parametrize("ref", ["20", "acme/platform/deployer", "ACME/Platform/Deployer"])
async def test_projects_by_id_or_path_any_case(a_store: Store, ref: str) -> None:
    assert await a_store.project(ref) == Project(20, "acme/platform/deployer")


async def test_unknown_projects_are_none(a_store: Store) -> None:
    assert await a_store.project("999") is None
    assert await a_store.project("acme/nothing") is None


async def test_allowlists_keep_entries_in_order(a_store: Store) -> None:
    allowlist = await a_store.allowlist(20)
    assert allowlist is not None
    assert allowlist.enabled
    assert [(e.kind, e.source, e.default_permissions) for e in allowlist.entries] == [
        (EntryKind.PROJECT, "acme/app", False),
        (EntryKind.GROUP, "acme/platform", False),
        (EntryKind.GROUP, "acme", True),
    ]
    assert allowlist.entries[0].policies == (
        "read_deployments",
        "admin_packages",
        "admin_deployments",
    )
    assert "read_packages" in allowlist.entries[0].granted
    disabled = await a_store.allowlist(30)
    assert disabled is not None
    assert not disabled.enabled
    assert await a_store.allowlist(10) is None


async def test_listing_has_everything_and_no_raw_token(a_store: Store) -> None:
    listing = await a_store.listing()
    assert {p.id for p in listing.grants.projects} == {10, 11, 12, 20, 30, 40, 50}
    assert {j.job_id for j in listing.grants.jobs} == {5000, 5001, 5002, 5003}
    assert {a.project_id for a in listing.grants.allowlists} == {20, 30, 40, 50}
    assert APP not in repr(listing)


async def test_the_store_holds_digests_only(a_store: Store, tmp_path: Path) -> None:
    database = tmp_path / "store.db"
    if database.exists():
        dump = "\n".join(sqlite3.connect(database).iterdump())
        assert tokens.digest(APP) in dump
        assert APP not in dump
    if a_store.kind == "redis":
        client = a_store._client  # type: ignore[attr-defined]
        keys = [key async for key in client.scan_iter()]
        values = await client.mget(keys)
        assert not any(APP in str(item) for item in [*keys, *values])


async def test_revocation_by_token_or_job_id(a_store: Store) -> None:
    if isinstance(a_store, FileStore):
        with pytest.raises(ConfigError, match="read-only"):
            await a_store.revoke(job_id=5001)
        return
    before = await a_store.generation()
    assert await a_store.revoke(digest=tokens.digest(APP)) == 1
    assert await a_store.generation() != before
    job = await a_store.job(tokens.digest(APP))
    assert job is not None
    assert job.revoked
    assert await a_store.revoke(job_id=5002) == 1
    by_id = await a_store.job_by_id(5002)
    assert by_id is not None
    assert by_id.revoked
    assert (await a_store.job(tokens.digest("glcbt-tool-job"))).revoked  # type: ignore[union-attr]


async def test_revoking_an_unknown_token_keeps_it_revoked_for_later(a_store: Store) -> None:
    if isinstance(a_store, FileStore):
        return
    late = "glcbt-not-loaded-yet"
    assert await a_store.revoke(digest=tokens.digest(late)) == 0
    assert await a_store.revoke(job_id=6000) == 0
    more_jobs = (
        f"  - {{token: {late}, job_id: 6001, project: acme/app}}\n"
        "  - {token: glcbt-six-thousand, job_id: 6000, project: acme/app}\nallowlists:"
    )
    grants = parse_grants(GRANTS_YAML.replace("allowlists:", more_jobs), "more")
    await a_store.load(grants)  # revocations survive loads
    assert (await a_store.job(tokens.digest(late))).revoked  # type: ignore[union-attr]
    assert (await a_store.job_by_id(6000)).revoked  # type: ignore[union-attr]
    listing = await a_store.listing()
    assert 6000 in listing.revoked_job_ids
    assert tokens.digest(late) in listing.revoked_digests


async def test_a_load_replaces_everything(a_store: Store) -> None:
    if isinstance(a_store, FileStore):
        return
    before = await a_store.generation()
    await a_store.load(parse_grants("projects: [{id: 7, path: solo/one}]\n", "small"))
    assert await a_store.generation() != before
    assert await a_store.job(tokens.digest(APP)) is None
    assert await a_store.project("20") is None
    assert await a_store.allowlist(20) is None
    assert await a_store.project("SOLO/one") == Project(7, "solo/one")


async def test_subscribers_hear_of_changes(a_store: Store) -> None:
    if isinstance(a_store, FileStore):
        return
    import asyncio

    heard: list[int] = []
    a_store.subscribe(lambda: heard.append(1))
    await asyncio.sleep(0.2)  # the redis listener subscribes
    heard.clear()
    await a_store.revoke(job_id=5001)
    for _ in range(50):
        if heard or a_store.kind == "sqlite":
            break
        await asyncio.sleep(0.02)
    # sqlite has no push channel: its changes are found by polling `generation`.
    assert heard or a_store.kind == "sqlite"
