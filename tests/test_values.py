"""The values built once per request are ordinary ones: each hot-path constructor gives the
value its class builds from keywords, with every field set, immutable and equal by value; and
no module of the gateway changes an object's class (`obj.__class__ = ...`)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import REPO

from gateway.core import policy, tokens
from gateway.core.decision import Audit, Decision, Reason, make_audit, make_decision
from gateway.core.policy import Accessed
from gateway.core.tokens import Carrier, Credential
from gateway.routing.table import RouteTable
from gateway.routing.values import RouteMatch, Target, TargetKind

ROUTES_FILE = REPO / "policies" / "routes.yaml"


class Hot(NamedTuple):
    """A hot-path constructor, taking the fields of `cls` in order."""

    cls: type[Any]
    build: Callable[..., Any]


HOT = {
    "make_audit": Hot(Audit, make_audit),
    "make_decision": Hot(Decision, make_decision),
    "policy.accessed": Hot(Accessed, policy.accessed),
    "tokens._credential": Hot(Credential, tokens._credential),
}


def distinct_values(cls: type[Any]) -> tuple[object, ...]:
    """One value per field, each telling its field apart (so a swapped field shows)."""
    return tuple(f"<{name}>" for name in cls._fields)


@pytest.mark.parametrize("name", HOT)
def test_a_hot_constructor_gives_the_value_its_class_builds(name: str) -> None:
    cls, build = HOT[name]
    values = distinct_values(cls)
    made = build(*values)  # a field the constructor forgot to take is a TypeError here
    by_keywords = cls(**dict(zip(cls._fields, values, strict=True)))
    assert type(made) is cls
    assert made == by_keywords
    assert hash(made) == hash(by_keywords)
    assert len(made) == len(cls._fields)  # no field left unset
    assert {field: getattr(made, field) for field in cls._fields} == dict(
        zip(cls._fields, values, strict=True)
    )


@pytest.mark.parametrize("name", HOT)
def test_a_hot_value_is_immutable(name: str) -> None:
    cls, build = HOT[name]
    made = build(*distinct_values(cls))
    for field in cls._fields:
        with pytest.raises(AttributeError):
            setattr(made, field, "changed")


def test_make_decision_equals_the_decision_built_by_keywords() -> None:
    audit = make_audit("sha256:abc", 7, "acme/app", "#42", "GET /x", ("read_x",), (), 1, 42)
    made = make_decision(False, Reason.NOT_ALLOWLISTED, "403 Forbidden", audit)
    assert made == Decision(
        allowed=False, reason=Reason.NOT_ALLOWLISTED, message="403 Forbidden", audit=audit
    )
    assert made.status == 403
    assert audit == Audit(
        fingerprint="sha256:abc",
        job_id=7,
        source_project="acme/app",
        target="#42",
        route="GET /x",
        required=("read_x",),
        granted=(),
        source_project_id=1,
        target_project_id=42,
    )


def test_an_audit_with_granted_changes_that_field_only() -> None:
    audit = make_audit("sha256:abc", 7, "acme/app", "#42", "GET /x", ("read_x",), (), 1, 42)
    granted = audit.with_granted(("read_x", "read_y"))
    assert type(granted) is Audit
    assert granted == audit._replace(granted=("read_x", "read_y"))


def test_a_decision_built_with_defaults_carries_an_empty_audit() -> None:
    allowed = Decision(allowed=True, reason=Reason.NO_TOKEN)
    assert (allowed.message, allowed.audit, allowed.status) == ("", Audit(), None)


def test_a_credential_keeps_its_secret_out_of_repr_equality_and_hash() -> None:
    one = tokens._credential(Carrier.PRIVATE_TOKEN_HEADER, "d" * 64, "glcbt-secret-one")
    same_digest = Credential(Carrier.PRIVATE_TOKEN_HEADER, "d" * 64, "another")
    assert "secret" not in repr(one)
    assert one == same_digest
    assert not one != same_digest  # noqa: SIM202 (tuple's own != would compare the secret)
    assert hash(one) == hash(same_digest)
    assert one != Credential(Carrier.JOB_TOKEN_HEADER, "d" * 64, "glcbt-secret-one")
    assert one != tuple(one)  # equal only to another Credential


def test_a_route_match_is_the_value_built_by_keywords() -> None:
    table = RouteTable.load(ROUTES_FILE)
    found = table.match("GET", "/api/v4/projects/group%2Fsub%2Fproject/releases")
    assert isinstance(found, RouteMatch)
    assert type(found.target) is Target
    assert found == RouteMatch(
        route=found.route,
        params={"id": "group/sub/project"},
        target=Target(kind=TargetKind.PROJECT, ref="group/sub/project"),
    )
    with pytest.raises(AttributeError):
        found.target = Target(TargetKind.PROJECT, "7")  # type: ignore[misc]


# --------------------------------------------------------------------------- no class swaps


def class_assignments(source: str) -> list[int]:
    """Lines that assign an object's `__class__`: `x.__class__ = ...` (also inside an unpacking,
    an annotated or augmented assignment) or `setattr(x, "__class__", ...)`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in _unpacked(target)]
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Call) and _is_setattr(node.func) and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value == "__class__":
                lines.append(node.lineno)
            continue
        else:
            continue
        if any(isinstance(t, ast.Attribute) and t.attr == "__class__" for t in targets):
            lines.append(node.lineno)
    return sorted(lines)


def _unpacked(target: ast.expr) -> list[ast.expr]:
    if isinstance(target, ast.Tuple | ast.List):
        return [t for element in target.elts for t in _unpacked(element)]
    return _unpacked(target.value) if isinstance(target, ast.Starred) else [target]


def _is_setattr(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "setattr") or (
        isinstance(func, ast.Attribute) and func.attr == "__setattr__"
    )


def test_the_scan_finds_each_form_of_class_assignment() -> None:
    source = (
        "a.__class__ = B\n"
        "a, b.__class__ = 1, C\n"
        "a.__class__: type = B\n"
        "setattr(a, '__class__', B)\n"
        "object.__setattr__(a, '__class__', B)\n"
        "name = a.__class__.__name__\n"
        "table[a.__class__] = B\n"
    )
    assert class_assignments(source) == [1, 2, 3, 4, 5]


def test_no_module_of_the_gateway_assigns_an_objects_class() -> None:
    modules = sorted(Path(REPO / "gateway").rglob("*.py"))
    assert modules
    found = {
        str(path.relative_to(REPO)): lines
        for path in modules
        if (lines := class_assignments(path.read_text(encoding="utf-8")))
    }
    assert found == {}
