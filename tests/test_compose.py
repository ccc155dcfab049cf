"""docker-compose.yml (replicas + Redis) and docker-compose.sidecar.yml (one gateway + SQLite),
checked without a Docker engine.

Syntax: the Compose specification's JSON schema, as vendored by check-jsonschema (a dev
dependency: `check-jsonschema --builtin-schema vendor.compose-spec`, the schema of
github.com/compose-spec/compose-spec `schema/compose-spec.json`), so nothing is downloaded at
test time. Meaning: what `docker compose up` would get wrong but the schema allows: dangling or
cyclic depends_on, replicas that disagree, ports that clash, commands the CLI rejects, settings
that do not exist, a stop grace shorter than the drain. tests/test_entrypoint.py runs the
commands outside Docker; tests/docker/ runs both stacks under a real engine (where one exists).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_model import Dockerfile
from image_runner import settings_from_environment

from gateway.cli import build_parser
from gateway.settings import Settings, env_for

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "docker-compose.yml"
SIDECAR = REPO / "docker-compose.sidecar.yml"
COMPOSE_FILES = [STACK, SIDECAR]
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
ONE_SHOT = "no"
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<other>))"
)


# --- reading compose files as `docker compose config` would ------------------------------------


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR`, `$$` in every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("other") is not None:
            raise AssertionError(f"interpolation this test does not read: {value!r}")
        name = match.group("name") or match.group("bare")
        op, default = match.group("op"), match.group("default") or ""
        if op == ":-" and not env.get(name):
            return default
        if op == "-" and name not in env:
            return default
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, value)


def load(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The file with YAML merge keys applied (PyYAML does `<<`) and variables interpolated."""
    data = yaml.safe_load(path.read_text())
    return {k: v for k, v in interpolate(data, env or {}).items() if not k.startswith("x-")}


def image() -> Dockerfile:
    return Dockerfile.parse(REPO / "Dockerfile")


def argv(service: dict[str, Any]) -> list[str]:
    """What the container runs after our ENTRYPOINT (`python -m gateway`)."""
    command = service.get("command", image().final.cmd)
    return shlex.split(command) if isinstance(command, str) else list(command)


def uses_our_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    return context == "." or service.get("image") == "jobtoken-gateway:local"


def gateways(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `serve`."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if uses_our_image(svc) and argv(svc)[:1] == ["serve"]
    }


def one_shots(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("restart") == ONE_SHOT}


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a compose duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) for each short-syntax `ports` entry."""
    found = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        found.append((ip, int(parts[-2]), int(parts[-1])))
    return found


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --- the Compose specification -----------------------------------------------------------------


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_files_follow_the_compose_specification() -> None:
    result = check_jsonschema(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("condition: service_completed_successfully", "condition: service_done", "service_done"),
        ("start_period: 15s", "start_periode: 15s", "start_periode"),
        ('restart: "no"', "restart: [no]", "restart"),
    ],
)
def test_schema_catches_a_broken_file(old: str, new: str, complaint: str, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = STACK.read_text()
    assert old in text
    broken.write_text(text.replace(old, new, 1))
    result = check_jsonschema(broken)
    assert result.returncode == 1
    assert complaint in result.stdout


# --- what the schema cannot see -------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_depends_on_names_services_that_exist_without_cycles(path: Path) -> None:
    services = load(path)["services"]
    for name, service in services.items():
        for dependency in depends_on(service):
            assert dependency in services, f"{name} depends on unknown {dependency}"

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"depends_on cycle: {' -> '.join((*trail, name))}"
        for dependency in depends_on(services[name]):
            visit(dependency, (*trail, name))

    for name in services:
        visit(name, ())


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_long_running_services_have_health_checks_and_restart(path: Path) -> None:
    for name, service in load(path)["services"].items():
        if service.get("restart") == ONE_SHOT:
            continue
        assert service.get("restart") in {"unless-stopped", "always"}, name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_dependents_wait_for_health_or_completion(path: Path) -> None:
    services = load(path)["services"]
    for name, service in services.items():
        for dependency, how in depends_on(service).items():
            if services[dependency].get("restart") == ONE_SHOT:
                wanted = "service_completed_successfully"
            else:
                wanted = "service_healthy"
            assert how.get("condition") == wanted, f"{name} -> {dependency}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_gateway_health_checks_are_the_images(path: Path) -> None:
    expected = image().final.healthcheck
    for name, service in gateways(load(path)).items():
        check = service["healthcheck"]
        assert check["test"] == ["CMD", *expected.command], name
        for key in ("interval", "timeout", "start_period", "retries"):
            assert str(check[key]) == expected.options[key.replace("_", "-")], (name, key)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_command_is_accepted_by_the_gateway_cli(path: Path) -> None:
    parser = build_parser()
    for name, service in load(path)["services"].items():
        if uses_our_image(service):
            try:
                parser.parse_args(argv(service))
            except SystemExit:
                pytest.fail(f"{path.name}: {name}: `python -m gateway {shlex.join(argv(service))}`")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_gateway_variables_are_settings_with_valid_values(path: Path) -> None:
    known = {env_for(name): name for name in Settings.model_fields}
    for name, service in load(path)["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        ours = {k: str(v) for k, v in environment.items() if k.startswith("GATEWAY_")}
        unknown = set(ours) - set(known)
        assert not unknown, f"{name}: not settings (silently ignored): {sorted(unknown)}"
        settings_from_environment(ours)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_stop_grace_outlasts_the_drain(path: Path) -> None:
    default = Settings.model_fields["grace_period"].default
    for name, service in gateways(load(path)).items():
        drain = float(service.get("environment", {}).get("GATEWAY_GRACE_PERIOD", default))
        # Docker's default is 10 s, then SIGKILL: in-flight requests would be cut.
        assert seconds(service["stop_grace_period"]) > drain, name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_published_ports_do_not_clash_and_admin_stays_local(path: Path) -> None:
    compose = load(path)
    host_ports = [(p[1]) for svc in compose["services"].values() for p in published(svc)]
    assert len(host_ports) == len(set(host_ports)), host_ports
    env = image().final.env
    proxy, admin = int(env["GATEWAY_PORT"]), int(env["GATEWAY_ADMIN_PORT"])
    ports = [p for svc in compose["services"].values() for p in published(svc)]
    assert {c for _, _, c in ports} == {proxy, admin}
    for ip, _host, container in ports:
        if container == admin:
            assert ip == "127.0.0.1", "metrics and health are not for the outside"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_volumes_are_declared_and_bind_mounts_exist(path: Path) -> None:
    compose = load(path)
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), (name, volume)
            if source.startswith((".", "/")):
                assert (path.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_loader_loads_the_mounted_grants_into_the_gateways_store(path: Path) -> None:
    compose = load(path)
    (loader,) = one_shots(compose).values()
    args = argv(loader)
    assert args[:2] == ["store", "load"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in loader["volumes"]}
    assert args[2] in mounts, "the loaded file is the one mounted"
    assert mounts[args[2]] == "./policies/grants.example.yaml"
    for name, gateway in gateways(compose).items():
        store = gateway.get("environment", {}).get(
            "GATEWAY_STORE", image().final.env["GATEWAY_STORE"]
        )
        assert option(args, "--store") == store, name


# --- the replicas -------------------------------------------------------------------------------


def test_stack_has_replicas_sharing_one_redis_store() -> None:
    compose = load(STACK)
    replicas = gateways(compose)
    assert len(replicas) >= 2
    stores = {svc["environment"]["GATEWAY_STORE"] for svc in replicas.values()}
    assert len(stores) == 1
    (store,) = stores
    url = urlsplit(store)
    assert url.scheme == "redis"
    redis = compose["services"][url.hostname]
    assert redis["image"].startswith("redis:")
    assert "--port" not in redis.get("command", []), "the URL assumes Redis's default port"
    assert url.port == 6379
    for name, service in replicas.items():
        assert depends_on(service)[url.hostname]["condition"] == "service_healthy", name


def test_replicas_agree_on_everything_but_their_ports() -> None:
    replicas = list(gateways(load(STACK)).values())
    first = {k: v for k, v in replicas[0].items() if k != "ports"}
    for other in replicas[1:]:
        assert {k: v for k, v in other.items() if k != "ports"} == first


def test_upstream_defaults_to_the_demo_upstream() -> None:
    compose = load(STACK, env={})
    upstreams = {s["environment"]["GATEWAY_UPSTREAM"] for s in gateways(compose).values()}
    assert upstreams == {"http://demo-upstream:8081"}
    demo = argv(compose["services"]["demo-upstream"])
    assert demo[0] == "demo-upstream"
    assert option(demo, "--port") == "8081"
    assert option(demo, "--host") == "0.0.0.0", "reachable from the gateway containers"


@pytest.mark.parametrize("url", ["https://gitlab.example.com", "http://api.internal:8081"])
def test_upstream_url_variable_points_the_replicas_elsewhere(url: str) -> None:
    compose = load(STACK, env={"UPSTREAM_URL": url})
    upstreams = {s["environment"]["GATEWAY_UPSTREAM"] for s in gateways(compose).values()}
    assert upstreams == {url}
    # An empty UPSTREAM_URL falls back to the demo (`:-`), rather than an invalid empty URL.
    empty = load(STACK, env={"UPSTREAM_URL": ""})
    assert {s["environment"]["GATEWAY_UPSTREAM"] for s in gateways(empty).values()} == {
        "http://demo-upstream:8081"
    }


# --- the sidecar --------------------------------------------------------------------------------


def test_sidecar_shares_the_apps_network_and_reaches_it_on_loopback() -> None:
    compose = load(SIDECAR)
    (gateway,) = gateways(compose).values()
    app_name = gateway["network_mode"].removeprefix("service:")
    app = compose["services"][app_name]
    app_args = argv(app)
    assert option(app_args, "--host") == "127.0.0.1", (
        "the app must only be reachable via the gateway"
    )
    upstream = urlsplit(gateway["environment"]["GATEWAY_UPSTREAM"])
    assert (upstream.hostname, str(upstream.port)) == ("127.0.0.1", option(app_args, "--port"))
    assert depends_on(gateway)[app_name].get("restart") is True
    assert "ports" not in gateway, "a service in another's network namespace cannot publish"
    assert {c for _, _, c in published(app)} == {8080, 9090}


def test_sidecar_uses_the_images_sqlite_store_on_the_state_volume() -> None:
    compose = load(SIDECAR)
    (gateway,) = gateways(compose).values()
    (loader,) = one_shots(compose).values()
    store = image().final.env["GATEWAY_STORE"]
    assert "GATEWAY_STORE" not in gateway.get("environment", {})
    assert option(argv(loader), "--store") == store
    state_dir = str(Path(store.removeprefix("sqlite:///")).parent)
    assert state_dir in image().final.volumes
    volume_of = lambda svc: {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}  # noqa: E731
    assert volume_of(gateway)[state_dir] == volume_of(loader)[state_dir]
    assert loader["network_mode"] == "none", "loading a file needs no network"


# --- images: the official ones, stand-ins only through variables ---------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_files_name_the_official_images_and_take_others_through_variables(path: Path) -> None:
    assert "jobtoken-gateway-ci" not in path.read_text(), "the tests' stand-ins stay out"
    default = load(path, env={})
    ours = {n: s for n, s in default["services"].items() if uses_our_image(s)}
    assert ours
    for name, service in ours.items():
        assert service["image"] == "jobtoken-gateway:local", name
        # A bare name: unset, the Dockerfile's own ARG default (the official python) applies.
        assert service["build"]["args"] == ["PYTHON_IMAGE"], name
    others = {n: s for n, s in default["services"].items() if not uses_our_image(s)}
    for name, service in others.items():
        assert service["image"].startswith("redis:"), name
    env = {"GATEWAY_IMAGE": "local/gw:1", "REDIS_IMAGE": "local/redis:1"}
    swapped = load(path, env=env)["services"]
    assert {swapped[n]["image"] for n in ours} == {"local/gw:1"}
    assert {swapped[n]["image"] for n in others} <= {"local/redis:1"}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_published_ports_move_through_variables_and_admin_stays_local(path: Path) -> None:
    default = load(path, env={})
    names = sorted(set(re.findall(r"\$\{((?:PROXY|ADMIN)_PORT\w*):-\d+\}", path.read_text())))
    assert names, "published ports are variables (the tests pick free ones)"
    moved = load(path, env={name: str(20000 + n) for n, name in enumerate(names)})
    before = sorted(p for svc in default["services"].values() for p in published(svc))
    after = sorted(p for svc in moved["services"].values() for p in published(svc))
    assert {host for _, host, _ in after} == {20000 + n for n in range(len(names))}
    assert [(ip, c) for ip, _, c in sorted(before, key=lambda p: (p[2], p[0]))] == [
        (ip, c) for ip, _, c in sorted(after, key=lambda p: (p[2], p[0]))
    ]
