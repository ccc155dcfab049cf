# jobtoken-gateway: a policy gateway for GitLab CI/CD job tokens, as a container.
#
#   docker build -t jobtoken-gateway .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
#     -e GATEWAY_UPSTREAM=http://api.internal:8081 \
#     -v jtg-data:/var/lib/jobtoken-gateway jobtoken-gateway
#
# (README.md "The container image" has the full sequence, which tests/docker/ runs.)
#
# Ports: 8080 proxy, 9090 admin (/-/health, /-/ready, /metrics).
# Volumes: /var/lib/jobtoken-gateway holds the embedded SQLite token store (written by the
# gateway user); /etc/jobtoken-gateway is where deployments mount grants files (read-only).
# The route table (policies/) is baked in at /app/policies.
#
# tests/test_docker.py lints this file with hadolint and tests/test_entrypoint.py runs its ENV,
# ENTRYPOINT, CMD and HEALTHCHECK outside Docker against a real upstream: keep them in the
# simple forms those tests parse (ENV key=value, exec-form JSON arrays). No `# syntax=` line: the
# engine's built-in frontend reads this file, so a build pulls nothing but the base image (offline
# builds on a local base work: tests/docker/ builds it so, docker build --build-arg PYTHON_IMAGE=).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- builder: wheels only, into a venv that the runtime stage copies as is ---------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies get their own layer, rebuilt only when pyproject.toml changes. They are read from
# pyproject.toml itself so the image can never ship a different dependency set than the package.
# --only-binary=:all: is a guarantee, not an optimisation: aiohttp, yarl, multidict, frozenlist,
# propcache and uvloop must be their C-extension wheels (the pure-Python HTTP parser is where
# aiohttp's request-smuggling CVEs lived: CVE-2023-47627, CVE-2024-23829, CVE-2024-52304,
# CVE-2025-53643), and there is no compiler here, so a missing wheel fails the build instead of
# silently degrading it.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/venv/bin/pip install --only-binary=:all: --requirement requirements.txt

# The route table, readable by the runtime's non-root user whatever modes the build context had
# (a checkout made under umask 077 would otherwise ship files only root can read).
COPY policies ./policies
RUN chmod -R u=rwX,go=rX ./policies

# The package itself, without touching the dependency layer above.
COPY README.md ./
COPY gateway ./gateway
# The same check `serve` runs at start-up, run at build time: no image without the C extensions
# (-P: import the installed package, not ./gateway from the working directory).
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -P -c "from gateway.proxy import server; server.check_extensions()"

# ---- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="jobtoken-gateway" \
      org.opencontainers.image.description="Policy gateway enforcing GitLab's fine-grained permissions for CI/CD job tokens" \
      org.opencontainers.image.licenses="MIT"

# A fixed, non-root uid/gid so volume ownership and Kubernetes runAsUser can name it.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway -m 0750 /var/lib/jobtoken-gateway \
    && install -d -m 0755 /etc/jobtoken-gateway

COPY --from=builder /opt/venv /opt/venv
# Root-owned and read-only for the gateway user: the route table is part of the release.
COPY --from=builder /src/policies /app/policies

# Every GATEWAY_* variable is a setting (README "Configuration reference"); the listeners bind
# all interfaces because inside a container loopback is unreachable from the outside.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_ADMIN_HOST=0.0.0.0 \
    GATEWAY_ADMIN_PORT=9090 \
    GATEWAY_ROUTES=/app/policies/routes.yaml \
    GATEWAY_STORE=sqlite:////var/lib/jobtoken-gateway/gateway.db \
    GATEWAY_LOG_FORMAT=json

WORKDIR /var/lib/jobtoken-gateway
# Only the state directory is a volume: grants under /etc/jobtoken-gateway are configuration,
# bind-mounted (or a ConfigMap) by the deployment, and an anonymous volume there would hide that.
VOLUME ["/var/lib/jobtoken-gateway"]
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 9090

# SIGTERM starts the graceful drain: in-flight requests get GATEWAY_GRACE_PERIOD seconds (30 by
# default). Give the container longer than that before SIGKILL (compose stop_grace_period,
# Kubernetes terminationGracePeriodSeconds; `docker stop` waits only 10 s unless told -t).
STOPSIGNAL SIGTERM

# Liveness of the admin listener; stdlib only (no curl/wget in the image). It follows
# GATEWAY_ADMIN_PORT/GATEWAY_ADMIN_HOST, so changing the port through the environment keeps it right.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "gateway.ops.healthcheck"]

ENTRYPOINT ["python", "-m", "gateway"]
CMD ["serve"]
