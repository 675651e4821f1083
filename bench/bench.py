"""git-s3 vs git-remote-s3 0.4.2, side by side on one local S3 server.

Each case runs both tools on identical data, several times; the table shows
medians and the ratio ours/theirs (lower is better for us). Not a test: it
asserts nothing about speed, it reports.
"""
import argparse
import json
import os
import random
import shutil
import socket
import statistics
import threading
import subprocess
import sys
import tempfile
import time

# python: git-remote-s3 0.4.2; ours: git-s3, bundle format (the default);
# packs: git-s3 with `s3.format=packs`; local: plain git to a bare repository
# on the same disk (the ceiling), for the git-level cases only.
TOOLS = ("python", "ours", "packs")
REMOTE_TOOLS = TOOLS + ("local",)
LFS_TOOLS = ("python", "ours")


def sh(cmd, env, cwd=None, check=True, capture=True):
    r = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, shell=isinstance(cmd, str))
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd} failed in {cwd}: {r.stderr.decode(errors='replace')[-2000:]}")
    return r.stdout.decode(errors="replace") if capture else ""


def timed(cmd, env, cwd=None):
    t = time.perf_counter()
    sh(cmd, env, cwd)
    return time.perf_counter() - t


class CountingProxy:
    """A TCP proxy in front of the S3 server that counts the bytes it relays
    back (responses: what a tool read from S3) and forward (requests: what
    it sent)."""

    def __init__(self, upstream):
        scheme, rest = upstream.split("://", 1)
        host, port = rest.rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.down = 0
        self.up = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        # bytes are relayed as they are: TLS passes through
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                continue
            threading.Thread(target=self.pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self.pipe, args=(server, client, True), daemon=True).start()

    def pipe(self, src, dst, count):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if count:
                        self.down += len(data)
                    else:
                        self.up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def bytes_down(self):
        with self.lock:
            return self.down

    def counts(self):
        """(bytes sent to S3, bytes read from it)."""
        with self.lock:
            return self.up, self.down


def settle(env):
    """Waits until the daemon's background work (a push's `.idx` upload, a
    remote's views) is done (`git s3 status --json`): the next timed command
    does not share the machine with the previous one's leftovers."""
    for _ in range(6000):
        r = subprocess.run(["git", "s3", "status", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        doc = json.loads(r.stdout.decode(errors="replace") or "{}") if r.returncode == 0 else {}
        if doc.get("daemon", {}).get("background", {}).get("running", 0) == 0:
            return
        time.sleep(0.05)


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = args.root
        self.bin_dir = os.path.abspath(args.bin_dir or os.path.join(self.root, "target/release"))
        self.venv = os.path.join(self.root, ".test-env/venv")
        self.work = tempfile.mkdtemp(prefix="gits3-bench-")
        self.results = []
        self.notes = []
        self.start_server()
        self.start_field_server()
        self.bins = {}
        for tool in ("python", "ours"):
            d = os.path.join(self.work, f"bin-{tool}")
            os.makedirs(d)
            self.bins[tool] = d
        rel = self.bin_dir
        for b in ("git-remote-s3", "git-s3", "git-lfs-s3", "git-s3-daemon"):
            os.symlink(os.path.join(rel, b), os.path.join(self.bins["ours"], b))
        os.symlink(os.path.join(rel, "git-remote-s3"), os.path.join(self.bins["ours"], "git-remote-s3+zip"))
        for b in ("git-remote-s3", "git-remote-s3+zip", "git-lfs-s3", "git-s3"):
            os.symlink(os.path.join(self.venv, "bin", b), os.path.join(self.bins["python"], b))
        home = os.path.join(self.work, "home")
        os.makedirs(home)
        with open(os.path.join(home, ".gitconfig"), "w") as f:
            f.write("[user]\n\tname = Bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n"
                    "[protocol \"s3\"]\n\tallow = always\n[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n")
        run = os.path.join(self.work, "run")
        os.makedirs(run, mode=0o700)
        base = {
            "HOME": home, "XDG_RUNTIME_DIR": run, "GIT_S3_CACHE_DIR": os.path.join(self.work, "cache"),
            "GIT_S3_STATE_DIR": os.path.join(self.work, "state"), "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.tool_endpoint,
            "LANG": "C", "GIT_TERMINAL_PROMPT": "0",
        }
        if self.ca_bundle:
            base["AWS_CA_BUNDLE"] = self.ca_bundle
        self.env = {}
        for tool in REMOTE_TOOLS:
            e = dict(base)
            e["PATH"] = f"{self.bins['python' if tool == 'python' else 'ours']}:/usr/local/bin:/usr/bin:/bin"
            self.env[tool] = e
        self.env["packs"].update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "s3.format", "GIT_CONFIG_VALUE_0": "packs"})
        sh(["git", "lfs", "install", "--skip-repo"], self.env["ours"])

    def start_server(self):
        out = subprocess.run([os.path.join(self.root, "scripts/s3-server.sh"), os.path.join(self.work, "moto.pid")],
                             stdout=subprocess.PIPE, check=True)
        self.endpoint = out.stdout.decode().strip()
        with open(os.path.join(self.work, "moto.pid")) as f:
            self.moto_pid = int(f.read().strip())

    def start_field_server(self):
        """With --rtt or --tls, the tools reach the S3 server through the
        field server (testkit's field-server binary): latency on every
        request, TLS with a CA made for the run (trusted through
        AWS_CA_BUNDLE by both tools). Set-up (buckets, listings) goes to
        the S3 server directly."""
        self.field = None
        self.tool_endpoint = self.endpoint
        self.ca_bundle = None
        a = self.args
        if not (a.rtt or a.tls):
            return
        cmd = [os.path.join(self.bin_dir, "field-server"), "--upstream", self.endpoint, "--rtt-ms", str(a.rtt or 0)]
        if a.tls:
            cmd.append("--tls")
        self.field = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.field.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"{cmd[0]} did not start (is it built? bench/run.sh builds it)")
        url, ca = line.split("\t")
        self.tool_endpoint = url
        self.ca_bundle = None if ca == "-" else ca

    def network(self):
        a = self.args
        if not self.field:
            return "moto server on 127.0.0.1"
        return (f"moto server on 127.0.0.1 behind the field server ({a.rtt} ms round trip"
                + (", TLS" if a.tls else "") + ")")

    def s3tool(self, *a):
        return subprocess.run([os.path.join(self.venv, "bin/python"), os.path.join(self.root, "testkit/s3tool.py"),
                               self.endpoint, *a], stdout=subprocess.PIPE, check=True).stdout.decode()

    def bucket_bytes(self, bucket, prefix):
        total = 0
        for line in self.s3tool("list", bucket, prefix).splitlines():
            total += int(line.split("\t")[1])
        return total

    def close(self):
        sh(["git", "s3", "daemon", "stop"], self.env["ours"], check=False)
        if self.field:
            self.field.stdin.close()
            self.field.wait()
        try:
            os.kill(self.moto_pid, 15)
        except OSError:
            pass
        shutil.rmtree(self.work, ignore_errors=True)

    # ---------- data ----------
    def gen_repo(self, path, commits, branches, blob_kib, files):
        """Deterministic repository through git fast-import."""
        os.makedirs(path)
        sh(["git", "init", "-q", "-b", "main"], self.env["ours"], cwd=path)
        rng = random.Random(42)
        p = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=path, env=self.env["ours"], stdin=subprocess.PIPE)
        w = p.stdin.write
        mark = 0
        t0 = 1700000000

        def commit(ref, parent_mark, n, payload):
            nonlocal mark
            mark += 1
            msg = f"commit {n} on {ref}".encode()
            w(f"commit {ref}\nmark :{mark}\ncommitter Bench <b@example.com> {t0 + n} +0000\n".encode())
            w(f"data {len(msg)}\n".encode() + msg + b"\n")
            if parent_mark:
                w(f"from :{parent_mark}\n".encode())
            fname = f"src/f{rng.randrange(files):04d}.bin"
            w(f"M 644 inline {fname}\ndata {len(payload)}\n".encode() + payload + b"\n")
            return mark

        main_marks = []
        last = 0
        for n in range(commits):
            last = commit("refs/heads/main", last, n, rng.randbytes(blob_kib * 1024))
            main_marks.append(last)
        for b in range(branches):
            base = main_marks[(b + 1) * commits // (branches + 1)]
            m = base
            for k in range(3):
                m = commit(f"refs/heads/branch-{b:02d}", m, commits + b * 10 + k, rng.randbytes(4096))
        p.stdin.close()
        if p.wait() != 0:
            raise RuntimeError("fast-import failed")
        sh(["git", "reset", "-q", "--hard", "main"], self.env["ours"], cwd=path)
        sh(["git", "gc", "-q", "--prune=now"], self.env["ours"], cwd=path)
        size = sum(os.path.getsize(os.path.join(path, ".git/objects/pack", f))
                   for f in os.listdir(os.path.join(path, ".git/objects/pack")))
        return size

    # ---------- measuring ----------
    def record(self, case, times, target=None, extra=None):
        row = {"case": case, "target": target}
        for tool in REMOTE_TOOLS:
            row[tool] = statistics.median(times[tool]) if times.get(tool) else None
        for tool in ("ours", "packs", "local"):
            if row["python"] and row[tool]:
                row[f"ratio_{tool}"] = row[tool] / row["python"]
        if row["packs"] and row["local"]:
            row["packs_vs_local"] = row["packs"] / row["local"]
        row["runs"] = {t: [round(x, 4) for x in times[t]] for t in REMOTE_TOOLS if times.get(t)}
        if extra:
            row.update(extra)
        self.results.append(row)
        cells = "  ".join(f"{t} {row[t]:8.3f}s" for t in REMOTE_TOOLS if row[t] is not None)
        ratios = "  ".join(f"{t}/python {row[f'ratio_{t}']:.3f}" for t in ("ours", "packs") if row.get(f"ratio_{t}"))
        if row.get("packs_vs_local"):
            ratios += f"  packs/local {row['packs_vs_local']:.2f}x"
        print(f"  {case:<40} {cells}  {ratios}  target {target or '-'}", flush=True)

    def run_cases(self):
        a = self.args
        runs = a.runs
        if a.only_narrow:
            self.s3tool("create-bucket", "bench-bucket")
            self.narrow_cases("bench-bucket")
            return
        commits, branches, blob = (300, 4, 8) if a.quick else (5000, 12, 10)
        src = os.path.join(self.work, "medium")
        print(f"generating medium repo: {commits} commits, {branches} branches ...", flush=True)
        packed = self.gen_repo(src, commits, branches, blob, 400)
        print(f"  packed size {packed / 1e6:.1f} MB", flush=True)
        self.notes.append(f"medium repository: {commits} commits, {branches + 1} branches, {packed / 1e6:.1f} MB packed")
        bucket = "bench-bucket"
        self.s3tool("create-bucket", bucket)
        urls = {t: f"s3://{bucket}/{t}/medium" for t in TOOLS}
        urls["local"] = os.path.join(self.work, "local-bare.git")
        sh(["git", "init", "-q", "--bare", urls["local"]], self.env["local"])
        stored = {}
        for tool in REMOTE_TOOLS:
            t0 = time.perf_counter()
            sh(["git", "push", "-q", urls[tool], "--all"], self.env[tool], cwd=src)
            stored[tool] = du(urls[tool]) if tool == "local" else self.bucket_bytes(bucket, f"{tool}/medium/")
            print(f"  initial push --all with {tool}: {time.perf_counter() - t0:.1f}s, "
                  f"{stored[tool] / 1e6:.1f} MB in the bucket", flush=True)
        self.notes.append("bucket bytes after pushing all branches: " +
                          ", ".join(f"{t} {stored[t] / 1e6:.1f} MB" for t in REMOTE_TOOLS))

        # 1. ls-remote (warm daemon) and 2. no-op fetch
        clones = {}
        for tool in REMOTE_TOOLS:
            clones[tool] = os.path.join(self.work, f"clone-{tool}")
            sh(["git", "clone", "-q", urls[tool], clones[tool]], self.env[tool], cwd=self.work)
            # HEAD names the first branch pushed, which --all does not fix
            sh(["git", "checkout", "-q", "main"], self.env[tool], cwd=clones[tool])
        times = {t: [timed(["git", "ls-remote", urls[t]], self.env[t], self.work) for _ in range(runs * 2)] for t in TOOLS}
        self.record("ls-remote (warm daemon)", times, "<= 0.1")
        times = {t: [timed(["git", "fetch", "-q"], self.env[t], clones[t]) for _ in range(runs * 2)] for t in TOOLS}
        self.record("no-op fetch", times, "<= 0.1")

        # 3. clone of the medium repo (ours: cold cache each run)
        git_dir = {}
        times = {t: [] for t in REMOTE_TOOLS}
        for t in REMOTE_TOOLS:
            for i in range(max(1, runs - 2)):
                d = os.path.join(self.work, f"c3-{t}-{i}")
                if t in ("ours", "packs"):
                    shutil.rmtree(self.env[t]["GIT_S3_CACHE_DIR"], ignore_errors=True)
                    sh(["git", "s3", "daemon", "stop"], self.env[t], check=False)
                    sh(["git", "s3", "daemon", "start"], self.env[t])
                extra_args = ["--no-local"] if t == "local" else []
                times[t].append(timed(["git", "clone", "-q", *extra_args, urls[t], d], self.env[t], self.work))
                git_dir[t] = round(du(os.path.join(d, ".git")) / 1e6, 1)
                shutil.rmtree(d)
        self.record("clone medium (cold cache)", times, "<= 0.5", {"clone_git_dir_mb": git_dir})
        self.notes.append("local .git after a clone: " + ", ".join(f"{t} {git_dir[t]} MB" for t in REMOTE_TOOLS))

        # 4. push one new commit and 5. fetch it into an existing clone
        # (three times the runs: each takes tens of milliseconds with git-s3)
        fetchers = {}
        for t in REMOTE_TOOLS:
            fetchers[t] = os.path.join(self.work, f"fetcher-{t}")
            sh(["git", "clone", "-q", urls[t], fetchers[t]], self.env[t], cwd=self.work)
        times4 = {t: [] for t in REMOTE_TOOLS}
        times5 = {t: [] for t in REMOTE_TOOLS}
        for t in REMOTE_TOOLS:
            for i in range(runs * 3):
                with open(os.path.join(clones[t], f"new-{i}.txt"), "w") as f:
                    f.write(f"change {i}\n")
                sh(["git", "add", "."], self.env[t], cwd=clones[t])
                sh(["git", "commit", "-q", "-m", f"change {i}"], self.env[t], cwd=clones[t])
                times4[t].append(timed(["git", "push", "-q", "origin", "main"], self.env[t], clones[t]))
                times5[t].append(timed(["git", "fetch", "-q", "origin"], self.env[t], fetchers[t]))
        self.record("push one commit (medium)", times4, "packs <= 0.1")
        self.record("fetch one new commit (medium)", times5, "packs <= 0.1")

        # 6. second clone on the same machine (ours: warm cache)
        times = {t: [] for t in TOOLS}
        for t in TOOLS:
            sh(["git", "clone", "-q", urls[t], os.path.join(self.work, f"warm-{t}")], self.env[t], self.work)
            for i in range(max(1, runs - 2)):
                d = os.path.join(self.work, f"c6-{t}-{i}")
                times[t].append(timed(["git", "clone", "-q", urls[t], d], self.env[t], self.work))
                shutil.rmtree(d)
        self.record("second clone medium (cache)", times, "<= 0.2")

        self.tags_case(bucket)
        self.narrow_cases(bucket)
        if not a.skip_lfs:
            self.lfs_cases(bucket, runs)
        self.rss()

    def gen_source_repo(self, path, commits, files):
        """A repository shaped like source code: `files` text files in a
        directory tree, each commit rewriting a few lines of a few files."""
        os.makedirs(path)
        sh(["git", "init", "-q", "-b", "main"], self.env["ours"], cwd=path)
        rng = random.Random(7)
        words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randrange(3, 12)))) for _ in range(4000)]
        content = {}
        for i in range(files):
            lines = [" ".join(rng.choice(words) for _ in range(rng.randrange(3, 12))) for _ in range(rng.randrange(40, 400))]
            content[f"src/m{i % 23:02d}/s{i % 7}/file{i:05d}.rs"] = lines
        names = sorted(content)
        p = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=path, env=self.env["ours"], stdin=subprocess.PIPE)
        w = p.stdin.write
        for n in range(commits):
            w(f"commit refs/heads/main\nmark :{n + 1}\ncommitter Bench <b@example.com> {1700000000 + n * 3600} +0000\n".encode())
            msg = f"change {n}".encode()
            w(f"data {len(msg)}\n".encode() + msg + b"\n")
            if n:
                w(f"from :{n}\n".encode())
            touched = names if n == 0 else rng.sample(names, 4)
            for name in touched:
                lines = content[name]
                if n:
                    for _ in range(3):
                        lines[rng.randrange(len(lines))] = " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12)))
                data = ("\n".join(lines) + "\n").encode()
                w(f"M 644 inline {name}\ndata {len(data)}\n".encode() + data + b"\n")
        p.stdin.close()
        if p.wait() != 0:
            raise RuntimeError("fast-import failed")
        sh(["git", "reset", "-q", "--hard", "main"], self.env["ours"], cwd=path)

    def narrow_cases(self, bucket):
        """Shallow and partial clones of one repository: time, and bytes read
        from S3 (through a counting proxy) or, for local git, the pack bytes
        it received."""
        a = self.args
        src = os.path.join(self.work, "narrow-src")
        if a.real_repo:
            sh(["git", "clone", "-q", "--no-local", "--single-branch", a.real_repo, src], self.env["local"], cwd=self.work)
            label = os.path.basename(os.path.normpath(a.real_repo))
        else:
            commits, files = (200, 300) if a.quick else (3000, 2000)
            self.gen_source_repo(src, commits, files)
            label = f"generated source tree"
        sh(["git", "gc", "-q", "--prune=now"], self.env["local"], cwd=src)
        count = sh(["git", "rev-list", "--count", "HEAD"], self.env["local"], cwd=src).strip()
        packed = du(os.path.join(src, ".git/objects/pack"))
        self.notes.append(f"shallow/partial repository: {label}, {count} commits on its default branch, {packed / 1e6:.1f} MB packed")
        print(f"shallow/partial cases on {label}: {count} commits, {packed / 1e6:.1f} MB packed", flush=True)
        proxy = CountingProxy(self.tool_endpoint)
        env = {}
        for t in REMOTE_TOOLS:
            env[t] = dict(self.env[t])
            env[t]["AWS_ENDPOINT_URL"] = proxy.url
        urls = {t: f"s3://{bucket}/{t}/narrow" for t in TOOLS}
        urls["local"] = "file://" + os.path.join(self.work, "narrow-bare.git")
        sh(["git", "init", "-q", "--bare", urls["local"][7:]], env["local"])
        sh(["git", "config", "uploadpack.allowFilter", "true"], env["local"], cwd=urls["local"][7:])
        branch = sh(["git", "symbolic-ref", "--short", "HEAD"], env["local"], cwd=src).strip()
        for t in REMOTE_TOOLS:
            sh(["git", "push", "-q", urls[t], f"{branch}:refs/heads/{branch}"], env[t], cwd=src)
        sh(["git", "symbolic-ref", "HEAD", f"refs/heads/{branch}"], env["local"], cwd=urls["local"][7:])
        # the packs format's views, as a maintained remote has them
        sh(["git", "s3", "gc", urls["packs"]], env["packs"], cwd=self.work)
        old = "HEAD~" + str(min(int(count) - 1, 1000))

        def cold(t):
            if t in ("ours", "packs"):
                sh(["git", "s3", "daemon", "stop"], env[t], check=False)
                shutil.rmtree(env[t]["GIT_S3_CACHE_DIR"], ignore_errors=True)
                sh(["git", "s3", "daemon", "start"], env[t])

        def pack_bytes(d):
            pd = os.path.join(d, ".git/objects/pack")
            return sum(os.path.getsize(os.path.join(pd, f)) for f in os.listdir(pd) if f.endswith(".pack"))

        for case, args in (("depth-1 clone", ["--depth", "1"]), ("blob:none clone", ["--filter=blob:none"])):
            times = {t: [] for t in REMOTE_TOOLS}
            lazy = {t: [] for t in REMOTE_TOOLS}
            nbytes = {}
            lazy_bytes = {}
            for t in REMOTE_TOOLS:
              try:
                for i in range(max(1, a.runs - 2)):
                    d = os.path.join(self.work, f"narrow-{t}-{i}")
                    cold(t)
                    b0 = proxy.bytes_down()
                    times[t].append(timed(["git", "clone", "-q", *args, urls[t], d], env[t], self.work))
                    got = pack_bytes(d) if t == "local" else proxy.bytes_down() - b0
                    nbytes[t] = got
                    if case.startswith("blob"):
                        before_packs = pack_bytes(d)
                        b1 = proxy.bytes_down()
                        lazy[t].append(timed(["git", "checkout", "-q", old], env[t], d))
                        lazy_bytes[t] = pack_bytes(d) - before_packs if t == "local" else proxy.bytes_down() - b1
                    shutil.rmtree(d)
              except RuntimeError as err:
                times[t], lazy[t] = [], []
                nbytes[t] = lazy_bytes[t] = None
                self.notes.append(f"{case} with {t}: failed ({str(err).splitlines()[-1][:200]})")
                print(f"  {case} with {t}: failed: {str(err)[-300:]}", flush=True)
            self.record(f"{case} (cold cache)", times, None, {"bytes": nbytes})
            self.notes.append(f"{case}: bytes read from S3 (local git: pack bytes received): " +
                              ", ".join(f"{t} {mb(nbytes.get(t))}" for t in REMOTE_TOOLS) +
                              (f"; packs/local {nbytes['packs'] / max(1, nbytes['local']):.1f}x" if nbytes.get("packs") and nbytes.get("local") else ""))
            if lazy["ours"]:
                self.record(f"lazy checkout of {old} after blob:none", lazy, None, {"bytes": lazy_bytes})
                self.notes.append(f"lazy checkout of {old}: bytes read from S3 (local git: pack bytes received): " +
                                  ", ".join(f"{t} {mb(lazy_bytes.get(t))}" for t in REMOTE_TOOLS))

    def tags_case(self, bucket):
        """Mirror push of a repository with 300 tags: time and bucket bytes."""
        n = self.args.tags or (30 if self.args.quick else 300)
        src = os.path.join(self.work, "tags")
        self.gen_repo(src, n, 0, 4, 50)
        revs = sh(["git", "rev-list", "--reverse", "main"], self.env["ours"], cwd=src).split()
        for i, rev in enumerate(revs[:n]):
            sh(["git", "tag", f"v{i:04d}", rev], self.env["ours"], cwd=src)
        times = {}
        stored = {}
        for t in TOOLS:
            url = f"s3://{bucket}/{t}/tags"
            times[t] = [timed(["git", "push", "-q", "--mirror", url], self.env[t], src)]
            stored[t] = self.bucket_bytes(bucket, f"{t}/tags/")
        local = os.path.join(self.work, "tags-bare.git")
        sh(["git", "init", "-q", "--bare", local], self.env["local"])
        times["local"] = [timed(["git", "push", "-q", "--mirror", local], self.env["local"], src)]
        stored["local"] = du(local)
        self.record(f"mirror push, {n} tags (once)", times, None, {"bucket_bytes": stored})
        self.notes.append(f"bytes stored after a mirror push of {n} tags: " +
                          ", ".join(f"{t} {stored[t] / 1e6:.1f} MB" for t in REMOTE_TOOLS))

    def lfs_cases(self, bucket, runs):
        files = 20 if self.args.quick else 200
        big_mib = 32 if self.args.quick else 256
        for label, count, size in ((f"LFS {files} x 256 KiB", files, 256 * 1024), (f"LFS 1 x {big_mib} MiB", 1, big_mib << 20)):
            up = {t: [] for t in LFS_TOOLS}
            down = {t: [] for t in LFS_TOOLS}
            try:
                for t in LFS_TOOLS:
                    for i in range(max(1, runs - 2)):
                        repo = os.path.join(self.work, f"lfs-{t}-{count}-{i}")
                        url = f"s3://{bucket}/{t}/lfs-{count}-{i}"
                        os.makedirs(repo)
                        e = self.env[t]
                        sh(["git", "init", "-q", "-b", "main"], e, cwd=repo)
                        sh(["git", "remote", "add", "origin", url], e, cwd=repo)
                        sh(["git-lfs-s3", "install"], e, cwd=repo)
                        sh(["git", "lfs", "track", "*.bin"], e, cwd=repo)
                        rng = random.Random(i + count)
                        for k in range(count):
                            with open(os.path.join(repo, f"f{k:04d}.bin"), "wb") as f:
                                left = size
                                while left:
                                    n = min(left, 1 << 20)
                                    f.write(rng.randbytes(n))
                                    left -= n
                        sh(["git", "add", "."], e, cwd=repo)
                        sh(["git", "commit", "-q", "-m", "lfs"], e, cwd=repo)
                        up[t].append(timed(["git", "push", "-q", "origin", "main"], e, repo))
                        dst = os.path.join(self.work, f"lfsclone-{t}-{count}-{i}")
                        sh(["git", "-c", "lfs.fetchexclude=*", "clone", "-q", url, dst], e, cwd=self.work)
                        sh(["git-lfs-s3", "install"], e, cwd=dst)
                        if t == "ours":
                            shutil.rmtree(os.path.join(e["GIT_S3_CACHE_DIR"], "lfs"), ignore_errors=True)
                        down[t].append(timed(["git", "-c", "lfs.fetchexclude=", "lfs", "pull"], e, dst))
                        shutil.rmtree(repo)
                        shutil.rmtree(dst)
                self.record(f"{label}: upload", up, "<= 0.3" if count > 1 else None)
                self.record(f"{label}: download", down, "<= 0.3" if count > 1 else None)
            except RuntimeError as err:
                self.notes.append(f"{label}: not measured ({str(err).splitlines()[0][:200]})")
                print(f"  {label}: not measured: {err}", flush=True)

    def rss(self):
        """Shim peak RSS (through a /usr/bin/time wrapper) and daemon RSS."""
        wrap = os.path.join(self.work, "bin-rss")
        os.makedirs(wrap)
        out = os.path.join(self.work, "shim-rss.txt")
        real = os.path.join(self.bin_dir, "git-remote-s3")
        with open(os.path.join(wrap, "git-remote-s3"), "w") as f:
            f.write(f"#!/bin/sh\nexec /usr/bin/time -f %M -a -o {out} {real} \"$@\"\n")
        os.chmod(os.path.join(wrap, "git-remote-s3"), 0o755)
        e = dict(self.env["ours"])
        e["PATH"] = f"{wrap}:{e['PATH']}"
        sh(["git", "ls-remote", "s3://bench-bucket/ours/medium"], e, cwd=self.work)
        sh(["git", "clone", "-q", "s3://bench-bucket/ours/medium", os.path.join(self.work, "rss-clone")], e, cwd=self.work)
        with open(out) as f:
            shim_kib = max(int(x) for x in f.read().split() if x.isdigit())
        status = json.loads(sh(["git", "s3", "daemon", "status", "--json"], self.env["ours"]))
        pid = status.get("pid")
        hwm = rss = None
        if pid:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
        # idle daemon: a fresh one after one ls-remote
        sh(["git", "s3", "daemon", "restart"], self.env["ours"])
        sh(["git", "ls-remote", "s3://bench-bucket/ours/medium"], self.env["ours"], cwd=self.work)
        time.sleep(1)
        pid = json.loads(sh(["git", "s3", "daemon", "status", "--json"], self.env["ours"])).get("pid")
        idle = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    idle = int(line.split()[1])
        self.rss_info = {"shim_peak_mib": shim_kib / 1024, "daemon_peak_mib": (hwm or 0) / 1024,
                         "daemon_rss_after_bench_mib": (rss or 0) / 1024, "daemon_idle_rss_mib": (idle or 0) / 1024}
        print(f"  shim peak RSS {shim_kib / 1024:.1f} MiB (target <= 15); daemon idle RSS {idle / 1024:.1f} MiB "
              f"(target <= 40); daemon peak during the run {(hwm or 0) / 1024:.1f} MiB", flush=True)

    def table(self):
        lines = ["| case | git-remote-s3 0.4.2 | git-s3 (bundles) | git-s3 (packs) | git, local bare | bundles/0.4.2 | packs/0.4.2 | packs/local | target |",
                 "|---|---|---|---|---|---|---|---|---|"]
        f = lambda v: f"{v:.3f} s" if v is not None else "–"
        r = lambda v: f"{v:.3f}" if v is not None else "–"
        for row in self.results:
            lines.append(f"| {row['case']} | {f(row['python'])} | {f(row['ours'])} | {f(row.get('packs'))} | "
                         f"{f(row.get('local'))} | {r(row.get('ratio_ours'))} | {r(row.get('ratio_packs'))} | "
                         f"{r(row.get('packs_vs_local'))} | {row['target'] or '–'} |")
        return "\n".join(lines)


def mb(n):
    return "failed" if n is None else f"{n / 1e6:.2f} MB"


def du(path):
    total = 0
    for dp, _, fs in os.walk(path):
        for f in fs:
            try:
                total += os.path.getsize(os.path.join(dp, f))
            except OSError:
                pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin-dir", help="the release binaries (default: <root>/target/release; run.sh passes cargo's target dir)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small data, for a smoke run")
    ap.add_argument("--skip-lfs", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--real-repo", help="a local git repository for the shallow/partial cases (default: a generated one)")
    ap.add_argument("--only-narrow", action="store_true", help="run only the shallow/partial cases")
    ap.add_argument("--rtt", type=int, default=0, metavar="MS",
                    help="reach S3 through the field server with this round-trip time (local git is not delayed)")
    ap.add_argument("--tls", action="store_true", help="reach S3 over TLS (through the field server)")
    ap.add_argument("--tags", type=int, default=0, metavar="N",
                    help="tags in the mirror-push case (default 300; 30 with --quick)")
    a = ap.parse_args()
    b = Bench(a)
    try:
        b.run_cases()
        print()
        print(f"git-s3 benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {b.network()}")
        print(b.table())
        for n in b.notes:
            print(f"- {n}")
        r = getattr(b, "rss_info", None)
        if r:
            print(f"- shim peak RSS {r['shim_peak_mib']:.1f} MiB; daemon idle RSS {r['daemon_idle_rss_mib']:.1f} MiB; "
              f"daemon peak {r['daemon_peak_mib']:.1f} MiB")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"results": b.results, "notes": b.notes, "rss": r}, f, indent=2)
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
