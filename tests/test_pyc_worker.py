"""The .pyc worker: py_compile's public API in the target interpreter, one
timestamp .pyc a source, failures counted and reported (never failing the
create, never cached when the compiler itself died)."""

import contextlib
import importlib.util
import os
import struct
import sys
from unittest import mock

import pytest

import vocker
from conftest import cli, main_python, run, venv_python, venv_site_packages

GOOD = b"VALUE = 42\n"
BAD = b"def broken(:\n    pass\n"


@pytest.fixture(scope="module")
def pyc_image(tmp_path_factory):
    """(home, image ID) of a real venv holding one valid and one broken module."""
    py = main_python()
    base = tmp_path_factory.mktemp("pycimage")
    venv = base / "venv"
    run([py, "-m", "venv", "--without-pip", venv])
    site = venv_site_packages(venv)
    (site / "good.py").write_bytes(GOOD)
    (site / "zz_bad.py").write_bytes(BAD)
    home = base / "home"
    with _store(home) as store:
        image = vocker.commit(store, venv)["id"]
    return home, image


def _store(home):
    return contextlib.closing(vocker.Store(home))


def _site(container):
    return venv_site_packages(container)


def test_broken_source_is_reported_and_the_valid_one_compiled(pyc_image, tmp_path):
    home, image = pyc_image
    with _store(home) as store:
        r = vocker.create(store, image, tmp_path / "c1")
        assert r["pyc_compiled"] == 1 and r["pyc_failed"] == 1
        (warning,) = r["warnings"]
        assert "1 .py file not compiled" in warning and "zz_bad.py" in warning
        assert "SyntaxError" in warning and "(line 1)" in warning and "\n" not in warning
        site = _site(tmp_path / "c1")
        tag = vocker.query_python(main_python())["cache_tag"]
        pyc = site / "__pycache__" / f"good.{tag}.pyc"
        assert not (site / "__pycache__" / f"zz_bad.{tag}.pyc").exists()
        # a timestamp .pyc for the source's fixed mtime and size
        magic, flags, mtime, size = struct.unpack("<4sIII", pyc.read_bytes()[:16])
        assert flags == 0 and mtime == vocker.FIXED_MTIME and size == len(GOOD)
        assert magic == _magic(main_python())
        before = pyc.stat()
        out = run([venv_python(tmp_path / "c1"), "-c", "import good; print(good.VALUE)"])
        assert out.stdout.strip() == "42"
        assert pyc.stat().st_ino == before.st_ino   # valid: read, not rewritten
        # the second create knows the failure without compiling again
        r2 = vocker.create(store, image, tmp_path / "c2")
        assert r2["pyc_compiled"] == 0 and r2["pyc_cached"] == 1 and r2["pyc_failed"] == 1
        assert "zz_bad.py" in r2["warnings"][0] and "earlier create" in r2["warnings"][0]


def _magic(python):
    out = run([python, "-c", "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"])
    return bytes.fromhex(out.stdout.strip())


def test_cli_prints_one_warning_line_and_succeeds(pyc_image, tmp_path):
    home, image = pyc_image
    p = cli("create", image[:12], tmp_path / "c", home=home)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: warning: 1 .py file not compiled")
    assert "/site-packages/zz_bad.py: " in lines[0]


def test_a_dead_compiler_fails_nothing_and_caches_nothing(pyc_image, tmp_path, monkeypatch):
    """A worker that reports nothing: both sources lack a .pyc this time, the
    create still succeeds, and the next create compiles them."""
    home, image = pyc_image
    with _store(home) as store:
        with _store(tmp_path / "home2") as fresh:
            vocker.load(fresh, str(_saved(store, image, tmp_path)))
            monkeypatch.setattr(vocker, "compile_pycs", lambda exe, jobs, progress: {})
            r = vocker.create(fresh, image, tmp_path / "c1")
            assert r["pyc_compiled"] == 0 and r["pyc_failed"] == 2
            assert "2 .py files not compiled" in r["warnings"][0]
            assert "stopped early" in r["warnings"][0]
            assert fresh.db.execute("SELECT count(*) FROM pyc_cache").fetchone()[0] == 0
            monkeypatch.undo()
            r = vocker.create(fresh, image, tmp_path / "c2")
            assert r["pyc_compiled"] == 1 and r["pyc_failed"] == 1


def _saved(store, image, tmp_path):
    out = tmp_path / "image.tar"
    vocker.save(store, [image], str(out), with_bytecode=False)  # the fresh store compiles
    return out


FAKE_WORKERS = [
    ("exits-at-once", "exit 3"),
    ("exits-unread", "exit 3"),   # the job list fills the pipe: writing it fails
    ("not-json", "cat >/dev/null; echo 'compiled everything'"),
    ("unknown-job", "cat >/dev/null; echo '[99, null]'"),
    ("bool-job", "cat >/dev/null; echo '[true, null]'"),
    ("bad-error-type", "cat >/dev/null; echo '[0, 7]'"),
    ("bad-shape", "cat >/dev/null; echo '[0]'; echo '{\"0\": null}'"),
]


@pytest.mark.skipif(os.name == "nt", reason="the fake interpreters are shell scripts")
@pytest.mark.parametrize("name, body", FAKE_WORKERS, ids=[n for n, _ in FAKE_WORKERS])
def test_compile_pycs_keeps_only_well_formed_reports_of_its_jobs(name, body, tmp_path):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    src = tmp_path / "m.py"
    src.write_bytes(GOOD)
    progress = vocker.Progress("compiling", enabled=False)
    n = 2000 if name == "exits-unread" else 1   # over a pipe's buffer
    jobs = [[i, str(src), str(tmp_path / f"m{i}.pyc"), "m" * 100 + ".py"] for i in range(n)]
    with mock.patch.object(os, "cpu_count", return_value=1):
        assert vocker.compile_pycs(str(fake), jobs, progress) == {}


def test_a_compiler_that_cannot_start_reports_nothing(tmp_path):
    """No such interpreter: both tries to start it fail, and its jobs stay
    unreported (the create warns; it does not fail)."""
    src = tmp_path / "m.py"
    src.write_bytes(GOOD)
    jobs = [[0, str(src), str(tmp_path / "m.pyc"), "m.py"]]
    progress = vocker.Progress("compiling", enabled=False)
    assert vocker.compile_pycs(str(tmp_path / "no-such-python"), jobs, progress) == {}
    assert not (tmp_path / "m.pyc").exists()


def test_compile_pycs_reports_each_job(tmp_path):
    """The real worker on this interpreter: a result per job, the error on one line."""
    (tmp_path / "ok.py").write_bytes(GOOD)
    (tmp_path / "bad.py").write_bytes(BAD)
    (tmp_path / "nulbyte.py").write_bytes(b"x = 1\0\n")   # not "nul": Windows reserves it
    (tmp_path / "dir.py").mkdir()
    jobs = [[i, str(tmp_path / n), str(tmp_path / f"{n}c"), f"pkg/{n}"]
            for i, n in enumerate(["ok.py", "bad.py", "nulbyte.py", "dir.py"])]
    res = vocker.compile_pycs(sys.executable, jobs, vocker.Progress("x", enabled=False))
    assert res[0] is None and (tmp_path / "ok.pyc").is_file()
    assert res[1].startswith("SyntaxError: ") and "(line 1)" in res[1]
    assert res[2] and "\n" not in res[2] and not (tmp_path / "nulbyte.pyc").exists()
    assert res[3].startswith(("IsADirectoryError", "PermissionError"))
    # the .pyc py_compile writes is the one the interpreter's loader accepts
    data = (tmp_path / "ok.pyc").read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
