#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the test
# dependencies, builds, starts a local S3-compatible server on 127.0.0.1,
# and runs every unit and end-to-end test against it with the real git and
# git-lfs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/setup-test-env.sh"
export GIT_S3_TEST_VENV="${GIT_S3_TEST_VENV:-$root/.test-env/venv}"

cargo build --workspace --locked 2>&1 | tail -3

pidfile="$root/.test-env/moto-test.pid"
GIT_S3_TEST_ENDPOINT="$("$root/scripts/s3-server.sh" "$pidfile")"
export GIT_S3_TEST_ENDPOINT
trap 'kill "$(cat "$pidfile")" 2>/dev/null || true' EXIT
echo "test S3 endpoint: $GIT_S3_TEST_ENDPOINT"

log="$root/.test-env/last-test-run.log"
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads "${GIT_S3_TEST_THREADS:-4}" "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
