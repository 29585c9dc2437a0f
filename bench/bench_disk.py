#!/usr/bin/env python3
"""Disk benchmark: what vocker's store and containers cost on disk, next to cp -a.

Standard library only (plus bench_core's helpers). Usage:

    python3 bench/bench_disk.py [--work DIR] [--cache DIR] [--vocker CMD] [--quick] [--keep]

On bench_core's corpus (same pins, same wheel cache, same venv build), in one run:

1. ``cp -a C1 REF`` of a container (a plain copy of the environment with its
   .pyc files): the reference; the compileall'd corpus venv is shown next to it;
2. the store alone after ``vocker commit VENV`` into an empty ``--home STORE``;
3. store + 1 container (``vocker create IMAGE C1``: compiles .pyc into the pool);
   the image was never pushed, so its compressed frames stay (they are the only
   copy that could repair a pool file changed through a hardlink);
4. the same after ``vocker push IMAGE REPO`` and ``vocker gc``: a repository
   holds the image, so each pooled blob keeps its pool file alone;
5. store + 2 containers (``vocker create IMAGE C2``);
6. a user's machine: ``vocker pull REPO IMAGE`` into an empty STORE2, then
   ``vocker create IMAGE C3``: STORE2 + C3;
7. after ``vocker rm C1 C2``, ``vocker rmi IMAGE`` and ``vocker gc``: the store
   alone, which must be <= 1 MiB.

Targets (issue 10): rows 4 and 6 <= 1.05x the cp -a; each further container
<= +2% of it.

Each figure is the disk use of the paths measured *together*: every inode under
them (files, folders, symlinks) is counted once by (st_dev, st_ino), as
st_blocks * 512 ("on disk") and st_size ("apparent"); ``du -skc`` of the same
paths is kept as a cross-check. ``vocker df --json`` is recorded after each step.

Writes bench/results-disk.{md,json} (--quick: numpy-only corpus, report on
stdout only).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import stat
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench_core as bc  # noqa: E402  (run, log, rmtree, ensure_wheels, build_corpus, ...)

log, run, rmtree = bc.log, bc.run, bc.rmtree
MIB = 1 << 20
GC_TARGET = 1 * MIB


# --------------------------------------------------------------------------- #
# measuring
# --------------------------------------------------------------------------- #


def disk_use(*paths: Path) -> dict:
    """Disk use of paths together, each inode once (hardlinks across paths too)."""
    seen = set()
    blocks = apparent = files = 0
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root):
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for p in [dirpath] + [os.path.join(dirpath, n) for n in filenames + links]:
                st = os.lstat(p)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    blocks += st.st_blocks * 512
                    apparent += st.st_size
                    files += stat.S_ISREG(st.st_mode)
    return {"paths": [str(p) for p in paths], "inodes": len(seen), "files": files,
            "bytes": blocks, "apparent": apparent, "du_k": bc.du_k(*paths)}


class Vocker:
    """Runs ``VOCKER --home STORE ARGS... --json`` (VOCKER_HOME=STORE too)."""

    def __init__(self, cmd: list[str], store: Path, timeout: float):
        self.cmd, self.store, self.timeout = cmd, store, timeout
        self.env = dict(os.environ, VOCKER_HOME=str(store))
        self.log: list[dict] = []

    def __call__(self, *args) -> tuple[float, object]:
        cmd = self.cmd + ["--home", str(self.store), *map(str, args), "--json"]
        dt, p = run(cmd, env=self.env, timeout=self.timeout, sync=False)
        self.log.append({"cmd": shlex.join(cmd), "s": round(dt, 3)})
        out = p.stdout.strip()
        try:
            return dt, json.loads(out)
        except ValueError:  # progress lines before the JSON object
            return dt, bc.parse_json_out(out, p.stderr)

    def df(self) -> dict:
        return self("df")[1]


def step(key, label, paths, seconds, df=None, **extra) -> dict:
    d = disk_use(*paths)
    log(f"{label}: {d['bytes'] / MIB:.1f} MiB on disk, {d['inodes']:,} inodes ({seconds:.2f} s)")
    return {"key": key, "label": label, "seconds": round(seconds, 3), **d,
            **({"df": df} if df is not None else {}), **extra}


# --------------------------------------------------------------------------- #
# the measured steps
# --------------------------------------------------------------------------- #


def measure_commit(v: Vocker, venv: Path) -> tuple[dict, str]:
    dt, r = v("commit", venv)
    return step("store", "store after `vocker commit VENV`", [v.store], dt, v.df()), r["id"]


def measure_create(v: Vocker, image: str, containers: list[Path]) -> dict:
    dt, r = v("create", image, containers[-1])
    n = len(containers)
    s = step(f"store_c{n}", f"store + {n} container{'s' * (n > 1)}",
             [v.store, *containers], dt, v.df(), link_mode=r.get("link_mode"),
             pyc_compiled=r.get("pyc_compiled"), pyc_cached=r.get("pyc_cached"))
    s["store_only"] = disk_use(v.store)["bytes"]
    return s


def measure_pushed(v: Vocker, image: str, repo: Path, c1: Path) -> dict:
    t0 = time.perf_counter()
    v("push", image, repo)
    _, freed = v("gc")
    s = step("store_c1_pushed", "store + 1 container, after `push REPO` + `gc`",
             [v.store, c1], time.perf_counter() - t0, v.df(), gc=freed)
    s["store_only"] = disk_use(v.store)["bytes"]
    return s


def measure_pulled(v2: Vocker, image: str, repo: Path, c3: Path) -> dict:
    t0 = time.perf_counter()
    v2("pull", repo, image)
    _, r = v2("create", image, c3)
    return step("pulled_c1", "empty STORE2: `pull REPO` + `create C3`", [v2.store, c3],
                time.perf_counter() - t0, v2.df(), link_mode=r.get("link_mode"))


def measure_cp_a(src: Path, dest: Path, key: str, label: str) -> dict:
    dt, _ = run(["cp", "-a", src, dest])
    return step(key, label, [dest], dt)


def measure_cleanup(v: Vocker, image: str, containers: list[Path]) -> dict:
    t0 = time.perf_counter()
    v("rm", *containers)
    v("rmi", image)
    _, freed = v("gc")
    s = step("after_gc", "store after `vocker rm` C1 C2 + `rmi` + `gc`", [v.store],
             time.perf_counter() - t0, v.df(), gc=freed)
    s["containers_left"] = [str(c) for c in containers if c.exists()]
    return s


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #


def pct(x, ref):
    return f"{100 * x / ref:.1f}%"


def render(meta: dict, steps: dict) -> str:
    ref = steps["cp_a"]
    c = meta["corpus"]
    du_ok = all(s["du_k"] * 1024 == s["bytes"] for s in steps.values())
    L = ["# vocker disk benchmark" + (" (quick)" if meta["quick"] else ""), "",
         f"- date: {meta['date']}  ",
         f"- machine: {meta['machine']}; work dir `{meta['work']}` (fs {meta['work_fs']})  ",
         f"- vocker: `{meta['vocker_cmd']}`"
         + (f" (sha256 {meta['vocker_py_sha256']})" if meta.get("vocker_py_sha256") else "")
         + f"; link mode of the containers: "
         f"{steps['store_c1'].get('link_mode')}  ",
         f"- corpus: `{' '.join(meta['pins'])}` → venv of {c['nopyc']['mb']:.1f} MB in "
         f"{c['nopyc']['files']:,} files (no pyc), as in bench_core.py  ",
         "- bytes on disk = sum of st_blocks × 512 over every inode (files, folders, symlinks) "
         "under the paths of a row taken together, each (st_dev, st_ino) once, so a file "
         "hardlinked from the store and from containers counts once; apparent = st_size over "
         "the same inodes; du column = `du -skc` of the same paths, a cross-check "
         f"({'agrees' if du_ok else 'DISAGREES'} with the on-disk column); MiB = 2^20 bytes",
         "", "## Disk use", "",
         "| step | paths | inodes | on disk (bytes) | MiB | / cp -a | apparent (bytes) "
         "| / cp -a | du -sk (KiB) | `vocker df` store (bytes) | s |",
         "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    short = {meta["work"] + "/" + n: n.upper()
             for n in ("ref", "ref-venv", "c1", "c2", "c3", "store", "store2")}
    for s in steps.values():
        paths = " + ".join(short.get(p, p) for p in s["paths"])
        df = s.get("df", {}).get("store")
        L.append(f"| {s['label']} | {paths} | {s['inodes']:,} | {s['bytes']:,} | "
                 f"{s['bytes'] / MIB:.1f} | {s['bytes'] / ref['bytes']:.3f} | "
                 f"{s['apparent']:,} | {s['apparent'] / ref['apparent']:.3f} | "
                 f"{s['du_k']:,} | {'—' if df is None else f'{df:,}'} | {s['seconds']:.2f} |")
    c1, c2, st = steps["store_c1"], steps["store_c2"], steps["store"]
    pushed, pulled = steps["store_c1_pushed"], steps["pulled_c1"]
    inc1, inc2 = c1["bytes"] - st["bytes"], c2["bytes"] - pushed["bytes"]
    one_ok = max(pushed["bytes"], pulled["bytes"]) <= 1.05 * ref["bytes"]
    inc_ok = inc2 <= 0.02 * ref["bytes"]
    gc_ok = steps["after_gc"]["bytes"] <= GC_TARGET
    L += ["", "## Per container", "",
          "| | on disk (bytes) | % of cp -a | of which the store grew |",
          "| --- | ---: | ---: | ---: |",
          f"| 1st container (store + C1 − store) | {inc1:,} | {pct(inc1, ref['bytes'])} | "
          f"{c1['store_only'] - st['bytes']:,} (pool: decompressed files + compiled .pyc) |",
          f"| 2nd container (store + C1 + C2 − store + C1, pushed) | {inc2:,} | "
          f"{pct(inc2, ref['bytes'])} | {c2['store_only'] - pushed['store_only']:,} |",
          "",
          f"- store + 1 container, the image held by a repository: "
          f"{pushed['bytes'] / ref['bytes']:.3f}× (after push + gc), "
          f"{pulled['bytes'] / ref['bytes']:.3f}× (pull + create); never pushed: "
          f"{c1['bytes'] / ref['bytes']:.3f}×; target ≤ 1.05×: **{'PASS' if one_ok else 'FAIL'}**",
          f"- 2nd container: {pct(inc2, ref['bytes'])} of cp -a; target ≤ 2%: "
          f"**{'PASS' if inc_ok else 'FAIL'}**",
          f"- two containers + store: {c2['bytes'] / MIB:.1f} MiB against "
          f"{2 * ref['bytes'] / MIB:.1f} MiB for two `cp -a` copies "
          f"({c2['bytes'] / (2 * ref['bytes']):.3f}×)",
          f"- C1 compiled "
          f"{c1.get('pyc_compiled')} .pyc, C2 compiled {c2.get('pyc_compiled')} and reused "
          f"{c2.get('pyc_cached')} from the pyc cache",
          f"- after rm + rmi + gc: {steps['after_gc']['bytes']:,} bytes; target ≤ 1 MiB "
          f"({GC_TARGET:,} bytes): **{'PASS' if gc_ok else 'FAIL'}**"
          + (f"; containers left on disk: {steps['after_gc']['containers_left']}"
             if steps['after_gc']['containers_left'] else ""),
          "", "## `vocker df --json` after each step", "",
          "| step | store | reclaimable | images | containers | image size | unique | shared "
          "| saved |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in steps.values():
        df = s.get("df")
        if df is None:
            continue
        im = df["images"][0] if df["images"] else {}
        cells = [f"{im[k]:,}" if k in im else "—"
                 for k in ("size", "unique", "shared", "saved")]
        L.append(f"| {s['label']} | {df['store']:,} | {df['reclaimable']:,} | "
                 f"{len(df['images'])} | {df['containers']} | " + " | ".join(cells) + " |")
    L += ["", "## Commands", ""]
    L += [f"- `{c['cmd'].replace(meta['work'], 'WORK').replace(meta['image'], 'IMAGE')}` "
          f"({c['s']:.2f} s)"
          for c in meta["vocker_log"]]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vocker-bench-disk"),
                    help="scratch dir (~1.5 GB), removed at the end")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache",
                    help="wheel cache shared with bench_core.py (default bench/.cache)")
    ap.add_argument("--vocker", default=None,
                    help="vocker command line (default: '<this python> <repo>/vocker.py')")
    ap.add_argument("--python", type=Path, default=bc.DEFAULT_PY if bc.DEFAULT_PY.exists()
                    else Path(sys.executable), help="base interpreter of the corpus venv")
    ap.add_argument("--quick", action="store_true",
                    help="numpy-only corpus; report on stdout only, no results files")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--keep", action="store_true", help="do not remove the work dir")
    args = ap.parse_args(argv)

    pins = bc.PINS_QUICK if args.quick else bc.PINS_FULL
    work, cache = args.work.resolve(), args.cache.resolve()
    vocker = shlex.split(args.vocker) if args.vocker else [sys.executable, str(REPO / "vocker.py")]
    bc.prepare_work(work, ".vocker-bench-disk-workdir", "bench_disk.py")
    meta = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
                       f"{os.cpu_count()} cores",
            "quick": args.quick, "pins": pins, "work": str(work), "vocker_cmd": shlex.join(vocker),
            "work_fs": run(["stat", "-f", "-c", "%T", work], sync=False)[1].stdout.strip()}
    script = next((Path(a) for a in vocker if a.endswith(".py")), None)
    if script is not None and script.exists():
        meta["vocker_py_sha256"] = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    store, c1, c2 = work / "store", work / "c1", work / "c2"
    v = Vocker(vocker, store, args.timeout)
    v2 = Vocker(vocker, work / "store2", args.timeout)
    steps = {}
    t0 = time.perf_counter()
    try:
        wheels = bc.ensure_wheels(args.python, cache, pins)
        venv, venv_pyc = bc.build_corpus(args.python, wheels, pins, work / "corpus", meta)
        meta["corpus"] = {"nopyc": bc.tree_stats(venv),
                          "pyc_all": bc.tree_stats(venv_pyc, skip_pycache=False)}
        t1 = time.perf_counter()
        steps["store"], image = measure_commit(v, venv)
        meta["image"] = image
        steps["store_c1"] = measure_create(v, image, [c1])
        steps["cp_a"] = measure_cp_a(c1, work / "ref", "cp_a", "`cp -a C1 REF` (reference)")
        steps["cp_a_venv"] = measure_cp_a(venv_pyc, work / "ref-venv", "cp_a_venv",
                                          "`cp -a` of the compileall'd venv (for comparison)")
        steps["store_c1_pushed"] = measure_pushed(v, image, work / "repo", c1)
        steps["store_c2"] = measure_create(v, image, [c1, c2])
        steps["pulled_c1"] = measure_pulled(v2, image, work / "repo", work / "c3")
        steps["after_gc"] = measure_cleanup(v, image, [c1, c2])
        meta["seconds_corpus"] = round(t1 - t0, 1)
        meta["seconds_measured"] = round(time.perf_counter() - t1, 1)
    except bc.StepFailed as e:
        sys.exit(f"bench: failed: {e}")
    finally:
        meta["vocker_log"] = v.log + v2.log
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            rmtree(work)

    order = ["cp_a", "cp_a_venv", "store", "store_c1", "store_c1_pushed", "store_c2",
             "pulled_c1", "after_gc"]
    steps = {k: steps[k] for k in order}
    md = render(meta, steps)
    print(md)
    if not args.quick:
        (HERE / "results-disk.md").write_text(md)
        (HERE / "results-disk.json").write_text(json.dumps(
            {"meta": meta, "steps": list(steps.values())}, indent=2) + "\n")
        log(f"wrote {HERE / 'results-disk.md'} and {HERE / 'results-disk.json'}")
    return 0 if steps["after_gc"]["bytes"] <= GC_TARGET else 1  # the other targets: reported


if __name__ == "__main__":
    import _setup  # here, not at the top: importing this module must not re-execute anything
    _setup.reexec_in_bench_venv(__file__)
    sys.exit(main())
