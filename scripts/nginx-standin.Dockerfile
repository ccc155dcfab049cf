# A stand-in for the official nginx image, for machines that cannot pull it (tests only; built by
# scripts/docker-prepare.sh on its Debian python stand-in, like the redis one). Debian's
# nginx-light has what the decision recipes use (auth_request, map, upstream keepalive); it runs
# as the official image does: `nginx -g "daemon off;"` with /etc/nginx/nginx.conf, which
# tests/docker/test_decision_recipes.py mounts read-only.
ARG BASE=jobtoken-gateway-ci/python-base:bookworm
FROM ${BASE}
# policy-rc.d: the package's maintainer scripts must not start nginx during the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
EXPOSE 80
# The official image's stop signal: a graceful shutdown.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
