"""The one lazily opened aiohttp session of each upstream lookup (gateway/stores/upstream.py,
packages.py, job_projects.py): opened on first use, under the lookup's total `timeout`."""

from __future__ import annotations

import aiohttp

__all__ = ["UpstreamClient"]


class UpstreamClient:
    """Base of the upstream lookups: `_client()` opens the session once, `close()` closes it."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
