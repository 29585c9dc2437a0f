"""The portable ``vocker.pyz`` (issue 4): build it with build_zipapp.py, run it as a user would.

One build per test session (module fixture), for this machine and CPython
3.11-3.14.  The wheels of blake3/zstandard come from the cache ``build/wheels``
(filled from PyPI on the first run); without network and without a cache the
tests skip, naming the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import sys
import time
import zipfile

import pytest

from conftest import clean_env, make_venv, main_python, require_python, run, venv_script

REPO = pathlib.Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "build_zipapp.py"
EXIT_FETCH = 3  # build_zipapp.py: wheels not cached and the index unreachable
PYTHONS = ("3.11", "3.12", "3.13")


def _vocker_version() -> str:
    text = (REPO / "vocker.py").read_text(encoding="utf-8")
    return re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)[1]


def _build(out: pathlib.Path, *extra) -> pathlib.Path:
    proc = run([sys.executable, BUILD_SCRIPT, "-o", out, *extra], check=False, timeout=600,
               cwd=out.parent)
    if proc.returncode == EXIT_FETCH:
        pytest.skip("cannot build vocker.pyz: PyPI is unreachable and build/wheels has no "
                    "cached blake3/zstandard wheels\n" + proc.stderr[-1500:])
    assert proc.returncode == 0, f"build_zipapp.py failed:\n{proc.stdout}\n{proc.stderr}"
    assert out.is_file()
    return out


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> pathlib.Path:
    """vocker.pyz for this machine, built once."""
    return _build(tmp_path_factory.mktemp("pyz") / "vocker.pyz")


@pytest.fixture(scope="module")
def build_module():
    spec = importlib.util.spec_from_file_location("build_zipapp", BUILD_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class User:
    """Runs ``python vocker.pyz ...`` from an empty folder with an empty shiv root."""

    def __init__(self, python, pyz, base: pathlib.Path):
        self.python, self.pyz = python, pyz
        self.cwd = base / "empty cwd"
        self.cwd.mkdir(parents=True)
        self.home = base / "vocker home"
        self.shiv_root = base / "shiv root"
        self.env = clean_env({"SHIV_ROOT": os.fspath(self.shiv_root)})

    def vocker(self, *args, rc=0):
        proc = run([self.python, self.pyz, *args], env=self.env, cwd=self.cwd, check=False,
                   timeout=180)
        assert proc.returncode == rc, (
            f"vocker {' '.join(map(str, args))}: rc={proc.returncode}, want {rc}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        return proc

    def json(self, *args):
        proc = self.vocker("--home", self.home, *args, "--json")
        return json.loads(proc.stdout)


@pytest.mark.parametrize("minor", PYTHONS)
def test_pyz_as_a_user(pyz, minor, tmp_path, wheelhouse):
    python = require_python(minor)
    base = tmp_path / "dir with space"
    user = User(python, pyz, base)

    # --version, from an empty SHIV_ROOT: extracts there (not to ~/.vocker/shiv)
    proc = user.vocker("--version")
    assert proc.stdout.strip() == f"vocker {_vocker_version()}"
    extracted = list(user.shiv_root.glob("vocker.pyz_*/site-packages/vocker.py"))
    assert len(extracted) == 1, list(user.shiv_root.iterdir())

    # commit a real venv
    venv = make_venv(python, base / "src env" / "venv", ["vockdemo==1.0"], wheelhouse=wheelhouse)
    image = user.json("commit", venv, "-t", "demo:1")
    assert re.fullmatch(r"[0-9a-f]{64}", image["id"])

    # create it elsewhere and run the copy's console script
    copy = base / "copy env" / "venv"
    created = user.json("create", "demo:1", copy)
    assert created["path"] == os.fspath(copy)
    out = run([venv_script(copy, "vockdemo")], env=clean_env(), cwd=user.cwd).stdout
    assert out.startswith("vockdemo 1.0 from "), out
    assert os.fspath(copy) in out

    images = user.json("images")
    assert [(i["id"], i["tags"], i["python"]["version"][:len(minor) + 1]) for i in images] == \
        [(image["id"], ["demo:1"], minor + ".")]
    ps = user.json("ps")
    assert [(c["path"], c["image"], c["exists"]) for c in ps] == \
        [(os.fspath(copy), image["id"], True)]

    # errors keep vocker's exit codes and one-line messages through shiv
    proc = user.vocker("--home", user.home, "create", "nosuch:1", base / "x", rc=3)
    assert proc.stderr.startswith("vocker: error:"), proc.stderr

    removed = user.json("rm", copy)
    assert removed[0]["path"] == os.fspath(copy)
    assert not copy.exists()
    assert user.json("ps") == []
    assert list(user.cwd.iterdir()) == [], "vocker.pyz wrote into the current folder"


@pytest.mark.parametrize("minor", ["3.9", "3.10"])
def test_pyz_on_a_python_it_lacks_modules_for_says_so(pyz, minor, tmp_path):
    user = User(require_python(minor), pyz, tmp_path)
    assert user.vocker("--version").stdout.strip() == f"vocker {_vocker_version()}"
    proc = user.vocker("--home", user.home, "images", rc=6)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "this vocker.pyz has no blake3/zstandard modules" in lines[0]
    assert f"Python {minor}" in lines[0] and "Traceback" not in proc.stderr


def test_pyz_contents(pyz):
    """One file serves every CPython 3.11-3.13 of this machine, without the CFFI backend."""
    with open(pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    with zipfile.ZipFile(pyz) as zf:
        names = set(zf.namelist())
        env = json.loads(zf.read("environment.json"))
    for minor in PYTHONS:
        nodot = minor.replace(".", "")   # blake3.cpython-311-x86_64-linux-gnu.so, blake3.cp311-win_amd64.pyd
        tags = (f"cpython-{nodot}-", f".cp{nodot}-")
        for pkg, mod in (("blake3", "blake3"), ("zstandard", "backend_c")):
            assert any(n.startswith(f"site-packages/{pkg}/{mod}.") and any(t in n for t in tags)
                       for n in names), (pkg, minor)
    assert {"site-packages/vocker.py", "site-packages/schema.sql", "__main__.py"} <= names
    assert not [n for n in names if "cffi" in n]
    assert env["entry_point"] == "vocker:run"
    assert env["root"] == "~/.vocker/shiv"
    assert env["reproducible"] is True
    assert env["preamble"] == "vocker_preamble.py"


def test_pyz_is_reproducible(pyz, tmp_path):
    """A second build, from a fresh staging folder, gives the same bytes."""
    again = _build(tmp_path / "vocker.pyz")
    assert _sha256(again) == _sha256(pyz)


@pytest.mark.parametrize("extracted", [False, True], ids=["first run", "later run"])
def test_pyz_removes_stale_extractions(pyz, tmp_path, extracted):
    """The preamble deletes extraction folders of other builds unused for 7
    days: on the first run (shiv's bootstrap) and on later ones (the launcher)."""
    user = User(main_python(), pyz, tmp_path / "u")
    if extracted:
        user.vocker("--version")
    root = user.shiv_root
    old, recent, foreign = (root / "vocker.pyz_0123456789abcdef", root / "vocker.pyz_fedcba9876543210",
                            root / "other.pyz_0123456789abcdef")
    for d in (old, recent, foreign):
        (d / "site-packages").mkdir(parents=True)
    (root / ".vocker.pyz_0123456789abcdef_lock").touch()
    ten_days_ago = time.time() - 10 * 86400
    for d in (old, foreign):
        os.utime(d, (ten_days_ago, ten_days_ago))
    user.vocker("--version")
    left = sorted(p.name for p in root.iterdir())
    assert old.name not in left and ".vocker.pyz_0123456789abcdef_lock" not in left
    assert recent.name in left and foreign.name in left
    assert len([n for n in left if n.startswith("vocker.pyz_")]) == 2  # recent + current


def _bootstrapped(user, *args, env=None):
    """Whether a run imported shiv's bootstrap (-X importtime names it)."""
    proc = run([user.python, "-X", "importtime", user.pyz, *args], env={**user.env, **(env or {})},
               cwd=user.cwd, timeout=180)
    assert proc.stdout.strip() == f"vocker {_vocker_version()}", proc.stderr[-2000:]
    return bool(re.search(r"\| +_bootstrap$", proc.stderr, re.M))


def test_pyz_starts_without_shiv_bootstrap_once_extracted(pyz, tmp_path):
    """The launcher runs vocker from the extracted folder; shiv's bootstrap
    runs only when there is none yet, or when a SHIV_* setting asks for it."""
    user = User(main_python(), pyz, tmp_path / "u")
    assert _bootstrapped(user, "--version")          # first run: extracts
    assert not _bootstrapped(user, "--version")      # then straight from the folder
    assert _bootstrapped(user, "--version", env={"SHIV_COMPILE_PYC": "0"})
    renamed = tmp_path / "vocker-copy.pyz"           # its own folder, by its name, as shiv names it
    renamed.write_bytes(pyz.read_bytes())
    user.pyz = renamed
    assert _bootstrapped(user, "--version")
    assert not _bootstrapped(user, "--version")
    assert sorted(p.name.split("_")[0] for p in user.shiv_root.iterdir()
                  if not p.name.startswith(".")) == ["vocker-copy.pyz", "vocker.pyz"]


def test_strip_debug_elf(build_module, tmp_path):
    """The pure-Python ``strip --strip-debug``: idempotent, leaves other files alone."""
    strip = build_module.strip_debug_elf
    assert strip(b"not an ELF file") is None
    assert strip(b"\x7fELF" + b"\0" * 100) is None
    wheels = sorted((REPO / "build" / "wheels").glob("*/cp311/zstandard-*linux*x86_64*.whl"))
    if not wheels:
        pytest.skip("no cached Linux zstandard wheel in build/wheels")
    with zipfile.ZipFile(wheels[0]) as zf:
        so = next(n for n in zf.namelist() if "backend_c" in n and n.endswith(".so"))
        data = zf.read(so)
    stripped = strip(data)
    assert stripped is not None and len(stripped) < len(data) // 4
    assert stripped[:0x28] == data[:0x28]
    assert strip(stripped) is None  # nothing left to strip


def test_universal_build_holds_every_platforms_extension_modules(tmp_path):
    """--universal: one file with blake3 and zstandard for Windows (amd64, arm64),
    Linux (x86_64, aarch64) and macOS (arm64), CPython 3.11-3.14, within 15 MB."""
    out = _build(tmp_path / "universal.pyz", "--universal")
    assert out.stat().st_size <= 15_000_000
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    assert not [n for n in names if "cffi" in n]
    for minor in ("311", "312", "313", "314"):
        for pkg, mod in (("blake3", "blake3"), ("zstandard", "backend_c")):
            mods = [n for n in names if n.startswith(f"site-packages/{pkg}/{mod}.")]
            assert any(f"cp{minor}-win_amd64.pyd" in n for n in mods), (pkg, minor, "win_amd64")
            assert any(f"cp{minor}-win_arm64.pyd" in n for n in mods), (pkg, minor, "win_arm64")
            assert any(f"cpython-{minor}-x86_64-linux-gnu.so" in n for n in mods), (pkg, minor)
            assert any(f"cpython-{minor}-aarch64-linux-gnu.so" in n for n in mods), (pkg, minor)
            assert any(f"cpython-{minor}-darwin.so" in n for n in mods), (pkg, minor, "macOS")
