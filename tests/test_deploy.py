"""The deployment recipes under deploy/: the Kubernetes sidecar checked against the Dockerfile
and the CLI, and the nginx snippets run for real (nginx -> gateway -> nginx -> upstream)."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_model import Dockerfile
from image_runner import (
    APP_JOB_TOKEN,
    DENIED,
    GRANTED,
    GRANTS,
    Container,
    RunningGateway,
    free_port,
    settings_from_environment,
    start_gateway,
    stop,
    wait_listening,
)

from gateway.cli import build_parser
from gateway.settings import Settings, env_for

REPO = Path(__file__).resolve().parent.parent
IMAGE = Dockerfile.parse(REPO / "Dockerfile").final
K8S = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "sidecar.yaml").read_text()))
NGINX = REPO / "deploy" / "nginx"
GATEWAY_AT, INTERNAL_AT = "127.0.0.1:8080", "127.0.0.1:8181"
GITLAB_ONLY_TOKEN = "glcbt-known-to-gitlab-only"


# --- Kubernetes ---------------------------------------------------------------------------------


def kind(name: str) -> dict[str, Any]:
    (document,) = [d for d in K8S if d["kind"] == name]
    return document


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = kind("Deployment")["spec"]["template"]["spec"]
    return spec


def container_named(name: str, init: bool = False) -> dict[str, Any]:
    (found,) = [c for c in pod()["initContainers" if init else "containers"] if c["name"] == name]
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def mounts_of(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def test_pod_runs_as_the_images_user() -> None:
    uid, _, gid = IMAGE.last("USER").args.partition(":")
    context = pod()["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (uid, gid)
    for container in [*pod()["containers"], *pod()["initContainers"]]:
        if "jobtoken-gateway" in container["image"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            # The supervisor's metrics directory and SQLite's temporary files go to /tmp.
            assert "/tmp" in mounts_of(container), container["name"]


def test_gateway_ports_and_probes_are_the_images() -> None:
    gateway = container_named("gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {
        "proxy": int(IMAGE.env["GATEWAY_PORT"]),
        "admin": int(IMAGE.env["GATEWAY_ADMIN_PORT"]),
    }
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/-/health", "port": "admin"}
    assert gateway["startupProbe"]["httpGet"] == {"path": "/-/health", "port": "admin"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "admin"}
    assert "command" not in gateway, "the image's entry point serves"
    assert "args" not in gateway


def test_service_reaches_only_the_gateway() -> None:
    (port,) = kind("Service")["spec"]["ports"]
    assert port["targetPort"] == "proxy"
    assert "ports" not in container_named("app"), "the app must not be reachable around the gateway"
    upstream = env_of(container_named("gateway"))["GATEWAY_UPSTREAM"]
    assert upstream.startswith("http://127.0.0.1:")


def test_gateway_environment_is_valid_settings() -> None:
    known = {env_for(name): name for name in Settings.model_fields}
    env = env_of(container_named("gateway"))
    assert set(env) <= set(known), f"not settings: {sorted(set(env) - set(known))}"
    settings_from_environment(env)


def test_init_container_loads_the_store_the_gateway_reads() -> None:
    init, gateway = container_named("grants-load", init=True), container_named("gateway")
    args = init["args"]
    build_parser().parse_args(args)  # the real CLI accepts it (SystemExit otherwise)
    assert args[:2] == ["store", "load"]
    store = args[args.index("--store") + 1]
    assert store == env_of(gateway)["GATEWAY_STORE"] == IMAGE.env["GATEWAY_STORE"]
    state_dir = str(Path(store.removeprefix("sqlite:///")).parent)
    assert state_dir in IMAGE.volumes
    assert mounts_of(init)[state_dir] == mounts_of(gateway)[state_dir]
    grants_dir = str(Path(args[2]).parent)
    assert mounts_of(init)[grants_dir] == "grants"
    assert grants_dir not in mounts_of(gateway), "the gateway needs the store, not the file"


def test_termination_grace_covers_pre_stop_and_drain() -> None:
    gateway = container_named("gateway")
    pre_stop = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "python", "the image has python, not necessarily sleep"
    (sleep,) = [float(n) for n in re.findall(r"sleep\((\d+(?:\.\d+)?)\)", pre_stop[-1])]
    drain = float(
        env_of(gateway).get("GATEWAY_GRACE_PERIOD", Settings.model_fields["grace_period"].default)
    )
    assert pod()["terminationGracePeriodSeconds"] > sleep + drain


# --- nginx in front of a self-managed GitLab --------------------------------------------------------


def recipe_settings() -> dict[str, str]:
    """The GATEWAY_* lines the nginx recipe tells the reader to set."""
    text = (NGINX / "jobtoken-gateway-http.conf").read_text()
    found = re.findall(r"^#\s+(GATEWAY_[A-Z_]+)=(\S+)", text, flags=re.MULTILINE)
    return {name: shlex.split(value)[0] for name, value in found}


def test_recipe_settings_are_valid() -> None:
    settings = recipe_settings()
    assert {"GATEWAY_UPSTREAM", "GATEWAY_TRUSTED_PROXIES", "GATEWAY_UPSTREAM_VALIDATION"} <= set(
        settings
    )
    assert set(settings) <= {env_for(name) for name in Settings.model_fields}
    built = settings_from_environment(settings)
    assert built.upstream == f"http://{INTERNAL_AT}"
    assert built.trusted_proxies == ["127.0.0.1/32"]
    assert built.upstream_validation is True


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required in CI for the nginx recipe test (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx-light): the recipe is not run")
    return found


def nginx_conf(
    root: Path, front: int, gateway: int, internal: int, workhorse: int, runner_bypass: bool
) -> str:
    """A whole nginx.conf around the two snippets; Workhorse's socket stands as the demo upstream.
    `runner_bypass` uncomments the recipe's `#runner-bypass` option, as its comment says to."""
    snippets = {}
    for name in ("http", "locations"):
        text = (NGINX / f"jobtoken-gateway-{name}.conf").read_text()
        if runner_bypass:
            text = text.replace("#runner-bypass ", "")
        text = text.replace(GATEWAY_AT, f"127.0.0.1:{gateway}").replace(
            INTERNAL_AT, f"127.0.0.1:{internal}"
        )
        path = root / f"{name}.conf"
        path.write_text(text)
        snippets[name] = path
    temp = "".join(
        f"    {kind}_temp_path {root}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {root}/access.log;\n{temp}"
        f"    upstream gitlab-workhorse {{ server 127.0.0.1:{workhorse}; }}\n"
        f"    include {snippets['http']};\n"
        f"    server {{\n        listen 127.0.0.1:{front};\n"
        f"        include {snippets['locations']};\n"
        "        location / { proxy_set_header Host $http_host; proxy_pass http://gitlab-workhorse; }\n"
        "    }\n}\n"
    )


@pytest.fixture(scope="module")
def gitlab_behind_nginx(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[int, RunningGateway]]:
    """client -> nginx (the recipe) -> gateway -> nginx internal server -> demo upstream."""
    yield from behind_nginx(tmp_path_factory, runner_bypass=False)


@pytest.fixture(scope="module")
def runners_around_the_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[int, RunningGateway]]:
    """The same, with the recipe's runner-bypass option on."""
    yield from behind_nginx(tmp_path_factory, runner_bypass=True)


def behind_nginx(
    tmp_path_factory: pytest.TempPathFactory, *, runner_bypass: bool
) -> Iterator[tuple[int, RunningGateway]]:
    binary = nginx_binary()
    container = Container(tmp_path_factory.mktemp("nginx-image"))
    root = tmp_path_factory.mktemp("nginx")
    front, gateway_port, internal, workhorse = (free_port() for _ in range(4))
    # "GitLab" knows one running job the grants file does not: upstream validation finds it.
    gitlab_job = f"{GITLAB_ONLY_TOKEN}=7001:10:acme/app"
    demo_command = ["demo-upstream", "--port", str(workhorse), "--job", gitlab_job]
    demo = container.start("demo-upstream", [*IMAGE.entrypoint, *demo_command])
    nginx = None
    gateway = None
    try:
        wait_listening(workhorse, demo, container.logs[-1])
        conf = nginx_conf(root, front, gateway_port, internal, workhorse, runner_bypass)
        (root / "nginx.conf").write_text(conf)
        checked = subprocess.run(
            [binary, "-t", "-p", str(root), "-c", str(root / "nginx.conf")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stderr
        nginx = subprocess.Popen(
            [binary, "-p", str(root), "-c", str(root / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(front, nginx, root / "error.log")
        settings = recipe_settings()
        settings["GATEWAY_UPSTREAM"] = f"http://127.0.0.1:{internal}"
        init = ["store", "load", str(GRANTS)]
        assert container.run([*IMAGE.entrypoint, *init]).returncode == 0
        gateway = start_gateway(
            container, "behind-nginx", GATEWAY_PORT=str(gateway_port), **settings
        )
        yield front, gateway
    finally:
        for process in (gateway.process if gateway else None, nginx, demo):
            if process is not None:
                stop(process)


def through_nginx(
    setup: tuple[int, RunningGateway],
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    **headers: str,
) -> tuple[int, Any, Any]:
    front, gateway = setup
    headers = {"Host": "gitlab.example.com", **headers}
    return gateway.request(method, path, port=front, body=body, headers=headers)


def via_gateway(body: Any) -> bool:
    """Did the demo upstream's echo come through the gateway (which sets X-Request-ID)?"""
    return "X-Request-ID" in dict(body["headers"])


def test_api_requests_go_through_the_gateway(
    gitlab_behind_nginx: tuple[int, RunningGateway],
) -> None:
    status, headers, body = through_nginx(
        gitlab_behind_nginx, DENIED, **{"JOB-TOKEN": APP_JOB_TOKEN}
    )
    assert status == 403
    assert headers["X-Gateway-Reason"] == "insufficient_permissions"
    assert "read_releases" in body["message"]


def test_granted_api_request_reaches_gitlab_with_the_clients_host_and_chain(
    gitlab_behind_nginx: tuple[int, RunningGateway],
) -> None:
    status, _, body = through_nginx(gitlab_behind_nginx, GRANTED, **{"JOB-TOKEN": APP_JOB_TOKEN})
    assert status == 200
    received = dict(body["headers"])
    assert body["raw_path"] == GRANTED
    assert received["Host"] == "gitlab.example.com"  # GitLab builds its URLs from it
    assert received["X-Forwarded-Proto"] == "http"  # the outer nginx's $scheme, kept (trusted)
    assert received["X-Forwarded-For"] == "127.0.0.1, 127.0.0.1"  # client, then nginx
    assert "X-Request-ID" in received  # set by the gateway: it went through it


def test_git_over_http_goes_through_the_gateway(
    gitlab_behind_nginx: tuple[int, RunningGateway],
) -> None:
    unknown = base64.b64encode(b"gitlab-ci-token:glcbt-nobody-knows-me").decode()
    path = "/acme/app.git/info/refs?service=git-upload-pack"
    status, headers, _ = through_nginx(gitlab_behind_nginx, path, Authorization=f"Basic {unknown}")
    assert status == 401
    assert "X-Gateway-Reason" in headers
    known = base64.b64encode(f"gitlab-ci-token:{APP_JOB_TOKEN}".encode()).decode()
    status, _, body = through_nginx(gitlab_behind_nginx, path, Authorization=f"Basic {known}")
    assert status == 200
    assert "X-Request-ID" in dict(body["headers"])


def test_other_paths_go_straight_to_gitlab(gitlab_behind_nginx: tuple[int, RunningGateway]) -> None:
    status, _, body = through_nginx(gitlab_behind_nginx, "/explore/projects")
    assert status == 200
    assert "X-Request-ID" not in dict(body["headers"])


@pytest.mark.parametrize(
    "path",
    [
        "/%61pi/v4/projects/20/releases",
        "/api//v4/projects/20/releases",
        "/x/../api/v4/projects/20/releases",
    ],
)
def test_disguised_api_paths_cannot_bypass_the_gateway(
    gitlab_behind_nginx: tuple[int, RunningGateway], path: str
) -> None:
    status, headers, _ = through_nginx(gitlab_behind_nginx, path, **{"JOB-TOKEN": APP_JOB_TOKEN})
    assert status in (400, 403), status
    assert "X-Gateway-Reason" in headers or status == 400


def test_encoded_project_paths_reach_gitlab_byte_for_byte(
    gitlab_behind_nginx: tuple[int, RunningGateway],
) -> None:
    path = "/api/v4/projects/acme%2Fplatform%2Fdeployer/deployments?per_page=5"
    status, _, body = through_nginx(gitlab_behind_nginx, path, **{"JOB-TOKEN": APP_JOB_TOKEN})
    assert status == 200
    assert body["raw_path"] == path
    assert via_gateway(body)


RUNNER_JOB = b'{"token": "glcbt-demo-app-job", "state": "running"}'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v4/jobs/5001"),
        ("PATCH", "/api/v4/jobs/5001/trace"),
        ("POST", "/api/v4/jobs/5001/artifacts/authorize"),
        ("POST", "/api/v4/jobs/5001/artifacts"),
        ("POST", "/api/v4/jobs/request"),
        ("POST", "/api/v4/runners/verify"),
    ],
)
def test_the_runner_api_goes_through_the_gateway(
    gitlab_behind_nginx: tuple[int, RunningGateway], method: str, path: str
) -> None:
    # GitLab's rule for each runner route: the job's own token on its own job, the runner's
    # token on /jobs/request and /runners (policies/routes-supplementary.yaml).
    headers = {"Content-Type": "application/json", "JOB-TOKEN": APP_JOB_TOKEN}
    status, _, body = through_nginx(gitlab_behind_nginx, path, method, RUNNER_JOB, **headers)
    assert status == 200
    assert body["raw_path"] == path
    assert via_gateway(body)


def test_a_job_token_on_another_job_is_refused_behind_nginx(
    gitlab_behind_nginx: tuple[int, RunningGateway],
) -> None:
    headers = {"Content-Type": "application/json", "JOB-TOKEN": APP_JOB_TOKEN}
    status, answer_headers, body = through_nginx(
        gitlab_behind_nginx, "/api/v4/jobs/5002", "PUT", RUNNER_JOB, **headers
    )
    assert status == 403
    assert answer_headers["X-Gateway-Reason"] == "job_token_mismatch"
    assert body["message"] == "403 Forbidden"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v4/jobs/5001"),
        ("PATCH", "/api/v4/jobs/5001/trace"),
        ("POST", "/api/v4/jobs/5001/artifacts/authorize"),
        ("POST", "/api/v4/jobs/5001/artifacts"),
        ("POST", "/api/v4/jobs/request"),
        ("POST", "/api/v4/runners/verify"),
    ],
)
def test_the_runner_bypass_option_sends_the_runner_api_straight_to_gitlab(
    runners_around_the_gateway: tuple[int, RunningGateway], method: str, path: str
) -> None:
    headers = {"Content-Type": "application/json", "JOB-TOKEN": APP_JOB_TOKEN}
    status, _, body = through_nginx(runners_around_the_gateway, path, method, RUNNER_JOB, **headers)
    assert status == 200
    assert body["raw_path"] == path
    assert not via_gateway(body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v4/jobs/5001/artifacts"),  # a policy endpoint (read_jobs)
        ("PUT", "/api/v4/jobs/5001/x/../../5001"),  # not a runner call as written
        ("PUT", "/api/v4/jobs/%35001"),
        ("POST", "/api/v4/jobs/5001/artifacts/"),
    ],
)
def test_only_the_exact_runner_calls_skip_the_gateway(
    runners_around_the_gateway: tuple[int, RunningGateway], method: str, path: str
) -> None:
    headers = {"Content-Type": "application/json", "JOB-TOKEN": APP_JOB_TOKEN}
    status, answer_headers, body = through_nginx(
        runners_around_the_gateway, path, method, RUNNER_JOB, **headers
    )
    if status == 200:
        assert via_gateway(body), f"{method} {path} skipped the gateway"
    else:
        assert "X-Gateway-Reason" in answer_headers, (
            f"{method} {path}: {status} not from the gateway"
        )


def test_jobs_only_gitlab_knows_are_validated_through_the_internal_server(
    gitlab_behind_nginx: tuple[int, RunningGateway],
) -> None:
    # GET /api/v4/job goes gateway -> nginx :8181 -> "GitLab"; the allowlist comes from the store.
    status, _, body = through_nginx(
        gitlab_behind_nginx, GRANTED, **{"JOB-TOKEN": GITLAB_ONLY_TOKEN}
    )
    assert status == 200
    assert via_gateway(body)
    status, headers, _ = through_nginx(
        gitlab_behind_nginx, DENIED, **{"JOB-TOKEN": GITLAB_ONLY_TOKEN}
    )
    assert status == 403
    assert headers["X-Gateway-Reason"] == "insufficient_permissions"
