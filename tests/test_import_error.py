"""When blake3 or zstandard cannot be imported, vocker says which and why in
one line (exit 6), with a hint that fits the cause; --debug shows the
original ImportError's traceback.

The failing import is controlled: a PYTHONPATH folder holds a ``blake3.py``
that raises the ImportError Windows raises when a DLL is missing.
"""

import os
import subprocess
import sys
import sysconfig
import zipapp
from pathlib import Path

import pytest

VOCKER = Path(__file__).resolve().parent.parent / "vocker.py"
DLL = "DLL load failed while importing _blake3: The specified procedure could not be found."
HERE = f"Python {sys.version_info[0]}.{sys.version_info[1]} on {sysconfig.get_platform()}"


def run_broken(tmp_path, body, *argv, pyz=False, module="blake3"):
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    (fake / f"{module}.py").write_text(body)
    script = VOCKER
    if pyz:  # the same module as a zipapp's __main__: sys.argv[0] ends in .pyz
        src = tmp_path / "app"
        src.mkdir(exist_ok=True)
        (src / "__main__.py").write_bytes(VOCKER.read_bytes())
        script = tmp_path / "vocker.pyz"
        zipapp.create_archive(src, script)
    env = dict(os.environ, PYTHONPATH=str(fake), VOCKER_HOME=str(tmp_path / "home"))
    return subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("pyz", [False, True])
def test_dll_load_failure_is_named_with_its_hint(tmp_path, pyz):
    r = run_broken(tmp_path, f"raise ImportError({DLL!r})\n", "images", pyz=pyz)
    assert r.returncode == 6, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"vocker: error: cannot load blake3 for {HERE}: {DLL}; ")
    assert "runtime DLL" in lines[0] and "update Windows" in lines[0]
    assert "has no blake3" not in lines[0]


def test_missing_module_in_a_pyz_says_rebuild_it(tmp_path):
    r = run_broken(tmp_path, "raise ModuleNotFoundError(\"No module named 'blake3'\", "
                   "name='blake3')\n", "images", pyz=True)
    assert r.returncode == 6
    assert f"this vocker.pyz has no blake3/zstandard modules for {HERE}" in r.stderr
    assert "rebuild the .pyz for this Python" in r.stderr


def test_other_import_error_outside_a_pyz_says_reinstall(tmp_path):
    r = run_broken(tmp_path, "raise ImportError('bad magic number')\n", "ps")
    assert r.returncode == 6
    assert f"cannot load blake3 for {HERE}: bad magic number; reinstall it" in r.stderr


def test_debug_shows_the_original_traceback(tmp_path):
    r = run_broken(tmp_path, f"raise ImportError({DLL!r})\n", "--debug", "images")
    assert r.returncode == 6
    assert "Traceback" in r.stderr and 'blake3.py", line 1' in r.stderr
    assert f"ImportError: {DLL}" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("vocker: error: cannot load blake3")


def test_a_broken_zstandard_fails_only_the_commands_that_need_it(tmp_path):
    """zstandard is imported on first use: a create from a warm store and the
    listings never need it, so they start faster and work without it."""
    body = f"raise ImportError({DLL.replace('_blake3', '_zstd')!r})\n"
    r = run_broken(tmp_path, body, "images", module="zstandard")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    r = run_broken(tmp_path, body, "commit", str(src), "--kind", "plain", module="zstandard")
    assert r.returncode == 6, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"vocker: error: cannot load zstandard for {HERE}: ")
    assert "runtime DLL" in lines[0]
