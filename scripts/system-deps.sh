#!/usr/bin/env bash
# Installs the system packages the test suite talks to for real: redis-server (store tests),
# curl (real-client tests), nginx (the deployment recipe runs in a real nginx), Ruby with Debian's
# Rack, ActionPack, Grape and Doorkeeper (the differential oracle, tests/oracle/). Only as root
# and only what is missing; CI (CI=true) fails if it can't.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
# tests/oracle/gitlab_reader.rb: what GitLab's own parsers read (the gems as Debian packages).
ruby -e 'require "rack"; require "action_dispatch"; require "action_controller"; require "grape"
         require "doorkeeper/oauth/token"' >/dev/null 2>&1 ||
  need+=(ruby ruby-rack ruby-actionpack ruby-grape ruby-doorkeeper)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # RUNLEVEL=1: the packages' maintainer scripts must not start system services.
  RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
elif [ "${CI:-}" = "true" ]; then
  echo "CI needs ${need[*]} but cannot install them (not root or no apt-get)" >&2
  exit 1
else
  echo "note: ${need[*]} missing and not root: the tests that need them will skip with a reason"
fi
