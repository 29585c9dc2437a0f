"""The Windows lane (issue 9): ``vocker.pyz --platform windows`` run by a real Windows
CPython 3.13.2 under Wine, as a batch-file user runs it.

Set-up (tests/winelane.py) installs Wine when it can and skips the whole module
with one reason when it cannot (``VOCKER_WINE=0`` turns it off locally).  Each
scenario starts from an empty folder; the first commit goes into an empty store.
The module shares one store so that ``.pyc`` files are compiled once (a create
then takes ~2 s instead of ~30 s).  What Wine cannot show is a skip naming the gap.
"""

from __future__ import annotations

import functools
import http.server
import json
import stat
import subprocess
import sys
import threading

import pytest

from wheelfactory import build_demo_wheelhouse
import winelane
from winelane import winpath



class Win:
    """The lane plus this module's folders; every call checks nothing by itself."""

    def __init__(self, lane, root):
        self.lane = lane
        self.root = root
        self.home = root / "store"
        self.wheels = build_demo_wheelhouse(root / "wheels")

    def vocker(self, *args, home=None, cwd=None, **kw):
        return self.lane.vocker("--home", winpath(home or self.home), *args, cwd=cwd or self.root,
                                **kw)

    def ok(self, *args, **kw):
        rc, out, err = self.vocker(*args, **kw)
        assert rc == 0, f"vocker {' '.join(map(str, args))} -> exit {rc}\n{out}\n{err}"
        return out

    def run(self, exe, *args, **kw):
        rc, out, err = self.lane.wine([exe, *args], cwd=kw.pop("cwd", self.root), **kw)
        assert rc == 0, f"{exe} {args} -> exit {rc}\n{out}\n{err}"
        return out

    def pip(self, env, *pkgs):
        return self.run(winpath(env / "Scripts" / "python.exe"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "--no-index", "--find-links",
                        winpath(self.wheels), *pkgs)

    def bat(self, name, text):
        path = self.root / name
        path.write_bytes(text.replace("\n", "\r\n").encode(winelane.WIN_ENCODING))
        rc, out, err = self.lane.bat(path, cwd=self.root)
        return rc, out, err

    def commit(self, env, *args):
        return self.ok("commit", "-q", winpath(env), *args).strip()

    def create(self, image, path, *args):
        return self.ok("create", image, winpath(path), *args)

    def inspect(self, ref, home=None):
        return json.loads(self.ok("inspect", ref, home=home))


@pytest.fixture(scope="module")
def win(lane, tmp_path_factory):
    """A Windows venv (python -m venv + pip install vockdemo) committed into an empty store."""
    w = Win(lane, tmp_path_factory.mktemp("wine"))
    w.src = w.root / "src env"
    w.run(lane.python, "-m", "venv", winpath(w.src))
    w.pip(w.src, "vockdemo==1.0")
    assert not w.home.exists()
    w.image = w.commit(w.src, "-t", "demo:1")
    assert len(w.image) == 64, w.image
    return w


def _stored_bytes(home):
    """Bytes of the store's objects (loose blobs and packs)."""
    return sum(p.stat().st_size for d in ("blobs", "packs") for p in (home / d).rglob("*")
               if p.is_file())


def _prefix_of(w, env):
    return w.run(winpath(env / "Scripts" / "python.exe"), "-c",
                 "import sys, vockdemo; print(sys.prefix); print(vockdemo.hello())").splitlines()


# --------------------------------------------------------------------------
# commit, create, run
# --------------------------------------------------------------------------


def test_commit_create_run_spaced_path(win):
    dest = win.root / "a b" / "web"
    out = win.create("demo:1", dest)
    assert winpath(dest) in out or win.image[:12] in out, out
    assert _prefix_of(win, dest) == [winpath(dest), "hello from vockdemo 1.0"]
    # the rendered console-script launcher runs the container's own python
    out = win.run(winpath(dest / "Scripts" / "vockdemo.exe"))
    assert out.strip() == f"vockdemo 1.0 from {winpath(dest / 'Scripts' / 'python.exe')}", out


def test_activate_bat(win):
    dest = win.root / "act env"
    win.create("demo:1", dest)
    rc, out, err = win.bat("act.bat", f'@echo off\ncall "{winpath(dest)}\\Scripts\\activate.bat"\n'
                           'echo VENV=%VIRTUAL_ENV%\n'
                           'python -c "import sys; print(\'PREFIX=\' + sys.prefix)"\n'
                           'vockdemo\n')
    assert rc == 0, (out, err)
    lines = out.splitlines()
    assert f"VENV={winpath(dest)}" in lines, out
    assert f"PREFIX={winpath(dest)}" in lines, out
    assert f"vockdemo 1.0 from {winpath(dest)}\\Scripts\\python.exe" in lines, out


def test_activate_bat_prompt_is_the_containers(win):
    dest = win.root / "prompt env"
    win.create("demo:1", dest)
    rc, out, err = win.bat("prompt.bat", f'@echo off\ncall "{winpath(dest)}\\Scripts\\activate.bat"\n'
                           'echo PROMPTNAME=%VIRTUAL_ENV_PROMPT%\n')
    assert rc == 0, (out, err)
    assert "PROMPTNAME=prompt env" in out.splitlines(), out


def test_create_non_ascii_and_long_paths_piped(win):
    for dest in (win.root / "Mes Envs é" / "web",
                 win.root / ("long-" + "x" * 60) / ("deeper-" + "y" * 60) / ("env-" + "z" * 40)):
        out = win.create("demo:1", dest)
        assert out.strip(), out
        assert _prefix_of(win, dest) == [winpath(dest), "hello from vockdemo 1.0"]
        assert win.commit(dest) == win.image, f"an unchanged container at {dest} got another ID"


def test_same_id_for_two_paths(win):
    """Two venvs of the same packages made by python -m venv at two paths: one image ID."""
    other = win.root / "Mes Envs é" / "src2"
    win.run(win.lane.python, "-m", "venv", winpath(other))
    win.pip(other, "vockdemo==1.0")
    assert win.commit(other) == win.image


def test_pip_install_in_container_then_commit(win):
    dest = win.root / "grow env"
    win.create("demo:1", dest)
    win.pip(dest, "vockextra==1.0")
    assert win.run(winpath(dest / "Scripts" / "vockextra.exe")).startswith("vockextra 1.0 from ")
    before = _stored_bytes(win.home)
    child = win.commit(dest, "-t", "demo:2")
    assert child != win.image
    grown = _stored_bytes(win.home) - before
    assert 0 < grown < before / 20, f"the store grew by {grown} of {before} bytes: blobs not shared"
    info = win.inspect("demo:2")
    assert info["parent"] == win.image, info
    rmi_child = win.vocker("rmi", "demo:2")
    assert rmi_child[0] == 0, rmi_child


# --------------------------------------------------------------------------
# repositories: folder, HTTP, archive
# --------------------------------------------------------------------------


def _pull_and_run(win, source, name):
    home = win.root / f"store-{name}"
    win.ok("pull", source, "demo:1", home=home)
    assert win.inspect("demo:1", home=home)["id"] == win.image
    dest = win.root / f"from {name}"
    win.ok("create", "demo:1", winpath(dest), "--no-compile", home=home)
    assert _prefix_of(win, dest) == [winpath(dest), "hello from vockdemo 1.0"]


def test_push_pull_folder(win):
    repo = win.root / "repo share"
    win.ok("push", "demo:1", winpath(repo))
    _pull_and_run(win, winpath(repo), "folder")


def test_push_pull_http(win):
    repo = win.root / "repo-http"
    win.ok("push", "demo:1", winpath(repo))
    handler = functools.partial(_QuietHandler, directory=str(repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _pull_and_run(win, f"http://127.0.0.1:{server.server_address[1]}/", "http")
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_save_load(win):
    archive = win.root / "demo archive.vocker"
    win.ok("save", "demo:1", "-o", winpath(archive))
    assert archive.stat().st_size > 0
    home = win.root / "store-load"
    win.ok("load", winpath(archive), home=home)
    assert win.inspect("demo:1", home=home)["id"] == win.image


# --------------------------------------------------------------------------
# rm / rmi, exit codes from a batch file
# --------------------------------------------------------------------------


def test_rm_and_rmi(win):
    home = win.root / "store-rm"
    win.ok("commit", winpath(win.src), "-t", "demo:1", home=home)
    dest = win.root / "rm env"
    win.ok("create", "demo:1", winpath(dest), "--no-compile", home=home)
    rc, out, err = win.vocker("rmi", "demo:1", home=home)   # it is in use: refused, named
    assert rc == 4 and winpath(dest) in err and err.count("\n") == 1, err
    win.ok("rmi", "--force", "demo:1", home=home)  # a container does not need its image
    assert _prefix_of(win, dest) == [winpath(dest), "hello from vockdemo 1.0"]
    assert win.vocker("inspect", "demo:1", home=home)[0] == 3
    assert "no-image" in win.ok("ps", home=home) and winpath(dest) in win.ok("ps", home=home)
    win.ok("rm", winpath(dest), home=home)
    assert not dest.exists()
    assert winpath(dest) not in win.ok("ps", home=home)
    assert win.vocker("rm", winpath(dest), home=home)[0] == 3
    assert win.vocker("rmi", "demo:1", home=home)[0] == 3


def _writable_shared(root):
    """Files of *root* that share their inode with the pool and are writable."""
    found = []
    for p in root.rglob("*"):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and st.st_mode & stat.S_IWUSR:
            found.append(p)
    return found


def test_rm_leaves_the_pool_read_only(win):
    """Issue 9 bug 3: the read-only attribute is shared by a file's hardlinks (Wine maps
    it to the inode's write bits, like NTFS), so rm must give it back to the pool."""
    first = win.root / "ro one"
    win.create("demo:1", first, "--no-compile")
    assert not _writable_shared(first)
    win.ok("rm", winpath(first))
    second = win.root / "ro two"
    win.create("demo:1", second, "--no-compile")
    assert not _writable_shared(second)


def test_pyz_starts_without_shiv_bootstrap_once_extracted(win):
    """vocker.pyz's launcher runs vocker from the folder shiv extracted it to
    (shiv's bootstrap, and its imports, only when that folder is missing)."""
    shiv_root = {"SHIV_ROOT": winpath(win.root / "shiv root")}
    for bootstrapped in (True, False):
        rc, out, err = win.lane.py("-X", "importtime", winpath(win.lane.pyz), "--version",
                                   cwd=win.root, extra_env=shiv_root)
        assert rc == 0 and out.startswith("vocker "), (rc, out, err[-2000:])
        assert ("| _bootstrap\n" in err.replace("\r\n", "\n")) is bootstrapped, err[-3000:]


def test_pyz_names_a_dll_load_failure(win):
    # without the forwarder DLL, blake3's extension module cannot load under Wine 8.0
    rc, out, err = win.vocker("images", extra_env={
        "WINEDLLOVERRIDES": "winedbg.exe=d;mscoree,mshtml=;bcryptprimitives=d"})
    assert rc == 6, (rc, out, err)
    assert "DLL load failed" in err, err


def test_exit_codes_from_a_batch_file(win):
    ref = [sys.executable, str(winelane.REPO / "vocker.py"), "--home", str(win.root / "linux-store"),
           "inspect", "nosuch:1"]
    linux_rc = subprocess.run(ref, capture_output=True).returncode
    pyz = f'"{winpath(win.lane.python)}" "{winpath(win.lane.pyz)}" --home "{winpath(win.home)}"'
    rc, out, err = win.bat("codes.bat", f"@echo off\n"
                           f"{pyz} inspect nosuch:1 >nul 2>nul\n"
                           f"if errorlevel {linux_rc + 1} (echo ABOVE) else if errorlevel "
                           f"{linux_rc} (echo EXACT) else (echo BELOW)\n"
                           f"{pyz} images -q >nul\n"
                           "if errorlevel 1 (echo IMAGES-FAILED) else (echo IMAGES-OK)\n"
                           f"{pyz} inspect nosuch:1 >nul 2>nul\n"
                           "if errorlevel 1 exit /b %errorlevel%\n"
                           "echo NOT-REACHED\n")
    assert linux_rc == 3
    assert out.split() == ["EXACT", "IMAGES-OK"], (out, err)
    assert rc == linux_rc, (rc, out, err)


# the last test of the shared store: a failure leaves a container that breaks ps
def test_non_ansi_path_with_output_piped(win):
    dest = win.root / "日本 env"
    rc, out, err = win.vocker("--json", "create", "demo:1", winpath(dest), "--no-compile",
                              encoding="utf-8")
    assert rc == 0, (rc, out, err)
    assert json.loads(out)["path"] == winpath(dest), out
    for args in (["ps"], ["--json", "ps"], ["--json", "images"], ["inspect", winpath(dest)]):
        rc, out, err = win.vocker(*args, encoding="utf-8")
        assert rc == 0, (args, rc, out, err)
    assert winpath(dest) in json.loads(win.vocker("--json", "ps", encoding="utf-8")[1])[0]["path"]


# --------------------------------------------------------------------------
# what Wine 8.0 cannot show
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [
    "rm while the container's python runs: Wine lets files in use be deleted, so vocker's "
    "rename-away path is never taken",
    "symlinks in an image: Wine's os.symlink reports success and creates nothing",
    "paths over MAX_PATH (260): Wine does not enforce it, so a path that needs the \\\\?\\ "
    "form on Windows works here without it (test_create_safety checks that create's \\\\?\\ "
    "paths hold no '/', which Wine refuses as Windows does)",
    "cmd's `a || exit /b`: Wine's cmd runs both branches (real cmd expands %ERRORLEVEL% at read "
    "time, so only `|| exit /b` and `if errorlevel` are right)",
])
def test_what_wine_cannot_show(lane, gap):
    pytest.skip(f"Wine 8.0 gap, not tested: {gap}")
