"""Hot-path construction of frozen, slotted dataclasses (issue 6).

A frozen dataclass's `__init__` sets each field through `object.__setattr__` (~0.3-0.55 us for
the values built once per request: Target, RouteMatch, Credential, Accessed, Audit, Decision).
Their modules instead fill a *draft*, a plain class with the same `__slots__`, and then assign
the frozen class to its `__class__`, which CPython allows between classes of the same layout
(~0.1 us). The result is an ordinary, frozen, equal instance. `check_layouts` runs at import so
a draft that no longer matches its class fails there, never on a request.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_layouts"]


def check_layouts(*pairs: tuple[type, type]) -> None:
    """Raise TypeError unless each (draft, final) pair shares its slots and memory layout."""
    for draft, final in pairs:
        if sorted(getattr(draft, "__slots__", ())) != sorted(getattr(final, "__slots__", ())):
            raise TypeError(f"{draft.__name__} must have the slots of {final.__name__}")
        instance: Any = draft()
        instance.__class__ = final  # raises if the layouts differ
