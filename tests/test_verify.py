"""verify, status, diff and history (issue 10): damage is found and named,
repaired from what the store still holds or from a repository, and changes
between images and containers are listed."""

import json
import os
import subprocess

import pytest

import vocker
from conftest import (cli, image_entries, main_python, make_venv, venv_python,
                      venv_site_packages)

@pytest.fixture(scope="module")
def src_venv(tmp_path_factory, wheelhouse):
    """A pip venv with vockdemo 1.0, made once (the tests change only containers)."""
    return make_venv(main_python(), tmp_path_factory.mktemp("verify") / "src",
                     ["vockdemo==1.0"], wheelhouse=wheelhouse)


@pytest.fixture
def env(tmp_path, src_venv):
    """The venv committed as web:1 into a new store, containers c1 and c2."""
    home = tmp_path / "home"
    cli("commit", str(src_venv), "-t", "web:1", home=home, check=True)
    for c in ("c1", "c2"):
        cli("create", "web:1", str(tmp_path / c), home=home, check=True)
    return home, tmp_path


def _verify(home, *args):
    p = cli("verify", *args, "--json", home=home)
    assert p.returncode in (0, vocker.EXIT_DAMAGED), p.stderr
    return p.returncode, json.loads(p.stdout)


def _pool_file(home, container, rel):
    """The pool path of a container's hardlinked file (same inode)."""
    st = os.stat(container / rel)
    for d, _, names in os.walk(home / "pool"):
        for n in names:
            if os.stat(os.path.join(d, n)).st_ino == st.st_ino:
                return os.path.join(d, n)
    raise AssertionError(f"{rel} is not linked to the pool")


def _demo_py(c):
    return next(p for p in venv_site_packages(c).rglob("*.py") if p.stat().st_size > 0)


def test_a_clean_store_and_container_verify_clean(env):
    home, base = env
    for args in ((), ("--full",), (str(base / "c1"),), ("--full", str(base / "c1"), "web:1")):
        rc, r = _verify(home, *args)
        assert rc == 0 and r["problems"] == [] and not r["damaged"], (args, r)
    assert r["checked"]["blobs"] > 100 and r["checked"]["pool_files"] > 100
    assert r["checked"]["containers"] == 1 and r["containers"][0]["clean"]


def test_an_edit_through_a_hardlink_is_named_with_container_and_path(env):
    home, base = env
    f = _demo_py(base / "c1")
    rel = f.relative_to(base / "c1").as_posix()
    os.chmod(f, 0o644)                      # what root (or Windows' attribute) allows
    with open(f, "ab") as out:
        out.write(b"# edited\n")
    rc, r = _verify(home)
    assert rc == vocker.EXIT_DAMAGED
    [p] = r["problems"]
    assert p["object"] == "pool" and not p["repaired"]
    assert sorted(p["links"]) == sorted(str(base / c / rel) for c in ("c1", "c2"))
    rc, r = _verify(home, str(base / "c2"))
    assert rc == vocker.EXIT_DAMAGED
    assert {"status": "C", "path": rel} in r["containers"][0]["changes"]
    text = cli("verify", home=home).stdout
    assert str(base / "c1" / rel) in text and "damaged" in text
    # --repair: the pool gets a fresh copy; the containers keep theirs (named)
    rc, r = _verify(home, "--repair")
    assert rc == 0 and r["problems"][0]["repaired"], r
    assert _verify(home, "--full")[0] == 0
    assert _verify(home, str(base / "c1"))[0] == vocker.EXIT_DAMAGED   # still edited
    cli("create", "web:1", str(base / "c3"), home=home, check=True)
    assert b"# edited" not in (base / "c3" / rel).read_bytes()


def test_an_edit_that_restores_size_and_mtime_needs_full(env):
    home, base = env
    f = _demo_py(base / "c1")
    st = f.stat()
    os.chmod(f, 0o644)
    data = f.read_bytes()
    f.write_bytes(data[:-1] + (b"#" if data[-1:] != b"#" else b" "))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(f, 0o444)
    assert _verify(home)[0] == 0                  # size, mtime and mode all as made
    rc, r = _verify(home, "--full")
    assert rc == vocker.EXIT_DAMAGED and r["problems"][0]["problem"].startswith("its bytes")
    rc, r = _verify(home, "--full", str(base / "c1"))
    assert rc == vocker.EXIT_DAMAGED


def _packs(home):
    return [home / "packs" / n for n in os.listdir(home / "packs")]


def _break_packs(home):
    for p in _packs(home):
        os.chmod(p, 0o644)
        data = bytearray(p.read_bytes())
        for i in range(100, len(data), 4096):
            data[i] ^= 0xFF
        p.write_bytes(bytes(data))


def test_a_damaged_pack_is_found_by_full_and_repaired_from_the_pool(env):
    home, base = env
    cli("push", "web:1", str(base / "repo"), home=home, check=True)
    _break_packs(home)
    rc, r = _verify(home, "--full")
    assert rc == vocker.EXIT_DAMAGED
    assert {p["object"] for p in r["problems"]} == {"blob"}
    rc, r = _verify(home, "--full", "--repair")
    left = {p["id"] for p in r["problems"] if not p["repaired"]}
    templates = {e.ref for e in image_entries(vocker.Store(str(home)), r["problems"][0]["image"])
                 .values() if e.type in vocker.TEMPLATE_TYPES}
    assert left <= templates and rc == (vocker.EXIT_DAMAGED if left else 0)  # no pool copy
    assert len(r["problems"]) > 10 * len(left)
    rc, r = _verify(home, "--full", "--repair", "--from", str(base / "repo"))
    assert rc == 0 and {p["id"] for p in r["problems"]} == left, r
    assert _verify(home, "--full")[0] == 0
    cli("rm", str(base / "c1"), str(base / "c2"), home=home, check=True)
    cli("gc", home=home, check=True)   # the pool goes; the new frames carry the image
    cli("create", "web:1", str(base / "c4"), home=home, check=True)
    out = subprocess.run([str(venv_python(base / "c4")), "-c", "import vockdemo"])
    assert out.returncode == 0


def test_lost_blobs_are_repaired_from_a_repository(env):
    home, base = env
    repo = base / "repo"
    cli("push", "web:1", str(repo), home=home, check=True)
    cli("rm", str(base / "c1"), str(base / "c2"), home=home, check=True)
    cli("gc", home=home, check=True)
    for p in _packs(home):
        os.chmod(p, 0o644)
        os.unlink(p)
    rc, r = _verify(home)
    assert rc == vocker.EXIT_DAMAGED and all("missing" in p["problem"] for p in r["problems"])
    rc, r = _verify(home, "--repair")
    assert rc == vocker.EXIT_DAMAGED            # nothing local holds them
    assert "--from" in cli("verify", home=home).stdout
    rc, r = _verify(home, "--repair", "--from", str(repo))
    assert rc == 0 and all(p["how"] == "from the repository" for p in r["problems"])
    assert _verify(home, "--full")[0] == 0
    cli("create", "web:1", str(base / "c5"), home=home, check=True)


def test_a_damaged_pyc_is_removed_and_compiled_again(env):
    home, base = env
    pyc = next((base / "c1").rglob("*.pyc"))
    path = _pool_file(home, base / "c1", pyc.relative_to(base / "c1"))
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, (vocker.FIXED_MTIME, vocker.FIXED_MTIME))
    rc, r = _verify(home, "--full", "--repair")
    assert [p["object"] for p in r["problems"]] == ["pyc"] and rc == 0
    assert not os.path.exists(path)
    cli("create", "web:1", str(base / "c6"), home=home, check=True)
    assert _verify(home, "--full")[0] == 0


def test_verify_usage_errors(env):
    home, _ = env
    assert cli("verify", "--from", "x", home=home).returncode == vocker.EXIT_USAGE
    assert cli("verify", "nosuch:1", home=home).returncode == vocker.EXIT_NOT_FOUND


def test_status_diff_history_list_files_and_packages(env, wheelhouse):
    home, base = env
    c1 = base / "c1"
    subprocess.run([str(venv_python(c1)), "-m", "pip", "install", "-q", "--no-index",
                    "--find-links", str(wheelhouse), "--disable-pip-version-check",
                    "vockdemo==2.0", "vockextra==1.0"], check=True)
    r = json.loads(cli("status", str(c1), "--json", home=home, check=True).stdout)
    assert not r["clean"]
    assert {(p["name"], p["from"], p["to"]) for p in r["packages"]} == \
        {("vockdemo", "1.0", "2.0"), ("vockextra", None, "1.0")}
    statuses = {c["status"] for c in r["changes"]}
    assert statuses == {"A", "C", "D"} or statuses >= {"A", "D"}, statuses
    text = cli("status", str(c1), home=home, check=True).stdout
    assert "~ vockdemo 1.0 \u2192 2.0" in text and "\n?? " in text
    cli("commit", str(c1), "-t", "web:2", home=home, check=True)
    d = json.loads(cli("diff", "web:1", "web:2", "--json", home=home, check=True).stdout)
    assert d["packages"] == r["packages"] and d["changes"] == r["changes"]
    assert json.loads(cli("diff", "web:2", str(c1), "--json", home=home,
                          check=True).stdout)["changes"] == []
    stat_text = cli("diff", "web:1", "web:2", "--stat", home=home, check=True).stdout
    assert "vockextra" in stat_text
    h = json.loads(cli("history", "web:2", "--json", home=home, check=True).stdout)
    assert [s["tags"] for s in h] == [["web:2"], ["web:1"]] and h[1]["base"]
    assert h[0]["added"] > 0 and h[0]["packages"] == r["packages"]
    assert cli("status", str(base / "nope"), home=home).returncode == vocker.EXIT_NOT_FOUND
    assert json.loads(cli("status", str(base / "c2"), "--json", home=home,
                          check=True).stdout)["clean"]
