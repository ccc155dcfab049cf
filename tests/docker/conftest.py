"""A real Docker engine for the tests marked `docker`: the engine, compose v2 and the base images
that scripts/docker-prepare.sh (`make docker-prepare`, part of `make test`) prepares.

Without an engine these tests skip with the reason; in CI (CI=true) they fail instead, since
.ci/run prepares the engine. Every container, network and volume a test creates carries the
session's unique prefix and is removed in teardown (`docker compose down -v` for stacks).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from readme_blocks import readme_commands

REPO = Path(__file__).resolve().parents[2]
# The images the product names, and the stand-ins scripts/docker-prepare.sh builds from Debian
# packages where no registry but the package registries is reachable.
OFFICIAL_PYTHON = re.search(
    r"^ARG PYTHON_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE
)
OFFICIAL_REDIS = re.search(
    r"image: \$\{REDIS_IMAGE:-([^}]+)\}", (REPO / "docker-compose.yml").read_text()
)
STANDIN_PYTHON = "jobtoken-gateway-ci/python-base:bookworm"
STANDIN_REDIS = "jobtoken-gateway-ci/redis:bookworm"
# The tag the tests build the image as (README's `jobtoken-gateway` is left to the user).
TEST_IMAGE = "jobtoken-gateway:docker-tests"
# From policies/grants.example.yaml.
APP_TOKEN = "glcbt-demo-app-job"  # acme/app: read_deployments (+ admin_packages) on project 20
TOOL_TOKEN = "glcbt-demo-tool-job"  # other/tool: not in project 20's allowlist
WORKER_TOKEN = "glcbt-demo-worker-job"  # acme/platform/sub/worker: read_releases on project 20
GRANTED = "/api/v4/projects/20/deployments"
DENIED = "/api/v4/projects/20/releases"


def docker_unavailable(reason: str) -> None:
    """Skip with the reason; in CI, where .ci/run prepares the engine, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the docker tests must run in CI: {reason}")
    pytest.skip(f"{reason} (make docker-prepare sets it up as root)")


def run(
    argv: list[str] | str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """A command (a string runs under bash, as a README line would) in the repository."""
    result = subprocess.run(
        argv if isinstance(argv, list) else ["bash", "-c", argv],
        cwd=REPO,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        shown = argv if isinstance(argv, str) else " ".join(argv)
        raise AssertionError(
            f"`{shown}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def http(port: int, path: str, token: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    """A GET to 127.0.0.1:port; (0, b"") when nothing answers."""
    conn = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"JOB-TOKEN": token} if token else {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def image_present(name: str) -> bool:
    return run(["docker", "image", "inspect", name], check=False, timeout=30).returncode == 0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on every interface and below the kernel's ephemeral range. Docker binds a
    published port only when the container starts, and again after each restart: a port from
    the ephemeral range may meanwhile have become the source port of some outgoing connection
    (this test's own polling included), and the container then comes back unpublished."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(20000, max(low, 20001)))
    random.shuffle(candidates)
    for port in candidates:
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise AssertionError("no free port below the ephemeral range")


def wait_for(what: str, probe: Callable[[], bool], timeout: float, every: float = 0.25) -> float:
    """Polls `probe` until true; returns the seconds it took. Bounded: fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")


def inspect(container: str) -> dict[str, Any]:
    """`docker inspect` of one container or image."""
    out = run(["docker", "inspect", container], timeout=30).stdout
    document: list[dict[str, Any]] = json.loads(out)
    return document[0]


def health(container: str) -> str:
    result = run(
        [
            "docker",
            "inspect",
            "-f",
            "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
            container,
        ],
        check=False,
        timeout=30,
    )
    return result.stdout.strip()


@dataclass
class Engine:
    """The prepared engine: which base images this machine uses, the session's unique prefix."""

    python_image: str  # the Dockerfile's base: official when here, else the stand-in
    redis_image: str
    prefix: str = field(default_factory=lambda: f"jtgtest{uuid.uuid4().hex[:8]}")

    @property
    def official_python(self) -> bool:
        return OFFICIAL_PYTHON is not None and self.python_image == OFFICIAL_PYTHON.group(1)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for docker/compose commands: the base images and the test's tag as
        the variables the product's files read (PYTHON_IMAGE, REDIS_IMAGE, GATEWAY_IMAGE)."""
        env = dict(os.environ)
        env.pop("COMPOSE_FILE", None)
        env.update(PYTHON_IMAGE=self.python_image, REDIS_IMAGE=self.redis_image)
        env.update(GATEWAY_IMAGE=TEST_IMAGE, **extra)
        # One builder for the session: `docker build` and compose's `up --build` then share
        # the layer cache (the classic builder; BuildKit would build everything a second time,
        # and without buildx the docker client has only the classic one anyway).
        env["DOCKER_BUILDKIT"] = "0"
        return env


def _choose(official: str, standin: str, variable: str) -> str | None:
    if chosen := os.environ.get(variable):
        return chosen if image_present(chosen) else None
    for name in (official, standin):
        if image_present(name):
            return name
    return None


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The Docker engine, or a skip (a failure in CI) saying what is missing."""
    try:
        info = run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=20)
    except FileNotFoundError:
        docker_unavailable("no docker client on PATH")
        raise AssertionError("unreachable") from None
    except subprocess.TimeoutExpired:
        docker_unavailable("`docker info` did not answer within 20 s")
        raise AssertionError("unreachable") from None
    if info.returncode != 0:
        docker_unavailable(f"no Docker engine answers `docker info`: {info.stderr.strip()[:200]}")
    compose = run(["docker", "compose", "version"], check=False, timeout=20)
    if compose.returncode != 0:
        docker_unavailable("no compose v2 (`docker compose version` fails)")
    assert OFFICIAL_PYTHON, "the Dockerfile has no ARG PYTHON_IMAGE=..."
    assert OFFICIAL_REDIS, "docker-compose.yml has no image: ${REDIS_IMAGE:-...}"
    python = _choose(OFFICIAL_PYTHON.group(1), STANDIN_PYTHON, "PYTHON_IMAGE")
    redis = _choose(OFFICIAL_REDIS.group(1), STANDIN_REDIS, "REDIS_IMAGE")
    if python is None or redis is None:
        docker_unavailable(
            f"neither {OFFICIAL_PYTHON.group(1)} / {OFFICIAL_REDIS.group(1)} nor the local "
            "stand-ins are on this machine"
        )
        raise AssertionError("unreachable")
    return Engine(python_image=python, redis_image=redis)


# --- the README's commands ----------------------------------------------------------------------


def published_ports(commands: list[str]) -> dict[int, int]:
    """A free loopback port for every host port the commands publish or curl."""
    found = re.findall(r"-p (?:127\.0\.0\.1:)?(\d+):\d+|localhost:(\d+)", " ".join(commands))
    return {int(port): free_port() for pair in found for port in pair if port}


def adapt(command: str, engine: Engine, ports: Mapping[int, int]) -> str:
    """A README command as the tests run it, changed only where a shared test machine needs it:
    the session's names instead of `jtg*`, the test tag instead of `jobtoken-gateway`, free
    loopback ports instead of 8080/9090, and the base image as a build argument where the
    official one cannot be pulled."""
    command = re.sub(r"(?<![\w.-])jtg(?=[-\s:]|$)", engine.prefix, command)
    command = re.sub(r"(?<=\s)jobtoken-gateway(?=\s|$)", TEST_IMAGE, command)
    command = re.sub(
        r"-p (?:127\.0\.0\.1:)?(\d+):(\d+)",
        lambda m: f"-p 127.0.0.1:{ports[int(m.group(1))]}:{m.group(2)}",
        command,
    )
    command = re.sub(r"localhost:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", command)
    if command.startswith("docker build ") and not engine.official_python:
        command = command.replace(
            "docker build ", f"docker build --build-arg PYTHON_IMAGE={engine.python_image} ", 1
        )
    if command.startswith("curl "):
        command = command.replace("curl ", "curl -sS --max-time 10 ", 1)
    return command


@pytest.fixture(scope="session")
def gateway_image(engine: Engine) -> str:
    """The image, built by the README's `docker build` (the session's tag)."""
    (build,) = [c for c in readme_commands("The container image") if c.startswith("docker build")]
    run(adapt(build, engine, {}), env=engine.env(), timeout=600)
    return TEST_IMAGE


# --- compose stacks -----------------------------------------------------------------------------


@dataclass
class Stack:
    """A compose stack started by the README's commands under the session's project name."""

    engine: Engine
    project: str
    ports: dict[int, int]  # README port -> the free loopback port it got
    env: dict[str, str]
    outputs: list[str]  # what the README's curl lines printed, in order
    file_args: list[str]  # ["-f", FILE] for a non-default compose file
    deferred: list[str]  # README commands left for the tests to run (adapted), in order

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        argv = ["docker", "compose", *self.file_args, *args]
        return run(argv, env=self.env, timeout=timeout, check=check).stdout

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()


@contextlib.contextmanager
def readme_stack(
    engine: Engine, section: str, port_variables: Mapping[int, str], defer: str
) -> Iterator[Stack]:
    """Runs every command of README `### {section}` in order (adapted: free ports through the
    compose file's port variables, the session's project name), except those containing
    `defer`, which the tests run themselves (Stack.deferred); always ends with
    `docker compose down -v`, which removes the stack's containers, network and volumes."""
    commands = readme_commands(section)
    ports = {port: free_port() for port in port_variables}
    project = f"{engine.prefix}-{re.sub(r'[^a-z0-9]+', '', section.lower())[:20]}"
    variables = {name: str(ports[port]) for port, name in port_variables.items()}
    env = engine.env(COMPOSE_PROJECT_NAME=project, **variables)
    first = commands[0].split()
    assert first[:2] == ["docker", "compose"], f"README {section}: starts with {commands[0]}"
    file_args = first[2:4] if first[2:3] == ["-f"] else []
    stack = Stack(engine, project, ports, env, [], file_args, [])
    try:
        for command in commands:
            adapted = adapt(command, engine, ports)
            if command.startswith("docker compose ") and " exec " in command:
                adapted = adapted.replace(" exec ", " exec -T ", 1)  # no terminal here
            if defer in command:
                stack.deferred.append(adapted)
                continue
            timeout = 600 if " up " in command else 120
            result = run(adapted, env=env, timeout=timeout)
            if command.startswith("curl "):
                stack.outputs.append(result.stdout)
        yield stack
    finally:
        down = ["docker", "compose", *file_args, "down", "-v", "--remove-orphans", "-t", "5"]
        run(down, env=env, timeout=180, check=False)
