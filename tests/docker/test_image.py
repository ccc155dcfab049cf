"""The image under a real Docker engine: README "The container image" commands run as written
(tests/docker/conftest.py `adapt` says what a shared test machine changes in them), then the
container's health check, its confinement (non-root, read-only root filesystem, no
capabilities) and its SIGTERM drain checked from outside and from inside."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import (
    APP_TOKEN,
    DENIED,
    GRANTED,
    TOOL_TOKEN,
    Engine,
    adapt,
    free_port,
    health,
    http,
    inspect,
    published_ports,
    readme_commands,
    run,
    wait_for,
)

# Builds and stacks take longer than the suite's 120 s default on a busy 2-core machine.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]
SECTION = "The container image"
HEALTHY_WITHIN = 60.0  # the HEALTHCHECK's interval is 10 s: its first run decides


@dataclass
class Deployed:
    name: str  # the gateway container
    proxy: int  # its published proxy port on 127.0.0.1
    admin: int
    curl_outputs: list[str]  # what the README's curl lines printed, in order
    readme_run: str  # the README's `docker run -d --name jtg ... jobtoken-gateway`
    run_command: str  # ... as run
    ready_after: float  # seconds from docker run -d until /-/ready answered 200
    healthy_after: float


@pytest.fixture(scope="module")
def deployed(engine: Engine, gateway_image: str) -> Iterator[Deployed]:
    """Every command of the README section after the build, in order; torn down whatever
    happened (containers, network and volume all carry the session's prefix)."""
    commands = [c for c in readme_commands(SECTION) if not c.startswith("docker build")]
    ports = published_ports(commands)
    adapted = [adapt(c, engine, ports) for c in commands]
    names = [engine.prefix, f"{engine.prefix}-api"]
    try:
        outputs: list[str] = []
        raw, run_command, started, ready_after, healthy_after = "", "", 0.0, 0.0, 0.0
        for original, command in zip(commands, adapted, strict=True):
            if command.startswith("curl "):
                outputs.append(run(command, timeout=30).stdout)
                continue
            is_gateway = command.startswith(f"docker run -d --name {engine.prefix} ")
            if is_gateway:
                raw, run_command, started = original, command, time.monotonic()
            run(command, env=engine.env(), timeout=120)
            if is_gateway:
                # The curl lines below it need a ready gateway: a reader waits too.
                wait_for(
                    "/-/ready",
                    lambda: http(ports[9090], "/-/ready")[0] == 200,
                    HEALTHY_WITHIN,
                    0.05,
                )
                ready_after = time.monotonic() - started
                wait_for("healthy", lambda: health(engine.prefix) == "healthy", HEALTHY_WITHIN)
                healthy_after = time.monotonic() - started
                # ... and the demo API behind it (started a moment before, on a busy machine).
                wait_for(
                    "the demo API", lambda: http(ports[8080], GRANTED, APP_TOKEN)[0] == 200, 30
                )
        assert run_command, f"README {SECTION}: no `docker run -d --name jtg ...` line"
        yield Deployed(
            engine.prefix,
            ports[8080],
            ports[9090],
            outputs,
            raw,
            run_command,
            ready_after,
            healthy_after,
        )
    finally:
        run(["docker", "rm", "-f", "-v", *names], check=False, timeout=60)
        run(["docker", "volume", "rm", f"{engine.prefix}-data"], check=False, timeout=60)
        run(["docker", "network", "rm", engine.prefix], check=False, timeout=60)


def test_the_image_builds_as_the_dockerfile_says(
    engine: Engine, gateway_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = inspect(gateway_image)["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python", "-m", "gateway"]
    assert config["Cmd"] == ["serve"]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "gateway.ops.healthcheck"]
    size = int(str(inspect(gateway_image)["Size"]))
    with capsys.disabled():
        print(f"\nimage {gateway_image} on {engine.python_image}: {size / 1e6:.0f} MB")


def test_the_readmes_commands_serve_the_demo(deployed: Deployed) -> None:
    allowed, denied = deployed.curl_outputs
    assert json.loads(allowed)["raw_path"] == GRANTED, "forwarded to the demo API"
    assert json.loads(denied)["message"].startswith("403 Forbidden")
    assert "read_releases" in json.loads(denied)["message"]
    assert http(deployed.proxy, GRANTED, TOOL_TOKEN)[0] == 403
    assert http(deployed.proxy, DENIED, APP_TOKEN)[0] == 403
    assert http(deployed.proxy, GRANTED, "glcbt-not-a-known-job")[0] == 401


def test_healthcheck_turns_healthy_and_cold_start_is_reported(
    deployed: Deployed, capsys: pytest.CaptureFixture[str]
) -> None:
    assert health(deployed.name) == "healthy"
    log = inspect(deployed.name)["State"]
    assert isinstance(log, dict)
    assert log["Health"]["Log"][-1]["ExitCode"] == 0
    with capsys.disabled():
        print(
            f"\ncold start (docker run -d -> /-/ready 200): {deployed.ready_after:.2f} s; "
            f"-> HEALTHCHECK healthy: {deployed.healthy_after:.1f} s"
        )


def test_the_run_command_confines_the_container(deployed: Deployed) -> None:
    for flag in ("--read-only", "--cap-drop ALL", "--security-opt no-new-privileges"):
        assert flag in deployed.run_command, f"README's docker run lacks {flag}"
    host = inspect(deployed.name)["HostConfig"]
    assert isinstance(host, dict)
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]


def in_container(name: str, code: str) -> tuple[int, str]:
    result = run(["docker", "exec", name, "python", "-c", code], check=False, timeout=30)
    return result.returncode, result.stdout + result.stderr


def test_inside_it_runs_non_root_without_capabilities(deployed: Deployed) -> None:
    assert run(["docker", "exec", deployed.name, "id", "-u"], timeout=30).stdout.strip() == "10001"
    assert run(["docker", "exec", deployed.name, "id", "-g"], timeout=30).stdout.strip() == "10001"
    _, status = in_container(deployed.name, "print(open('/proc/1/status').read())")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for capability_set in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[capability_set], 16) == 0, (capability_set, fields[capability_set])
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Uid"].split()[:2] == ["10001", "10001"]


def test_inside_the_root_filesystem_is_read_only(deployed: Deployed) -> None:
    code, out = in_container(deployed.name, "open('/written-by-a-test', 'w')")
    assert code != 0
    assert "Read-only file system" in out, out
    code, out = in_container(deployed.name, "open('/app/policies/routes.yaml', 'a')")
    assert code != 0
    # Writable: the state volume (the SQLite store) and the /tmp tmpfs, nothing else.
    code, out = in_container(deployed.name, "open('/tmp/x', 'w').write('x')")
    assert code == 0, out
    code, out = in_container(
        deployed.name, "open('/var/lib/jobtoken-gateway/probe', 'w').write('x')"
    )
    assert code == 0, out
    in_container(deployed.name, "import os; os.remove('/var/lib/jobtoken-gateway/probe')")


# A slow API for the drain: every answer takes SLOW_SECONDS, so a request is in flight when the
# container gets SIGTERM. It runs in the image (its python) on the README's network.
SLOW_SECONDS = 3
SLOW_API = f"""
import http.server, json, time
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep({SLOW_SECONDS})
        body = json.dumps({{"raw_path": self.path, "slow": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 8081), Slow).serve_forever()
"""


def test_sigterm_drains_in_flight_requests_and_exits_zero(
    engine: Engine, gateway_image: str, deployed: Deployed
) -> None:
    # Its own container, from the same README command, in front of a slow API on the same
    # network: the module's other tests keep theirs.
    name, slow = f"{engine.prefix}-drain", f"{engine.prefix}-slow"
    ports = {8080: free_port(), 9090: free_port()}
    readme_run = deployed.readme_run.replace("--name jtg ", "--name jtg-drain ", 1)
    readme_run = readme_run.replace("http://jtg-api:8081", "http://jtg-slow:8081")
    try:
        run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                slow,
                "--network",
                engine.prefix,
                "--entrypoint",
                "python",
                gateway_image,
                "-c",
                SLOW_API,
            ],
            timeout=60,
        )
        run(adapt(readme_run, engine, ports), env=engine.env(), timeout=120)
        wait_for("/-/ready", lambda: http(ports[9090], "/-/ready")[0] == 200, HEALTHY_WITHIN)
        wait_for("the slow API", lambda: http(ports[8080], GRANTED, APP_TOKEN, 10)[0] == 200, 30)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(http, ports[8080], GRANTED, APP_TOKEN, 30)
            time.sleep(1)  # the gateway waits for the slow API: the request is in flight
            run(["docker", "kill", "--signal", "TERM", name], timeout=30)
            status, body = in_flight.result(timeout=40)
        assert status == 200, body[:300]
        assert json.loads(body) == {"raw_path": GRANTED, "slow": True}
        wait_for(
            "exit after the drain",
            lambda: (
                run(
                    ["docker", "inspect", "-f", "{{.State.Running}}", name], timeout=30
                ).stdout.strip()
                == "false"
            ),
            40,
        )
        state = inspect(name)["State"]
        assert isinstance(state, dict)
        logs = run(["docker", "logs", name], timeout=30).stderr
        assert state["ExitCode"] == 0, logs[-2000:]
        assert state["OOMKilled"] is False
        assert '"event":"draining"' in logs.replace(" ", "")
    finally:
        run(["docker", "rm", "-f", "-v", name, slow], check=False, timeout=60)


NGINX_SECTION = "In front of a self-managed GitLab behind its own nginx"
GITLAB_ONLY_TOKEN = "glcbt-known-to-gitlab-only"


def test_the_host_network_recipe_serves_on_loopback_only(
    engine: Engine, gateway_image: str, tmp_path: Path
) -> None:
    # Its own names (the module's `deployed` uses the session's), the same store preparation
    # as README "The container image" (volume + store load), then the nginx recipe's docker run.
    own = dataclasses.replace(engine, prefix=f"{engine.prefix}-host")
    (command,) = readme_commands(NGINX_SECTION)
    assert "--network host" in command
    prepare = [
        c
        for c in readme_commands(SECTION)
        if c.startswith("docker volume create") or " store load " in c
    ]
    proxy, admin, upstream = free_port(), free_port(), free_port()
    # Workhorse's loopback listener (127.0.0.1:8181) is a demo API on the host here, which
    # also answers GET /api/v4/job for a token only "GitLab" knows (upstream validation).
    log = (tmp_path / "upstream.log").open("wb")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo-upstream",
            "--port",
            str(upstream),
            "--job",
            f"{GITLAB_ONLY_TOKEN}=7001:10:acme/app",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    adapted = adapt(command, own, {}).replace(
        "http://127.0.0.1:8181", f"http://127.0.0.1:{upstream}"
    )
    # On the host's network the listeners' ports are the host's: free ones, through settings.
    adapted = adapted.replace(
        "--network host ",
        f"--network host -e GATEWAY_PORT={proxy} -e GATEWAY_ADMIN_PORT={admin} ",
        1,
    )
    try:
        for step in prepare:
            run(adapt(step, own, {}), env=own.env(), timeout=120)
        run(adapted, env=own.env(), timeout=120)
        wait_for("/-/ready", lambda: http(admin, "/-/ready")[0] == 200, HEALTHY_WITHIN)
        assert http(proxy, GRANTED, APP_TOKEN)[0] == 200
        assert http(proxy, DENIED, APP_TOKEN)[0] == 403
        # Not in the store, vouched for by the upstream's GET /api/v4/job: acme/app's job.
        assert http(proxy, GRANTED, GITLAB_ONLY_TOKEN)[0] == 200
        # Loopback only: the host's other addresses (the Docker bridge's) do not answer.
        bridge = _bridge_gateway()
        for port in (proxy, admin):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((bridge, port), timeout=2).close()
    finally:
        run(["docker", "rm", "-f", "-v", own.prefix], check=False, timeout=60)
        run(["docker", "volume", "rm", f"{own.prefix}-data"], check=False, timeout=60)
        demo.terminate()
        demo.wait(timeout=10)
        log.close()


def _bridge_gateway() -> str:
    """The host's address on Docker's default bridge. Docker 20.10 names it in the network's
    IPAM config; Docker 28 may leave `Gateway` out there (the subnet alone), and then the
    bridge's first host address is the host's (Docker's default IPAM gives it the gateway)."""
    config = json.loads(
        run(
            ["docker", "network", "inspect", "-f", "{{json (index .IPAM.Config 0)}}", "bridge"],
            timeout=30,
        ).stdout
    )
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))
