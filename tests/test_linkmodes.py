"""Link modes: auto picks reflink, hardlink or copy; forced modes fail cleanly."""

import errno
import os

import pytest

import vocker
from conftest import WINDOWS, cli, run, tree_files


def _reflink_works(d):
    a, b = os.path.join(d, "rl-a"), os.path.join(d, "rl-b")
    with open(a, "wb") as f:
        f.write(b"x" * 4096)
    try:
        vocker.reflink_file(a, b)
        return True
    except OSError:
        return False
    finally:
        for p in (a, b):
            if os.path.exists(p):
                os.unlink(p)


@pytest.fixture(scope="module")
def plain_image(tmp_path_factory):
    base = tmp_path_factory.mktemp("lm")
    src = base / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(20):
        (src / "pkg" / f"f{i}.txt").write_text(f"content {i % 7}\n" * 50)
    (src / "run.sh").write_text("#!/bin/sh\necho ok\n")
    os.chmod(src / "run.sh", 0o755)
    (src / "empty.txt").write_text("")
    home = base / "home"
    with vocker.Store(home) as store:
        image = vocker.commit(store, src, kind="plain")["id"]
    return home, image, base


def test_auto_picks_best_mode_and_inspect_shows_it(plain_image, tmp_path):
    home, image, base = plain_image
    expected = "reflink" if _reflink_works(str(tmp_path)) else "hardlink"
    with vocker.Store(home) as store:
        r = vocker.create(store, image, tmp_path / "auto")
        assert r["link_mode"] == expected
        info = vocker.inspect(store, str(tmp_path / "auto"))
        assert info["type"] == "container" and info["link_mode"] == expected
    if expected == "hardlink":
        assert (tmp_path / "auto" / "pkg" / "f1.txt").stat().st_nlink >= 2


def test_forced_reflink_fails_cleanly_when_unsupported(plain_image, tmp_path):
    home, image, base = plain_image
    if _reflink_works(str(tmp_path)):
        pytest.skip("this filesystem supports reflinks; the failure path needs one that does not")
    target = tmp_path / "rl"
    p = cli("create", image, target, "--link-mode", "reflink", home=home)
    assert p.returncode == vocker.EXIT_ENVIRONMENT
    assert "link mode 'reflink'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not target.exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".rl.")] == []


def test_copy_mode_gives_independent_files_and_recommits(plain_image, tmp_path):
    home, image, base = plain_image
    with vocker.Store(home) as store:
        r = vocker.create(store, image, tmp_path / "cp", link_mode="copy")
        assert r["link_mode"] == "copy"
        st = (tmp_path / "cp" / "pkg" / "f1.txt").stat()
        assert st.st_nlink == 1 and st.st_mode & 0o200
        if not WINDOWS:  # its mode is kept: it still runs
            assert run([tmp_path / "cp" / "run.sh"]).stdout == "ok\n"
        again = vocker.commit(store, tmp_path / "cp", kind="plain")
        assert again["id"] == image and again["files_read"] == 0


def _other_filesystem(tmp_path):
    for d in ("/dev/shm",):
        if os.path.isdir(d) and os.access(d, os.W_OK) and \
                os.stat(d).st_dev != os.stat(tmp_path).st_dev:
            return d
    return None


def test_across_filesystems_auto_copies_and_hardlink_fails(plain_image, tmp_path):
    home, image, base = plain_image
    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no second filesystem (/dev/shm) on this machine")
    import tempfile
    d = tempfile.mkdtemp(dir=other, prefix="vocker-test-")
    try:
        p = cli("create", image, os.path.join(d, "hl"), "--link-mode", "hardlink", home=home)
        assert p.returncode == vocker.EXIT_ENVIRONMENT, p.stderr
        assert "link mode 'hardlink'" in p.stderr
        assert not os.path.exists(os.path.join(d, "hl"))
        with vocker.Store(home) as store:
            r = vocker.create(store, image, os.path.join(d, "auto"))
        assert r["link_mode"] in ("copy", "reflink")
        assert (os.stat(os.path.join(d, "auto", "pkg", "f1.txt")).st_nlink == 1)
    finally:
        vocker.rmtree(d)


def test_link_limit_starts_a_new_pool_copy(plain_image, tmp_path, monkeypatch):
    """A hardlink refused with EMLINK (NTFS allows 1023 links) starts a new pool copy."""
    home, image, base = plain_image
    real_link = os.link
    calls = {"n": 0}

    def limited_link(src, dst, *a, **kw):
        calls["n"] += 1
        if calls["n"] in (3, 4, 9) and not str(src).rsplit(".", 1)[-1].isdigit():
            raise OSError(errno.EMLINK, "Too many links", str(src))
        return real_link(src, dst, *a, **kw)

    monkeypatch.setattr(os, "link", limited_link)
    with vocker.Store(home) as store:
        r = vocker.create(store, image, tmp_path / "lim", link_mode="hardlink")
    monkeypatch.setattr(os, "link", real_link)
    assert r["link_mode"] == "hardlink"
    gens = [n for n in tree_files(home / "pool") if n.rsplit(".", 1)[-1].isdigit()]
    assert gens, "no new pool generation was started"
    for rel, st in tree_files(tmp_path / "lim").items():
        if rel.endswith(".txt") and st.st_size:
            assert st.st_nlink >= 2


def test_copy_mode_copies_the_cached_pyc_too_and_checks_them(pip_venvs, tmp_path):
    with vocker.Store(tmp_path / "home") as store:
        image = vocker.commit(store, pip_venvs[0])["id"]
        vocker.create(store, image, tmp_path / "linked")  # compiles: the pyc cache is warm
        pyc = next((tmp_path / "linked").rglob("__pycache__/*.pyc"))
        os.chmod(pyc, 0o644)
        with open(pyc, "ab") as f:  # one cached .pyc damaged through a hardlink
            f.write(b"\0")
        r = vocker.create(store, image, tmp_path / "cp", link_mode="copy")
        assert r["link_mode"] == "copy" and r["pyc_cached"] > 20 and r["repaired"] == 1
        files = [p for p in (tmp_path / "cp").rglob("*") if p.is_file() and not p.is_symlink()]
        assert any(p.suffix == ".pyc" for p in files)
        assert [p for p in files if p.stat().st_nlink != 1] == []  # nothing shared
        copy = tmp_path / "cp" / pyc.relative_to(tmp_path / "linked")
        assert copy.read_bytes() == pyc.read_bytes()[:-1]  # compiled again, not the damaged one
