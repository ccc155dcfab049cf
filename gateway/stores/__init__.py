"""Token stores: where the gateway learns which job a token belongs to and who may call whom.

Every backend holds SHA-256 digests only, never raw tokens. Backends by URL (`open_store`):

    memory://                  in-process, for tests
    sqlite:///rel/path.db      embedded default; sqlite:////abs/path.db for an absolute path
                               (relative to the working directory; must exist, see open_store)
    file:///abs/grants.yaml    read-only grants file, reloaded on SIGHUP and when it changes
    redis://host:port/db       shared by replicas; revocations reach all of them within 1 s

Lookups raise `StoreUnavailable` when the backend cannot answer; "not found" is None.
A revoked job is returned with `revoked=True` (so an upstream validation cannot revive it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.stores.grants import Allowlist, Grants, Job, Project

__all__ = ["ChangeFeed", "Listing", "Store", "StoreAdmin", "TokenStore", "open_store"]


class TokenStore(Protocol):
    """What the gate reads (the hot path). Declared here, consumed by `gateway.core.gate`."""

    kind: str

    async def job(self, digest: str) -> Job | None: ...
    async def job_by_id(self, job_id: int) -> Job | None: ...
    async def project(self, ref: str) -> Project | None: ...
    async def allowlist(self, project_id: int) -> Allowlist | None: ...
    async def close(self) -> None: ...


@runtime_checkable
class ChangeFeed(Protocol):
    """How a store tells caches its content changed (load, revoke, another process's write).

    `generation()` is polled at most once per `POLL_INTERVAL` and may refresh the store (the
    file backend re-reads a changed file there); `subscribe` pushes changes as they happen
    (Redis pub/sub) for stores that can.
    """

    async def generation(self) -> str: ...
    def subscribe(self, callback: Callable[[], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class Listing:
    """A store's full content for `store list`: grants plus revocations (digests, job ids)."""

    grants: Grants
    revoked_digests: frozenset[str] = frozenset()
    revoked_job_ids: frozenset[int] = frozenset()


class StoreAdmin(Protocol):
    """What the `store` command uses to change a store. Declared here, used by commands/store."""

    async def load(self, grants: Grants) -> None: ...
    async def revoke(self, *, digest: str | None = None, job_id: int | None = None) -> int: ...
    async def unrevoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        """Lift a revocation (by digest or job id); how many revocations were removed."""
        ...

    async def listing(self) -> Listing: ...


class Store(TokenStore, ChangeFeed, StoreAdmin, Protocol):
    """Every backend implements all three roles (the file backend refuses writes)."""

    async def ping(self) -> None: ...


def open_store(url: str, *, timeout: float = 2.0, create: bool = False) -> Store:
    """Build the store a URL names (no I/O yet: connections open on first use).

    A SQLite store must already exist unless `create` (only `store load --create` passes it):
    a mistyped path is a start-up error, never a new, empty store that answers 401 to every
    job token. Raises ConfigError for an unknown scheme, a malformed URL or a missing store.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from gateway.stores.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from gateway.stores.sqlite import SqliteStore

        path = _sqlite_path(url)
        if not create:
            _must_exist(url, path)
        return SqliteStore(path, timeout=timeout, create=create)
    if scheme == "file":
        from gateway.stores.file import FileStore

        return FileStore(_file_path(url))
    if scheme in ("redis", "rediss", "unix"):
        from gateway.stores.redis import RedisStore

        return RedisStore(url, timeout=timeout)
    raise ConfigError(
        f"unknown token store {_safe(url)!r}: use memory://, sqlite:///path, file:///path.yaml "
        "or redis://host:port/db"
    )


def _sqlite_path(url: str) -> str:
    path = url[len("sqlite://") :]
    if not path.startswith("/") or path == "/":
        raise ConfigError(
            f"bad sqlite store URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db"
        )
    return path[1:]  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db


def _must_exist(url: str, path: str) -> None:
    resolved = os.path.abspath(path)  # a relative path is relative to the working directory
    if os.path.isfile(resolved):
        return
    parent = os.path.dirname(resolved)
    if not os.path.isdir(parent):
        problem = f"the directory {parent} does not exist"
    elif os.path.exists(resolved):
        problem = "not a file"
    else:
        problem = "no such file"
    raise ConfigError(
        f"no token store at {resolved} ({problem}; store URL {url}): check the path, or "
        f"create the store with `store load GRANTS --store {url} --create`"
    )


def _file_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ConfigError(f"bad file store URL {url!r}: use file:///absolute/path.yaml")
    return parts.path


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@")
