"""Each decision-endpoint recipe of deploy/, run for real: allowed, denied, unknown-token,
no-token, body-carrier and refused-target requests through the proxy, and what the upstream got.

Recipes: nginx (deploy/nginx/jobtoken-decision-*.conf), GitLab Omnibus's nginx
(deploy/omnibus/gitlab.rb + jobtoken-decision-api.conf, inside a server{} shaped like Omnibus's
gitlab-http.conf), Envoy HTTP ext_authz (deploy/envoy/), Traefik ForwardAuth (deploy/traefik/)
and Caddy forward_auth (deploy/caddy/). The configuration is read from those files; only ports
and file paths are replaced.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from security.conftest import ALLOWED, APP, DENIED, OUTSIDER

from .conftest import (
    DEPLOY,
    Backends,
    Front,
    free_port,
    program,
    start_program,
    stop,
)

UNKNOWN = "glcbt-recipe-nobody"
FORM = ("Content-Type", "application/x-www-form-urlencoded")
JSON_TYPE = ("Content-Type", "application/json")
STOP = "/api/v4/projects/20/environments/1/stop"  # admin_environments: granted to APP on #20


# ---- the recipes, started from deploy/ -------------------------------------------------------


def _nginx_wrapper(root: Path, front: int, http_conf: str, server_conf: str, omnibus: bool) -> str:
    temp = "".join(
        f"    {kind}_temp_path {root}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    # Omnibus's gitlab-http.conf has its own regex location for the API before the custom
    # config; the recipe's `^~` location must win over it.
    omnibus_api = (
        "        location ~ ^/api/v\\d { proxy_set_header Host $http_host; "
        "proxy_pass http://gitlab-workhorse; }\n"
        if omnibus
        else ""
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\n"
        f"error_log {root}/error.log;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {root}/access.log;\n{temp}"
        "    upstream gitlab-workhorse { server 127.0.0.1:@UPSTREAM@; keepalive 8; }\n"
        f"    {http_conf}\n"
        f"    server {{\n        listen 127.0.0.1:{front};\n"
        f"{omnibus_api}"
        f"        {server_conf}\n"
        "        location / { proxy_set_header Host $http_host; proxy_pass http://gitlab-workhorse; }\n"
        "    }\n}\n"
    )


def _ruby_string(text: str, key: str) -> str:
    """The value of `nginx['<key>'] = "..."` in gitlab.rb (Ruby double-quoted, \\n escapes)."""
    match = re.search(r"^nginx\['" + key + r"'\] = \"(.*)\"$", text, re.MULTILINE)
    assert match, f"gitlab.rb sets no nginx['{key}']"
    return match.group(1).replace("\\n", "\n")


def _start_nginx(
    root: Path, backends: Backends, omnibus: bool
) -> tuple[int, subprocess.Popen[bytes]]:
    binary = program("nginx", "/usr/sbin/nginx")
    front = free_port()
    http_file = root / "jobtoken-decision-http.conf"
    http_text = (DEPLOY / "nginx" / "jobtoken-decision-http.conf").read_text()
    # The recipe's internal server (Workhorse's socket on 127.0.0.1:8181 for the gateway's proxy
    # listener) listens on a port of its own here; the gateway forwards to the upstream directly.
    http_text = http_text.replace("listen 127.0.0.1:8181;", f"listen 127.0.0.1:{free_port()};")
    http_file.write_text(backends.ports(http_text))
    if omnibus:
        server_file = root / "jobtoken-decision-api.conf"
        server_file.write_text(
            backends.ports((DEPLOY / "omnibus" / "jobtoken-decision-api.conf").read_text())
        )
        gitlab_rb = (DEPLOY / "omnibus" / "gitlab.rb").read_text()
        jobtoken_dir = "/etc/gitlab/jobtoken/"
        http_conf = _ruby_string(gitlab_rb, "custom_nginx_config").replace(jobtoken_dir, f"{root}/")
        server_conf = _ruby_string(gitlab_rb, "custom_gitlab_server_config").replace(
            jobtoken_dir, f"{root}/"
        )
    else:
        server_file = root / "jobtoken-decision-locations.conf"
        server_file.write_text(
            backends.ports((DEPLOY / "nginx" / "jobtoken-decision-locations.conf").read_text())
        )
        http_conf, server_conf = f"include {http_file};", f"include {server_file};"
    conf = _nginx_wrapper(root, front, http_conf, server_conf, omnibus)
    conf = conf.replace("@UPSTREAM@", str(backends.upstream.port))
    (root / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [binary, "-t", "-p", str(root), "-c", str(root / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    command = [binary, "-p", str(root), "-c", str(root / "nginx.conf")]
    return front, start_program(command, front, root, "nginx")


def _start_envoy(root: Path, backends: Backends) -> tuple[int, subprocess.Popen[bytes]]:
    binary = program("envoy")
    front = free_port()
    text = backends.ports((DEPLOY / "envoy" / "jobtoken-ext-authz.yaml").read_text())
    text = text.replace("port_value: 10000}", f"port_value: {front}}}")
    text = text.replace(
        "port_value: 8181}", f"port_value: {backends.internal_port}}}"
    )  # GitLab = the upstream
    config = root / "envoy.yaml"
    config.write_text(text)
    command = [
        binary, "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
        "-l", "warning", "--log-path", str(root / "envoy-own.log"),
    ]  # fmt: skip
    return front, start_program(command, front, root, "envoy")


def _start_traefik(root: Path, backends: Backends) -> tuple[int, subprocess.Popen[bytes]]:
    binary = program("traefik")
    front = free_port()
    dynamic = root / "dynamic.yml"
    dynamic.write_text(
        backends.ports((DEPLOY / "traefik" / "jobtoken-forward-auth.yml").read_text())
    )
    command = [
        binary, f"--entryPoints.web.address=127.0.0.1:{front}",
        f"--providers.file.filename={dynamic}", "--log.level=ERROR", "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
    ]  # fmt: skip
    process = start_program(command, front, root, "traefik")
    _wait_routed(front, process)
    return front, process


def _start_caddy(root: Path, backends: Backends) -> tuple[int, subprocess.Popen[bytes]]:
    binary = program("caddy")
    front = free_port()
    text = backends.ports((DEPLOY / "caddy" / "Caddyfile").read_text())
    text = text.replace("http://:10003", f"http://:{front}")
    config = root / "Caddyfile"
    config.write_text(text)
    command = [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    env = {"XDG_DATA_HOME": str(root), "XDG_CONFIG_HOME": str(root), "HOME": str(root)}
    return front, start_program(command, front, root, "caddy", env)


def _wait_routed(port: int, process: subprocess.Popen[bytes]) -> None:
    """Traefik listens before its file provider's routers are in place: wait for a route."""
    import http.client
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/-/recipe-probe")
            if connection.getresponse().status != 404:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise AssertionError("traefik never routed a request")


STARTERS = {
    "nginx": lambda root, b: _start_nginx(root, b, omnibus=False),
    "omnibus": lambda root, b: _start_nginx(root, b, omnibus=True),
    "envoy": _start_envoy,
    "traefik": _start_traefik,
    "caddy": _start_caddy,
}


@pytest.fixture(scope="module", params=list(STARTERS))
def front(
    request: pytest.FixtureRequest, backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    port, process = STARTERS[name](root, backends)
    try:
        yield Front(name, port, backends)
    finally:
        stop(process)


# ---- the cases -------------------------------------------------------------------------------


def test_an_allowed_request_reaches_the_upstream_after_a_decision(front: Front) -> None:
    answer = front.send("GET", ALLOWED, [("JOB-TOKEN", APP)])
    assert answer.status == 200, answer
    (received,) = answer.received
    assert (received.method, received.raw_path) == ("GET", ALLOWED)
    assert received.header("JOB-TOKEN") == [APP]  # GitLab authenticates the same token
    assert not answer.via_gateway_proxy(), "forwarded by the proxy itself, after the decision"


def test_a_denied_request_gets_gitlabs_answer_and_never_reaches_the_upstream(
    front: Front,
) -> None:
    answer = front.send("GET", DENIED, [("JOB-TOKEN", APP)])
    assert answer.status == 403
    assert answer.received == []
    assert answer.reason == "insufficient_permissions"
    message = json.loads(answer.body)["message"]
    assert message.startswith("403 Forbidden - ")
    assert "read_releases" in message


def test_an_unknown_token_is_a_401(front: Front) -> None:
    answer = front.send("GET", ALLOWED, [("JOB-TOKEN", UNKNOWN)])
    assert answer.status == 401
    assert answer.received == []
    assert json.loads(answer.body) == {"message": "401 Unauthorized"}
    assert answer.reason == "token_invalid"


def test_a_request_without_a_job_token_is_left_to_gitlab(front: Front) -> None:
    answer = front.send("GET", DENIED)
    assert answer.status == 200
    (received,) = answer.received
    assert received.raw_path == DENIED


def test_a_body_that_may_carry_a_token_goes_through_the_gateway_proxy(front: Front) -> None:
    denied = front.send("POST", DENIED, [FORM], f"job_token={APP}".encode())
    assert denied.status == 403
    assert denied.received == []
    assert denied.reason == "insufficient_permissions"
    allowed = front.send("POST", STOP, [FORM], f"job_token={APP}".encode())
    assert allowed.status == 200
    (received,) = allowed.received
    assert received.raw_path == STOP
    assert received.body_length == len(f"job_token={APP}")
    if front.name != "envoy":  # Envoy checks form bodies itself (with_request_body)
        assert allowed.via_gateway_proxy()
    # A token in a JSON body, and a POST without Content-Type (Rack reads it as a form).
    body = json.dumps({"job_token": APP}).encode()
    assert front.send("POST", DENIED, [JSON_TYPE], body).received == []
    bare = front.send("POST", DENIED, [], f"job_token={APP}".encode())
    assert bare.status == 403
    assert bare.received == []
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="job_token"\r\n\r\n'
        + APP.encode()
        + b"\r\n--b--\r\n"
    )
    parts = front.send(
        "POST", DENIED, [("Content-Type", "multipart/form-data; boundary=b")], multipart
    )
    assert parts.status == 403
    assert parts.received == []


def test_other_bodies_are_decided_on_their_headers(front: Front) -> None:
    path = "/api/v4/projects/20/packages/generic/pkg/1.0/file.bin"  # admin_packages: granted
    answer = front.send(
        "PUT", path, [("JOB-TOKEN", APP), ("Content-Type", "application/octet-stream")], b"x" * 1000
    )
    assert answer.status == 200
    (received,) = answer.received
    assert received.body_length == 1000
    denied = front.send(
        "PUT", path, [("JOB-TOKEN", OUTSIDER), ("Content-Type", "application/octet-stream")], b"x"
    )
    assert denied.status == 403
    assert denied.received == []


@pytest.mark.parametrize(
    "target",
    [
        f"{ALLOWED}/../releases",
        f"{ALLOWED}/%2e%2e/releases",
        f"{ALLOWED}%2F..%2Freleases",
        "/api/v4/projects/20/./releases",
    ],
)
def test_a_refused_target_never_reaches_the_upstream(front: Front, target: str) -> None:
    answer = front.send("GET", target, [("JOB-TOKEN", APP)])
    assert 400 <= answer.status < 500, (answer.status, answer.body)
    assert answer.received == []


def test_a_client_cannot_name_another_original_request(front: Front) -> None:
    # The client's own protocol headers: overwritten by the proxy, or refused as ambiguous.
    headers = [
        ("JOB-TOKEN", APP),
        ("X-Original-Method", "GET"),
        ("X-Original-URI", ALLOWED),
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", ALLOWED),
    ]
    answer = front.send("GET", DENIED, headers)
    assert answer.status == 403
    assert answer.received == []


def test_the_gateways_headers_on_a_denial(front: Front) -> None:
    answer = front.send("GET", DENIED, [("JOB-TOKEN", APP)])
    assert answer.headers.get("x-gateway-request-id")
    assert answer.headers["content-type"].startswith("application/json")


def test_git_over_http_is_decided_too(front: Front) -> None:
    import base64

    def basic(token: str) -> tuple[str, str]:
        return (
            "Authorization",
            "Basic " + base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode(),
        )

    path = "/acme/platform/target.git/info/refs?service=git-upload-pack"
    allowed = front.send("GET", path, [basic(APP)])  # acme/app is on the target's allowlist
    assert allowed.status == 200
    (received,) = allowed.received
    assert received.raw_path == path
    denied = front.send("GET", path, [basic(OUTSIDER)])
    if front.name == "omnibus":  # that recipe covers /api/v4/ only; GitLab checks git itself
        assert denied.status == 200
        return
    assert denied.status == 403
    assert denied.received == []
