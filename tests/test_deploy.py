"""The deployment recipes under deploy/: the Kubernetes sidecar checked against the Dockerfile
and the CLI, and the nginx snippets run for real (nginx -> gateway -> nginx -> upstream)."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
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
from readme_blocks import deployment_sections, readme_commands

from gateway.cli import build_parser
from gateway.settings import Settings, env_for

REPO = Path(__file__).resolve().parent.parent
IMAGE = Dockerfile.parse(REPO / "Dockerfile").final
K8S = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "sidecar.yaml").read_text()))
NGINX = REPO / "deploy" / "nginx"
GATEWAY_AT, INTERNAL_AT = "127.0.0.1:8080", "127.0.0.1:8181"
GITLAB_ONLY_TOKEN = "glcbt-known-to-gitlab-only"


# --- Kubernetes ---------------------------------------------------------------------------------

KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate (PyPI, a dev dependency) with its vendored OpenAPI schemas of the
    Kubernetes release it defaults to; --strict rejects fields the schema does not know (a typo
    such as `readinessProbes` would otherwise be dropped silently by the API server)."""
    if not KUBERNETES_VALIDATE.exists():
        pytest.fail(f"{KUBERNETES_VALIDATE} is missing: the dev extra installs it (make venv)")
    return subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--no-warn", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manifest_follows_the_kubernetes_schemas() -> None:
    # No cluster runs here: this is what stands in for `kubectl apply --dry-run=server`.
    path = REPO / "deploy" / "kubernetes" / "sidecar.yaml"
    result = kubernetes_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    for document in K8S:
        name = f"{document['kind'].lower()}/{document['metadata']['name']}"
        assert f"passed for resource {name}" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("readinessProbe:", "readinessProbes:"),  # an unknown field
        ("containerPort: 8080", "containerPort: proxy"),  # a wrong type
        ("terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: [45]"),
    ],
)
def test_manifest_validation_catches_a_broken_manifest(old: str, new: str, tmp_path: Path) -> None:
    text = (REPO / "deploy" / "kubernetes" / "sidecar.yaml").read_text()
    assert old in text
    broken = tmp_path / "sidecar.yaml"
    broken.write_text(text.replace(old, new, 1))
    assert kubernetes_validate(broken).returncode != 0


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
        init = ["store", "load", str(GRANTS), "--create"]
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
RUNNER_HEADERS = {"Content-Type": "application/json", "JOB-TOKEN": APP_JOB_TOKEN}
RUNNER_CALLS = [
    ("PUT", "/api/v4/jobs/5001"),
    ("PATCH", "/api/v4/jobs/5001/trace"),
    ("POST", "/api/v4/jobs/5001/artifacts/authorize"),
    ("POST", "/api/v4/jobs/5001/artifacts"),
    ("POST", "/api/v4/jobs/request"),
    ("POST", "/api/v4/runners/verify"),
]


@pytest.mark.parametrize(("method", "path"), RUNNER_CALLS)
def test_the_runner_api_goes_through_the_gateway(
    gitlab_behind_nginx: tuple[int, RunningGateway], method: str, path: str
) -> None:
    # GitLab's rule for each runner route: the job's own token on its own job, the runner's
    # token on /jobs/request and /runners (policies/routes-supplementary.yaml).
    status, _, body = through_nginx(gitlab_behind_nginx, path, method, RUNNER_JOB, **RUNNER_HEADERS)
    assert status == 200
    assert body["raw_path"] == path
    assert via_gateway(body)


def test_a_job_token_on_another_job_is_refused_behind_nginx(
    gitlab_behind_nginx: tuple[int, RunningGateway],
) -> None:
    status, answer_headers, body = through_nginx(
        gitlab_behind_nginx, "/api/v4/jobs/5002", "PUT", RUNNER_JOB, **RUNNER_HEADERS
    )
    assert status == 403
    assert answer_headers["X-Gateway-Reason"] == "job_token_mismatch"
    assert body["message"] == "403 Forbidden"


@pytest.mark.parametrize(("method", "path"), RUNNER_CALLS)
def test_the_runner_bypass_option_sends_the_runner_api_straight_to_gitlab(
    runners_around_the_gateway: tuple[int, RunningGateway], method: str, path: str
) -> None:
    status, _, body = through_nginx(
        runners_around_the_gateway, path, method, RUNNER_JOB, **RUNNER_HEADERS
    )
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
    status, answer_headers, body = through_nginx(
        runners_around_the_gateway, path, method, RUNNER_JOB, **RUNNER_HEADERS
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


# --- README "Deployment": the host commands, run as written -------------------------------------

HOST_SECTION = "Running `serve` on a host"


def _host_env(tmp_path: Path, proxy: int, admin: int) -> dict[str, str]:
    # The README's `python` is this test run's interpreter; free ports through the settings'
    # own variables (the commands stay as written: 8080/9090 are their defaults).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(GATEWAY_PORT=str(proxy), GATEWAY_ADMIN_PORT=str(admin), HOME=str(tmp_path))
    return env


def _start(command: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _ready(port: int, process: subprocess.Popen[bytes], log: Path, path: str = "/-/ready") -> None:
    import http.client
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status in (200, 404):
                return
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    raise AssertionError(f"not ready on {port}: {log.read_text()}")


def _terminate(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=10)


def test_readme_host_commands_serve_and_stop_cleanly(tmp_path: Path) -> None:
    import http.client

    load, serve, serve_workers, demo = readme_commands(HOST_SECTION)
    assert load.startswith("python -m gateway store load grants.yaml")
    assert serve.startswith("python -m gateway serve --upstream http://127.0.0.1:8081")
    assert "GATEWAY_WORKERS=4 python -m gateway serve" in serve_workers
    assert demo.startswith("python -m gateway demo-upstream --port 8081")
    (tmp_path / "grants.yaml").write_bytes(GRANTS.read_bytes())
    proxy, admin, upstream = free_port(), free_port(), free_port()
    env = _host_env(tmp_path, proxy, admin)
    result = subprocess.run(
        ["bash", "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "gateway.db").is_file(), "sqlite:///gateway.db is the working directory's"
    # The demo API on a free port instead of 8081, and the gateway in front of it.
    processes = [
        _start(demo.replace("8081", str(upstream)), tmp_path, env, tmp_path / "demo.log"),
        _start(serve.replace(":8081", f":{upstream}"), tmp_path, env, tmp_path / "serve.log"),
    ]
    try:
        _ready(upstream, processes[0], tmp_path / "demo.log", "/")
        _ready(admin, processes[1], tmp_path / "serve.log")
        for path, token, expected in (
            (GRANTED, APP_JOB_TOKEN, 200),
            (DENIED, APP_JOB_TOKEN, 403),
        ):
            conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
            conn.request("GET", path, headers={"JOB-TOKEN": token})
            assert conn.getresponse().status == expected, path
            conn.close()
    finally:
        codes = [_terminate(process) for process in reversed(processes)]
    assert codes[0] == 0, (tmp_path / "serve.log").read_text()
    # Several workers in front of a GitLab: it starts (nothing contacts the upstream before a
    # request) and a SIGTERM drains and ends every worker with 0.
    workers = _start(serve_workers, tmp_path, env, tmp_path / "workers.log")
    try:
        _ready(admin, workers, tmp_path / "workers.log")
    finally:
        assert _terminate(workers) == 0, (tmp_path / "workers.log").read_text()


# Which test runs each README "Deployment" section's shell commands: every one, in order, read
# from the README itself (tests/readme_blocks.py), changed only where a shared test machine must
# (free ports, unique names, a local base image: tests/docker/conftest.py `adapt`).
RUN_BY = {
    HOST_SECTION: "tests/test_deploy.py",
    "The container image": "tests/docker/test_image.py",
    "Sidecar: one gateway next to one API server": "tests/docker/test_sidecar.py",
    "Several replicas with Redis": "tests/docker/test_stack.py",
    "In front of a self-managed GitLab behind its own nginx": "tests/docker/test_image.py",
}
# No cluster runs here: these commands are not run, what they apply is validated.
VALIDATED_ONLY = {"Kubernetes sidecar": "test_manifest_follows_the_kubernetes_schemas"}


def test_every_deployment_command_is_run_by_a_test_or_declared_validated_only() -> None:
    assert set(deployment_sections()) == set(RUN_BY) | set(VALIDATED_ONLY)
    for section, path in RUN_BY.items():
        assert f'"{section}"' in (REPO / path).read_text(), f"{path} does not run {section!r}"
    for section, test in VALIDATED_ONLY.items():
        assert f"def {test}(" in Path(__file__).read_text()
        for command in readme_commands(section):
            assert command.startswith("kubectl "), command
            for path in re.findall(r"(?:=|-f )((?:deploy|policies)/\S+)", command):
                assert (REPO / path).is_file(), path
