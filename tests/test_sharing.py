"""Containers of one image share their files and .pyc files through the pool."""

import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

import vocker
from conftest import (REPO, WINDOWS, clean_env, cli_json, run, template_paths, tree_files,
                      venv_python, venv_script, venv_site_packages)


def _snapshot(root):
    """relative path -> (mode, sha256 of content or link target)."""
    out = {}
    for rel, st in tree_files(root).items():
        p = os.path.join(root, rel)
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                out[rel] = (st.st_mode, hashlib.sha256(f.read()).hexdigest())
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
    return out


def _contents(snapshot_or_root):
    snap = snapshot_or_root if isinstance(snapshot_or_root, dict) else _snapshot(snapshot_or_root)
    return {rel: v[1] for rel, v in snap.items()}


def _du_kb(*paths):
    out = subprocess.run(["du", "-skc", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


@pytest.fixture(scope="module")
def two_containers(pip_venvs, tmp_path_factory):
    base = tmp_path_factory.mktemp("share")
    with vocker.Store(base / "store") as store:
        image = vocker.commit(store, pip_venvs[0])["id"]
        r1 = vocker.create(store, image, base / "c1")
        r2 = vocker.create(store, image, base / "c2")
        yield store, image, base, r1, r2


def test_second_container_adds_only_templates_and_directories(two_containers):
    store, image, base, r1, r2 = two_containers
    c1, c2 = base / "c1", base / "c2"
    seen = set()
    for root in (base / "store", c1):
        seen.update((st.st_dev, st.st_ino) for st in tree_files(root).values())
    own = {rel: st for rel, st in tree_files(c2).items() if (st.st_dev, st.st_ino) not in seen}
    templates = template_paths(store, image)
    for rel, st in own.items():
        assert (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or rel in templates), \
            f"{rel} is not shared"  # empty files too: one pool file
    if WINDOWS:  # no du(1), no st_blocks
        return
    # and du, counting each hardlink once, agrees
    added = _du_kb(base / "store", c1, c2) - _du_kb(base / "store", c1)
    expected = (sum(st.st_blocks for st in own.values()) + c2.lstat().st_blocks) // 2
    assert added == expected
    assert added * 1024 < 0.1 * sum(st.st_size for st in tree_files(c2).values()
                                    if stat.S_ISREG(st.st_mode))


def test_pyc_compiled_once_then_shared(two_containers):
    store, image, base, r1, r2 = two_containers
    assert r1["pyc_compiled"] > 40
    assert r2["pyc_compiled"] == 0
    assert r2["pyc_cached"] >= r1["pyc_compiled"]
    f1, f2 = tree_files(base / "c1"), tree_files(base / "c2")
    pycs = [rel for rel in f2 if rel.endswith(".pyc")]
    assert len(pycs) >= r1["pyc_compiled"]
    for rel in pycs:
        assert f1[rel].st_ino == f2[rel].st_ino


def test_pool_is_read_only_with_fixed_mtime(two_containers):
    store, image, base, r1, r2 = two_containers
    files = [st for st in tree_files(base / "store" / "pool").values()
             if stat.S_ISREG(st.st_mode)]
    assert files
    for st in files:
        assert st.st_mode & 0o222 == 0
        assert st.st_mtime == vocker.FIXED_MTIME


def test_pip_changes_in_one_container_touch_nothing_else(two_containers, wheelhouse):
    store, image, base, r1, r2 = two_containers
    c1 = base / "c1"
    before_c2 = _snapshot(base / "c2")
    before_pool = _snapshot(base / "store" / "pool")
    env = clean_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull})
    py = venv_python(c1)
    run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheelhouse,
         "--upgrade", "vockdemo==2.0"], env=env)
    run([py, "-m", "pip", "uninstall", "-y", "-q", "vockbig"], env=env)
    assert "vockdemo 2.0" in run([venv_script(c1, "vockdemo")]).stdout
    if WINDOWS:  # pip cleared the read-only attribute of what it removed: one per inode,
        # so c2's and the pool's links of it are writable now, their bytes unchanged...
        assert _snapshot(base / "c2") != before_c2
        assert _contents(base / "c2") == _contents(before_c2)
        # ...until a commit of c2 reads them, finds them intact and seals them again
        r = vocker.commit(store, base / "c2")
        assert (r["id"], r["warnings"]) == (image, [])
    assert _snapshot(base / "c2") == before_c2
    assert _snapshot(base / "store" / "pool") == before_pool
    assert "vockdemo 1.0" in run([venv_script(base / "c2", "vockdemo")]).stdout
    run([venv_python(base / "c2"), "-c", "import vockbig.m07"])
    # the upgraded container commits to a child of the image
    r = vocker.commit(store, c1)
    assert r["parent"] == image and r["id"] != image


def test_file_changed_through_a_hardlink_is_detected_and_the_pool_copy_dropped(tmp_path,
                                                                                pip_venvs):
    with vocker.Store(tmp_path / "store") as store:
        image = vocker.commit(store, pip_venvs[0])["id"]
        c = tmp_path / "c"
        vocker.create(store, image, c, compile=False)
        site = venv_site_packages(c)
        victim = site / "vockbig" / "m05.py"
        assert victim.stat().st_nlink >= 2
        os.chmod(victim, 0o644)                  # defeat the read-only guard...
        with open(victim, "ab") as f:            # ...and write through the hardlink
            f.write(b"# edited in place\n")
        r = vocker.commit(store, c)
        assert r["id"] != image and any("changed in place" in w for w in r["warnings"])
        # the damaged pool copy is gone; a new container gets the original bytes back
        vocker.create(store, image, tmp_path / "c2", compile=False)
        fresh = venv_site_packages(tmp_path / "c2") / "vockbig" / "m05.py"
        assert b"edited in place" not in fresh.read_bytes()
        assert vocker.commit(store, tmp_path / "c2")["id"] == image


# ------------------------------------------------- the fast path of create

def _pool_file(path, data, executable=False):
    path.write_bytes(data)
    os.chmod(path, 0o555 if executable else 0o444)
    os.utime(path, (vocker.FIXED_MTIME, vocker.FIXED_MTIME))
    return str(path)


def _linking_parts(tmp_path):
    """A pool of three files (one damaged: its mtime moved, one missing)
    and two parts that link them into ``at``: (at, parts, sizes)."""
    pool = tmp_path / "pool"
    pool.mkdir()
    good = _pool_file(pool / "good", b"good\n")
    damaged = _pool_file(pool / "damaged", b"bad\n")
    os.utime(damaged, (1, 1))
    at = str(tmp_path / "stage") + os.sep
    os.makedirs(at, exist_ok=True)
    sizes = {"good": 5, "damaged": 4, "gone": 3}
    parts = [(["p1", "p1/q"], [("good", False, at + "p1/q/a"), ("damaged", False, at + "p1/b")],
              [good, damaged]),
             (["p2"], [("gone", False, at + "p2/c"), ("good", False, at + "p2/d")],
              [str(pool / "gone"), good])]
    return at, parts, sizes


#: runs link_intact on _linking_parts in a fresh interpreter (one thread, so
#: on Linux it may fork), counting the forks: argv = tmp_path, fork_min, and
#: "fail" for a fork that fails as the system can (EAGAIN)
_LINK_INTACT = """
import errno, json, os, sys
sys.path[:0] = [os.environ["VOCKER_ROOT"], os.environ["VOCKER_TESTS"]]
import vocker
from pathlib import Path
from test_sharing import _linking_parts
forks, fork = [], os.fork if hasattr(os, "fork") else None

def counted():
    forks.append(1)
    if sys.argv[3:] == ["fail"]:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    return fork()

if fork:
    os.fork = counted
at, parts, sizes = _linking_parts(Path(sys.argv[1]))
progress = vocker.Progress("test", enabled=False)
try:
    out = vocker.link_intact(at, parts, sizes, vocker.Store.pool_file_problem, progress,
                             fork_min=int(sys.argv[2]))
except OSError as exc:
    out = [type(exc).__name__, exc.filename]
print(json.dumps([out, progress.done, progress.bytes, len(forks)]))
"""


def _link_intact_run(tmp_path, fork_min, *how):
    """link_intact over :func:`_linking_parts` in a new process: (its
    result or [error type, filename], items done, bytes done, forks)."""
    env = dict(os.environ, VOCKER_ROOT=str(REPO), VOCKER_TESTS=str(REPO / "tests"))
    p = subprocess.run([sys.executable, "-c", _LINK_INTACT, str(tmp_path), str(fork_min), *how],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


FORKS = 1 if sys.platform.startswith("linux") else 0  # elsewhere: one process


@pytest.mark.parametrize("fork_min, forks, how", [(1, FORKS, ()), (10 ** 9, 0, ()),
                                                  (1, FORKS, ("fail",))],
                         ids=["two processes", "one process", "a fork that fails"])
def test_link_intact_links_intact_pool_files_and_leaves_the_rest(tmp_path, fork_min, forks, how):
    out, done, nbytes, forked = _link_intact_run(tmp_path, fork_min, *how)
    at = str(tmp_path / "stage") + os.sep
    good = os.lstat(tmp_path / "pool" / "good")
    assert out == [[[[0, good.st_dev, good.st_ino]], [1]], [[[1, good.st_dev, good.st_ino]], [0]]]
    assert (done, nbytes, forked) == (2, 10, forks)
    assert sorted(os.listdir(at)) == ["p1", "p2"] and os.listdir(at + "p2") == ["d"]
    assert os.lstat(at + "p1/q/a").st_ino == os.lstat(at + "p2/d").st_ino == good.st_ino


@pytest.mark.parametrize("fork_min, forks", [(1, FORKS), (10 ** 9, 0)],
                         ids=["two processes", "one process"])
def test_link_intact_raises_what_failed_in_either_part(tmp_path, fork_min, forks):
    at = str(tmp_path / "stage") + os.sep
    (tmp_path / "stage" / "p2").mkdir(parents=True)  # the second part's folder is there already
    out, _, _, forked = _link_intact_run(tmp_path, fork_min)
    assert out == ["FileExistsError", at + "p2"] and forked == forks
    assert os.path.exists(at + "p1/q/a")  # the first part was done: both always end


def _wide_tree(root, per_package=1100):
    """Two packages at the depth a venv's have, with enough files between
    them that create links them in two processes; some empty, some alike."""
    for pkg in ("alpha", "beta"):
        d = root / "lib" / "python3.11" / "site-packages" / pkg / "sub"
        d.mkdir(parents=True)
        for i in range(per_package):
            (d / f"m{i}.py").write_text(f"X = {i % 700}\n" if i % 50 else "")
    return root


def test_create_of_many_files_matches_its_image_and_repairs_in_either_half(tmp_path):
    """Run as a user runs it (a new process: on Linux it forks for the second half)."""
    assert 2 * 1100 >= vocker.FORK_MIN
    src, home = _wide_tree(tmp_path / "src"), tmp_path / "home"
    with vocker.Store(home) as store:
        image = vocker.commit(store, src, kind="plain")["id"]
    c1 = tmp_path / "c1"
    cli_json("create", image, c1, "--link-mode", "hardlink", home=home)
    assert _contents(c1) == _contents(src)
    # an empty file is one inode in the pool, shared by every container
    empties = [st for rel, st in tree_files(c1).items() if rel.endswith(("m0.py", "m50.py"))]
    assert len({(st.st_dev, st.st_ino) for st in empties}) == 1 and len(empties) == 4
    # a pool file damaged in each half is replaced before the next create links it
    site = c1 / "lib" / "python3.11" / "site-packages"
    for victim in (site / "alpha" / "sub" / "m7.py", site / "beta" / "sub" / "m8.py"):
        os.chmod(victim, 0o644)
        with open(victim, "a") as f:
            f.write("Y = 1\n")
    empty = site / "beta" / "sub" / "m0.py"
    os.chmod(empty, 0o644)
    empty.write_text("owned = True\n")
    r = cli_json("create", image, tmp_path / "c2", "--link-mode", "hardlink", home=home)
    assert r["repaired"] == 3
    assert _contents(tmp_path / "c2") == _contents(src)
    with vocker.Store(home) as store:
        report = vocker.verify(store, full=True)  # the empty blob's pool file too
        checked = report["checked"]
        assert not report["damaged"] and checked["pool_files"] == checked["blobs"] + 1, report
        # a container of a plain folder is verified as one (not taken for a broken venv)
        report = vocker.verify(store, [str(tmp_path / "c2")])
        assert not report["damaged"] and report["containers"][0]["clean"], report["problems"]


def test_a_second_create_writes_no_pool_inode_rows_unless_they_changed(tmp_path):
    src = _wide_tree(tmp_path / "src", per_package=30)
    with vocker.Store(tmp_path / "home") as store:
        image = vocker.commit(store, src, kind="plain")["id"]
        vocker.create(store, image, tmp_path / "c1")
        rows = store.db.execute("SELECT count(*) FROM pool_inodes").fetchone()[0]
        assert rows > 0 and store.inodes_noted(image) is not None
        # rows lost behind vocker's back are not seen again while the digest holds...
        store.db.execute("DELETE FROM pool_inodes")
        vocker.create(store, image, tmp_path / "c2")  # (but the one the link mode was tried on)
        assert store.db.execute("SELECT count(*) FROM pool_inodes").fetchone()[0] <= 1
        # ...but vocker's own deletions forget the digest, and the next create writes them
        store.db.execute("INSERT INTO pool_inodes VALUES (1, 2, ?, 0, 0)", (vocker.EMPTY_ID,))
        store.drop_pool_inode(1, 2)
        assert store.inodes_noted(image) is None
        vocker.create(store, image, tmp_path / "c3")
        assert store.db.execute("SELECT count(*) FROM pool_inodes").fetchone()[0] == rows
        # and a container is known by its pool inodes: its commit reads no file
        assert vocker.commit(store, tmp_path / "c3", kind="plain")["files_read"] == 0
