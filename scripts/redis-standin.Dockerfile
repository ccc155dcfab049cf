# A stand-in for the official redis image, for machines that cannot pull it (tests only; built by
# scripts/docker-prepare.sh on its Debian python stand-in). It answers the compose file's
# `redis-server ...` command and `redis-cli ping` health check as the official image does, which
# also runs without protected mode so that other containers on the network may connect.
ARG BASE=jobtoken-gateway-ci/python-base:bookworm
FROM ${BASE}
# policy-rc.d: the package's maintainer scripts must not start redis during the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /data \
    && printf '#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no --bind 0.0.0.0\n' \
       > /usr/local/bin/redis-server \
    && chmod +x /usr/local/bin/redis-server
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
