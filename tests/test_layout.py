"""The gateway uses only aiohttp's documented surface: no private attribute of an aiohttp object.

An upgrade of aiohttp may rename or repurpose its `_`-prefixed attributes without notice, so a
gateway that reads or writes them (a copied `TCPSite.start`, `runner._server`,
`request._payload`) could change behaviour silently. The scan is syntactic: it knows aiohttp's
private names from aiohttp's own source and flags, in every module of `gateway/`,
- `x._name` where `_name` is one of them and `x` is not `self`/`cls`, or `x` is aiohttp itself;
- `self._name` inside a class that derives from an aiohttp class (it reads, or shadows, the
  parent's internals);
- `getattr`/`setattr`/`hasattr` with such a name, and `from aiohttp... import _name`;
- an assignment to `request_handler` or `request_factory` (replacing a started server's handler).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
HANDLER_SLOTS = frozenset({"request_handler", "request_factory"})

# What the scan must catch: the two forms of issue 11 (a copied TCPSite.start, a replaced
# request handler) and a read through another object.
KNOWN_BAD = """
from aiohttp import web

class BoundedSite(web.TCPSite):
    async def start(self) -> None:
        server = self._runner.server
        self._server = await loop.create_server(server, self._host, self._port)

def dispatch_directly(runner: web.AppRunner) -> None:
    runner.server.request_handler = handle
    body = runner._server

def peek(request: web.BaseRequest) -> object:
    return getattr(request, "_payload")
"""


@cache
def aiohttp_private_names() -> frozenset[str]:
    """Every `_name` aiohttp gives an attribute (`self._name = ...`, `__slots__`) or defines at
    the top of a module."""
    names: set[str] = set()
    for path in Path(aiohttp.__file__).parent.rglob("*.py"):
        module = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(module):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "self" and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
            elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "__slots__" for target in node.targets
            ):
                names.update(
                    value.value
                    for value in ast.walk(node.value)
                    if isinstance(value, ast.Constant) and isinstance(value.value, str)
                )
        for statement in module.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(statement.name)
            elif isinstance(statement, ast.Assign):
                names.update(t.id for t in statement.targets if isinstance(t, ast.Name))
    return frozenset(name for name in names if _private(name))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _aiohttp_aliases(tree: ast.Module) -> set[str]:
    """The names a module binds to aiohttp or its modules (`import aiohttp`, `from aiohttp
    import web`, `from aiohttp.web import TCPSite`)."""
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.split(".")[0] == "aiohttp"
            )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aiohttp":
            aliases.update(a.asname or a.name for a in node.names)
    return aliases


def _root(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def violations(source: str, where: str) -> Iterator[str]:
    """Every use in `source` of a private attribute of aiohttp, or a handler replaced."""
    private = aiohttp_private_names()
    tree = ast.parse(source)
    aliases = _aiohttp_aliases(tree)
    subclass_scopes: list[ast.ClassDef] = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and any(_root(base) in aliases for base in node.bases)
    ]
    in_subclass = {id(inner) for cls in subclass_scopes for inner in ast.walk(cls)}
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute):
            base = node.value
            owner = base.id if isinstance(base, ast.Name) else None
            if node.attr in HANDLER_SLOTS and isinstance(node.ctx, ast.Store):
                yield f"{line}: assigns {ast.unparse(node)}"
            elif node.attr in private and (
                owner not in ("self", "cls") or owner in aliases or id(node) in in_subclass
            ):
                yield f"{line}: uses aiohttp's private {ast.unparse(node)}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and node.args[1:]:
                name = node.args[1]
                if isinstance(name, ast.Constant) and name.value in private:
                    yield f"{line}: {node.func.id}(..., {name.value!r})"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp"):
            for alias in node.names:
                if _private(alias.name) or any(map(_private, (node.module or "").split("."))):
                    yield f"{line}: imports {node.module}.{alias.name}"


def test_the_scan_catches_the_known_forms() -> None:
    found = "\n".join(violations(KNOWN_BAD, "known_bad.py"))
    for expected in (
        "self._runner",
        "self._server",
        "self._host",
        "assigns runner.server.request_handler",
        "runner._server",
        "'_payload'",
    ):
        assert expected in found, found


def test_no_module_in_gateway_uses_aiohttp_internals() -> None:
    found = [
        violation
        for path in sorted((REPO / "gateway").rglob("*.py"))
        for violation in violations(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert not found, "\n".join(found)
