"""The aiohttp engine's listener refuses to start rather than serve without its limits."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.proxy import server
from gateway.settings import Engine, Settings


async def test_options_aiohttp_cannot_take_stop_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp's web.Server would drop every option (the head limits, the timeouts) and serve
    # with its defaults after one it cannot take; the gateway must not start like that.
    real = server.runner_options

    def with_an_unknown_option(settings: Settings) -> dict[str, Any]:
        return {**real(settings), "no_such_option": 1}

    monkeypatch.setattr(server, "runner_options", with_an_unknown_option)
    settings = Settings(upstream="http://127.0.0.1:9", store="memory://", engine=Engine.AIOHTTP)
    with pytest.raises(ConfigError, match="does not take the proxy listener's options"):
        await server.start_proxy(settings, host="127.0.0.1", port=0)


async def test_the_options_the_gateway_gives_are_taken() -> None:
    settings = Settings(upstream="http://127.0.0.1:9", store="memory://", engine=Engine.AIOHTTP)
    listener = await server.start_proxy(settings, host="127.0.0.1", port=0)
    try:
        assert listener.addresses
    finally:
        await listener.stop(None)
