#!/usr/bin/env bash
# Builds and installs git-s3: git-s3-daemon, git-remote-s3 (+ the
# git-remote-s3+zip link), git-s3 and git-lfs-s3, with `cargo install --path`;
# then the man pages (man git-s3, git s3 --help) and the bash, zsh and fish
# completions, generated from the installed git-s3-daemon.
#
#   packaging/install.sh [--service] [--root DIR] [--debug] [--no-build] [--dry-run]
#
#   --service   also install and start the daemon as a user service:
#               systemd user unit (Linux) or launchd agent (macOS)
#   --root DIR  install into DIR/bin (cargo install --root); default:
#               $CARGO_INSTALL_ROOT, else $CARGO_HOME, else ~/.cargo
#   --debug     build without optimizations (faster build, slower tool)
#   --no-build  install the binaries `cargo build --release` (with --debug:
#               `cargo build`) already made, from cargo's target directory
#               ($CARGO_TARGET_DIR or build.target-dir, else target/)
#   --dry-run   print the commands instead of running them
#
# Man pages go to ROOT/share/man/man1 (man finds them beside ROOT/bin on
# PATH). Completions go to ROOT/share/{bash-completion/completions,
# zsh/site-functions,fish/vendor_completions.d} with --root; without it to
# your user directories: ${XDG_DATA_HOME:-~/.local/share}/bash-completion/
# completions, ${XDG_DATA_HOME:-~/.local/share}/zsh/site-functions (add it
# to fpath) and ${XDG_CONFIG_HOME:-~/.config}/fish/completions.
#
# Without --service the daemon is started on demand by the first git command
# that needs it and exits when idle; with it, the service manager owns it.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
service=0 dry=0 build=1 root="" profile=()
while [ $# -gt 0 ]; do
  case "$1" in
    --service) service=1 ;;
    --root) root="${2:?--root needs a directory}"; shift ;;
    --root=*) root="${1#--root=}" ;;
    --debug) profile=(--debug) ;;
    --no-build) build=0 ;;
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

user_dirs=1
[ -n "$root" ] && user_dirs=0
root="${root:-${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}}"
bin="$root/bin"

if [ "$build" = 1 ]; then
  command -v cargo >/dev/null || [ "$dry" = 1 ] || { echo "install.sh: cargo not found (https://rustup.rs)" >&2; exit 1; }
  for crate in daemon shim lfs-shim; do
    run cargo install --locked --force --root "$root" ${profile[@]+"${profile[@]}"} --path "$src/$crate"
  done
else
  # What cargo build made, wherever cargo put it.
  built="$("$src/scripts/target-dir.sh")/$([ ${#profile[@]} = 0 ] && echo release || echo debug)"
  for b in git-s3-daemon git-remote-s3 git-s3 git-lfs-s3; do
    [ -x "$built/$b" ] || [ "$dry" = 1 ] || { echo "install.sh: $built/$b not found: run cargo build$([ ${#profile[@]} = 0 ] && echo ' --release') --workspace first" >&2; exit 1; }
  done
  run mkdir -p "$bin"
  for b in git-s3-daemon git-remote-s3 git-s3 git-lfs-s3; do
    # copy, then rename: a running daemon keeps its (old) binary
    run install -m 755 "$built/$b" "$bin/.$b.new"
    run mv -f "$bin/.$b.new" "$bin/$b"
  done
fi
# git runs git-remote-<scheme>: s3+zip:// needs its own name.
run ln -sf git-remote-s3 "$bin/git-remote-s3+zip"

# Man pages and completions, from the clap definitions of the installed binary.
man_dir="$root/share/man/man1"
if [ "$user_dirs" = 1 ]; then
  data="${XDG_DATA_HOME:-$HOME/.local/share}"
  bash_dir="$data/bash-completion/completions" zsh_dir="$data/zsh/site-functions"
  fish_dir="${XDG_CONFIG_HOME:-$HOME/.config}/fish/completions"
else
  bash_dir="$root/share/bash-completion/completions" zsh_dir="$root/share/zsh/site-functions"
  fish_dir="$root/share/fish/vendor_completions.d"
fi
gen="$(mktemp -d "${TMPDIR:-/tmp}/git-s3-install.XXXXXX")"
trap 'rm -rf "$gen"' EXIT
if [ "$dry" = 1 ]; then
  run "$bin/git-s3-daemon" generate-docs --man "$man_dir" --completions "$gen"
else
  "$bin/git-s3-daemon" generate-docs --man "$man_dir" --completions "$gen" >/dev/null
fi
run mkdir -p "$bash_dir" "$zsh_dir" "$fish_dir"
run cp "$gen/git-s3.bash" "$bash_dir/git-s3"
run cp "$gen/_git-s3" "$zsh_dir/_git-s3"
run cp "$gen/git-s3.fish" "$fish_dir/git-s3.fish"
if [ "$user_dirs" = 1 ] && [ "${SHELL##*/}" = zsh ]; then
  echo "note: for zsh completions add $zsh_dir to fpath (before compinit)" >&2
fi

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
[ "$dry" = 1 ] || echo "git-s3 installed in $bin, man pages in $man_dir$([ "$service" = 1 ] && echo ' (daemon running as a user service)')"
