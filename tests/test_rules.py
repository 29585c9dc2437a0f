"""One rule set for commit, pull, load and create.

Each row of SHAPES is a bad shape given twice: as a real folder on disk (for
``commit``) and as a crafted tree (for ``pull`` from a hand-made repository and
for ``create`` of an image put straight into a store). Every path must refuse
it with the same class (InvalidInputError, exit 5) and a one-line message.
Also here: the bound on tree expansion (paths produced, linear work) and the
rule that commit never runs a program that lives inside the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

import vocker
from conftest import main_python, make_names, posix_only, require_symlinks
from vocker import PH_ENV, PH_PYHOME, InvalidInputError, Manifest, Tree, TreeEntry, hash_bytes

EMPTY_TREE = Tree([])
FAKE_PY = {"implementation": "cpython", "version": "3.11.7", "cache_tag": "cpython-311",
           "platform": "linux-x86_64", "executable": "/opt/fakepy/bin/python3.11",
           "in_venv": False}


# ------------------------------------------------------------ the shapes

def _chain(root, n):
    """``n`` nested folders ``d/d/...`` below root, made without recursion."""
    p = str(root)
    for _ in range(n):
        p = os.path.join(p, "d")
        os.mkdir(p)


def _chain_tree(n):
    """{rel: entries} of the same chain, as a crafted tree."""
    dirs = {}
    rel = ""
    for _ in range(n):
        child = f"{rel}/d" if rel else "d"
        dirs[rel] = [("d", "d", child)]
        rel = child
    dirs[rel] = []
    return dirs


def _on_disk_link(target):
    def make(root):
        require_symlinks()
        os.symlink(target, root / "l")
    return make


def _on_disk_dirs(*names):
    return lambda root: make_names(root, names)


def _sibling_link(root):
    require_symlinks()
    os.symlink(f"{root}-2/x", root / "l")


def _pyhome_venv(root):
    # a venv-shaped folder whose base interpreter is FAKE_PY (nothing runs)
    require_symlinks()
    (root / "pyvenv.cfg").write_text("home = /opt/fakepy/bin\nversion = 3.11.7\n")
    (root / "bin").mkdir()
    os.symlink("/opt/fakepy/bin/python3.11", root / "bin" / "python")
    os.symlink("/opt/fakepy/bin/pip3", root / "bin" / "evil")


SHAPES = [
    # id, make the folder, crafted {rel: [(name, type, ref)]}, commit kind
    ("absolute-symlink-outside", _on_disk_link("/etc/passwd"),
     {"": [("l", "l", "/etc/passwd")]}, "plain"),
    ("relative-symlink-outside", _on_disk_link("../../etc/passwd"),
     {"": [("l", "l", "../../etc/passwd")]}, "plain"),
    ("symlink-to-base-python-dir-plus-path", _pyhome_venv,
     {"": [("bin", "d", "bin")],
      "bin": [("evil", "L", PH_PYHOME.decode() + "/pip3")]}, "venv"),
    ("symlink-to-env-sibling", _sibling_link,
     {"": [("l", "L", PH_ENV.decode() + "-2/x")]}, "plain"),
    ("300-nested-dirs", lambda root: _chain(root, 300), _chain_tree(300), "plain"),
    ("1200-nested-dirs", lambda root: _chain(root, 1200), _chain_tree(1200), "plain"),
    ("nfc-nfd-pair", _on_disk_dirs("\u00e9", "e\u0301"),
     {"": [("\u00e9", "d", "e1"), ("e\u0301", "d", "e2")], "e1": [], "e2": []}, "plain"),
    ("case-pair", _on_disk_dirs("Readme", "README"),
     {"": [("README", "d", "a"), ("Readme", "d", "b")], "a": [], "b": []}, "plain"),
    ("newline-in-name", _on_disk_dirs("a\nb"), {"": [("a\nb", "d", "x")], "x": []}, "plain"),
]
IDS = [s[0] for s in SHAPES]


def _remove_deep(root):
    """rmtree without recursion (a 1,200-level chain is deeper than Python's stack)."""
    for dirpath, dirnames, filenames in _walk_bottom_up(str(root)):
        for n in filenames:
            os.unlink(os.path.join(dirpath, n))
        os.rmdir(dirpath)


def _walk_bottom_up(top):
    order, stack = [], [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = list(it)
        subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        order.append((d, subdirs, [e.name for e in entries
                                   if not e.is_dir(follow_symlinks=False)]))
        stack.extend(subdirs)
    return reversed(order)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "env"
    root.mkdir()
    yield root
    if root.exists():
        _remove_deep(root)


def _tree_bytes(entries_by_dir, trees):
    """Build crafted trees bottom-up into ``trees`` {id: bytes}; returns the root ID.
    Entries of type "l"/"L" carry their target as text; "d" the rel of a dir."""
    ids = {}
    for rel in sorted(entries_by_dir, key=lambda r: -(r.count("/") + 1) if r else 1):
        out = []
        for name, type_, ref in entries_by_dir[rel]:
            if type_ == "d":
                ref = ids[ref]
            elif type_ in ("l", "L"):
                ref = ref.encode("utf-8").hex()
            out.append(TreeEntry(name, type_, ref))
        t = Tree.__new__(Tree)
        t.entries = sorted(out, key=lambda e: e.name.encode("utf-8"))
        data = t.serialize()
        ids[rel] = hash_bytes(data)
        trees[ids[rel]] = data
    return ids[""]


def _crafted_manifest(entries_by_dir, kind):
    trees = {}
    root = _tree_bytes(entries_by_dir, trees)
    python = {k: FAKE_PY[k] for k in vocker.PYTHON_FACTS} if kind != "plain" else None
    return Manifest(kind, root, python=python), trees


def _craft_repo(path, entries_by_dir, kind="plain", tag="evil:1"):
    """A one-image folder repository holding only trees (no blobs)."""
    m, trees = _crafted_manifest(entries_by_dir, kind)
    path.mkdir()
    vocker.repo_init(str(path))
    data = m.serialize()
    bundle = b"".join(f"{tid} {len(d)}\n".encode() + d for tid, d in sorted(trees.items()))
    (path / "images" / f"{m.id}.trees").write_bytes(bundle)
    (path / "images" / f"{m.id}.blobs").write_bytes(b"")
    (path / "images" / f"{m.id}.json").write_bytes(data)
    index = {"format": 1, "images": {m.id: {"kind": kind, "python": None}},
             "tags": {tag: m.id}}
    (path / "index.json").write_text(json.dumps(index))
    return m.id


def _put_image(store, entries_by_dir, kind):
    """Record a crafted image in a store, as a hostile pull would have if its
    checks were weaker; create must still refuse it."""
    m, trees = _crafted_manifest(entries_by_dir, kind)
    with store.transaction() as db:
        db.executemany("INSERT OR IGNORE INTO trees VALUES (?,?)", list(trees.items()))
        db.execute("INSERT INTO images(id, manifest, created) VALUES (?,?,0)",
                   (m.id, m.serialize()))
    return m.id


def _refused_one_line(fn):
    with pytest.raises(InvalidInputError) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text and "\r" not in text
    return text


# ------------------------------------------------------------ the table

@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_commit_refuses(shape, folder, store):
    name, make, _, kind = shape
    make(folder)
    text = _refused_one_line(lambda: vocker.commit(store, folder, kind=kind,
                                                   target=vocker.Target.local(dict(FAKE_PY))))
    assert str(folder) in text or "symlink" in text
    assert vocker.list_images(store) == []
    assert not [n for n in os.listdir(store.tmp_dir) if n.startswith(("pack-", "blob-"))]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_pull_refuses(shape, tmp_path, store):
    name, _, crafted, kind = shape
    repo = tmp_path / "repo"
    _craft_repo(repo, crafted, kind)
    _refused_one_line(lambda: vocker.pull(store, str(repo), ["evil:1"]))
    assert vocker.list_images(store) == []


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_load_refuses(shape, tmp_path, store):
    import tarfile
    name, _, crafted, kind = shape
    repo = tmp_path / "repo"
    _craft_repo(repo, crafted, kind)
    archive = tmp_path / "evil.vocker"
    with tarfile.open(archive, "w") as tar:
        for dirpath, _, filenames in os.walk(repo):
            for n in filenames:
                p = os.path.join(dirpath, n)
                tar.add(p, arcname=os.path.relpath(p, repo))
    _refused_one_line(lambda: vocker.load(store, str(archive)))
    assert vocker.list_images(store) == []


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_create_refuses(shape, tmp_path, store):
    name, _, crafted, kind = shape
    image = _put_image(store, crafted, kind)
    target = tmp_path / "c"
    _refused_one_line(lambda: vocker.create(store, image, target, compile=False,
                                            target=vocker.Target.local(dict(FAKE_PY))))
    assert not target.exists()
    assert os.listdir(tmp_path) == ["store"]


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[3] == "plain"],
                         ids=[s[0] for s in SHAPES if s[3] == "plain"])
def test_cli_commit_and_pull_exit_5_with_one_line(shape, folder, tmp_path, capsys):
    name, make, crafted, _ = shape
    make(folder)
    home = str(tmp_path / "home")
    assert vocker.main(["--home", home, "commit", str(folder), "--kind", "plain"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("vocker: error: ") and err.count("\n") == 1, err
    repo = tmp_path / "repo"
    _craft_repo(repo, crafted)
    assert vocker.main(["--home", home, "pull", str(repo), "evil:1"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("vocker: error: ") and err.count("\n") == 1, err


# ------------------------------------------------------- depth boundary

def test_depth_limit_is_the_same_for_commit_and_create(folder, tmp_path, store):
    _chain(folder, vocker.MAX_DEPTH)
    image = vocker.commit(store, folder, kind="plain")["id"]
    vocker.create(store, image, tmp_path / "c")
    deepest = os.path.join(str(tmp_path / "c"), *["d"] * vocker.MAX_DEPTH)
    assert os.path.isdir(deepest)
    _remove_deep(tmp_path / "c")
    os.mkdir(os.path.join(str(folder), *["d"] * vocker.MAX_DEPTH, "d"))
    with pytest.raises(InvalidInputError, match="deep"):
        vocker.commit(store, folder, kind="plain")
    with pytest.raises(InvalidInputError, match="deep"):
        vocker.check_image_trees(*_parsed(_chain_tree(vocker.MAX_DEPTH + 1)))
    vocker.check_image_trees(*_parsed(_chain_tree(vocker.MAX_DEPTH)))


def _parsed(entries_by_dir):
    trees = {}
    root = _tree_bytes(entries_by_dir, trees)
    return {tid: Tree.parse(d, tid) for tid, d in trees.items()}, root


# ----------------------------------------------- tree expansion is bounded

def _dag(width, levels):
    """``levels`` nested trees of ``width`` entries, each level's entries all
    naming the one tree below: tiny input, width**levels paths."""
    empty = vocker.EMPTY_ID
    leaf = Tree([TreeEntry(f"n{i:04d}", "f", empty) for i in range(width)])
    trees, below = {leaf.id: leaf}, leaf
    for _ in range(levels - 1):
        t = Tree([TreeEntry(f"n{i:04d}", "d", below.id) for i in range(width)])
        trees[t.id] = t
        below = t
    return trees, below.id


def test_a_dag_of_three_1000_entry_trees_is_refused_fast(tmp_path, store):
    trees, root = _dag(1000, 3)
    assert sum(len(t.serialize()) for t in trees.values()) < 300_000
    t0 = time.monotonic()
    with pytest.raises(InvalidInputError, match="too large"):
        vocker.check_image_trees(trees, root)          # what pull and load apply
    assert time.monotonic() - t0 < 1.0
    # the same image recorded in a store: create refuses before writing anything
    m = Manifest("plain", root)
    with store.transaction() as db:
        db.executemany("INSERT INTO trees VALUES (?,?)",
                       [(tid, t.serialize()) for tid, t in trees.items()])
        db.execute("INSERT INTO images(id, manifest, created) VALUES (?,?,0)",
                   (m.id, m.serialize()))
    t0 = time.monotonic()
    with pytest.raises(InvalidInputError, match="too large"):
        vocker.create(store, m.id, tmp_path / "c")
    assert time.monotonic() - t0 < 1.0
    assert not (tmp_path / "c").exists()


def test_a_shared_subtree_within_the_bound_is_walked_in_full():
    trees, root = _dag(300, 2)   # 300 folders sharing one 300-file tree
    paths = [p for p, _ in vocker.walk_image(trees.__getitem__, root)]
    assert len(paths) == 300 + 300 * 300
    assert len(set(paths)) == len(paths)


def test_walk_fetches_each_distinct_tree_once():
    trees, root = _dag(50, 3)
    calls = []

    def get(tid):
        calls.append(tid)
        return trees[tid]
    assert sum(1 for _ in vocker.walk_image(get, root)) == 50 + 50 * 50 + 50 * 50 * 50
    assert sorted(calls) == sorted(trees)


# ------------------------------------------- commit runs nothing of the image

def _evil(path, marker):
    path.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    path.chmod(0o755)


@pytest.fixture(scope="module")
def base_python():
    return main_python()


@posix_only("the planted interpreter is a /bin/sh script")
def test_commit_of_a_container_never_runs_its_pyvenv_executable(base_python, tmp_path, store,
                                                                 capsys):
    marker = tmp_path / "ran"
    venv = tmp_path / "venv"
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    cfg = venv / "pyvenv.cfg"
    # the image names a program inside the environment as its interpreter
    lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("executable")]
    cfg.write_text("\n".join(lines + [f"executable = {venv}/bin/evil"]) + "\n")
    _evil(venv / "bin" / "evil", marker)
    first = vocker.commit(store, venv)
    assert not marker.exists()
    c = tmp_path / "c"
    vocker.create(store, first["id"], c, compile=False)
    assert f"executable = {c}/bin/evil" in (c / "pyvenv.cfg").read_text()
    # now point home inside the container too: only the recorded interpreter is outside
    text = (c / "pyvenv.cfg").read_text()
    text = "\n".join(f"home = {c}/bin" if ln.startswith("home") else ln
                     for ln in text.splitlines()) + "\n"
    (c / "pyvenv.cfg").chmod(0o644)
    (c / "pyvenv.cfg").write_text(text)
    again = vocker.commit(store, c)
    assert not marker.exists()
    assert again["python"] == first["python"]


def test_commit_of_a_folder_whose_interpreters_all_lie_inside_refuses(tmp_path, capsys):
    marker = tmp_path / "ran"
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    for name in ("evil", "python3", "python", "python3.11"):
        _evil(env / "bin" / name, marker)
    (env / "pyvenv.cfg").write_text(f"home = {env}/bin\nexecutable = {env}/bin/evil\n"
                                    "version = 3.11.7\n")
    os.symlink("evil", env / "bin" / "python-link")
    code = vocker.main(["--home", str(tmp_path / "home"), "commit", str(env)])
    err = capsys.readouterr().err
    assert code == vocker.EXIT_PYTHON, err
    assert err.count("\n") == 1
    assert not marker.exists()


@posix_only("its python3 is a /bin/sh script")
def test_commit_of_a_standalone_container_runs_nothing(tmp_path, store):
    marker = tmp_path / "ran"
    env = tmp_path / "sa"
    (env / "bin").mkdir(parents=True)
    _evil(env / "bin" / "python3", marker)
    # not a container: the user's own Python, which commit runs (here it fails)
    with pytest.raises(InvalidInputError, match="does not run"):
        vocker.commit(store, env, kind="standalone")
    assert marker.exists()
    marker.unlink()
    # a container of a standalone image: its python facts come from the image
    image = _put_image(store, {"": []}, "standalone")
    with store.transaction() as db:
        db.execute("INSERT INTO containers(path, image, created, link_mode, python) "
                   "VALUES (?,?,0,'copy',NULL)", (str(env), image))
    r = vocker.commit(store, env, kind="standalone")
    assert r["python"] == store.manifest(image).python
    assert r["parent"] == image
    assert not marker.exists()


# ------------------------------------------------------------- labels

@pytest.mark.parametrize("labels", [
    {"a\x1b[31m": "x"}, {"a\nb": "x"}, {"": "x"}, {"k" * 200: "x"}, {"k": "v" * 5000},
    {f"k{i}": "v" for i in range(300)},
], ids=["escape-in-key", "newline-in-key", "empty-key", "long-key", "long-value", "too-many"])
def test_bad_labels_are_refused_at_commit(labels, folder, store):
    (folder / "a.txt").write_text("a")
    _refused_one_line(lambda: vocker.commit(store, folder, kind="plain", labels=labels))


def test_label_values_with_control_characters_are_escaped_on_the_terminal(folder, tmp_path,
                                                                          capsys):
    (folder / "a.txt").write_text("a")
    home = str(tmp_path / "home")
    assert vocker.main(["--home", home, "commit", str(folder), "--kind", "plain", "-t", "x:1",
                        "--label", "note=red\x1b[31m\x9b2J"]) == 0
    capsys.readouterr()
    assert vocker.main(["--home", home, "inspect", "x:1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out
    assert json.loads(out)["manifest"]["labels"]["note"] == "red\x1b[31m\x9b2J"  # exact
    assert vocker.main(["--home", home, "images", "--json"]) == 0
    assert "\x9b" not in capsys.readouterr().out


@posix_only("names with control characters (Windows forbids 0x01-0x1f in names)")
def test_error_lines_escape_control_characters(tmp_path, capsys):
    env = tmp_path / "e\x1b[2Jnv"
    env.mkdir()
    (env / "a\nb").write_text("x")
    assert vocker.main(["--home", str(tmp_path / "h"), "commit", str(env), "--kind",
                        "plain"]) == 5
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1

