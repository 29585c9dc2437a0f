#!/usr/bin/env python3
"""Build the portable ``vocker.pyz`` (a shiv zipapp) from pinned wheels.

Usage::

    python3 build_zipapp.py [-o vocker.pyz] [--platform TAG]... [--python 3.X]...
                            [--universal] [--wheels-dir DIR] [--check-reproducible]

* default: a zipapp for this machine (its OS and CPU) that runs under CPython
  3.11, 3.12, 3.13 and 3.14 (those with published wheels);
* ``--platform TAG``: cross-build for a pip platform tag (``win_amd64``,
  ``manylinux_2_17_aarch64``, ``macosx_11_0_arm64``...) or an alias: ``windows``
  (win_amd64 + win_arm64), ``linux`` (manylinux x86_64 + aarch64), ``macos``
  (macosx arm64), ``host`` (this machine).  Repeatable;
* ``--universal``: windows + linux + macos in one file;
* ``--python 3.X``: only these CPython versions (then each one is required);
* ``--check-reproducible``: build a second time from scratch and compare bytes.

How: wheels of the pinned ``blake3`` and ``zstandard`` are fetched with ``pip
download --only-binary=:all:`` for every (platform, Python) target into a cache
(``build/wheels``; an already filled cache needs no network), unpacked into one
staging ``site-packages`` (extension modules carry the Python version and
platform in their file names, so they sit side by side), together with
vocker's own files (the wheel's include list from ``pyproject.toml``).  The
CFFI backend of zstandard is dropped and DWARF debug sections are removed from
Linux ``.so`` files (in pure Python: deterministic on every host and for every
ELF architecture, where GNU ``strip`` only knows its own).  Then ``shiv
--site-packages STAGE --reproducible`` writes the zipapp.

Standard library + shiv (the pinned version; installed into ``build/tools`` if
this Python has another one, because shiv's bootstrap code is part of the
output).  Python 3.11+.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

# --------------------------------------------------------------------------
# pins
# --------------------------------------------------------------------------

#: runtime dependencies (checked: wheels for cp311-cp314 on win_amd64, win_arm64,
#: manylinux_2_17 x86_64/aarch64, macosx_11_0_arm64 and macosx_10_12/13_x86_64)
BLAKE3_VERSION = "1.0.11"
ZSTANDARD_VERSION = "0.25.0"
PINS = {"blake3": BLAKE3_VERSION, "zstandard": ZSTANDARD_VERSION}
#: shiv writes its own bootstrap package into the zipapp: its version is part of the output
SHIV_VERSION = "1.0.8"

PYTHONS = ("3.11", "3.12", "3.13", "3.14")
PLATFORM_ALIASES = {
    "windows": ("win_amd64", "win_arm64"),
    "win": ("win_amd64", "win_arm64"),
    "linux": ("manylinux_2_17_x86_64", "manylinux_2_17_aarch64"),
    # macOS extension modules are named ``*.cpython-3XX-darwin.so`` whatever the
    # CPU: only one macOS architecture fits in one zipapp (blake3 publishes no
    # universal2 wheels).  arm64: every Mac sold since 2020.
    "macos": ("macosx_11_0_arm64",),
}
UNIVERSAL = ("windows", "linux", "macos")

REPO = Path(__file__).resolve().parent
DEFAULT_WHEELS_DIR = REPO / "build" / "wheels"
TOOLS_DIR = REPO / "build" / "tools"
#: extraction root at run time (``~`` is expanded by shiv's bootstrap on every OS;
#: SHIV_ROOT overrides it).  shiv cannot expand %LOCALAPPDATA% inside a longer path.
DEFAULT_ROOT = "~/.vocker/shiv"
DEFAULT_SHEBANG = "/usr/bin/env python3"
#: what the zipapp runs, and the preamble's file name (in site-packages/bin)
ENTRY_POINT, PREAMBLE_NAME = "vocker:run", "vocker_preamble.py"
#: extraction folders of other builds unused for this long are removed by the preamble
CLEANUP_DAYS = 7

#: files of the wheels that the zipapp does not need
DROP_RE = re.compile(r"zstandard/(backend_cffi\.py|_cffi\.[^/]*)")

EXIT_FETCH = 3  # wheels could not be fetched (network) and are not in the cache


class BuildError(Exception):
    exit_code = 1


class FetchError(BuildError):
    exit_code = EXIT_FETCH


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# targets and wheels
# --------------------------------------------------------------------------

def host_key() -> str:
    return "host-" + re.sub(r"[^A-Za-z0-9_.]+", "_", sysconfig.get_platform())


def expand_platforms(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        for tag in PLATFORM_ALIASES.get(v.lower(), (v,)):
            if tag == "host":
                tag = host_key()
            if tag not in out:
                out.append(tag)
    return out


WHEEL_RE = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-"
                      r"(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl")


def _cached_wheel(d: Path, name: str, version: str) -> Path | None:
    if not d.is_dir():
        return None
    for f in sorted(d.iterdir()):
        m = WHEEL_RE.fullmatch(f.name)
        if m and m["name"].lower() == name and m["version"] == version \
                and zipfile.is_zipfile(f):
            return f
    return None


_NETWORK_HINTS = ("NewConnectionError", "ConnectionError", "Network is unreachable",
                  "Temporary failure in name resolution", "Max retries exceeded",
                  "ConnectTimeout", "ReadTimeout", "SSLError", "ProxyError",
                  "No route to host", "Name or service not known")


def _publish(wheel: Path, dest: Path) -> None:
    """Move a downloaded wheel into the cache in one step (a rename)."""
    try:
        os.replace(wheel, dest)
    except OSError as exc:  # Windows: another build holds the same wheel open
        if not zipfile.is_zipfile(dest):
            raise BuildError(f"cannot put {wheel.name} into {dest.parent}: {exc}") from None


def fetch_wheel(wheels_dir: Path, platform: str, python: str, name: str,
                version: str) -> Path | None:
    """Path of the wheel of ``name==version`` for (platform, python); None if none exists.

    Raises FetchError when pip cannot reach the index (and the cache has nothing).
    """
    nodot = python.replace(".", "")
    d = wheels_dir / platform / f"cp{nodot}"
    hit = _cached_wheel(d, name, version)
    if hit:
        return hit
    d.mkdir(parents=True, exist_ok=True)
    # pip writes into a private folder; the cache only gains whole wheels, by rename,
    # so builds running at once (the Linux and Windows test lanes share it) never
    # see a half-written file
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--no-input", "--only-binary=:all:", "--no-deps", "--retries", "2",
               "--python-version", python, "--implementation", "cp", "--abi", f"cp{nodot}",
               "-d", tmp, f"{name}=={version}"]
        if not platform.startswith("host-"):
            cmd[-1:-1] = ["--platform", platform]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        for wheel in Path(tmp).glob("*.whl"):
            _publish(wheel, d / wheel.name)
    hit = _cached_wheel(d, name, version)
    if hit:
        return hit
    err = proc.stdout + proc.stderr
    if any(h in err for h in _NETWORK_HINTS):
        raise FetchError(f"cannot download {name}=={version} for CPython {python} on "
                         f"{platform}: the package index is unreachable and the wheel is "
                         f"not in {wheels_dir}\n{err.strip()[-2000:]}")
    if proc.returncode != 0 and "No matching distribution" not in err \
            and "Could not find a version" not in err:
        raise BuildError(f"pip download failed for {name}=={version} ({platform}, "
                         f"CPython {python}):\n{err.strip()[-2000:]}")
    return None


def fetch_all(wheels_dir: Path, platforms: list[str], pythons: list[str],
              required_pythons: bool) -> dict[tuple[str, str], list[Path]]:
    """(platform, python) -> wheels, for every complete target."""
    jobs = {(p, py, name): None for p in platforms for py in pythons for name in PINS}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = {key: pool.submit(fetch_wheel, wheels_dir, key[0], key[1], key[2],
                                 PINS[key[2]]) for key in jobs}
        for key, fut in futs.items():
            jobs[key] = fut.result()
    targets: dict[tuple[str, str], list[Path]] = {}
    for p in platforms:
        for py in pythons:
            wheels = [jobs[(p, py, name)] for name in PINS]
            missing = [f"{n}=={PINS[n]}" for n, w in zip(PINS, wheels) if w is None]
            if missing:
                msg = f"no wheel of {', '.join(missing)} for CPython {py} on {p}"
                if required_pythons:
                    raise BuildError(msg + "; drop that --python/--platform or change the pins")
                log(f"note: {msg}: that Python is not supported on {p}")
                continue
            targets[(p, py)] = wheels
        if not any(k[0] == p for k in targets):
            raise BuildError(f"no CPython in {', '.join(pythons)} has wheels for {p}")
    return targets


# --------------------------------------------------------------------------
# ELF: drop DWARF sections (what ``strip --strip-debug`` does)
# --------------------------------------------------------------------------

_SHF_ALLOC, _SHT_NOBITS, _SHT_RELA, _SHT_REL = 0x2, 8, 4, 9
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")


def strip_debug_elf(data: bytes) -> bytes | None:
    """``data`` without its ``.debug*`` sections, or None (not 64-bit little-endian
    ELF, nothing to strip, or an unusual layout left alone).

    Loadable content (everything up to the end of the last segment/allocated
    section) is kept byte for byte; the non-allocated sections that stay
    (``.comment``, ``.symtab``, ``.strtab``, ``.shstrtab``) are moved down, and
    the debug sections' headers become inactive ``SHT_NULL`` entries so that
    no section index changes.
    """
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (_, _, _, _, _, phoff, shoff, _, ehsize, phentsize, phnum,
     shentsize, shnum, shstrndx) = _EHDR.unpack_from(data, 0)
    if (not shoff or not shnum or shentsize != _SHDR.size or shstrndx >= shnum
            or shoff + shnum * shentsize > len(data) or (phnum and phentsize != _PHDR.size)):
        return None
    secs = [list(_SHDR.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    names = data[secs[shstrndx][4]:secs[shstrndx][4] + secs[shstrndx][5]]

    def name(s):
        end = names.find(b"\0", s[0])
        return names[s[0]:end if end >= 0 else None]

    keep_end = max(ehsize, phoff + phnum * phentsize)
    for i in range(phnum):
        p = _PHDR.unpack_from(data, phoff + i * phentsize)
        keep_end = max(keep_end, p[2] + p[5])  # p_offset + p_filesz
    for s in secs:
        if s[2] & _SHF_ALLOC and s[1] != _SHT_NOBITS:
            keep_end = max(keep_end, s[4] + s[5])
    drop = {i for i, s in enumerate(secs)
            if i and not s[2] & _SHF_ALLOC and name(s).startswith((b".debug", b".zdebug"))}
    drop |= {i for i, s in enumerate(secs)  # relocations of debug sections
             if s[1] in (_SHT_REL, _SHT_RELA) and not s[2] & _SHF_ALLOC and s[7] in drop}
    if (not drop or any(secs[i][5] and secs[i][4] < keep_end for i in drop)
            or any(s[6] in drop for i, s in enumerate(secs) if i not in drop)):
        return None
    out = bytearray(data[:keep_end])
    for off, i in sorted((s[4], i) for i, s in enumerate(secs)
                         if i and i not in drop and s[1] != _SHT_NOBITS and s[4] >= keep_end):
        s = secs[i]
        out += b"\0" * (-len(out) % max(1, s[8]))
        s[4] = len(out)
        out += data[off:off + s[5]]
    for i in drop:
        secs[i] = [0] * 10
    out += b"\0" * (-len(out) % 8)
    struct.pack_into("<Q", out, 0x28, len(out))  # e_shoff
    for s in secs:
        out += _SHDR.pack(*s)
    return bytes(out)


# --------------------------------------------------------------------------
# staging site-packages
# --------------------------------------------------------------------------

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class Stage:
    """The merged site-packages, in memory: path -> (bytes, executable)."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, bool]] = {}
        self.origin: dict[str, str] = {}
        self.records: dict[str, set[str]] = {}   # dist-info dir -> paths it owns
        self.dropped: set[str] = set()
        self.stripped = [0, 0]  # bytes before, after

    def add(self, path: str, data: bytes, executable: bool, origin: str) -> None:
        if path in self.dropped:
            return
        old = self.files.get(path)
        if old is None or old[0] == data:
            self.files[path] = (data, executable or (old is not None and old[1]))
            self.origin.setdefault(path, origin)
            return
        if path.endswith(".dist-info/WHEEL"):  # same wheel, other tags: list them all
            self.files[path] = (_merge_wheel_metadata(old[0], data), False)
            return
        if old[0].replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n"):
            self.files[path] = (data if b"\r\n" in old[0] else old[0], old[1])  # keep LF
            return
        if "/sboms/" in path and ".dist-info/" in path:  # per-platform SBOMs
            del self.files[path]
            self.dropped.add(path)
            return
        hint = (" (macOS extension modules have no CPU in their name: build one macOS "
                "architecture per zipapp)" if path.endswith("-darwin.so") else "")
        raise BuildError(f"{path} differs between {self.origin[path]} and {origin}{hint}")

    def add_wheel(self, wheel: Path) -> None:
        with zipfile.ZipFile(wheel) as zf:
            infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
            dists = {i.filename.split("/", 1)[0] for i in infos
                     if re.fullmatch(r"[^/]+\.dist-info/RECORD", i.filename)}
            if len(dists) != 1:
                raise BuildError(f"{wheel.name}: expected one .dist-info folder, found {dists}")
            dist = dists.pop()
            owned = self.records.setdefault(dist, set())
            for info in infos:
                name = info.filename
                m = re.fullmatch(r"[^/]+\.data/([^/]+)/(.+)", name)
                if m:
                    if m[1] not in ("purelib", "platlib"):
                        log(f"note: {wheel.name}: skipping {name} (not importable)")
                        continue
                    name = m[2]
                if DROP_RE.fullmatch(name):
                    self.dropped.add(name)
                    continue
                if name == f"{dist}/RECORD":
                    continue  # rewritten for the merged files
                data = zf.read(info)
                if name.endswith(".so") and data[:4] == b"\x7fELF":
                    stripped = strip_debug_elf(data)
                    if stripped is not None:
                        self.stripped[0] += len(data)
                        self.stripped[1] += len(stripped)
                        data = stripped
                executable = bool((info.external_attr >> 16) & 0o111)
                self.add(name, data, executable, wheel.name)
                owned.add(name)

    def finish_records(self) -> None:
        for dist, paths in self.records.items():
            rows = []
            for p in sorted(paths - self.dropped):
                data = self.files[p][0]
                rows.append(f"{p},{_record_hash(data)},{len(data)}")
            rows.append(f"{dist}/RECORD,,")
            self.files[f"{dist}/RECORD"] = ("\n".join(rows) + "\n").encode(), False

    def write(self, root: Path) -> None:
        for path in sorted(self.files):
            data, executable = self.files[path]
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, 0o755 if executable else 0o644)

    def digest(self, extra: bytes = b"") -> str:
        h = hashlib.sha256()
        for path in sorted(self.files):
            data, executable = self.files[path]
            h.update(f"{path}\0{int(executable)}\0{len(data)}\0".encode())
            h.update(data)
        h.update(extra)
        return h.hexdigest()


def _merge_wheel_metadata(a: bytes, b: bytes) -> bytes:
    la, lb = a.decode().splitlines(), b.decode().splitlines()
    tags = sorted({ln for ln in la + lb if ln.startswith("Tag:")})
    head = list(dict.fromkeys(ln for ln in la + lb if ln.strip() and not ln.startswith("Tag:")))
    return ("\n".join(head + tags) + "\n").encode()


def vocker_sources() -> tuple[str, list[str], str]:
    """(version, wheel include list, summary) read from vocker.py and pyproject.toml."""
    text = (REPO / "vocker.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    if not m:
        raise BuildError("no __version__ in vocker.py")
    include, summary = ["vocker.py", "schema.sql"], ""
    try:
        import tomllib
        with open(REPO / "pyproject.toml", "rb") as f:
            meta = tomllib.load(f)
        include = meta["tool"]["hatch"]["build"]["targets"]["wheel"]["include"]
        summary = meta["project"].get("description", "")
    except (ImportError, OSError, KeyError):
        pass
    return m[1], list(include), summary


def add_vocker(stage: Stage) -> str:
    version, include, summary = vocker_sources()
    dist = f"vocker-{version}.dist-info"
    for rel in include:
        src = REPO / rel
        if not src.is_file():
            raise BuildError(f"{rel} (listed in pyproject.toml) is missing")
        stage.add(rel, src.read_bytes(), False, "the vocker checkout")
        stage.records.setdefault(dist, set()).add(rel)
    meta = [
        "Metadata-Version: 2.1", "Name: vocker", f"Version: {version}",
        f"Summary: {summary}", "Requires-Python: >=3.11",
        *(f"Requires-Dist: {n}=={v}" for n, v in PINS.items()),
    ]
    for name, text in (("METADATA", "\n".join(meta) + "\n"),
                       ("entry_points.txt", "[console_scripts]\nvocker = vocker:run\n"),
                       ("INSTALLER", "build_zipapp.py\n")):
        stage.add(f"{dist}/{name}", text.encode(), False, "build_zipapp.py")
        stage.records[dist].add(f"{dist}/{name}")
    return version


# --------------------------------------------------------------------------
# the preamble: runs inside the zipapp after extraction, before vocker.run
# --------------------------------------------------------------------------

PREAMBLE = '''\
"""vocker.pyz preamble (run by shiv's bootstrap before vocker.run).

shiv extracts site-packages to <root>/<pyz name>_<build id>/ and never deletes
old ones.  This marks the current folder as used and removes the folders of
other builds of the same .pyz unused for {days} days (a folder in use on
Windows cannot be renamed and is left alone).
"""
import os
import re
import time


def _cleanup(site_packages, max_age={days} * 86400):
    here = os.path.dirname(os.path.abspath(str(site_packages)))
    root, current = os.path.split(here)
    name = current.rpartition("_")[0]
    now = time.time()
    try:
        if now - os.stat(here).st_mtime > 3600:
            os.utime(here)  # "last used": at most one write an hour
        entries = os.listdir(root)
    except OSError:
        return
    build = re.compile(re.escape(name) + r"_[0-9a-f]{{8,64}}(\\.tmp)?")
    trash = re.compile(r"\\." + re.escape(name) + r"_[0-9a-f]{{8,64}}(\\.tmp)?\\.trash-[0-9]+")
    for entry in entries:
        path = os.path.join(root, entry)
        if entry == current or not (build.fullmatch(entry) or trash.fullmatch(entry)):
            continue
        try:
            if now - os.stat(path).st_mtime < max_age:
                continue
            if not entry.startswith("."):
                moved = os.path.join(root, "." + entry + ".trash-" + str(os.getpid()))
                os.rename(path, moved)  # atomic: nobody sees a half-deleted folder
                path = moved
            import shutil  # here: only when there is a folder to remove (a faster start)
            shutil.rmtree(path, ignore_errors=True)
            if build.fullmatch(entry) and not entry.endswith(".tmp"):
                os.unlink(os.path.join(root, "." + entry + "_lock"))
        except OSError:
            continue


try:
    _cleanup(site_packages)  # noqa: F821 - given by shiv
except Exception:  # never stop vocker from starting
    pass
'''


# --------------------------------------------------------------------------
# the launcher: the zipapp's __main__.py, in place of shiv's
# --------------------------------------------------------------------------

LAUNCHER = '''\
# -*- coding: utf-8 -*-
"""vocker.pyz launcher (written by build_zipapp.py in place of shiv's).

Every run after the first imports vocker straight from the folder shiv
extracted this build to, as shiv's bootstrap would, without importing that
bootstrap (pathlib, zipfile, hashlib, compileall, ...: most of a warm start).
The first run, a folder that is not there, and any SHIV_* setting but
SHIV_ROOT go through shiv's bootstrap.
"""
import os
import sys

ROOT, BUILD_ID, PREAMBLE, ENTRY = {root!r}, {build_id!r}, {preamble!r}, {entry!r}


def _site_packages():
    """The site-packages shiv extracted this build to (it renames a complete
    extraction into place), or None."""
    if any(k.startswith("SHIV_") and k != "SHIV_ROOT" for k in os.environ):
        return None
    root = os.environ.get("SHIV_ROOT", ROOT) or "~/.shiv"  # shiv's default for none
    if root.startswith("$"):
        root = os.environ.get(root[1:], root[1:])
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    site = os.path.join(os.path.expanduser(root), name + "_" + BUILD_ID, "site-packages")
    return site if os.path.isdir(site) else None


def _add_site(site):
    """shiv's order: the folder goes before the first site-packages on sys.path."""
    import site as stdlib_site
    length = len(sys.path)
    index = next((i for i, p in enumerate(sys.path) if os.path.splitext(
        os.path.basename(os.path.normpath(p)))[0] in ("site-packages", "dist-packages")),
        None) or length
    stdlib_site.addsitedir(site)
    sys.path[:] = sys.path[:index] + sys.path[length:] + sys.path[index:length]


def _run_preamble(site):
    path = os.path.join(site, "bin", PREAMBLE)
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
    except OSError:  # never stop vocker from starting
        return
    exec(code, {{"__name__": "__main__", "__file__": path, "archive": sys.argv[0],
                "site_packages": site}})


def main():
    site = _site_packages()
    if site is None:
        import _bootstrap
        _bootstrap.bootstrap()
        return
    _add_site(site)
    if PREAMBLE:
        _run_preamble(site)
    module, _, function = ENTRY.partition(":")
    sys.exit(getattr(__import__(module), function)())


main()
'''


def replace_main(pyz: Path, text: str) -> None:
    """Rewrite the zipapp with ``text`` as its ``__main__.py``: every other
    entry (name, date, mode, compression, bytes) and the shebang line as
    shiv wrote them, in the same order; deterministic."""
    data = pyz.read_bytes()
    prefix = data[:data.index(b"\n") + 1] if data.startswith(b"#!") else b""
    tmp = pyz.with_name(pyz.name + ".main")
    with zipfile.ZipFile(pyz) as src, open(tmp, "wb") as f:
        f.write(prefix)
        with zipfile.ZipFile(f, "w") as out:
            for info in src.infolist():
                new = zipfile.ZipInfo(info.filename, info.date_time)
                new.compress_type, new.external_attr = info.compress_type, info.external_attr
                new.create_system = info.create_system
                body = text.encode() if info.filename == "__main__.py" else src.read(info)
                out.writestr(new, body)
    os.replace(tmp, pyz)


# --------------------------------------------------------------------------
# shiv
# --------------------------------------------------------------------------

def shiv_command() -> tuple[list[str], dict[str, str]]:
    """Command and environment that run shiv SHIV_VERSION."""
    env = dict(os.environ)
    try:
        from importlib.metadata import version
        if version("shiv") == SHIV_VERSION:
            return [sys.executable, "-m", "shiv"], env
    except Exception:
        pass
    target = TOOLS_DIR / f"shiv-{SHIV_VERSION}"
    if not (target / "shiv").is_dir():
        log(f"installing shiv=={SHIV_VERSION} into {target}")
        TOOLS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".shiv-", dir=TOOLS_DIR))
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-input",
                               "--disable-pip-version-check", "--target", str(tmp),
                               f"shiv=={SHIV_VERSION}"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            err = proc.stdout + proc.stderr
            cls = FetchError if any(h in err for h in _NETWORK_HINTS) else BuildError
            raise cls(f"cannot install shiv=={SHIV_VERSION}:\n{err.strip()[-2000:]}")
        try:
            os.rename(tmp, target)
        except OSError:  # another build installed it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "shiv").is_dir():
                raise BuildError(f"cannot install shiv into {target}") from None
    env["PYTHONPATH"] = str(target) + os.pathsep + env.get("PYTHONPATH", "")
    return [sys.executable, "-m", "shiv"], env


def build(out: Path, targets: dict[tuple[str, str], list[Path]], root: str,
          shebang: str, preamble: bool) -> dict:
    stage = Stage()
    for key in sorted(targets):
        for wheel in targets[key]:
            stage.add_wheel(wheel)
    version = add_vocker(stage)
    stage.finish_records()
    preamble_text = PREAMBLE.format(days=CLEANUP_DAYS).encode() if preamble else b""
    # short build id (the extraction folder's name): 16 hex of the content hash
    build_id = stage.digest(preamble_text + shebang.encode() + SHIV_VERSION.encode())[:16]
    cmd, env = shiv_command()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vocker-zipapp-") as tmp:
        site = Path(tmp) / "site-packages"
        stage.write(site)
        tmp_out = Path(tmp) / out.name
        args = [*cmd, "--site-packages", str(site), "-o", str(tmp_out),
                "-e", ENTRY_POINT, "-p", shebang, "--reproducible",
                f"--root={root}", "--build-id", build_id]  # one word: click on Windows
        # expands a "~..." argument (not "--root=~...") before shiv sees it
        if preamble:
            pre = Path(tmp) / PREAMBLE_NAME
            pre.write_bytes(preamble_text)
            os.chmod(pre, 0o644)
            args += ["--preamble", str(pre)]
        proc = subprocess.run(args, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not tmp_out.is_file():
            raise BuildError(f"shiv failed (rc={proc.returncode}):\n"
                             f"{(proc.stdout + proc.stderr).strip()[-3000:]}")
        replace_main(tmp_out, LAUNCHER.format(root=root, build_id=build_id, entry=ENTRY_POINT,
                                              preamble=PREAMBLE_NAME if preamble else ""))
        tmp_final = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.copyfile(tmp_out, tmp_final)
        os.chmod(tmp_final, 0o755)
        os.replace(tmp_final, out)
    data = out.read_bytes()
    return {"path": out, "version": version, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "build_id": build_id,
            "stripped": stage.stripped, "dropped": sorted(stage.dropped),
            "files": len(stage.files)}


def zip_breakdown(path: Path) -> dict[str, int]:
    """Compressed bytes per top-level package inside site-packages."""
    sizes: dict[str, int] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            key = parts[1] if parts[0] == "site-packages" and len(parts) > 2 else parts[0]
            key = re.sub(r"-[^-]+\.dist-info$", ".dist-info", key)
            sizes[key] = sizes.get(key, 0) + info.compress_size
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def human(n: int) -> str:
    return f"{n / 1e6:.2f} MB ({n} bytes)"


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="build_zipapp.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python3 build_zipapp.py                        # this machine, CPython 3.11-3.14\n"
               "  python3 build_zipapp.py --universal -o dist/vocker.pyz\n"
               "  python3 build_zipapp.py --platform windows -o vocker-windows.pyz\n"
               "  python3 build_zipapp.py --platform win_amd64 --python 3.12\n"
               "exit codes: 0 ok, 1 build failed, 2 bad command line, "
               f"{EXIT_FETCH} wheels not cached and the index unreachable")
    p.add_argument("-o", "--output", default="vocker.pyz", help="output file (default: %(default)s)")
    p.add_argument("--platform", action="append", default=[], metavar="TAG",
                   help="pip platform tag or alias (windows, linux, macos, host); repeatable")
    p.add_argument("--python", action="append", default=[], metavar="3.X",
                   help=f"CPython version ({', '.join(PYTHONS)}); repeatable "
                        "(default: all of them that have wheels)")
    p.add_argument("--universal", action="store_true",
                   help="Windows amd64+arm64, manylinux x86_64+aarch64 and macOS arm64")
    p.add_argument("--wheels-dir", type=Path, default=DEFAULT_WHEELS_DIR,
                   help="wheel cache (default: build/wheels next to this script)")
    p.add_argument("--root", default=DEFAULT_ROOT,
                   help="extraction root at run time (default: %(default)s; "
                        "SHIV_ROOT overrides it when vocker.pyz runs)")
    p.add_argument("--shebang", default=DEFAULT_SHEBANG, help="default: %(default)s")
    p.add_argument("--no-preamble", action="store_true",
                   help="leave out the preamble that removes old extraction folders")
    p.add_argument("--check-reproducible", action="store_true",
                   help="build twice from scratch and fail unless the bytes are identical")
    args = p.parse_args(argv)
    for v in args.python:
        if not re.fullmatch(r"3\.\d+", v):
            p.error(f"--python wants a version like 3.12, not {v!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    platforms = expand_platforms((list(UNIVERSAL) if args.universal else [])
                                 + args.platform) or [host_key()]
    pythons = list(dict.fromkeys(args.python)) or list(PYTHONS)
    wheels_dir = args.wheels_dir.expanduser().resolve()
    out = Path(args.output).expanduser().resolve()
    try:
        targets = fetch_all(wheels_dir, platforms, pythons, required_pythons=bool(args.python))
        r = build(out, targets, args.root, args.shebang, not args.no_preamble)
        if args.check_reproducible:
            with tempfile.TemporaryDirectory(prefix="vocker-zipapp-check-") as tmp:
                again = build(Path(tmp) / out.name, targets, args.root, args.shebang,
                              not args.no_preamble)
            if again["sha256"] != r["sha256"]:
                raise BuildError(f"not reproducible: {r['sha256']} then {again['sha256']}")
            log("reproducible: a second build from scratch gave the same bytes")
    except BuildError as exc:
        log(f"build_zipapp: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        log("build_zipapp: interrupted")
        return 130

    log(f"vocker {r['version']} for:")
    for p in platforms:
        pys = [py for (pp, py) in sorted(targets) if pp == p]
        log(f"  {p:<26} CPython {', '.join(pys)}")
    before, after = r["stripped"]
    if before:
        log(f"ELF debug sections removed: {human(before)} -> {human(after)}")
    if r["dropped"]:
        log(f"left out: {len(r['dropped'])} files (zstandard's CFFI backend, per-platform SBOMs)")
    log("compressed size by package: " + ", ".join(
        f"{k} {v / 1e6:.2f} MB" for k, v in zip_breakdown(out).items() if v > 50_000))
    log(f"extraction root: {args.root} (SHIV_ROOT overrides), build id {r['build_id']}")
    log(f"built in {time.monotonic() - t0:.1f} s")
    print(f"{out}")
    print(f"size   {human(r['size'])}")
    print(f"sha256 {r['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
