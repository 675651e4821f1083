#!/usr/bin/env python3
"""pub(crate) by default in the daemon crate (issue 21, point 6).

1. Every `pub` item or named field in daemon/src (not main.rs) becomes `pub(crate)`.
2. Loop: `cargo check` the daemon's lib, binary and tests; every error that an
   item is private (E0603, E0616, E0624, E0451) and every private_interfaces /
   private_bounds warning names a definition in daemon/src: that line gets
   its `pub` back. Until nothing is left.
3. Prints the dead_code warnings that remain (remove those by hand).
Run from the repository root: python3 scripts/pub-crate-sweep.py [--no-narrow]
(--no-narrow: only the widening loop, e.g. after a merge brought new uses).
Each round is one `cargo check` of the daemon (about a minute on 2 cores);
the first sweep took 16 rounds. The dead_code list it prints is the work
left: remove each item (or, when only unit tests use it, the item and its
test), then `cargo clippy --workspace --all-targets --features
git-s3-daemon/test-hooks -- -D warnings`.
"""
import glob, json, re, subprocess, sys

ITEM = re.compile(r'^(\s*)pub (?=(async |unsafe |const |static |fn |struct |enum |trait |type |mod |use |extern |[a-z_][a-z0-9_]*\s*:))')

def narrow():
    n = 0
    for f in glob.glob("daemon/src/**/*.rs", recursive=True):
        if f == "daemon/src/main.rs":
            continue
        lines = open(f).read().split("\n")
        for i, l in enumerate(lines):
            m = ITEM.match(l)
            if m:
                lines[i] = ITEM.sub(r"\1pub(crate) ", l, count=1)
                n += 1
        open(f, "w").write("\n".join(lines))
    print(f"narrowed {n} items", file=sys.stderr)

def check():
    cmd = ["cargo", "check", "-p", "git-s3-daemon", "--all-targets", "--features", "git-s3-daemon/test-hooks", "--message-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    msgs = []
    for line in out.splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("reason") == "compiler-message":
            msgs.append(j["message"])
    return msgs

def spans(m):
    yield from m.get("spans", [])
    for c in m.get("children", []):
        yield from spans(c)

PRIVATE = {"E0603", "E0616", "E0624", "E0451", "E0446"}

def widen(f, line):
    lines = open(f).read().split("\n")
    l = lines[line - 1]
    if "pub(crate) " in l:
        lines[line - 1] = l.replace("pub(crate) ", "pub ", 1)
        open(f, "w").write("\n".join(lines))
        return True
    return False

def field_def(msg):
    # "field `x` of struct `Y` is private": find `pub(crate) x:` in a file defining struct Y.
    m = re.search(r"field `(\w+)` of (?:struct|union) `(?:[\w:]*::)?(\w+)`", msg) or re.search(r"fields? `(\w+)`.* of (?:struct|union) `(?:[\w:]*::)?(\w+)`", msg)
    if not m:
        return []
    field, struct = m.groups()
    hits = []
    for f in glob.glob("daemon/src/**/*.rs", recursive=True):
        src = open(f).read().split("\n")
        inside = False
        for i, l in enumerate(src):
            if re.match(rf"^\s*(pub(\([^)]*\))? )?struct {struct}\b", l):
                inside = True
            elif inside and re.match(r"^\s*}", l):
                inside = False
            elif inside and re.match(rf"^\s*pub\(crate\) {field}\s*:", l):
                hits.append((f, i + 1))
    return hits

def main():
    if "--no-narrow" not in sys.argv:
        narrow()
    for rnd in range(60):
        msgs = check()
        todo = set()
        stuck = []
        for m in msgs:
            code = (m.get("code") or {}).get("code")
            if m["level"] == "error" and code in PRIVATE or code in ("private_interfaces", "private_bounds"):
                locs = {(s["file_name"], s["line_start"]) for s in spans(m) if s["file_name"].startswith("daemon/src/") and s["file_name"] != "daemon/src/main.rs"}
                locs = {(f, l) for f, l in locs if "pub(crate) " in open(f).read().split("\n")[l - 1]}
                if not locs and code in ("E0616", "E0451"):
                    locs = set(field_def(m["message"]))
                if locs:
                    todo |= locs
                else:
                    stuck.append(m["rendered"])
        errors = [m for m in msgs if m["level"] == "error"]
        print(f"round {rnd}: {len(errors)} errors, widening {len(todo)}", file=sys.stderr)
        if not todo:
            for s in stuck:
                print(s, file=sys.stderr)
            other = [m["rendered"] for m in errors if (m.get("code") or {}).get("code") not in PRIVATE]
            for r in other[:20]:
                print(r, file=sys.stderr)
            break
        for f, l in sorted(todo):
            widen(f, l)
    dead = [m for m in msgs if (m.get("code") or {}).get("code") == "dead_code"]
    for m in dead:
        s = m["spans"][0]
        print(f'{s["file_name"]}:{s["line_start"]}: {m["message"]}')

main()
