"""Shipped bytecode (issue 12): a push carries the .pyc the store compiled for
an image as a bytecode record; a pull by tag or by bytecode ID brings them,
checked by that ID, and create links them instead of compiling. An image ID
alone never takes .pyc from a repository, and shipped .pyc serve only their
own image."""

import json
import os
import shutil

import pytest

import vocker
from conftest import (cli, posix_only, run, venv_python, venv_script, venv_site_packages)

#: the Windows lane runs the round trip; the rest is platform-neutral logic
#: (records, hostile repositories, gc) and costs a create each under Wine
LINUX_LANE = posix_only("CI time: a create per test under Wine; the round trip covers Windows")


def _pycs(root):
    """{relative path: bytes} of every .pyc below ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".pyc"):
                p = os.path.join(dirpath, n)
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def pushed(pip_venvs, tmp_path_factory):
    """A venv of the demo packages without pip (few sources, quick to
    compile), committed, created once (so compiled) and pushed as demo:1.
    -> (home, repo, image ID, bytecode ID, the pusher's container)"""
    base = tmp_path_factory.mktemp("bytecode")
    venv = base / "venv"
    shutil.copytree(pip_venvs[0], venv, symlinks=True)
    site = venv_site_packages(venv)
    for p in site.iterdir():
        if p.name.startswith(("pip", "setuptools", "_distutils_hack", "distutils-precedence")):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    home, repo = base / "home", base / "repo"
    with vocker.Store(home) as store:
        image = vocker.commit(store, venv, tags=["demo:1"])["id"]
        ctr = base / "c1"
        assert vocker.create(store, image, ctr)["pyc_compiled"] > 0
        r = vocker.push(store, ["demo:1"], str(repo))
    shipped = r["images"][0]["bytecode"]
    assert shipped and shipped["pycs"] > 0
    return home, repo, image, shipped["id"], ctr


def _repo_copy(pushed, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(pushed[1], repo)
    return repo


def _shipped_rows(home):
    with vocker.Store(home) as store:
        return store.db.execute("SELECT count(*) FROM bytecode").fetchone()[0]


def test_a_tag_pull_brings_the_bytecode_and_create_compiles_nothing(pushed, tmp_path):
    home, repo, image, bytecode_id, c1 = pushed
    with vocker.Store(tmp_path / "home") as store:
        r = vocker.pull(store, str(repo), ["demo:1"])["images"][0]
        assert r["id"] == image and r["bytecode"]["id"] == bytecode_id
        c = vocker.create(store, "demo:1", tmp_path / "env")
        assert c["pyc_compiled"] == 0 and c["pyc_shipped"] > 0 and c["warnings"] == []
        assert _pycs(tmp_path / "env") == _pycs(c1)  # the pusher's bytes, file for file
        assert "vockdemo 1.0" in run([venv_script(tmp_path / "env", "vockdemo")]).stdout
        report = vocker.verify(store, full=True)
        assert report["problems"] == [] and report["checked"]["blobs"] > c["pyc_shipped"]
        # the one .pyc the image's interpreter loads is the shipped one: it runs as is
        probe = run([venv_python(tmp_path / "env"), "-c",
                     "import vockdemo, sys; print(vockdemo.__cached__)"]).stdout.strip()
        assert os.path.relpath(probe, tmp_path / "env") in _pycs(c1)


@LINUX_LANE
@pytest.mark.parametrize("how", ["full ID", "prefix"])
def test_an_image_id_alone_brings_no_bytecode(how, pushed, tmp_path):
    home, repo, image, bytecode_id, _ = pushed
    ref = image if how == "full ID" else image[:12]
    with vocker.Store(tmp_path / "home") as store:
        assert vocker.pull(store, str(repo), [ref])["images"][0]["bytecode"] is None
        tag = store.manifest(image).python["cache_tag"]
        assert store.shipped_pycs(image, tag) == {}
        c = vocker.create(store, image, tmp_path / "env")
        assert c["pyc_shipped"] == 0 and c["pyc_compiled"] > 0
    assert _shipped_rows(tmp_path / "home") == 0


@LINUX_LANE
def test_a_bytecode_id_pins_its_image_and_its_pycs(pushed, tmp_path):
    home, repo, image, bytecode_id, _ = pushed
    listed = json.loads(cli("repo", "ls", repo, "--json", home=tmp_path / "h").stdout)
    assert [r["bytecode"] for r in listed if r["id"] == image] == [bytecode_id]
    out = json.loads(cli("pull", repo, bytecode_id[:16], "--json", home=tmp_path / "h",
                         check=True).stdout)
    assert out["images"][0]["id"] == image and out["images"][0]["bytecode"]["id"] == bytecode_id
    with vocker.Store(tmp_path / "h") as store:
        c = vocker.create(store, image, tmp_path / "env")
        assert c["pyc_compiled"] == 0 and c["pyc_shipped"] > 0
    shown = json.loads(cli("inspect", image, home=tmp_path / "h", check=True).stdout)
    assert [b["id"] for b in shown["bytecode"]] == [bytecode_id]


@LINUX_LANE
def test_shipped_pycs_serve_only_their_own_image(pushed, tmp_path):
    """Another image sharing the sources compiles its own: a repository's
    .pyc never reach an image they were not pulled with."""
    home, repo, image, _, _ = pushed
    with vocker.Store(tmp_path / "home") as store:
        vocker.pull(store, str(repo), ["demo:1"])
        vocker.create(store, image, tmp_path / "a", compile=False)
        (tmp_path / "a" / "NOTE.txt").write_text("another image\n")
        other = vocker.commit(store, tmp_path / "a")["id"]
        assert other != image
        c = vocker.create(store, other, tmp_path / "b")
        assert c["pyc_shipped"] == 0 and c["pyc_compiled"] > 0


@LINUX_LANE
def test_no_bytecode_flags_on_push_and_pull(pushed, tmp_path):
    home, repo, image, _, _ = pushed
    bare = tmp_path / "bare"
    p = cli("push", "--no-bytecode", "demo:1", bare, home=home)
    assert p.returncode == 0 and "bytecode" not in p.stdout
    assert not (bare / "bytecode").exists() or not os.listdir(bare / "bytecode")
    p = cli("pull", repo, "demo:1", "--no-bytecode", home=tmp_path / "h")
    assert p.returncode == 0 and "bytecode" not in p.stdout
    p = cli("pull", repo, "demo:1", home=tmp_path / "h2")
    assert p.returncode == 0 and ".pyc for cpython-" in p.stdout
    assert _shipped_rows(tmp_path / "h") == 0 and _shipped_rows(tmp_path / "h2") == 1


@LINUX_LANE
def test_save_and_load_carry_the_bytecode_and_gc_drops_it_with_its_image(pushed, tmp_path):
    home, _, image, bytecode_id, _ = pushed
    out = tmp_path / "demo.vocker"
    cli("save", "demo:1", "-o", out, home=home, check=True)
    h = tmp_path / "h"
    loaded = json.loads(cli("load", out, "--json", home=h, check=True).stdout)
    assert loaded["images"][0]["bytecode"]["id"] == bytecode_id
    with vocker.Store(h) as store:
        pycs = store.shipped_pycs(image, store.manifest(image).python["cache_tag"])
        assert pycs and store.present_blobs(sorted(pycs.values())) == set(pycs.values())
        vocker.gc(store)  # the image is there: its bytecode stays
        assert store.present_blobs(sorted(pycs.values())) == set(pycs.values())
        vocker.remove_images(store, [image], force=True)
        vocker.gc(store)
        assert store.present_blobs(sorted(pycs.values())) == set()
    assert _shipped_rows(h) == 0


# ------------------------------------------------------------ hostile input


def _record(repo, image):
    index = json.loads((repo / "index.json").read_text())
    bytecode_id = index["bytecode"][image]
    data = (repo / "bytecode" / f"{bytecode_id}.json").read_bytes()
    return index, bytecode_id, vocker.Bytecode.parse(data, bytecode_id)


def _publish(repo, image, rec, trees, listing_of):
    """Write ``rec`` with ``trees`` ({id: bytes}) and the listing of bytecode
    ``listing_of``, and point the index's bytecode of ``image`` at it."""
    index, _, _ = _record(repo, image)
    new = rec.id
    d = repo / "bytecode"
    (d / f"{new}.trees").write_bytes(vocker.trees_file_bytes(trees))
    (d / f"{new}.blobs").write_bytes((d / f"{listing_of}.blobs").read_bytes())
    (d / f"{new}.json").write_bytes(rec.serialize())
    index["bytecode"][image] = new
    (repo / "index.json").write_text(json.dumps(index))


def _not_its_id(repo, image):
    _, bytecode_id, rec = _record(repo, image)
    rec.cache_tag = "cpython-399"
    (repo / "bytecode" / f"{bytecode_id}.json").write_bytes(rec.serialize())


def _of_another_image(repo, image):
    _, bytecode_id, rec = _record(repo, image)
    tree = vocker.Bytecode.tree({})
    other = vocker.Bytecode("ab" * 32, rec.cache_tag, tree.id)
    _publish(repo, image, other, {tree.id: tree.serialize()}, bytecode_id)


def _tree_with_folder(repo, image):
    _, bytecode_id, rec = _record(repo, image)
    tree = vocker.Tree([vocker.TreeEntry("sub", vocker.T_DIR, "cd" * 32)])
    _publish(repo, image, vocker.Bytecode(image, rec.cache_tag, tree.id),
             {tree.id: tree.serialize()}, bytecode_id)


def _tree_named_by_path(repo, image):
    _, bytecode_id, rec = _record(repo, image)
    tree = vocker.Tree([vocker.TreeEntry("x.py", vocker.T_FILE, "cd" * 32)])
    _publish(repo, image, vocker.Bytecode(image, rec.cache_tag, tree.id),
             {tree.id: tree.serialize()}, bytecode_id)


def _extra_tree(repo, image):
    _, bytecode_id, rec = _record(repo, image)
    trees = vocker.parse_trees_file((repo / "bytecode" / f"{bytecode_id}.trees").read_bytes(),
                                    bytecode_id)
    extra = vocker.Tree([])
    data = {t: tree.serialize() for t, tree in trees.items()}
    data[extra.id] = extra.serialize()
    (repo / "bytecode" / f"{bytecode_id}.trees").write_bytes(vocker.trees_file_bytes(data))


def _pyc_bytes_flipped(repo, image):
    _, bytecode_id, _ = _record(repo, image)
    listing = vocker.parse_blobs_file((repo / "bytecode" / f"{bytecode_id}.blobs").read_bytes(),
                                      bytecode_id)
    loc = next(iter(listing.values()))
    pack = repo / "packs" / f"{loc.pack}.pack"
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.csize // 2] ^= 0xFF
    pack.write_bytes(bytes(data))


def _index_field(repo, image):
    index = json.loads((repo / "index.json").read_text())
    index["bytecode"] = [image]
    (repo / "index.json").write_text(json.dumps(index))


HOSTILE = [
    # (id, edit, expected exception, message fragment)
    ("record-not-its-id", _not_its_id, vocker.IntegrityError, "does not match its ID"),
    ("record-of-another-image", _of_another_image, vocker.InvalidInputError, "is not of image"),
    ("tree-with-a-folder", _tree_with_folder, vocker.InvalidInputError, "source blob ID"),
    ("tree-named-by-path", _tree_named_by_path, vocker.InvalidInputError, "source blob ID"),
    ("trees-file-with-more", _extra_tree, vocker.InvalidInputError, "other trees"),
    ("pyc-bytes-flipped", _pyc_bytes_flipped, vocker.VockerError, "blob"),
    ("index-bytecode-malformed", _index_field, vocker.InvalidInputError, "'bytecode'"),
]


@LINUX_LANE
@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_bytecode_is_refused_and_none_is_used(case, pushed, tmp_path):
    name, edit, exc, fragment = case
    _, _, image, _, _ = pushed
    repo = _repo_copy(pushed, tmp_path)
    edit(repo, image)
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        with pytest.raises(exc) as info:
            vocker.pull(store, str(repo), ["demo:1"])
        assert fragment in str(info.value) and "\n" not in str(info.value)
        assert store.db.execute("SELECT count(*) FROM bytecode").fetchone()[0] == 0
        if store.has_image(image):  # what came before the bytecode is whole
            c = vocker.create(store, image, tmp_path / "env")
            assert c["pyc_shipped"] == 0 and c["pyc_compiled"] > 0
