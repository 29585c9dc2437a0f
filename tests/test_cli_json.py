"""The command line for scripts: -q, global options in either place, one JSON
shape per object (docs/json.md), JSON errors, `images NAME`, `inspect --format`."""

import json
import os
import re
import subprocess

import pytest

import vocker
from conftest import WINDOWS, clean_env, cli, vocker_cmd

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
IMAGE_KEYS = {"id", "short_id", "tags", "kind", "python", "size", "files", "created", "parent"}
CONTAINER_KEYS = {"path", "image", "short_id", "tags", "created", "link_mode", "python", "exists",
                  "image_present"}
PYTHON_KEYS = set(vocker.PYTHON_FACTS)


def _json(*args, home):
    p = cli(*args, home=home)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def venv_home(tmp_path_factory, pip_venvs):
    """A store with a venv image (web:1.0, web:2.0) and a plain one (data:1), one container."""
    base = tmp_path_factory.mktemp("clijson")
    home = base / "home"
    plain = base / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("a\n")
    venv = _json("commit", str(pip_venvs[0]), "-t", "web:1.0", "-t", "web:2.0", "--json", home=home)
    data = _json("commit", str(plain), "--kind", "plain", "-t", "data:1", "--json", home=home)
    ctr = _json("create", "web:1.0", str(base / "ctr"), "--json", home=home)
    return home, venv, data, ctr, base


def _shell(script, home, cwd):
    env = clean_env({"VOCKER_HOME": str(home)})
    env["PATH"] = os.path.dirname(vocker_cmd()[0]) + os.pathsep + env.get("PATH", "")
    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_quiet_lists_are_ids_and_paths_that_feed_rmi_and_rm(tmp_path):
    home = tmp_path / "home"
    ids = []
    for i in range(3):
        d = tmp_path / f"src{i}"
        d.mkdir()
        (d / "f").write_text(str(i))
        ids.append(cli("commit", str(d), "--kind", "plain", "-t", f"p:{i}", "-t", f"q:{i}", "-q",
                       home=home, check=True).stdout.strip())
    cli("create", "p:0", str(tmp_path / "c0"), home=home, check=True)
    cli("create", "p:1", str(tmp_path / "c1"), home=home, check=True)
    images = cli("images", "-q", home=home, check=True).stdout.splitlines()
    assert sorted(images) == sorted(ids)             # one full ID per image, not per tag
    ps = cli("ps", "-q", home=home, check=True).stdout.splitlines()
    assert sorted(ps) == [str(tmp_path / "c0"), str(tmp_path / "c1")]
    if WINDOWS:  # no POSIX shell: the words themselves, as `for /f` in a .bat passes them
        for r in (cli("rm", *ps, home=home), cli("rmi", "--force", *images, home=home)):
            assert r.returncode == 0, r.stderr
    else:
        r = _shell("vocker rm $(vocker ps -q) && vocker rmi --force $(vocker images -q)", home,
                   tmp_path)
        assert r.returncode == 0, r.stderr
    assert cli("images", "-q", home=home, check=True).stdout == ""
    assert cli("ps", "-q", home=home, check=True).stdout == ""
    assert not (tmp_path / "c0").exists()


@pytest.mark.parametrize("before,after", [
    ([], ["--home", "{home}"]),
    (["--home", "{home}"], []),
    ([], ["--home", "{home}", "--debug", "--no-progress", "--json"]),
    (["--json", "--progress", "--debug"], ["--home", "{home}"]),
    (["--home", "/nonexistent/ignored"], ["--home", "{home}"]),  # the later one wins
])
def test_global_options_before_or_after_the_command(tmp_path, before, after):
    home = tmp_path / "home"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("commit", str(src), "--kind", "plain", "-t", "g:1", home=home, check=True)
    fill = [w.replace("{home}", str(home)) for w in before + after]
    p = subprocess.run([*vocker_cmd(), *fill[:len(before)], "images", *fill[len(before):]],
                       env=clean_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "g:1" in p.stdout and "Traceback" not in p.stderr
    if "--json" in before + after:
        assert json.loads(p.stdout)[0]["tags"] == ["g:1"]


@pytest.mark.parametrize("words", [
    ["images", "--frob"], ["--debug", "images", "--frob"], ["images", "--debug", "--frob"],
    ["images", "--home"], ["--frob", "images"], ["create", "x"], ["frobnicate"],
])
def test_usage_errors_are_one_line_with_one_prefix(tmp_path, words):
    p = cli(*words, home=tmp_path / "home")
    assert p.returncode == vocker.EXIT_USAGE, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), p.stderr
    assert lines[0].count("vocker:") == 1 and "Traceback" not in p.stderr


def _check_image(obj, python=True):
    assert set(obj) >= IMAGE_KEYS, obj
    assert ISO.fullmatch(obj["created"]) and obj["short_id"] == obj["id"][:12]
    assert isinstance(obj["size"], int) and isinstance(obj["files"], int)
    if python:
        assert set(obj["python"]) == PYTHON_KEYS and obj["python"]["version"].startswith("3.")
    else:
        assert obj["python"] is None


def _check_container(obj, image):
    assert set(obj) >= CONTAINER_KEYS, obj
    assert obj["image"] == image["id"] and ISO.fullmatch(obj["created"]) and obj["exists"]
    assert obj["python"] == {"executable": obj["python"]["executable"], **image["python"]}
    assert os.path.isabs(obj["python"]["executable"])


def test_one_image_shape_everywhere(venv_home, tmp_path):
    home, venv, data, ctr, base = venv_home
    _check_image(venv)
    _check_image(data, python=False)
    listed = {i["id"]: i for i in _json("images", "--json", home=home)}
    assert set(listed[venv["id"]]) == IMAGE_KEYS
    assert {k: listed[venv["id"]][k] for k in IMAGE_KEYS} == {k: venv[k] for k in IMAGE_KEYS}
    info = _json("inspect", "web:2.0", home=home)
    assert info["type"] == "image" and {k: info[k] for k in IMAGE_KEYS} == listed[venv["id"]]
    assert info["manifest"]["python"] == venv["python"]
    repo = tmp_path / "repo"
    cli("push", "web:1.0", str(repo), home=home, check=True)
    pulled = _json("pull", str(repo), "web:1.0", "--json", home=tmp_path / "other")
    item = pulled["images"][0]
    _check_image(item)
    same = IMAGE_KEYS - {"tags", "created"}
    assert {k: item[k] for k in same} == {k: venv[k] for k in same}
    assert item["tags"] == ["web:1.0"] and item["tag"] == "web:1.0" and not item["present"]
    ls = _json("repo", "ls", str(repo), "--json", home=home)
    assert ls[0]["python"] == {"version": venv["python"]["version"]}


def test_one_container_shape_everywhere(venv_home):
    home, venv, data, ctr, base = venv_home
    _check_container(ctr, venv)
    assert ctr["path"] == str(base / "ctr") and ctr["pyc_compiled"] + ctr["pyc_cached"] > 0
    ps = _json("ps", "--json", home=home)
    assert [{k: c[k] for k in CONTAINER_KEYS} for c in ps] == \
        [{k: ctr[k] for k in CONTAINER_KEYS}]
    info = _json("inspect", str(base / "ctr"), home=home)
    assert info["type"] == "container" and {k: info[k] for k in CONTAINER_KEYS} == ps[0]


def test_human_output_shows_iso_utc_times(venv_home):
    home, venv, data, ctr, base = venv_home
    images = cli("images", home=home, check=True).stdout
    assert venv["created"] in images and ctr["created"] in cli("ps", home=home, check=True).stdout


@pytest.mark.parametrize("words,code,kind,fragment", [
    (["inspect", "nosuch:1"], vocker.EXIT_NOT_FOUND, "NotFoundError", "no image nosuch:1"),
    (["images", "--frob"], vocker.EXIT_USAGE, "UsageError", "unrecognized arguments"),
    (["frobnicate"], vocker.EXIT_USAGE, "UsageError", "invalid choice"),
    (["create", "web:1.0", "{ctr}"], vocker.EXIT_CONFLICT, "ConflictError", "already exists"),
    (["inspect", "web:1.0", "--format", "nosuch"], vocker.EXIT_USAGE, "UsageError", "no field"),
])
@pytest.mark.parametrize("where", ["before", "after"])
def test_errors_under_json_are_a_json_object_on_stderr(venv_home, words, code, kind,
                                                       fragment, where):
    home, venv, data, ctr, base = venv_home
    words = [w.replace("{ctr}", ctr["path"]) for w in words]
    p = cli(*(["--json", *words] if where == "before" else [*words, "--json"]), home=home)
    assert p.returncode == code and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1, p.stderr
    error = json.loads(p.stderr)["error"]
    assert set(error) == {"code", "type", "message", "hint"}
    assert error["code"] == code and error["type"] == kind and fragment in error["message"]
    assert error["hint"]


@pytest.mark.parametrize("name,tags,which", [
    ("web", ["web:1.0", "web:2.0"], ["venv"]),
    ("web:2.0", ["web:2.0"], ["venv"]),
    ("data", ["data:1"], ["data"]),
    ("we", [], []),
    ("web:3.0", [], []),
])
def test_images_name_filters_by_repository_or_tag(venv_home, name, tags, which):
    home, venv, data, ctr, base = venv_home
    ids = [{"venv": venv, "data": data}[w]["id"] for w in which]
    assert [r["id"] for r in _json("images", name, "--json", home=home)] == ids
    assert cli("images", name, "-q", home=home, check=True).stdout.split() == ids
    text = cli("images", name, home=home, check=True).stdout.splitlines()[1:]
    assert sorted(line.split()[0] for line in text) == tags


def test_images_name_refuses_what_cannot_be_a_name(venv_home):
    home = venv_home[0]
    p = cli("images", "Bad Name!", home=home)
    assert p.returncode == vocker.EXIT_USAGE and "invalid image name" in p.stderr


def test_inspect_format_prints_chosen_fields(venv_home):
    home, venv, data, ctr, base = venv_home
    out = cli("inspect", "web:1.0", "--format", "id,manifest.python.version,tags,size",
              home=home, check=True).stdout
    assert out == (f"{venv['id']}\t{venv['python']['version']}\t"
                   f"{json.dumps(venv['tags'])}\t{venv['size']}\n")
    out = cli("inspect", ctr["path"], "--format", "python.executable", home=home, check=True)
    assert out.stdout == ctr["python"]["executable"] + "\n"
    assert cli("inspect", "data:1", "--format", "python", home=home, check=True).stdout == "null\n"


@pytest.mark.parametrize("fmt,hint", [
    ("manifest.pythn.version", "did you mean manifest.python?"),
    ("id.x", "id is \""),
    ("zzz", "fields at the top level: audit, bytecode, containers, created"),
])
def test_inspect_format_unknown_field_is_a_usage_error(venv_home, fmt, hint):
    p = cli("inspect", "web:1.0", "--format", fmt, home=venv_home[0])
    assert p.returncode == vocker.EXIT_USAGE and hint in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1
