"""The one target description (path flavour, spellings, placeholders, name
rules), the one python candidate list, the one name-collision rule, and the
trees a commit builds."""

import os
import sys

import pytest

import vocker
from vocker import PH_ENV, PH_PROMPT, PH_PYEXE, PH_PYHOME, Target

WIN_PY = {"implementation": "cpython", "version": "3.11.7", "cache_tag": "cpython-311",
          "platform": "win-amd64", "executable": r"C:\Python311\python.exe", "in_venv": False}


# ------------------------------------------------------------ this machine

def test_local_target_is_read_at_call_time(monkeypatch):
    monkeypatch.setattr(vocker, "WINDOWS", True)
    assert Target.local().win
    monkeypatch.setattr(vocker, "WINDOWS", False)
    assert not Target.local().win


def test_defaults_follow_this_machine_when_called(monkeypatch):
    """No default is fixed at import: patching WINDOWS reaches every one."""
    long = "C:\\" + "a" * 300
    script = b"#!@@VOCKER:ENV@@/bin/python\nprint(1)\n"
    values = {PH_ENV: b"/" + b"x" * 200}
    monkeypatch.setattr(vocker, "WINDOWS", False)
    assert vocker.extended_path(long) == long
    assert vocker.render_template(script, values).startswith(b"#!/bin/sh\n")
    monkeypatch.setattr(vocker, "WINDOWS", True)
    assert vocker.extended_path(long) == "\\\\?\\" + long
    assert vocker.render_template(script, values).startswith(b"#!/" + b"x" * 200)


def test_local_target_takes_the_folder_path(tmp_path):
    t = Target.local().at(tmp_path / "env")
    assert t.path == str(tmp_path / "env") and not t.elsewhere
    exe = os.path.join(os.sep, "opt", "py", "bin", "python3")  # spelt as this OS does
    assert t.placeholders(exe) == {
        PH_ENV: str(tmp_path / "env"), PH_PROMPT: "env",
        PH_PYEXE: exe, PH_PYHOME: os.path.dirname(exe)}


# ---------------------------------------------------------------- Windows

def test_windows_target_spells_paths_as_windows_does(tmp_path):
    t = Target.windows(r"E:\new place\app", WIN_PY).at(tmp_path)
    assert t.win and t.elsewhere and t.path == r"E:\new place\app"
    assert t.placeholders(WIN_PY["executable"]) == {
        PH_ENV: r"E:\new place\app", PH_PROMPT: "app",
        PH_PYEXE: r"C:\Python311\python.exe", PH_PYHOME: "C:\\Python311"}
    spelled = t.spellings([t.path])
    for form in (rb"E:\new place\app", rb"e:\new place\app", b"E:/new place/app"):
        assert form in spelled
    assert spelled == sorted(spelled, key=len, reverse=True)


@pytest.mark.parametrize("link, win, posix", [
    ("/usr/bin/python3", True, True),
    (r"C:\Python311\python.exe", True, False),
    ("c:/x", True, False),
    ("\\share\\x", True, False),
    ("../lib/x", False, False),
    ("python3.11", False, False),
])
def test_absolute_links_by_flavour(link, win, posix):
    assert Target.windows().is_absolute(link) is win
    assert Target(win=False).is_absolute(link) is posix


@pytest.mark.parametrize("name", ["CON", "nul.txt", "COM1.py", "trailing.", "a:b", "a?b"])
def test_windows_names_refused_only_for_a_windows_target(name):
    assert Target(win=False).check_name(name) == name
    with pytest.raises(vocker.InvalidInputError):
        Target.windows().check_name(name)


@pytest.mark.parametrize("names, bad", [
    (["README", "readme"], "readme"),
    (["caf\u00e9", "cafe\u0301"], "cafe\u0301"),         # NFC and NFD spell one name
    (["a", "B", "b"], "b"),
    (["a", "b", "c"], None),
    (["Stra\u00dfe", "strasse"], "strasse"),           # casefold: ß is ss
])
def test_one_collision_rule(names, bad):
    if bad is None:
        vocker.check_folder_names(names)
        return
    with pytest.raises(vocker.InvalidInputError, match="collide by case") as info:
        vocker.check_folder_names(names)
    assert repr(bad) in info.value.message


# ------------------------------------------------------------ interpreters

def test_candidates_hints_then_homes_then_machine(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for n in ("python3.11", "python3", "python"):
        (home / n).write_text("")
    hint = tmp_path / "hint"
    hint.write_text("")
    only = vocker.python_candidates("3.11.7", [str(hint), None, str(tmp_path / "gone")],
                                    [str(home)], search=False)
    assert only == [str(hint), str(home / "python3.11"), str(home / "python3"),
                    str(home / "python")]
    found = vocker.python_candidates("3.11.7", [str(hint)], [str(home)])
    assert found[:4] == only and sys.executable in found


def test_base_python_is_never_inside_the_environment(tmp_path):
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    os.symlink(sys.executable, root / "bin" / "python")
    cfg = {"home": str(root / "bin"), "version": "3.11.7"}
    # the only candidates lie inside the environment: none is run
    assert vocker.venv_base_python(str(root), cfg, [str(root / "bin" / "python")]) == \
        (None, None)
    exe, info = vocker.venv_base_python(str(root), cfg, [sys.executable])
    assert exe == sys.executable and info["version"].startswith("%d.%d." % sys.version_info[:2])


# ----------------------------------------------------------------- trees

def test_build_trees_matches_trees_built_by_hand():
    f = vocker.TreeEntry("a.txt", "f", "0" * 64)
    sub = vocker.Tree([f])
    top_id, trees = vocker.build_trees({"": ([], ["x", "y"]), "x": ([f], []), "y": ([f], [])})
    top = vocker.Tree([vocker.TreeEntry("x", "d", sub.id), vocker.TreeEntry("y", "d", sub.id)])
    assert top_id == top.id
    assert {tid: t.serialize() for tid, t in trees.items()} == \
        {top.id: top.serialize(), sub.id: sub.serialize()}


def test_size_and_files_count_every_file_of_shared_subtrees(tmp_path, store):
    src = tmp_path / "src"
    for d in ("one", "two"):
        (src / d).mkdir(parents=True)
        (src / d / "a.txt").write_bytes(b"12345")
        os.symlink("a.txt", src / d / "link")
    (src / "top.txt").write_bytes(b"xy")
    r = vocker.commit(store, src, kind="plain")
    assert (r["files"], r["size"]) == (3, 12)
    [image] = vocker.list_images(store)
    assert (image["files"], image["size"]) == (3, 12)
    # committed again (every file known now), the same image and numbers
    again = vocker.commit(store, src, kind="plain")
    assert again["id"] == r["id"] and again["files_read"] == 0
    assert (again["files"], again["size"]) == (3, 12)


@pytest.mark.parametrize("path", [
    "/opt/envs/app", "/opt/envs/app/", "/", "//srv/x", "///srv/x", "relative/env", "env",
    "", ".", "./a/./b/", "a//b", "/a/../b",
    r"C:\envs\app", r"C:\envs\app" + "\\", "C:/envs/app", "C:", "C:\\", r"C:rel\x",
    r"\\server\share\envs\app", r"\\server\share", "\\x\\y", r"E:\new place\app",
])
def test_name_and_parent_split_paths_as_pathlib_does(path):
    import pathlib  # vocker spares itself this import at start-up
    for win, pure in ((True, pathlib.PureWindowsPath), (False, pathlib.PurePosixPath)):
        if (not win and "\\" in path) or (win and path.startswith("///")):
            continue  # not a path of that system
        t = Target(win)
        assert (t.name(path), t.parent(path)) == (pure(path).name, str(pure(path).parent)), win
