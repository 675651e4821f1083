#!/usr/bin/env bash
# Prints the directory cargo builds this workspace into, as cargo resolves
# it: $CARGO_TARGET_DIR, else build.target-dir from cargo's configuration,
# else <workspace>/target. The binaries are in <that>/release or <that>/debug.
# Without a working cargo: $CARGO_TARGET_DIR (relative to the workspace, where
# the scripts run cargo), else <workspace>/target.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')" || dir=""
if [ -z "$dir" ]; then
  dir="${CARGO_TARGET_DIR:-$root/target}"
  case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac
fi
echo "$dir"
