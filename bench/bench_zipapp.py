#!/usr/bin/env python3
"""Start-up time of ``vocker.pyz``: ``python vocker.pyz --version``, best of N.

Standard library only. Usage:

    python3 bench/bench_zipapp.py [--pyz PATH] [--python EXE]... [--repeat N]
                                  [--universal]

* ``--pyz PATH``: the zipapp to time (default: build one for this machine with
  ``build_zipapp.py`` into a temporary folder; ``--universal`` builds that one);
* ``--python EXE``: interpreter(s) to run it with (default: this one);
* ``--repeat N``: timed runs per figure, the best is printed (default 5).

Figures, wall clock, each from an empty current folder:

* ``python -c pass`` and ``python -I -S -c pass``: the interpreter alone;
* ``vocker.py --version``: the module from the checkout (needs blake3 and
  zstandard installed for that Python; skipped if they are not);
* **first run**: ``vocker.pyz --version`` with an empty SHIV_ROOT (shiv
  extracts site-packages, Python compiles vocker.py: what a user pays once per
  vocker.pyz version);
* **warm**: the same again with the extraction and the ``.pyc`` files in place.

PYTHONDONTWRITEBYTECODE and the other PYTHON* variables are removed from the
environment (as on a user's machine): with PYTHONDONTWRITEBYTECODE=1 every
"warm" run would compile vocker.py again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "SHIV_", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def timed(cmd, env, cwd) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: "
                           f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return dt


def best(times: list[float]) -> str:
    return (f"{min(times) * 1000:7.0f} ms  (median {statistics.median(times) * 1000:.0f}, "
            f"runs: {', '.join(f'{t * 1000:.0f}' for t in times)})")


def bench(python: str, pyz: Path, repeat: int, work: Path) -> None:
    cwd = work / "empty"
    cwd.mkdir(exist_ok=True)
    env = clean_env()
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"\n## CPython {version} ({python})\n")
    rows = [("python -c pass", [python, "-c", "pass"]),
            ("python -I -S -c pass", [python, "-I", "-S", "-c", "pass"])]
    probe = subprocess.run([python, "-c", "import blake3, zstandard"], env=env,
                           capture_output=True)
    if probe.returncode == 0:
        rows.append(("vocker.py --version (checkout)", [python, REPO / "vocker.py", "--version"]))
    for label, cmd in rows:
        timed(cmd, env, cwd)  # warm the page cache
        print(f"{label:<34} {best([timed(cmd, env, cwd) for _ in range(repeat)])}")

    cmd = [python, pyz, "--version"]
    first = []
    for i in range(repeat):
        root = work / f"shiv-first-{i}"
        first.append(timed(cmd, clean_env(SHIV_ROOT=str(root)), cwd))
        shutil.rmtree(root)
    print(f"{'vocker.pyz --version, first run':<34} {best(first)}")
    warm_env = clean_env(SHIV_ROOT=str(work / "shiv-warm"))
    timed(cmd, warm_env, cwd)
    timed(cmd, warm_env, cwd)
    print(f"{'vocker.pyz --version, warm':<34} "
          f"{best([timed(cmd, warm_env, cwd) for _ in range(repeat)])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyz", type=Path, help="zipapp to time (default: build one)")
    p.add_argument("--python", action="append", default=[], help="interpreter(s) (default: this one)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--universal", action="store_true", help="build the universal zipapp")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vocker-bench-zipapp-") as tmp:
        work = Path(tmp)
        pyz = args.pyz
        if pyz is None:
            pyz = work / "vocker.pyz"
            cmd = [sys.executable, REPO / "build_zipapp.py", "-o", pyz]
            if args.universal:
                cmd.append("--universal")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        pyz = pyz.resolve()
        print(f"# vocker.pyz start-up: {pyz.name}, {pyz.stat().st_size / 1e6:.2f} MB, "
              f"best of {args.repeat}")
        for python in args.python or [sys.executable]:
            bench(python, pyz, args.repeat, work)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _setup  # here, not at the top: importing this module must not re-execute anything
    _setup.reexec_in_bench_venv(__file__)
    sys.exit(main())
