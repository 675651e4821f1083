#!/usr/bin/env bash
# Starts the local S3-compatible endpoint (moto's server) on 127.0.0.1 in the
# background. Prints `export AWS_ENDPOINT_URL=...` style lines on stdout and
# writes the pid to $1 (default .test-env/moto.pid).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GIT_S3_TEST_VENV:-$root/.test-env/venv}"
pidfile="${1:-$root/.test-env/moto.pid}"
# shellcheck source=lib/local-server.sh
. "$root/scripts/lib/local-server.sh"
port="$(free_port)"
mkdir -p "$(dirname "$pidfile")"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$(dirname "$pidfile")/moto.log" 2>&1 &
echo $! >"$pidfile"
serve_endpoint_when_up moto_server "$port" "$(dirname "$pidfile")/moto.log"
