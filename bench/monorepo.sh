#!/usr/bin/env bash
# The monorepo benchmark (bench/monorepo.py): git-s3's packs format against
# local git on a generated monorepo of about 2.3 GB packed, at 0 and 50 ms
# to S3. Options go to monorepo.py (--runs N, --rtts 0,50, --scale 0.05 for
# a smoke run, --json FILE). The generated repository, the S3 server's data
# and the clones go under $MONOBENCH_DATA (default ./monobench-data: some
# 10 GB); the repository is kept there for the next run (same seed and scale).
# The S3 server is s3s-fs (moto reads a whole object for each ranged GET;
# --server moto to use it anyway).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup-test-env.sh --s3s >/dev/null  # s3s-fs: the S3 server (see --server)
cargo build --release --locked --workspace 2>&1 | tail -1
exec "$root/.test-env/venv/bin/python" "$root/bench/monorepo.py" --root "$root" \
  --bin-dir "$("$root/scripts/target-dir.sh")/release" --data "${MONOBENCH_DATA:-$root/monobench-data}" "$@"
