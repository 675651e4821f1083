#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the test
# dependencies, builds, starts a local S3-compatible server on 127.0.0.1,
# and runs every unit and end-to-end test against it with the real git and
# git-lfs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# The whole suite (no arguments) also runs a core subset against a second S3
# implementation, s3s-fs: installed here (built once into .test-env/s3s).
if [ "$#" -eq 0 ]; then "$root/scripts/setup-test-env.sh" --s3s; else "$root/scripts/setup-test-env.sh"; fi
export GIT_S3_TEST_VENV="${GIT_S3_TEST_VENV:-$root/.test-env/venv}"

# Test hooks (GIT_S3_TEST_… variables that crash or slow the daemon) never
# ship: a default build of the daemon, what `cargo build --release`,
# packaging/install.sh and bench build, must not contain their names.
cargo build -p git-s3-daemon --locked 2>&1 | tail -1
if grep -qa GIT_S3_TEST_ "$root/target/debug/git-s3-daemon"; then
  echo "test.sh: a default build of git-s3-daemon contains GIT_S3_TEST_ hooks" >&2
  exit 1
fi
# The end-to-end tests use the hooks: everything is built and tested with
# them (the tests that need them fail, not skip, on a daemon without them).
features=(--features git-s3-daemon/test-hooks)
cargo build --workspace --locked "${features[@]}" 2>&1 | tail -3
if ! grep -qa GIT_S3_TEST_ "$root/target/debug/git-s3-daemon"; then
  echo "test.sh: the test-hooks build of git-s3-daemon lacks its hooks (the check above proves nothing)" >&2
  exit 1
fi

# Style and lints are part of the test: rustfmt (rustfmt.toml) and clippy
# with every warning an error, on the same build as the tests.
lint_status=0
cargo fmt --all --check >/dev/null 2>&1 || { echo "test.sh: cargo fmt --all --check failed (run cargo fmt --all)" >&2; lint_status=1; }
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings 2>&1 | tail -20 || lint_status=1

pidfile="$root/.test-env/moto-test.pid"
s3s_pidfile="$root/.test-env/s3s-test.pid"
rm -f "$s3s_pidfile"
GIT_S3_TEST_ENDPOINT="$("$root/scripts/s3-server.sh" "$pidfile")"
export GIT_S3_TEST_ENDPOINT
trap 'kill "$(cat "$pidfile")" 2>/dev/null || true; [ ! -f "$s3s_pidfile" ] || kill "$(cat "$s3s_pidfile")" 2>/dev/null || true' EXIT
echo "test S3 endpoint: $GIT_S3_TEST_ENDPOINT"

# Fuzz targets (daemon/tests/fuzz.rs, the LFS agent's) run for a fixed time
# each: 16 targets x 4 s, about a minute of fuzzing in all.
export GIT_S3_FUZZ_SECONDS="${GIT_S3_FUZZ_SECONDS:-4}"

log="$root/.test-env/last-test-run.log"
status=0
cargo test --workspace --locked --no-fail-fast "${features[@]}" -- --test-threads "${GIT_S3_TEST_THREADS:-4}" "$@" 2>&1 | tee "$log" || status=$?
# A representative subset again, through the field server: 20 ms round
# trips, TLS, and a seeded 5 % of 503/500/resets/409 on every kind of
# request (GIT_S3_TEST_FIELD, see testkit/src/field/conditions.rs). Every
# operation must succeed and every repository pass git fsck.
if [ "$#" -eq 0 ]; then
  field_run() {
    # --workspace with the same features as above: no rebuild of the daemon.
    GIT_S3_TEST_FIELD="${GIT_S3_TEST_FIELD:-1}" cargo test --workspace --locked --no-fail-fast "${features[@]}" "$@" 2>&1 | tee -a "$log" || status=$?
  }
  field_run --test push_clone -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    push_clone_fetch_pull_roundtrip branches_tags_delete_and_ls_remote large_bundle_streams_in_parts
  field_run --test packs -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    packs_clone_fetch_push_delete_force_tags second_push_uploads_only_new_objects
  field_run --test lfs -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    push_multipart_one_step_clone_skip_and_cache lfs_works_the_same_with_a_packs_format_remote

  # The core subset against a second implementation, s3s-fs (moto's answers
  # are not S3's; docs/s3-implementations.md lists where the two differ):
  # push, clone, fetch in both formats, LFS, 0.4.2 interop, and concurrent
  # pushes to one branch (conditional writes). testkit puts a field server
  # without latency, TLS or faults in front of it (s3s-fs's conditional
  # writes are not atomic; the front serializes them per key, as S3 does).
  s3s_endpoint="$("$root/scripts/s3s-server.sh" "$s3s_pidfile")"
  echo "second S3 implementation (s3s-fs): $s3s_endpoint"
  s3s_run() {
    GIT_S3_TEST_SERVER=s3s GIT_S3_TEST_ENDPOINT="$s3s_endpoint" cargo test --workspace --locked --no-fail-fast "${features[@]}" "$@" 2>&1 | tee -a "$log" || status=$?
  }
  s3s_run --test push_clone -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    push_clone_fetch_pull_roundtrip branches_tags_delete_and_ls_remote large_bundle_streams_in_parts
  s3s_run --test packs -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    packs_clone_fetch_push_delete_force_tags second_push_uploads_only_new_objects concurrent_pushers_one_branch_one_winner_per_round_nothing_lost
  s3s_run --test robustness -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    concurrent_pushes_to_one_branch_exactly_one_wins_nothing_lost
  s3s_run --test lfs -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    push_multipart_one_step_clone_skip_and_cache lfs_works_the_same_with_a_packs_format_remote
  s3s_run --test interop -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    python_pushes_ours_clones_fetches_and_pushes_back
  s3s_run --test conditional -- --test-threads "${GIT_S3_TEST_THREADS:-4}" \
    an_enforcing_store_is_probed_once_per_bucket
fi
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
if [ "$lint_status" != 0 ]; then
  echo "test.sh: cargo fmt or cargo clippy failed (see above)" >&2
  status=1
fi
exit "$status"
