"""create: a hostile image never writes outside its container, bytecode comes
only from this machine's compile, every crash window is recoverable, rm never
changes a shared inode, and damaged pool files are repaired before linking."""

import os
import stat
import subprocess
import sys
import zlib

import pytest

import vocker
from conftest import (KILLED_RC, REPO, SYMLINKS, clean_env, cli, image_entries, main_python,
                      needs_symlinks, posix_only)
from test_transport import _craft_repo
from vocker import PH_ENV, PH_PYEXE, PH_PYHOME, Manifest, Tree, TreeEntry, hash_bytes

BLOBS = {"a": b"alpha\n" * 50, "b": b"beta\n" * 50,
         "py": b"import os\nVALUE = 42\n", "sh": b"#!/bin/sh\ntouch \"$0.ran\"\n"}
SITE = "lib/python3.11/site-packages"


def _python_need():
    info = vocker.query_python(main_python())
    return {k: info[k] for k in ("implementation", "version", "cache_tag", "platform")}


def _store_image(store, tmp_path, dirs, kind="plain", python=None):
    """Put a hand-made image straight into ``store`` (no pull: create's own
    checks are what is tested). ``dirs`` maps a folder to (name, type, ref):
    ref is a BLOBS key for files, the target bytes for links."""
    src = tmp_path / "blob-src"
    if not src.exists():
        src.mkdir()
        for key, data in BLOBS.items():
            (src / key).write_bytes(data)
        vocker.commit(store, src, kind="plain")       # puts every blob in the store

    def build(rel):
        out = []
        for name, type_, ref in dirs[rel]:
            if type_ == "d":
                ref = build(f"{rel}/{name}" if rel else name)
            elif type_ in "lL":
                ref = ref.hex()
            else:
                ref = hash_bytes(BLOBS[ref])
            out.append(TreeEntry(name, type_, ref))
        t = Tree(out)
        store.db.execute("INSERT OR IGNORE INTO trees VALUES (?,?)", (t.id, t.serialize()))
        return t.id
    m = Manifest(kind, build(""), python=python)
    store.db.execute("INSERT OR IGNORE INTO images(id, manifest, created) VALUES (?,?,0)",
                     (m.id, m.serialize()))
    return m.id


def _snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            out[rel] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


HONEST = {"": [("a.txt", "f", "a"), ("sub", "d", None), ("lnk", "l", b"sub/b.txt")],
          "sub": [("b.txt", "f", "b")]}
VENV = {"": [("bin", "d", None), ("lib", "d", None)],
        "bin": [("python", "L", PH_PYEXE), ("python3", "l", b"python")],
        "lib": [("python3.11", "d", None)], "lib/python3.11": [("site-packages", "d", None)],
        SITE: [("ok.py", "f", "py")]}


def _with(base, extra):
    """``base`` with entries added: ``extra`` maps a folder ('' = top) to entries."""
    out = {k: list(v) for k, v in base.items()}
    for key, entries in extra.items():
        out.setdefault(key, []).extend(entries)
    return out


def _top(name, type_, ref):
    return _with(HONEST, {"": [(name, type_, ref)]})


def _site(*entries):
    return _with(VENV, {SITE: list(entries)})


OUTSIDE, BYTECODE = "outside the environment", "holds bytecode"
HOSTILE = [
    # (id, tree, kind, message fragment)
    ("env-sibling", _top("x", "L", PH_ENV + b"-2/x"), "plain", OUTSIDE),
    ("pyhome", _top("x", "L", PH_PYHOME), "plain", OUTSIDE),
    ("pyhome-python", _top("x", "L", PH_PYHOME + b"/python"), "plain", OUTSIDE),
    ("pyexe-config", _with(VENV, {"bin": [("python3.11-config", "L", PH_PYEXE + b"-config")]}),
     "venv", OUTSIDE),
    ("pyexe-not-interpreter-name", _with(VENV, {"bin": [("evil", "L", PH_PYEXE)]}), "venv", OUTSIDE),
    ("pyexe-not-top-bin", _site(("python", "L", PH_PYEXE)), "venv", OUTSIDE),
    ("env-dotdot", _top("x", "L", PH_ENV + b"/../x"), "plain", OUTSIDE),
    ("env-dotdot-deep", _top("x", "L", PH_ENV + b"/sub/../../x"),
     "plain", OUTSIDE),
    ("env-double-slash", _top("x", "L", PH_ENV + b"//etc"), "plain", OUTSIDE),
    ("env-backslash", _top("x", "L", PH_ENV + b"/..\\..\\x"),
     "plain", OUTSIDE),
    ("env-second-placeholder", _top("x", "L", PH_ENV + b"/" + PH_PYHOME),
     "plain", OUTSIDE),
    ("env-trailing-slash", _top("x", "L", PH_ENV + b"/"), "plain", OUTSIDE),
    # the attack: __pycache__ next to a .py is a link to a sibling folder
    ("pycache-link-to-sibling", _site(("evil.py", "f", "py"),
                                      ("__pycache__", "L", PH_ENV + b"-2/x")), "venv", BYTECODE),
    ("pycache-link-inside", _site(("evil.py", "f", "py"),
                                  ("__pycache__", "L", PH_ENV + b"/lib")), "venv", BYTECODE),
    ("pycache-relative-link", _site(("evil.py", "f", "py"), ("__pycache__", "l", b"..")),
     "venv", BYTECODE),
    ("pycache-dir", _with(_site(("evil.py", "f", "py"), ("__pycache__", "d", None)),
                          {f"{SITE}/__pycache__": [("evil.cpython-311.pyc", "f", "a")]}),
     "venv", BYTECODE),
    ("pyc-file", _site(("evil.cpython-311.pyc", "f", "a")), "venv", BYTECODE),
    ("pyo-file", _with(HONEST, {"sub": [("x.pyo", "f", "a")]}), "plain", BYTECODE),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_image_is_refused_at_create_and_writes_nothing_outside(case, tmp_path):
    name, tree, kind, fragment = case
    with vocker.Store(tmp_path / "home") as store:
        python = _python_need() if kind == "venv" else None
        image = _store_image(store, tmp_path, tree, kind, python)
        parent = tmp_path / "envs"
        (parent / "web-2" / "x").mkdir(parents=True)      # the watched sibling
        (parent / "web-2" / "x" / "keep.txt").write_text("mine")
        before = _snapshot(parent)
        with pytest.raises(vocker.InvalidInputError) as info:
            vocker.create(store, image, parent / "web")   # compile on: the default
        assert fragment in str(info.value) and "\n" not in str(info.value)
        assert info.value.exit_code == vocker.EXIT_INVALID
        assert _snapshot(parent) == before                # no target, no stage, sibling intact
        # the same image from a repository is refused at pull
        repo_tree = {k: [(n, t, r.hex() if t in "lL" else (None if t == "d" else r))
                         for n, t, r in v] for k, v in tree.items()}
        _craft_repo(tmp_path / "repo", repo_tree, BLOBS)
        with vocker.Store(tmp_path / "home2") as other:
            with pytest.raises(vocker.InvalidInputError, match=fragment):
                vocker.pull(other, str(tmp_path / "repo"), ["evil:1"])
        # an honest create afterwards works
        good = _store_image(store, tmp_path, VENV, "venv", _python_need())
        r = vocker.create(store, good, parent / "web")
        assert r["pyc_compiled"] + r["pyc_cached"] == 1 and r["warnings"] == []
        if SYMLINKS:
            assert os.readlink(parent / "web" / "bin" / "python") == r["python"]["executable"]
        assert _snapshot(parent / "web-2") == {k[len("web-2/"):]: v for k, v in before.items()
                                               if k.startswith("web-2/")}


def test_cli_refuses_a_hostile_image_with_one_line_and_exit_5(tmp_path):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        image = _store_image(store, tmp_path, HOSTILE[0][1])
    p = cli("create", image, str(tmp_path / "web"), home=home)
    assert p.returncode == vocker.EXIT_INVALID
    assert p.stderr.count("\n") == 1 and "outside the environment" in p.stderr
    assert not (tmp_path / "web").exists()


@pytest.mark.parametrize("rel, tpl", [
    ("bin/python", PH_PYEXE), ("bin/python3", PH_PYEXE), ("bin/python3.11", PH_PYEXE),
    ("bin/pypy3", PH_PYEXE), ("Scripts/python.exe", PH_PYEXE),
    ("x", PH_ENV), ("x", PH_ENV + b"/lib/a.txt"), ("lib/x", PH_ENV + b"/bin/python"),
])
def test_honest_link_templates_pass(rel, tpl):
    vocker.check_link_template(rel, tpl)


@pytest.mark.parametrize("rel, tpl", [
    ("bin/python", PH_PYEXE + b"/x"), ("bin/python", PH_PYHOME + b"/python3"),
    ("sub/bin/python", PH_PYEXE), ("bin/pip", PH_PYEXE), ("python", PH_PYEXE),
    ("x", PH_ENV + b"-2"), ("x", PH_ENV + b"/a//b"), ("x", PH_ENV + b"/a/.."),
    ("x", b"/etc/" + PH_ENV), ("x", PH_ENV + PH_ENV),
])
def test_link_templates_leaving_the_environment_are_refused(rel, tpl):
    with pytest.raises(vocker.InvalidInputError, match=f"symlink {rel} points outside"):
        vocker.check_link_template(rel, tpl)


def test_honest_venvs_pass_the_link_rules(demo_image, shared_store, uv_venvs, store):
    """What pip and uv venvs commit to still passes: one interpreter link in
    bin/ -> the base interpreter, the other names relative."""
    for s, image in ((shared_store, demo_image[1]),
                     (store, vocker.commit(store, uv_venvs[0])["id"])):
        links = image_entries(s, image).items()
        templated = {rel: bytes.fromhex(e.ref) for rel, e in links
                     if e.type == vocker.T_SYMLINK_TEMPLATE}
        assert templated and set(templated.values()) == {PH_PYEXE}, templated
        assert all(rel.startswith("bin/python") for rel in templated)


@needs_symlinks
def test_no_write_ever_goes_through_an_existing_name(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"mine")
    src = tmp_path / "src"
    src.write_bytes(b"evil")
    os.symlink(victim, tmp_path / "dst")
    with pytest.raises(FileExistsError):
        vocker.copy_file(src, tmp_path / "dst")
    with pytest.raises(FileExistsError):
        vocker.create_exclusive(tmp_path / "dst")
    assert victim.read_bytes() == b"mine"


def test_standalone_image_is_compiled_by_this_machines_python_never_its_own(tmp_path):
    """A standalone image's bin/python3 never runs: the compile uses a
    matching interpreter found here; with none, the create warns and goes on."""
    with vocker.Store(tmp_path / "home") as store:
        tree = {"": [("bin", "d", None), ("lib", "d", None)],
                "bin": [("python3", "x", "sh")], "lib": [("mod.py", "f", "py")]}
        need = _python_need()
        image = _store_image(store, tmp_path, tree, "standalone", need)
        r = vocker.create(store, image, tmp_path / "sa")
        assert not (tmp_path / "sa" / "bin" / "python3.ran").exists()
        assert r["pyc_compiled"] == 1 and r["warnings"] == []
        assert (tmp_path / "sa" / "lib" / "__pycache__" / f"mod.{need['cache_tag']}.pyc").is_file()
        other = dict(need, version="3.99.0", cache_tag="cpython-399")
        image2 = _store_image(store, tmp_path, tree, "standalone", other)
        r = vocker.create(store, image2, tmp_path / "sa2")
        assert r["pyc_compiled"] == 0 and "no .pyc files compiled" in r["warnings"][0]
        assert not (tmp_path / "sa2" / "bin" / "python3.ran").exists()
        assert not (tmp_path / "sa2" / "lib" / "__pycache__").exists()


# ----------------------------------------------------------------- crash windows

_KILL_AT = """
import os, signal, sys
sys.path.insert(0, sys.argv[5])
import vocker
store = vocker.Store(sys.argv[1])
vocker.create(store, sys.argv[2], sys.argv[3], link_mode="copy",
              checkpoint=lambda w: w == sys.argv[4] and os.kill(
                  os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM)))
"""


def _kill_create_at(home, image, target, window):
    p = subprocess.run([sys.executable, "-c", _KILL_AT, str(home), image, str(target), window,
                        str(REPO)], env=clean_env(), capture_output=True, timeout=120)
    assert p.returncode == KILLED_RC, p.stderr


WINDOWS = ["pending", "staged", "materialized", "renamed"]


@pytest.mark.parametrize("window", WINDOWS)
def test_create_killed_in_every_window_is_recovered_by_create_and_rm(window, tmp_path):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        image = _store_image(store, tmp_path, HONEST)
    parent = tmp_path / "envs"
    parent.mkdir()
    target = parent / "web"
    _kill_create_at(home, image, target, window)
    assert target.exists() == (window == "renamed")
    # rm recognises the leftover of an interrupted create
    p = cli("rm", str(target), home=home)
    assert p.returncode == 0, p.stderr
    assert "removed an interrupted create" in p.stdout
    assert os.listdir(parent) == []
    # and so does create
    _kill_create_at(home, image, target, window)
    with vocker.Store(home) as store:
        vocker.create(store, image, target)
        assert os.listdir(parent) == ["web"]
        assert (target / "sub" / "b.txt").read_bytes() == BLOBS["b"]
        assert vocker.remove_container(store, target) == {"path": str(target), "removed": True}
        assert os.listdir(parent) == []
        assert store.pending_create(str(target)) is None


def test_what_replaced_an_interrupted_create_is_never_removed(tmp_path):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        image = _store_image(store, tmp_path, HONEST)
        target = tmp_path / "web"
        _kill_create_at(home, image, target, "renamed")
        vocker.rmtree(str(target))
        target.mkdir()
        (target / "mine.txt").write_text("user data")          # not vocker's any more
        with pytest.raises(vocker.ConflictError, match="already exists"):
            vocker.create(store, image, target)
        with pytest.raises(vocker.NotFoundError):
            vocker.remove_container(store, target)
        assert (target / "mine.txt").read_text() == "user data"


def test_create_of_a_path_a_live_process_is_creating_is_a_conflict(tmp_path):
    with vocker.Store(tmp_path / "home") as store:
        image = _store_image(store, tmp_path, HONEST)
        target = tmp_path / "web"
        seen = []

        def again(window):
            if window == "materialized":
                with pytest.raises(vocker.ConflictError, match="being created"):
                    vocker.create(store, image, target)
                with pytest.raises(vocker.ConflictError, match="being created"):
                    vocker.remove_container(store, target)
                seen.append(window)
        vocker.create(store, image, target, checkpoint=again)
        assert seen == ["materialized"] and (target / "a.txt").is_file()


# ------------------------------------------------------- rm and shared inodes

def _modes(paths):
    return {p: (os.lstat(p).st_mode, os.lstat(p).st_mtime_ns) for p in paths}


def _files(root):
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]


@pytest.fixture
def three_containers(tmp_path):
    with vocker.Store(tmp_path / "home") as store:
        image = _store_image(store, tmp_path, _site(("m.py", "f", "a")), "venv", _python_need())
        cs = [tmp_path / f"c{i}" for i in range(3)]
        for c in cs:
            vocker.create(store, image, c, link_mode="hardlink")
        yield store, cs


def test_rm_never_changes_the_mode_of_a_shared_inode(three_containers):
    store, (c0, c1, c2) = three_containers
    site = c0 / SITE
    assert (site / "ok.py").stat().st_nlink >= 4 and list((site / "__pycache__").iterdir())
    os.chmod(site, 0o555)                               # a read-only folder in the container
    os.chmod(site / "__pycache__", 0o555)
    pool = _files(store.pool_dir)
    before = _modes(pool + _files(c1))
    vocker.remove_container(store, c0)
    assert not c0.exists()
    assert _modes(pool + _files(c1)) == before


def test_windows_rm_restores_the_read_only_attribute_on_the_pool(three_containers):
    """Windows: deleting a read-only hardlink needs its (per-inode) attribute
    cleared; rmtree then restores it on the pool copy of that inode."""
    store, (c0, c1, c2) = three_containers
    pool = _files(store.pool_dir)
    before = _modes(pool + _files(c2))
    restored = []

    def restore(st):
        restored.append(store.restore_readonly(st))
    vocker.rmtree(str(c1), restore_readonly=restore, target=vocker.Target.windows())
    assert not c1.exists()
    pycs = {store.pool_path(r[0]) for r in store.db.execute("SELECT id FROM pyc_files")}
    assert len(restored) == 4 and len(pycs & set(restored)) == 2   # 2 sources, 2 .pyc
    assert _modes(pool + _files(c2)) == before


@posix_only("switches to an ordinary user with setuid")
def test_rm_as_an_ordinary_user_removes_a_read_only_folder_and_touches_no_pool_mode(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to switch to an ordinary user")
    import tempfile
    base = tempfile.mkdtemp(prefix="vocker-user-")
    try:
        os.chmod(base, 0o755)
        home, src = os.path.join(base, "home"), os.path.join(base, "src")
        os.mkdir(src)
        for key, data in BLOBS.items():
            with open(os.path.join(src, key), "wb") as f:
                f.write(data)
        subprocess.run(["chown", "-R", "65534:65534", base], check=True)

        def as_user():
            os.setgid(65534)
            os.setuid(65534)
        # an interpreter an ordinary user may run (pyenv's lives in /root)
        exe = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
        if not os.access(exe, os.X_OK):
            pytest.skip(f"{exe} is missing")
        import blake3
        import zstandard
        paths = {str(REPO), os.path.dirname(os.path.dirname(blake3.__file__)),
                 os.path.dirname(os.path.dirname(zstandard.__file__))}
        env = dict(clean_env(), HOME=base, PYTHONPATH=os.pathsep.join(sorted(paths)))
        run = lambda *a: subprocess.run([exe, "-m", "vocker", "--home", home, *a],
                                        env=env, cwd=base, capture_output=True, text=True,
                                        preexec_fn=as_user, timeout=120)
        p = run("commit", src, "--kind", "plain", "--tag", "p:1")
        if p.returncode != 0:
            pytest.skip(f"cannot run vocker as an ordinary user here: {p.stderr.strip()}")
        for c in ("c0", "c1"):
            p = run("create", "p:1", os.path.join(base, c), "--link-mode", "hardlink")
            assert p.returncode == 0, p.stderr
        c0 = os.path.join(base, "c0")
        os.chmod(c0, 0o555)
        pool = _files(os.path.join(home, "pool"))
        before = _modes(pool + _files(os.path.join(base, "c1")))
        p = run("rm", c0)
        assert p.returncode == 0, p.stderr
        assert not os.path.exists(c0)
        assert _modes(pool + _files(os.path.join(base, "c1"))) == before
    finally:
        vocker.rmtree(base)


# ------------------------------------------------------- pool files checked

def _pool_of(store, rel_in_container):
    st = os.lstat(rel_in_container)
    for p in _files(store.pool_dir):
        if os.lstat(p).st_ino == st.st_ino:
            return p
    raise AssertionError(f"{rel_in_container} is not a pool hardlink")


@pytest.mark.parametrize("damage", ["writable", "mtime", "size",
                                    pytest.param("symlink", marks=needs_symlinks)])
def test_damaged_pool_file_is_replaced_before_it_is_linked(damage, three_containers, tmp_path):
    store, (c0, c1, c2) = three_containers
    victim = c0 / SITE / "m.py"
    pool = _pool_of(store, victim)
    old_ino = os.lstat(pool).st_ino
    if damage == "writable":
        os.chmod(pool, 0o644)
    elif damage == "mtime":
        os.utime(pool, (1, 1))
    elif damage == "size":
        os.chmod(victim, 0o644)
        with open(victim, "ab") as f:                 # written through a container's hardlink
            f.write(b"print('owned')\n")
    else:
        os.unlink(pool)
        os.symlink(tmp_path / "elsewhere", pool)
        (tmp_path / "elsewhere").write_bytes(BLOBS["a"])
    sibling_before = _snapshot(c1)
    image = store.db.execute("SELECT image FROM containers WHERE path=?", (str(c0),)).fetchone()[0]
    r = vocker.create(store, image, tmp_path / "fresh", link_mode="hardlink")
    assert r["repaired"] == 1
    fresh = tmp_path / "fresh" / SITE / "m.py"
    assert fresh.read_bytes() == store.read_blob(hash_bytes(BLOBS["a"]))
    st = os.lstat(pool)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_ino != old_ino and st.st_mtime == vocker.FIXED_MTIME
    assert os.lstat(fresh).st_ino == st.st_ino
    # the old inode's other links were not written into
    assert _snapshot(c1) == sibling_before
    if damage != "symlink":   # the damaged inode is forgotten
        assert store.db.execute("SELECT count(*) FROM pool_inodes WHERE ino=?",
                                (old_ino,)).fetchone()[0] == 0
    # the next create finds nothing to repair
    assert vocker.create(store, image, tmp_path / "fresh2")["repaired"] == 0


def test_pyc_rewritten_through_a_hardlink_is_not_linked_again(three_containers, tmp_path):
    store, (c0, c1, c2) = three_containers
    pyc = next((c0 / SITE / "__pycache__").glob("m.*.pyc"))
    honest = pyc.read_bytes()
    assert pyc.stat().st_nlink >= 4
    os.chmod(pyc, 0o644)
    pyc.write_bytes(honest[:16] + b"evil bytecode" * 10)
    image = store.db.execute("SELECT image FROM containers WHERE path=?", (str(c0),)).fetchone()[0]
    r = vocker.create(store, image, tmp_path / "fresh", link_mode="hardlink")
    assert r["repaired"] == 1 and r["pyc_compiled"] == 1
    fresh = tmp_path / "fresh" / SITE / "__pycache__" / pyc.name
    assert fresh.read_bytes() == honest
    assert os.lstat(fresh).st_ino != os.lstat(c1 / SITE / "__pycache__" / pyc.name).st_ino
    # the damaged inode is left to the containers that hold it, not rewritten
    assert (c1 / SITE / "__pycache__" / pyc.name).read_bytes() != honest
    r = vocker.create(store, image, tmp_path / "fresh2", link_mode="hardlink")
    assert r["repaired"] == 0 and r["pyc_cached"] == 2


def test_pyc_without_a_recorded_size_is_checked_by_its_hash(three_containers, tmp_path):
    """A store from an older vocker has no pyc_files rows: the pool .pyc is
    hashed once (its ID is its hash) and its size recorded."""
    store, (c0, c1, c2) = three_containers
    image = store.db.execute("SELECT image FROM containers WHERE path=?", (str(c0),)).fetchone()[0]
    store.db.execute("DELETE FROM pyc_files")
    r = vocker.create(store, image, tmp_path / "fresh")
    assert r["repaired"] == 0 and r["pyc_cached"] == 2
    assert store.db.execute("SELECT count(*) FROM pyc_files").fetchone()[0] == 2


def _files_of(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            out[rel] = os.readlink(p) if os.path.islink(p) else \
                None if os.path.isdir(p) else open(p, "rb").read()
    return out


def _plan_rows(store, image):
    return store.db.execute("SELECT rules FROM plans WHERE image=? ORDER BY rules",
                            (image,)).fetchall()


def test_create_keeps_the_plan_uses_it_next_time_and_makes_a_damaged_one_again(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "a.txt").write_bytes(BLOBS["a"])
    (src / "pkg" / "sub" / "b.txt").write_bytes(BLOBS["b"])
    (src / "pkg" / "empty").write_bytes(b"")
    if SYMLINKS:
        os.symlink("a.txt", src / "pkg" / "link")
    with vocker.Store(tmp_path / "home") as store:
        image = vocker.commit(store, src, kind="plain")["id"]
        vocker.create(store, image, tmp_path / "c1")
        [(rules,)] = _plan_rows(store, image)
        assert store.plan(image, rules) is not None
        # a damaged row is not used: the trees are walked again, the row made again
        store.db.execute("UPDATE plans SET data = data || x'00' WHERE image=?", (image,))
        assert store.plan(image, rules) is None
        vocker.create(store, image, tmp_path / "c2")
        assert store.plan(image, rules) is not None
        # a kept plan is all the next create reads: it works with a tree gone
        sub = image_entries(store, image)["pkg/sub"].ref
        store.db.execute("DELETE FROM trees WHERE id=?", (sub,))
        vocker.create(store, image, tmp_path / "c3")
        store.db.execute("DELETE FROM plans WHERE image=?", (image,))
        with pytest.raises(vocker.NotFoundError):
            vocker.create(store, image, tmp_path / "c4")
    want = _files_of(src)
    assert _files_of(tmp_path / "c1") == _files_of(tmp_path / "c2") == \
        _files_of(tmp_path / "c3") == want


def test_a_plan_of_another_format_is_made_again(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.txt").write_bytes(BLOBS["a"])
    with vocker.Store(tmp_path / "home") as store:
        image = vocker.commit(store, src, kind="plain")["id"]
        vocker.create(store, image, tmp_path / "c1")
        [(rules,)] = _plan_rows(store, image)
        old = zlib.compress(b'[["pkg"],[["pkg/a.txt","f","x",1]],[]]')  # an earlier vocker's
        store.set_plan(image, rules, old)
        assert store.plan(image, rules) == old  # its hash holds: only its format is foreign
        vocker.create(store, image, tmp_path / "c2")
        assert store.plan(image, rules).startswith(b'["%s",' % vocker.Plan.FORMAT.encode())
    assert _files_of(tmp_path / "c2") == _files_of(src)


def test_a_plan_is_kept_per_system_and_goes_with_the_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(BLOBS["a"])
    with vocker.Store(tmp_path / "home") as store:
        image = vocker.commit(store, src, kind="plain", tags=["p:1"])["id"]
        vocker.create(store, image, tmp_path / "local")
        vocker.create(store, image, tmp_path / "win", target=vocker.Target.windows("C:\\envs\\p"))
        rows = [r for (r,) in _plan_rows(store, image)]
        systems = {"win"} if vocker.WINDOWS else {"posix", "win"}  # the local one, and Windows
        assert rows == sorted(f"{vocker.__version__} {s}" for s in systems)
        vocker.remove_container(store, tmp_path / "local")
        vocker.remove_container(store, tmp_path / "win")
        vocker.remove_images(store, ["p:1"])
        assert _plan_rows(store, image) == []


#: run by a new interpreter: every path that a commit, two creates and an rm
#: hand to a file-system call (audit events) in the \\?\ form with a "/" in it
_EXTENDED_SLASHES = r"""
import json, os, sys
bad = []
def hook(event, args):
    for a in args:  # vocker's paths are str
        if isinstance(a, str) and a.startswith("\\\\?\\") and "/" in a:
            bad.append([event, a])
sys.addaudithook(hook)
import vocker
venv, home, *targets = sys.argv[1:]
store = vocker.Store(home)
image = vocker.commit(store, venv)["id"]
for target in targets:
    vocker.create(store, image, target)
vocker.remove_container(store, targets[0])
print(json.dumps(bad[:5]))
"""


@pytest.mark.skipif(os.name != "nt", reason="the \\\\?\\ form of long paths exists on Windows only")
def test_a_create_at_a_long_path_hands_windows_no_slash_in_the_extended_form(tmp_path):
    """Windows converts "/" to "\\" except after \\\\?\\: the image's "/"-separated
    names must reach the file system with backslashes once the container's
    path is long (240+ characters: the extended form). Two creates: the
    first compiles the .pyc, the second links them from the store."""
    venv = tmp_path / "src"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   env=clean_env(), timeout=300)
    pkg = venv / "Lib" / "site-packages" / "pkg" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg.parent / "__init__.py").write_text("")
    deep = tmp_path / ("long-" + "l" * 90) / ("deeper-" + "d" * 90)
    targets = [deep / f"env{i}" for i in (1, 2)]
    assert all(len(str(t)) >= 240 for t in targets)
    p = subprocess.run([sys.executable, "-c", _EXTENDED_SLASHES, str(venv), str(tmp_path / "h"),
                        *map(str, targets)], capture_output=True, text=True, env=clean_env(),
                       cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "[]", p.stdout
    assert not targets[0].exists()
    assert (targets[1] / "Lib" / "site-packages" / "pkg" / "sub" / "__pycache__").is_dir()
