#!/usr/bin/env python3
"""Wire benchmark: repository size and transfer, this vocker next to vocker 0.6.2.

Standard library only. Usage:

    python3 bench/bench_wire.py [--work DIR] [--cache DIR] [--vocker CMD]
                                [--python PY] [--v062-python PY] [--v062-lib64]
                                [--skip-v062] [--keep]

One run, one corpus: two real venvs made with ``python -m venv --prompt NAME``
+ ``pip install --no-index --find-links CACHE/wheels --no-compile``, every
``__pycache__`` removed afterwards:
"data" = numpy 2.1.3, pandas 2.2.3, scipy 1.14.1 and their pinned
dependencies; "data-alt" = the same with pandas 2.2.2.

1. This vocker (``--vocker CMD``, always ``--home STORE``): commit data into an
   empty store, push it to an empty repository folder; commit data-alt, push;
   then pull data into another empty store and pull data-alt into that store.
2. vocker 0.6.2 from PyPI, in its own venv CACHE/vocker-0.6.2-venv (made
   once): ``repo init``, ``image import`` data, ``repo upload --to file://REMOTE``,
   ``repo download`` REMOTE into a fresh local repository (another
   VOCKER_BASE); then ``image import`` data-alt and upload again.
3. Sizes (sum of regular-file sizes; du), seconds, ratios, and the targets:
   repository after data <= 45.5 MB and <= 0.6.2's; growth after data-alt
   <= 7.8 MB and <= 0.6.2's; pull of data from a folder >= 100 MB/s of content.

Wall-clock seconds of each command, one run; as in bench_core, the trees a
step reads are read (untimed) before it and ``sync`` runs before it. Prints a
Markdown report, also written to bench/results-wire.md, with the raw data in
bench/results-wire.json; progress goes to stderr. Exit status 1 if a step
failed or a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_core as bc  # noqa: E402  (run, log, rmtree, tree_stats, du_k, ...)

log, StepFailed, rmtree = bc.log, bc.StepFailed, bc.rmtree

DEFAULT_WORK = Path("/tmp/vocker-bench-wire")
WORK_MARKER = ".vocker-bench-wire-workdir"
SEED_WHEELS = Path("/tmp/wh2")  # wheels a previous session left: copied, not downloaded

# pip resolves these three to python-dateutil, pytz and tzdata (python-dateutil
# 4.0.0 no longer needs six); all are pinned so the corpus is the same everywhere
PINS = {
    "data": ["numpy==2.1.3", "pandas==2.2.3", "scipy==1.14.1",
             "python-dateutil==4.0.0", "pytz==2026.6", "tzdata==2026.6"],
}
PINS["data-alt"] = [p if not p.startswith("pandas==") else "pandas==2.2.2"
                    for p in PINS["data"]]
TAGS = {"data": "wire:data", "data-alt": "wire:data-alt"}

V062_SPEC = ["vocker==0.6.2", "tqdm"]  # 0.6.2's image import needs tqdm, undeclared
V062_PY = Path.home() / ".pyenv/versions/3.13.0/bin/python"  # 0.6.2 uses Path.from_uri (3.13+)
V062_REPO = "wire"  # the name of its local repository

TARGET_REPO_MB = 45.5
TARGET_GROWTH_MB = 7.8
TARGET_PULL_MBPS = 100.0


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #


def mb(n) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def secs(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def size_of(path: Path) -> dict:
    """Sum of regular-file sizes under path (symlinks not followed) and du."""
    st = bc.tree_stats(path, skip_pycache=False)
    return {"bytes": st["bytes"], "files": st["files"], "du_kb": bc.du_k(path)}


def val(r: dict, key: str, field: str = "bytes", scale: int = 1):
    """r[key][field] * scale, or None if not measured."""
    v = (r.get(key) or {}).get(field)
    return None if v is None else v * scale


def growth(r: dict, key: str, field: str = "bytes", scale: int = 1):
    """What data-alt added to r[key_data]: r[key_alt][field] - r[key_data][field]."""
    a, b = val(r, f"{key}_data", field, scale), val(r, f"{key}_alt", field, scale)
    return None if a is None or b is None else b - a


class Steps:
    """Runs commands with bench_core.run; records every step, ok or FAILED."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.done: list[dict] = []

    def run(self, tool, label, cmd, *, env, warm=(), cwd=None, want_json=False,
            shown_env=()) -> dict:
        """shown_env: names of the variables of env the command needs (shown in its line)."""
        shown = [f"{k}={env[k]}" for k in shown_env]
        st = {"tool": tool, "label": label, "cmd": shlex.join([*shown, *map(str, cmd)]),
              "ok": False, "seconds": None, "json": None, "error": None}
        self.done.append(st)
        try:
            dt, p = bc.run(cmd, env=env, timeout=self.timeout, warm=warm, cwd=cwd)
            st["json"] = bc.parse_json_out(p.stdout, p.stderr) if want_json else None
        except StepFailed as e:
            st["error"] = str(e)
            log(f"FAILED {tool} {label}: {e}\n    reproduce: {st['cmd']}")
            raise
        st["ok"], st["seconds"] = True, dt
        log(f"{tool} {label}: {dt:.2f} s")
        return st


# --------------------------------------------------------------------------- #
# corpus
# --------------------------------------------------------------------------- #


def dist_name(req_or_wheel: str) -> str:
    return req_or_wheel.split("==")[0].split("-")[0].lower().replace("_", "-")


def ensure_wheels(py: Path, cache: Path) -> Path:
    """CACHE/wheels holds both venvs' wheels: seeded from SEED_WHEELS, the rest
    fetched once with ``pip download --only-binary=:all:``."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = {dist_name(p) for pins in PINS.values() for p in pins}
    for whl in sorted(SEED_WHEELS.glob("*.whl")) if SEED_WHEELS.is_dir() else []:
        if dist_name(whl.name) in wanted and not (wheels / whl.name).exists():
            shutil.copy2(whl, wheels / whl.name)
    for pins in PINS.values():
        bc.ensure_wheels(py, cache, pins)
    return wheels


def venv_dir(work: Path, name: str) -> Path:
    """0.6.2 refuses a file that holds the venv folder's name outside its full
    path ("make sure the last component is a long random string"): name-<hex>."""
    return work / "corpus" / f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:20]}"


def build_venv(py: Path, wheels: Path, name: str, venv: Path) -> dict:
    log(f"building {name} in {venv}: {' '.join(PINS[name])}")
    freeze = bc.build_source_venv(py, wheels, PINS[name], venv, prompt=name)
    return {"path": str(venv), "pins": PINS[name], "installed": freeze,
            **bc.tree_stats(venv)}


# --------------------------------------------------------------------------- #
# this vocker
# --------------------------------------------------------------------------- #


class Vocker:
    """This vocker, always with --home STORE (and VOCKER_HOME=STORE)."""

    def __init__(self, cmd: list[str], steps: Steps, pythonpath: str | None):
        self.cmd, self.steps, self.pythonpath = cmd, steps, pythonpath
        self.warm = [REPO_ROOT / "vocker.py"] if pythonpath else []

    def env(self, store: Path) -> dict:
        env = dict(os.environ, VOCKER_HOME=str(store))
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def __call__(self, label, store: Path, *args, warm=()) -> dict:
        return self.steps.run("vocker", label, self.cmd + ["--home", str(store), *map(str, args)],
                              env=self.env(store), warm=[*warm, *self.warm], want_json=True)

    def pull_args(self, repo: Path, tag: str) -> list[str]:
        """``pull TAG --from REPO`` if this vocker's pull has --from, else ``pull REPO TAG``."""
        p = subprocess.run(self.cmd + ["pull", "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=self.env(Path(os.devnull)))
        return ["pull", tag, "--from", str(repo)] if "--from" in p.stdout else [
            "pull", str(repo), tag]


def bench_vocker(vk: Vocker, venvs: dict, work: Path, r: dict) -> None:
    """Fills r as it goes, so a failing step leaves what was measured before it."""
    store, repo, pulled = work / "vocker/store", work / "vocker/repo", work / "vocker/pull-store"
    for name, key in (("data", "data"), ("data-alt", "alt")):
        st = vk(f"commit {name}", store, "commit", venvs[name], "-t", TAGS[name], "--json",
                warm=[venvs[name]])
        r[f"image_{key}"], r[f"commit_{key}_s"] = st["json"].get("id"), st["seconds"]
        r[f"store_{key}"] = size_of(store)
        st = vk(f"push {name}", store, "push", TAGS[name], repo, "--json", warm=[store])
        r[f"push_{key}_s"], r[f"push_{key}_bytes"] = st["seconds"], st["json"].get("bytes")
        r[f"repo_{key}"] = size_of(repo)
    for name, key in (("data", "data"), ("data-alt", "alt")):
        st = vk(f"pull {name}", pulled, *vk.pull_args(repo, TAGS[name]), "--json", warm=[repo])
        img = (st["json"].get("images") or [{}])[0]
        r[f"pull_{key}_s"], r[f"pull_{key}_bytes"] = st["seconds"], st["json"].get("bytes")
        r[f"pull_{key}_fetched_blobs"] = img.get("fetched_blobs")
        r[f"pull_{key}_same_id"] = img.get("id") == r[f"image_{key}"]
    r["pull_store"] = size_of(pulled)


# --------------------------------------------------------------------------- #
# vocker 0.6.2
# --------------------------------------------------------------------------- #


def ensure_v062(cache: Path, base_py: Path) -> Path:
    """CACHE/vocker-0.6.2-venv: vocker 0.6.2 and its dependencies from PyPI (the
    machine's pip configuration), made once. Returns its python."""
    venv = cache / "vocker-0.6.2-venv"
    py = venv / "bin/python"
    check = ("import importlib.metadata as m, tqdm, vocker.cli; "
             "assert m.version('vocker') == '0.6.2'")
    if py.exists() and subprocess.run([str(py), "-I", "-c", check],
                                      stderr=subprocess.DEVNULL).returncode == 0:
        return py
    log(f"installing {' '.join(V062_SPEC)} into {venv} (once)")
    rmtree(venv)
    bc.run([base_py, "-m", "venv", venv], sync=False)
    bc.run([py, "-m", "pip", "install", "-q", *V062_SPEC], sync=False)
    bc.run([py, "-I", "-c", check], sync=False)
    return py


class V062:
    """``python -I -m vocker`` of the 0.6.2 venv with VOCKER_BASE=BASE (its
    store: local repositories under BASE/repo/local/NAME, hardlinked to
    BASE/repo/dup). -I: the checkout's vocker.py must not shadow it."""

    def __init__(self, py: Path, steps: Steps, cwd: Path):
        self.cmd, self.steps, self.cwd = [str(py), "-I", "-m", "vocker"], steps, cwd

    def __call__(self, label, base: Path, *args, warm=(), want_json=False) -> dict:
        env = dict(os.environ, VOCKER_BASE=str(base))
        env.pop("PYTHONPATH", None)
        return self.steps.run("0.6.2", label, self.cmd + [str(a) for a in args], env=env,
                              warm=warm, cwd=self.cwd, want_json=want_json,
                              shown_env=["VOCKER_BASE"])


@contextlib.contextmanager
def lib64_aside(venv: Path, keep: bool):
    """0.6.2's importer follows the lib64 -> lib symlink of a Linux venv and
    stores site-packages twice; unless keep, the symlink is moved out of the
    venv for the import and put back after it."""
    link, aside = venv / "lib64", venv.parent / f"{venv.name}.lib64"
    if keep or not link.is_symlink():
        yield
        return
    link.rename(aside)
    try:
        yield
    finally:
        aside.rename(link)


def bench_v062(v: V062, venvs: dict, work: Path, r: dict, keep_lib64: bool) -> None:
    """Fills r as it goes, so a failing step leaves what was measured before it."""
    base, base_dl, remote = work / "v062/base", work / "v062/base-download", work / "v062/remote"
    local = base / "repo/local" / V062_REPO
    remote.mkdir(parents=True)
    v("repo init", base, "repo", "init", V062_REPO)
    for name, key in (("data", "data"), ("data-alt", "alt")):
        with lib64_aside(venvs[name], keep_lib64):
            st = v(f"image import {name}", base, "image", "import", "--repository", V062_REPO,
                   venvs[name], warm=[venvs[name]], want_json=True)
        r[f"image_{key}"], r[f"import_{key}_s"] = st["json"].get("image_id"), st["seconds"]
        r[f"local_{key}"], r[f"base_{key}"] = size_of(local), size_of(base)
        # the second upload needs --force: 0.6.2 does not record the upload it
        # made, so it sees the remote's top-level digest as changed by someone else
        force = ["--force", "yes"] if key == "alt" else []
        st = v(f"repo upload ({name} added)", base, "repo", "upload", V062_REPO,
               "--to", remote.as_uri(), *force, warm=[base])
        r[f"upload_{key}_s"], r[f"remote_{key}"] = st["seconds"], size_of(remote)
        if key == "data":
            st = v("repo download (data) into a fresh local repository", base_dl, "repo",
                   "download", remote.as_uri(), V062_REPO, warm=[remote])
            r["download_data_s"] = st["seconds"]
            r["download_local"] = size_of(base_dl / "repo/local" / V062_REPO)
            rmtree(base_dl)


# --------------------------------------------------------------------------- #
# targets and report
# --------------------------------------------------------------------------- #


def mbps(content_bytes: int, seconds) -> float | None:
    return None if not seconds else content_bytes / 1e6 / seconds


def judge(label: str, value, bound, unit: str, op: str = "<=") -> dict:
    if value is None or bound is None:
        status = "n/a"
    else:
        status = "PASS" if (value <= bound if op == "<=" else value >= bound) else "MISS"
    return {"label": label, "value": value, "bound": bound, "unit": unit, "op": op,
            "status": status}


def targets(new: dict, old: dict, content: int) -> list[dict]:
    repo, old_repo = val(new, "repo_data"), val(old, "remote_data")
    g, old_g = growth(new, "repo"), growth(old, "remote")
    to_mb = (lambda x: None if x is None else x / 1e6)
    return [
        judge("this vocker's repository after data", to_mb(repo), TARGET_REPO_MB, "MB"),
        judge("... and no larger than 0.6.2's", to_mb(repo), to_mb(old_repo), "MB"),
        judge("its growth after data-alt", to_mb(g), TARGET_GROWTH_MB, "MB"),
        judge("... and no larger than 0.6.2's", to_mb(g), to_mb(old_g), "MB"),
        judge("pull of data from a local folder", mbps(content, new.get("pull_data_s")),
              TARGET_PULL_MBPS, "MB/s of content", ">="),
    ]


def ratio(a, b) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}"


def size_rows(new: dict, old: dict) -> list[str]:
    rows = [
        ("repository after data (upload / push)", val(old, "remote_data"), val(new, "repo_data")),
        ("growth after data-alt", growth(old, "remote"), growth(new, "repo")),
        ("repository after both", val(old, "remote_alt"), val(new, "repo_alt")),
        ("local repository / store after data: files", val(old, "local_data"),
         val(new, "store_data")),
        ("... du of VOCKER_BASE / of the store", val(old, "base_data", "du_kb", 1024),
         val(new, "store_data", "du_kb", 1024)),
        ("local growth after data-alt: files", growth(old, "local"), growth(new, "store")),
        ("... du", growth(old, "base", "du_kb", 1024), growth(new, "store", "du_kb", 1024)),
    ]
    return [f"| {label} | {mb(a)} | {mb(b)} | {ratio(b, a)} |" for label, a, b in rows]


def time_rows(new: dict, old: dict, content: int) -> list[str]:
    def cell(s, extra=""):
        return "—" if s is None else secs(s) + extra

    def rate(s):
        m = mbps(content, s)
        return "" if m is None else f" ({m:.0f} MB/s)"
    alt = new.get("pull_alt_bytes")
    rows = [
        ("data: import / commit", old.get("import_data_s"), new.get("commit_data_s"), "", ""),
        ("data: upload / push", old.get("upload_data_s"), new.get("push_data_s"), "", ""),
        ("data-alt: import / commit", old.get("import_alt_s"), new.get("commit_alt_s"), "", ""),
        ("data-alt: upload / push", old.get("upload_alt_s"), new.get("push_alt_s"), "", ""),
        ("data into an empty local repository / store: download / pull",
         old.get("download_data_s"), new.get("pull_data_s"),
         rate(old.get("download_data_s")), rate(new.get("pull_data_s"))),
        ("data-alt next to data: — / pull", None, new.get("pull_alt_s"), "",
         "" if alt is None else f" ({mb(alt)} fetched)"),
    ]
    return [f"| {label} | {cell(a, ea)} | {cell(b, eb)} | {ratio(b, a)} |"
            for label, a, b, ea, eb in rows]


def render(meta: dict, new: dict, old: dict, tgts: list[dict], steps: list[dict]) -> str:
    c = meta["corpus"]
    L = ["# vocker wire benchmark: repository size and transfer, against vocker 0.6.2", ""]
    L.append(f"- date: {meta['date']}; machine: {meta['machine']}  ")
    L.append(f"- python (venvs): {meta['python']}; this vocker: `{meta['vocker_cmd']}`"
             + (f" (vocker.py sha256 {meta['vocker_py_sha256']})" if "vocker_py_sha256" in meta
                else "") + "  ")
    L.append(f"- vocker 0.6.2: {meta['v062']}  ")
    for name, v in c.items():
        L.append(f"- venv {name}: `{' '.join(v['pins'])}` → {v['mb']:.1f} MB in "
                 f"{v['files']:,} files (+{v['symlinks']} symlinks, no pyc)  ")
    L.append("- sizes: sum of regular-file sizes (du where said: a hardlinked file once); "
             "times: wall clock, one run, warm page cache, `sync` before each step; "
             "MB/s = MB of the venv's content / seconds; MB = 10^6 bytes")
    L += ["", "## Sizes", "", "| | vocker 0.6.2 | this vocker | this / 0.6.2 |",
          "| --- | ---: | ---: | ---: |", *size_rows(new, old), ""]
    L += ["## Times (s)", "", "| step | vocker 0.6.2 | this vocker | this / 0.6.2 |",
          "| --- | ---: | ---: | ---: |", *time_rows(new, old, c["data"]["bytes"]), ""]
    L.append("0.6.2's `repo download` copies a whole repository into a new local one; it has "
             "no step that fetches only what data-alt adds.")
    L += ["", "## Targets", ""]
    for t in tgts:
        v = "—" if t["value"] is None else f"{t['value']:.2f}"
        b = "—" if t["bound"] is None else f"{t['bound']:.2f}"
        L.append(f"- **{t['status']}** {t['label']}: {v} {t['unit']} (target {t['op']} {b})")
    L += ["", "## Checks", ""]
    for key in ("data", "alt"):
        if f"pull_{key}_same_id" in new:
            L.append(f"- this vocker, pull {key}: {new.get(f'pull_{key}_fetched_blobs')} blobs "
                     f"fetched, image ID {'as committed' if new[f'pull_{key}_same_id'] else 'DIFFERENT'}")
    if "download_local" in old:
        L.append(f"- 0.6.2 images: data `{old.get('image_data')}`, data-alt "
                 f"`{old.get('image_alt')}`; its download of data wrote "
                 f"{mb(val(old, 'download_local'))} of local repository files")
    for label, r in (("this vocker", new), ("vocker 0.6.2", old)):
        if r.get("stopped"):
            L.append(f"- {label} stopped: {r['stopped']}")
    L += ["", "## Commands", ""]
    for s in steps:
        cmd = s["cmd"].replace(meta["work"], "WORK")
        L.append(f"- {s['tool']} {s['label']}: `{cmd}`" + ("" if s["ok"] else " — FAILED"))
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"scratch dir, removed at the end unless --keep (default {DEFAULT_WORK})")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache",
                    help="wheels/ and vocker-0.6.2-venv/, kept between runs (default bench/.cache)")
    ap.add_argument("--vocker", default=None,
                    help="this vocker's command line (default: '<this python3> -m vocker' from "
                         "this checkout, bytecode compiled first)")
    ap.add_argument("--python", type=Path, default=bc.DEFAULT_PY if bc.DEFAULT_PY.exists()
                    else Path(sys.executable),
                    help=f"base interpreter of the venvs (default {bc.DEFAULT_PY})")
    ap.add_argument("--v062-python", type=Path, default=V062_PY,
                    help=f"Python 3.13+ for 0.6.2's venv (default {V062_PY})")
    ap.add_argument("--v062-lib64", action="store_true",
                    help="let 0.6.2 import the venvs' lib64 symlink (it stores site-packages twice)")
    ap.add_argument("--skip-v062", action="store_true", help="this vocker only")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds before a command is called FAILED (default 1800)")
    ap.add_argument("--keep", action="store_true", help="do not remove the work dir")
    return ap.parse_args(argv)


def vocker_command(arg: str | None) -> tuple[list[str], str | None]:
    """(command, PYTHONPATH for it); the default is bench_core's."""
    if arg:
        return shlex.split(arg), None
    subprocess.run([sys.executable, "-m", "py_compile", str(REPO_ROOT / "vocker.py")], check=True)
    return [sys.executable, "-m", "vocker"], str(REPO_ROOT)


def make_meta(args, work: Path, vocker: list[str], default_vocker: bool) -> dict:
    meta = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
                   f"{os.cpu_count()} cores",
        "work": str(work), "cache": str(args.cache.resolve()), "vocker_cmd": shlex.join(vocker),
        "python": subprocess.run([str(args.python), "-c", "import sys; print(sys.version.split()"
                                  "[0], sys.executable)"], stdout=subprocess.PIPE,
                                 text=True).stdout.strip(),
        "targets": {"repo_mb": TARGET_REPO_MB, "growth_mb": TARGET_GROWTH_MB,
                    "pull_mb_per_s": TARGET_PULL_MBPS},
        "corpus": {},
    }
    if default_vocker:
        meta["vocker_py_sha256"] = hashlib.sha256(
            (REPO_ROOT / "vocker.py").read_bytes()).hexdigest()[:16]
    return meta


def run_tool(label: str, fn, r: dict) -> None:
    try:
        fn()
    except StepFailed as e:
        r["stopped"] = str(e)
        log(f"{label} stopped: {e}")


def describe_v062(py: Path, keep_lib64: bool) -> str:
    out = subprocess.run([str(py), "-I", "-m", "pip", "freeze"], stdout=subprocess.PIPE,
                         text=True).stdout.split()
    ver = subprocess.run([str(py), "-c", "import sys; print(sys.version.split()[0])"],
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    how = ("venvs imported with their lib64 symlink" if keep_lib64 else
           "lib64 symlink moved out of each venv during its import (0.6.2 follows it and "
           "stores site-packages twice)")
    return f"`{py} -I -m vocker` (Python {ver}; {' '.join(out)}); {how}"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work, cache, py = args.work.resolve(), args.cache.resolve(), args.python
    vocker, pythonpath = vocker_command(args.vocker)
    bc.prepare_work(work, WORK_MARKER, "bench_wire.py")
    meta = make_meta(args, work, vocker, pythonpath is not None)
    meta["v062"] = "skipped (--skip-v062)" if args.skip_v062 else "not run"
    steps = Steps(args.timeout)
    new, old = {}, {}
    try:
        wheels = ensure_wheels(py, cache)
        venvs = {name: venv_dir(work, name) for name in PINS}
        for name, venv in venvs.items():
            meta["corpus"][name] = build_venv(py, wheels, name, venv)
        vk = Vocker(vocker, steps, pythonpath)
        run_tool("this vocker", lambda: bench_vocker(vk, venvs, work, new), new)
        if not args.skip_v062:
            def v062():
                v062_py = ensure_v062(cache, args.v062_python)
                meta["v062"] = describe_v062(v062_py, args.v062_lib64)
                bench_v062(V062(v062_py, steps, work), venvs, work, old, args.v062_lib64)
            run_tool("vocker 0.6.2", v062, old)
    finally:
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            rmtree(work)

    tgts = targets(new, old, meta["corpus"]["data"]["bytes"])
    md = render(meta, new, old, tgts, steps.done)
    (HERE / "results-wire.md").write_text(md)
    (HERE / "results-wire.json").write_text(json.dumps(
        {"meta": meta, "vocker": new, "v062": old, "targets": tgts, "steps": steps.done},
        indent=2, default=str) + "\n")
    print(md)
    log(f"wrote {HERE / 'results-wire.md'} and {HERE / 'results-wire.json'}")
    failed = new.get("stopped") or old.get("stopped") or any(
        t["status"] == "MISS" for t in tgts)
    return 1 if failed else 0


if __name__ == "__main__":
    import _setup  # here, not at the top: importing this module must not re-execute anything
    _setup.reexec_in_bench_venv(__file__)
    sys.exit(main())
