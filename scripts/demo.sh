#!/usr/bin/env bash
# The main job, end to end: build git-s3, push a repository to S3 and clone it
# back through git, then show what is in the bucket.
#
#   scripts/demo.sh                       # no AWS account: a local S3-compatible
#                                         # endpoint (moto) on 127.0.0.1
#   GIT_S3_DEMO_URL=s3://my-bucket/demo scripts/demo.sh   # your real bucket
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

echo "== building (release)"
cargo build --release --locked --workspace 2>&1 | tail -1
# Where cargo put them: $CARGO_TARGET_DIR or build.target-dir, else target/.
release="$("$root/scripts/target-dir.sh")/release"
for b in git-remote-s3 git-s3 git-lfs-s3 git-s3-daemon; do
  [ -x "$release/$b" ] || { echo "demo.sh: $release/$b was not built" >&2; exit 1; }
done
venv="${GIT_S3_TEST_VENV:-$root/.test-env/venv}"
work="$(mktemp -d /tmp/git-s3-demo.XXXXXX)"
bin="$work/bin"
mkdir -p "$bin" "$work/run" "$work/home"
for b in git-remote-s3 git-s3 git-lfs-s3 git-s3-daemon; do ln -s "$release/$b" "$bin/$b"; done
ln -s "$release/git-remote-s3" "$bin/git-remote-s3+zip"
export PATH="$bin:$PATH"
# A private daemon and cache for the demo, so it does not touch yours.
export XDG_RUNTIME_DIR="$work/run" GIT_S3_CACHE_DIR="$work/cache" GIT_S3_STATE_DIR="$work/state"
chmod 700 "$work/run"

cleanup() {
  git s3 daemon stop >/dev/null 2>&1 || true
  [ -n "${moto_pid:-}" ] && kill "$moto_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${GIT_S3_DEMO_URL:-}" ]; then
  url="$GIT_S3_DEMO_URL"
  echo "== using your bucket: $url"
else
  echo "== no GIT_S3_DEMO_URL: starting a local S3-compatible endpoint"
  "$root/scripts/setup-test-env.sh" >/dev/null
  endpoint="$("$root/scripts/s3-server.sh" "$work/moto.pid")"
  moto_pid="$(cat "$work/moto.pid")"
  export AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
  "$venv/bin/python" "$root/testkit/s3tool.py" "$endpoint" create-bucket demo-bucket
  url="s3://demo-bucket/demo/repo"
  echo "   endpoint $endpoint, remote $url"
fi

export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.com GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.com
echo "== push"
git init -q -b main "$work/src"
cd "$work/src"
echo "hello from git-s3" > README.md
mkdir -p src && seq 1 1000 > src/numbers.txt
git add . && git commit -qm "first commit"
git remote add origin "$url"
git push origin main
git tag v1.0 && git push -q origin v1.0

echo "== clone"
git clone "$url" "$work/clone"
diff -r --exclude=.git "$work/src" "$work/clone" && echo "   clone matches the source"

echo "== ls-remote"
git ls-remote "$url"

echo "== git s3 daemon status"
git s3 daemon status
echo "== done: push and clone through S3 worked"
