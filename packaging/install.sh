#!/usr/bin/env bash
# Builds and installs git-s3: git-s3-daemon, git-remote-s3 (+ the
# git-remote-s3+zip link), git-s3 and git-lfs-s3, with `cargo install --path`.
#
#   packaging/install.sh [--service] [--root DIR] [--debug] [--dry-run]
#
#   --service   also install and start the daemon as a user service:
#               systemd user unit (Linux) or launchd agent (macOS)
#   --root DIR  install into DIR/bin (cargo install --root); default:
#               $CARGO_INSTALL_ROOT, else $CARGO_HOME, else ~/.cargo
#   --debug     build without optimizations (faster build, slower tool)
#   --dry-run   print the commands instead of running them
#
# Without --service the daemon is started on demand by the first git command
# that needs it and exits when idle; with it, the service manager owns it.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
service=0 dry=0 root="" profile=()
while [ $# -gt 0 ]; do
  case "$1" in
    --service) service=1 ;;
    --root) root="${2:?--root needs a directory}"; shift ;;
    --root=*) root="${1#--root=}" ;;
    --debug) profile=(--debug) ;;
    --dry-run) dry=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

run() {
  if [ "$dry" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

root="${root:-${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}}"
bin="$root/bin"
command -v cargo >/dev/null || [ "$dry" = 1 ] || { echo "install.sh: cargo not found (https://rustup.rs)" >&2; exit 1; }

for crate in daemon shim lfs-shim; do
  run cargo install --locked --force --root "$root" ${profile[@]+"${profile[@]}"} --path "$src/$crate"
done
# git runs git-remote-<scheme>: s3+zip:// needs its own name.
run ln -sf git-remote-s3 "$bin/git-remote-s3+zip"

case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "note: add $bin to PATH so git finds git-remote-s3 and git-s3" >&2 ;;
esac

if [ "$service" = 1 ]; then
  case "$(uname -s)" in
    Linux)
      unit_dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
      run mkdir -p "$unit_dir"
      # The unit runs %h/.cargo/bin/…; point it at the actual install dir.
      if [ "$dry" = 1 ]; then
        echo "+ sed 's#%h/.cargo/bin#$bin#g' $src/packaging/git-s3.service > $unit_dir/git-s3.service"
      else
        sed "s#%h/.cargo/bin#$bin#g" "$src/packaging/git-s3.service" >"$unit_dir/git-s3.service"
      fi
      run systemctl --user daemon-reload
      run systemctl --user enable git-s3.service
      # restart: picks up new binaries when re-installing
      run systemctl --user restart git-s3.service
      ;;
    Darwin)
      agents="$HOME/Library/LaunchAgents"
      plist="$agents/com.git-s3.daemon.plist"
      run mkdir -p "$agents" "$HOME/Library/Logs/git-s3"
      if [ "$dry" = 1 ]; then
        echo "+ sed -e 's#@BIN_DIR@#$bin#g' -e 's#@HOME@#$HOME#g' $src/packaging/com.git-s3.daemon.plist > $plist"
      else
        sed -e "s#@BIN_DIR@#$bin#g" -e "s#@HOME@#$HOME#g" "$src/packaging/com.git-s3.daemon.plist" >"$plist"
      fi
      uid="$(id -u)"
      if [ "$dry" = 1 ]; then
        echo "+ launchctl bootout gui/$uid/com.git-s3.daemon || true"
        echo "+ $bin/git-s3 daemon stop || true"
      else
        launchctl bootout "gui/$uid/com.git-s3.daemon" 2>/dev/null || true
        # a daemon started on demand would hold the single-instance lock
        "$bin/git-s3" daemon stop >/dev/null 2>&1 || true
      fi
      run launchctl bootstrap "gui/$uid" "$plist"
      ;;
    *) echo "install.sh: --service supports Linux (systemd) and macOS (launchd) only" >&2; exit 1 ;;
  esac
fi
[ "$dry" = 1 ] || echo "git-s3 installed in $bin$([ "$service" = 1 ] && echo ' (daemon running as a user service)')"
