"""Prove the fixture layer (wheelfactory + conftest helpers) is real."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import zipfile

import pytest

from conftest import (
    MAIN_MINOR,
    PYTHONS,
    WINDOWS,
    posix_only,
    find_python,
    make_venv,
    read_record,
    main_python,
    run,
    venv_python,
    venv_site_packages,
)
from wheelfactory import DEMO_WHEELS, build_demo_wheelhouse, build_wheel

# shebang lines longer than this (Linux BINPRM_BUF_SIZE 128 incl. "#!") make
# pip/distlib fall back to the /bin/sh exec trick
SHEBANG_LIMIT = 127


def _head(path, n=3):
    with open(path, encoding="utf-8") as f:
        return [f.readline().rstrip("\n") for _ in range(n)]


def _check_script(venv, name="vockdemo", version="1.0"):
    script = venv / "bin" / name
    assert script.is_file() and os.access(script, os.X_OK)
    out = run([script]).stdout.strip()
    assert out == f"{name} {version} from {venv_python(venv)}"
    return _head(script)


def _long_venv_path(base):
    p = base / ("long-" + "x" * 60) / ("deeper-" + "y" * 60) / "venv"
    assert len(f"#!{p}/bin/python") > SHEBANG_LIMIT
    return p


# ---------------------------------------------------------------- wheels


def test_wheel_is_deterministic_and_valid(tmp_path):
    a = build_demo_wheelhouse(tmp_path / "a")
    b = build_demo_wheelhouse(tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert len(names) == sum(len(v) for v in DEMO_WHEELS.values()) == 4
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    # the same single call twice -> identical bytes
    files = {"p/__init__.py": "x = 1\n", "p/d.bin": b"\x00\xff"}
    w1 = build_wheel(tmp_path / "c", "p", "0.1", files, {"p": "p:main"}).read_bytes()
    w2 = build_wheel(tmp_path / "d", "p", "0.1", files, {"p": "p:main"}).read_bytes()
    assert w1 == w2

    # RECORD is correct for every member; RECORD's own line is ",,"
    for name in names:
        with zipfile.ZipFile(a / name) as zf:
            dist, version = name.split("-")[:2]
            di = f"{dist}-{version}.dist-info"
            rows = list(csv.reader(io.StringIO(zf.read(f"{di}/RECORD").decode())))
            assert zf.namelist()[-1] == f"{di}/RECORD"
            assert sorted(r[0] for r in rows) == sorted(zf.namelist())
            for path, h, size in rows:
                if path == f"{di}/RECORD":
                    assert (h, size) == ("", "")
                    continue
                data = zf.read(path)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert h == "sha256=" + digest.decode() and int(size) == len(data)
            meta = zf.read(f"{di}/METADATA").decode()
            assert "Metadata-Version: 2.1\n" in meta
            assert f"Name: {dist}\n" in meta and f"Version: {version}\n" in meta
            wheel = zf.read(f"{di}/WHEEL").decode()
            for line in ("Wheel-Version: 1.0", "Root-Is-Purelib: true", "Tag: py3-none-any"):
                assert line + "\n" in wheel
            assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())

    v1 = zipfile.ZipFile(a / "vockdemo-1.0-py3-none-any.whl")
    v2 = zipfile.ZipFile(a / "vockdemo-2.0-py3-none-any.whl")
    for member in ("vockdemo/__init__.py", "vockdemo/core.py", "vockdemo/data/info.txt"):
        assert v1.read(member) != v2.read(member)
    assert v1.read("vockdemo/py.typed") == b""
    with zipfile.ZipFile(a / "vockbig-1.0-py3-none-any.whl") as zf:
        mods = [n for n in zf.namelist() if n.startswith("vockbig/m")]
        assert len(mods) >= 40
        contents = [zf.read(n) for n in mods]
        assert len(set(contents)) < len(contents)  # some identical modules
        assert all(1000 < len(c) < 10000 for c in contents)


def test_find_python_reports_right_versions():
    assert MAIN_MINOR in PYTHONS, f"the suite needs a CPython {MAIN_MINOR}"
    for minor, path in PYTHONS.items():
        assert os.path.isabs(path) and os.path.isfile(path) and not os.path.islink(path)
        assert find_python(minor) == path
        out = run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout
        assert out.strip() == minor


# ---------------------------------------------------------------- venvs


def test_pip_venv_short_path(tmp_path, wheelhouse):
    py = main_python()
    venv = make_venv(py, tmp_path / "v", ["vockdemo==1.0", "vockextra"], wheelhouse=wheelhouse)
    out = run([venv_python(venv), "-c",
               "import vockdemo, vockdemo.core as c, vockextra;"
               "print(vockdemo.__version__, vockdemo.hello(), c.info_text().strip(), vockextra.extra())"])
    assert out.stdout.strip() == ("1.0 hello from vockdemo 1.0 vockdemo data file, version 1.0 "
                                  "vockextra 1.0")
    sp = venv_site_packages(venv)
    if not WINDOWS:  # there: launcher .exe files (test_launchers), Lib/site-packages
        head = _check_script(venv)
        assert head[0] == f"#!{venv}/bin/python"
        assert _check_script(venv, "vockextra")[0] == f"#!{venv}/bin/python"
        assert sp.parent.name == "python3.11"
    assert not (sp / "vockdemo-1.0.dist-info" / "direct_url.json").exists()
    assert (sp / "vockdemo-1.0.dist-info" / "INSTALLER").read_text().strip() == "pip"
    paths = [r[0] for r in read_record(venv, "vockdemo", "1.0")]
    assert any(p.endswith(".pyc") for p in paths)  # pip byte-compiles and records pycs
    assert ("../../Scripts/vockdemo.exe" if WINDOWS else "../../../bin/vockdemo") in paths


def test_uv_venv_short_path(tmp_path, wheelhouse, uv_bin):
    py = main_python()
    venv = make_venv(py, tmp_path / "v", ["vockdemo==2.0", "vockbig"], installer="uv",
                     wheelhouse=wheelhouse)
    # uv does not byte-compile by default, and never lists pycs in RECORD
    assert not list(venv_site_packages(venv).glob("vock*/**/*.pyc"))
    rows = read_record(venv, "vockdemo", "2.0")
    assert not any(r[0].endswith(".pyc") for r in rows)
    assert "../../../bin/vockdemo" in [r[0] for r in rows]
    out = run([venv_python(venv), "-c",
               "import vockdemo, vockbig.m39 as m; print(vockdemo.hello(), m.func_01(1))"])
    assert out.stdout.strip() == "hello from vockdemo 2.0 (4, 'shared', 1)"
    head = _check_script(venv, version="2.0")
    assert head[0] == f"#!{venv}/bin/python"
    sp = venv_site_packages(venv)
    assert (sp / "vockdemo-2.0.dist-info" / "INSTALLER").read_text().strip() == "uv"
    assert not (venv / "bin" / "pip").exists()


@posix_only("checks the /bin/sh header of POSIX scripts")
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_venv_path_with_space_and_non_ascii(tmp_path, wheelhouse, installer, request):
    py = main_python()
    if installer == "uv":
        request.getfixturevalue("uv_bin")
    venv = make_venv(py, tmp_path / "dir with spåce" / "vénv", ["vockdemo==1.0"],
                     installer=installer, wheelhouse=wheelhouse)
    out = run([venv_python(venv), "-c", "import vockdemo; print(vockdemo.__file__)"])
    assert out.stdout.strip().startswith(str(venv))
    head = _check_script(venv)
    # a shebang cannot hold a space: both installers use a /bin/sh trampoline
    assert head[0] == "#!/bin/sh"
    quote = '"' if installer == "pip" else "'"
    assert head[1] == f"'''exec' {quote}{venv}/bin/python{quote} \"$0\" \"$@\""
    assert head[2] == "' '''"


@posix_only("checks the /bin/sh header of POSIX scripts")
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_venv_long_path(tmp_path, wheelhouse, installer, request):
    py = main_python()
    if installer == "uv":
        request.getfixturevalue("uv_bin")
    venv = make_venv(py, _long_venv_path(tmp_path), ["vockdemo==1.0"],
                     installer=installer, wheelhouse=wheelhouse)
    head = _check_script(venv)
    # too long for a kernel shebang: a /bin/sh trampoline that is also valid Python
    assert head[0] == "#!/bin/sh"
    if installer == "pip":  # distlib quotes the path only when it contains a space
        assert head[1] == f"'''exec' {venv}/bin/python \"$0\" \"$@\""
    else:  # uv always single-quotes it
        assert head[1] == f"'''exec' '{venv}/bin/python' \"$0\" \"$@\""
    assert head[2] == "' '''"
