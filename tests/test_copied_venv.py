"""A venv copied (cp -a) or moved names the place it was made at: commit
templates that old path like the real one (the same image as committing the
original, a container that runs itself), or refuses when the evidence does
not agree: never a container that runs another environment."""

import contextlib
import os
import shutil
import subprocess
import sys

import pytest

import vocker
from conftest import build_wheel, cli, find_uv, make_venv, main_python, posix_only, require_python, run

pytestmark = posix_only("a copied or moved venv is recognised from bin/activate and POSIX "
                        "script headers; for Windows venvs it is not built (README: Limits)")

PREFIX_SCRIPT = "import sys\n\ndef main():\n    print(sys.prefix)\n"
#: (installer, python) of the real venvs, and a folder name for each (the
#: first has a space: pip writes the /bin/sh exec header form)
REAL_VENVS = {"pip-3.11": ("pip", "3.11", "made here"), "uv-3.11": ("uv", "3.11", "uv"),
              "pip-3.13": ("pip", "3.13", "p313")}


def _store(home):
    return contextlib.closing(vocker.Store(home))


def _copy(src, dst):
    """cp -a where there is one (what users run), else copytree keeping links."""
    if shutil.which("cp") and sys.platform.startswith("linux"):
        subprocess.run(["cp", "-a", os.fspath(src), os.fspath(dst)], check=True)
    else:
        shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def prefix_wheelhouse(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefixwheels")
    build_wheel(d, "vockprefix", "1.0", {"vockprefix/__init__.py": PREFIX_SCRIPT},
                console_scripts={"vockprefix": "vockprefix:main"})
    return d


@pytest.fixture(scope="module")
def real_venvs(tmp_path_factory, prefix_wheelhouse):
    """Lazily built real venvs with vockprefix installed, one per REAL_VENVS key."""
    base, made = tmp_path_factory.mktemp("realvenvs"), {}

    def get(key):
        if key not in made:
            installer, minor, folder = REAL_VENVS[key]
            if installer == "uv" and find_uv() is None:
                pytest.skip("uv binary not found")
            made[key] = make_venv(require_python(minor), base / folder / "venv", ["vockprefix"],
                                  installer=installer, wheelhouse=prefix_wheelhouse)
        return made[key]
    return get


def _names(root, needle):
    """Relative paths of the files below root whose bytes hold ``needle``."""
    out = []
    for dirpath, _, files in os.walk(root):
        for n in files:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p) and needle in open(p, "rb").read():
                out.append(os.path.relpath(p, root))
    return out


@pytest.mark.parametrize("key", list(REAL_VENVS))
def test_copy_is_the_originals_image_and_its_container_runs_itself(key, real_venvs, tmp_path):
    orig = real_venvs(key)
    copy = _copy(orig, tmp_path / "copy")
    with _store(tmp_path / "a") as a:
        want = vocker.commit(a, orig)["id"]
    p = cli("commit", copy, home=tmp_path / "b")     # what the user runs: no warning
    assert p.returncode == 0 and p.stderr == "" and p.stdout.strip() == want
    c = tmp_path / "container"
    with _store(tmp_path / "b") as b:
        vocker.create(b, want, c)
    for script in ("vockprefix", *(["pip"] if key.startswith("pip") else [])):
        head = (c / "bin" / script).read_bytes()[:300]
        assert os.fsencode(c / "bin" / "python") in head and os.fsencode(orig) not in head
    assert f'VIRTUAL_ENV="{c}"' in (c / "bin" / "activate").read_text() or \
        f"VIRTUAL_ENV='{c}'" in (c / "bin" / "activate").read_text()
    assert _names(c, os.fsencode(orig)) == [] and _names(c, os.fsencode(copy)) == []
    if sys.platform.startswith("linux"):
        assert run([c / "bin" / "vockprefix"]).stdout.strip() == os.fspath(c)
        if key.startswith("pip"):
            assert os.fspath(c / "lib") in run([c / "bin" / "pip", "--version"]).stdout


@pytest.mark.parametrize("scripts", ["3.13.0", "3.13.1"])
def test_moved_venv_is_the_image_it_was(tmp_path, scripts):
    """The old location gone (mv): its path is still a spelling of the venv,
    also in 3.13.1+'s bare form (export VIRTUAL_ENV=/x/venv: shlex leaves a
    path of safe characters unquoted)."""
    from test_prompt import venv_3131
    py = require_python("3.13")
    made = tmp_path / "made" / "venv"
    run([py, "-m", "venv", "--without-pip", made])
    if scripts == "3.13.1":
        for name in ("activate", "activate.fish", "activate.csh", "activate.bat"):
            (made / "bin" / name).write_bytes(venv_3131(name, str(made), "venv"))
        assert b"VIRTUAL_ENV=" + os.fsencode(made) + b"\n" in \
            (made / "bin" / "activate").read_bytes()
    with _store(tmp_path / "home") as store:
        want = vocker.commit(store, made)["id"]
        moved = tmp_path / "moved"
        os.rename(made, moved)
        assert vocker.commit(store, moved)["id"] == want
        vocker.create(store, want, tmp_path / "c")
    assert os.fspath(tmp_path / "c") in (tmp_path / "c" / "pyvenv.cfg").read_text()
    assert _names(tmp_path / "c", os.fsencode(made)) == []


# -- evidence: hostile and odd folders ---------------------------------------

GONE = "/nonexistent-vocker-test/old venv"


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    """A real 3.11 venv with no scripts; each test edits a copy of it."""
    base = tmp_path_factory.mktemp("bare")
    run([main_python(), "-m", "venv", "--without-pip", base / "venv"])
    return base / "venv"


def _shaped(bare, dst, activate=None, scripts=(), command=None, extra=()):
    """A copy of ``bare`` whose activate scripts set VIRTUAL_ENV to
    ``activate`` (the copy itself when None), with ``scripts`` [(name, #!
    interpreter)] in bin/ and pyvenv.cfg's command naming ``command``."""
    _copy(bare, dst)
    bindir = dst / "bin"
    for n in ("activate.csh", "activate.fish", "Activate.ps1"):
        (bindir / n).unlink()
    value = os.fspath(dst) if activate is None else activate
    (bindir / "activate").write_text(f'# sh\nVIRTUAL_ENV="{value}"\nexport VIRTUAL_ENV\n')
    for name, exe in scripts:
        (bindir / name).write_text(_header(exe) + "import sys\n")
        (bindir / name).chmod(0o755)
    cfg = [l for l in (dst / "pyvenv.cfg").read_text().splitlines()
           if not l.startswith("command")]
    if command is not None:
        cfg.append(f"command = /usr/bin/python3 -m venv {command}")
    (dst / "pyvenv.cfg").write_text("\n".join(cfg) + "\n")
    for rel, data in extra:
        (dst / rel).write_bytes(data)
    return dst


def _header(exe):
    """The script header pip writes: the /bin/sh exec form for a path with a space."""
    if " " in exe and not exe.startswith("/usr/bin/env "):
        return "#!/bin/sh\n'''exec' \"" + exe + "\" \"$0\" \"$@\"\n' '''\n"
    return f"#!{exe}\n"


def _base_prefix():
    return os.path.dirname(os.path.dirname(os.path.realpath(main_python())))


REFUSED = [
    # (id, activate, scripts, command, message fragment)
    ("names-usr", "/usr", [("tool", "/usr/bin/python3")], "/usr", "exists and is not a venv"),
    ("names-root", "/", [("tool", "/bin/python3")], "/", "not a plain absolute path"),
    ("names-the-base-python", "BASE", [], "BASE", "base Python"),
    ("names-its-parent", "PARENT", [("tool", "PARENT/bin/python")], "PARENT", "holds or lies"),
    ("relative", "old/venv", [], "old/venv", "not a plain absolute path"),
    ("dot-dot", "/nonexistent-vocker-test/../venv", [], "/nonexistent-vocker-test/../venv",
     "not a plain absolute path"),
    ("two-locations", GONE, [("tool", "/nonexistent-vocker-test/b/bin/python")], GONE,
     "other environments than"),
    ("scripts-without-activate", None, [("tool", GONE + "/bin/python")], None,
     "bin/tool runs the Python of another environment"),
    ("activate-alone", GONE, [], None, "neither a script nor pyvenv.cfg"),
    ("command-of-another", GONE, [], "/nonexistent-vocker-test/other", "neither a script"),
]


def _fill(value, tmp_path):
    if value is None:
        return None
    return value.replace("BASE", _base_prefix()).replace("PARENT", os.fspath(tmp_path))


@pytest.mark.parametrize("activate, scripts, command, fragment", [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_evidence_that_does_not_agree_is_refused(activate, scripts, command, fragment,
                                                 bare_venv, tmp_path, store):
    scripts = [(n, _fill(e, tmp_path)) for n, e in scripts]
    folder = _shaped(bare_venv, tmp_path / "copy", _fill(activate, tmp_path), scripts,
                     _fill(command, tmp_path))
    with pytest.raises(vocker.InvalidInputError) as err:
        vocker.commit(store, folder)
    assert fragment in str(err.value) and vocker.COPIED_VENV_HINT in str(err.value)
    assert store.db.execute("SELECT count(*) FROM images").fetchone()[0] == 0


def test_two_activate_values_are_refused(bare_venv, tmp_path, store):
    folder = _shaped(bare_venv, tmp_path / "copy")
    (folder / "bin" / "activate.fish").write_text(f"set -gx VIRTUAL_ENV '{GONE}'\n")
    with pytest.raises(vocker.InvalidInputError, match="more than one environment"):
        vocker.commit(store, folder)


def test_refusal_is_one_line_and_exit_5(bare_venv, tmp_path):
    folder = _shaped(bare_venv, tmp_path / "copy", GONE)
    p = cli("commit", folder, home=tmp_path / "home")
    assert p.returncode == 5 and p.stdout == ""
    (line,) = p.stderr.splitlines()
    assert line.startswith(f"vocker: error: cannot commit {folder}: bin/activate names {GONE}")
    assert line.endswith(vocker.COPIED_VENV_HINT)


ACCEPTED = [
    # (id, activate, scripts): nothing names another place
    ("computed-activate", "$(dirname $(dirname $0))", [("tool", "SELF/bin/python")]),
    ("script-runs-the-base-python", None, [("tool", "BASEEXE")]),
    ("env-shebang", None, [("tool", "/usr/bin/env python3")]),
    ("other-layout", None, [("tool", "/opt/somewhere/libexec/python3")]),
]


@pytest.mark.parametrize("activate, scripts", [r[1:] for r in ACCEPTED],
                         ids=[r[0] for r in ACCEPTED])
def test_folders_naming_no_other_environment_commit_as_before(activate, scripts, bare_venv,
                                                              tmp_path, store):
    folder = tmp_path / "copy"
    fill = {"SELF": os.fspath(folder), "BASEEXE": os.path.realpath(main_python())}

    def sub(text):
        for k, v in fill.items():
            text = text.replace(k, v)
        return text
    _shaped(bare_venv, folder, activate and sub(activate), [(n, sub(e)) for n, e in scripts])
    image = vocker.commit(store, folder)["id"]
    vocker.create(store, image, tmp_path / "c")
    assert (tmp_path / "c" / "bin" / "tool").read_text() == \
        sub(f"#!{scripts[0][1]}\nimport sys\n").replace(os.fspath(folder), os.fspath(tmp_path / "c"))


def test_old_path_is_templated_and_nothing_near_it(bare_venv, tmp_path, store):
    """Agreeing evidence of a location now gone: that exact path becomes the
    container's; longer names that merely start with it stay as they were."""
    near = f"{GONE}-other/x {GONE}2 /nonexistent-vocker-test/old\n".encode()
    folder = _shaped(bare_venv, tmp_path / "copy", GONE, [("tool", GONE + "/bin/python")], GONE,
                     extra=[("data.txt", near + GONE.encode() + b"/lib\n")])
    image = vocker.commit(store, folder)["id"]
    c = tmp_path / "c"
    vocker.create(store, image, c)
    assert (c / "data.txt").read_bytes() == near + os.fsencode(c) + b"/lib\n"
    assert (c / "bin" / "tool").read_text().startswith(f'#!/bin/sh\n\'\'\'exec\' "{c}/bin/python"') \
        or (c / "bin" / "tool").read_text().startswith(f"#!{c}/bin/python\n")
    assert f'VIRTUAL_ENV="{c}"' in (c / "bin" / "activate").read_text()
    assert f"-m venv {c}" in (c / "pyvenv.cfg").read_text()


@pytest.mark.skipif(os.name == "nt", reason="symlinked folders")
def test_a_symlinked_spelling_of_the_folder_is_its_own(bare_venv, tmp_path, store):
    """Scripts made through a symlink to the folder name the folder itself."""
    real = tmp_path / "real" / "venv"
    real.parent.mkdir()
    (tmp_path / "link").symlink_to(real.parent)
    link = tmp_path / "link" / "venv"
    _shaped(bare_venv, real, os.fspath(link), [("tool", f"{link}/bin/python")])
    image = vocker.commit(store, real)["id"]
    c = tmp_path / "c"
    vocker.create(store, image, c)
    assert (c / "bin" / "tool").read_text().startswith(f"#!{c}/bin/python\n")
    assert _names(c, os.fsencode(link)) == []


def test_copy_of_a_container_is_its_image(tmp_path):
    """cp -a of a container is not a container (vocker did not make it), but
    it names the container's path: it commits to the container's image."""
    run([require_python("3.13"), "-m", "venv", "--without-pip", tmp_path / "venv"])
    with _store(tmp_path / "home") as store:
        image = vocker.commit(store, tmp_path / "venv")["id"]
        vocker.create(store, image, tmp_path / "c")
        _copy(tmp_path / "c", tmp_path / "copy")
        r = vocker.commit(store, tmp_path / "copy")
        assert r["id"] == image and r["parent"] is None

