#!/usr/bin/env python3
"""Scale benchmark: does vocker keep its scaling promise?

    "A 2 GB, 100,000-file environment must work in a few hundred MB of RAM;
    memory stays flat as environments grow; cost grows with what changed, not
    with what exists."

Standard library only. Usage:

    python3 bench/bench_scale.py                   # 10k/200 MB, then 100k/2 GB
    python3 bench/bench_scale.py --only-small      # 10k/200 MB only (debugging)
    python3 bench/bench_scale.py --files 50000 --size-mb 1000 --keep
    python3 bench/bench_scale.py --vocker "python3 /path/to/vocker.py"
    python3 bench/bench_scale.py --timeout 14400   # per step: push at level 19 is slow

For each scale (first 1/10 of --files/--size-mb, then the full size) it

1. generates a synthetic environment, deterministically from --seed, under
   WORK/<scale>/env: N files in a site-packages-like tree (~10 files per
   directory, up to 7 levels deep, Python-looking names), total size exactly
   --size-mb MB (MB = 10^6 bytes). Size mix: ~85% of the files 1-20 KB, ~10%
   20-200 KB, ~5% under 1 KB (some empty ``__init__.py``), plus a few large
   files of ~50-200 MB (the rest of the byte budget: at least one) to exercise
   streaming. ~80% of the files are code-like text generated from a word list
   (zstd -3 compresses it ~2.7:1 at 4 KB, ~3.2:1 at 16 KB, measured while
   writing this script; CPython's stdlib gives 2.5-4:1), ~20% are random
   (incompressible) bytes; large files alternate between "shared library"
   (64 KB blocks, half text, half random) and pure random data.
   ~15% of the files are duplicates (same content as another file, at another
   path, often under the same base name).
2. runs vocker, each step a separate subprocess, with ``--home WORK/<scale>/store``
   (a fresh store per scale), measuring wall time (perf_counter), peak RSS and
   CPU time of that process (GNU ``/usr/bin/time -f %M``: ru_maxrss of the
   process, which covers helper processes it waited for as a max, not a sum;
   see run_measured for why not ``os.wait4``/``RUSAGE_CHILDREN``):

   ========================  ================================================
   commit                    ``commit ENV --kind plain --json`` (empty store)
   re-commit                 the same again: must give the same ID
   floor (not vocker)        the same python doing os.walk + lstat of ENV:
                             the floor under any re-commit
   create --no-compile       ``create ID C1 --no-compile --json``
   commit C1 (unchanged)     ``commit C1 --kind plain --json``: must give the
                             same ID (the image's)
   commit C1 (1% changed)    after replacing 1% of C1's small files with new
                             content of the same size (unlink + write, never
                             through the pool hardlink): must give a new ID
                             whose parent is the image; files_read should be
                             the number of changed files
   push                      ``push ID WORK/<scale>/repo --json`` of the image
                             (not the changed one) to a folder that does not
                             exist yet, at vocker's push level (zstd 19 unless
                             VOCKER_PUSH_LEVEL is set; the report says which)
   pull                      ``pull WORK/<scale>/repo ID --json`` into a
                             second, empty store: must give the image's ID
   verify --full (pulled)    ``verify --full --json`` of that second store:
                             must exit 0 and report no damage
   ========================  ================================================

   vocker runs by default as ``python -m vocker`` with the repository root on
   PYTHONPATH, after one ``py_compile`` of vocker.py (as bench_core.py does,
   and as an installed vocker runs: from cached bytecode; a script would be
   compiled again on every command). The sha256 of vocker.py is recorded
   before every step: a change during the run (someone editing the checkout)
   fails a check.

   ``sync`` runs (untimed) before every step, so one step's dirty pages are
   not flushed on the next step's clock. Page cache is NOT dropped (no root on
   the host) and not warmed either: what the generator or the previous step
   left in it is what the step gets.
3. checks (untimed) that C1 has the same files and sizes as ENV and the same
   bytes for a sample of files, and records ``du`` of the store, the size of
   the repository and ``du`` of the pulled store.

The push, pull and verify steps need only the image, so they run even when
create failed. Every step's peak RSS must stay within --rss-budget-mb.

Prints a Markdown report and writes it to bench/results-scale.md with the raw
data in bench/results-scale.json (bench/results-scale-small.{md,json} with
--only-small). Progress goes to stderr. Exit status 1 if a step failed or a
check (same ID, RSS budget, flatness) failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench_core as bc  # noqa: E402  (rmtree, prepare_work, tree_stats)

DEFAULT_WORK = Path("/tmp/vocker-scale")
WORK_MARKER = ".vocker-scale-workdir"
MB = 10**6
SP = "lib/python3.11/site-packages"

# Thresholds for the verdicts ("a few hundred MB"; "flat" = within 1.5x).
DEFAULT_RSS_BUDGET_MB = 500
FLAT_RATIO = 1.5

###############################################################################
# Synthetic environment #######################################################
###############################################################################

WORDS = """self data value name result index path config key item node args kwargs
request response client server session handler buffer stream reader writer parse
format encode decode load dump read write open close start stop run update create
delete get set add remove append extend insert pop clear copy keys values items
array matrix frame series column row shape dtype axis mask offset length size count
total default option options params param token field fields model models schema
cache state status error errors message logger level event events callback hook
module package import version info meta base core utils helpers tests test case
check validate verify compute process transform apply filter map reduce sort merge
split join strip lower upper replace match search pattern regex text line lines
file files dir dirs root parent child children tree graph edge edges vertex weight
""".split()

TEXT_EXTS = [(".py", 85), (".pyi", 5), (".txt", 3), (".json", 3), (".cfg", 2), (".toml", 2)]
BIN_EXTS = [(".cpython-311-x86_64-linux-gnu.so", 50), (".dat", 15), (".png", 15),
            (".npy", 10), (".mo", 10)]
POOL_SIZE = 8 << 20


def _weighted(r: random.Random, table):
    return r.choices([x for x, _ in table], [w for _, w in table])[0]


def _ident(r: random.Random, local: list) -> str:
    if local and r.random() < 0.75:
        return r.choice(local)
    k = r.random()
    if k < 0.6:
        return r.choice(WORDS)
    if k < 0.9:
        return r.choice(WORDS) + "_" + r.choice(WORDS)
    return r.choice(WORDS) + str(r.randrange(100))


def _code_line(r: random.Random, p: str, local: list) -> str:
    def w():
        return _ident(r, local)
    k = r.randrange(12)
    if k == 0:
        return f"{p}def {w()}({w()}, {w()}={r.randrange(1000)}):"
    if k == 1:
        return f"{p}return {w()}.{w()}({w()}, {w()})"
    if k == 2:
        return f"{p}# {w()} {w()} {w()} {w()} {w()} {w()}"
    if k == 3:
        return f"{p}{w()} = {w()}.{w()}({r.randrange(100)}, '{w()}')"
    if k == 4:
        return f"{p}if {w()} is not None and {w()} > {r.randrange(256)}:"
    if k == 5:
        return f"{p}for {w()} in {w()}.{w()}():"
    if k == 6:
        return f"{p}raise {w().title()}Error(f\"{w()} {{{w()}!r}} {w()}\")"
    if k == 7:
        return f"{p}self.{w()} = {w()}"
    if k == 8:
        return f"{p}{w()}.{w()}[{r.randrange(64)}] = {r.randrange(10)}"
    if k == 9:
        return ""
    if k == 10:
        return f"{p}\"\"\"{w().capitalize()} the {w()} of {w()} {w()}.\"\"\""
    return f"{p}{w()}({w()}={w()}, {w()}={r.randrange(10)})"


def make_pool(seed: int, size: int = POOL_SIZE) -> bytes:
    """~8 MB of code-like text; every text file is a header + a slice of it."""
    r = random.Random(f"pool:{seed}")
    out, n, ind, local = [], 0, 0, []
    while n < size:
        if r.random() < 0.005 or not local:
            local[:] = [_ident(r, []) for _ in range(40)]
        if r.random() < 0.05:
            ind = 0
            a = _ident(r, local).title().replace("_", "")
            b = _ident(r, local).title().replace("_", "")
            s = f"\n\nclass {a}({b}):"
        else:
            ind = max(1, min(3, ind + r.choice((-1, 0, 0, 1))))
            s = _code_line(r, "    " * ind, local)
        out.append(s)
        n += len(s) + 1
    return ("\n".join(out) + "\n").encode("ascii")


def _small_size(r: random.Random) -> int:
    k = r.random()
    if k < 0.05:
        return r.randint(1, 1000)
    if k < 0.90:
        return int(math.exp(r.uniform(math.log(1000), math.log(20000))))
    return int(math.exp(r.uniform(math.log(20000), math.log(200000))))


class Plan:
    """The environment as data: files (relpath, spec index, mode) and content specs.

    A spec is [kind, key, size]: kind "t" text, "b" random bytes, "L" large
    "shared library" (blocks of text and random bytes). Duplicates share a spec.
    """

    def __init__(self):
        self.files: list[tuple[str, int, int]] = []   # (relpath, spec, mode)
        self.specs: list[list] = []
        self.dirs: set[str] = set()
        self.dups = 0
        self.empty = 0

    def size_of(self, i: int) -> int:
        return self.specs[self.files[i][1]][2]

    @property
    def total(self) -> int:
        return sum(self.specs[s][2] for _, s, _ in self.files)


def plan_env(n_files: int, total: int, seed: int) -> Plan:
    r = random.Random(f"plan:{seed}")
    # 1. Directory tree and file slots: (dir, role) where role is "init",
    #    "meta:<name>", "script" or "file". ~10 files per directory.
    slots: list[tuple[str, str]] = []
    n_scripts = max(3, min(60, n_files // 500))
    slots += [("bin", "script")] * n_scripts
    used_pkgs: set[str] = set()
    pkg_names: list[str] = []
    fanout = {0: (0, 1, 2, 3, 5, 8), 1: (0, 0, 1, 2, 3), 2: (0, 0, 0, 1, 2), 3: (0,)}

    def dirname(r, taken):
        while True:
            d = r.choice(WORDS) if r.random() < 0.6 else f"{r.choice(WORDS)}_{r.choice(WORDS)}"
            if d not in taken:
                taken.add(d)
                return d

    def package_dirs(path, depth):
        yield path
        taken: set[str] = set()
        for _ in range(r.choice(fanout[depth])):
            yield from package_dirs(f"{path}/{dirname(r, taken)}", depth + 1)

    while len(slots) < n_files:
        pkg = dirname(r, used_pkgs) if len(used_pkgs) < 200 else \
            f"{r.choice(WORDS)}_{r.choice(WORDS)}{len(used_pkgs)}"
        used_pkgs.add(pkg)
        pkg_names.append(pkg)
        dist = f"{SP}/{pkg}-{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 9)}.dist-info"
        for m in ("METADATA", "WHEEL", "INSTALLER", "top_level.txt"):
            slots.append((dist, "meta:" + m))
        for d in package_dirs(f"{SP}/{pkg}", 0):
            slots.append((d, "init"))
            slots += [(d, "file")] * (r.randint(4, 16) - 1)
    del slots[n_files:]

    # 2. Kinds and sizes of the small files; ~15% duplicates of earlier files.
    plan = Plan()
    names_in_dir: dict[str, set[str]] = {}
    dup_sources: list[int] = []          # indexes of non-empty small files

    def unique_name(d, make):
        taken = names_in_dir.setdefault(d, set())
        while True:
            n = make()
            if n not in taken:
                taken.add(n)
                return n

    def word_name():
        k = r.random()
        if k < 0.5:
            return r.choice(WORDS)
        if k < 0.8:
            return f"{r.choice(WORDS)}_{r.choice(WORDS)}"
        if k < 0.9:
            return "_" + r.choice(WORDS)
        return "test_" + r.choice(WORDS)

    for d, role in slots:
        mode = 0o644
        if role == "script":
            kind, size, mode = "t", r.randint(200, 2000), 0o755
            name = unique_name(d, lambda: f"{r.choice(WORDS)}-{r.choice(WORDS)}")
        elif role.startswith("meta:"):
            kind, size = "t", r.randint(5, 4000)
            name = unique_name(d, lambda: role[5:])
        elif role == "init":
            kind, size = "t", (0 if r.random() < 0.5 else _small_size(r))
            name = unique_name(d, lambda: "__init__.py")
        elif dup_sources and len(dup_sources) > 50 and r.random() < 0.15:
            src = r.choice(dup_sources)
            base = plan.files[src][0].rsplit("/", 1)[1]
            taken = names_in_dir.setdefault(d, set())
            if base not in taken:
                taken.add(base)
                name = base
            else:
                ext = "." + base.split(".", 1)[1] if "." in base else ""
                name = unique_name(d, lambda: word_name() + ext)
            plan.files.append((f"{d}/{name}", plan.files[src][1], plan.files[src][2]))
            plan.dirs.add(d)
            plan.dups += 1
            continue
        else:
            kind = "b" if r.random() < 0.2 else "t"
            size = _small_size(r)
            exts = BIN_EXTS if kind == "b" else TEXT_EXTS
            ext = _weighted(r, exts)
            name = unique_name(d, lambda: word_name() + ext)
        plan.specs.append([kind, len(plan.specs), size])
        plan.files.append((f"{d}/{name}", len(plan.specs) - 1, mode))
        plan.dirs.add(d)
        if size:
            dup_sources.append(len(plan.files) - 1)
        else:
            plan.empty += 1

    # 3. Large files take the rest of the byte budget (at least one file):
    #    k files of ~50-200 MB replace the last k small slots.
    small = plan.total
    k = max(1, round((total - small) / (125 * MB)))
    removed = plan.files[-k:]
    del plan.files[-k:]
    for path, s, _ in removed:
        d = path.rsplit("/", 1)[0]
        names_in_dir[d].discard(path.rsplit("/", 1)[1])
        if plan.specs[s][2] == 0:
            plan.empty -= 1
    plan.dirs = {p.rsplit("/", 1)[0] for p, _, _ in plan.files}
    small = plan.total
    if small > total * 0.8:
        # Too many files for the size: shrink the small files (dups keep sharing).
        f = total * 0.75 / small
        for spec in plan.specs:
            spec[2] = int(spec[2] * f)
        small = plan.total
    remainder = total - small
    weights = [r.uniform(0.6, 1.4) for _ in range(k)]
    taken_paths: set[str] = set()
    sizes = [int(remainder * w / sum(weights)) for w in weights]
    sizes[-1] = remainder - sum(sizes[:-1])
    for i, size in enumerate(sizes):
        kind = "L" if i % 2 == 0 else "b"
        path = ""
        while not path or path in taken_paths:
            pkg = r.choice(pkg_names)
            if kind == "L":
                path = f"{SP}/{pkg}.libs/lib{r.choice(WORDS)}-{r.getrandbits(32):08x}.so"
            else:
                path = f"{SP}/{pkg}/_data/{r.choice(WORDS)}_{r.choice(WORDS)}.bin"
        taken_paths.add(path)
        plan.specs.append([kind, len(plan.specs), size])
        plan.files.append((path, len(plan.specs) - 1, 0o644))
        plan.dirs.add(path.rsplit("/", 1)[0])
    assert plan.total == total, (plan.total, total)
    return plan


def _text(pool: bytes, r: random.Random, size: int, header: bytes) -> bytes:
    if size <= len(header) + 16:
        o = r.randrange(len(pool) - size)
        return pool[o:o + size]
    need = size - len(header)
    o = r.randrange(len(pool))
    nl = pool.find(b"\n", o)
    o = nl + 1 if 0 <= nl < len(pool) - 1 else 0
    out = [header]
    while need > 0:
        chunk = pool[o:o + need]
        out.append(chunk)
        need -= len(chunk)
        o = 0
    return b"".join(out)


def write_content(path: str, spec: list, pool: bytes, seed: int, salt: str = "", mode=0o644):
    kind, key, size = spec
    r = random.Random(f"content:{seed}:{key}:{salt}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with open(fd, "wb") as f:
        if kind == "t":
            hdr = f"# {os.path.basename(path)} {key}{salt} {r.getrandbits(64):016x}\n".encode()
            f.write(_text(pool, r, size, hdr))
        elif kind == "b" and size <= (1 << 20):
            f.write(r.randbytes(size))
        else:  # large: stream in 64 KB blocks (kind "b": all random; "L": half text)
            left, blk = size, 1 << 16
            while left > 0:
                n = min(blk, left)
                if kind == "L" and r.random() < 0.5:
                    o = r.randrange(len(pool) - n)
                    f.write(pool[o:o + n])
                else:
                    f.write(r.randbytes(n))
                left -= n
    if mode & 0o111:
        os.chmod(path, mode)


def write_env(root: Path, plan: Plan, pool: bytes, seed: int):
    made = set()
    order = sorted(range(len(plan.files)), key=lambda i: plan.files[i][0])
    for n, i in enumerate(order):
        rel, s, mode = plan.files[i]
        d = rel.rsplit("/", 1)[0]
        if d not in made:
            os.makedirs(root / d, exist_ok=True)
            made.add(d)
        write_content(str(root / rel), plan.specs[s], pool, seed, mode=mode)
        if n % 10000 == 0 and n:
            log(f"  ... {n:,} files written")


def plan_stats(plan: Plan) -> dict:
    by_kind: dict[str, list[int]] = {}
    for _, s, _ in plan.files:
        kind, _, size = plan.specs[s]
        k = "large" if size >= 50 * MB or kind == "L" else {"t": "text", "b": "binary"}[kind]
        c = by_kind.setdefault(k, [0, 0])
        c[0] += 1
        c[1] += size
    sizes = sorted(plan.size_of(i) for i in range(len(plan.files)))
    depth = max(p.count("/") for p, _, _ in plan.files)
    distinct = {s for _, s, _ in plan.files}
    dup_bytes = plan.total - sum(plan.specs[s][2] for s in distinct)
    bands = {"0": 0, "1-999 B": 0, "1-20 KB": 0, "20-200 KB": 0, "0.2-50 MB": 0, ">=50 MB": 0}
    for s in sizes:
        b = ("0" if s == 0 else "1-999 B" if s < 1000 else "1-20 KB" if s <= 20000 else
             "20-200 KB" if s <= 200000 else "0.2-50 MB" if s < 50 * MB else ">=50 MB")
        bands[b] += 1
    return {
        "files": len(plan.files), "bytes": plan.total, "dirs": len(plan.dirs),
        "files_per_dir": round(len(plan.files) / max(1, len(plan.dirs)), 1),
        "max_depth": depth + 1, "median_size": sizes[len(sizes) // 2],
        "size_bands": bands, "by_kind": {k: {"files": v[0], "bytes": v[1]} for k, v in by_kind.items()},
        "duplicate_files": len(plan.files) - len(distinct), "duplicate_bytes": dup_bytes,
        "empty_files": sum(1 for s in sizes if s == 0),
        "large_files": [plan.size_of(i) for i in range(len(plan.files)) if plan.size_of(i) >= 50 * MB],
    }


###############################################################################
# Running vocker ##############################################################
###############################################################################

def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync():
    subprocess.run(["sync"], check=False)


class StepFailed(Exception):
    pass


TIME = shutil.which("time", path="/usr/bin:/bin") or None


def run_measured(cmd: list[str], timeout: float, logdir: Path, name: str, env=None) -> dict:
    """Run cmd; wall time, peak RSS and CPU time of that process.

    Peak RSS comes from GNU ``/usr/bin/time -f %M``, not from ``os.wait4`` or
    ``RUSAGE_CHILDREN`` here: a child that Python spawns (vfork + exec) starts
    with *this* process's RSS high-water mark in its ru_maxrss, so those read
    at least the benchmark's own peak (checked: /bin/true "used" 321 MB under a
    parent holding 300 MB). /usr/bin/time forks from a 1 MB process. Without
    it, wait4 is used and the figure is an upper bound (flagged in the JSON).
    """
    out_p, err_p, time_p = (logdir / f"{name}.{x}" for x in ("out", "err", "time"))
    load = os.getloadavg()[0]
    full = [TIME, "-o", str(time_p), "-f", "%M %U %S %e"] + cmd if TIME else cmd
    with open(out_p, "wb") as fo, open(err_p, "wb") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(p.pid, 9))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    out = out_p.read_text(errors="replace")
    err = err_p.read_text(errors="replace")
    res = {"cmd": cmd, "rc": p.returncode, "seconds": dt, "loadavg_1m_before": load,
           "stderr_tail": err.strip().splitlines()[-5:], "json": None}
    try:
        m, u, s_, _e = time_p.read_text().strip().splitlines()[-1].split()
        res.update(peak_rss_kb=int(m), cpu_user=float(u), cpu_sys=float(s_), rss_source="/usr/bin/time")
    except (OSError, ValueError, IndexError):
        res.update(peak_rss_kb=ru.ru_maxrss, cpu_user=ru.ru_utime, cpu_sys=ru.ru_stime,
                   rss_source="wait4 (upper bound: includes the benchmark's own peak)")
    if dt >= timeout:
        res["error"] = f"timed out after {timeout:.0f} s"
    else:
        i = out.find("{")
        try:
            res["json"] = json.loads(out[i:]) if i >= 0 else None
        except ValueError:
            res["json"] = None
        if p.returncode != 0:
            res["error"] = f"exit {p.returncode}: " + (err.strip().splitlines() or ["(no stderr)"])[-1]
        elif res["json"] is None:
            res["error"] = "no JSON on stdout"
    return res


def du_kb(*paths: Path) -> int | None:
    paths = [str(p) for p in paths if p.exists()]
    if not paths:
        return 0
    r = subprocess.run(["du", "-skc", *paths], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True)
    try:
        return int(r.stdout.strip().splitlines()[-1].split()[0])
    except (ValueError, IndexError):
        return None


def compare_trees(a: Path, b: Path, plan: Plan, seed: int, sample: int = 500) -> list[str]:
    """Same relative paths and sizes (regular files) in a and b; same bytes for a sample."""
    problems = []

    def listing(root):
        res = {}
        for dp, dns, fns in os.walk(root):
            dns[:] = [d for d in dns if d != "__pycache__"]
            for f in fns:
                if f.endswith(".pyc"):
                    continue
                p = os.path.join(dp, f)
                res[os.path.relpath(p, root)] = os.lstat(p).st_size
        return res

    la, lb = listing(a), listing(b)
    missing = sorted(set(la) - set(lb))
    extra = sorted(set(lb) - set(la))
    if missing:
        problems.append(f"{len(missing)} files missing in container, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} extra files in container, e.g. {extra[:3]}")
    diff = [p for p in la if p in lb and la[p] != lb[p]]
    if diff:
        problems.append(f"{len(diff)} files differ in size, e.g. {diff[:3]}")
    r = random.Random(f"verify:{seed}")
    common = sorted(set(la) & set(lb))
    for rel in r.sample(common, min(sample, len(common))):
        if la[rel] > 8 * MB:
            continue
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            problems.append(f"content differs: {rel}")
            break
    return problems


def change_files(c1: Path, plan: Plan, frac: float, seed: int) -> dict:
    """Replace frac of the small non-empty files with new content of the same size.

    unlink + create: never write through a (read-only, but we may be root)
    hardlink into vocker's pool.
    """
    r = random.Random(f"change:{seed}")
    cand = [i for i in range(len(plan.files)) if 0 < plan.size_of(i) < 50 * MB]
    k = max(1, round(len(plan.files) * frac))
    chosen = sorted(r.sample(cand, min(k, len(cand))))
    pool = make_pool(seed)
    nbytes = 0
    t0 = time.perf_counter()
    for i in chosen:
        rel, s, mode = plan.files[i]
        p = c1 / rel
        os.unlink(p)
        write_content(str(p), plan.specs[s], pool, seed, salt="changed", mode=mode)
        nbytes += plan.specs[s][2]
    return {"files": len(chosen), "bytes": nbytes, "seconds": time.perf_counter() - t0}


STEPS = [
    ("commit", "commit ENV (empty store)"),
    ("recommit", "re-commit ENV (unchanged)"),
    ("walk", "floor: os.walk + lstat of ENV"),
    ("create", "create C1 --no-compile"),
    ("commit_c1", "commit C1 (unchanged)"),
    ("commit_c1_changed", "commit C1 (1% changed)"),
    ("push", "push IMAGE (empty folder repo)"),
    ("pull", "pull IMAGE (empty store)"),
    ("verify_pulled", "verify --full (pulled store)"),
]
# Steps over the whole environment: their time per environment file must stay flat.
WHOLE_ENV_STEPS = ("commit", "recommit", "walk", "create", "commit_c1", "push", "pull",
                   "verify_pulled")
# Steps whose MB/s is the environment's size per second (commits: their bytes_read).
ENV_RATE_STEPS = ("create", "push", "pull", "verify_pulled")


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def run_scale(label: str, n_files: int, size: int, args, vocker: list[str], root: Path,
              script: Path | None = None) -> dict:
    S: dict = {"label": label, "files": n_files, "bytes": size, "steps": {}, "checks": []}
    env_dir, store, c1, logs = root / "env", root / "store", root / "c1", root / "logs"
    repo, store2 = root / "repo", root / "store-pulled"
    root.mkdir(parents=True)
    logs.mkdir()
    script_sha = sha256_file(script) if script else None

    log(f"[{label}] planning {n_files:,} files, {size / MB:,.0f} MB (seed {args.seed})")
    plan = plan_env(n_files, size, args.seed)
    S["env"] = plan_stats(plan)
    log(f"[{label}] writing the environment to {env_dir}")
    t0 = time.perf_counter()
    pool = make_pool(args.seed)
    write_env(env_dir, plan, pool, args.seed)
    del pool
    sync()
    S["generate_seconds"] = time.perf_counter() - t0
    log(f"[{label}] generated in {S['generate_seconds']:.1f} s")

    def check(ok, what):
        S["checks"].append({"ok": bool(ok), "what": what})
        if not ok:
            log(f"[{label}] CHECK FAILED: {what}")

    def step(key, vargs, home=store):
        nonlocal script_sha
        sync()
        if script:
            now = sha256_file(script)
            if now != script_sha:
                check(False, f"{script.name} unchanged during the run (sha256 {script_sha} before, "
                             f"{now} before {key})")
                script_sha = now
        cmd = vocker + ["--home", str(home)] + vargs
        log(f"[{label}] {key}: {shlex.join(cmd)}")
        res = run_measured(cmd, args.timeout, logs, key, dict(os.environ, VOCKER_HOME=str(home)))
        res["cmd"] = shlex.join(cmd).replace(str(root), f"WORK/{label}")
        j = res["json"] if isinstance(res["json"], dict) else {}
        res["files_read"] = j.get("files_read")
        res["bytes_read"] = j.get("bytes_read")
        res["id"] = j.get("id")
        S["steps"][key] = res
        log(f"[{label}] {key}: {res['seconds']:.2f} s, peak RSS {res['peak_rss_kb'] / 1024:.0f} MiB"
            + (f", files_read {res['files_read']}" if res["files_read"] is not None else "")
            + (f"  ERROR {res['error']}" if res.get("error") else ""))
        return res

    r1 = step("commit", ["commit", str(env_dir), "--kind", "plain", "--json"])
    image = r1["id"]
    S["store_kb_after_commit"] = du_kb(store)
    S["store_objects_kb"] = du_kb(store / "packs", store / "blobs")
    if image:
        check(r1["json"].get("files") in (None, n_files),
              f"commit reports files={r1['json'].get('files')} (expected {n_files})")
    r2 = step("recommit", ["commit", str(env_dir), "--kind", "plain", "--json"])
    check(image and r2["id"] == image, f"re-commit gives the same ID ({r2['id']} vs {image})")
    check(r2["files_read"] == 0, f"re-commit of an unchanged env reads no file (files_read={r2['files_read']})")
    # The floor under any re-commit: the same python walking and lstat-ing the tree.
    sync()
    walk_code = ("import os,sys,json\nn=0\nfor dp,dn,fn in os.walk(sys.argv[1]):\n"
                 " dn.sort()\n for f in fn: os.lstat(os.path.join(dp,f)); n+=1\n"
                 "print(json.dumps({'files':n}))")
    rw = run_measured([sys.executable, "-c", walk_code, str(env_dir)], args.timeout, logs, "walk")
    rw["cmd"] = f"{sys.executable} -c <os.walk + lstat> WORK/{label}/env"
    rw.update(files_read=None, bytes_read=None, id=None)
    S["steps"]["walk"] = rw
    log(f"[{label}] walk floor: {rw['seconds']:.2f} s")
    if not image:
        S["skipped"] = "no image ID from the first commit"
        return S

    def containers():
        r3 = step("create", ["create", image, str(c1), "--no-compile", "--json"])
        if r3.get("error"):
            S["skipped"] = "create failed: C1 steps skipped"
            return
        S["create_link_mode"] = (r3["json"] or {}).get("link_mode")
        t0 = time.perf_counter()
        problems = compare_trees(env_dir, c1, plan, args.seed)
        S["verify_seconds"] = time.perf_counter() - t0
        check(not problems, "container matches the environment" + (f": {problems}" if problems else ""))
        S["disk_kb_store_plus_c1"] = du_kb(store, c1)
        r4 = step("commit_c1", ["commit", str(c1), "--kind", "plain", "--json"])
        check(r4["id"] == image, f"commit of the unchanged container gives the image ID ({r4['id']} vs {image})")
        check(r4["files_read"] == 0,
              f"commit of the unchanged container reads no file (files_read={r4['files_read']})")

        log(f"[{label}] replacing {args.change_pct}% of the files in C1")
        ch = change_files(c1, plan, args.change_pct / 100, args.seed)
        S["changed"] = ch
        r5 = step("commit_c1_changed", ["commit", str(c1), "--kind", "plain", "--json"])
        j5 = r5["json"] or {}
        check(r5["id"] and r5["id"] != image, "commit after the change gives a new ID")
        check(j5.get("parent") == image, f"its parent is the image (parent={j5.get('parent')})")
        check(r5["files_read"] == ch["files"],
              f"it reads exactly the changed files (files_read={r5['files_read']}, changed={ch['files']})")

    containers()
    S["store_kb_end"] = du_kb(store)

    # Push the image to a folder that does not exist yet; pull it into an empty store.
    r6 = step("push", ["push", image, str(repo), "--json"])
    if r6.get("error"):
        S["skipped"] = (S.get("skipped", "") + "; " if S.get("skipped") else "") + "push failed: pull skipped"
        return S
    pushed = ((r6["json"] or {}).get("images") or [{}])[0]
    S["push"] = {"bytes": (r6["json"] or {}).get("bytes"), "blobs": pushed.get("blobs"),
                 "new_blobs": pushed.get("new_blobs"), "bytecode": pushed.get("bytecode")}
    check(pushed.get("id") == image, f"push reports the image's ID ({pushed.get('id')} vs {image})")
    rs = bc.tree_stats(repo, skip_pycache=False)
    S["repo"] = {"bytes": rs["bytes"], "files": rs["files"], "du_kb": du_kb(repo)}
    log(f"[{label}] repository: {rs['bytes'] / MB:,.1f} MB in {rs['files']:,} files "
        f"({size / max(1, rs['bytes']):.2f}:1)")
    r7 = step("pull", ["pull", str(repo), image, "--json"], home=store2)
    if r7.get("error"):
        S["skipped"] = (S.get("skipped", "") + "; " if S.get("skipped") else "") + "pull failed: verify skipped"
        return S
    j7 = r7["json"] or {}
    pulled = (j7.get("images") or [{}])[0]
    S["pull"] = {"bytes": j7.get("bytes"), "requests": j7.get("requests"),
                 "fetched_blobs": pulled.get("fetched_blobs"), "present": pulled.get("present")}
    check(pulled.get("id") == image, f"the pulled image has the same ID ({pulled.get('id')} vs {image})")
    check(pulled.get("present") is False, f"the pull fetched it (present={pulled.get('present')})")
    S["store_pulled_kb"] = du_kb(store2)
    r8 = step("verify_pulled", ["verify", "--full", "--json"], home=store2)
    j8 = r8["json"] if isinstance(r8["json"], dict) else {}
    S["verify_pulled"] = {"rc": r8["rc"], "damaged": j8.get("damaged"), "checked": j8.get("checked"),
                          "problems": (j8.get("problems") or [])[:5]}
    check(r8["rc"] == 0 and j8.get("damaged") is False and j8.get("full") is True,
          f"verify --full of the pulled store passes (exit {r8['rc']}, damaged={j8.get('damaged')}, "
          f"checked {j8.get('checked')})")
    return S


###############################################################################
# Report ######################################################################
###############################################################################

def _f(x, fmt="{:.2f}", none="—"):
    return none if x is None else fmt.format(x)


def step_rows(S: dict) -> list[dict]:
    rows = []
    for key, title in STEPS:
        r = S["steps"].get(key)
        if r is None:
            continue
        secs = r["seconds"]
        if key in ENV_RATE_STEPS:
            mb = S["bytes"] / MB
        elif key == "walk":
            mb = 0
        else:
            mb = (r["bytes_read"] or 0) / MB
        rows.append({
            "scale": S["label"], "step": title, "key": key, "seconds": secs,
            "mb_s": (mb / secs) if mb and secs else None,
            "rss_mb": r["peak_rss_kb"] / 1024, "files_read": r["files_read"],
            "mb_read": None if r["bytes_read"] is None else r["bytes_read"] / MB,
            "cpu": r["cpu_user"] + r["cpu_sys"],
            "us_per_file": secs / S["files"] * 1e6,
            "error": r.get("error"),
        })
    return rows


def verdicts(scales: list[dict], rss_budget_mb: float) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    for S in scales:
        for r in step_rows(S):
            if r["error"]:
                out.append((False, f"{S['label']}: {r['step']} failed: {r['error']}"))
        for c in S["checks"]:
            out.append((c["ok"], f"{S['label']}: {c['what']}"))
        rows = step_rows(S)
        peak = max((r["rss_mb"] for r in rows), default=0)
        over = [f"{r['key']} {r['rss_mb']:.0f}" for r in rows if r["rss_mb"] > rss_budget_mb]
        out.append((not over,
                    f"{S['label']}: peak RSS of every step ≤ {rss_budget_mb:.0f} MiB (max {peak:.0f} MiB"
                    + (f"; over: {', '.join(over)} MiB" if over else "") + ")"))
    if len(scales) == 2:
        a, b = ({r["key"]: r for r in step_rows(S)} for S in scales)
        dn = scales[1]["files"] - scales[0]["files"]
        for key, title in STEPS:
            if key in a and key in b:
                ratio = b[key]["rss_mb"] / a[key]["rss_mb"]
                slope = (b[key]["rss_mb"] - a[key]["rss_mb"]) * 1024 / dn if dn else 0
                out.append((ratio <= FLAT_RATIO,
                            f"peak RSS flat across 10x ({title}): {a[key]['rss_mb']:.0f} → "
                            f"{b[key]['rss_mb']:.0f} MiB, ×{ratio:.2f} ({slope:.2f} KiB per extra file)"))
        for key, title in STEPS:
            if key in WHOLE_ENV_STEPS and key in a and key in b:
                ratio = b[key]["us_per_file"] / a[key]["us_per_file"]
                out.append((ratio <= FLAT_RATIO,
                            f"time per environment file flat across 10x ({title}): "
                            f"{a[key]['us_per_file']:.0f} → {b[key]['us_per_file']:.0f} µs/file, ×{ratio:.2f}"))
        if all(k in x for x in (a, b) for k in ("commit_c1", "commit_c1_changed")):
            for S, x in zip(scales, (a, b)):
                extra = x["commit_c1_changed"]["seconds"] - x["commit_c1"]["seconds"]
                S["change_extra_seconds"] = extra
            ea, eb = scales[0]["change_extra_seconds"], scales[1]["change_extra_seconds"]
            ca, cb = scales[0]["changed"]["files"], scales[1]["changed"]["files"]
            out.append((True, f"(info) extra time of the 1% change over the unchanged commit of C1: "
                              f"{ea:+.2f} s for {ca} files → {eb:+.2f} s for {cb} files "
                              f"({ea / ca * 1e3:+.2f} → {eb / cb * 1e3:+.2f} ms per changed file); "
                              f"the commit itself: {a['commit_c1_changed']['seconds']:.2f} → "
                              f"{b['commit_c1_changed']['seconds']:.2f} s, of which the walk floor "
                              f"is {a['walk']['seconds'] if 'walk' in a else float('nan'):.2f} → "
                              f"{b['walk']['seconds'] if 'walk' in b else float('nan'):.2f} s"))
    return out


def report(R: dict) -> str:
    L = [f"# vocker scale benchmark — {R['date']}", ""]
    L.append(f"Machine: {R['machine']}. vocker: `{R['vocker_cmd']}` (from {R.get('repo', '?')}, "
             f"git {R['git']}"
             + (f", vocker.py sha256 {R['vocker_py_sha256']}" if R.get("vocker_py_sha256") else "")
             + f"). Push level: **{R['push_level']}**. Seed {R['seed']}. MB = 10^6 bytes, "
             f"RSS in MiB. Whole run: {_f(R.get('total_seconds'), '{:,.0f}')} s.")
    L.append("")
    L.append("| scale | step | seconds | MB/s | peak RSS MB | files read | MB read | CPU s | µs/file |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for S in R["scales"]:
        for r in step_rows(S):
            secs = "FAILED" if r["error"] else _f(r["seconds"])
            L.append(f"| {r['scale']} | {r['step']} | {secs} | {_f(r['mb_s'], '{:.0f}')} | "
                     f"{r['rss_mb']:.0f} | {_f(r['files_read'], '{:,}')} | {_f(r['mb_read'], '{:.1f}')} | "
                     f"{r['cpu']:.1f} | {r['us_per_file']:.0f} |")
    L.append("")
    L.append("MB/s: MB read by the commit (its `bytes_read`) per second; for create, push, "
             "pull and verify, the environment's size per second. µs/file: seconds per file *of the environment* "
             "(the number that must stay flat for whole-environment steps). Peak RSS: "
             "`/usr/bin/time -f %M` of the vocker process (max RSS; helper processes it "
             "waited for count as a max, not a sum).")
    L.append("")
    L.append("## Checks")
    L.append("")
    for ok, what in R["verdicts"]:
        L.append(f"- {'ok' if ok else '**FAIL**'} — {what}")
    L.append("")
    L.append("## Environments")
    L.append("")
    L.append("| scale | files | MB | dirs | files/dir | depth | median file | duplicates (bytes) | "
             "binary files (bytes) | large files MB | generate s | store objects MB (ratio) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for S in R["scales"]:
        e = S["env"]
        binf = e["by_kind"].get("binary", {"files": 0, "bytes": 0})
        obj = S.get("store_objects_kb")
        ratio = f"{obj * 1024 / MB:.0f} ({e['bytes'] / (obj * 1024):.2f}:1)" if obj else "—"
        L.append(f"| {S['label']} | {e['files']:,} | {e['bytes'] / MB:,.0f} | {e['dirs']:,} | "
                 f"{e['files_per_dir']} | {e['max_depth']} | {e['median_size']:,} B | "
                 f"{e['duplicate_files']:,} ({e['duplicate_bytes'] / MB:.0f} MB) | "
                 f"{binf['files']:,} ({binf['bytes'] / MB:.0f} MB) | "
                 f"{', '.join(str(round(s / MB)) for s in e['large_files'])} | "
                 f"{S.get('generate_seconds', 0):.0f} | {ratio} |")
    L.append("")
    for S in R["scales"]:
        e = S["env"]
        ch = S.get("changed")
        L.append(f"- {S['label']}: size bands {e['size_bands']}; empty files {e['empty_files']}; "
                 + (f"changed {ch['files']} files / {ch['bytes'] / MB:.1f} MB; " if ch else "")
                 + f"store after first commit {_f(S.get('store_kb_after_commit'), '{:,}')} KiB, "
                 f"at the end {_f(S.get('store_kb_end'), '{:,}')} KiB; store + C1 "
                 f"{_f(S.get('disk_kb_store_plus_c1'), '{:,}')} KiB (link mode "
                 f"{S.get('create_link_mode')}).")
    for S in R["scales"]:
        rp, pu, pl = S.get("repo"), S.get("push"), S.get("pull")
        if rp:
            L.append(f"- {S['label']} push/pull: repository {rp['bytes'] / MB:,.1f} MB in "
                     f"{rp['files']:,} files ({S['bytes'] / max(1, rp['bytes']):.2f}:1 against the "
                     f"environment; du {rp['du_kb']:,} KiB); push wrote "
                     f"{_f(pu.get('bytes'), '{:,}')} bytes, {_f(pu.get('new_blobs'), '{:,}')} new "
                     f"of {_f(pu.get('blobs'), '{:,}')} blobs, bytecode {pu.get('bytecode')}"
                     + (f"; pull read {_f(pl.get('bytes'), '{:,}')} bytes in "
                        f"{_f(pl.get('requests'), '{:,}')} requests, "
                        f"{_f(pl.get('fetched_blobs'), '{:,}')} blobs fetched; pulled store "
                        f"{_f(S.get('store_pulled_kb'), '{:,}')} KiB" if pl else "")
                     + (f"; verify --full checked {S['verify_pulled'].get('checked')}"
                        if S.get("verify_pulled") else "") + ".")
        if S.get("skipped"):
            L.append(f"- {S['label']}: skipped: {S['skipped']}.")
    L.append("")
    L.append("## Commands")
    L.append("")
    for S in R["scales"]:
        for key, _ in STEPS:
            if key in S["steps"]:
                L.append(f"- {S['label']} {key}: `{S['steps'][key]['cmd']}`")
    L.append("")
    L.append(f"Push level: {R['push_level']}. The push reads the store's pool and frames "
             "and compresses every blob for the wire; the pull writes the blobs into an empty "
             "store; verify --full re-hashes what that store holds (its `checked` counts are "
             "above: a pulled store has no pool files before a create).")
    L.append("")
    L.append("Notes: warm or cold page cache is not controlled (no root on the host; the "
             "generator's writes may still be cached for the first commit). `sync` runs "
             "untimed before each step. The 1-minute load average before each step is in the "
             "JSON (`loadavg_1m_before`): other work on the machine shows up as noise.")
    return "\n".join(L) + "\n"


###############################################################################
# Main ########################################################################
###############################################################################

def push_level(vocker: list[str]) -> str:
    """What the report says of the push level: VOCKER_PUSH_LEVEL, else vocker's default."""
    env = os.environ.get("VOCKER_PUSH_LEVEL")
    if env:
        return f"{env} (VOCKER_PUSH_LEVEL={env})"
    if vocker[1:] == ["-m", "vocker"]:
        r = subprocess.run([vocker[0], "-c", "import vocker; print(vocker.push_level())"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return f"{r.stdout.strip()} (vocker's default, VOCKER_PUSH_LEVEL unset)"
    return "vocker's default (VOCKER_PUSH_LEVEL unset)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000, help="files in the large environment")
    ap.add_argument("--size-mb", type=float, default=2000, help="its total size, MB (10^6 bytes)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"scratch dir (default {DEFAULT_WORK})")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--vocker", help="how to run vocker (default: this python -m vocker, from this "
                                     "checkout, its bytecode compiled first)")
    ap.add_argument("--only-small", action="store_true", help="only the 1/10 scale")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--change-pct", type=float, default=1.0, help="percent of files changed (default 1)")
    ap.add_argument("--rss-budget-mb", type=float, default=DEFAULT_RSS_BUDGET_MB)
    ap.add_argument("--timeout", type=float, default=3600,
                    help="per vocker step, seconds (default 3600; push of 2 GB at zstd level 19 "
                         "on 2 cores may need more)")
    args = ap.parse_args(argv)

    # As bench_core.py: by default the module from its cached bytecode, as an
    # installed vocker runs (a script is compiled again on every command, and
    # this machine sets PYTHONDONTWRITEBYTECODE).
    vocker = shlex.split(args.vocker) if args.vocker else [sys.executable, "-m", "vocker"]
    if not args.vocker:
        os.environ["PYTHONPATH"] = str(REPO)
        subprocess.run([sys.executable, "-m", "py_compile", str(REPO / "vocker.py")], check=True)
        script = REPO / "vocker.py"
    else:
        script = next((Path(a) for a in vocker if a.endswith(".py") and Path(a).exists()), None)
    size = int(args.size_mb * MB)
    scales = [("small", max(10, args.files // 10), size // 10)]
    if not args.only_small:
        scales.append(("large", args.files, size))
    # env + store + C1 (links, plus 1% changed) + repository + pulled store
    need = sum(s for _, _, s in scales) * 4.5
    free = shutil.disk_usage(args.work.parent if not args.work.exists() else args.work).free
    if free < need:
        sys.exit(f"bench_scale: {free / 1e9:.1f} GB free on the work dir's disk, need ~{need / 1e9:.1f} GB")
    bc.prepare_work(args.work, WORK_MARKER, "bench_scale.py")
    t_start = time.perf_counter()

    try:
        git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    except OSError:
        git = "?"
    R = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "seed": args.seed,
         "vocker_cmd": shlex.join(vocker), "git": git or "?", "repo": str(REPO),
         "machine": f"{platform.system()} {platform.release()}, {os.cpu_count()} cores, "
                    f"{platform.python_implementation()} {platform.python_version()}",
         "args": {k: str(v) for k, v in vars(args).items()}, "scales": [],
         "vocker_py_sha256": sha256_file(script) if script else None,
         "push_level": push_level(vocker)}
    try:
        for label, n, s in scales:
            R["scales"].append(run_scale(label, n, s, args, vocker, args.work / label, script))
            if not args.keep:
                bc.rmtree(args.work / label)
    except KeyboardInterrupt:
        log("interrupted: reporting what ran")
    finally:
        if not args.keep:
            bc.rmtree(args.work)
    R["total_seconds"] = time.perf_counter() - t_start
    R["verdicts"] = verdicts(R["scales"], args.rss_budget_mb)
    text = report(R)
    print(text)
    stem = "results-scale-small" if args.only_small else "results-scale"
    (HERE / f"{stem}.md").write_text(text)
    (HERE / f"{stem}.json").write_text(json.dumps(R, indent=1, default=str) + "\n")
    log(f"wrote {HERE / (stem + '.md')} and .json")
    return 0 if all(ok for ok, _ in R["verdicts"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _setup  # here, not at the top: importing this module must not re-execute anything
    _setup.reexec_in_bench_venv(__file__)
    sys.exit(main())
