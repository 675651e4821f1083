"""Two builds of git-s3 side by side: is a change within the noise?

Runs the same cases with a baseline build and a candidate build on one
S3 server and one repository, interleaved (old, new, new, old, ...), so a
busy or slow machine weighs on both alike. Prints, per case, the medians,
the ratio new/old and each run. Not a test: it reports.

    bench/compare.py --baseline /path/to/old/release --candidate target/release [--runs 6] [--quick]
        [--cases cold,cached,push,fetch] [--rtt MS] [--tls] [--env NAME=VALUE ...]

Build the baseline from another checkout, e.g.
    git worktree add /tmp/base <commit> && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release)
"""
import argparse
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--baseline", required=True, help="directory of the baseline's release binaries")
    ap.add_argument("--candidate", required=True, help="directory of the candidate's release binaries")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", default="cold,cached,push,fetch")
    ap.add_argument("--rtt", type=int, default=0, metavar="MS")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in both builds' environment (e.g. GIT_S3_VIEWS_AUTO_BYTES=0); the bench does not pass its own")
    ap.add_argument("--keep-logs", metavar="DIR", help="copy each build's daemon.log (GIT_S3_LOG=debug) there")
    a = ap.parse_args()
    args = argparse.Namespace(root=a.root, bin_dir=a.candidate, runs=a.runs, quick=a.quick, skip_lfs=True,
                              json=None, real_repo=None, only_narrow=False, rtt=a.rtt, tls=a.tls, tags=0)
    b = B.Bench(args)
    envs = {}
    try:
        for name, d in (("old", a.baseline), ("new", a.candidate)):
            bd = os.path.join(b.work, f"bin-{name}")
            os.makedirs(bd)
            for x in ("git-remote-s3", "git-s3", "git-lfs-s3", "git-s3-daemon"):
                os.symlink(os.path.join(os.path.abspath(d), x), os.path.join(bd, x))
            os.symlink(os.path.join(os.path.abspath(d), "git-remote-s3"), os.path.join(bd, "git-remote-s3+zip"))
            e = dict(b.env["ours"])
            e["PATH"] = f"{bd}:/usr/local/bin:/usr/bin:/bin"
            e.update(kv.split("=", 1) for kv in a.env)
            if a.keep_logs:
                e["GIT_S3_LOG"] = "debug"
            run = os.path.join(b.work, f"run-{name}")
            os.makedirs(run, mode=0o700)
            e.update({"XDG_RUNTIME_DIR": run, "GIT_S3_CACHE_DIR": os.path.join(b.work, f"cache-{name}"),
                      "GIT_S3_STATE_DIR": os.path.join(b.work, f"state-{name}")})
            envs[name] = e
        commits, branches, blob = (300, 4, 8) if a.quick else (5000, 12, 10)
        src = os.path.join(b.work, "medium")
        packed = b.gen_repo(src, commits, branches, blob, 400)
        print(f"repository: {commits} commits, {branches + 1} branches, {packed / 1e6:.1f} MB packed; "
              f"{b.network()}", flush=True)
        b.s3tool("create-bucket", "compare-bucket")
        url, purl = "s3://compare-bucket/bundles", "s3://compare-bucket/packs"
        packs_env = {}
        for name, e in envs.items():
            p = dict(e)
            p.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "s3.format", "GIT_CONFIG_VALUE_0": "packs"})
            packs_env[name] = p
        B.sh(["git", "push", "-q", url, "--all"], envs["old"], cwd=src)
        B.sh(["git", "push", "-q", purl, "--all"], packs_env["old"], cwd=src)
        cases = set(a.cases.split(","))
        work = {}
        for name in envs:
            p, f = os.path.join(b.work, f"pusher-{name}"), os.path.join(b.work, f"fetcher-{name}")
            B.sh(["git", "clone", "-q", purl, p], packs_env[name], b.work)
            B.sh(["git", "checkout", "-q", "main"], packs_env[name], p)
            B.sh(["git", "clone", "-q", purl, f], packs_env[name], b.work)
            work[name] = (p, f)
        res = {}

        def rec(case, name, t):
            res.setdefault(case, {"old": [], "new": []})[name].append(t)

        for i in range(a.runs):
            for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
                e = envs[name]
                if "cold" in cases:
                    shutil.rmtree(e["GIT_S3_CACHE_DIR"], ignore_errors=True)
                    B.sh(["git", "s3", "daemon", "stop"], e, check=False)
                    B.sh(["git", "s3", "daemon", "start"], e)
                    d = os.path.join(b.work, f"cold-{name}")
                    rec("bundles clone, cold cache", name, B.timed(["git", "clone", "-q", url, d], e, b.work))
                    shutil.rmtree(d)
                if "cached" in cases:
                    d = os.path.join(b.work, f"cached-{name}")
                    B.sh(["git", "clone", "-q", url, d + "-fill"], e, b.work)
                    rec("bundles clone, cached", name, B.timed(["git", "clone", "-q", url, d], e, b.work))
                    shutil.rmtree(d)
                    shutil.rmtree(d + "-fill")
                p, f = work[name]
                for k in range(3):
                    pe = packs_env[name]
                    B.sh(["git", "pull", "-q", "--rebase", "origin", "main"], pe, p)
                    with open(os.path.join(p, f"change-{name}-{i}-{k}.txt"), "w") as fh:
                        fh.write(f"{i} {k}\n")
                    B.sh(["git", "add", "."], pe, p)
                    B.sh(["git", "commit", "-q", "-m", f"change {i} {k}"], pe, p)
                    t = B.timed(["git", "push", "-q", "origin", "HEAD:main"], pe, p)
                    if "push" in cases:
                        rec("packs push, one commit", name, t)
                    t = B.timed(["git", "fetch", "-q", "origin"], pe, f)
                    if "fetch" in cases:
                        rec("packs fetch, one commit", name, t)
            print(f"round {i + 1}/{a.runs} done", flush=True)
        print()
        print("| case | baseline | candidate | candidate / baseline | baseline runs | candidate runs |")
        print("|---|---|---|---|---|---|")
        for case, r in res.items():
            mo, mn = statistics.median(r["old"]), statistics.median(r["new"])
            runs = lambda v: " ".join(f"{x:.3f}" for x in v)
            print(f"| {case} | {mo:.3f} s | {mn:.3f} s | {mn / mo:.2f} | {runs(r['old'])} | {runs(r['new'])} |")
    finally:
        for e in envs.values():
            B.sh(["git", "s3", "daemon", "stop"], e, check=False)
        if a.keep_logs:
            os.makedirs(a.keep_logs, exist_ok=True)
            for name, e in envs.items():
                log = os.path.join(e["GIT_S3_STATE_DIR"], "daemon.log")
                if os.path.exists(log):
                    shutil.copy(log, os.path.join(a.keep_logs, f"{name}-daemon.log"))
        b.close()


if __name__ == "__main__":
    main()
