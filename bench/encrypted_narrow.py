"""Shallow, partial and lazy fetches of one repository from a plaintext and
an encrypted packs remote (issue 22), side by side: bytes read from S3
(through a counting proxy), and seconds. Both remotes get `git s3 gc`
first (views and object maps, as a maintained remote has them). Cold cache
for every command. Not a test: it reports.

    .test-env/venv/bin/python bench/encrypted_narrow.py --bin-dir <release dir> \\
        --real-repo <a git repository> [--runs 2] [--old HEAD~1000]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--real-repo", required=True)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--old", default="HEAD~1000", help="the commit the lazy checkout goes to")
    a = ap.parse_args()
    args = argparse.Namespace(root=a.root, bin_dir=a.bin_dir, runs=a.runs, quick=False, skip_lfs=True,
                              json=None, real_repo=a.real_repo, only_narrow=True, rtt=0, tls=False, tags=0)
    b = B.Bench(args)
    try:
        env = dict(b.env["packs"])
        proxy = B.CountingProxy(b.tool_endpoint)
        env["AWS_ENDPOINT_URL"] = proxy.url
        src = os.path.join(b.work, "src")
        B.sh(["git", "clone", "-q", "--no-local", "--single-branch", a.real_repo, src], env, cwd=b.work)
        branch = B.sh(["git", "symbolic-ref", "--short", "HEAD"], env, cwd=src).strip()
        b.s3tool("create-bucket", "narrow-bucket")
        recipient = json.loads(B.sh(["git", "s3", "keygen", "--json"], env, cwd=b.work))["recipient"]
        urls = {"plaintext": "s3://narrow-bucket/plain", "encrypted": "s3://narrow-bucket/enc"}
        B.sh(["git", "s3", "init", "--format", "packs", "--encrypt-to", recipient, urls["encrypted"]], env, cwd=b.work)
        for url in urls.values():
            B.sh(["git", "push", "-q", url, f"{branch}:refs/heads/{branch}"], env, cwd=src)
            B.settle(env)  # the push's views, built in the background, then gc's
            B.sh(["git", "s3", "gc", url], env, cwd=b.work)

        def cold():
            B.sh(["git", "s3", "daemon", "stop"], env, check=False)
            shutil.rmtree(env["GIT_S3_CACHE_DIR"], ignore_errors=True)
            B.sh(["git", "s3", "daemon", "start"], env)

        res = {}
        for i in range(a.runs):
            for mode in (("plaintext", "encrypted") if i % 2 == 0 else ("encrypted", "plaintext")):
                url = urls[mode]
                for case, extra in (("depth-1 clone", ["--depth", "1"]), ("blob:none clone", ["--filter=blob:none"])):
                    d = os.path.join(b.work, f"{mode}-{i}")
                    cold()
                    b0 = proxy.bytes_down()
                    t = B.timed(["git", "clone", "-q", *extra, url, d], env, b.work)
                    res.setdefault((case, mode), []).append((t, proxy.bytes_down() - b0))
                    if case.startswith("blob"):
                        b1 = proxy.bytes_down()
                        t = B.timed(["git", "checkout", "-q", a.old], env, d)
                        res.setdefault((f"lazy checkout of {a.old}", mode), []).append((t, proxy.bytes_down() - b1))
                    shutil.rmtree(d)
            print(f"round {i + 1}/{a.runs} done", flush=True)
        print()
        print("| case | plaintext | encrypted | encrypted / plaintext (bytes) |")
        print("|---|---|---|---|")
        for case in dict.fromkeys(c for c, _ in res):
            p, e = res[(case, "plaintext")], res[(case, "encrypted")]
            pt, et = statistics.median(x[0] for x in p), statistics.median(x[0] for x in e)
            pb, eb = p[-1][1], e[-1][1]
            print(f"| {case} | {pb:,} B, {pt:.2f} s | {eb:,} B, {et:.2f} s | {eb / max(1, pb):.2f} |")
    finally:
        B.sh(["git", "s3", "daemon", "stop"], b.env["packs"], check=False)
        b.close()


if __name__ == "__main__":
    main()
