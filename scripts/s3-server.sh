#!/usr/bin/env bash
# Starts the local S3-compatible endpoint (moto's server) on 127.0.0.1 in the
# background. Prints `export AWS_ENDPOINT_URL=...` style lines on stdout and
# writes the pid to $1 (default .test-env/moto.pid).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GIT_S3_TEST_VENV:-$root/.test-env/venv}"
pidfile="${1:-$root/.test-env/moto.pid}"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$(dirname "$pidfile")"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$(dirname "$pidfile")/moto.log" 2>&1 &
echo $! >"$pidfile"
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "http://127.0.0.1:$port"
    exit 0
  fi
  sleep 0.1
done
echo "moto_server did not start; see $(dirname "$pidfile")/moto.log" >&2
exit 1
