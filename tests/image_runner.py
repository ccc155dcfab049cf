"""Running the image's commands outside Docker: its filesystem mapped onto a temporary directory,
its environment exactly as the Dockerfile sets it, processes on free loopback ports.

Used by tests/test_entrypoint.py (the image and the compose files) and tests/test_deploy.py
(the nginx recipe).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from unittest import mock
from urllib.parse import urlsplit, urlunsplit

import pytest
from dockerfile_model import Dockerfile
from ports import free_port

from gateway.settings import Settings

__all__ = [
    "APP_JOB_TOKEN",
    "DENIED",
    "GRANTED",
    "GRANTS",
    "IMAGE",
    "Container",
    "RunningGateway",
    "free_port",
    "grants_mount",
    "replace_option",
    "settings_from_environment",
    "start_gateway",
    "stop",
    "value_of",
    "wait_listening",
    "with_port",
]

REPO = Path(__file__).resolve().parent.parent
IMAGE = Dockerfile.parse(REPO / "Dockerfile").final
START_TIMEOUT = 20.0
GRANTS = REPO / "policies" / "grants.example.yaml"
# From policies/grants.example.yaml: acme/app's job may read deployments of project 20
# (acme/platform/deployer) but not its releases.
APP_JOB_TOKEN = "glcbt-demo-app-job"
GRANTED = "/api/v4/projects/20/deployments"
DENIED = "/api/v4/projects/20/releases"


def settings_from_environment(env: Mapping[str, str]) -> Settings:
    """Settings as the gateway builds them from exactly these environment variables."""
    with mock.patch.dict(os.environ, dict(env), clear=True):
        return Settings.build()


def value_of(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def replace_option(argv: list[str], name: str, value: str) -> list[str]:
    index = argv.index(name)
    return [*argv[: index + 1], value, *argv[index + 2 :]]


def grants_mount(service: dict[str, Any]) -> str:
    """Where the service mounts policies/grants.example.yaml."""
    (target,) = [
        v.split(":")[1]
        for v in service["volumes"]
        if v.startswith("./policies/grants.example.yaml:")
    ]
    return target


def with_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


@dataclass
class Container:
    """The image's filesystem, mapped: image path -> path on this machine."""

    root: Path
    mapping: dict[str, str] = field(init=False)
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        state, etc = self.root / "var-lib-jobtoken-gateway", self.root / "etc-jobtoken-gateway"
        state.mkdir(parents=True)
        etc.mkdir(parents=True)
        self.mapping = {
            "/opt/venv/bin": str(Path(sys.executable).parent),
            "/app/policies": str(REPO / "policies"),
            "/var/lib/jobtoken-gateway": str(state),
            "/etc/jobtoken-gateway": str(etc),
        }

    def translate(self, value: str) -> str:
        for image_path in sorted(self.mapping, key=len, reverse=True):
            value = value.replace(image_path, self.mapping[image_path])
        return value

    def argv(self, command: list[str]) -> list[str]:
        return [self.translate(word) for word in command]

    def env(self, **overrides: str) -> dict[str, str]:
        """Exactly the image's environment (nothing inherited from the test run) + overrides."""
        env = {k: self.translate(v) for k, v in IMAGE.env.items()}
        env.update(overrides)
        return env

    @property
    def workdir(self) -> Path:
        return Path(self.translate(IMAGE.last("WORKDIR").args))

    def mount(self, source: Path, target: str) -> None:
        shutil.copyfile(source, self.translate(target))

    def run(self, command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command),
            env=self.env(**env),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        out: IO[bytes] = log.open("wb")
        try:
            return subprocess.Popen(
                self.argv(command),
                env=self.env(**env),
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on {port} after {START_TIMEOUT}s:\n{log.read_text()}")


@dataclass
class RunningGateway:
    container: Container
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    @property
    def port(self) -> int:
        return int(self.env["GATEWAY_PORT"])

    @property
    def admin_port(self) -> int:
        return int(self.env["GATEWAY_ADMIN_PORT"])

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, in the container's environment."""
        return self.container.run(IMAGE.healthcheck.command, **self.env)

    def get(self, path: str, port: int | None = None, **headers: str) -> tuple[int, Any, Any]:
        return self.request("GET", path, port=port, headers=headers)

    def request(
        self,
        method: str,
        path: str,
        *,
        port: int | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        """One request on a fresh connection, the path sent exactly as given; the JSON or text."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode()
        return response.status, response.headers, parsed


def start_gateway(container: Container, name: str, **env: str) -> RunningGateway:
    """ENTRYPOINT + CMD, with the image's env plus `env`; healthy per the image's HEALTHCHECK."""
    env = {"GATEWAY_PORT": str(free_port()), "GATEWAY_ADMIN_PORT": str(free_port()), **env}
    process = container.start(name, [*IMAGE.entrypoint, *IMAGE.cmd], **env)
    gateway = RunningGateway(container, process, env, container.logs[-1])
    deadline = time.monotonic() + START_TIMEOUT
    while gateway.healthcheck().returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"{name} did not become healthy:\n{gateway.log.read_text()}")
        time.sleep(0.1)
    return gateway
