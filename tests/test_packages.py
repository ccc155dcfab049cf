"""The package layout holds (issue 11): stages as packages, and who may import whom.

Each package's docstring says what it owns and what it may import; these tests hold the rules
that keep the decision core framework-free and the listeners out of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "errors.py", "settings.py"}
PACKAGES = [
    "authz",
    "commands",
    "core",
    "ops",
    "proxy",
    "proxy/lean",
    "routing",
    "stores",
    "tools",
    "wire",
]


def _imports(path: Path) -> set[str]:
    """Every module name `path` imports (absolute; relative imports are not used here)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((GATEWAY / package).glob("*.py"))


def test_only_the_entry_point_and_what_every_stage_shares_stay_at_the_top() -> None:
    assert {p.name for p in GATEWAY.glob("*.py")} == TOP_LEVEL
    packages = {
        str(p.parent.relative_to(GATEWAY))
        for p in GATEWAY.rglob("__init__.py")
        if p.parent != GATEWAY
    }
    assert packages == set(PACKAGES)


def test_the_wheel_ships_every_package() -> None:
    # setuptools installs the packages pyproject.toml lists, no more: a package missing there is
    # missing from the image (`pip install .` in the Dockerfile) and from every installed wheel.
    import tomllib

    listed = tomllib.loads((GATEWAY.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    assert set(listed) == {"gateway", "gateway.policies"} | {
        "gateway." + p.replace("/", ".") for p in PACKAGES
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse((GATEWAY / package / "__init__.py").read_text()))
    assert doc, f"gateway/{package}/__init__.py has no docstring"


@pytest.mark.parametrize("path", _modules("core"), ids=lambda p: p.name)
def test_the_decision_core_imports_no_web_framework_and_no_listener(path: Path) -> None:
    forbidden = (
        "aiohttp",
        "gateway.proxy",
        "gateway.authz",
        "gateway.wire",
        "gateway.ops",
        "gateway.tools",
        "gateway.commands",
        "httptools",
        "uvloop",
    )
    bad = sorted(
        n for n in _imports(path) if n.split(".")[0] in forbidden or n.startswith(forbidden)
    )
    assert not bad, f"gateway/core/{path.name} imports {bad}"


@pytest.mark.parametrize("path", _modules("routing"), ids=lambda p: p.name)
def test_the_route_table_imports_no_stage_after_it(path: Path) -> None:
    forbidden = (
        "aiohttp",
        "gateway.proxy",
        "gateway.authz",
        "gateway.wire",
        "gateway.ops",
        "gateway.stores",
        "gateway.commands",
    )
    allowed_core = {"gateway.core.params"} if path.name == "gitpath.py" else set()
    bad = sorted(
        n
        for n in _imports(path)
        if n.startswith(forbidden)
        or (n.startswith("gateway.core") and n not in allowed_core and n != "gateway.core")
    )
    assert not bad, f"gateway/routing/{path.name} imports {bad}"


@pytest.mark.parametrize("path", _modules("wire"), ids=lambda p: p.name)
def test_the_http_machinery_imports_no_gateway_module(path: Path) -> None:
    bad = sorted(
        n for n in _imports(path) if n.startswith("gateway") and not n.startswith("gateway.wire")
    )
    assert not bad, f"gateway/wire/{path.name} imports {bad}"


def test_the_health_probe_imports_only_the_standard_library() -> None:
    # It runs every few seconds beside the gateway (Docker HEALTHCHECK): no third-party import,
    # and its package's __init__ must import nothing either.
    import sys

    stdlib = sys.stdlib_module_names
    for path in (GATEWAY / "ops" / "healthcheck.py", GATEWAY / "ops" / "__init__.py"):
        bad = sorted(n for n in _imports(path) if n.split(".")[0] not in stdlib | {"__future__"})
        assert not bad, f"{path} imports {bad}"
