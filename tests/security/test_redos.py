"""ReDoS-shaped targets: matching and refusal checks stay linear in the target's length, so a
client cannot buy seconds of gateway CPU with one 8 KB request line.

Timings compare two lengths of the same shape by ratio (4x longer must cost well under 16x,
the quadratic growth), never against an absolute budget: the machine may be slow or shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gateway.routing import targets
from gateway.routing.table import RouteTable

from .conftest import APP, ROUTES

TABLE = RouteTable.load(ROUTES)
SHORT, LONG = 800, 3200  # segments; LONG keeps the request line under max_line_size (8190)


def cost(work: Callable[[], object], repeat: int = 5) -> float:
    """Best-of-`repeat` seconds of one call (the minimum is the least noisy estimate)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def growth(shape: Callable[[int], str], check: Callable[[str], object]) -> float:
    short, long = shape(SHORT), shape(LONG)
    check(short)  # warm caches
    return cost(lambda: check(long)) / max(cost(lambda: check(short)), 1e-7)


SHAPES: dict[str, tuple[str, Callable[[int], str]]] = {
    # two splats: *package_version and (*path/)
    "generic package, match": (
        "GET",
        lambda n: "/api/v4/projects/1/packages/generic/p" + "/a" * n + "/f",
    ),
    "generic package, miss": (
        "PUT",
        lambda n: "/api/v4/projects/1/packages/generic/p" + "/a" * n + "/f/authorize/x",
    ),
    # *package_name/-/*file_name
    "npm tarball, miss": ("GET", lambda n: "/api/v4/projects/1/packages/npm" + "/-" * n + "/x/y"),
    # spanning :ref_name, then *artifact_path
    "artifacts ref, miss": (
        "GET",
        lambda n: "/api/v4/projects/1/jobs/artifacts" + "/raw" * n + "/x",
    ),
    # *module_name/@v/:module_version.info
    "go module, miss": ("GET", lambda n: "/api/v4/projects/1/packages/go" + "/@v" * n + "/x.infox"),
}


@pytest.mark.parametrize("name", SHAPES)
def test_route_matching_time_grows_linearly_with_the_path(name):
    method, shape = SHAPES[name]

    ratio = growth(shape, lambda target: TABLE.match(method, target))

    # 4x the segments: linear costs ~4x, quadratic ~16x. Allow noise, not a square.
    assert ratio < 8, f"{name}: 4x longer path cost {ratio:.1f}x"


REFUSAL_SHAPES: dict[str, Callable[[int], str]] = {
    "percent-25 runs": lambda n: "/api/v4/projects/1/" + "%25" * n + "2",
    "dot runs": lambda n: "/api/v4/projects/1/" + "/." * n + "x",
    "encoded dot runs": lambda n: "/api/v4/projects/1/x" + "%2e" * n,
    "encoded slash runs": lambda n: "/api/v4/projects/1/x" + "%2F" * n + ".",
    "bad escapes": lambda n: "/api/v4/projects/1/" + "%%" * n,
}


@pytest.mark.parametrize("name", REFUSAL_SHAPES)
def test_refusal_checks_grow_linearly_with_the_path(name):
    ratio = growth(REFUSAL_SHAPES[name], targets.check_target)
    strict = growth(REFUSAL_SHAPES[name], lambda target: TABLE.match("GET", target))

    assert ratio < 8, f"check_target: 4x longer target cost {ratio:.1f}x"
    assert strict < 8, f"match: 4x longer target cost {strict:.1f}x"


async def test_a_long_splat_path_through_the_gateway_is_answered_promptly(guarded):
    _, shape = SHAPES["generic package, miss"]
    short_target, long_target = shape(100), shape(LONG)
    await guarded.attack.send("PUT", short_target, token=APP)

    started = time.perf_counter()
    short = await guarded.attack.send("PUT", short_target, token=APP)
    short_seconds = time.perf_counter() - started
    started = time.perf_counter()
    long = await guarded.attack.send("PUT", long_target, token=APP)
    long_seconds = time.perf_counter() - started

    assert short.status == long.status == 403  # no such route: denied, never an error
    assert long_seconds < max(20 * short_seconds, 0.25), (long_seconds, short_seconds)
