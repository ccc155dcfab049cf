"""The decision core's entry point: extract -> match -> resolve -> decide, with no aiohttp in sight.

CONTRACT used by the proxy (`gateway.handler`), the `check` command and future decision endpoints:
    gate = await Gate.open(settings)          # loads the route table, opens the token store
    gate.needs_body(view) -> bool             # must the caller buffer the body (small form/JSON)?
    await gate.evaluate(view) -> Decision     # never raises for a request; store faults -> 503 Decision
    await gate.ready() -> tuple[bool, str]    # route table loaded and store reachable, with detail
    await gate.reload() -> None               # SIGHUP: re-read route table/store; ConfigError keeps old
    await gate.close() -> None

TEMPORARY STUB: the tokens issue replaces this body. It allows everything (NO_TOKEN) and must not land.
"""

from __future__ import annotations

from gateway.decision import Decision, Reason
from gateway.request import RequestView
from gateway.settings import Settings

__all__ = ["Gate"]


class Gate:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    async def open(cls, settings: Settings) -> Gate:
        return cls(settings)

    def needs_body(self, view: RequestView) -> bool:
        return False

    async def evaluate(self, view: RequestView) -> Decision:
        return Decision(allowed=True, reason=Reason.NO_TOKEN)

    async def ready(self) -> tuple[bool, str]:
        return True, "stub"

    async def reload(self) -> None:
        return None

    async def close(self) -> None:
        return None
