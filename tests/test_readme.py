"""The README's Quick start runs, pasted verbatim, in an empty folder with an empty store."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import posix_only

README = Path(__file__).resolve().parent.parent / "README.md"


def section(text, title):
    """The body of the `## title` section of a Markdown text."""
    m = re.search(r"^## " + re.escape(title) + r"\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def shell_blocks(body):
    """The ```sh blocks of a Markdown section, in order."""
    return re.findall(r"^```sh\n(.*?)^```", body, re.M | re.S)


def test_quick_start_has_a_shell_block():
    blocks = shell_blocks(section(README.read_text(encoding="utf-8"), "Quick start"))
    assert blocks and "vocker commit" in blocks[0]


@posix_only("the Quick start is a bash script (the Windows lane runs the batch idiom)")
def test_quick_start_runs_verbatim(tmp_path):
    script = "set -euo pipefail\n" + "\n".join(
        shell_blocks(section(README.read_text(encoding="utf-8"), "Quick start")))
    venv = Path(sys.prefix)
    assert (venv / "bin" / "vocker").exists(), "the test venv has no vocker script (pip install -e .)"
    run_dir = tmp_path / "clone"
    run_dir.mkdir()
    (run_dir / ".venv").symlink_to(venv)  # the two commands leave vocker in .venv
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOCKER_", "VIRTUAL_ENV"))}
    env["TMPDIR"] = str(tmp_path)  # mktemp -d lands here, and is cleaned up with it
    r = subprocess.run(["bash", "-c", script], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"^[0-9a-f]{64}$", out, re.M), out
    assert re.search(r"^web:1\.0 +[0-9a-f]{12} +venv ", out, re.M), out
    assert re.search(r"created \S+/web-2 from [0-9a-f]{12} \(\w+, [1-9]\d* compiled, 0 cached", out), out
    assert re.search(r"pushed [0-9a-f]{12} as web:1\.0", out), out
    assert re.search(r"pulled [0-9a-f]{64} as web:1\.0", out), out
    assert re.search(r"created \S+/web-3 from [0-9a-f]{12} \(\w+, 0 compiled, [1-9]\d* cached", out), out


@posix_only("the Build and audit example is a bash script")
def test_build_and_audit_runs_verbatim(tmp_path):
    script = "set -euo pipefail\n" + "\n".join(
        shell_blocks(section(README.read_text(encoding="utf-8"), "Build and audit")))
    run_dir = tmp_path / "clone"
    run_dir.mkdir()
    (run_dir / ".venv").symlink_to(Path(sys.prefix))
    (run_dir / "tests").symlink_to(README.parent / "tests")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOCKER_", "VIRTUAL_ENV"))}
    env["TMPDIR"] = str(tmp_path)
    r = subprocess.run(["bash", "-c", script], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    built = r.stdout.split()[0]
    assert re.fullmatch(r"[0-9a-f]{64}", built), r.stdout
    assert "COPY hello.py app/" in r.stdout
    assert f"pulled {built} as hello:1" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == f"reproduced {built}", r.stdout
