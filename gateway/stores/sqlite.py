"""`sqlite:///path.db`: the embedded default store (no server).

The file must exist unless the store was opened with `create` (`store load --create`); the
schema is created on first use; the database runs in WAL mode so the `store` command can
write while gateways read. Every query runs on one dedicated thread (sqlite3 blocks), so the
event loop never waits on disk. Each write bumps `meta.generation` in the same transaction;
gateways poll it (about once a second, via the cache layer) to see another process's
revocations and loads. A failing database (locked, corrupt, unreadable) raises
`StoreUnavailable`; the connection is reopened on the next call, so the gateway recovers alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StoreUnavailable
from gateway.stores import Listing
from gateway.stores.content import tombstone
from gateway.stores.grants import (
    MAX_ID,
    Allowlist,
    AllowlistEntry,
    EntryKind,
    Grants,
    Job,
    Project,
    project_key,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0), ('schema', 1);
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, path_key TEXT NOT NULL UNIQUE,
    visibility TEXT NOT NULL DEFAULT 'private', features TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS jobs (
    digest TEXT PRIMARY KEY, job_id INTEGER NOT NULL UNIQUE,
    project_id INTEGER NOT NULL REFERENCES projects (id), expires_at REAL);
CREATE TABLE IF NOT EXISTS allowlists (project_id INTEGER PRIMARY KEY, enabled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    project_id INTEGER NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL,
    source TEXT NOT NULL, source_id INTEGER, default_permissions INTEGER NOT NULL,
    policies TEXT NOT NULL, PRIMARY KEY (project_id, position));
CREATE TABLE IF NOT EXISTS revoked_digests (digest TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS revoked_jobs (job_id INTEGER PRIMARY KEY);
"""

_JOB = """
SELECT j.digest, j.job_id, p.id, p.path, j.expires_at,
       EXISTS (SELECT 1 FROM revoked_digests r WHERE r.digest = j.digest)
       OR EXISTS (SELECT 1 FROM revoked_jobs r WHERE r.job_id = j.job_id)
FROM jobs j JOIN projects p ON p.id = j.project_id
"""


class SqliteStore:
    kind = "sqlite"

    def __init__(self, path: str, *, timeout: float = 2.0, create: bool = False) -> None:
        self.path = path
        self._create = create
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int, int] = (0, 0, 0)
        self._opened = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")

    # ---- plumbing (runs on the store thread)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            target = self.path
            uri = False
            if self._create:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            else:
                # mode=rw: a store deleted or moved while serving is an unavailable store (503,
                # not ready), never a new empty one that would answer 401 to every job token.
                target, uri = f"{Path(self.path).absolute().as_uri()}?mode=rw", True
            conn = sqlite3.connect(
                target,
                timeout=self._timeout,
                check_same_thread=False,
                isolation_level=None,
                uri=uri,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
                conn.executescript(SCHEMA)
                _add_visibility(conn)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
            self._inode = _identity(self.path)
            self._opened += 1  # part of `generation`: a reopened file drops the caches
        return self._conn

    def _replaced(self) -> bool:
        """Was the database file deleted or replaced since we opened it? An open connection
        would keep reading the old inode and never see the new file's revocations."""
        try:
            return _identity(self.path) != self._inode
        except OSError:
            return True

    def _call(self, work: Callable[[sqlite3.Connection], T], *, recheck: bool = False) -> T:
        try:
            if recheck and self._conn is not None and self._replaced():
                self._conn.close()
                self._conn = None
            return work(self._connect())
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise StoreUnavailable(f"sqlite store {self.path}: {exc}") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, recheck: bool = False) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._call(work, recheck=recheck))

    # ---- TokenStore

    async def job(self, digest: str) -> Job | None:
        return await self._run(lambda conn: _job(conn, "WHERE j.digest = ?", digest, digest=digest))

    async def job_by_id(self, job_id: int) -> Job | None:
        if not 0 < job_id <= MAX_ID:
            return None  # SQLite cannot bind it, and no job has it
        return await self._run(lambda conn: _job(conn, "WHERE j.job_id = ?", job_id, job_id=job_id))

    async def project(self, ref: str) -> Project | None:
        key = project_key(ref)
        if key is None:
            return None
        column = "id" if isinstance(key, int) else "path_key"
        query = f"{_PROJECT} WHERE {column} = ?"  # a fixed column
        row = await self._run(lambda conn: conn.execute(query, (key,)).fetchone())
        return None if row is None else _project(row)

    async def allowlist(self, project_id: int) -> Allowlist | None:
        return await self._run(lambda conn: _allowlist(conn, project_id))

    async def ping(self) -> None:
        await self._run(
            lambda conn: conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        )

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            await self._run(shut)
        self._pool.shutdown(wait=True)

    # ---- ChangeFeed

    async def generation(self) -> str:
        """The write counter, and the file's identity (a replaced file is reopened here)."""
        row = await self._run(
            lambda conn: conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone(),
            recheck=True,
        )
        return f"{self._opened}:{row[0]}"

    def subscribe(self, callback: Callable[[], None]) -> None:
        return None  # other processes' writes are found by polling `generation`

    # ---- StoreAdmin

    async def load(self, grants: Grants) -> None:
        await self._run(lambda conn: _write(conn, lambda: _replace(conn, grants)))

    async def revoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        return await self._run(lambda conn: _write(conn, lambda: _revoke(conn, digest, job_id)))

    async def unrevoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        return await self._run(lambda conn: _write(conn, lambda: _unrevoke(conn, digest, job_id)))

    async def listing(self) -> Listing:
        return await self._run(_listing)


_PROJECT = "SELECT id, path, visibility, features FROM projects"


def _add_visibility(conn: sqlite3.Connection) -> None:
    """Databases created before projects had a visibility get its columns (private, no
    features: what every project was then)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(projects)")}
    if "visibility" not in columns:
        conn.execute("ALTER TABLE projects ADD COLUMN visibility TEXT NOT NULL DEFAULT 'private'")
    if "features" not in columns:
        conn.execute("ALTER TABLE projects ADD COLUMN features TEXT NOT NULL DEFAULT '{}'")


def _project(row: Any) -> Project:
    return Project.from_description(
        {"id": row[0], "path": row[1], "visibility": row[2], "features": json.loads(row[3])}
    )


def _identity(path: str) -> tuple[int, int, int]:
    """Device, inode and ctime: a file deleted and recreated differs even if the inode is reused
    (a checkpoint also changes ctime; reopening then is harmless)."""
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_ctime_ns)


def _write(conn: sqlite3.Connection, change: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = change()
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _job(
    conn: sqlite3.Connection, where: str, arg: Any, *, digest: str = "", job_id: int = 0
) -> Job | None:
    row = conn.execute(f"{_JOB} {where}", (arg,)).fetchone()
    if row is not None:
        return Job(row[0], row[1], Project(row[2], row[3]), row[4], revoked=bool(row[5]))
    if (
        digest
        and conn.execute("SELECT 1 FROM revoked_digests WHERE digest = ?", (digest,)).fetchone()
    ):
        return tombstone(digest=digest)
    if job_id and conn.execute("SELECT 1 FROM revoked_jobs WHERE job_id = ?", (job_id,)).fetchone():
        return tombstone(job_id=job_id)
    return None


def _allowlist(conn: sqlite3.Connection, project_id: int) -> Allowlist | None:
    row = conn.execute(
        "SELECT enabled FROM allowlists WHERE project_id = ?", (project_id,)
    ).fetchone()
    if row is None:
        return None
    rows = conn.execute(
        "SELECT kind, source, source_id, default_permissions, policies FROM entries "
        "WHERE project_id = ? ORDER BY position",
        (project_id,),
    ).fetchall()
    entries = tuple(
        AllowlistEntry(
            EntryKind(kind), source, source_id, bool(default), tuple(json.loads(policies))
        )
        for kind, source, source_id, default, policies in rows
    )
    return Allowlist(project_id, bool(row[0]), entries)


def _replace(conn: sqlite3.Connection, grants: Grants) -> None:
    for table in ("entries", "allowlists", "jobs", "projects"):
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - constant table names
    conn.executemany(
        "INSERT INTO projects (id, path, path_key, visibility, features) VALUES (?, ?, ?, ?, ?)",
        [
            (p.id, p.path, p.key, p.visibility.value, json.dumps(p.describe().get("features", {})))
            for p in grants.projects
        ],
    )
    conn.executemany(
        "INSERT INTO jobs (digest, job_id, project_id, expires_at) VALUES (?, ?, ?, ?)",
        [(j.digest, j.job_id, j.project.id, j.expires_at) for j in grants.jobs],
    )
    conn.executemany(
        "INSERT INTO allowlists (project_id, enabled) VALUES (?, ?)",
        [(a.project_id, int(a.enabled)) for a in grants.allowlists],
    )
    conn.executemany(
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                a.project_id,
                i,
                e.kind.value,
                e.source,
                e.source_id,
                int(e.default_permissions),
                json.dumps(list(e.policies)),
            )
            for a in grants.allowlists
            for i, e in enumerate(a.entries)
        ],
    )


def _revoke(conn: sqlite3.Connection, digest: str | None, job_id: int | None) -> int:
    hits = 0
    if digest is not None:
        conn.execute("INSERT OR IGNORE INTO revoked_digests VALUES (?)", (digest,))
        hits += conn.execute("SELECT COUNT(*) FROM jobs WHERE digest = ?", (digest,)).fetchone()[0]
    if job_id is not None:
        conn.execute("INSERT OR IGNORE INTO revoked_jobs VALUES (?)", (job_id,))
        hits += conn.execute("SELECT COUNT(*) FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]
    return int(hits)


def _unrevoke(conn: sqlite3.Connection, digest: str | None, job_id: int | None) -> int:
    removed = 0
    if digest is not None:
        removed += conn.execute("DELETE FROM revoked_digests WHERE digest = ?", (digest,)).rowcount
    if job_id is not None:
        removed += conn.execute("DELETE FROM revoked_jobs WHERE job_id = ?", (job_id,)).rowcount
    return removed


def _listing(conn: sqlite3.Connection) -> Listing:
    projects = tuple(_project(row) for row in conn.execute(f"{_PROJECT} ORDER BY id"))
    by_id = {p.id: p for p in projects}  # a job's project with its visibility, as loaded
    jobs = tuple(
        Job(r[0], r[1], by_id.get(r[2]) or Project(r[2], r[3]), r[4], revoked=bool(r[5]))
        for r in conn.execute(f"{_JOB} ORDER BY j.job_id")
    )
    ids = [row[0] for row in conn.execute("SELECT project_id FROM allowlists ORDER BY project_id")]
    allowlists = tuple(a for a in (_allowlist(conn, i) for i in ids) if a is not None)
    digests = frozenset(row[0] for row in conn.execute("SELECT digest FROM revoked_digests"))
    job_ids = frozenset(row[0] for row in conn.execute("SELECT job_id FROM revoked_jobs"))
    return Listing(Grants(projects, jobs, allowlists), digests, job_ids)
