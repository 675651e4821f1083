#!/usr/bin/env bash
# Benchmark: git-s3 (release build) against git-remote-s3 0.4.2 on the same
# local S3-compatible server and the same generated repositories. Prints a
# table of medians and ratios (ours/theirs). Options are passed to bench.py
# (e.g. --runs 5, --quick, --json out.json).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup-test-env.sh >/dev/null
cargo build --release --locked --workspace 2>&1 | tail -1
# Where cargo put them: $CARGO_TARGET_DIR or build.target-dir, else target/.
exec "$root/.test-env/venv/bin/python" "$root/bench/bench.py" --root "$root" --bin-dir "$("$root/scripts/target-dir.sh")/release" "$@"
