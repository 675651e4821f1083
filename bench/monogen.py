"""A generated monorepo for the monorepo benchmark (bench/monorepo.py).

Reproducible from a seed (same seed and scale: same commit ids) and fast:
everything goes through one `git fast-import` stream into a bare
repository, then one `git gc`. At scale 1.0 (the default) it is about
2.3 GB packed (2.1 GiB):

- hundreds of directories (areas / packages / src, src/internal, tests,
  assets), some 13,000 text files of code-like lines (zlib compresses them
  about as much as real source code);
- a long history: 6,000 commits, each editing a few lines of one to four
  files, mostly in one package, now and then adding or deleting a file;
- a few big binaries (random bytes: incompressible, not deltifiable),
  most of them replaced now and then over the history, marked
  `binary -delta` in `.gitattributes` as such repositories do.

Run alone it checks its own reproducibility on a tiny repository:
    python3 bench/monogen.py --check
"""
import argparse
import bisect
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

AREAS = ("services", "libs", "tools", "web", "infra", "data", "mobile", "platform")
EXTS = {"services": "go", "libs": "rs", "tools": "py", "web": "ts", "infra": "tf", "data": "sql",
        "mobile": "kt", "platform": "cc"}
LEAVES = ("src", "src/internal", "tests")
T0 = 1_600_000_000


class Params:
    """What a scale means: the number of packages, commits and binary bytes
    grow with it; the shape (files per directory, lines per file) does not."""

    def __init__(self, scale):
        self.packages = max(2, round(24 * scale ** 0.5))
        self.commits = max(20, round(6000 * scale ** 0.5))
        self.binaries = 10 if scale >= 0.05 else 3
        self.binary_bytes = int(2.2e9 * scale)
        self.binary_mib = (12, 40) if scale >= 0.05 else (0.05, 0.2)
        self.files_per_dir = (5, 40)
        self.lines_per_file = (20, 400)


class Monorepo:
    def __init__(self, seed, scale):
        self.rng = random.Random(seed)
        self.p = Params(scale)
        self.vocab = self.words(3000)
        self.pool = [self.code_line() for _ in range(40_000)]
        self.files = {}  # path -> list of lines (the current content)
        self.packages = []  # (area, package directory)
        self.binaries = []  # [path, size]
        self.layout()

    # ---------- content ----------
    def words(self, n):
        r = self.rng
        return ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randrange(2, 11))) for _ in range(n)]

    def code_line(self):
        """An indented line of identifiers and punctuation, words drawn with
        a Zipf-like skew (frequent keywords, rare names). Files of such lines
        compress about 3.3x with zlib, as source code does."""
        r = self.rng
        n = r.randrange(1, 10)
        toks = [self.vocab[min(int(r.paretovariate(0.5)) - 1, len(self.vocab) - 1)] for _ in range(n)]
        punct = r.choice(("(", ") {", ";", " = ", ", ", ".", "::", " -> ", " + ", "[", "]", ""))
        return " " * (4 * r.randrange(0, 4)) + punct.join(toks) + r.choice((";", "", " {", "}", ")", ","))

    def text(self):
        lo, hi = self.p.lines_per_file
        return self.rng.choices(self.pool, k=self.rng.randrange(lo, hi))

    def layout(self):
        r = self.rng
        for area in AREAS:
            for k in range(self.p.packages):
                pkg = f"{area}/{r.choice(self.vocab)}-{k:02d}"
                self.packages.append((area, pkg))
                for leaf in LEAVES:
                    for _ in range(r.randrange(*self.p.files_per_dir)):
                        self.files[f"{pkg}/{leaf}/{r.choice(self.vocab)}_{len(self.files)}.{EXTS[area]}"] = self.text()
        for i in range(self.p.binaries):
            _, pkg = self.packages[r.randrange(len(self.packages))] if i else self.packages[0]
            self.binaries.append([f"{pkg}/assets/blob-{i}.bin", self.binary_size()])

    def binary_size(self):
        lo, hi = self.p.binary_mib
        return int(self.rng.uniform(lo, hi) * (1 << 20))

    def edit(self, path):
        lines = self.files[path]
        r = self.rng
        for _ in range(r.randrange(1, 10)):
            op = r.random()
            at = r.randrange(len(lines) + 1)
            if op < 0.5 and at < len(lines):
                lines[at] = r.choice(self.pool)
            elif op < 0.8 or len(lines) < 5:
                lines[at:at] = r.choices(self.pool, k=r.randrange(1, 6))
            else:
                del lines[at:at + r.randrange(1, 4)]

    # ---------- history ----------
    def binary_schedule(self):
        """Commit index -> binaries replaced then, until the binaries' history
        reaches its bytes. Binary 0 (in the first package: the directory of
        the sparse case) changes at least once in the last quarter."""
        r = self.rng
        n = self.p.commits
        total = sum(s for _, s in self.binaries)
        changing = list(range(max(1, len(self.binaries) * 7 // 10)))
        plan = {int(n * 0.8): [0]}
        total += self.binaries[0][1]
        while total < self.p.binary_bytes:
            c, b = r.randrange(1, n), r.choice(changing)
            plan.setdefault(c, []).append(b)
            total += self.binaries[b][1]
        return plan

    def stream(self, out):
        """Writes the fast-import stream of the whole history to `out`."""
        w = out.write
        r = self.rng
        plan = self.binary_schedule()
        paths = sorted(self.files)
        for n in range(self.p.commits):
            if n == 0:
                msg = "initial import"
                changes = [("M", path) for path in paths] + [("M", ".gitattributes"), ("M", "README.md")]
                changes += [("B", i) for i in range(len(self.binaries))]
            else:
                area, pkg = self.packages[r.randrange(len(self.packages))]
                msg = f"{pkg}: change {n}"
                changes = self.commit_changes(pkg, paths)
                changes += [("B", i) for i in plan.get(n, ())]
            w(f"commit refs/heads/main\ncommitter Mono <mono@example.com> {T0 + n * 900} +0000\n".encode())
            w(f"data {len(msg)}\n{msg}\n".encode())
            for kind, what in changes:
                self.write_change(w, kind, what)
            w(b"\n")

    def commit_changes(self, pkg, paths):
        """One to four edits, mostly inside `pkg`; sometimes a new or a
        deleted file."""
        r = self.rng
        start = self.first_index(paths, pkg + "/")
        inside = [p for p in paths[start:start + 200] if p.startswith(pkg + "/")]
        changes = []
        for _ in range(r.randrange(1, 5)):
            pool = inside if inside and r.random() < 0.8 else paths
            path = r.choice(pool)
            if path in self.files:
                self.edit(path)
                changes.append(("M", path))
        x = r.random()
        if x < 0.03:
            leaf = r.choice(LEAVES)
            path = f"{pkg}/{leaf}/{r.choice(self.vocab)}_{len(self.files)}_{len(paths)}.{EXTS[pkg.split('/')[0]]}"
            self.files[path] = self.text()
            paths.insert(self.first_index(paths, path), path)
            changes.append(("M", path))
        elif x < 0.04 and len(inside) > 3:
            path = r.choice(inside)
            del self.files[path]
            paths.remove(path)
            changes = [c for c in changes if c[1] != path] + [("D", path)]
        return changes

    @staticmethod
    def first_index(paths, key):
        return bisect.bisect_left(paths, key)

    def write_change(self, w, kind, what):
        if kind == "D":
            w(f"D {what}\n".encode())
            return
        if kind == "B":
            path, size = self.binaries[what]
            size = max(1024, int(size * self.rng.uniform(0.9, 1.1)))
            self.binaries[what][1] = size
            w(f"M 644 inline {path}\ndata {size}\n".encode())
            left = size
            while left:
                k = min(left, 8 << 20)
                w(self.rng.randbytes(k))
                left -= k
            w(b"\n")
            return
        if what == ".gitattributes":
            data = b"*.bin binary -delta\n"
        elif what == "README.md":
            data = b"# A generated monorepo (git-s3 bench/monogen.py)\n"
        else:
            data = ("\n".join(self.files[what]) + "\n").encode()
        w(f"M 644 inline {what}\ndata {len(data)}\n".encode() + data + b"\n")


def git(args, cwd, env=None):
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE).stdout.decode().strip()


def generate(path, seed, scale, env=None, log=print):
    """Generates the bare repository `path` (must not exist). Returns its
    figures: commits, files at the tip, directories, size-pack, seconds."""
    t = time.perf_counter()
    os.makedirs(path)
    git(["init", "-q", "--bare", "-b", "main"], path, env)
    repo = Monorepo(seed, scale)
    # Big blobs are streamed, not held for a delta against their last version.
    p = subprocess.Popen(["git", "-c", "core.bigFileThreshold=1m", "fast-import", "--quiet", "--depth=50"],
                         cwd=path, env=env, stdin=subprocess.PIPE)
    repo.stream(p.stdin)
    p.stdin.close()
    if p.wait() != 0:
        raise RuntimeError("git fast-import failed")
    t_import = time.perf_counter() - t
    # attr.tree: git 2.47 reads no .gitattributes in a bare repository by default
    git(["-c", "attr.tree=HEAD", "gc", "-q", "--prune=now"], path, env)
    figures = stats(path, env)
    figures.update(seconds=time.perf_counter() - t, import_seconds=t_import, seed=seed, scale=scale)
    log(f"generated {path}: {figures['commits']} commits, {figures['files']} files in "
        f"{figures['directories']} directories, size-pack {figures['size_pack'] / 2**30:.2f} GiB, "
        f"in {figures['seconds']:.0f} s (fast-import {t_import:.0f} s)")
    return figures


def stats(path, env=None):
    counts = dict(line.split(": ", 1) for line in git(["count-objects", "-v"], path, env).splitlines())
    tree = git(["ls-tree", "-r", "-t", "main"], path, env).splitlines()
    return {
        "commits": int(git(["rev-list", "--count", "main"], path, env)),
        "files": sum(1 for line in tree if " blob " in line),
        "directories": sum(1 for line in tree if " tree " in line),
        "size_pack": int(counts["size-pack"]) * 1024,
        "head": git(["rev-parse", "main"], path, env),
        # the package holding binary 0 (which changes late in the history)
        "sparse_dir": next(os.path.dirname(os.path.dirname(line.split("\t", 1)[1])) for line in tree
                           if line.endswith("/assets/blob-0.bin")),
    }


def check():
    """Same seed, same commit ids; another seed, other ones."""
    d = tempfile.mkdtemp(prefix="monogen-check-")
    try:
        heads = [generate(os.path.join(d, f"r{i}"), seed, 0.001, log=lambda _: None)["head"]
                 for i, seed in enumerate((7, 7, 8))]
    finally:
        shutil.rmtree(d)
    if heads[0] != heads[1] or heads[0] == heads[2]:
        sys.exit(f"monogen: not reproducible: seed 7 gave {heads[0]} then {heads[1]}, seed 8 {heads[2]}")
    print(f"monogen: seed 7 gives {heads[0]} twice, seed 8 {heads[2]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="check that a tiny repository is reproducible")
    ap.add_argument("--out", help="generate into this (new) directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    if a.check:
        check()
    if a.out:
        generate(a.out, a.seed, a.scale)


if __name__ == "__main__":
    main()
