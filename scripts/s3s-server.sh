#!/usr/bin/env bash
# Starts the second S3 implementation the tests run against, s3s-fs (an S3
# server over a directory, installed into .test-env/s3s by
# `scripts/setup-test-env.sh --s3s`), on 127.0.0.1 in the background, with an
# empty data directory. Prints its endpoint (http://127.0.0.1:PORT) on stdout
# and writes its pid to $1 (default .test-env/s3s.pid). Credentials are fixed:
# access key `test`, secret key `test` (what testkit and s3tool.py sign with;
# unlike moto, s3s-fs checks the signatures).
#   GIT_S3_TEST_SERVER=s3s GIT_S3_TEST_ENDPOINT="$(scripts/s3s-server.sh)" cargo test ...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${GIT_S3_TEST_S3S_BIN:-$root/.test-env/s3s/bin/s3s-fs}"
pidfile="${1:-$root/.test-env/s3s.pid}"
dir="$(dirname "$pidfile")"
data="$dir/s3s-data"
if [ ! -x "$bin" ]; then
  echo "s3s-fs missing at $bin: run scripts/setup-test-env.sh --s3s" >&2
  exit 1
fi
# shellcheck source=lib/local-server.sh
. "$root/scripts/lib/local-server.sh"
port="$(free_port)"
mkdir -p "$dir"
rm -rf "$data"
mkdir -p "$data"
"$bin" --host 127.0.0.1 --port "$port" --access-key test --secret-key test "$data" >"$dir/s3s.log" 2>&1 &
echo $! >"$pidfile"
serve_endpoint_when_up s3s-fs "$port" "$dir/s3s.log"
