"""Containers of one image share their files and .pyc files through the pool."""

import hashlib
import os
import stat
import subprocess

import pytest

import vocker
from conftest import (WINDOWS, clean_env, run, template_paths, tree_files, venv_python,
                      venv_script, venv_site_packages)


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
        assert (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or rel in templates
                or st.st_size == 0), f"{rel} is not shared"
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
