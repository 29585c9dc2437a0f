"""Windows-shaped environments through commit and create: launchers built from
pip's real distlib stubs, Windows-style pyvenv.cfg and activate scripts, committed
and created through a test-only Windows path (only Windows can run the result).
The launchers alone are tested in test_launchers.py."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from test_launchers import ENV_A, MAIN_PY, _stub, make_launcher
from vocker import split_launcher

# --------------------------------------------------------------------------
# whole Windows-shaped venvs through commit and create
# --------------------------------------------------------------------------

import hashlib  # noqa: E402

import vocker  # noqa: E402
from conftest import image_entries, make_names, posix_only  # noqa: E402
from vocker import Tree, TreeEntry  # noqa: E402

WIN_PY = {"implementation": "cpython", "version": "3.11.7", "cache_tag": "cpython-311",
          "platform": "win-amd64", "executable": r"C:\Python311\python.exe", "in_venv": False}
CORE_PY = b"def main():\n    print('hello')\n"


def _record_hash(data):
    import base64
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_windows_venv(root, env, date_time):
    """A venv as `py -3.11 -m venv ENV` + `pip install vockdemo` leave it on Windows."""
    name = env.rsplit("\\", 1)[1]
    scripts = root / "Scripts"
    site = root / "Lib" / "site-packages"
    (site / "vockdemo").mkdir(parents=True)
    scripts.mkdir(parents=True)
    (root / "Include").mkdir()
    (root / "pyvenv.cfg").write_bytes(
        b"home = C:\\Python311\r\ninclude-system-site-packages = false\r\n"
        b"version = 3.11.7\r\nexecutable = C:\\Python311\\python.exe\r\n"
        b"command = C:\\Python311\\python.exe -m venv " + env.encode() + b"\r\n")
    (scripts / "activate.bat").write_bytes(
        b"@echo off\r\nset \"VIRTUAL_ENV=" + env.encode() + b"\"\r\n"
        b"set \"PROMPT=(" + name.encode() + b") %PROMPT%\"\r\n")
    (scripts / "activate").write_bytes(
        b"VIRTUAL_ENV=\"" + env.encode() + b"\"\nexport VIRTUAL_ENV\n"
        b"PS1=\"(" + name.encode() + b") ${PS1:-}\"\n")
    (scripts / "Activate.ps1").write_bytes(b"# relocatable: reads pyvenv.cfg\r\n")
    (scripts / "python.exe").write_bytes(_stub("t64.exe"))   # stands in for the redirector
    launcher, _ = make_launcher(_stub("t64.exe"), env, date_time)
    (scripts / "vockdemo.exe").write_bytes(launcher)
    (site / "vockdemo" / "__init__.py").write_bytes(b"")
    (site / "vockdemo" / "core.py").write_bytes(CORE_PY)
    dist = site / "vockdemo-1.0.dist-info"
    dist.mkdir()
    (dist / "INSTALLER").write_bytes(b"pip\n")
    rows = [f"../../Scripts/vockdemo.exe,{_record_hash(launcher)},{len(launcher)}",
            f"vockdemo/__init__.py,{_record_hash(b'')},0",
            f"vockdemo/core.py,{_record_hash(CORE_PY)},{len(CORE_PY)}",
            "vockdemo/__pycache__/core.cpython-311.pyc,,",
            "vockdemo-1.0.dist-info/RECORD,,"]
    (dist / "RECORD").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return root


def test_windows_venvs_at_two_paths_on_two_days_give_one_id(tmp_path):
    a = make_windows_venv(tmp_path / "a", ENV_A, (2026, 3, 1, 10, 0, 0))
    b = make_windows_venv(tmp_path / "b", r"d:\Other Place\proj", (2026, 11, 27, 23, 59, 58))
    os.chmod(a / "Scripts" / "python.exe", 0o755)  # as a POSIX share shows it: Windows has no
    # x bit (its Python makes one up from .exe): a Windows image is the same from either OS
    with vocker.Store(tmp_path / "home") as store:
        ra = vocker.commit(store, a, target=vocker.Target.windows(ENV_A, WIN_PY))
        rb = vocker.commit(store, b, target=vocker.Target.windows(r"d:\Other Place\proj", WIN_PY))
        assert ra["id"] == rb["id"]
        assert ra["warnings"] == []
        m = store.manifest(ra["id"])
        assert m.python["platform"] == "win-amd64"
        plan = image_entries(store, ra["id"]).items()
        kinds = {rel: e.type for rel, e in plan}
        assert kinds["Scripts/vockdemo.exe"] in vocker.TEMPLATE_TYPES
        assert kinds["Scripts/activate.bat"] in vocker.TEMPLATE_TYPES
        assert kinds["Scripts/Activate.ps1"] == "f"      # relocatable: not a template
        assert kinds["Scripts/python.exe"] == "f"
        # and a different package gives another ID (the test can fail)
        (b / "Lib" / "site-packages" / "vockdemo" / "core.py").write_bytes(CORE_PY + b"#\n")
        assert vocker.commit(store, b, target=vocker.Target.windows(
            r"d:\Other Place\proj", WIN_PY))["id"] != ra["id"]


def test_windows_create_writes_launchers_for_the_new_path(tmp_path):
    a = make_windows_venv(tmp_path / "a", ENV_A, (2026, 3, 1, 10, 0, 0))
    target = r"E:\new place\app"
    py = dict(WIN_PY, executable=r"C:\Program Files\Python311\python.exe")
    with vocker.Store(tmp_path / "home") as store:
        image = vocker.commit(store, a, target=vocker.Target.windows(ENV_A, WIN_PY))["id"]
        out = tmp_path / "out"
        r = vocker.create(store, image, out, target=vocker.Target.windows(target, py))
        assert r["pyc_compiled"] == 0
    exe = (out / "Scripts" / "vockdemo.exe").read_bytes()
    stub, shebang, zipb = split_launcher(exe)
    assert stub == _stub("t64.exe")
    assert shebang.startswith(b'#!"E:\\new place\\app\\Scripts\\python.exe"')
    with zipfile.ZipFile(io.BytesIO(exe)) as zf:   # the zip still opens past the new header
        assert zf.read("__main__.py") == MAIN_PY
    bat = (out / "Scripts" / "activate.bat").read_bytes()
    assert b'set "VIRTUAL_ENV=E:\\new place\\app"' in bat and b"(app) %PROMPT%" in bat
    cfg = (out / "pyvenv.cfg").read_bytes()
    assert b"home = C:\\Program Files\\Python311\r\n" in cfg
    assert b"executable = C:\\Program Files\\Python311\\python.exe\r\n" in cfg
    assert b"-m venv E:\\new place\\app\r\n" in cfg
    record = (out / "Lib" / "site-packages" / "vockdemo-1.0.dist-info" / "RECORD").read_bytes()
    assert b"../../Scripts/vockdemo.exe,,\r\n" in record
    assert _record_hash(CORE_PY).encode() in record


# --------------------------------------------------------------------------
# Windows filesystem rules, with injected failures
# --------------------------------------------------------------------------


def _plain_image(tmp_path, names=("a.txt", "sub/b.txt")):
    src = tmp_path / "src"
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        (src / n).write_text(f"content of {n}\n")
    store = vocker.Store(tmp_path / "home")
    return store, vocker.commit(store, src, kind="plain")["id"]


def test_file_in_use_is_renamed_away_and_deleted_later(tmp_path, monkeypatch):
    store, image = _plain_image(tmp_path)
    with store:
        vocker.create(store, image, tmp_path / "c", link_mode="copy")
        real_unlink = os.unlink
        busy = {"on": True}

        def unlink(path, *a, **kw):   # Windows: a file another process has open
            if busy["on"] and os.fspath(path).endswith("b.txt"):
                raise PermissionError(13, "The process cannot access the file", path)
            return real_unlink(path, *a, **kw)
        monkeypatch.setattr(os, "unlink", unlink)
        vocker.remove_container(store, str(tmp_path / "c"))
        assert not (tmp_path / "c").exists()
        trash = tmp_path / "home" / "tmp" / "trash"
        assert [p.read_text() for p in trash.iterdir()] == ["content of sub/b.txt\n"]
        busy["on"] = False
    vocker.Store(tmp_path / "home").close()   # the next start finishes the delete
    assert not trash.exists()


def test_read_only_files_are_cleared_before_delete(tmp_path, monkeypatch):
    d = tmp_path / "tree"
    (d / "x").mkdir(parents=True)
    (d / "x" / "ro.txt").write_text("r")
    os.chmod(d / "x" / "ro.txt", 0o444)
    real_unlink = os.unlink

    def unlink(path, *a, dir_fd=None, **kw):  # Windows refuses to delete read-only files
        full = os.path.join(f"/proc/self/fd/{dir_fd}", path) if dir_fd is not None else path
        if not os.stat(full).st_mode & 0o200:
            raise PermissionError(13, "Access is denied", path)
        return real_unlink(path, *a, dir_fd=dir_fd, **kw)
    monkeypatch.setattr(os, "unlink", unlink)
    vocker.rmtree(str(d), target=vocker.Target.windows())
    assert not d.exists()


@posix_only("writes files Windows cannot hold (CON is the console there) to commit them")
@pytest.mark.parametrize("name", ["CON", "nul.txt", "COM1.py", "trailing.", "trailing ", "a:b"])
def test_names_windows_cannot_hold_are_refused_for_a_windows_target(name, tmp_path):
    store, image = _plain_image(tmp_path, names=("ok.txt", f"pkg/{name}"))
    with store:
        with pytest.raises(vocker.InvalidInputError):
            vocker.create(store, image, tmp_path / "c", target=vocker.Target.windows(r"C:\envs\c"))
        assert not (tmp_path / "c").exists()
        # committed as a Windows environment, the same folder is refused too
        with pytest.raises(vocker.InvalidInputError, match="cannot commit"):
            vocker.commit(store, tmp_path / "src", kind="plain",
                          target=vocker.Target.windows(r"C:\envs\src"))
        # a POSIX target is fine
        vocker.create(store, image, tmp_path / "posix")


def test_names_colliding_by_case_are_refused_at_commit(tmp_path):
    """Images must work on case-insensitive disks (Windows, macOS)."""
    make_names(tmp_path, ["Readme", "README"])   # skips where the disk folds case
    with pytest.raises(vocker.InvalidInputError, match="cannot commit .*collide by case"):
        _plain_image(tmp_path, names=("pkg/Readme.txt", "pkg/README.txt"))


def test_names_colliding_by_case_are_refused_at_create(tmp_path):
    """An image that has them anyway (made by hand, or hostile)."""
    store, image = _plain_image(tmp_path / "ok", names=("pkg/Readme.txt",))
    with store:
        t = Tree([TreeEntry("README.txt", "f", vocker.EMPTY_ID),
                  TreeEntry("Readme.txt", "f", vocker.EMPTY_ID)])
        top = Tree([TreeEntry("pkg", "d", t.id)])
        m = vocker.Manifest("plain", top.id)
        with store.transaction() as db:
            db.execute("INSERT INTO trees VALUES (?,?)", (t.id, t.serialize()))
            db.execute("INSERT INTO trees VALUES (?,?)", (top.id, top.serialize()))
            db.execute("INSERT INTO images(id, manifest, created) VALUES (?,?,0)",
                       (m.id, m.serialize()))
        with pytest.raises(vocker.InvalidInputError, match="collide by case"):
            vocker.create(store, m.id, tmp_path / "c")
        assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("path, expected", [
    ("C:\\" + "a" * 300, "\\\\?\\C:\\" + "a" * 300),
    ("\\\\srv\\share\\" + "b" * 300, "\\\\?\\UNC\\srv\\share\\" + "b" * 300),
    ("C:\\short", "C:\\short"),
    ("\\\\?\\C:\\" + "c" * 300, "\\\\?\\C:\\" + "c" * 300),
])
def test_long_paths_use_the_extended_form_on_windows(path, expected):
    assert vocker.extended_path(path, vocker.Target.windows()) == expected
    assert vocker.extended_path(path, vocker.Target(win=False)) == path
