"""LFS on an encrypted packs remote (issue 22) against a plaintext one on
the same local S3 server (moto), release build: `git lfs push --all` of a
repository of N random files (timed, bytes sent to S3 counted), then the
one-step `git clone` that checks them out with an empty cache (timed,
bytes read from S3 counted), through a counting proxy. Runs interleaved
(plaintext first in even rounds, encrypted first in odd ones), medians and
the ratio. Not a test: it reports.

    .test-env/venv/bin/python bench/lfs_encryption.py --bin-dir <release dir> \\
        [--files 20] [--mib 2] [--runs 3]

Each run: a fresh remote (`git s3 init --format packs [--encrypt-to]`), a
new repository with the same N files tracked by LFS, committed, its
`origin` that remote with `git-lfs-s3 install`; `git lfs push --all origin`
(timed), the branch pushed (not timed), the daemon stopped and the cache
emptied, `git clone` (timed: the code, then the checkout's LFS downloads
through git-lfs-s3). Each timed command starts once the daemon's
background work is done (`git s3 status --json`).
"""
import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

MODES = ("plaintext", "encrypted")
CASES = ("git lfs push", "clone with LFS")





def measured(cmd, env, cwd, proxy):
    """(seconds, bytes up, bytes down) of `cmd`, started once the daemon is idle."""
    B.settle(env)
    up0, down0 = proxy.counts()
    t = time.perf_counter()
    B.sh(cmd, env, cwd=cwd)
    t = time.perf_counter() - t
    up1, down1 = proxy.counts()
    return t, up1 - up0, down1 - down0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--mib", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    args = argparse.Namespace(root=a.root, bin_dir=a.bin_dir, runs=a.runs, quick=False, skip_lfs=False,
                              json=None, real_repo=None, only_narrow=False, rtt=0, tls=False, tags=0)
    b = B.Bench(args)
    try:
        env = dict(b.env["packs"])
        proxy = B.CountingProxy(b.tool_endpoint)
        env["AWS_ENDPOINT_URL"] = proxy.url
        b.s3tool("create-bucket", "lfs-enc-bench")
        recipient = json.loads(B.sh(["git", "s3", "keygen", "--json"], env, cwd=b.work))["recipient"]
        files = os.path.join(b.work, "files")
        os.makedirs(files)
        rng = random.Random(22)
        for k in range(a.files):
            with open(os.path.join(files, f"f{k:03d}.bin"), "wb") as f:
                f.write(rng.randbytes(a.mib << 20))

        res = {}
        for i in range(a.runs):
            for mode in (MODES if i % 2 == 0 else tuple(reversed(MODES))):
                url = f"s3://lfs-enc-bench/{mode}-{i}"
                init = ["git", "s3", "init", "--format", "packs"] + (["--encrypt-to", recipient] if mode == "encrypted" else [])
                B.sh(init + [url], env, cwd=b.work)
                repo = os.path.join(b.work, f"src-{mode}-{i}")
                shutil.copytree(files, repo)
                B.sh(["git", "init", "-q", "-b", "main"], env, cwd=repo)
                B.sh(["git", "lfs", "track", "*.bin"], env, cwd=repo)
                B.sh(["git", "add", "-A"], env, cwd=repo)
                B.sh(["git", "commit", "-q", "-m", "lfs files"], env, cwd=repo)
                B.sh(["git", "remote", "add", "origin", url], env, cwd=repo)
                B.sh(["git-lfs-s3", "install"], env, cwd=repo)
                res.setdefault(("git lfs push", mode), []).append(measured(["git", "lfs", "push", "--all", "origin"], env, repo, proxy))
                stored = {d: len(b.s3tool("list", "lfs-enc-bench", f"{mode}-{i}/{d}").splitlines()) for d in ("lfs/", ".git-s3/lfs/")}
                if stored != ({"lfs/": a.files, ".git-s3/lfs/": 0} if mode == "plaintext" else {"lfs/": 0, ".git-s3/lfs/": a.files}):
                    raise RuntimeError(f"{url}: the LFS objects are not where a {mode} remote keeps them: {stored}")
                B.sh(["git", "push", "-q", "origin", "main"], env, cwd=repo)
                B.settle(env)
                B.sh(["git", "s3", "daemon", "stop"], env, check=False)
                shutil.rmtree(env["GIT_S3_CACHE_DIR"], ignore_errors=True)
                B.sh(["git", "s3", "daemon", "start"], env)
                dst = os.path.join(b.work, f"clone-{mode}-{i}")
                res.setdefault(("clone with LFS", mode), []).append(measured(["git", "clone", "-q", url, dst], env, b.work, proxy))
                with open(os.path.join(dst, "f000.bin"), "rb") as got, open(os.path.join(files, "f000.bin"), "rb") as want:
                    if got.read() != want.read():
                        raise RuntimeError(f"{dst}/f000.bin is not the file pushed")
                shutil.rmtree(repo)
                shutil.rmtree(dst)
            print(f"round {i + 1}/{a.runs} done", flush=True)

        print(f"\n{a.files} files of {a.mib} MiB (random), medians of {a.runs} runs; bytes through the proxy (last run)")
        print("| case | plaintext | encrypted | encrypted / plaintext (time) | encrypted / plaintext (bytes) |")
        print("|---|---|---|---|---|")
        for case in CASES:
            p, e = res[(case, "plaintext")], res[(case, "encrypted")]
            col = 1 if case == "git lfs push" else 2
            pt, et = statistics.median(x[0] for x in p), statistics.median(x[0] for x in e)
            pb, eb = p[-1][col], e[-1][col]
            way = "sent" if col == 1 else "read"
            print(f"| {case} | {pt:.2f} s, {pb:,} B {way} | {et:.2f} s, {eb:,} B {way} | {et / pt:.2f} | {eb / max(1, pb):.2f} |")
        print("\nall runs (s):", {f"{c}/{m}": [round(x[0], 2) for x in v] for (c, m), v in res.items()})
    finally:
        B.sh(["git", "s3", "daemon", "stop"], b.env["packs"], check=False)
        b.close()


if __name__ == "__main__":
    main()
