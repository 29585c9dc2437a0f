"""Run a bench script inside bench/.venv, which holds vocker (editable) and uv.

Each bench script calls ``reexec_in_bench_venv(__file__)`` first: on the first
run it makes bench/.venv with the interpreter running the script and
``pip install -e <repo>[build] uv``; then it re-executes the script there, with
bench/.venv/bin first on PATH. VOCKER_BENCH_NO_VENV=1 skips all of this.
"""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
HOW = (f"python3 -m venv {VENV} && {VENV}/bin/pip install -e '{REPO}[build]' uv")


def _venv_python():
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _inside():
    return Path(sys.prefix).resolve() == VENV.resolve()


def _make_venv():
    print(f"bench: setting up {VENV} (vocker + uv), once", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(_venv_python()), "-m", "pip", "install", "-q", "-e",
                    f"{REPO}[build]", "uv"], check=True)


def reexec_in_bench_venv(script):
    """Re-execute `script` with bench/.venv's python (made on first use)."""
    if _inside() or os.environ.get("VOCKER_BENCH_NO_VENV") == "1":
        return
    py = _venv_python()
    try:
        if not py.exists() or subprocess.run(
                [str(py), "-c", "import blake3, zstandard, vocker, uv"],
                stderr=subprocess.DEVNULL).returncode != 0:
            _make_venv()
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"bench: could not set up {VENV} ({e}); make it by hand: {HOW}")
    env = dict(os.environ)
    env["PATH"] = str(py.parent) + os.pathsep + env.get("PATH", "")
    env.pop("VIRTUAL_ENV", None)
    os.execve(str(py), [str(py), str(Path(script).resolve())] + sys.argv[1:], env)
