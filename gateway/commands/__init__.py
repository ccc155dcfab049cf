"""Sub-commands. Each module has `register(subparsers)` that sets `func(args) -> exit code`."""

from __future__ import annotations

from types import ModuleType

from gateway.commands import audit, check, demo, policies, routes, serve, store, suggest

__all__ = ["COMMANDS"]

COMMANDS: tuple[ModuleType, ...] = (serve, routes, check, policies, store, demo, suggest, audit)
