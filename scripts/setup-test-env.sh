#!/usr/bin/env bash
# Installs what the tests and the quick start need on a fresh machine:
#   - git-lfs (Debian package) for the LFS tests
#   - age (Debian package): the encryption tests decrypt what git-s3 wrote with it
#   - a private Python venv at .test-env/venv with moto's S3 server (the local
#     S3-compatible endpoint) and git-remote-s3 0.4.2 (interop tests, benchmark)
#   - a host name for 127.0.0.1 (the named-host endpoint tests): this
#     machine's name when it resolves to 127.0.0.1, else `s3.git-s3.test`
#     added to /etc/hosts (as root)
#   - with --s3s: s3s-fs, a second S3 implementation (an S3 server over a
#     directory; scripts/s3s-server.sh starts it), built from crates.io into
#     .test-env/s3s (1.5 CPU minutes; scripts/test.sh passes --s3s)
# Idempotent: re-running skips what is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GIT_S3_TEST_VENV:-$root/.test-env/venv}"
with_s3s=0
for arg in "$@"; do
  case "$arg" in
    --s3s) with_s3s=1 ;;
    *) echo "usage: $0 [--s3s]" >&2; exit 2 ;;
  esac
done
# s3s-fs: pinned; 0.15 and later need rustc 1.96.
s3s_version=0.14.1
s3s_root="$root/.test-env/s3s"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "need root for: $*" >&2; return 1; fi; }

if ! command -v git-lfs >/dev/null 2>&1; then
  echo "setup: installing git-lfs (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq git-lfs >/dev/null
fi

if ! command -v age >/dev/null 2>&1 || ! command -v age-keygen >/dev/null 2>&1; then
  echo "setup: installing age (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq age >/dev/null
fi

if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/git-remote-s3" ]; then
  echo "setup: creating test venv at $venv (moto server, git-remote-s3 0.4.2)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.2,<6' 'git-remote-s3==0.4.2'
fi
# The named-host tests (shim/tests/addressing.rs) need a host name that
# resolves to 127.0.0.1 only (testkit::loopback_host_name).
loopback_name_ok() { [ "$(getent ahostsv4 "$1" 2>/dev/null | awk '{print $1}' | sort -u)" = 127.0.0.1 ]; }
if ! loopback_name_ok "$(hostname)" && ! loopback_name_ok s3.git-s3.test; then
  echo "setup: adding '127.0.0.1 s3.git-s3.test' to /etc/hosts"
  echo "127.0.0.1 s3.git-s3.test" | as_root tee -a /etc/hosts >/dev/null
fi
if [ "$with_s3s" = 1 ] && [ "$("$s3s_root/bin/s3s-fs" --version 2>/dev/null)" != "s3s-fs $s3s_version" ]; then
  echo "setup: building s3s-fs $s3s_version into $s3s_root (cargo install, a few minutes)"
  # A target dir of its own, never the workspace's (CARGO_TARGET_DIR may
  # point there); a debug build: it compiles in half the time and is fast
  # enough for the tests.
  s3s_build="$(mktemp -d)"
  CARGO_TARGET_DIR="$s3s_build" cargo install --quiet --locked --debug --force s3s-fs --version "$s3s_version" \
    --features binary --root "$s3s_root"
  rm -rf "$s3s_build"
fi
s3s_note=""
if [ "$with_s3s" = 1 ]; then s3s_note=", $("$s3s_root/bin/s3s-fs" --version) in $s3s_root"; fi
echo "setup: ok (git-lfs $(git-lfs version | awk '{print $1}' | cut -d/ -f2), venv $venv$s3s_note)"
