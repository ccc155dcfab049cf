#!/usr/bin/env bash
# `make run`: the demo upstream on :8081, the gateway on :8080 (admin :9090) in front of it with
# the embedded SQLite store seeded from policies/grants.example.yaml. Runs in the foreground;
# Ctrl-C stops both. Ports: UPSTREAM_PORT, PROXY_PORT, ADMIN_PORT. State: DEMO_STATE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
UPSTREAM_PORT="${UPSTREAM_PORT:-8081}"
PROXY_PORT="${PROXY_PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9090}"
STATE_DIR="${DEMO_STATE_DIR:-.demo}"
STORE="sqlite:///${STATE_DIR}/gateway.sqlite3"
GRANTS="policies/grants.example.yaml"

die() { echo "run-demo: $*" >&2; exit 1; }

[ -x "$PY" ] || die "$PY not found: run 'make venv' first (or set PY=...)"
mkdir -p "$STATE_DIR"

echo "run-demo: loading $GRANTS into $STORE"
"$PY" -m gateway store load "$GRANTS" --store "$STORE" --create \
  || die "'python -m gateway store load' failed (see above); the demo needs a seeded store"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The demo upstream also knows the example job token, for --upstream-validation experiments.
"$PY" -m gateway demo-upstream --port "$UPSTREAM_PORT" \
  --job "glcbt-demo-app-job=5001:10:acme/app" &
pids+=($!)

"$PY" -m gateway serve --upstream "http://127.0.0.1:${UPSTREAM_PORT}" \
  --port "$PROXY_PORT" --admin-port "$ADMIN_PORT" --store "$STORE" &
pids+=($!)

# Wait until the gateway says it is ready and the demo upstream answers (or one of the two
# processes died): the commands printed below must work at once.
"$PY" - "$ADMIN_PORT" "$UPSTREAM_PORT" "${pids[@]}" <<'EOF' || die "the demo did not start (see the messages above)"
import os, sys, time, urllib.request
port, upstream, pids = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]


# Loopback only: never through an http_proxy from the environment (urlopen would use it).
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(url):
    try:
        with _direct.open(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    for pid in pids:
        try:
            os.kill(pid, 0)  # the shell's children (never ours): bash reaps them when they exit
        except ProcessLookupError:
            sys.exit(1)
    if answers(f"http://127.0.0.1:{port}/-/ready") and answers(f"http://127.0.0.1:{upstream}/"):
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
EOF

base="http://127.0.0.1:${PROXY_PORT}/api/v4/projects/acme%2Fplatform%2Fdeployer/deployments"
cat <<EOF

jobtoken-gateway is running: proxy http://127.0.0.1:${PROXY_PORT}, admin http://127.0.0.1:${ADMIN_PORT}
upstream: the demo API on http://127.0.0.1:${UPSTREAM_PORT}; store: ${STORE}

Allowed (acme/app's job token; acme/app holds read_deployments on acme/platform/deployer):
  curl -i -H 'JOB-TOKEN: glcbt-demo-app-job' '${base}'

Denied (other/tool is not in acme/platform/deployer's allowlist -> 403, X-Gateway-Reason):
  curl -i -H 'JOB-TOKEN: glcbt-demo-tool-job' '${base}'

Also: curl -s http://127.0.0.1:${ADMIN_PORT}/-/ready ; curl -s http://127.0.0.1:${ADMIN_PORT}/metrics
Press Ctrl-C to stop both processes.
EOF

# Stay in the foreground until Ctrl-C or until either process exits.
wait -n "${pids[@]}" || true
echo "run-demo: a process exited; stopping" >&2
exit 1
