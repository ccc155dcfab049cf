"""The demo upstream: GitLab's `GET /job` for the tokens it is given, and a faithful echo."""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from fixtures.proxy import REPO, call, free_port
from yarl import URL

from gateway.tools.demo import DemoJob, create_demo_app, parse_job


@pytest.fixture
async def a_demo(aiohttp_server):
    server = await aiohttp_server(
        create_demo_app({"glcbt-known": DemoJob(id=7, project_id=10, project_path="acme/app")}),
        auto_decompress=False,
    )
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(
    "headers",
    [
        {"JOB-TOKEN": "glcbt-known"},
        {"Authorization": "Basic " + base64.b64encode(b"gitlab-ci-token:glcbt-known").decode()},
    ],
)
async def test_current_job_answers_like_gitlab_for_a_known_token(a_demo, headers):
    answer = await call("GET", a_demo + "/api/v4/job", headers=headers)

    job = answer.json()
    assert answer.status == 200
    assert (job["id"], job["status"], job["pipeline"]["project_id"]) == (7, "running", 10)
    assert job["web_url"].endswith("/acme/app/-/jobs/7")


async def test_current_job_is_401_for_an_unknown_token(a_demo):
    for query in ("", "?job_token=nope"):
        answer = await call("GET", a_demo + "/api/v4/job" + query)
        assert answer.status == 401
        assert answer.json() == {"message": "401 Unauthorized"}


async def test_other_requests_are_described_as_received(a_demo):
    target = "/api/v4/projects/a%2Fb/files?x=%7E+&x=2"
    answer = await call(
        "PUT", URL(a_demo + target, encoded=True), data=b"payload", headers={"X-A": "1"}
    )

    seen = answer.json()
    assert seen["method"] == "PUT"
    assert seen["raw_path"] == target
    assert ["X-A", "1"] in seen["headers"]
    assert seen["body_length"] == 7
    assert seen["body_sha256"] == hashlib.sha256(b"payload").hexdigest()


def test_job_specs_parse_and_reject_garbage():
    assert parse_job("t=5:10:g/p") == ("t", DemoJob(id=5, project_id=10, project_path="g/p"))
    with pytest.raises(ValueError, match="TOKEN=JOB_ID"):
        parse_job("t=5")


def test_the_command_serves_until_stopped():
    port = free_port()
    command = [sys.executable, "-m", "gateway", "demo-upstream", "--port", str(port)]
    with subprocess.Popen([*command, "--job", "tok=1:2"], stderr=subprocess.PIPE) as demo:
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{port}/api/v4/job", headers={"JOB-TOKEN": "tok"}
                    )
                    with urllib.request.urlopen(request, timeout=1) as answer:
                        assert answer.status == 200
                        break
                except OSError:
                    assert time.monotonic() < deadline, "demo-upstream did not start"
                    time.sleep(0.1)
        finally:
            demo.terminate()
            demo.wait(timeout=10)


def test_a_bad_job_spec_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo-upstream", "--job", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--job" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_run_starts_the_demo_and_its_printed_commands_work(tmp_path):
    """scripts/run-demo.sh (what `make run` runs), with the copy-paste curl commands it prints."""
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is required in CI (make system-deps installs it)")
        pytest.skip("curl is not installed")
    ports = {"UPSTREAM_PORT": free_port(), "PROXY_PORT": free_port(), "ADMIN_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "DEMO_STATE_DIR": str(tmp_path)}
    demo = subprocess.Popen(
        [str(REPO / "scripts" / "run-demo.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # a process group, as a terminal's Ctrl-C sees it
    )
    try:
        commands = _printed_curl_commands(demo)
        answers = [subprocess.run(shlex.split(c), capture_output=True, text=True, timeout=10)
                   for c in commands]  # fmt: skip
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=30) == 130
    allowed, denied = (answer.stdout for answer in answers)
    assert allowed.startswith("HTTP/1.1 200")
    assert denied.startswith("HTTP/1.1 403")
    assert "X-Gateway-Reason: not_allowlisted" in denied


def _printed_curl_commands(demo: subprocess.Popen[str]) -> list[str]:
    assert demo.stdout is not None
    commands: list[str] = []
    for line in demo.stdout:
        if line.strip().startswith("curl -i"):
            commands.append(line.strip())
        if "Press Ctrl-C" in line:
            return commands
    raise AssertionError(f"run-demo.sh exited {demo.wait()} before it was ready")
