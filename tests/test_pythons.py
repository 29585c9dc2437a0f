"""Round trips for venvs of several CPython versions; interpreter matching."""

import json
import os

import pytest

import vocker
from conftest import (cli, make_venv, posix_only, require_python, run, venv_script,
                      venv_site_packages)

VERSIONS = ["3.9", "3.11", "3.13"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("pyhome")


@pytest.mark.parametrize("minor", VERSIONS)
def test_round_trip_per_python(minor, home, tmp_path, wheelhouse):
    py = require_python(minor)
    src = make_venv(py, tmp_path / f"src {minor}", ("vockdemo==1.0",), wheelhouse=wheelhouse)
    with vocker.Store(home) as store:
        r = vocker.commit(store, src, tags=[f"py:{minor}"])
        assert r["python"]["version"].startswith(minor + ".")
        assert r["python"]["cache_tag"] == "cpython-" + minor.replace(".", "")
        target = tmp_path / "dst"
        c = vocker.create(store, f"py:{minor}", target)
        assert os.path.realpath(c["python"]["executable"]) == os.path.realpath(py)
        out = run([venv_script(target, "vockdemo")]).stdout
        assert out.startswith("vockdemo 1.0 from ") and str(target) in out
        tag = "cpython-" + minor.replace(".", "")
        site = venv_site_packages(target)
        assert (site / "vockdemo" / "__pycache__" / f"core.{tag}.pyc").exists()
        assert vocker.commit(store, target)["id"] == r["id"]


def test_mismatched_python_is_refused(home, tmp_path, wheelhouse):
    py311, py39 = require_python("3.11"), require_python("3.9")
    src = make_venv(py311, tmp_path / "src", (), wheelhouse=wheelhouse)
    with vocker.Store(home) as store:
        image = vocker.commit(store, src)["id"]
    p = cli("create", image, tmp_path / "dst", "--python", py39, home=home)
    assert p.returncode == vocker.EXIT_PYTHON
    assert "3.9" in p.stderr and "3.11" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists()
    p = cli("create", image, tmp_path / "dst", "--python", "/nonexistent/python", home=home)
    assert p.returncode == vocker.EXIT_PYTHON
    # the right one, named explicitly, works
    p = cli("create", image, tmp_path / "dst", "--python", py311, home=home)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "dst" / "bin" / "python").exists()


def test_find_python_searches_the_machine():
    py = require_python("3.13")
    info = vocker.query_python(py)
    need = {k: info[k] for k in ("implementation", "version", "cache_tag", "platform")}
    exe, found = vocker.find_python(need)
    assert found["version"].split(".")[:2] == ["3", "13"]
    with pytest.raises(vocker.PythonError, match="no cpython 3.99"):
        vocker.find_python(dict(need, version="3.99.0", cache_tag="cpython-399"))


@posix_only("a symlink to the interpreter gives a path whose stamp the test can change")
def test_a_store_remembers_an_interpreter_while_its_stamp_holds(store, tmp_path):
    py = require_python("3.13")
    link = tmp_path / "bin" / "python3"
    link.parent.mkdir()
    link.symlink_to(py)
    info = vocker.query_python(link, facts=store)
    assert info["version"].startswith("3.13.")
    (stamp,), = store.db.execute("SELECT stamp FROM python_facts WHERE path=?", (str(link),))
    assert stamp == vocker.python_stamp(str(link))
    store.db.execute("UPDATE python_facts SET facts=? WHERE path=?",
                     (json.dumps(dict(info, version="3.13.99")), str(link)))

    def ask():
        vocker._py_cache.pop(str(link), None)  # the process's own memo: the store is asked
        return vocker.query_python(link, facts=store)["version"]
    assert ask() == "3.13.99"               # remembered: the interpreter did not run
    link.unlink()
    link.symlink_to(py)                     # a new link: its stamp changed
    assert ask() == info["version"]
    (tmp_path / "pyvenv.cfg").write_text("home = /x\n")  # a venv marker came
    assert vocker.python_stamp(str(link)) not in (stamp, vocker.python_stamp(str(py)))
