#!/usr/bin/env python3
"""Core benchmark: vocker against the simplest honest alternatives, in one run.

Standard library only. Usage:

    python3 bench/bench_core.py [--work DIR] [--cache DIR] [--vocker CMD]
                                [--repeat N] [--quick] [--keep]

What it does (see bench/README.md for the details and the targets):

1. Corpus: downloads pinned cp311 manylinux wheels ONCE into CACHE/wheels
   (later runs are offline), builds a real venv from them with
   ``python -m venv`` + ``pip install --no-index --no-compile`` and strips every
   ``__pycache__`` (the "no pyc" venv), then makes a copy and runs
   ``compileall -q -j0`` on it once (the "with pyc" venv).
2. Baselines: ``cp -a`` / ``cp -al`` of the venv with pyc (and ``cp -al`` of
   the venv without pyc), ``python -m compileall -q -j0`` on a fresh ``cp -a``
   copy of the no-pyc venv, and ``uv venv`` + ``uv pip install`` from a warm uv
   cache, with and without ``--compile-bytecode``.
3. vocker (``--vocker CMD``, default ``python3 -m vocker`` from <repo>, its
   bytecode compiled once beforehand, as an installed vocker has it), always with
   ``--home STORE`` on a fresh store per repetition: commit, re-commit, create
   cold / warm / --no-compile, re-commit of an unchanged container (must give
   back the same image ID), and disk use (du) of store and containers.
   A vocker step that fails is reported as FAILED with the last line of its
   error output; the baselines still run.

Wall-clock seconds, best of --repeat N. Page cache cannot be dropped, so the
source trees are read once (untimed warm-up) before timing: every figure is a
warm-cache figure. ``sync`` runs (untimed) before each timed command so dirty
pages left by the previous step are not flushed on the next step's clock.

Prints a Markdown report and writes it to bench/results.md, with the raw data
in bench/results.json (bench/results-quick.{md,json} with --quick).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Pinned corpus. Current releases with cp311 manylinux x86_64 wheels at the time
# of writing; the dependencies are pinned too so that the resolved set (and so
# the corpus) is the same on every machine and every run.
PINS_FULL = [
    "numpy==2.4.6",
    "pandas==3.1.1",
    "scipy==1.17.1",
    "python-dateutil==4.0.0",  # pandas dependency
    "tzdata==2026.6",  # pandas dependency
]
PINS_QUICK = ["numpy==2.4.6"]

DEFAULT_WORK = Path("/tmp/vocker-bench")
WORK_MARKER = ".vocker-bench-workdir"
DEFAULT_PY = Path.home() / ".pyenv/versions/3.11.7/bin/python"

# pip/uv configuration that would make the offline installs non-hermetic
# (extra find-links, indexes, constraints from the machine's config).
_PIP_ENV_DROP = (
    "PIP_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_CONSTRAINT",
    "PIP_REQUIREMENT",
    "PIP_NO_INDEX",
    "PIP_ONLY_BINARY",
    "PIP_NO_BINARY",
    "PIP_REQUIRE_VIRTUALENV",
    "PIP_USER",
    "PIP_TARGET",
    "PIP_PREFIX",
)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #


class StepFailed(Exception):
    """A command failed; str() is the one line to report."""


def last_line(*texts: str) -> str:
    for text in texts:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return "(no output)"


def run(cmd, *, env=None, timeout=None, cwd=None, sync=True, warm=()):
    """Run cmd, return (seconds, CompletedProcess). Raises StepFailed.

    Untimed before it: read the ``warm`` trees (see prewarm), then ``sync`` so
    that writeback of the previous step's dirty pages is not charged to this one.
    """
    cmd = [str(c) for c in cmd]
    prewarm(*warm)
    if sync and hasattr(os, "sync"):
        os.sync()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            timeout=timeout,
            encoding="utf-8",
            errors="replace",
        )
    except FileNotFoundError as e:
        raise StepFailed(f"command not found: {cmd[0]} ({e.strerror})") from None
    except subprocess.TimeoutExpired:
        raise StepFailed(f"timed out after {timeout} s: {shlex.join(cmd)}") from None
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise StepFailed(f"exit {proc.returncode}: {last_line(proc.stderr, proc.stdout)}")
    return dt, proc


def _rm_onerror(func, path, exc_info):
    # read-only files/dirs (vocker's pool is read-only): make writable, retry
    try:
        parent = os.path.dirname(path)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        if not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        func(path)
    except FileNotFoundError:
        pass


def rmtree(path: Path) -> None:
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, onerror=_rm_onerror)


def tree_stats(root: Path, skip_pycache: bool = True) -> dict:
    """Regular-file bytes and counts under root (symlinks not followed)."""
    nbytes = files = links = dirs = pyc = 0
    stack = [str(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_symlink():
                    links += 1
                elif e.is_dir(follow_symlinks=False):
                    if skip_pycache and e.name == "__pycache__":
                        continue
                    dirs += 1
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    files += 1
                    nbytes += e.stat(follow_symlinks=False).st_size
                    if e.name.endswith(".pyc"):
                        pyc += 1
    return {"bytes": nbytes, "mb": nbytes / 1e6, "files": files, "symlinks": links,
            "dirs": dirs, "pyc": pyc}


def prewarm(*paths) -> None:
    """Read every regular file under paths (untimed) so a timed step starts warm.

    Needed because page cache here does not stay warm on its own: on the
    benchmark VM a DAMON 'pageout' scheme evicts page cache that has been idle
    for a few seconds. Reading costs ~0.1-0.3 s per 250 MB and is never timed.
    """
    buf = bytearray(1 << 20)
    for root in paths:
        root = str(root)
        if not os.path.exists(root):
            continue
        if os.path.isfile(root):
            walk = [(os.path.dirname(root), [], [os.path.basename(root)])]
        else:
            walk = os.walk(root)
        for dirpath, _dirs, files in walk:
            for name in files:
                fp = os.path.join(dirpath, name)
                if os.path.islink(fp):
                    continue
                try:
                    with open(fp, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass
                except OSError:
                    pass


def du_k(*paths: Path) -> int:
    """Disk use in KiB of paths together; an inode hardlinked twice counts once."""
    out = subprocess.run(["du", "-skc", *map(str, paths)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def hermetic_pip_env() -> dict:
    env = dict(os.environ)
    for k in _PIP_ENV_DROP:
        env.pop(k, None)
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("VIRTUAL_ENV", None)
    return env


def fmt_s(x):
    return "—" if x is None else f"{x:.3f}"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}"


# --------------------------------------------------------------------------- #
# result bookkeeping
# --------------------------------------------------------------------------- #


class Step:
    def __init__(self, key: str, label: str, group: str, note: str = ""):
        self.key, self.label, self.group, self.note = key, label, group, note
        self.times: list[float] = []
        self.error: str | None = None
        self.cmd: str | None = None
        self.extra: dict = {}

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.times)

    @property
    def best(self):
        return min(self.times) if self.ok else None

    def fail(self, msg: str) -> None:
        if self.error is None:
            self.error = msg
        log(f"FAILED {self.label}: {msg}")

    def as_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "group": self.group,
                "note": self.note, "cmd": self.cmd, "ok": self.ok,
                "best_s": self.best, "times_s": self.times, "error": self.error,
                **({"extra": self.extra} if self.extra else {})}


class Results:
    def __init__(self):
        self.steps: dict[str, Step] = {}

    def step(self, key, label, group, note="") -> Step:
        s = self.steps.get(key)
        if s is None:
            s = self.steps[key] = Step(key, label, group, note)
        return s

    def best(self, key):
        s = self.steps.get(key)
        return s.best if s else None


# --------------------------------------------------------------------------- #
# corpus
# --------------------------------------------------------------------------- #


def ensure_wheels(py: Path, cache: Path, pins: list[str]) -> Path:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    base = [str(py), "-m", "pip", "download", "-q", "--only-binary=:all:",
            "--dest", str(wheels)]
    # complete already? (offline, hermetic check)
    try:
        run(base + ["--no-index", "--find-links", str(wheels), *pins],
            env=hermetic_pip_env(), sync=False)
        log(f"wheel cache complete: {wheels}")
        return wheels
    except StepFailed:
        pass
    log(f"downloading wheels into {wheels} (once): {' '.join(pins)}")
    try:
        run(base + pins, sync=False)
    except StepFailed as e:
        sys.exit(f"bench: could not download the corpus wheels: {e}")
    return wheels


def build_source_venv(py: Path, wheels: Path, pins: list[str], venv: Path,
                      prompt: str | None = None) -> list[str]:
    """``python -m venv`` + an offline, hermetic pip install of ``pins``, every
    ``.pyc`` removed (ensurepip leaves pip/setuptools compiled: a source venv
    has none); returns its ``pip freeze --all``. Exits the bench on failure."""
    try:
        run([py, "-m", "venv", *(["--prompt", prompt] if prompt else []), venv], sync=False)
        run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
             "--find-links", wheels, "--no-compile", *pins],
            env=hermetic_pip_env(), sync=False)
    except StepFailed as e:
        sys.exit(f"bench: could not build {venv}: {e}")
    for dirpath, dirnames, _ in os.walk(venv):
        if "__pycache__" in dirnames:
            rmtree(Path(dirpath) / "__pycache__")
            dirnames.remove("__pycache__")
    for p in venv.rglob("*.pyc"):
        p.unlink()
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all"],
                          stdout=subprocess.PIPE, text=True, env=hermetic_pip_env()).stdout.split()


def build_corpus(py: Path, wheels: Path, pins: list[str], corpus_dir: Path, res_env: dict):
    venv = corpus_dir / "venv"
    venv_pyc = corpus_dir / "venv-pyc"
    log(f"building corpus venv {venv}")
    t0 = time.perf_counter()
    res_env["installed"] = build_source_venv(py, wheels, pins, venv)
    log(f"corpus venv built in {time.perf_counter() - t0:.1f} s; making the with-pyc copy")
    try:
        run(["cp", "-a", venv, venv_pyc], sync=False)
        run([py, "-m", "compileall", "-q", "-j0", venv_pyc], sync=False)
    except StepFailed as e:
        sys.exit(f"bench: could not build the with-pyc venv: {e}")
    return venv, venv_pyc


# --------------------------------------------------------------------------- #
# baselines
# --------------------------------------------------------------------------- #


def bench_copy(R: Results, key, label, src: Path, dest: Path, flags: str, repeat: int, note=""):
    s = R.step(key, label, "baseline", note)
    s.cmd = f"cp {flags} SRC DEST"
    for i in range(repeat):
        rmtree(dest)
        try:
            dt, _ = run(["cp", flags, src, dest], warm=[src])
        except StepFailed as e:
            s.fail(str(e))
            break
        s.times.append(dt)
        log(f"{label} {i + 1}/{repeat}: {dt:.3f} s")
    rmtree(dest)


def bench_startup(R: Results, python: str, repeat: int):
    """Interpreter start-up: a floor under every step that runs Python (vocker too)."""
    s = R.step("py_startup", "python3 -c pass (interpreter start-up)", "baseline",
               "best of 5 per run; part of every vocker figure")
    s.cmd = f"{python} -c pass"
    for _ in range(repeat):
        try:
            dt = min(run([python, "-c", "pass"], sync=False)[0] for _ in range(5))
        except StepFailed as e:
            s.fail(str(e))
            return
        s.times.append(dt)


def bench_compileall(R: Results, py: Path, venv: Path, dest: Path, repeat: int):
    s = R.step("compileall", "compileall -q -j0 (fresh cp -a of no-pyc venv)", "baseline",
               "only compileall is timed; the copy before it is not")
    s.cmd = f"{py} -m compileall -q -j0 DEST"
    for i in range(repeat):
        rmtree(dest)
        try:
            run(["cp", "-a", venv, dest], sync=False)
            dt, _ = run([py, "-m", "compileall", "-q", "-j0", dest], warm=[dest])
        except StepFailed as e:
            s.fail(str(e))
            break
        s.times.append(dt)
        log(f"compileall {i + 1}/{repeat}: {dt:.3f} s")
    rmtree(dest)


def ensurepip_wheels(py: Path) -> Path:
    """The folder of the wheels ``python -m venv`` installs (pip, and
    setuptools before 3.12): uv installs them too, so that both sides make
    the same packages."""
    out = subprocess.run([str(py), "-I", "-c", "import ensurepip, os; "
                          "print(os.path.join(os.path.dirname(ensurepip.__file__), '_bundled'))"],
                         stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    return Path(out)


def bench_uv(R: Results, uv: str | None, py: Path, wheels: Path, cache: Path,
             pins: list[str], work: Path, repeat: int, timeout) -> dict | None:
    """uv venv + uv pip install of ``pins``: the source venv's ``pip freeze
    --all``, so pip and setuptools too (from the interpreter's ensurepip
    wheels), as ``python -m venv`` puts them in the venv vocker commits.
    Returns how to run it again (for :func:`bench_paired`), or None."""
    sv = R.step("uv_venv", "uv venv", "baseline")
    variants = [
        ("uv_install", "uv pip install (warm cache, no compile)", []),
        ("uv_install_c", "uv pip install (warm cache, --compile-bytecode)", ["--compile-bytecode"]),
    ]
    total_labels = {"uv_install": "uv venv + uv pip install (warm cache, no compile)",
                    "uv_install_c": "uv venv + uv pip install (warm cache, --compile-bytecode)"}
    steps = {k: R.step(k, lbl, "baseline", "uv venv not included") for k, lbl, _ in variants}
    totals = {k: R.step(k + "_total", total_labels[k], "baseline",
                        "best per-run sum of uv venv + install")
              for k, _, _ in variants}
    if not uv:
        for s in [sv, *steps.values(), *totals.values()]:
            s.fail("uv not found on PATH")
        return None
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("UV_"):
            del env[k]
    env.pop("VIRTUAL_ENV", None)
    env["UV_CACHE_DIR"] = str(cache / "uv")
    env["UV_PYTHON_DOWNLOADS"] = "never"
    newvenv = work / "uv-venv"
    venv_cmd = [uv, "--no-config", "venv", "-q", "--python", py, newvenv]
    inst = [uv, "--no-config", "pip", "install", "-q", "--offline", "--no-index",
            "--find-links", wheels, "--find-links", ensurepip_wheels(py),
            "--python", newvenv / "bin" / "python", *pins]
    sv.cmd = "UV_CACHE_DIR=CACHE/uv " + shlex.join(map(str, venv_cmd)).replace(str(newvenv), "NEWVENV")
    # untimed warm-up install: fills the uv cache (unzipped wheels)
    log("uv warm-up install (untimed)")
    try:
        rmtree(newvenv)
        run(venv_cmd, env=env, timeout=timeout, sync=False)
        run(inst, env=env, timeout=timeout, sync=False)
    except StepFailed as e:
        for s in [sv, *steps.values(), *totals.values()]:
            s.fail(f"warm-up: {e}")
        rmtree(newvenv)
        return None
    for k, lbl, extra in variants:
        steps[k].cmd = ("UV_CACHE_DIR=CACHE/uv "
                        + shlex.join(map(str, inst + extra)).replace(str(newvenv), "NEWVENV")
                        .replace(str(wheels), "CACHE/wheels")
                        .replace(str(ensurepip_wheels(py)), "ENSUREPIP"))
        for i in range(repeat):
            rmtree(newvenv)
            try:
                dtv, _ = run(venv_cmd, env=env, timeout=timeout)
                dti, _ = run(inst + extra, env=env, timeout=timeout,
                             warm=[cache / "uv", wheels, newvenv])
            except StepFailed as e:
                steps[k].fail(str(e))
                totals[k].fail(str(e))
                break
            sv.times.append(dtv)
            steps[k].times.append(dti)
            totals[k].times.append(dtv + dti)
            log(f"{lbl} {i + 1}/{repeat}: venv {dtv:.3f} s + install {dti:.3f} s")
    rmtree(newvenv)
    return {"env": env, "venv": venv_cmd, "install": inst, "dir": newvenv,
            "warm": [cache / "uv", wheels]}


# --------------------------------------------------------------------------- #
# vocker
# --------------------------------------------------------------------------- #


def parse_json_out(text: str, stderr: str = "") -> dict:
    text = text.strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
    except ValueError:
        pass
    for line in reversed(text.splitlines()):  # tolerate progress lines before it
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj
            except ValueError:
                continue
    raise StepFailed("exit 0 but --json printed no JSON object; last output line: "
                     f"{last_line(text, stderr)}")


def detect_home_style(vocker: list[str], timeout) -> str:
    """'before' if the top-level --help mentions --home, else 'after'."""
    try:
        _, p = run(vocker + ["--help"], timeout=timeout, sync=False)
    except StepFailed:
        return "before"
    return "before" if "--home" in p.stdout + p.stderr else "after"


def bench_vocker(R: Results, vocker: list[str], venv: Path, work: Path, repeat: int,
                 corpus_mb: float, home_style: str, timeout, info: dict, uv=None):
    defs = [
        ("v_commit", "vocker commit VENV --json (empty store)", ""),
        ("v_recommit", "vocker re-commit VENV (unchanged, stat cache)", ""),
        ("v_create_cold", "vocker create IMAGE C1 (cold: empty pyc cache)", ""),
        ("v_create_warm", "vocker create IMAGE C2 (warm: pool + pyc cache)", ""),
        ("v_create_nc", "vocker create IMAGE C3 --no-compile", ""),
        ("v_commit_c2", "vocker commit C2 --json (unchanged container)", "must give back the image ID"),
        ("v_create_pulled", "vocker create IMAGE C4 (store empty before a pull of IMAGE's "
         "bytecode ID: shipped .pyc)",
         "untimed before it: push to a folder (VOCKER_PUSH_LEVEL=3), pull into an empty store"),
    ]
    steps = {k: R.step(k, lbl, "vocker", note) for k, lbl, note in defs}

    # vocker.py present? (only checked for the default command)
    script = next((Path(a) for a in vocker if a.endswith(".py")), None) or (
        REPO / "vocker.py" if vocker[1:] == ["-m", "vocker"] else None)
    if script is not None and not script.exists():
        for s in steps.values():
            s.fail(f"{script} does not exist (yet)")
        return
    if script is not None:
        info["vocker_py_sha256"] = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    script_warm = [script] if script is not None else []
    image = None
    if home_style == "auto":
        home_style = detect_home_style(vocker, timeout)
    info["home_style"] = home_style

    def vcmd(store: Path, *args):
        if home_style == "before":
            return vocker + ["--home", str(store), *map(str, args)]
        return vocker + [str(args[0]), "--home", str(store), *map(str, args[1:])]

    def vrun(key, store, *args):
        s = steps[key]
        cmd = vcmd(store, *args)
        if s.cmd is None:
            s.cmd = shlex.join(cmd).replace(str(work), "WORK")
            if image:
                s.cmd = s.cmd.replace(image, "IMAGE")
        env = dict(os.environ, VOCKER_HOME=str(store))
        # warm: the store, and the tree a commit reads
        src = [Path(a) for a in args[1:2] if args[0] == "commit"]
        dt, p = run(cmd, env=env, timeout=timeout, warm=[store, *src, *script_warm])
        return dt, p

    for i in range(repeat):
        rd = work / "vocker" / f"r{i}"
        rmtree(rd)
        rd.mkdir(parents=True)
        store, c1, c2, c3 = rd / "store", rd / "c1", rd / "c2", rd / "c3"
        failed = False
        image = None

        def do(key, *args, fn=None, store_home=None):
            nonlocal failed
            s = steps[key]
            try:
                dt, p = vrun(key, store_home or store, *args)
                out = fn(dt, p) if fn else None
            except StepFailed as e:
                s.fail(str(e))
                failed = True
                return None
            s.times.append(dt)
            log(f"{s.label} {i + 1}/{repeat}: {dt:.3f} s")
            return out

        def get_id(dt, p):
            obj = parse_json_out(p.stdout, p.stderr)
            if "id" not in obj:
                raise StepFailed(f'--json output has no "id" key: {last_line(p.stdout)}')
            return str(obj["id"])

        def same_id(label):
            def check(dt, p):
                got = get_id(dt, p)
                if got != image:
                    raise StepFailed(f"image ID mismatch ({label}): got {got}, expected {image}")
                return got
            return check

        image = do("v_commit", "commit", venv, "--json", fn=get_id)
        if image is None:
            for k in steps:
                if k != "v_commit" and not steps[k].times:
                    steps[k].fail("skipped: needs the image ID from commit")
            rmtree(rd)
            break
        steps["v_commit"].extra["image_id"] = image
        do("v_recommit", "commit", venv, "--json", fn=same_id("re-commit of the same venv"))
        do("v_create_cold", "create", image, c1)
        do("v_create_warm", "create", image, c2)
        do("v_create_nc", "create", image, c3, "--no-compile")
        if c2.exists():
            do("v_commit_c2", "commit", c2, "--json", fn=same_id("commit of unchanged C2"))
        else:
            steps["v_commit_c2"].fail("skipped: C2 was not created")
        if not failed:
            bench_pulled_create(steps["v_create_pulled"], vcmd, do, rd, store, image, timeout)
        if i == 0:
            disk = {}
            try:
                disk["store_k"] = du_k(store)
                if c1.exists():
                    disk["store_c1_k"] = du_k(store, c1)
                if c1.exists() and c2.exists():
                    disk["store_c1_c2_k"] = du_k(store, c1, c2)
                    disk["c2_adds_k"] = disk["store_c1_c2_k"] - disk["store_c1_k"]
                for name, c in (("c1", c1), ("c2", c2), ("c3", c3)):
                    if c.exists():
                        st = tree_stats(c, skip_pycache=False)
                        disk[f"{name}_files"] = st["files"]
                        disk[f"{name}_pyc"] = st["pyc"]
            except (subprocess.CalledProcessError, OSError) as e:
                disk["error"] = str(e)
            info["disk"] = disk
        rmtree(rd)
        if failed:
            break  # a failing step will fail again: don't waste the time
    if steps["v_commit"].ok:
        steps["v_commit"].extra["mb_per_s"] = corpus_mb / steps["v_commit"].best
    rmtree(work / "vocker")
    bench_paired(R, vcmd, vocker + ["--version"], venv, work, repeat, uv, timeout)


def bench_paired(R: Results, vcmd, version_cmd, venv: Path, work: Path, repeat: int, uv,
                 timeout):
    """``create --no-compile`` from a warm store and uv venv + uv pip install
    (no compile) from a warm cache, run alternately in one stretch of time:
    this VM's file system changes speed from minute to minute (``cp -al``
    0.05-0.17 s on one day), so their ratio is read from runs side by side.
    Beside them, what any Python create pays: the CPython floor (without and
    with vocker's check of each pool file) and vocker's own start-up
    (``version_cmd``: the interpreter and vocker's imports, no work)."""
    sv = R.step("paired_v_nc", "vocker create IMAGE --no-compile, alternating with uv",
                "vocker", "warm store: the pool made by an untimed create before")
    su = R.step("paired_uv", "uv venv + uv pip install (warm cache, no compile), "
                "alternating with vocker", "baseline", "sum of the two commands")
    sf = R.step("paired_floor", "CPython floor: python linking the same files from a list",
                "baseline", "os.mkdir + os.link of a prepared list, nothing checked or "
                "recorded: the least any Python create costs")
    sc = R.step("paired_floor_check", "CPython floor with the pool check: the same, "
                "with an lstat of each file before its link", "baseline",
                "the floor plus the one syscall a create adds to check a pool file "
                "(vocker compares its mode, size and mtime)")
    ss = R.step("paired_start", "vocker --version: the interpreter and vocker's imports, "
                "no work", "vocker", "the start-up every command pays")
    paired = (sv, su, sf, sc, ss)
    if uv is None:
        for s in paired:
            s.fail("uv did not run")
        return
    home, seed, out, floor, floor_c = (work / n for n in (
        "paired-store", "paired-seed", "paired-c", "paired-floor", "paired-floor-check"))
    env = dict(os.environ, VOCKER_HOME=str(home))
    try:
        _, p = run(vcmd(home, "commit", venv, "-q"), env=env, timeout=timeout, sync=False)
        image = p.stdout.strip()
        run(vcmd(home, "create", image, seed, "--no-compile"), env=env, timeout=timeout)
    except StepFailed as e:
        for s in paired:
            s.fail(f"commit or first create before it: {e}")
        return
    listing = work / "paired-list.json"
    listing.write_text(json.dumps(_link_list(seed)))
    floor_cmd = [sys.executable, "-c", _FLOOR_SCRIPT, listing, floor]
    check_cmd = [sys.executable, "-c", _FLOOR_SCRIPT, listing, floor_c, "check"]
    sf.cmd = "python -c FLOOR_SCRIPT LIST WORK/paired-floor"
    sc.cmd = sf.cmd + " check"
    ss.cmd = shlex.join(map(str, version_cmd))
    sv.cmd = shlex.join(map(str, vcmd(home, "create", image, out, "--no-compile"))) \
        .replace(str(work), "WORK").replace(image, "IMAGE")
    su.cmd = "as the uv rows above"
    for i in range(max(repeat, 3)):
        for d in (out, floor, floor_c, uv["dir"]):
            rmtree(d)
        try:
            dtv, _ = run(uv["venv"], env=uv["env"], timeout=timeout)
            dti, _ = run(uv["install"], env=uv["env"], timeout=timeout,
                         warm=[*uv["warm"], uv["dir"]])
            dt, _ = run(vcmd(home, "create", image, out, "--no-compile"), env=env,
                        timeout=timeout, warm=[home])
            dtf, _ = run(floor_cmd, timeout=timeout, warm=[listing])
            dtc, _ = run(check_cmd, timeout=timeout, warm=[listing])
            dts, _ = run(version_cmd, env=env, timeout=timeout)
        except StepFailed as e:
            for s in paired:
                s.fail(str(e))
            break
        su.times.append(dtv + dti)
        sv.times.append(dt)
        sf.times.append(dtf)
        sc.times.append(dtc)
        ss.times.append(dts)
        log(f"paired {i + 1}: uv {dtv + dti:.3f} s, vocker create --no-compile {dt:.3f} s, "
            f"python floor {dtf:.3f} s, with the check {dtc:.3f} s, vocker start-up {dts:.3f} s")
    for d in (home, seed, out, floor, floor_c, uv["dir"], listing):
        rmtree(d) if d.is_dir() else d.unlink(missing_ok=True)


#: the CPython floor of a create: make the folders, hardlink the files of a
#: prepared list (argv: the list, the new folder); no check, no store, no record
#: (a third argument "check": lstat each file to link first, as a create's
#: check of its pool file does)
_FLOOR_SCRIPT = """import json, os, sys
dirs, files = json.load(open(sys.argv[1]))
top, check = sys.argv[2], sys.argv[3:] == ["check"]
os.mkdir(top)
for d in dirs:
    os.mkdir(os.path.join(top, d))
for rel, src in files:
    if check:
        os.lstat(src)
    os.link(src, os.path.join(top, rel))
"""


def _link_list(root: Path):
    """[folders], [[relative path, file to link]] of a tree, parents first
    (symlinks left out: they are a few)."""
    dirs, files = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            dirs.append(rel)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                files.append([os.path.join(rel, n) if rel != "." else n, p])
    return dirs, files


def bench_pulled_create(step, vcmd, do, rd, store, image, timeout):
    """The first create on a fresh machine: push (with the .pyc the creates
    before compiled), pull by the bytecode ID into an empty store, both
    untimed; then the timed create."""
    repo, fresh, c4 = rd / "repo", rd / "fresh", rd / "c4"
    env = dict(os.environ, VOCKER_PUSH_LEVEL="3")
    try:
        _, p = run(vcmd(store, "push", image, repo, "--json"), env=env, timeout=timeout)
        shipped = parse_json_out(p.stdout, p.stderr)["images"][0]["bytecode"]
        if not shipped:
            raise StepFailed("push shipped no bytecode")
        run(vcmd(fresh, "pull", repo, shipped["id"]), env=env, timeout=timeout)
    except StepFailed as e:
        step.fail(f"push or pull before it: {e}")
        return
    step.extra["pycs"] = shipped["pycs"]
    step.extra["bytecode_mb_level3"] = round(shipped["bytes"] / 1e6, 1)
    if "record" not in step.note:
        step.note += (f"; the bytecode record: {shipped['pycs']} .pyc, "
                      f"{shipped['bytes'] / 1e6:.1f} MB at level 3")
    do("v_create_pulled", "create", image, c4, store_home=fresh)


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #


def build_ratios(R: Results, corpus_mb: float) -> list[dict]:
    b = R.best

    def ratio(a, c):
        x, y = b(a), b(c)
        return None if x is None or y is None or y == 0 else x / y

    rows = []

    def add(label, value, unit, op=None, target=None, note=""):
        status = "—"
        if value is not None and op is not None:
            ok = value <= target if op == "<=" else value >= target
            status = "PASS" if ok else "FAIL"
        elif op is not None:
            status = "n/a"
        rows.append({"label": label, "value": value, "unit": unit,
                     "target": None if op is None else f"{op} {target}",
                     "status": status, "note": note})

    add("create(warm) / cp -al (with pyc)", ratio("v_create_warm", "cp_al_pyc"), "x", "<=", 1.5)
    add("create(cold) / compileall -j0", ratio("v_create_cold", "compileall"), "x", "<=", 1.1)
    mbps = corpus_mb / b("v_commit") if b("v_commit") else None
    add("commit throughput (empty store)", mbps, "MB/s", ">=", 250)
    add("re-commit of unchanged venv", b("v_recommit"), "s", "<=", 0.25)
    add("create(--no-compile) / uv venv+install, warm cache, no compile: alternating runs",
        ratio("paired_v_nc", "paired_uv"), "x", "<=", 1.0,
        "the two run side by side (bench_paired): the figure for the target")
    add("create(--no-compile) / uv venv+install, warm cache, no compile: steps apart",
        ratio("v_create_nc", "uv_install_total"), "x", note="the rows above, minutes apart")
    add("CPython floor (mkdir + link of a list) / uv venv+install: alternating runs",
        ratio("paired_floor", "paired_uv"), "x", note="what any Python create could reach")
    add("CPython floor with the pool check / uv venv+install: alternating runs",
        ratio("paired_floor_check", "paired_uv"), "x",
        note="what a Python create that checks each pool file could reach")
    add("vocker start-up (--version) / uv venv+install: alternating runs",
        ratio("paired_start", "paired_uv"), "x",
        note="the share of uv's whole create that Python and vocker's imports take")
    parts = [b(k) for k in ("paired_floor_check", "paired_start", "py_startup", "paired_uv")]
    add("(floor with the check + vocker's start-up beyond python -c pass) / uv venv+install",
        None if None in parts or not parts[3] else (parts[0] + parts[1] - parts[2]) / parts[3],
        "x", note="the least a create with vocker's imports and check could take, "
        "alternating runs (an estimate: the floor's own start is counted once)")
    add("create(after pull, shipped .pyc) / uv venv+install --compile-bytecode",
        ratio("v_create_pulled", "uv_install_c_total"), "x", "<=", 1.0)
    add("create(warm) / uv venv+install, warm cache, no compile",
        ratio("v_create_warm", "uv_install_total"), "x")
    add("create(warm) / uv venv+install, warm cache, --compile-bytecode",
        ratio("v_create_warm", "uv_install_c_total"), "x")
    add("create(warm) / cp -a (with pyc)", ratio("v_create_warm", "cp_a_pyc"), "x")
    add("create(--no-compile) / cp -al (no pyc)", ratio("v_create_nc", "cp_al_nopyc"), "x")
    add("commit (empty store) / cp -a (no pyc)", ratio("v_commit", "cp_a_nopyc"), "x")
    add("create(cold) / uv venv+install --compile-bytecode",
        ratio("v_create_cold", "uv_install_c_total"), "x")
    add("commit of unchanged C2", b("v_commit_c2"), "s", "<=", 0.25,
        "same target as re-commit (not in the brief's list)")
    return rows


def render(meta: dict, R: Results, ratios: list[dict]) -> str:
    c = meta["corpus"]
    L = []
    L.append(f"# vocker core benchmark{' (quick)' if meta['quick'] else ''}")
    L.append("")
    L.append(f"- date: {meta['date']}  ")
    L.append(f"- machine: {meta['machine']}  ")
    L.append(f"- python: {meta['python']}; uv: {meta['uv_version']}  ")
    L.append(f"- work dir: `{meta['work']}` (fs {meta['work_fs']}); uv cache `{meta['uv_cache']}` "
             f"(same fs as work: {meta['uv_cache_same_fs']})  ")
    L.append(f"- vocker: `{meta['vocker_cmd']}`"
             + (f" (vocker.py sha256 {meta['vocker']['vocker_py_sha256']})"
                if meta["vocker"].get("vocker_py_sha256") else "")
             + (f", --home {meta['vocker']['home_style']} the subcommand"
                if meta["vocker"].get("home_style") else "") + "  ")
    L.append(f"- corpus: `{' '.join(meta['pins'])}` → venv of **{c['nopyc']['mb']:.1f} MB** in "
             f"**{c['nopyc']['files']:,} files** (+{c['nopyc']['symlinks']} symlinks, "
             f"{c['nopyc']['dirs']:,} dirs; no pyc; pip + setuptools from `python -m venv` included); "
             f"with pyc: {c['pyc_all']['mb']:.1f} MB in {c['pyc_all']['files']:,} files "
             f"({c['pyc_all']['pyc']:,} .pyc)  ")
    L.append(f"- timing: wall clock, best of {meta['repeat']}; warm page cache (the trees a timed "
             f"command reads are read, untimed, just before it: caches cannot be dropped here); "
             f"`sync` before each timed command; spread = (slowest - best) / best; MB = 10^6 bytes of file content "
             f"excluding `__pycache__`")
    L.append("")
    L.append("## Times")
    L.append("")
    L.append("| step | best s | all runs (s) | spread | notes |")
    L.append("| --- | ---: | --- | ---: | --- |")
    for s in R.steps.values():
        if s.ok:
            runs = ", ".join(f"{t:.3f}" for t in s.times)
            spread = (f"{(max(s.times) - s.best) / s.best * 100:.0f}%"
                      if len(s.times) > 1 and s.best > 0 else "—")
            note = s.note
            if s.key == "v_commit":
                note = (note + "; " if note else "") + f"{s.extra['mb_per_s']:.0f} MB/s"
            if s.error:  # partial
                note += f"; later run FAILED: {s.error}"
            L.append(f"| {s.label} | {s.best:.3f} | {runs} | {spread} | {note} |")
        else:
            err = (s.error or "not run").replace("|", "\\|")
            L.append(f"| {s.label} | FAILED | — | — | {err} |")
    L.append("")
    L.append("## Ratios and targets")
    L.append("")
    L.append("| measure | value | target | status |")
    L.append("| --- | ---: | --- | --- |")
    for r in ratios:
        v = r["value"]
        vs = "—" if v is None else (f"{v:.0f} {r['unit']}" if r["unit"] == "MB/s"
                                    else f"{v:.3f} s" if r["unit"] == "s" else f"{v:.2f}×")
        L.append(f"| {r['label']} | {vs} | {r['target'] or '—'} | {r['status']} |")
    L.append("")
    disk = meta["vocker"].get("disk")
    L.append("## Disk (du -sk; a file hardlinked from several places counts once)")
    L.append("")
    L.append(f"- venv without pyc: {meta['corpus']['du_nopyc_k'] / 1024:.1f} MiB; with pyc: "
             f"{meta['corpus']['du_pyc_k'] / 1024:.1f} MiB (what each `cp -a` copy costs)")
    if disk and "store_k" in disk:
        L.append(f"- store alone (after commit + 3 creates): {disk['store_k'] / 1024:.1f} MiB")
        if "store_c1_k" in disk:
            L.append(f"- store + C1: {disk['store_c1_k'] / 1024:.1f} MiB")
        if "store_c1_c2_k" in disk:
            L.append(f"- store + C1 + C2: {disk['store_c1_c2_k'] / 1024:.1f} MiB → a second "
                     f"container adds **{disk['c2_adds_k'] / 1024:.1f} MiB**")
        if "c2_files" in disk:
            L.append(f"- C2 holds {disk['c2_files']:,} files ({disk['c2_pyc']:,} .pyc); "
                     f"C3 (--no-compile) {disk.get('c3_files', 0):,} files "
                     f"({disk.get('c3_pyc', 0):,} .pyc)")
        if "error" in disk:
            L.append(f"- du failed: {disk['error']}")
    else:
        L.append("- vocker: not measured (steps failed)")
    L.append("")
    L.append("## Commands")
    L.append("")
    for s in R.steps.values():
        if s.cmd:
            L.append(f"- {s.label}: `{s.cmd}`")
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def prepare_work(work: Path, marker: str = WORK_MARKER, script: str = "bench_core.py") -> None:
    """Make an empty work dir; refuse a non-empty one this script did not make."""
    if work.exists():
        if not (work / marker).exists() and any(work.iterdir()):
            sys.exit(f"bench: {work} exists, is not empty and was not made by this script "
                     f"(no {marker}); choose another --work")
        rmtree(work)
    work.mkdir(parents=True)
    (work / marker).write_text(f"made by bench/{script}; removed at the end\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"scratch dir, removed at the end (default {DEFAULT_WORK})")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache",
                    help="wheel + uv cache, kept between runs (default bench/.cache)")
    ap.add_argument("--vocker", default=None,
                    help="vocker command line (default: '<this python3> -m vocker', from "
                         "this checkout, bytecode compiled first)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per step, best is reported (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="small corpus (numpy only), for a fast smoke run")
    ap.add_argument("--python", type=Path, default=DEFAULT_PY if DEFAULT_PY.exists()
                    else Path(sys.executable), help=f"base interpreter (default {DEFAULT_PY})")
    ap.add_argument("--home-style", choices=("auto", "before", "after"), default="auto",
                    help="put --home STORE before or after the vocker subcommand "
                         "(auto: before if `vocker --help` lists --home)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds before a vocker/uv command is called FAILED (default 1800)")
    ap.add_argument("--skip-vocker", action="store_true", help="baselines only")
    ap.add_argument("--keep", action="store_true", help="do not remove the work dir")
    args = ap.parse_args(argv)

    repeat = args.repeat or (1 if args.quick else 3)
    pins = PINS_QUICK if args.quick else PINS_FULL
    work = args.work.resolve()
    cache = args.cache.resolve()
    py = args.python
    # default: the interpreter running this script (``python3``), resolved, so a
    # pyenv shim's start-up is not charged to vocker
    # as a user runs it: the module imported from its cached bytecode (a
    # script is compiled on every run: 0.17 s for vocker.py, charged to every
    # command; this machine also sets PYTHONDONTWRITEBYTECODE)
    vocker = (shlex.split(args.vocker) if args.vocker
              else [sys.executable, "-m", "vocker"])
    if not args.vocker:
        os.environ["PYTHONPATH"] = str(REPO)
        subprocess.run([sys.executable, "-m", "py_compile", str(REPO / "vocker.py")], check=True)
    uv = shutil.which("uv")

    prepare_work(work)
    meta: dict = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
                   f"{os.cpu_count()} cores",
        "quick": args.quick, "repeat": repeat, "pins": pins,
        "work": str(work), "cache": str(cache), "uv_cache": str(cache / "uv"),
        "vocker_cmd": shlex.join(vocker), "vocker": {},
    }
    try:
        meta["work_fs"] = subprocess.run(["stat", "-f", "-c", "%T", str(work)],
                                         stdout=subprocess.PIPE, text=True).stdout.strip()
    except OSError:
        meta["work_fs"] = "?"
    meta["python"] = subprocess.run([str(py), "-c", "import sys; print(sys.version.split()[0], "
                                     "sys.executable)"], stdout=subprocess.PIPE,
                                    text=True).stdout.strip()
    meta["uv_version"] = (subprocess.run([uv, "--version"], stdout=subprocess.PIPE, text=True)
                          .stdout.strip() if uv else "not found")

    R = Results()
    try:
        wheels = ensure_wheels(py, cache, pins)
        (cache / "uv").mkdir(parents=True, exist_ok=True)
        meta["uv_cache_same_fs"] = os.stat(cache / "uv").st_dev == os.stat(work).st_dev
        venv, venv_pyc = build_corpus(py, wheels, pins, work / "corpus", meta)
        nopyc = tree_stats(venv)
        meta["corpus"] = {
            "nopyc": nopyc,
            "pyc": tree_stats(venv_pyc),  # same content, __pycache__ skipped
            "pyc_all": tree_stats(venv_pyc, skip_pycache=False),
            "du_nopyc_k": du_k(venv), "du_pyc_k": du_k(venv_pyc),
        }
        log(f"corpus: {nopyc['mb']:.1f} MB in {nopyc['files']} files (no pyc); "
            f"with pyc {meta['corpus']['pyc_all']['mb']:.1f} MB in "
            f"{meta['corpus']['pyc_all']['files']} files")

        # warm-up: read both source trees once (untimed) so every copy is warm
        log("warm-up copy (untimed)")
        for src in (venv, venv_pyc):
            dest = work / "warmup"
            run(["cp", "-a", src, dest], sync=False)
            rmtree(dest)

        bench_startup(R, sys.executable, repeat)
        dest = work / "dest"
        bench_copy(R, "cp_a_pyc", "cp -a VENV DEST (with pyc)", venv_pyc, dest, "-a", repeat)
        bench_copy(R, "cp_a_nopyc", "cp -a VENV DEST (no pyc)", venv, dest, "-a", repeat,
                   "what any commit into an empty store must at least write")
        bench_copy(R, "cp_al_pyc", "cp -al VENV DEST (with pyc)", venv_pyc, dest, "-al", repeat)
        bench_copy(R, "cp_al_nopyc", "cp -al VENV DEST (no pyc)", venv, dest, "-al", repeat)
        bench_compileall(R, py, venv, dest, repeat)
        uv_recipe = bench_uv(R, uv, py, wheels, cache, meta["installed"], work, repeat,
                             args.timeout)
        if args.skip_vocker:
            for k in ("v_commit",):
                R.step(k, "vocker", "vocker").fail("skipped (--skip-vocker)")
        else:
            bench_vocker(R, vocker, venv, work, repeat, nopyc["mb"], args.home_style,
                         args.timeout, meta["vocker"], uv_recipe)
    finally:
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            rmtree(work)

    ratios = build_ratios(R, meta["corpus"]["nopyc"]["mb"])
    md = render(meta, R, ratios)
    stem = "results-quick" if args.quick else "results"
    (HERE / f"{stem}.md").write_text(md)
    (HERE / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "steps": [s.as_dict() for s in R.steps.values()], "ratios": ratios},
        indent=2) + "\n")
    print(md)
    log(f"wrote {HERE / (stem + '.md')} and {HERE / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _setup  # here, not at the top: importing this module must not re-execute anything
    _setup.reexec_in_bench_venv(__file__)
    sys.exit(main())
