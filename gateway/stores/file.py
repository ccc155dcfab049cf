"""`file:///path.yaml`: a read-only grants file, the GitOps backend.

The file is validated as a whole (`gateway.stores.grants.load_grants`); a change is picked up by
`generation()` (polled about once a second by the cache layer: mtime, size and inode) and by
`reload()` (SIGHUP). A file that became invalid keeps the previous content in force: nothing
is half-loaded, and the gateway stays ready (every replica reading the same bad edit must not
go out of rotation at once). A bad edit is logged once (`grants_file_invalid`), and a SIGHUP
that finds one fails (`Gate.reload` raises, the server logs `reload_failed`). Only a file that
never loaded makes `ping()` (readiness) fail.
Revocation means removing the job from the file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.errors import ConfigError, PolicyFileError, StoreUnavailable
from gateway.stores import Listing
from gateway.stores.content import Content
from gateway.stores.grants import Allowlist, Grants, Job, Project, load_grants

__all__ = ["FileStore"]

_log = structlog.get_logger("gateway.store")

READ_ONLY = "the file:// store is read-only: edit {path} (it is reloaded when it changes)"


class FileStore:
    kind = "file"

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._content: Content | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._error: str | None = None
        self._lock = asyncio.Lock()

    async def _current(self) -> Content:
        if self._content is None:
            await self.reload()
        if self._content is None:
            raise StoreUnavailable(self._error or f"{self.path}: not loaded")
        return self._content

    async def job(self, digest: str) -> Job | None:
        return (await self._current()).job(digest)

    async def job_by_id(self, job_id: int) -> Job | None:
        return (await self._current()).job_by_id(job_id)

    async def project(self, ref: str) -> Project | None:
        return (await self._current()).project(ref)

    async def allowlist(self, project_id: int) -> Allowlist | None:
        return (await self._current()).allowlist(project_id)

    async def ping(self) -> None:
        await self._current()

    @property
    def error(self) -> str | None:
        """Why the file on disk is not in force (None when it is)."""
        return self._error

    async def close(self) -> None:
        return None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    async def reload(self, *, force: bool = True) -> bool:
        """Re-read the file (if it changed, unless `force`); True when new content is in force."""
        async with self._lock:
            stamp = await asyncio.to_thread(self._stat)
            if not force and stamp == self._stamp and self._content is not None:
                return False
            try:
                grants = await asyncio.to_thread(load_grants, self.path)
            except PolicyFileError as exc:
                if str(exc) != self._error:
                    _log.warning("grants_file_invalid", error=str(exc), kept="previous content")
                self._error, self._stamp = str(exc), stamp
                return False
            self._content, self._stamp, self._error = Content(grants), stamp, None
            return True

    async def check(self) -> None:
        """Load now; raise PolicyFileError when the file is invalid (start-up stops)."""
        await self.reload()
        if self._error is not None:
            raise PolicyFileError(self._error)

    async def generation(self) -> str:
        await self.reload(force=False)
        return repr(self._stamp)

    def subscribe(self, callback: Callable[[], None]) -> None:
        return None  # changes are found by polling `generation`

    async def load(self, grants: Grants) -> None:
        raise ConfigError(READ_ONLY.format(path=self.path))

    async def revoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        raise ConfigError(READ_ONLY.format(path=self.path))

    async def unrevoke(self, *, digest: str | None = None, job_id: int | None = None) -> int:
        raise ConfigError(READ_ONLY.format(path=self.path))

    async def listing(self) -> Listing:
        return Listing((await self._current()).grants)
