"""The hot-path draft technique refuses a draft whose layout drifted from its class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.core.drafts import check_layouts


@dataclass(frozen=True, slots=True)
class Pair:
    left: int
    right: int


class GoodDraft:
    __slots__ = ("left", "right")


class MissingSlot:
    __slots__ = ("left",)


def test_a_draft_with_the_same_slots_passes() -> None:
    check_layouts((GoodDraft, Pair))


def test_a_draft_missing_a_slot_fails_at_import_time() -> None:
    with pytest.raises(TypeError, match="MissingSlot must have the slots of Pair"):
        check_layouts((MissingSlot, Pair))
