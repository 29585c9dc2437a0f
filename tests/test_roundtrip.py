"""Environment -> image -> container, with real pip and uv venvs."""

import os

import pytest

import vocker
from conftest import (MAIN_MINOR, WINDOWS, clean_env, image_entries, make_venv, main_python,
                      needs_symlinks, posix_only, run, template_paths, venv_python, venv_script,
                      venv_site_packages, DEMO_PACKAGES)


def test_pip_venvs_at_different_paths_give_one_id(pip_venvs, store):
    a, b = pip_venvs
    if not WINDOWS:  # the fixture really produced both of pip's header forms
        assert (a / "bin" / "vockdemo").read_bytes().startswith(b"#!/bin/sh\n'''exec' \"")
        assert (b / "bin" / "vockdemo").read_bytes().startswith(b"#!/bin/sh\n'''exec' /")
    ra = vocker.commit(store, a)
    rb = vocker.commit(store, b)
    assert ra["id"] == rb["id"]
    assert ra["warnings"] == [] and rb["warnings"] == []


def test_short_path_simple_header_gives_same_id(pip_venvs, store, tmp_path, wheelhouse):
    c = make_venv(main_python(), tmp_path / "short", DEMO_PACKAGES,
                  wheelhouse=wheelhouse)
    if not WINDOWS:  # there: a launcher .exe (test_launchers)
        assert (c / "bin" / "vockdemo").read_bytes().startswith(b"#!" + os.fsencode(c))
    assert vocker.commit(store, c)["id"] == vocker.commit(store, pip_venvs[0])["id"]


def test_uv_venvs_at_different_paths_give_one_id(uv_venvs, store):
    a, b = uv_venvs
    assert vocker.commit(store, a)["id"] == vocker.commit(store, b)["id"]


def test_different_content_gives_different_id(pip_venvs, store, tmp_path, wheelhouse):
    other = make_venv(main_python(), tmp_path / "v2",
                      ("vockdemo==2.0", "vockextra", "vockbig"), wheelhouse=wheelhouse)
    assert vocker.commit(store, other)["id"] != vocker.commit(store, pip_venvs[0])["id"]


def test_image_holds_no_pyc_and_no_absolute_paths(demo_image, shared_store, pip_venvs):
    home, image_id = demo_image
    m = shared_store.manifest(image_id)
    assert m.kind == "venv" and m.python["version"].startswith(MAIN_MINOR + ".")
    assert "home" not in m.pyvenv and "command" not in m.pyvenv
    files = image_entries(shared_store, image_id).items()
    assert not any(r.endswith(".pyc") or "__pycache__" in r for r, _ in files)
    for rel, e in files:
        if e.type in vocker.TEMPLATE_TYPES:
            data = shared_store.read_blob(e.ref)
            for venv in pip_venvs:
                assert os.fsencode(venv) not in data, rel
    record = [e for r, e in files if r.endswith("vockdemo-1.0.dist-info/RECORD")][0]
    lines = shared_store.read_blob(record.ref).decode().splitlines()
    script = "../../Scripts/vockdemo.exe" if WINDOWS else "../../../bin/vockdemo"
    assert script + ",," in lines                          # templated script: blanked
    assert any(l.startswith("vockdemo/core.py,sha256=") for l in lines)  # others kept
    assert all(",sha256=" not in l for l in lines if ".pyc" in l)


@pytest.fixture(scope="module")
def container(demo_image, tmp_path_factory):
    home, image_id = demo_image
    target = tmp_path_factory.mktemp("ctr") / "new place" / "web"
    with vocker.Store(home) as store:
        r = vocker.create(store, image_id, target)
    return target, r


def test_round_trip_container_works(container):
    target, r = container
    assert r["link_mode"] in ("hardlink", "reflink")
    py = venv_python(target)
    out = run([py, "-c", "import vockdemo.core, sys; print(vockdemo.core.hello()); print(sys.prefix)"])
    assert out.stdout.splitlines()[-1] == str(target)
    assert "1.0" in out.stdout
    script = run([venv_script(target, "vockdemo")]).stdout
    assert f"from {py}" in script
    if not WINDOWS:
        header = (target / "bin" / "vockdemo").read_bytes().split(b"\n")[:2]
        assert header[1] == (b"'''exec' \"" + os.fsencode(target)
                             + b"/bin/python\" \"$0\" \"$@\"")
    assert run([venv_script(target, "vockextra")]).returncode == 0


@posix_only("sources bin/activate in bash (the Windows lane runs activate.bat)")
def test_activate_sets_new_path_and_prompt(container):
    target, _ = container
    out = run(["bash", "-c", f'. "{target}/bin/activate" && echo "$VIRTUAL_ENV" && '
               'command -v python && echo "$VIRTUAL_ENV_PROMPT"'])
    lines = out.stdout.splitlines()
    assert lines[0] == str(target)
    assert lines[1] == f"{target}/bin/python"
    assert lines[2] == "(web) "


def test_pyvenv_cfg_names_this_machines_interpreter(container):
    target, r = container
    cfg = vocker.parse_pyvenv_cfg((target / "pyvenv.cfg").read_text())
    assert cfg["home"] == os.path.dirname(r["python"]["executable"])
    if not WINDOWS:  # there Scripts\\python.exe is venv's launcher, not a link
        assert os.path.realpath(target / "bin" / "python") == \
            os.path.realpath(r["python"]["executable"])
    assert str(target) in cfg.get("command", str(target))


def test_pyc_files_are_valid_and_used(container):
    target, r = container
    assert r["pyc_compiled"] + r["pyc_cached"] > 40
    tag = r["python"]["cache_tag"]
    pyc = venv_site_packages(target) / "vockbig" / "__pycache__" / f"m01.{tag}.pyc"
    before = pyc.stat()
    # Python would rewrite a stale .pyc (new inode); a valid one is only read
    run([venv_python(target), "-c", "import vockbig.m01"],
        env=clean_env({"PYTHONDONTWRITEBYTECODE": ""}))
    after = pyc.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_pip_list_install_uninstall_work(demo_image, tmp_path, wheelhouse):
    home, image_id = demo_image
    with vocker.Store(home) as store:
        target = tmp_path / "pipwork"
        vocker.create(store, image_id, target)
    py = venv_python(target)
    env = clean_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull})
    listed = run([py, "-m", "pip", "list", "--format=freeze"], env=env).stdout
    assert "vockdemo==1.0" in listed and "vockbig==1.0" in listed
    run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheelhouse,
         "--upgrade", "vockdemo==2.0"], env=env)
    assert "vockdemo 2.0" in run([venv_script(target, "vockdemo")]).stdout
    run([py, "-m", "pip", "uninstall", "-y", "-q", "vockextra"], env=env)
    assert not venv_script(target, "vockextra").exists()
    listed = run([py, "-m", "pip", "list", "--format=freeze"], env=env).stdout
    assert "vockextra" not in listed and "vockdemo==2.0" in listed


def test_recommit_unchanged_container_gives_same_id_without_reading(demo_image, tmp_path):
    home, image_id = demo_image
    with vocker.Store(home) as store:
        target = tmp_path / "again"
        vocker.create(store, image_id, target)
        r = vocker.commit(store, target)
        assert r["id"] == image_id
        templates = template_paths(store, image_id)
        records = sum(1 for rel in image_entries(store, image_id)
                      if rel.endswith(".dist-info/RECORD"))
        # only RECORD files are read again; templates come from the stat cache and
        # pool hardlinks from their inode
        assert r["files_read"] <= records, r
        assert r["files"] > 10 * (r["files_read"] + 1)
        assert templates  # the stat cache had something to do


def test_changed_container_gives_child_image(demo_image, tmp_path):
    home, image_id = demo_image
    with vocker.Store(home) as store:
        target = tmp_path / "child"
        vocker.create(store, image_id, target)
        site = venv_site_packages(target)
        (site / "added.py").write_text("X = 1\n")
        r = vocker.commit(store, target, tags=["demo:child"])
        assert r["id"] != image_id
        assert r["parent"] == image_id
        assert r["files_read"] <= 10
        # a file edited in place (new content, same size) is seen
        victim = site / "vockbig" / "m02.py"
        data = victim.read_bytes()
        os.chmod(victim, 0o644)   # read-only: Windows refuses to delete it otherwise
        victim.unlink()
        victim.write_bytes(data.replace(b"def", b"DEF", 1))
        r2 = vocker.commit(store, target)
        assert r2["id"] not in (r["id"], image_id)


@posix_only("makes a FIFO (os.mkfifo)")
def test_failed_commit_leaves_no_image(store, tmp_path):
    env = tmp_path / "plainenv"
    (env / "sub").mkdir(parents=True)
    (env / "sub" / "a.txt").write_text("a")
    os.mkfifo(env / "sub" / "pipe")
    with pytest.raises(vocker.InvalidInputError, match="pipe"):
        vocker.commit(store, env, kind="plain", tags=["bad:1"])
    assert vocker.list_images(store) == []
    os.unlink(env / "sub" / "pipe")
    assert vocker.commit(store, env, kind="plain")["files"] == 1


@posix_only("runs a /bin/sh script through a symlink")
def test_plain_and_standalone_kinds(store, tmp_path):
    plain = tmp_path / "plain"
    (plain / "d").mkdir(parents=True)
    (plain / "d" / "x.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(plain / "d" / "x.sh", 0o755)
    (plain / "empty").mkdir()
    os.symlink("d/x.sh", plain / "link")
    r = vocker.commit(store, plain, kind="plain")
    assert r["kind"] == "plain"
    out = tmp_path / "plain-copy"
    vocker.create(store, r["id"], out)
    assert (out / "empty").is_dir() and os.readlink(out / "link") == "d/x.sh"
    assert run([out / "link"]).stdout == "hi\n"
    assert vocker.commit(store, out, kind="plain")["id"] == r["id"]


@needs_symlinks
def test_symlink_escaping_environment_is_refused(store, tmp_path):
    env = tmp_path / "esc"
    env.mkdir()
    os.symlink("/etc/passwd", env / "passwd")
    with pytest.raises(vocker.InvalidInputError, match="outside the environment"):
        vocker.commit(store, env, kind="plain")
    os.unlink(env / "passwd")
    os.symlink("../../outside", env / "rel")
    with pytest.raises(vocker.InvalidInputError, match="outside the environment"):
        vocker.commit(store, env, kind="plain")
