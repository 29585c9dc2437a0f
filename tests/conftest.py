"""Shared pytest fixtures and helpers for the vocker test-suite.

Fixture layer (no vocker import here):

* ``find_python(minor)``            -> path of a CPython 3.X interpreter or None
* ``PYTHONS``                        -> {"3.9": path, "3.11": path, "3.13": path} (those found)
* ``require_python(minor)``          -> path, or ``pytest.skip`` naming the missing Python
* ``main_python()``                  -> the interpreter most tests use (MAIN_MINOR)
* ``find_uv()``                      -> path of the uv binary or None
* ``run(cmd, ...)``                  -> CompletedProcess; raises CommandFailed with output
* ``clean_env(extra_env=None)``      -> os.environ minus PIP_*/UV_*/PYTHON*/VIRTUAL_ENV noise
* ``make_venv(python, path, packages=(), installer="pip", wheelhouse=None, extra_env=None)``
* ``venv_python(venv)`` / ``venv_site_packages(venv)`` / ``read_record(venv, dist, version)``
* fixtures: ``wheelhouse`` (session), ``uv_cache_dir`` (session), ``uv_bin`` (session)

Nothing here needs the network: wheels come from ``wheelfactory`` and every
install is ``--no-index --find-links <wheelhouse>``.
"""

from __future__ import annotations

import atexit
import glob
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:  # robust under --import-mode=importlib
    sys.path.insert(0, _TESTS_DIR)

from wheelfactory import build_demo_wheelhouse, build_wheel, normalize_dist_name  # noqa: E402

__all__ = [
    "CommandFailed",
    "PYTHONS",
    "clean_env",
    "find_python",
    "find_uv",
    "make_venv",
    "read_record",
    "require_python",
    "main_python",
    "KILL",
    "KILLED_RC",
    "SYMLINKS",
    "WINDOWS",
    "make_names",
    "needs_symlinks",
    "require_symlinks",
    "posix_only",
    "MAIN_MINOR",
    "run",
    "venv_python",
    "venv_script",
    "SCRIPTS",
    "VENV_PYTHON",
    "venv_site_packages",
    "build_wheel",
    "build_demo_wheelhouse",
]

#: default timeouts (seconds) for subprocesses started by this layer
VENV_TIMEOUT = 180
INSTALL_TIMEOUT = 300


# --------------------------------------------------------------------------
# what this OS can do (the Windows lane runs this suite under Wine too)
# --------------------------------------------------------------------------

WINDOWS = os.name == "nt"
#: the signal a test kills a process with, and the exit code that then shows
#: (Windows has no SIGKILL: os.kill(pid, SIGTERM) is TerminateProcess(pid, 15))
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)
KILLED_RC = -KILL if not WINDOWS else KILL


def _symlinks_work() -> bool:
    d = tempfile.mkdtemp(prefix="vocker-symlink-probe-")
    try:
        os.symlink("target", os.path.join(d, "l"))
        return os.path.islink(os.path.join(d, "l"))
    except (OSError, NotImplementedError):
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


SYMLINKS = _symlinks_work()
NO_SYMLINKS = ("this OS makes no symlinks here (Wine 8.0's os.symlink reports success and "
               "creates nothing; Windows needs developer mode)")
needs_symlinks = pytest.mark.skipif(not SYMLINKS, reason=NO_SYMLINKS)


def require_symlinks() -> None:
    """Inside a test (e.g. one row of a table): skip unless symlinks work."""
    if not SYMLINKS:
        pytest.skip(NO_SYMLINKS)


def posix_only(why: str):
    """Mark a test that cannot run on Windows; *why* names the POSIX fact it needs."""
    return pytest.mark.skipif(WINDOWS, reason=f"POSIX only: {why}")


def make_names(root, names) -> None:
    """mkdir each name under *root*, or skip: this filesystem cannot hold them
    side by side (Windows: case pairs, newlines, reserved names)."""
    for n in names:
        try:
            os.mkdir(os.path.join(root, n))
        except OSError as e:
            pytest.skip(f"this filesystem cannot hold the names {names!r} side by side: {e}")


# --------------------------------------------------------------------------
# interpreters
# --------------------------------------------------------------------------


def _pyenv_root() -> pathlib.Path:
    root = os.environ.get("PYENV_ROOT")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".pyenv"


def find_python(minor: str) -> str | None:
    """Return the real path of a CPython ``3.X`` interpreter (``minor="3.X"``), or None.

    Looks first at ``$PYENV_ROOT/versions/3.X.<patch>/bin/python3.X`` (default
    ``~/.pyenv``), taking the newest numeric patch release; then at
    ``shutil.which("python3.X")``, ignoring pyenv shims.  The result is
    resolved with ``os.path.realpath``.
    """
    if not re.fullmatch(r"3\.\d+", minor):
        raise ValueError(f"expected a version like '3.11', got {minor!r}")
    versions = _pyenv_root() / "versions"
    candidates = []
    for d in glob.glob(os.path.join(glob.escape(str(versions)), minor + ".*")):
        m = re.fullmatch(re.escape(minor) + r"\.(\d+)", os.path.basename(d))
        if not m:
            continue  # e.g. 3.13.0t, 3.12-dev
        exe = os.path.join(d, "bin", "python" + minor)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            candidates.append((int(m.group(1)), exe))
    if candidates:
        candidates.sort()
        return os.path.realpath(candidates[-1][1])

    shims = os.path.realpath(_pyenv_root() / "shims")
    path_entries = [
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and os.path.realpath(p) != shims and not p.rstrip("/").endswith("/shims")
    ]
    exe = shutil.which("python" + minor, path=os.pathsep.join(path_entries))
    if exe:
        real = os.path.realpath(exe)
        if os.path.isfile(real) and os.access(real, os.X_OK):
            return real
    if "%d.%d" % sys.version_info[:2] == minor:  # e.g. the Windows lane's one CPython
        return os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return None


#: minor -> interpreter path, only for the interpreters present on this machine
PYTHONS: dict[str, str] = {
    minor: path
    for minor in ("3.9", "3.11", "3.13")
    if (path := find_python(minor)) is not None
}

#: the CPython most tests make venvs with: 3.11 from pyenv; under Windows (the
#: Wine lane has one CPython, 3.13) the interpreter running the tests
MAIN_MINOR = "3.11" if sys.platform != "win32" else "%d.%d" % sys.version_info[:2]


def require_python(minor: str) -> str:
    """Return the interpreter path for ``minor`` or skip the test naming it."""
    path = PYTHONS.get(minor) or find_python(minor)
    if path is None:
        pytest.skip(f"Python {minor} interpreter not found on this machine "
                    f"(looked in {_pyenv_root() / 'versions'} and PATH)")
    return path


def main_python() -> str:
    """The interpreter of MAIN_MINOR, or ``pytest.skip`` naming it."""
    return require_python(MAIN_MINOR)


# --------------------------------------------------------------------------
# subprocess helpers
# --------------------------------------------------------------------------


class CommandFailed(RuntimeError):
    """A subprocess exited non-zero or timed out; carries its output."""

    def __init__(self, cmd, returncode, stdout, stderr):
        self.cmd = [str(c) for c in cmd]
        self.returncode = returncode
        self.stdout = stdout or ""
        self.stderr = stderr or ""
        super().__init__(
            f"command failed (rc={returncode}): {' '.join(self.cmd)}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


_STRIP_PREFIXES = ("PIP_", "UV_", "PYTHON", "CONDA_")
_STRIP_NAMES = {"VIRTUAL_ENV", "__PYVENV_LAUNCHER__", "PYENV_VERSION"}


#: push and save compress for the wire at level 19 by default (about 2 MB/s
#: a core); the suite pushes small venvs dozens of times, so it asks for the
#: fast level a user can set too. Tests of the wire format itself unset it.
os.environ.setdefault("VOCKER_PUSH_LEVEL", "3")


def clean_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without PIP_*, UV_*, PYTHON*, VIRTUAL_ENV ...; then *extra_env* on top.

    (The machine sets e.g. PIP_FIND_LINKS and PYTHONDONTWRITEBYTECODE, which
    would otherwise leak into the venvs we build.)  PYTHONUNBUFFERED is kept.
    """
    env = {
        k: v for k, v in os.environ.items()
        if not (k.startswith(_STRIP_PREFIXES) or k in _STRIP_NAMES) or k == "PYTHONUNBUFFERED"
    }
    env["PYTHONIOENCODING"] = "utf-8"
    if extra_env:
        env.update({k: str(v) for k, v in extra_env.items()})
    return env


def run(cmd, *, env=None, cwd=None, timeout: float = 120, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run *cmd* with captured text output and a timeout.

    Raises :class:`CommandFailed` (with stdout/stderr) when it exits non-zero
    (if *check*) or times out.  *env* defaults to :func:`clean_env`.
    """
    cmd = [os.fspath(c) for c in cmd]
    try:
        proc = subprocess.run(
            cmd,
            env=clean_env() if env is None else env,
            cwd=cwd,
            timeout=timeout,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else e.stdout
        err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else e.stderr
        raise CommandFailed(cmd, f"timeout after {timeout}s", out, err) from None
    if check and proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, proc.stdout, proc.stderr)
    return proc


# --------------------------------------------------------------------------
# uv
# --------------------------------------------------------------------------


def find_uv() -> str | None:
    """Path of the uv binary: ``uv.find_uv_bin()`` (PyPI package), else ``which uv``."""
    try:
        import uv  # type: ignore

        path = uv.find_uv_bin()
        if path and os.path.isfile(path):
            return os.fspath(path)
    except (ImportError, FileNotFoundError, AttributeError):
        pass
    return shutil.which("uv")


_uv_cache_dir: str | None = None


def _get_uv_cache_dir() -> str:
    """The session's uv cache dir (set by the ``uv_cache_dir`` fixture), or a private tempdir."""
    global _uv_cache_dir
    if _uv_cache_dir is None:
        _uv_cache_dir = tempfile.mkdtemp(prefix="vocker-uv-cache-")
        atexit.register(shutil.rmtree, _uv_cache_dir, True)
    return _uv_cache_dir


# --------------------------------------------------------------------------
# venvs
# --------------------------------------------------------------------------


#: a venv's layout here: (scripts folder, its python)
SCRIPTS, VENV_PYTHON = ("Scripts", "python.exe") if WINDOWS else ("bin", "python")


def venv_python(venv) -> pathlib.Path:
    """``<venv>/bin/python`` (``Scripts\\python.exe`` on Windows)."""
    return pathlib.Path(venv) / SCRIPTS / VENV_PYTHON


def venv_script(venv, name) -> pathlib.Path:
    """A console script of the venv: ``bin/NAME`` (``Scripts\\NAME.exe``)."""
    return pathlib.Path(venv) / SCRIPTS / (name + ".exe" if WINDOWS else name)


def venv_site_packages(venv) -> pathlib.Path:
    """The venv's single ``lib/python3.X/site-packages`` (``Lib\\site-packages``)."""
    if WINDOWS:
        return pathlib.Path(venv) / "Lib" / "site-packages"
    found = sorted((pathlib.Path(venv) / "lib").glob("python3.*/site-packages"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one site-packages under {venv}/lib, found {found}")
    return found[0]


def read_record(venv, dist: str, version: str) -> list[list[str]]:
    """Rows of ``<dist>-<version>.dist-info/RECORD`` in *venv* as [path, hash, size]."""
    import csv

    record = (venv_site_packages(venv)
              / f"{normalize_dist_name(dist)}-{version}.dist-info" / "RECORD")
    with open(record, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def make_venv(python, path, packages=(), installer: str = "pip", wheelhouse=None,
              extra_env: dict[str, str] | None = None) -> pathlib.Path:
    """Create a virtualenv at *path* with *python* and install *packages* offline.

    ``installer="pip"``: ``python -m venv path`` (pip from ensurepip, offline),
    then ``path/bin/python -m pip install --no-index --find-links wheelhouse
    --disable-pip-version-check -q *packages`` with PIP_NO_CACHE_DIR=1 and
    PIP_DISABLE_PIP_VERSION_CHECK=1.  Packages are requirement names
    (``"vockdemo==1.0"``), so pip writes no direct_url.json.

    ``installer="uv"``: ``uv venv --python python path`` then ``uv pip install
    --python path/bin/python --no-index --find-links wheelhouse *packages``
    with UV_CACHE_DIR in the session temp dir, UV_PYTHON_DOWNLOADS=never,
    UV_NO_CONFIG=1 and UV_LINK_MODE=copy (so the venv never shares inodes with
    the cache).  uv does not compile bytecode by default.

    *extra_env* is applied last to every command.  Raises CommandFailed with
    the captured output on failure.  Returns ``pathlib.Path(path)``.
    """
    path = pathlib.Path(path)
    python = os.fspath(python)
    packages = [str(p) for p in packages]
    if packages and wheelhouse is None:
        raise ValueError("make_venv: packages given but no wheelhouse")
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"make_venv: {path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)

    if installer == "pip":
        env = clean_env({"PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                         "PIP_NO_INPUT": "1", "PIP_CONFIG_FILE": os.devnull,
                         **(extra_env or {})})
        run([python, "-m", "venv", path], env=env, timeout=VENV_TIMEOUT)
        if packages:
            run([venv_python(path), "-m", "pip", "install", "--no-index",
                 "--find-links", os.fspath(wheelhouse), "--disable-pip-version-check",
                 "-q", *packages], env=env, timeout=INSTALL_TIMEOUT)
    elif installer == "uv":
        uv = find_uv()
        if uv is None:
            raise FileNotFoundError("make_venv: uv binary not found (pip install uv)")
        env = clean_env({"UV_CACHE_DIR": _get_uv_cache_dir(), "UV_PYTHON_DOWNLOADS": "never",
                         "UV_NO_CONFIG": "1", "UV_LINK_MODE": "copy",
                         "UV_NO_PROGRESS": "1", "UV_OFFLINE": "1",
                         **(extra_env or {})})
        run([uv, "venv", "--quiet", "--python", python, path], env=env, timeout=VENV_TIMEOUT)
        if packages:
            run([uv, "pip", "install", "--quiet", "--python", venv_python(path),
                 "--no-index", "--find-links", os.fspath(wheelhouse), *packages],
                env=env, timeout=INSTALL_TIMEOUT)
    else:
        raise ValueError(f"make_venv: unknown installer {installer!r} (want 'pip' or 'uv')")
    return path


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> pathlib.Path:
    """Directory holding the demo wheels (vockdemo 1.0/2.0, vockextra 1.0, vockbig 1.0)."""
    return build_demo_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="session", autouse=True)
def uv_cache_dir(tmp_path_factory) -> pathlib.Path:
    """Session-wide UV_CACHE_DIR used by make_venv(installer='uv')."""
    global _uv_cache_dir
    d = tmp_path_factory.mktemp("uv-cache")
    _uv_cache_dir = os.fspath(d)
    return d


def pytest_collection_finish(session):
    """The Windows run of this suite (tests/test_wine_unit.py) takes longest:
    it starts now, beside the other tests, on the second core."""
    for item in session.items:
        start = getattr(getattr(item, "module", None), "start_in_background", None)
        if start is not None and not WINDOWS:
            start()
            break


@pytest.fixture(scope="session")
def lane():
    """The Windows lane (tests/winelane.py), set up once; skips with its one reason."""
    import winelane
    try:
        lane = winelane.shared_lane()
    except winelane.LaneUnavailable as e:
        pytest.skip(f"Windows lane not run: {e}")
    yield lane
    lane.stop()


@pytest.fixture(scope="session")
def uv_bin() -> str:
    """Path of the uv binary; skips when uv is not installed."""
    path = find_uv()
    if path is None:
        pytest.skip("uv binary not found (neither the 'uv' PyPI package nor uv on PATH)")
    return path


# ---- vocker fixtures ----
# (Fixtures that import vocker go below this line; maintained by the vocker engineer.)

import json  # noqa: E402

import vocker  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
#: what the demo environments hold
DEMO_PACKAGES = ("vockdemo==1.0", "vockextra", "vockbig")


def vocker_cmd() -> list[str]:
    """The real entry point: the installed ``vocker`` console script, else the module."""
    script = pathlib.Path(sys.executable).with_name("vocker")
    if script.exists():
        return [os.fspath(script)]
    return [sys.executable, os.fspath(REPO / "vocker.py")]


def cli(*args, home, check=False, cwd=None, timeout=300):
    """Run ``vocker --home HOME ARGS``; returns the CompletedProcess."""
    return run([*vocker_cmd(), "--home", home, *args], check=check, cwd=cwd, timeout=timeout)


def cli_json(*args, home):
    proc = cli(*args, "--json", home=home, check=True)
    return json.loads(proc.stdout)


def long_path(base: pathlib.Path) -> pathlib.Path:
    """A venv path whose ``#!<path>/bin/python`` line passes 127 bytes."""
    p = base / ("long-" + "l" * 55) / ("deeper-" + "d" * 55) / "venv"
    assert len(os.fsencode(p / "bin" / "python")) + 3 > 127
    return p


def tree_files(root) -> dict[str, os.stat_result]:
    """relative path ('/'-separated, as in images) -> lstat for everything below root."""
    out = {}
    root = pathlib.Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = pathlib.Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = p.lstat()
    return out


def image_entries(store, image_id) -> dict:
    """{relative path: tree entry} of every path of a stored image."""
    return dict(vocker.walk_image(store.tree, store.manifest(image_id).root))


def template_paths(store, image_id) -> set[str]:
    """Relative paths of the templated files of an image."""
    return {rel for rel, e in image_entries(store, image_id).items()
            if e.type in vocker.TEMPLATE_TYPES}


@pytest.fixture(scope="session")
def pip_venvs(tmp_path_factory, wheelhouse):
    """Two pip venvs of the same packages: one path with a space and non-ASCII
    characters, one so long that pip writes the ``/bin/sh`` exec header."""
    py = main_python()
    base = tmp_path_factory.mktemp("pipvenvs")
    a = make_venv(py, base / "dir with spåce" / "vénv", DEMO_PACKAGES, wheelhouse=wheelhouse)
    b = make_venv(py, long_path(base), DEMO_PACKAGES, wheelhouse=wheelhouse)
    return a, b


@pytest.fixture(scope="session")
def uv_venvs(tmp_path_factory, wheelhouse, uv_bin):
    py = main_python()
    base = tmp_path_factory.mktemp("uvvenvs")
    a = make_venv(py, base / "uv one", DEMO_PACKAGES, installer="uv", wheelhouse=wheelhouse)
    # "another day": the same wheels with other mtimes (uv records them in uv_cache.json)
    day2 = base / "wheelhouse-day2"
    shutil.copytree(wheelhouse, day2)
    for w in day2.iterdir():
        st = w.stat()
        os.utime(w, (st.st_atime + 86400, st.st_mtime + 86400))
    b = make_venv(py, long_path(base), DEMO_PACKAGES, installer="uv", wheelhouse=day2,
                  extra_env={"UV_CACHE_DIR": os.fspath(base / "uv-cache-day2")})
    return a, b


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory):
    """A store shared by read-mostly tests."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def demo_image(shared_home, pip_venvs):
    """(store home, image ID) of the first pip venv, tagged demo:1."""
    with vocker.Store(shared_home) as store:
        r = vocker.commit(store, pip_venvs[0], tags=["demo:1"])
    return shared_home, r["id"]


@pytest.fixture
def store(tmp_path):
    with vocker.Store(tmp_path / "store") as s:
        yield s


@pytest.fixture
def shared_store(demo_image):
    with vocker.Store(demo_image[0]) as s:
        yield s
