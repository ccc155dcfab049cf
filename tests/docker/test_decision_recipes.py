"""The nginx decision-endpoint recipe (deploy/nginx/jobtoken-decision-*.conf) run as containers:
the gateway image with `serve --decision-port`, nginx in its own container with the recipe files
mounted read-only and unchanged, and the image's demo upstream as Workhorse, on a user-defined
network. Requests go to nginx's published port on 127.0.0.1; the upstream's access log shows
what reached it.

The recipe names the gateway and its internal server by 127.0.0.1 (8082 decision, 8080 proxy,
8181 Workhorse's socket on TCP), as for a gateway on GitLab's own host. In containers that host
is a shared network namespace, the way a Kubernetes pod shares one: nginx joins the gateway
container's (`--network container:`), so the files need no host names and no edits, and the
gateway runs with exactly the settings the recipe's header names (GATEWAY_UPSTREAM=
http://127.0.0.1:8181, GATEWAY_DECISION_PORT=8082, GATEWAY_TRUSTED_PROXIES=127.0.0.1/32).
Only the `gitlab-workhorse` upstream, which GitLab's own server{} defines, is the test's: the
demo upstream's container name on the network.

nginx is the official image when this machine has it or can pull it, else the stand-in
scripts/docker-prepare.sh builds from Debian's nginx-light (both names are read from there).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection

import pytest
from security.conftest import ALLOWED, APP, DENIED, GRANTS_YAML

from .conftest import (
    REPO,
    Engine,
    _choose,
    docker_unavailable,
    run,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

_PREPARE = (REPO / "scripts" / "docker-prepare.sh").read_text()
_NGINX_NAMES = {
    name: re.search(rf'^{name}="([^"]+)"$', _PREPARE, re.MULTILINE)
    for name in ("OFFICIAL_NGINX", "STANDIN_NGINX")
}
RECIPE_FILES = ("jobtoken-decision-http.conf", "jobtoken-decision-locations.conf")
NGINX_PORT = 8000  # the test's GitLab server{} inside the pod; published on a free port
UNKNOWN = "glcbt-recipe-nobody"
FORM = ("Content-Type", "application/x-www-form-urlencoded")
STOP = "/api/v4/projects/20/environments/1/stop"  # admin_environments: granted to APP on #20

# The image's demo upstream (gateway.demo, what `demo-upstream` serves), with aiohttp's access
# log on: `demo-upstream` logs no requests, and the log is how the test sees what reached it.
DEMO_WITH_ACCESS_LOG = """\
import logging, sys
from aiohttp import web
from gateway.demo import create_demo_app
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
web.run_app(create_demo_app(), host="0.0.0.0", port=8081, auto_decompress=False, print=None,
            access_log=logging.getLogger("aiohttp.access"), access_log_format="reached %r %s")
"""


def _nginx_conf(workhorse: str) -> str:
    """nginx.conf: GitLab's part (the `gitlab-workhorse` upstream and a server{}) around the
    recipe's two files, included from where they are mounted. No `user` (nobody exists in both
    images) and no `daemon` (the command line sets it, as the official image's CMD does)."""
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

    port: int  # nginx's published port on 127.0.0.1
    upstream: str  # the demo upstream's container
    gateway: str
    nginx: str
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


@pytest.fixture(scope="module")
def nginx_image(engine: Engine) -> str:
    official, standin = (_NGINX_NAMES["OFFICIAL_NGINX"], _NGINX_NAMES["STANDIN_NGINX"])
    assert official, "scripts/docker-prepare.sh names no OFFICIAL_NGINX"
    assert standin, "scripts/docker-prepare.sh names no STANDIN_NGINX"
    chosen = _choose(official.group(1), standin.group(1), "NGINX_IMAGE")
    if chosen is None:
        docker_unavailable(f"neither {official.group(1)} nor {standin.group(1)} is on this machine")
        raise AssertionError("unreachable")
    return chosen


@pytest.fixture(scope="module")
def pod(
    engine: Engine,
    gateway_image: str,
    nginx_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pod]:
    """The three containers; removed with their network whatever happened."""
    from .conftest import free_port

    root = tmp_path_factory.mktemp("decision-recipe")
    grants = root / "grants.yaml"
    grants.write_text(GRANTS_YAML)
    grants.chmod(0o644)  # read by the image's uid 10001
    base = f"{engine.prefix}-decide"
    network, upstream, gateway, nginx = base, f"{base}-workhorse", f"{base}-gw", f"{base}-nginx"
    conf = root / "nginx.conf"
    conf.write_text(_nginx_conf(upstream))
    conf.chmod(0o644)
    port = free_port()
    confined = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    confined += ["--security-opt", "no-new-privileges"]
    try:
        run(["docker", "network", "create", network], timeout=60)
        run(
            ["docker", "run", "-d", "--name", upstream, "--network", network, *confined,
             "--entrypoint", "python", gateway_image, "-c", DEMO_WITH_ACCESS_LOG],
            timeout=60,
        )  # fmt: skip
        # The pod's network namespace belongs to the gateway: nginx's port is published here.
        run(
            ["docker", "run", "-d", "--name", gateway, "--network", network,
             "-p", f"127.0.0.1:{port}:{NGINX_PORT}", *confined,
             "-e", "GATEWAY_UPSTREAM=http://127.0.0.1:8181",
             "-e", "GATEWAY_DECISION_PORT=8082",
             "-e", 'GATEWAY_TRUSTED_PROXIES=["127.0.0.1/32"]',
             "-e", "GATEWAY_STORE=file:///etc/jobtoken-gateway/grants.yaml",
             "-v", f"{grants}:/etc/jobtoken-gateway/grants.yaml:ro",
             gateway_image, "serve"],
            timeout=60,
        )  # fmt: skip
        mounts = ["-v", f"{conf}:/etc/nginx/nginx.conf:ro"]
        for name in RECIPE_FILES:
            mounts += ["-v", f"{REPO / 'deploy' / 'nginx' / name}:/etc/nginx/jobtoken/{name}:ro"]
        run(
            ["docker", "run", "-d", "--name", nginx, "--network", f"container:{gateway}",
             *mounts, nginx_image, "nginx", "-g", "daemon off;"],
            timeout=60,
        )  # fmt: skip
        pod = Pod(port, upstream, gateway, nginx)

        def answers() -> bool:
            try:
                return pod.send("GET", ALLOWED, [("JOB-TOKEN", APP)]).status == 200
            except OSError:
                return False

        try:
            wait_for("an allowed request through nginx", answers, timeout=60, every=0.5)
        except AssertionError:
            logs = {
                c: run(["docker", "logs", c], check=False, timeout=30) for c in (gateway, nginx)
            }
            shown = "\n".join(
                f"--- {c}\n{r.stdout[-2000:]}{r.stderr[-2000:]}" for c, r in logs.items()
            )
            raise AssertionError(f"the pod never answered 200:\n{shown}") from None
        yield pod
    finally:
        run(["docker", "rm", "-f", nginx, gateway, upstream], check=False, timeout=120)
        run(["docker", "network", "rm", network], check=False, timeout=60)


def test_the_recipe_files_are_mounted_unchanged(pod: Pod) -> None:
    for name in RECIPE_FILES:
        inside = run(["docker", "exec", pod.nginx, "cat", f"/etc/nginx/jobtoken/{name}"]).stdout
        assert inside == (REPO / "deploy" / "nginx" / name).read_text()


def test_an_allowed_request_is_forwarded_by_nginx_after_a_decision(pod: Pod) -> None:
    answer = pod.send("GET", ALLOWED, [("JOB-TOKEN", APP)])
    assert answer.status == 200, answer
    assert answer.echoed()["raw_path"] == f"{ALLOWED}?probe={answer.probe}"
    assert answer.echoed_header("JOB-TOKEN") == [APP]  # GitLab authenticates the same token
    # Straight from nginx, not through the gateway's proxy listener (its 16-hex X-Request-Id).
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


def test_a_body_that_may_carry_a_token_goes_through_the_gateway_proxy(pod: Pod) -> None:
    body = f"job_token={APP}".encode()
    allowed = pod.send("POST", STOP, [FORM], body)
    assert allowed.status == 200, allowed
    assert allowed.echoed()["raw_path"] == f"{STOP}?probe={allowed.probe}"
    assert allowed.echoed()["body_length"] == len(body)
    # nginx -> the gateway's proxy listener (127.0.0.1:8080) -> nginx's internal server
    # (127.0.0.1:8181) -> Workhorse: the gateway's own X-Request-Id is on it.
    assert any(re.fullmatch("[0-9a-f]{16}", v) for v in allowed.echoed_header("X-Request-Id"))
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
    assert pod.reached(allowed, denied, as_json, bare) == [True, False, False, False]
