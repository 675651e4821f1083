"""The monorepo benchmark: git-s3 (packs format) against local git on a
generated monorepo of more than 2 GB packed (bench/monogen.py).

Cases, at each round-trip time of --rtts (the field server in front of one
local S3 server; local git is never delayed):
- `git clone --depth 1` (cold daemon cache);
- `git clone --filter=blob:none --sparse`, then `git sparse-checkout set
  <the package holding the binary that changes late>` (cold cache);
- in that partial clone, `git checkout <a commit half-way back>` (a lazy
  fetch of the directory's old files);
- push1 and fetch1: a one-commit push and a one-commit fetch in existing
  clones (warm daemon).
Reported: median seconds of --runs runs; bytes read from S3 (written, for
the push) and S3 requests, counted by the field server; for local git, the
bytes of the packs it received. Not a test: it asserts nothing.

    bench/monorepo.sh --runs 3     # builds the release binaries, then runs this
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
import monogen  # noqa: E402

BUCKET = "mono"


class Field:
    """One field-server process in front of the S3 server, with `rtt` ms
    round trips; its counters are read and reset through its stdin."""

    def __init__(self, bin_dir, upstream, rtt):
        cmd = [os.path.join(bin_dir, "field-server"), "--upstream", upstream, "--rtt-ms", str(rtt)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"{cmd[0]} did not start (is it built? bench/monorepo.sh builds it)")
        self.url = line.split("\t")[0]

    def ask(self, what):
        self.proc.stdin.write(f"{what}\n".encode())
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().split()

    def reset(self):
        self.ask("reset")

    def counts(self):
        requests, down, up, path = (int(x) for x in self.ask("counts"))
        return {"requests": requests, "down": down, "up": up, "critical_path": path}

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def size(n):
    """Bytes in the unit that keeps three digits or so."""
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n} B"


def pack_sizes(repo):
    """name -> size of the .pack files of a repository (bare or not)."""
    d = os.path.join(repo, "objects/pack")
    if not os.path.isdir(d):
        d = os.path.join(repo, ".git/objects/pack")
    return {f: os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".pack")}


class MonoBench:
    def __init__(self, a):
        self.a = a
        os.makedirs(a.data, exist_ok=True)
        # the bench's work directory and the S3 server's data on the big disk
        os.environ["TMPDIR"] = tempfile.tempdir = a.data
        self.b = B.Bench(argparse.Namespace(root=a.root, bin_dir=a.bin_dir, rtt=0, tls=False))
        self.work = self.b.work
        self.fields = {}
        self.s3s_pid = None
        try:
            if a.server == "s3s":
                self.start_s3s()
            for rtt in a.rtts:
                self.fields[rtt] = Field(self.b.bin_dir, self.b.endpoint, rtt)
        except (OSError, RuntimeError, subprocess.CalledProcessError):
            self.close()
            raise
        self.tools = ("packs", "local")
        self.rows = []
        self.notes = []

    def start_s3s(self):
        """s3s-fs instead of moto: it serves a range by seeking in its file,
        where moto reads the whole object for each ranged GET (2.4 GB for
        each range of the big pack here)."""
        pidfile = os.path.join(self.work, "s3s/s3s.pid")
        out = subprocess.run([os.path.join(self.a.root, "scripts/s3s-server.sh"), pidfile],
                             stdout=subprocess.PIPE, check=True)
        with open(pidfile) as f:
            self.s3s_pid = int(f.read().strip())
        self.b.endpoint = out.stdout.decode().strip()
        for e in self.b.env.values():  # s3s-fs checks signatures: its fixed keys
            e.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_ENDPOINT_URL": self.b.endpoint})

    # ---------- set-up ----------
    def repository(self):
        a = self.a
        src = os.path.join(a.data, f"mono-s{a.seed}-x{a.scale}")
        if os.path.isdir(src):
            self.fig = monogen.stats(src)
            print(f"reusing {src} (size-pack {self.fig['size_pack'] / 2**30:.2f} GiB)", flush=True)
        else:
            self.fig = monogen.generate(src, a.seed, a.scale, env=self.b.env["local"],
                                        log=lambda m: print(m, flush=True))
        self.src = src
        self.old = monogen.git(["rev-parse", f"main~{self.fig['commits'] // 2}"], src)
        return src

    def env(self, tool, rtt):
        e = dict(self.b.env["packs" if tool == "packs" else "local"])
        e["AWS_ENDPOINT_URL"] = self.fields[rtt].url if rtt is not None else self.b.endpoint
        return e

    def setup_remotes(self):
        """The local bare remote (hard links to the generated repository's
        pack) and the packs remote (one push of everything, then its views,
        which the daemon writes in the background)."""
        self.urls = {"local": "file://" + os.path.join(self.work, "local.git"), "packs": f"s3://{BUCKET}/packs/mono"}
        local = self.urls["local"][7:]
        B.sh(["git", "clone", "-q", "--bare", "--local", self.src, local], self.env("local", None))
        for k, v in (("uploadpack.allowFilter", "true"), ("receive.unpackLimit", "1")):
            B.sh(["git", "config", k, v], self.b.env["local"], cwd=local)
        self.b.s3tool("create-bucket", BUCKET)
        self.clones = {}
        for tool in self.tools:
            for role in ("pusher", "fetcher"):
                d = os.path.join(self.work, f"{role}-{tool}")
                B.sh(["git", "clone", "-q", "--local", *(["--no-checkout"] if role == "fetcher" else []), self.src, d], self.b.env["local"])
                B.sh(["git", "remote", "set-url", "origin", self.urls[tool]], self.b.env["local"], cwd=d)
                B.sh(["git", "config", "fetch.unpackLimit", "1"], self.b.env["local"], cwd=d)
                self.clones[(tool, role)] = d
        e = self.env("packs", None)
        t = time.perf_counter()
        B.sh(["git", "push", "-q", "origin", "main"], e, cwd=self.clones[("packs", "pusher")])
        pushed = time.perf_counter() - t
        stored = self.b.bucket_bytes(BUCKET, "packs/mono/")
        views = self.wait_for_views()
        self.notes.append(f"initial push of main to the packs remote (no delay): {pushed:.0f} s, {stored / 1e9:.2f} GB "
                          f"in the bucket; its views were written in the background in {views:.0f} s after it")
        print(self.notes[-1], flush=True)
        for tool in self.tools:
            B.sh(["git", "fetch", "-q", "origin"], self.env(tool, None), cwd=self.clones[(tool, "fetcher")])

    def manifest(self):
        return json.loads(self.b.s3tool("get", BUCKET, "packs/mono/.git-s3/manifest.json"))

    def wait_for_views(self, limit=1800):
        t = time.perf_counter()
        while time.perf_counter() - t < limit:
            m = self.manifest()
            covers = set((m.get("views") or {}).get("covers", []))
            if covers and all(p["name"] in covers for p in m.get("packs", [])):
                return time.perf_counter() - t
            time.sleep(5)
        raise RuntimeError(f"the packs remote has no views {limit} s after its first push")

    def cold(self, e):
        B.sh(["git", "s3", "daemon", "stop"], e, check=False)
        shutil.rmtree(e["GIT_S3_CACHE_DIR"], ignore_errors=True)
        B.sh(["git", "s3", "daemon", "start"], e)

    # ---------- measuring ----------
    def run(self, tool, rtt, cmd, cwd, received):
        """Runs `cmd`; returns seconds and what moved: the field server's
        counts for the packs remote, for local git the bytes of the packs
        that appeared in the repository `received`."""
        e = self.env(tool, rtt)
        before = pack_sizes(received) if tool == "local" and os.path.exists(received) else {}
        if tool != "local":
            self.fields[rtt].reset()
        t = time.perf_counter()
        B.sh(cmd, e, cwd=cwd)
        secs = time.perf_counter() - t
        if tool == "local":
            new = sum(s for f, s in pack_sizes(received).items() if f not in before)
            return secs, {"down": new, "up": new, "requests": None, "critical_path": None}
        return secs, self.fields[rtt].counts()

    def record(self, case, rtt, results, direction="down"):
        """results: tool -> list of (seconds, counts). Bytes and requests of
        the last run (they do not vary between runs)."""
        row = {"case": case, "rtt": rtt, "direction": direction}
        for tool, rs in results.items():
            row[tool] = {"seconds": statistics.median(s for s, _ in rs), "runs": [round(s, 3) for s, _ in rs],
                         "bytes": rs[-1][1][direction], "requests": rs[-1][1]["requests"],
                         "critical_path": rs[-1][1]["critical_path"]}
        self.rows.append(row)
        p, l = row.get("packs"), row.get("local")
        print(f"  {rtt:>3} ms  {case:<46} packs {p['seconds']:8.2f} s {size(p['bytes']):>12} {p['requests']:>5} req"
              f"   local {l['seconds']:8.2f} s {size(l['bytes']):>12}", flush=True)

    def clone_cases(self, rtt):
        sparse = self.fig["sparse_dir"]
        res = {k: {t: [] for t in self.tools} for k in ("depth", "sparse", "set", "lazy")}
        for tool in self.tools:
            url = self.urls[tool]
            extra = ["--no-local"] if tool == "local" else []
            for i in range(self.a.runs):
                d = os.path.join(self.work, f"clone-{tool}-{rtt}-{i}")
                if tool != "local":
                    self.cold(self.env(tool, rtt))
                res["depth"][tool].append(self.run(tool, rtt, ["git", "clone", "-q", *extra, "--depth", "1", url, d], self.work, d))
                shutil.rmtree(d)
                if tool != "local":
                    self.cold(self.env(tool, rtt))
                res["sparse"][tool].append(self.run(tool, rtt, ["git", "clone", "-q", *extra, "--filter=blob:none", "--sparse", url, d], self.work, d))
                res["set"][tool].append(self.run(tool, rtt, ["git", "sparse-checkout", "set", sparse], d, d))
                res["lazy"][tool].append(self.run(tool, rtt, ["git", "checkout", "-q", self.old], d, d))
                shutil.rmtree(d)
        self.record("`clone --depth 1`", rtt, res["depth"])
        self.record("`clone --filter=blob:none --sparse`", rtt, res["sparse"])
        self.record(f"then `sparse-checkout set {sparse}`", rtt, res["set"])
        self.record(f"then `checkout` of main~{self.fig['commits'] // 2} (lazy)", rtt, res["lazy"])

    def push_fetch_cases(self, rtt):
        push = {t: [] for t in self.tools}
        fetch = {t: [] for t in self.tools}
        for tool in self.tools:
            pusher, fetcher = self.clones[(tool, "pusher")], self.clones[(tool, "fetcher")]
            remote = self.urls["local"][7:] if tool == "local" else None
            for i in range(self.a.push_runs):
                name = os.path.join(self.fig["sparse_dir"], f"bench-{rtt}-{i}.txt")
                with open(os.path.join(pusher, name), "w") as f:
                    f.write(f"one more commit, {rtt} ms, run {i}\n")
                B.sh(["git", "add", name], self.b.env["local"], cwd=pusher)
                B.sh(["git", "commit", "-q", "-m", f"push1 {rtt} {i}"], self.b.env["local"], cwd=pusher)
                push[tool].append(self.run(tool, rtt, ["git", "push", "-q", "origin", "main"], pusher, remote))
                fetch[tool].append(self.run(tool, rtt, ["git", "fetch", "-q", "origin"], fetcher, fetcher))
        self.record("push1 (a one-commit push)", rtt, push, "up")
        self.record("fetch1 (a one-commit fetch)", rtt, fetch)

    # ---------- report ----------
    def table(self):
        def cell(r, tool):
            return f"{r[tool]['seconds']:.2f} s"

        lines = ["| RTT | case | git-s3 packs | git, local bare | time packs/local | bytes packs | bytes local | "
                 "bytes packs/local | S3 requests (critical path) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            p, l = r["packs"], r["local"]
            ratio = f"{p['bytes'] / l['bytes']:.2f}×" if l["bytes"] else "–"
            lines.append(f"| {r['rtt']} ms | {r['case']} | {cell(r, 'packs')} | {cell(r, 'local')} | "
                         f"{p['seconds'] / max(l['seconds'], 1e-9):.2f}× | {size(p['bytes'])} | {size(l['bytes'])} | "
                         f"{ratio} | {p['requests']} ({p['critical_path']}) |")
        return "\n".join(lines)

    def close(self):
        for f in self.fields.values():
            f.close()
        self.b.close()
        if self.s3s_pid:
            os.kill(self.s3s_pid, 15)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin-dir", required=True, help="the release binaries")
    ap.add_argument("--data", required=True, help="a directory on a disk with room (some 10 GB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0: about 2.3 GB packed")
    ap.add_argument("--runs", type=int, default=3, help="runs of each clone case")
    ap.add_argument("--push-runs", type=int, default=5, help="runs of push1 and fetch1")
    ap.add_argument("--rtts", default="0,50", help="round-trip times in ms, comma-separated")
    ap.add_argument("--server", choices=("moto", "s3s"), default="s3s",
                    help="the local S3 server behind the field servers (default s3s-fs: moto reads a whole "
                         "object for each ranged GET)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    a.rtts = [int(x) for x in a.rtts.split(",")]
    m = MonoBench(a)
    try:
        m.repository()
        m.setup_remotes()
        for rtt in a.rtts:
            m.clone_cases(rtt)
            m.push_fetch_cases(rtt)
        f = m.fig
        print(f"\nmonorepo benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; repository: seed {a.seed}, "
              f"scale {a.scale}: {f['commits']} commits, {f['files']} files in {f['directories']} directories, "
              f"size-pack {f['size_pack'] / 2**30:.2f} GiB; medians of {a.runs} runs ({a.push_runs} for push1/fetch1)")
        print(m.table())
        for n in m.notes:
            print(f"- {n}")
        if a.json:
            with open(a.json, "w") as out:
                json.dump({"figures": f, "rows": m.rows, "notes": m.notes}, out, indent=2)
    finally:
        m.close()


if __name__ == "__main__":
    sys.exit(main())
