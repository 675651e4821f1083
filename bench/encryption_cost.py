"""What client-side encryption (issue 22) costs: push, clone and a
one-commit fetch of one repository against an encrypted and a plaintext
packs remote on the same local S3 server (moto), release build, runs
interleaved (plain, encrypted, plain, ...), medians and the ratio.

    .test-env/venv/bin/python bench/encryption_cost.py --root . \\
        --bin-dir <release dir> --repo <a git repository> [--runs 3]

Each run: a fresh remote (`git s3 init --format packs [--encrypt-to]`), the
repository's default branch minus its last commit pushed (timed), a clone
with an empty cache (timed), the last commit pushed (timed), then fetched
into the clone with an empty cache (timed). Each timed command starts once
the daemon's background work is done (`git s3 status --json`): a plaintext
push leaves its views to build, which would slow the command after it.
Not a test: it reports.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

MODES = ("plain", "encrypted")
CASES = ("push", "clone", "one-commit push", "one-commit fetch")


def sh(cmd, env, cwd=None):
    r = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed in {cwd}: {r.stderr.decode(errors='replace')[-2000:]}")
    return r.stdout.decode(errors="replace")



def timed(cmd, env, cwd=None):
    B.settle(env)
    t = time.perf_counter()
    sh(cmd, env, cwd)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    venv = os.path.join(root, ".test-env/venv")
    work = tempfile.mkdtemp(prefix="gits3-enc-")
    out = subprocess.run([os.path.join(root, "scripts/s3-server.sh"), os.path.join(work, "moto.pid")],
                         stdout=subprocess.PIPE, check=True)
    endpoint = out.stdout.decode().strip()
    with open(os.path.join(work, "moto.pid")) as f:
        moto_pid = int(f.read().strip())
    bins = os.path.join(work, "bin")
    os.makedirs(bins)
    for b in ("git-remote-s3", "git-s3", "git-s3-daemon"):
        os.symlink(os.path.join(os.path.abspath(a.bin_dir), b), os.path.join(bins, b))
    home = os.path.join(work, "home")
    os.makedirs(home)
    with open(os.path.join(home, ".gitconfig"), "w") as f:
        f.write("[user]\n\tname = Bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n"
                "[protocol \"s3\"]\n\tallow = always\n[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n")
    run = os.path.join(work, "run")
    os.makedirs(run, mode=0o700)
    env = {
        "HOME": home, "XDG_RUNTIME_DIR": run, "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "GIT_S3_CACHE_DIR": os.path.join(work, "cache"), "GIT_S3_STATE_DIR": os.path.join(work, "state"),
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "LANG": "C", "GIT_TERMINAL_PROMPT": "0",
        "PATH": f"{bins}:/usr/local/bin:/usr/bin:/bin",
    }
    bucket = "enc-bench"
    subprocess.run([os.path.join(venv, "bin/python"), os.path.join(root, "testkit/s3tool.py"), endpoint,
                    "create-bucket", bucket], stdout=subprocess.PIPE, check=True)
    try:
        src = os.path.join(work, "src")
        sh(["git", "clone", "-q", "--no-local", "--single-branch", a.repo, src], env, work)
        branch = sh(["git", "symbolic-ref", "--short", "HEAD"], env, src).strip()
        count = sh(["git", "rev-list", "--count", "HEAD"], env, src).strip()
        recipient = sh(["git", "s3", "keygen"], env, work).strip()
        times = {m: {c: [] for c in CASES} for m in MODES}
        for i in range(a.runs):
            for mode in MODES:
                url = f"s3://{bucket}/{mode}-{i}"
                init = ["git", "s3", "init", "--format", "packs"] + (["--encrypt-to", recipient] if mode == "encrypted" else [])
                sh(init + [url], env, work)
                t = times[mode]
                t["push"].append(timed(["git", "push", "-q", url, f"HEAD~1:refs/heads/{branch}"], env, src))
                sh(["git", "s3", "cache", "clear"], env, work)
                clone = os.path.join(work, f"clone-{mode}-{i}")
                t["clone"].append(timed(["git", "clone", "-q", url, clone], env, work))
                t["one-commit push"].append(timed(["git", "push", "-q", url, f"HEAD:refs/heads/{branch}"], env, src))
                sh(["git", "s3", "cache", "clear"], env, work)
                t["one-commit fetch"].append(timed(["git", "fetch", "-q", "origin"], env, clone))
                shutil.rmtree(clone)
                print(f"run {i} {mode}: " + ", ".join(f"{c} {t[c][-1]:.2f}s" for c in CASES), flush=True)
        rows = []
        print(f"\n{os.path.basename(os.path.normpath(a.repo))}: {count} commits on {branch}; medians of {a.runs} runs")
        print("| case | plain | encrypted | encrypted/plain |\n|---|---|---|---|")
        for c in CASES:
            p, e = statistics.median(times["plain"][c]), statistics.median(times["encrypted"][c])
            rows.append({"case": c, "plain": p, "encrypted": e, "ratio": e / p, "runs": times["plain"][c] + times["encrypted"][c]})
            print(f"| {c} | {p:.2f} s | {e:.2f} s | {e / p:.2f} |")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"repo": a.repo, "commits": count, "runs": a.runs, "rows": rows, "times": times}, f, indent=1)
    finally:
        subprocess.run(["git", "s3", "daemon", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            os.kill(moto_pid, 15)
        except OSError:
            pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
