"""Every backend keeps a project's visibility and feature levels (issue 10, point 4).

The default stays `private` with no features, which is what every project was before; a SQLite
database created before the columns existed is upgraded in place.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_backends import BACKENDS, a_backend

from gateway.errors import PolicyFileError
from gateway.stores import Store, open_store
from gateway.stores.grants import FEATURE_LEVELS, Visibility, parse_grants

GRANTS = """
projects:
  - {id: 1, path: acme/app}
  - {id: 2, path: acme/Public-Lib, visibility: public,
     features: {repository: enabled, builds: private, package_registry: public}}
  - {id: 3, path: acme/inside, visibility: internal}
jobs:
  - {token: glcbt-vis-job, job_id: 77, project: acme/app}
"""


@pytest.fixture(params=BACKENDS)
async def a_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with a_backend(request, tmp_path, GRANTS, 6) as store:
        yield store


async def test_visibility_and_features_come_back_by_id_and_path(a_store: Store) -> None:
    for ref in ("2", "ACME/public-lib"):
        project = await a_store.project(ref)
        assert project is not None
        assert project.visibility is Visibility.PUBLIC
        assert project.feature_level("repository") == FEATURE_LEVELS["enabled"]
        assert project.feature_level("builds") == FEATURE_LEVELS["private"]
        assert project.feature_level("package_registry") == FEATURE_LEVELS["public"]


async def test_the_default_is_private_with_members_only_features(a_store: Store) -> None:
    project = await a_store.project("acme/app")
    assert project is not None
    assert project.visibility is Visibility.PRIVATE
    assert project.features == ()
    assert project.feature_level("repository") == FEATURE_LEVELS["private"]
    inside = await a_store.project("3")
    assert inside is not None
    assert inside.visibility is Visibility.INTERNAL


async def test_the_listing_keeps_visibility(a_store: Store) -> None:
    listing = await a_store.listing()
    by_id = {p.id: p for p in listing.grants.projects}
    assert by_id[2].visibility is Visibility.PUBLIC
    assert by_id[2].describe()["features"]["package_registry"] == "public"
    assert "visibility" not in by_id[1].describe()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{id: 9, path: a/b, visibility: secret}", "visibility"),
        ("{id: 9, path: a/b, features: {wiki: enabled}}", "unknown feature wiki"),
        ("{id: 9, path: a/b, features: {builds: everyone}}", "features.builds"),
    ],
)
def test_bad_visibility_is_refused_with_its_place(line: str, problem: str) -> None:
    with pytest.raises(PolicyFileError, match=problem):
        parse_grants(f"projects:\n  - {line}\n", "g.yaml")


async def test_an_old_sqlite_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE projects (id INTEGER PRIMARY KEY, path TEXT NOT NULL,"
        " path_key TEXT NOT NULL UNIQUE);"
        "INSERT INTO projects VALUES (5, 'old/project', 'old/project');"
    )
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        project = await store.project("old/project")
        assert project is not None
        assert project.visibility is Visibility.PRIVATE
        await store.load(parse_grants(GRANTS, "visibility grants"))
        public = await store.project("2")
        assert public is not None
        assert public.visibility is Visibility.PUBLIC
    finally:
        await store.close()


def test_store_load_and_list_carry_visibility(tmp_path: Path) -> None:
    """`python -m gateway store load` reads visibility; `store list` shows it."""
    grants = tmp_path / "grants.yaml"
    grants.write_text(GRANTS)
    url = f"sqlite:///{tmp_path}/store.db"

    def store(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", "store", *args, "--store", url]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert store("load", str(grants), "--create").returncode == 0
    document = json.loads(store("list", "--json").stdout)
    projects = {p["id"]: p for p in document["projects"]}
    assert projects[1] == {"id": 1, "path": "acme/app"}
    assert projects[2]["visibility"] == "public"
    assert projects[2]["features"] == {
        "builds": "private",
        "package_registry": "public",
        "repository": "enabled",
    }
    text = store("list").stdout
    assert "acme/inside  (internal)" in text
    assert "(public; builds private, package_registry public, repository enabled)" in text
