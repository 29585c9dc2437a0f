#!/usr/bin/env python3
"""Kill soak (issue 10): 100 trials of ``vocker gc``, ``commit``, ``create`` and
``pull``, each killed with SIGKILL at a random point, then ``verify --full``
(must be clean) and the same command again (must complete); at the end
``verify --full`` and a create of every image.

    python3 bench/bench_soak.py [--trials 100] [--files 1500] [--seed 1] [--work DIR]

Trials go on until ``--trials`` commands were really killed (one that
finished before its kill is listed, verified, and not counted).

The trial driver is tests/soak.py (the suite runs 8 of these trials on a
smaller store). ``--files`` sets each image's file count: more files make each
command longer, so more kills land inside its work rather than at start-up.
Writes bench/results-soak.{md,json}; exits 1 if any trial broke a promise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
import bench_core as bc  # noqa: E402
import soak  # noqa: E402


def render(meta, log, end):
    L = ["# vocker kill soak", "",
         f"- date: {meta['date']}; machine: {meta['machine']}  ",
         f"- {meta['trials']} trials, {meta['kills']} of them killed, {meta['files']} files per image, seed {meta['seed']}; "
         f"one unkilled run took (s): "
         + ", ".join(f"{k} {v:.2f}" for k, v in meta["took"].items()) + "  ",
         "- each trial: the command is started, killed (SIGKILL) after a delay drawn from "
         "[0, 1.2 × its unkilled time], then `verify --full` and the command again", "",
         "| command | trials | killed | finished before the kill | verify --full clean "
         "| re-run of a killed one completed |",
         "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for what in soak.COMMANDS:
        ts = [t for t in log if t["command"] == what]
        k = [t for t in ts if t["killed"]]
        L.append(f"| {what} | {len(ts)} | {len(k)} | {len(ts) - len(k)} | "
                 f"{sum(t['verify_rc'] == 0 for t in ts)} | "
                 f"{sum(t['rerun_rc'] == 0 for t in k)} of {len(k)} |")
    bad = soak.failures(log)
    L += ["", f"- failed trials: {len(bad)}" + "".join(
              f"\n  - {t['command']} killed at {t['delay']} s: verify rc {t['verify_rc']}, "
              f"re-run rc {t['rerun_rc']} {t['rerun_err']!r} {t['problems'][:2]}" for t in bad),
          f"- at the end: verify --full rc {end['verify_rc']}, {end['created']} of "
          f"{end['images']} images created", f"- {meta['seconds']:.0f} s in all", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--files", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vocker-bench-soak"))
    args = ap.parse_args(argv)
    work = args.work.resolve()
    bc.prepare_work(work, ".vocker-bench-soak-workdir", "bench_soak.py")
    env = {k: v for k, v in os.environ.items() if k != "VOCKER_HOME"}
    t0 = time.monotonic()
    s = soak.Soak(work, [sys.executable, str(REPO / "vocker.py")], env, seed=args.seed,
                  files=args.files).setup()
    kills = 0
    while kills < args.trials and len(s.log) < 3 * args.trials:
        t = s.trial()
        kills += t["killed"]
        bc.log(f"trial {len(s.log)}: {t['command']} "
               + (f"killed at {t['delay']} s" if t["killed"] else "finished before the kill")
               + f" -> verify {t['verify_rc']}, re-run {t['rerun_rc']}")
    end = s.final()
    meta = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            "trials": len(s.log), "kills": kills, "files": args.files, "seed": args.seed,
            "took": {k: round(v, 3) for k, v in s.took.items()},
            "seconds": time.monotonic() - t0,
            "commands": dict(Counter(t["command"] for t in s.log))}
    md = render(meta, s.log, end)
    print(md)
    (HERE / "results-soak.md").write_text(md)
    (HERE / "results-soak.json").write_text(json.dumps(
        {"meta": meta, "trials": s.log, "end": end}, indent=2) + "\n")
    bc.rmtree(work)
    return 1 if soak.failures(s.log) or end["verify_rc"] or end["created"] < end["images"] else 0


if __name__ == "__main__":
    import _setup  # here, not at the top: importing this module must not re-execute anything
    _setup.reexec_in_bench_venv(__file__)
    sys.exit(main())
