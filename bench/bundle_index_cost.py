"""What a cold clone of a bundles-format remote costs in `git index-pack`
alone, whichever tool runs it: the benchmark's medium repository (5,000
commits, 13 branches, one full-history bundle per branch), indexed
(a) main first, then the 12 branch bundles into the same repository, the
order git-s3 uses, where index-pack compares every object it already has
(git's collision check), and (b) each branch bundle into an empty
repository, which is what running every ref at once, as 0.4.2 does, comes
close to. Usage: python3 bench/bundle_index_cost.py <scratch-dir>
"""
import os, random, subprocess, time, sys, shutil
base = sys.argv[1]
src = os.path.join(base, "src")
env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@x")
def sh(c, cwd): subprocess.run(c, cwd=cwd, env=env, check=True)
if not os.path.exists(src):
    os.makedirs(src); sh(["git","init","-q","-b","main"], src)
    rng = random.Random(42)
    p = subprocess.Popen(["git","fast-import","--quiet"], cwd=src, env=env, stdin=subprocess.PIPE); w = p.stdin.write
    mark = 0
    def commit(ref, parent, n, payload):
        global mark
        mark += 1
        msg = f"commit {n}".encode()
        w(f"commit {ref}\nmark :{mark}\ncommitter B <b@e> {1700000000+n} +0000\n".encode()); w(f"data {len(msg)}\n".encode()+msg+b"\n")
        if parent: w(f"from :{parent}\n".encode())
        pl = payload
        w(f"M 644 inline src/f{rng.randrange(400):04d}.bin\ndata {len(pl)}\n".encode()+pl+b"\n")
        return mark
    marks=[]; last=0
    for n in range(5000):
        last = commit("refs/heads/main", last, n, rng.randbytes(10240)); marks.append(last)
    for b in range(12):
        m = marks[(b+1)*5000//13]
        for k in range(3): m = commit(f"refs/heads/branch-{b:02d}", m, 5000+b*10+k, rng.randbytes(4096))
    p.stdin.close(); p.wait()
    sh(["git","gc","-q","--prune=now"], src)
    for r in ["main"] + [f"branch-{b:02d}" for b in range(12)]:
        sh(["git","bundle","create","-q", os.path.join(base, r+".bundle"), r], src)
def fresh(name):
    d = os.path.join(base, name); shutil.rmtree(d, ignore_errors=True); os.makedirs(d); sh(["git","init","-q","--bare"], d); return d
def idx(repo, b):
    with open(os.path.join(base, b+".bundle"),"rb") as f:
        data = f.read()
    body = data[data.index(b"\n\n")+2:]
    p = subprocess.run(["git","index-pack","--stdin","--fix-thin"], cwd=repo, env=env, input=body, capture_output=True, check=True)
branches = [f"branch-{b:02d}" for b in range(12)]
for trial in range(2):
    r = fresh("seq"); t=time.time(); idx(r,"main"); t1=time.time()
    for b in branches: idx(r,b)
    t2=time.time()
    print(f"main then branches, in one repo: main {t1-t:.2f}s, branches {t2-t1:.2f}s", flush=True)
    t=time.time()
    for b in branches:
        r = fresh("empty"); idx(r,b)
    print(f"branches each in an empty repo: {time.time()-t:.2f}s", flush=True)
