"""vocker: a Docker-like manager for complete Python environments.

vocker turns a virtual environment (or a standalone Python, or any folder)
into an *image*: a reproducible, content-addressed snapshot named by one
BLAKE3 hash of a Merkle tree. It turns images back into working
environments (*containers*) that share identical files on disk through
reflinks or hardlinks, with ``.pyc`` files compiled once and shared.

Usage: ``vocker --help``. Formats and rules: README.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

import argparse
import collections
import contextlib
import errno
import io
import json
import marshal
import ntpath
import os
import re
import shlex
import signal
import sqlite3
import stat
import struct
import sys
import threading
import time
import unicodedata
import zlib

try:  # checked in main() so that a missing wheel gives a one-line error
    import blake3
except ImportError as _exc:  # pragma: no cover - exercised by the zipapp
    _IMPORT_ERROR = (_exc, "blake3")
    blake3 = None
else:
    _IMPORT_ERROR = None


class _OnFirstUse:
    """A module imported when one of its names is first read (zstandard: a
    create from a warm store never needs it, and it costs ~8 ms a start).
    The module then takes this object's place; a module that cannot be
    imported raises the one-line :func:`import_problem`."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        try:
            module = __import__(self._name)
        except ImportError as exc:
            raise import_problem(exc, self._name) from exc
        globals()[self._name] = module
        return getattr(module, attr)


zstandard = _OnFirstUse("zstandard")


class _Regex:
    """A regular expression compiled when first used (compiling the
    module's ~40 at import took ~3 ms of every start); each of its
    pattern's methods, once read, is kept on this object as is."""

    def __init__(self, pattern, flags=0):
        self.pattern, self._flags = pattern, flags  # .pattern: the compiled one's, the same

    def __getattr__(self, name):
        value = getattr(re.compile(self.pattern, self._flags), name)
        setattr(self, name, value)
        return value


###############################################################################
# Constants ###################################################################
###############################################################################

FORMAT_VERSION = 1
ID_HEX_LEN = 64
SHORT_ID_LEN = 12
ID_RE = _Regex(r"[0-9a-f]{64}")
PREFIX_RE = _Regex(r"[0-9a-f]{1,64}")
#: the blob of an empty file (BLAKE3 of b"")
EMPTY_ID = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

#: mtime of every pool file and every materialized source file; timestamp
#: ``.pyc`` files compiled against it are valid in every container.
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z
#: ``blobs.pack`` of a blob whose one copy is its pool file (no compressed frame)
POOL_ONLY = "pool"
#: zstd level of the store's own frames: fast (push compresses again for the wire;
#: measured on 227 MB: level 1 packs 72.8 MB in 0.57 s, level 3 64.9 MB in 0.76 s)
ZSTD_LEVEL = 1
#: a repository's frames: solid zstd frames of related blobs (one distribution,
#: at most GROUP_MAX bytes) at WIRE_LEVEL with long-distance matching; readers
#: refuse a frame that asks for a window over 2**WIRE_WINDOW_LOG (memory)
WIRE_LEVEL = 19
GROUP_MAX = 128 << 20
WIRE_WINDOW_LOG = 27
#: threads that compress a push's groups (each holds ~250 MB at level 19)
WIRE_THREADS = max(1, min(4, os.cpu_count() or 1))
#: compression state a push's threads hold at once, bounded by
#: :func:`frame_memory` (a frame whose own bound is larger waits to run alone)
WIRE_MEMORY = 320 << 20
#: compressed bytes of one frame held in memory before it waits in a temp file
WIRE_SPOOL = 8 << 20
MAX_META = 256 << 20          # largest .trees/.blobs/index file accepted from outside
MAX_MANIFEST = 1 << 20        # largest image manifest
CHUNK = 1 << 20
#: files up to this size are read whole (templates are always small)
SMALL_FILE = 8 << 20
#: threads that read, hash and compress files during commit (measured on 2
#: cores, 227 MB venv, zstd level 1, quiet machine: 2 threads 0.87 s, 3: 0.89 s,
#: 4: 0.93 s; at level 3 on a loaded one, 1: 1.8 s, 2: 1.35, 3: 1.3, 8: 1.6)
COMMIT_THREADS = min(8, os.cpu_count() or 1)

# Tree entry types
T_FILE = "f"          # regular file -> blob
T_EXEC = "x"          # executable file -> blob
T_TEMPLATE = "t"      # file with placeholders -> blob
T_TEMPLATE_EXEC = "T"  # executable file with placeholders -> blob
T_SYMLINK = "l"       # symlink, target is literal (hex of UTF-8)
T_SYMLINK_TEMPLATE = "L"  # symlink whose target holds placeholders
T_DIR = "d"           # directory -> tree
FILE_TYPES = (T_FILE, T_EXEC)
TEMPLATE_TYPES = (T_TEMPLATE, T_TEMPLATE_EXEC)
LINK_TYPES = (T_SYMLINK, T_SYMLINK_TEMPLATE)
ENTRY_TYPES = frozenset(FILE_TYPES + TEMPLATE_TYPES + LINK_TYPES + (T_DIR,))

# Placeholders written into templates in place of machine-specific text.
PH_MARK = b"@@VOCKER:"
PH_ENV = b"@@VOCKER:ENV@@"        # the environment's own absolute path
PH_PYEXE = b"@@VOCKER:PYEXE@@"    # the base interpreter executable
PH_PYHOME = b"@@VOCKER:PYHOME@@"  # the base interpreter's directory
PH_PROMPT = b"@@VOCKER:PROMPT@@"  # activate prompt (environment's dir name)
PH_SHPROMPT = b"@@VOCKER:SHPROMPT@@"  # the prompt as one POSIX shell word
PLACEHOLDERS = (PH_ENV, PH_PYEXE, PH_PYHOME, PH_PROMPT)
#: placeholders rendered from others: shlex-quoted, as venv >= 3.13.1 writes them
SHELL_PLACEHOLDERS = ((PH_SHPROMPT, PH_PROMPT),)

KINDS = ("venv", "standalone", "plain")
LINK_MODES = ("auto", "reflink", "hardlink", "copy")
#: distlib writes the ``/bin/sh`` exec form past this shebang length
SHEBANG_MAX = 512 if sys.platform == "darwin" else 127
#: pyvenv.cfg keys whose values are paths; not part of the manifest
PYVENV_PATH_KEYS = ("home", "executable", "command", "base-prefix",
                    "base-exec-prefix", "base-executable")
TAG_RE = _Regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")
WINDOWS = os.name == "nt"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_INVALID = 5
EXIT_ENVIRONMENT = 6
EXIT_PYTHON = 7
EXIT_NETWORK = 8
EXIT_DAMAGED = 9
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    unexpected error (a bug: run again with --debug and report it)
  2    bad command line
  3    not found (image, container, path)
  4    conflict (target exists, ambiguous image prefix, image in use, store busy)
  5    invalid input (not an environment, corrupt or hostile data)
  6    system problem (read-only or full disk, permissions, link mode)
  7    no matching Python interpreter
  8    repository unreachable (network, HTTP error, access denied)
  9    verify found damage, a container differs from its image, or audit did not
       reproduce an image
  130  interrupted
"""


###############################################################################
# Errors ######################################################################
###############################################################################

class VockerError(Exception):
    """Base of every error vocker reports; ``main`` prints one line."""

    exit_code = EXIT_ERROR

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):  # one line, whatever names from outside it holds
        return terminal_safe(self.message + (f"; {self.hint}" if self.hint else ""))


class UsageError(VockerError):
    exit_code = EXIT_USAGE


class NotFoundError(VockerError):
    exit_code = EXIT_NOT_FOUND

    def __init__(self, what, name, hint=None):
        super().__init__(f"{what} not found: {name}", hint)
        self.what = what
        self.name = name


class ConflictError(VockerError):
    exit_code = EXIT_CONFLICT


class AmbiguousError(ConflictError):
    def __init__(self, prefix, candidates):
        shown = ", ".join(c[:SHORT_ID_LEN] for c in candidates[:8])
        super().__init__(f"image prefix '{prefix}' is ambiguous: {shown}",
                         "give more characters of the ID")
        self.prefix = prefix
        self.candidates = list(candidates)


class InvalidInputError(VockerError):
    exit_code = EXIT_INVALID


class IntegrityError(InvalidInputError):
    def __init__(self, what, object_id, detail):
        super().__init__(f"{what} {object_id[:SHORT_ID_LEN]} failed verification: {detail}",
                         "the store or the source is corrupt; pull or commit it again")
        self.what = what
        self.object_id = object_id


class LauncherError(InvalidInputError):
    """A Windows launcher (``reason`` says what) vocker cannot template."""

    def __init__(self, reason, hint=None):
        super().__init__(reason, hint)
        self.reason = reason


class UnsupportedLauncherError(LauncherError):
    """A Windows launcher names the environment but cannot be templated safely."""


class ZipFormatError(LauncherError):
    """A launcher's zip is malformed or uses a feature vocker does not rewrite."""


class EnvironmentProblem(VockerError):
    exit_code = EXIT_ENVIRONMENT


class LinkModeError(EnvironmentProblem):
    def __init__(self, mode, target, reason):
        super().__init__(f"link mode '{mode}' does not work for {target}: {reason}",
                         "use --link-mode auto to fall back automatically")
        self.mode = mode


class PythonError(VockerError):
    exit_code = EXIT_PYTHON


class NetworkError(VockerError):
    exit_code = EXIT_NETWORK

    def __init__(self, url, detail, hint="check the address and the connection, then retry"):
        super().__init__(f"cannot fetch {url}: {detail}", hint)
        self.url = url


class BuildError(InvalidInputError):
    """A recipe step failed: ``step`` is its recipe line (``INSTALL req.txt``)."""

    def __init__(self, step, detail, hint=None):
        super().__init__(f"{step}: {detail}", hint)
        self.step = step


class WheelHashError(InvalidInputError):
    """A wheel's sha256 is not one its lock pins."""

    def __init__(self, pin, detail):
        super().__init__(f"refused {pin}: its wheel's sha256 is not the one the lock pins "
                         f"({detail})", "the wheel was changed or the lock is stale: "
                         "lock it again, or fetch the wheel the lock names")
        self.pin = pin


###############################################################################
# Hashing and paths ###########################################################
###############################################################################

def hash_bytes(data):
    """BLAKE3-256 of ``data`` as lowercase hex."""
    return blake3.blake3(data).hexdigest()


def random_hex(n=32):
    """``n`` random hex digits: names of temporary files and folders."""
    return os.urandom((n + 1) // 2).hex()[:n]


def free_bytes(path):
    """Free bytes on the disk that holds ``path``."""
    import shutil  # here: imported on first use, for a faster start
    return shutil.disk_usage(path).free


def thread_pool(workers):
    """A pool of ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor  # here: imported on first use, for a faster start
    return ThreadPoolExecutor(max_workers=workers)


def short_id(object_id):
    return object_id[:SHORT_ID_LEN]


def check_id(object_id, what="object"):
    if not isinstance(object_id, str) or not ID_RE.fullmatch(object_id):
        raise InvalidInputError(f"invalid {what} ID: {str(object_id)[:80]!r}")
    return object_id


_IDS_RE = _Regex(r"(?:[0-9a-f]{64}\n)*[0-9a-f]{64}")


def check_ids(object_ids, what="object"):
    """:func:`check_id` of each of ``object_ids``, in one pass (a create
    checks thousands)."""
    ids = list(object_ids)
    if ids and not (all(isinstance(i, str) for i in ids) and _IDS_RE.fullmatch("\n".join(ids))):
        for object_id in ids:
            check_id(object_id, what)
    return ids


def digest_to_path(root, object_id, depth=1, suffix=""):
    """Path of an object in a sharded directory; validates the ID first."""
    check_id(object_id)
    parts = [object_id[2 * i:2 * i + 2] for i in range(depth)]
    return os.path.join(root, *parts, object_id + suffix)


WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in "123456789\u00b9\u00b2\u00b3"]
    + [f"LPT{i}" for i in "123456789\u00b9\u00b2\u00b3"])


#: bounds of the one reader for numbers and JSON from outside
MAX_UINT = (1 << 63) - 1
MAX_JSON_DEPTH = 16
_UINT_RE = _Regex(r"[0-9]{1,19}")
_JSON_STRING_RE = _Regex(rb'"(?:[^"\\]|\\.)*"')
_JSON_NOT_BRACKET_RE = _Regex(rb"[^\[\]{}]+")


def read_uint(text, what, limit=MAX_UINT):
    """The one reader for an unsigned number from outside: ASCII digits only
    (at most 19), no larger than ``limit``; anything else is invalid input."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str) or not _UINT_RE.fullmatch(text) or int(text) > limit:
        raise InvalidInputError(f"{what}: {str(text)[:40]!r} is not a number in range")
    return int(text)


def _json_int(text):
    digits = text[1:] if text.startswith("-") else text
    if len(digits) > 19:
        raise InvalidInputError(f"number too long in JSON: {text[:40]}...")
    return int(text)


def _json_refuse(text):
    raise InvalidInputError(f"unsupported JSON value {text[:40]!r}")


def _json_object(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidInputError("duplicate key in JSON object")
    return obj


def read_json(data, what, limit, max_depth=MAX_JSON_DEPTH):
    """The one reader for JSON from outside: at most ``limit`` bytes of
    UTF-8, nesting at most ``max_depth`` deep, integers of at most 19 digits,
    no floats, NaN or duplicate keys. Raises InvalidInputError naming ``what``."""
    if len(data) > limit:
        raise InvalidInputError(f"{what} is too large ({len(data)} bytes, at most {limit})")
    depth = 0
    for c in _JSON_NOT_BRACKET_RE.sub(b"", _JSON_STRING_RE.sub(b"", data)):
        depth += 1 if c in b"[{" else -1
        if depth > max_depth:
            raise InvalidInputError(f"{what} is nested too deeply")
    try:
        return json.loads(data.decode("utf-8"), parse_int=_json_int, parse_float=_json_refuse,
                          parse_constant=_json_refuse, object_pairs_hook=_json_object)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{what}: {exc.message}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {str(exc)[:80]}") from None


#: the one depth rule for commit, pull, load and create: at most this many
#: directories nested below an environment's root
MAX_DEPTH = 256
#: the most paths one image may expand to (files, links and directories,
#: counted through shared sub-trees); 20 times the largest environment vocker
#: is built for (100,000 files), so an honest image never meets it
MAX_PATHS = 2_000_000
#: labels: bounded, and no control characters in keys
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 4096
MAX_LABELS = 256
_CONTROL_RE = _Regex(r"[\x00-\x1f\x7f-\x9f]")


def terminal_safe(text):
    """``text`` with control characters (C0, DEL, C1: terminal escapes,
    newlines) written as ``\\xNN``: what came from outside cannot drive the
    terminal or split a one-line message."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def name_key(name):
    """Names with equal keys collide: equal after Unicode normalization (NFC
    and NFD spell the same name on macOS) and case folding (Windows, macOS)."""
    return unicodedata.normalize("NFC", name).casefold()


def check_folder_names(names):
    """Raise if two of ``names`` (one folder's) collide (see :func:`name_key`):
    the one rule for commit, parse and create."""
    folded = set()
    for name in names:
        key = name_key(name)
        if key in folded:
            raise InvalidInputError(f"names collide by case or Unicode normalization: {name!r}",
                                    "rename one of them: images must work on "
                                    "case-insensitive disks")
        folded.add(key)


def check_labels(labels):
    """Raise unless ``labels`` is a small dict of bounded strings whose keys
    hold no control characters (the one rule for commit and for parsing)."""
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise InvalidInputError("image labels are malformed or too many",
                                f"use at most {MAX_LABELS} KEY=VALUE labels")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k \
                or len(k) > MAX_LABEL_KEY or len(v) > MAX_LABEL_VALUE or _CONTROL_RE.search(k):
            raise InvalidInputError(
                f"bad image label {str(k)[:40]!r}",
                f"label keys are 1-{MAX_LABEL_KEY} printable characters, "
                f"values at most {MAX_LABEL_VALUE} characters")
    return labels


def validate_name(name):
    """Raise unless ``name`` is a safe single path component."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError("empty file name in tree")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name \
            or "\n" in name or "\r" in name:
        raise InvalidInputError(f"unsafe file name in tree: {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"file name is not valid UTF-8: {name!r}") from None
    if WINDOWS:
        check_windows_name(name)
    return name


def check_windows_name(name):
    """Raise if ``name`` cannot exist on Windows."""
    stem = name.split(".")[0].upper().rstrip(" ")
    if stem in WINDOWS_RESERVED:
        raise InvalidInputError(f"file name is reserved on Windows: {name!r}")
    if name.endswith((".", " ")):
        raise InvalidInputError(f"file name ends with a dot or space: {name!r}")
    if any(c in name for c in '<>:"|?*') or any(ord(c) < 32 for c in name):
        raise InvalidInputError(f"file name not allowed on Windows: {name!r}")


def default_home():
    env = os.environ.get("VOCKER_HOME")
    if env:
        return env
    if WINDOWS:
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "vocker")


def human_size(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0


###############################################################################
# Files and progress ##########################################################
###############################################################################

_made_dirs = set()  # folders this process already made


def _makedirs(d):
    if d not in _made_dirs:
        os.makedirs(d, exist_ok=True)
        _made_dirs.add(d)


def _remove_read_only(path):
    """A read-only file: a pack, a pool file (Windows refuses to delete one as it is)."""
    try:
        os.unlink(path)
    except PermissionError:
        os.chmod(path, stat.S_IWRITE | stat.S_IREAD)
        os.unlink(path)


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def rmtree(path, trash=None, restore_readonly=None, target=None):
    """Delete a tree without ever changing a file's mode: files may be
    hardlinks of the pool, shared by every container.

    POSIX: deleting needs only the folder writable; a folder of the tree that
    refuses is made writable (folders are never shared). Windows (``target``
    overrides this machine, for tests): a read-only file must lose its
    attribute before it can be deleted, and the attribute belongs to the
    inode; ``restore_readonly(st)`` is then called with the deleted file's
    lstat so the store can set it back on its pool copy. A file that still
    cannot be deleted (Windows: in use) is renamed into ``trash``."""
    win = (target or Target.local()).win
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        _remove_file(path, top, win, trash, restore_readonly)
        return
    stack = [(path, None)]
    while stack:
        d, children = stack.pop()
        if children is None:
            children = _retry(_dir_entries, d, lambda: _writable_dir(d, win)) or []
            stack.append((d, []))
            for p, st in children:
                if stat.S_ISDIR(st.st_mode):
                    stack.append((p, None))
                else:
                    _remove_file(p, st, win, trash, restore_readonly)
        else:  # Windows: a read-only folder refuses; POSIX: its parent decides
            _retry(os.rmdir, d, lambda: (win and _writable_dir(d, win),
                                         _writable_dir(os.path.dirname(d), win)))


def _writable_dir(d, win):
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.lstat(d).st_mode)
        os.chmod(d, (mode | stat.S_IWRITE) if win else (mode | stat.S_IRWXU))


def _retry(fn, p, fix):
    """``fn(p)``; once more after ``fix()`` if permission was refused."""
    try:
        return fn(p)
    except FileNotFoundError:
        return None
    except PermissionError:
        fix()
    return fn(p)


def _dir_entries(d):
    with os.scandir(d) as it:
        return [(e.path, e.stat(follow_symlinks=False)) for e in it]


def _remove_file(p, st, win, trash, restore_readonly):
    """One file or link of :func:`rmtree` (``st``: its scandir stat)."""
    parent = os.path.dirname(p)
    try:
        if win and not st.st_mode & stat.S_IWRITE:
            st = os.lstat(p)  # scandir gives no inode or link count on Windows
            os.chmod(p, stat.S_IWRITE | stat.S_IREAD)
            try:
                _retry(os.unlink, p, lambda: _writable_dir(parent, win))
            finally:
                if restore_readonly is not None and st.st_nlink > 1:
                    restore_readonly(st)
        elif win and stat.S_ISLNK(st.st_mode) and _is_dir_link(p):
            _retry(os.rmdir, p, lambda: _writable_dir(parent, win))
        else:
            _retry(os.unlink, p, lambda: _writable_dir(parent, win))
    except FileNotFoundError:
        pass
    except OSError:
        if trash is None:
            raise
        os.makedirs(trash, exist_ok=True)
        os.replace(p, os.path.join(trash, random_hex()))


def _is_dir_link(p):
    """A Windows directory symlink or junction (deleted with rmdir)."""
    try:
        return os.path.isdir(p)
    except OSError:
        return False


def extended_path(path, target=None):
    """On Windows (this machine, or ``target``), the ``\\\\?\\`` form of a long
    absolute path (past 260 characters plain Win32 calls fail); unchanged elsewhere."""
    if not (target or Target.local()).win:
        return path
    if path.startswith("\\\\?\\") or len(path) < 240:
        return path
    if path.startswith("\\\\"):   # \\server\share\... -> \\?\UNC\server\share\...
        return "\\\\?\\UNC\\" + path[2:]
    return "\\\\?\\" + path


def os_rel(rel):
    """A "/"-separated relative path (an image's names) as this system's
    file functions take it after a base path: Windows converts "/" except
    after ``\\\\?\\`` (:func:`extended_path`), so there it gets backslashes."""
    return rel if os.sep == "/" else rel.replace("/", os.sep)


class Progress:
    """Progress of a long step on stderr: on a terminal a bar (items, bytes,
    rate, time left), redrawn 10 times a second; ``mode="json"`` (for an
    installer that wraps vocker) one JSON line every half second and one at
    each end (docs/json.md). A new :meth:`stage` restarts the counts."""

    def __init__(self, label, total=0, enabled=None, mode="bar"):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled, self.mode = enabled, mode
        self.label, self.total, self.total_bytes = label, total, 0
        self.done = self.bytes = 0
        self._t0, self._last, self._width = time.monotonic(), 0.0, 0

    def stage(self, label, total=0, total_bytes=0):
        """Finish the current stage (if it counted anything) and start ``label``."""
        if self.done or self.bytes:
            self.close()
        self.label, self.total, self.total_bytes = label, total, total_bytes
        self.done = self.bytes = 0
        self._t0, self._last = time.monotonic(), 0.0

    def update(self, n=1, label=None, nbytes=0):
        self.done += n
        self.bytes += nbytes
        if label:
            self.label = label
        if not self.enabled:
            return
        now = time.monotonic()
        finished = self.total and self.done >= self.total
        if now - self._last >= (0.5 if self.mode == "json" else 0.1) or finished:
            self._last = now
            self._show(now)

    def facts(self, now=None):
        """(rate per second: bytes if counted, else items; seconds left or None)."""
        elapsed = max((now or time.monotonic()) - self._t0, 1e-3)
        by_bytes = bool(self.total_bytes)
        rate = (self.bytes if by_bytes else self.done) / elapsed
        left = (self.total_bytes - self.bytes) if by_bytes else (self.total - self.done)
        counted = self.total_bytes or self.total
        return rate, (max(left, 0) / rate if counted and rate > 0 else None)

    def _show(self, now, event="progress"):
        rate, eta = self.facts(now)
        if self.mode == "json":
            sys.stderr.write(json.dumps({
                "event": event, "stage": self.label, "done": self.done,
                "total": self.total or None, "bytes": self.bytes,
                "total_bytes": self.total_bytes or None, "rate": round(rate, 1),
                "seconds_left": None if eta is None else round(eta, 1)}) + "\n")
            sys.stderr.flush()
            return
        part = (self.bytes / self.total_bytes if self.total_bytes else
                self.done / self.total if self.total else 0)
        text = f"{self.label} [{'#' * int(20 * min(part, 1)):<20}] {self.done}" + \
            (f"/{self.total}" if self.total else "")
        if self.total_bytes:
            text += f"  {human_size(self.bytes)}/{human_size(self.total_bytes)}" \
                    f"  {human_size(rate)}/s"
        if eta is not None:
            text += f"  {int(eta) // 60}:{int(eta) % 60:02d} left"
        self._width = max(self._width, len(text))
        sys.stderr.write("\r" + text.ljust(self._width))
        sys.stderr.flush()

    def close(self):
        if not self.enabled:
            return
        if self.mode == "json":
            self._show(time.monotonic(), "done")
        elif self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0


###############################################################################
# Objects: trees and manifests ################################################
###############################################################################

class TreeEntry(tuple):
    """One entry of a tree: (name, type, ref). ``ref`` is the hex ID of a
    blob or sub-tree, or for a symlink the hex of its UTF-8 target."""

    __slots__ = ()

    def __new__(cls, name, type_, ref):
        return tuple.__new__(cls, (name, type_, ref))

    name = property(lambda self: self[0])
    type = property(lambda self: self[1])
    ref = property(lambda self: self[2])

    @property
    def target(self):
        return bytes.fromhex(self[2]).decode("utf-8")


_HEX_RE = _Regex(r"(?:[0-9a-f]{2})+")


class Tree:
    """A directory: entries sorted by UTF-8 name.

    Canonical bytes: one line per entry, ``<type> <ref> <name>\\n``.
    """

    def __init__(self, entries):
        self.entries = sorted(entries, key=lambda e: e.name.encode("utf-8"))

    def serialize(self):
        return b"".join(f"{e.type} {e.ref} {e.name}\n".encode("utf-8")
                        for e in self.entries)

    @property
    def id(self):
        return hash_bytes(self.serialize())

    @classmethod
    def parse(cls, data, expected_id=None):
        """Parse and check canonical tree bytes (from anywhere: untrusted)."""
        if expected_id is not None and hash_bytes(data) != expected_id:
            raise IntegrityError("tree", expected_id, "content does not match its ID")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError("tree is not UTF-8") from None
        entries, prev = [], None
        if text and not text.endswith("\n"):
            raise InvalidInputError("tree is truncated")
        for line in text.split("\n")[:-1]:
            parts = line.split(" ", 2)
            if len(parts) != 3:
                raise InvalidInputError(f"malformed tree entry: {line[:80]!r}")
            type_, ref, name = parts
            if type_ not in ENTRY_TYPES:
                raise InvalidInputError(f"unknown tree entry type {type_!r}")
            validate_name(name)
            if type_ in LINK_TYPES:
                if not _HEX_RE.fullmatch(ref):
                    raise InvalidInputError(f"bad symlink target for {name!r}")
                try:
                    target = bytes.fromhex(ref).decode("utf-8")
                except ValueError:
                    raise InvalidInputError(f"bad symlink target for {name!r}") from None
                if not target or "\0" in target or ref != ref.lower():
                    raise InvalidInputError(f"bad symlink target for {name!r}")
            else:
                check_id(ref, "tree entry")
            key = name.encode("utf-8")
            if prev is not None and key <= prev:
                raise InvalidInputError("tree entries are not sorted or not unique")
            prev = key
            entries.append(TreeEntry(name, type_, ref))
        if WINDOWS:
            check_folder_names(e.name for e in entries)
        tree = cls.__new__(cls)
        tree.entries = entries
        return tree


def build_trees(folders):
    """Trees of a folder hierarchy, deepest first: ``folders`` maps each
    folder's relative path ("" is the top) to (its entries other than
    folders, the names of its sub-folders). Returns (top tree ID, {tree ID:
    Tree})."""
    ids, out = {}, {}
    for rel in sorted(folders, key=lambda r: r.count("/") + 1 if r else 0, reverse=True):
        entries, subs = folders[rel]
        tree = Tree([*entries, *(TreeEntry(n, T_DIR, ids[f"{rel}/{n}" if rel else n])
                                 for n in subs)])
        ids[rel] = tid = tree.id
        out[tid] = tree
    return ids[""], out


#: the ``python`` object of a manifest: exactly these keys, each matching its rule
PYTHON_FACTS = {
    "implementation": _Regex(r"[a-z][a-z0-9_]{0,31}"),
    "version": _Regex(r"[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,4})?"),
    "cache_tag": _Regex(r"[a-z0-9_]{1,32}-[0-9]{1,4}[a-z0-9_]{0,16}"),
    "platform": _Regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
}


def check_python_facts(py):
    """Raise unless ``py`` is exactly the python facts commit writes."""
    if not isinstance(py, dict) or set(py) != set(PYTHON_FACTS):
        raise InvalidInputError("image manifest has a malformed 'python' field",
                                "it needs exactly: " + ", ".join(PYTHON_FACTS))
    for key, rule in PYTHON_FACTS.items():
        if not isinstance(py[key], str) or not rule.fullmatch(py[key]):
            raise InvalidInputError(f"image manifest has a malformed python {key}: "
                                    f"{str(py[key])[:40]!r}")
    return py


class _CanonicalObject:
    """An object stored as canonical JSON (sorted keys, compact, UTF-8) of
    exactly its FIELDS, named by the hash of those bytes: a manifest, a
    bytecode record. ``OBJECT``/``NOUN`` name it in errors; ``KIND``, if set,
    is the one value its ``kind`` field may hold."""

    FIELDS, OBJECT, NOUN, KIND = (), "", "", None

    def to_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    def serialize(self):
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    @property
    def id(self):
        return hash_bytes(self.serialize())

    @classmethod
    def _fields(cls, data, expected_id):
        """The JSON object of ``data``, checked against its ID, its fields and format."""
        what = f"{cls.OBJECT} {cls.NOUN}"
        if expected_id is not None and hash_bytes(data) != expected_id:
            raise IntegrityError(cls.OBJECT, expected_id, f"{cls.NOUN} does not match its ID")
        obj = read_json(data, what, MAX_MANIFEST)
        if not isinstance(obj, dict) or set(obj) != set(cls.FIELDS) or \
                (cls.KIND is not None and obj["kind"] != cls.KIND):
            raise InvalidInputError(f"{what} has missing or unknown fields")
        if type(obj["format"]) is not int or obj["format"] != FORMAT_VERSION:
            raise InvalidInputError(f"{cls.OBJECT} format {obj['format']!r} is not supported",
                                    f"this vocker reads format {FORMAT_VERSION}; upgrade vocker")
        return obj

    @classmethod
    def _made(cls, obj, data):
        """The object of the checked fields ``obj``, if ``data`` is its canonical form."""
        made = cls(**obj)
        if made.serialize() != data:
            raise InvalidInputError(f"{cls.OBJECT} {cls.NOUN} is not in canonical form")
        return made


class Manifest(_CanonicalObject):
    """An image: canonical JSON (sorted keys, compact, UTF-8)."""

    FIELDS = ("format", "kind", "root", "python", "pyvenv", "labels", "parent", "recipe")
    OBJECT, NOUN = "image", "manifest"

    def __init__(self, kind, root, python=None, pyvenv=None, labels=None,
                 parent=None, recipe=None, format=FORMAT_VERSION):
        self.format = format
        self.kind = kind
        self.root = root
        self.python = python
        self.pyvenv = dict(pyvenv or {})
        self.labels = dict(labels or {})
        self.parent = parent
        self.recipe = recipe

    @classmethod
    def parse(cls, data, expected_id=None):
        obj = cls._fields(data, expected_id)
        if not isinstance(obj["kind"], str) or obj["kind"] not in KINDS:
            raise InvalidInputError(f"unknown image kind {obj['kind']!r}")
        check_id(obj["root"], "tree")
        if obj["parent"] is not None:
            check_id(obj["parent"], "parent image")
        if obj["python"] is not None:
            check_python_facts(obj["python"])
        if obj["recipe"] is not None:
            Recipe.check(obj["recipe"])
        if not isinstance(obj["pyvenv"], dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in obj["pyvenv"].items()):
            raise InvalidInputError("image manifest has a malformed 'pyvenv' field")
        try:
            check_labels(obj["labels"])
        except InvalidInputError as exc:
            raise InvalidInputError(f"image manifest: {exc.message}") from None
        return cls._made(obj, data)


class Bytecode(_CanonicalObject):
    """The ``.pyc`` files of one image for one interpreter, as a push ships
    them: canonical JSON like a manifest. ``root`` is a flat tree with one
    entry per compiled source, named by the source blob's ID and pointing to
    its ``.pyc`` blob. The record's hash (the bytecode ID) authenticates every
    ``.pyc`` and names the image, so pinning a bytecode ID pins both; an image
    ID alone never brings bytecode from a repository."""

    FIELDS = ("format", "kind", "image", "cache_tag", "root")
    OBJECT, NOUN, KIND = "bytecode", "record", "bytecode"

    def __init__(self, image, cache_tag, root, format=FORMAT_VERSION, kind="bytecode"):
        self.format, self.kind = format, kind
        self.image, self.cache_tag, self.root = image, cache_tag, root

    @classmethod
    def parse(cls, data, expected_id=None):
        obj = cls._fields(data, expected_id)
        check_id(obj["image"], "image")
        check_id(obj["root"], "tree")
        if not isinstance(obj["cache_tag"], str) or \
                not PYTHON_FACTS["cache_tag"].fullmatch(obj["cache_tag"]):
            raise InvalidInputError("bytecode record has a malformed cache_tag")
        return cls._made(obj, data)

    @staticmethod
    def tree(pycs):
        """The tree of {source blob: pyc blob}."""
        return Tree([TreeEntry(src, T_FILE, pyc) for src, pyc in pycs.items()])

    @staticmethod
    def pycs(tree):
        """{source blob: pyc blob} of a parsed tree; refuses any other shape."""
        out = {}
        for e in tree.entries:
            if e.type != T_FILE or not ID_RE.fullmatch(e.name):
                raise InvalidInputError(f"bytecode tree entry {e.name[:80]!r} is not "
                                        "a source blob ID naming a file")
            out[e.name] = e.ref
        if len(out) > MAX_PATHS:
            raise _too_large("large")
        return out


def check_link_target(rel, target):
    """Raise unless a relative symlink at ``rel`` stays inside the environment.

    A target may climb with leading ``..`` no higher than the link's folder's
    depth, then name components only: ``..`` after a name is refused, since
    that name may itself be a symlink and a chain of such links could escape.
    """
    t = target.replace("\\", "/")
    bad = InvalidInputError(f"symlink {rel} points outside the environment to {target}",
                            "make it point inside the environment")
    if not t or t.startswith("/") or re.match(r"[A-Za-z]:", t) or "\0" in t:
        raise bad
    depth = rel.count("/")
    named = False
    for comp in t.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if named or depth == 0:
                raise bad
            depth -= 1
        else:
            named = True


#: the documented interpreter links: ``bin/python*`` (``Scripts\\python*``) at
#: the top of the environment may point at the base interpreter
_INTERPRETER_LINK_RE = _Regex(r"(?:bin|Scripts)/(?:python|pypy)[^/]*")


def check_link_template(rel, tpl):
    """Raise unless a templated symlink target stays inside the environment:
    ``@@VOCKER:ENV@@`` alone, or ``@@VOCKER:ENV@@/`` + a relative path with no
    ``..``, empty component, backslash or other placeholder; or exactly
    ``@@VOCKER:PYEXE@@`` for an interpreter link (``bin/python*``).
    Shared by commit, pull and create: one rule set."""
    if tpl == PH_ENV:
        return
    if tpl == PH_PYEXE and _INTERPRETER_LINK_RE.fullmatch(rel):
        return
    prefix = PH_ENV + b"/"
    rest = tpl[len(prefix):]
    if not tpl.startswith(prefix) or b"\\" in rest or PH_MARK in rest or \
            any(comp in (b"", b"..") for comp in rest.split(b"/")):
        raise InvalidInputError(f"symlink {rel} points outside the environment",
                                "a link may point only inside the environment, "
                                "or be bin/python* -> the base interpreter")


###############################################################################
# Objects: recipes and locks ##################################################
###############################################################################

#: a distribution's name and exact version (PEP 508, PEP 440 characters)
DIST_NAME_RE = _Regex(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
DIST_VERSION_RE = _Regex(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}")
SHA256_RE = _Regex(r"[0-9a-f]{64}")
WHEEL_NAME_RE = _Regex(r"[A-Za-z0-9_.+!-]{1,240}\.whl")
#: a PEP 508 marker in the characters markers use: no pip option fits in it
MARKER_RE = _Regex(r"(?!.*--)[A-Za-z0-9_.'\"<>=!~ ()*+,/-]{1,400}")
INSTALLER_RE = _Regex(r"[A-Za-z0-9][A-Za-z0-9._+ -]{0,63}")
PYTHON_WANT_RE = _Regex(r"[0-9]{1,2}(\.[0-9]{1,3}){0,2}")
MAX_RECIPE_TEXT = 64 << 10     # bytes of recipe text an image records
MAX_RECIPE_ITEMS = 50_000      # steps, wheels, copied files and words, all told
MAX_LOCK = 16 << 20            # largest requirements file or pylock.toml read
RECIPE_FILE = "Vockerfile"     # what build -f defaults to in the context
#: recipe instructions and how many arguments each takes (0: one or more)
RECIPE_INSTRUCTIONS = {"PYTHON": 1, "FROM": 1, "INSTALL": 1, "COPY": 2, "LABEL": 0, "RUN": 0}


def _recipe_path(text, what):
    """A relative POSIX path of names that validate_name accepts."""
    if not isinstance(text, str) or not text or len(text) > 4096:
        raise InvalidInputError(f"recipe: {what} must be a relative path")
    for comp in text.split("/"):
        try:
            validate_name(comp)
        except InvalidInputError:
            raise InvalidInputError(f"recipe: {what} {text[:80]!r} is not a relative path "
                                    "of plain names", "use / between names, no .. or "
                                    "absolute paths") from None
    return text


def _exact(obj, keys, what):
    if not isinstance(obj, dict) or set(obj) != set(keys):
        raise InvalidInputError(f"image manifest has a malformed recipe{what and ' '}{what}",
                                "it needs exactly: " + ", ".join(keys))
    return obj


def _rule(value, rule, what):
    if not isinstance(value, str) or not rule.fullmatch(value):
        raise InvalidInputError(f"image manifest has a malformed recipe {what}: "
                                f"{str(value)[:60]!r}")
    return value


def _list(value, what):
    if not isinstance(value, list):
        raise InvalidInputError(f"image manifest has a malformed recipe {what}")
    return value


class Recipe:
    """How an image was made, as its manifest records it. ``by="build"``: the
    recipe ``text`` and its ``steps``, each input resolved to a digest (the
    installer that ran them: ``installer``); ``by="commit"``: the
    distributions found ``installed`` (name, version, installer, editable)."""

    BUILD_KEYS = ("by", "text", "installer", "steps")
    COMMIT_KEYS = ("by", "installed")
    STEP_KEYS = {"python": ("op", "version"), "from": ("op", "image"),
                 "install": ("op", "wheels"), "copy": ("op", "files"),
                 "label": ("op", "labels"), "run": ("op", "argv")}

    def __init__(self, by, text="", installer=None, steps=(), installed=()):
        self.by, self.text, self.installer = by, text, installer
        self.steps, self.installed = list(steps), list(installed)

    def to_dict(self):
        if self.by == "commit":
            return {"by": "commit", "installed": self.installed}
        return {"by": "build", "text": self.text, "installer": self.installer,
                "steps": self.steps}

    @property
    def runs(self):
        """The commands the recipe runs (its audit needs them deterministic)."""
        return [s["argv"] for s in self.steps if s["op"] == "run"]

    @classmethod
    def check(cls, obj):
        """The Recipe a manifest's ``recipe`` holds; raise unless it has
        exactly the shape build or commit writes, within bounds."""
        count = [0]

        def items(value, what):
            count[0] += len(_list(value, what))
            if count[0] > MAX_RECIPE_ITEMS:
                raise InvalidInputError("image manifest's recipe has too many items")
            return value

        if isinstance(obj, dict) and obj.get("by") == "commit":
            _exact(obj, cls.COMMIT_KEYS, "")
            for d in items(obj["installed"], "installed"):
                cls._check_installed(d)
            return cls("commit", installed=obj["installed"])
        _exact(obj, cls.BUILD_KEYS, "")
        if obj["by"] != "build" or not isinstance(obj["text"], str) or \
                len(obj["text"].encode("utf-8", "surrogatepass")) > MAX_RECIPE_TEXT:
            raise InvalidInputError("image manifest has a malformed recipe text")
        if obj["installer"] is not None:
            _rule(obj["installer"], INSTALLER_RE, "installer")
        steps = items(obj["steps"], "steps")
        if not steps:
            raise InvalidInputError("image manifest's recipe has no steps")
        for i, step in enumerate(steps):
            op = step.get("op") if isinstance(step, dict) else None
            if op not in cls.STEP_KEYS or (i == 0) != (op in ("python", "from")):
                raise InvalidInputError("image manifest has a malformed recipe step",
                                        "a recipe starts with its one python or from step")
            _exact(step, cls.STEP_KEYS[op], f"{op} step")
            getattr(cls, f"_check_{op}")(step, items)
        return cls("build", obj["text"], obj["installer"], steps)

    @staticmethod
    def _check_installed(d):
        _exact(d, ("name", "version", "installer", "editable"), "installed distribution")
        _rule(d["name"], DIST_NAME_RE, "name")
        _rule(d["version"], DIST_VERSION_RE, "version")
        if d["installer"] is not None:
            _rule(d["installer"], INSTALLER_RE, "installer")
        if type(d["editable"]) is not bool:
            raise InvalidInputError("image manifest has a malformed recipe editable flag")

    @staticmethod
    def _check_python(step, items):
        _rule(step["version"], PYTHON_WANT_RE, "python version")

    @staticmethod
    def _check_from(step, items):
        check_id(step["image"], "recipe base image")

    @staticmethod
    def _check_install(step, items):
        for w in items(step["wheels"], "wheels"):
            _exact(w, ("name", "version", "wheel", "sha256"), "wheel")
            _rule(w["name"], DIST_NAME_RE, "wheel name")
            _rule(w["version"], DIST_VERSION_RE, "wheel version")
            _rule(w["wheel"], WHEEL_NAME_RE, "wheel file")
            _rule(w["sha256"], SHA256_RE, "wheel sha256")

    @staticmethod
    def _check_copy(step, items):
        for f in items(step["files"], "files"):
            _exact(f, ("from", "to", "blob", "exec"), "copied file")
            _recipe_path(f["from"], "copy source")
            _recipe_path(f["to"], "copy destination")
            check_id(f["blob"], "recipe copied file")
            if type(f["exec"]) is not bool:
                raise InvalidInputError("image manifest has a malformed recipe exec flag")

    @staticmethod
    def _check_label(step, items):
        try:
            check_labels(step["labels"])
        except InvalidInputError as exc:
            raise InvalidInputError(f"image manifest's recipe: {exc.message}") from None

    @staticmethod
    def _check_run(step, items):
        argv = items(step["argv"], "run command")
        if not argv or not all(isinstance(a, str) and 0 < len(a) <= 4096 and "\0" not in a
                               for a in argv):
            raise InvalidInputError("image manifest has a malformed recipe run command")


def parse_recipe_text(text, where):
    """The instructions of a recipe file: [(line number, INSTRUCTION, [args])],
    arguments split as a POSIX shell would. The first is its one PYTHON or FROM."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_TEXT:
        raise InvalidInputError(f"{where} is larger than {human_size(MAX_RECIPE_TEXT)}")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        try:
            args = shlex.split(rest, comments=False)
        except ValueError as exc:
            raise InvalidInputError(f"{where}:{n}: {exc}") from None
        want = RECIPE_INSTRUCTIONS.get(word.upper(), -1)
        if want < 0:
            raise InvalidInputError(f"{where}:{n}: unknown instruction {word[:40]!r}",
                                    "use " + ", ".join(RECIPE_INSTRUCTIONS))
        if (want and len(args) != want) or not args:
            raise InvalidInputError(f"{where}:{n}: {word.upper()} takes "
                                    f"{want or 'one or more'} argument{'s' if want != 1 else ''}")
        out.append((n, word.upper(), args))
    bases = [i for i, (_, w, _) in enumerate(out) if w in ("PYTHON", "FROM")]
    if bases != [0]:
        raise InvalidInputError(f"{where}: a recipe starts with one PYTHON X.Y or FROM IMAGE "
                                "line, and has no other")
    return out


def dist_key(name):
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Pin(tuple):
    """One locked distribution: (name, version, marker or None, [sha256])."""

    __slots__ = ()
    name, version, marker, hashes = (property(lambda s, i=i: s[i]) for i in range(4))

    def __new__(cls, name, version, marker, hashes, where):
        for value, rule, what in ((name, DIST_NAME_RE, "name"),
                                  (version, DIST_VERSION_RE, "version")):
            if not isinstance(value, str) or not rule.fullmatch(value):
                raise InvalidInputError(f"{where}: malformed {what} {str(value)[:60]!r}")
        if marker is not None and (not isinstance(marker, str)
                                   or not MARKER_RE.fullmatch(marker)):
            raise InvalidInputError(f"{where}: {name} has a marker vocker does not accept")
        for h in hashes:
            if not isinstance(h, str) or not SHA256_RE.fullmatch(h):
                raise InvalidInputError(f"{where}: {name} has a malformed sha256 {str(h)[:70]!r}")
        return super().__new__(cls, (name, version, marker, tuple(sorted(set(hashes)))))

    def __str__(self):
        return f"{self.name}=={self.version}"

    def requirement(self):
        """The line pip is given: hashes only, so pip checks the wheel."""
        marker = f" ; {self.marker}" if self.marker else ""
        return f"{self}{marker} " + " ".join(f"--hash=sha256:{h}" for h in self.hashes)


_REQ_HEAD_RE = _Regex(rf"({DIST_NAME_RE.pattern})(?:\[[A-Za-z0-9._, -]*\])?\s*==\s*"
                          rf"({DIST_VERSION_RE.pattern})\s*(?:;\s*(.*?))?\s*")
_REQ_HASH_RE = _Regex(r"--hash[= ]sha256:([0-9a-f]{64})")


def read_requirements(text, where):
    """[Pin] of a requirements file in the form hash-locking tools write:
    ``name==version [; marker] --hash=sha256:H ...`` lines (``\\`` continues
    a line, ``#`` starts a comment). Anything else is refused, by line."""
    pins, logical, start = [], "", 0
    for n, line in enumerate(text.splitlines() + [""], 1):
        line = re.sub(r"(^|\s)#.*", "", line).rstrip()
        if not logical:
            start = n
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical, whole = "", (logical + line).strip()
        if not whole:
            continue
        head, _, tail = whole.partition(" --hash")
        m = _REQ_HEAD_RE.fullmatch(head)
        hashes = _REQ_HASH_RE.findall("--hash" + tail) if tail else []
        rest = _REQ_HASH_RE.sub("", "--hash" + tail).strip() if tail else ""
        if m is None or rest:
            raise InvalidInputError(f"{where}:{start}: only 'name==version --hash=sha256:...' "
                                    f"lines are accepted, not {whole[:60]!r}",
                                    "lock with hashes: uv pip compile --generate-hashes")
        pins.append(Pin(m.group(1), m.group(2), m.group(3) or None, hashes, f"{where}:{start}"))
    return _hashed(pins, where)


def read_pylock(text, where):
    """[Pin] of a PEP 751 ``pylock.toml``: each package's name, version,
    marker and the sha256 of each of its wheels (wheels only)."""
    import tomllib
    try:
        lock = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{where} is not valid TOML: {exc}") from None
    version = lock.get("lock-version")
    if not isinstance(version, str) or not version.startswith("1."):
        raise InvalidInputError(f"{where}: lock-version {str(version)[:20]!r} is not supported",
                                "vocker reads pylock.toml lock-version 1.x")
    packages = lock.get("packages", [])
    if not isinstance(packages, list):
        raise InvalidInputError(f"{where}: packages is not an array of tables")
    pins = []
    for i, p in enumerate(packages):
        if not isinstance(p, dict):
            raise InvalidInputError(f"{where}: packages[{i}] is not a table")
        wheels = p.get("wheels")
        label = f"{where}: {str(p.get('name'))[:60]}"
        if not isinstance(wheels, list) or not wheels:
            raise InvalidInputError(f"{label} has no wheels",
                                    "vocker installs wheels only: lock with wheels")
        hashes = [w.get("hashes", {}).get("sha256") if isinstance(w, dict) and
                  isinstance(w.get("hashes"), dict) else None for w in wheels]
        pins.append(Pin(p.get("name"), p.get("version"), p.get("marker"), hashes, label))
    return _hashed(pins, where)


def _hashed(pins, where):
    """``pins``, each with a hash and none twice: what a build installs."""
    seen = set()
    for p in pins:
        if not p.hashes:
            raise InvalidInputError(f"{where}: {p} has no sha256 hash",
                                    "lock with hashes: uv pip compile --generate-hashes, "
                                    "or pip-compile --generate-hashes")
        key = (dist_key(p.name), p.marker)
        if key in seen:
            raise InvalidInputError(f"{where}: {p.name} is locked twice")
        seen.add(key)
    return pins


def read_lock(path):
    """[Pin] of a lock file: a ``pylock.toml`` (``*.toml``) or a requirements file."""
    text = read_small_text(path, MAX_LOCK, "lock file")
    if os.path.basename(path).lower().endswith(".toml"):
        return read_pylock(text, os.path.basename(path))
    return read_requirements(text, os.path.basename(path))


def read_small_text(path, limit, what):
    """A UTF-8 text file of at most ``limit`` bytes, opened without following
    a symlink at its last component."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise NotFoundError(what, path) from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidInputError(f"{what} {path} is larger than {human_size(limit)}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{what} {path} is not UTF-8 text") from None


###############################################################################
# SQLite store ################################################################
###############################################################################

def _plan_hash(image_id, rules, data):
    """What a kept plan's row must hash to: its bytes, bound to their image and rules."""
    return hash_bytes(f"{image_id}\n{rules}\n".encode() + data)


def _file_uri(path):
    """The ``file:`` URI of an absolute ``path`` (SQLite's URI filenames)."""
    from pathlib import Path  # here: imported on first use, for a faster start
    return Path(path).as_uri()


def _load_schema():
    here = os.path.dirname(os.path.realpath(__file__))
    try:
        with open(os.path.join(here, "schema.sql"), encoding="utf-8") as f:
            return f.read()
    except OSError:
        raise VockerError(f"schema.sql is missing next to {here}",
                          "reinstall vocker") from None


#: SQLite result codes (primary)
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_IOERR = 13, 8, 10


def _error_chain(exc):
    """``exc`` and the exceptions it was raised from (zstd wraps write errors)."""
    seen = []
    while exc is not None and len(seen) < 8:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


#: how a full disk reads once an OSError became text (LinkModeError keeps only that)
_DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), "not enough space on the disk")


def _disk_full(exc):
    """True for a write that failed because the disk is full."""
    if isinstance(exc, LinkModeError) and any(t in exc.message for t in _DISK_FULL_TEXTS):
        return True
    for e in _error_chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        if isinstance(e, sqlite3.OperationalError) and \
                (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_FULL:
            return True
    return False


def _cannot_write(exc):
    """True for a write refused because the disk or file is read-only."""
    for e in _error_chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return True
        if isinstance(e, sqlite3.OperationalError) and \
                (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_READONLY:
            return True
    return False


def decompress_blob(blob_id, cdata, size):
    """Decompress one zstd frame of declared ``size`` and verify it. Memory
    follows the bytes that really come out, never the declared size."""
    parts = []
    verify_frame(blob_id, size, io.BytesIO(cdata), len(cdata), out=parts.append)
    return b"".join(parts)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _FrameShape:
    """Follows the block structure of one zstd frame as its bytes pass, so that
    a frame cut short, or followed by anything at all, is refused."""

    def __init__(self, blob_id):
        self.blob_id = blob_id
        self.buf, self.want, self.skip = b"", 5, 0   # magic + frame header descriptor
        self.state, self.checksum = "header", 0

    def _bad(self, detail):
        return IntegrityError("blob", self.blob_id, detail)

    def feed(self, data):
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
            elif self.state == "done":
                raise self._bad("has bytes after its zstd frame")
            else:
                k = self.want - len(self.buf)
                self.buf += bytes(data[i:i + k])
                i += k
                if len(self.buf) == self.want:
                    self._step()

    def _step(self):
        b, self.buf = self.buf, b""
        if self.state == "header":
            if b[:4] != ZSTD_MAGIC or b[4] & 0x08:
                raise self._bad("is not a zstd frame")
            fhd, single = b[4], b[4] >> 5 & 1
            self.checksum = 4 if fhd & 4 else 0
            self.skip = (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
            self.state, self.want = "block", 3
            return
        h = int.from_bytes(b, "little")
        if h >> 1 & 3 == 3:
            raise self._bad("has a reserved zstd block type")
        self.skip = 1 if h >> 1 & 3 == 1 else h >> 3  # RLE: one byte
        if h & 1:  # last block
            self.skip += self.checksum
            self.state, self.want = "done", 0

    def finish(self):
        if self.state != "done" or self.skip or self.buf:
            raise self._bad("is not a complete zstd frame (truncated)")


class _Tee:
    """Reads at most ``n`` bytes of ``f``, showing each byte to ``shape`` and ``sink``."""

    def __init__(self, f, n, shape, sink):
        self.f, self.left, self.shape, self.sink, self.n = f, n, shape, sink, 0

    def read(self, size=-1):
        size = self.left if size < 0 or size > self.left else size
        data = self.f.read(min(size, CHUNK)) if size else b""
        self.left -= len(data)
        self.n += len(data)
        self.shape.feed(data)
        if self.sink is not None and data:
            self.sink(data)
        return data


def verify_frame(blob_id, size, f, csize, sink=None, out=None):
    """Stream one stored blob: exactly ``csize`` bytes read from ``f`` holding
    one complete zstd frame and nothing after it, which decompresses (in
    CHUNKs) to exactly ``size`` bytes hashing to ``blob_id``. Each compressed
    piece goes to ``sink`` and each decompressed one to ``out`` as it passes,
    so memory stays flat whatever the sizes claim."""
    if csize <= 0:
        raise IntegrityError("blob", blob_id, "has an empty zstd frame")
    shape = _FrameShape(blob_id)
    src = _Tee(f, csize, shape, sink)
    h, n = blake3.blake3(), 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=CHUNK, closefd=False)
        while True:
            chunk = reader.read(CHUNK)
            if not chunk:
                break
            n += len(chunk)
            if n > size:
                raise IntegrityError("blob", blob_id, "expands past its declared size")
            h.update(chunk)
            if out is not None:
                out(chunk)
        while src.read(CHUNK):  # the rest of the frame's window: trailing bytes are refused
            pass
    except zstandard.ZstdError as exc:
        raise IntegrityError("blob", blob_id, f"cannot decompress: {exc}") from None
    if src.n != csize:
        raise IntegrityError("blob", blob_id, "is truncated")
    shape.finish()
    if n != size or h.hexdigest() != blob_id:
        raise IntegrityError("blob", blob_id, "content does not match its ID")


class _Window:
    """Read at most ``n`` bytes of a shared file object (a frame in a pack)."""

    def __init__(self, f, n):
        self.f, self.left = f, n

    def read(self, size=-1):
        if size < 0 or size > self.left:
            size = self.left
        data = self.f.read(size)
        self.left -= len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class PackWriter:
    """Appends zstd frames to one new pack file; thread-safe.

    Writing one pack instead of one file per blob is what makes commit fast:
    creating thousands of small files costs more than compressing them.
    """

    def __init__(self, tmp, packs_dir, readonly=True, repo=None):
        """Write to ``tmp``; finish() moves it to ``packs_dir/<hash>.pack``.
        With ``repo`` (a RepoDir), ``tmp`` is a name in the repository's tmp/
        and every step goes through the repository's no-follow helper."""
        self.packs_dir = packs_dir
        self.readonly = readonly
        self.repo = repo
        self.lock = threading.Lock()
        self.tmp = tmp
        self.f = repo.create_tmp(tmp) if repo else open(self.tmp, "wb")
        self.h = blake3.blake3()
        self.offset = 0
        self.id = None

    def _write(self, data):
        self.f.write(data)
        self.h.update(data)
        self.offset += len(data)

    def append(self, cdata):
        return self.append_stream(lambda write: write(cdata))

    def append_stream(self, fill):
        """Append one frame that ``fill(write)`` writes piece by piece; returns
        its offset. If ``fill`` fails the pack must be aborted."""
        with self.lock:
            offset = self.offset
            fill(self._write)
            return offset

    def finish(self):
        """fsync and move into packs/; returns the pack ID (None if empty)."""
        self.f.flush()
        if self.offset == 0:
            self.abort()
            return None
        os.fsync(self.f.fileno())
        self.f.close()
        self.id = self.h.hexdigest()
        if self.repo is not None:
            self.repo.replace_tmp(self.tmp, f"packs/{self.id}.pack")
            return self.id
        if self.readonly:
            os.chmod(self.tmp, 0o444)
        os.replace(self.tmp, os.path.join(self.packs_dir, self.id + ".pack"))
        return self.id

    def abort(self):
        with contextlib.suppress(OSError):
            self.f.close()
        if self.repo is not None:
            self.repo.unlink_tmp(self.tmp)
        else:
            _unlink_quiet(self.tmp)


def _lock_range(fd, exclusive, start, length):
    """An OS record lock on ``length`` bytes of ``fd`` at ``start``, without
    waiting: False when another process holds it (``fcntl.lockf``, shared or
    exclusive; Windows: ``msvcrt.locking``, always exclusive)."""
    try:
        if os.name == "nt":  # the host, whatever rules a test picks
            import msvcrt  # here: each exists on one platform only
            os.lseek(fd, start, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, length)
        else:
            import fcntl  # here: each exists on one platform only
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            fcntl.lockf(fd, flags, length, start)
        return True
    except OSError as exc:
        held = (errno.EACCES, errno.EAGAIN, getattr(errno, "EDEADLOCK", errno.EDEADLK))
        if exc.errno in held or (os.name == "nt" and not exc.errno):  # Wine's CRT: errno 0
            return False
        raise


def _unlock_range(fd, start, length):
    with contextlib.suppress(OSError):
        if os.name == "nt":  # the host, whatever rules a test picks
            import msvcrt  # here: each exists on one platform only
            os.lseek(fd, start, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, length)
        else:
            import fcntl  # here: each exists on one platform only
            fcntl.lockf(fd, fcntl.LOCK_UN, length, start)


class _StoreLock:
    """Writers (commit, create, pull, load) share the store; gc holds it alone.

    An OS lock on ``gc.lock``, a file never deleted, so a process that dies
    releases it: ``fcntl.lockf`` shared or exclusive; on Windows
    ``msvcrt.locking`` byte ranges (a writer one byte of ``SLOTS``, gc all).
    Record locks belong to a process, so a condition orders its threads: the
    first writer thread takes the OS lock, the last one gives it back."""

    SLOTS = 256
    _all, _all_guard = {}, threading.Lock()

    @classmethod
    def of(cls, path):
        """The one lock object of ``path`` in this process: every Store of a
        home shares it (a record lock is the process's; closing any descriptor
        of the file would drop it)."""
        with cls._all_guard:
            return cls._all.setdefault(os.path.normcase(os.path.realpath(path)), cls(path))

    def __init__(self, path):
        self.path, self.cond = path, threading.Condition()
        self.writers, self.alone, self.fd = 0, False, None

    @contextlib.contextmanager
    def hold(self, exclusive, timeout, busy):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.alone or (exclusive and self.writers):
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise busy
            if exclusive or not self.writers:
                self._take(exclusive, deadline, busy)
            self.alone, self.writers = exclusive, self.writers + (not exclusive)
        try:
            yield
        finally:
            with self.cond:
                self.writers -= not exclusive
                if exclusive or not self.writers:
                    self._give()
                self.alone = False
                self.cond.notify_all()

    def _take(self, exclusive, deadline, busy):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start, length = (1, self.SLOTS) if exclusive else (1 + os.getpid() % self.SLOTS, 1)
        while not self._try(exclusive, start, length):
            if time.monotonic() > deadline:
                os.close(self.fd)
                raise busy
            time.sleep(0.05)
        self.range = (start, length)

    def _try(self, exclusive, start, length):
        try:
            return _lock_range(self.fd, exclusive, start, length)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            if exclusive:  # writers go on without it; gc cannot know it runs alone
                raise EnvironmentProblem(f"the disk holding {self.path} has no file locks",
                                         "run gc on a store on a local disk") from None
            return True

    def _give(self):
        _unlock_range(self.fd, *self.range)
        os.close(self.fd)   # POSIX: closing releases the process's record locks anyway
        self.fd = None


def _store_fault(exc):
    """True for an SQLite error from the store's disk or file (full,
    read-only, locked, corrupt), False for a bug in a statement."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError))


class _StoreBlobs:
    """Blobs: compressed file contents, loose in ``blobs/`` or in ``packs/``."""

    def blob_path(self, blob_id):
        return digest_to_path(self.blobs_dir, blob_id)

    def write_blob_file(self, blob_id, src_path, size):
        """Stream-compress a large file into blobs/ unless present."""
        path = self.blob_path(blob_id)
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            pass
        tmp = self.tmp_path("blob")
        try:
            self._compress_file(blob_id, src_path, size, tmp)
            _makedirs(os.path.dirname(path))
            os.replace(tmp, path)
        except BaseException as exc:
            _unlink_quiet(tmp)
            if _disk_full(exc):
                raise self.full_error() from None
            raise
        return os.stat(path).st_size

    @staticmethod
    def _compress_file(blob_id, src_path, size, tmp):
        # single-threaded: zstd's worker threads cost ~30 MB each per file
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        h = blake3.blake3()
        with open(src_path, "rb") as fin, open(tmp, "wb") as fout:
            with cctx.stream_writer(fout, size=size, closefd=False) as w:
                while True:
                    chunk = fin.read(CHUNK)
                    if not chunk:
                        break
                    h.update(chunk)
                    w.write(chunk)
        if h.hexdigest() != blob_id:
            raise InvalidInputError(f"{src_path} changed while it was being committed",
                                    "stop programs writing to the environment and retry")

    def pack_writer(self):
        return PackWriter(self.tmp_path("pack"), self.packs_dir)

    def pack_path(self, pack_id):
        return os.path.join(self.packs_dir, check_id(pack_id, "pack") + ".pack")

    def blob_row(self, blob_id):
        """(size, csize, pack, offset) of a stored blob."""
        row = self._one("SELECT size, csize, pack, offset FROM blobs WHERE id=?", (blob_id,))
        if row is None:
            raise NotFoundError("blob", blob_id,
                                "the store is incomplete; commit or pull the image again")
        return row

    def open_blob(self, blob_id):
        """(size, compressed stream, csize) of a blob, wherever it lives."""
        size, csize, pack, offset = self.blob_row(blob_id)
        try:
            if pack is None:
                return size, open(self.blob_path(blob_id), "rb"), csize
            f = self._packs.get(pack)
            if f is None:
                f = self._packs[pack] = open(self.pack_path(pack), "rb")
        except FileNotFoundError:
            raise NotFoundError("blob", blob_id, "the store is incomplete; "
                                "commit or pull the image again") from None
        f.seek(offset)
        return size, _Window(f, csize), csize

    def blob_stream(self, blob_id):
        """(size, read) of a stored blob: ``read(out, files)`` passes its
        bytes to ``out``, verified as they pass. ``read`` opens its own file
        (kept in ``files``, {path: file}, which its caller closes), so it may
        run in another thread."""
        if blob_id == EMPTY_ID:  # whatever the store recorded for it
            return 0, lambda out, files: None
        size, csize, pack, offset = self.blob_row(blob_id)
        if pack == POOL_ONLY:
            return size, lambda out, files: self.stream_pooled(blob_id, size, out)
        path = self.blob_path(blob_id) if pack is None else self.pack_path(pack)

        def read(out, files):
            f = files.get(path)
            if f is None:
                try:
                    f = files[path] = open(path, "rb")
                except FileNotFoundError:
                    raise NotFoundError("blob", blob_id, "the store is incomplete; "
                                        "commit or pull the image again") from None
            f.seek(offset or 0)
            verify_frame(blob_id, size, f, csize, out=out)
        return size, read

    def read_blob(self, blob_id):
        """Return a blob's bytes, verified against its ID."""
        size, _, pack, _ = self.blob_row(blob_id)
        if pack == POOL_ONLY:
            parts = []
            self.stream_pooled(blob_id, size, parts.append)
            return b"".join(parts)
        size, f, csize = self.open_blob(blob_id)
        with f:
            cdata = f.read()
        if len(cdata) != csize:
            raise IntegrityError("blob", blob_id, "is truncated")
        return decompress_blob(blob_id, cdata, size)

    def extract_blob(self, blob_id, dest):
        """Decompress a blob to ``dest`` (streaming), verifying it as a
        complete frame (:func:`verify_frame`), or copy a pool-only one."""
        if blob_id == EMPTY_ID:  # stored nowhere: its pool file is made from nothing
            open(dest, "wb").close()
            return
        size, _, pack, _ = self.blob_row(blob_id)
        if pack == POOL_ONLY:
            with open(dest, "wb") as fout:
                self.stream_pooled(blob_id, size, fout.write)
            return
        size, fin, csize = self.open_blob(blob_id)
        with fin, open(dest, "wb") as fout:
            verify_frame(blob_id, size, fin, csize, out=fout.write)

    def blob_sizes(self, blob_ids):
        """{blob: size} for the given blob IDs."""
        return dict(self._select_in("SELECT id, size FROM blobs WHERE id IN ({q})", blob_ids))

    def present_blobs(self, blob_ids, framed=False):
        """The given blob IDs the store has (``framed``: with a frame or a
        pool-only copy; a row of csize 0, left by older versions, is not a blob)."""
        sql = "SELECT id FROM blobs WHERE id IN ({q})" + (
            f" AND (csize > 0 OR pack = '{POOL_ONLY}')" if framed else "")
        return {r[0] for r in self._select_in(sql, blob_ids)}

    def has_blob(self, blob_id):
        """Whether ``blob_id`` is recorded; safe from any thread (:meth:`reader`)."""
        return self._one("SELECT 1 FROM blobs WHERE id=?", (blob_id,), self.reader()) is not None

    def _add_blobs(self, rows):
        """Record blobs (id, size, csize, pack, offset); a recorded one is kept
        unless it has no frame (csize 0, left by older versions)."""
        self.db.executemany("INSERT INTO blobs(id, size, csize, pack, offset) "
                            "VALUES (?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                            "size=excluded.size, csize=excluded.csize, pack=excluded.pack, "
                            "offset=excluded.offset WHERE blobs.csize = 0", rows)


#: a pool file of an executable blob: ``ID.x`` or ``ID.x.GEN``
_POOL_EXEC_RE = _Regex(r"\.x(\.[0-9]+)?$")


class _StorePool:
    """The pool: read-only decompressed copies that containers link to, the
    inodes that name them, and compiled ``.pyc`` files."""

    def pool_path(self, object_id, executable=False, gen=0):
        suffix = (".x" if executable else "") + (f".{gen}" if gen else "")
        if object_id in self._valid:  # already checked (it came from a parsed tree)
            return f"{self.pool_dir}{os.sep}{object_id[:2]}{os.sep}{object_id}{suffix}"
        path = digest_to_path(self.pool_dir, object_id, depth=1, suffix=suffix)
        if len(self._valid) < 1_000_000:
            self._valid.add(object_id)
        return path

    def checked_ids(self, ids):
        """Note IDs whose format a parser has checked (the refs of a parsed
        tree): :meth:`pool_path` then skips checking them again."""
        if len(self._valid) + len(ids) <= 1_000_000:
            self._valid.update(ids)

    def current_pool_path(self, blob_id, executable):
        return self.pool_path(blob_id, executable, self._pool_gen.get((blob_id, executable), 0))

    def pool_paths(self, items):
        """:meth:`current_pool_path` of each of ``items`` [(blob, executable,
        ...)], at once: each ID is checked as in :meth:`pool_path`."""
        self.checked_ids(check_ids({i[0] for i in items} - self._valid))
        if self._pool_gen:
            return [self.current_pool_path(i[0], i[1]) for i in items]
        head, sep = self.pool_dir + os.sep, os.sep
        return [f"{head}{i[0][:2]}{sep}{i[0]}.x" if i[1] else f"{head}{i[0][:2]}{sep}{i[0]}"
                for i in items]

    def materialize_pool(self, blob_id, executable, new_inodes, gen=None):
        """Make the read-only pool copy of a blob; returns its path."""
        if gen is None:
            gen = self._pool_gen.get((blob_id, executable), 0)
        path = self.pool_path(blob_id, executable, gen)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:  # left by an interrupted run: complete (renamed into place), not recorded
            new_inodes.append((st.st_dev, st.st_ino, blob_id, st.st_size, int(executable)))
            return path
        self._write_pool_file(blob_id, executable, path, new_inodes, replace=False)
        return path

    def _write_pool_file(self, blob_id, executable, path, new_inodes, replace=True):
        """A fresh pool file from the compressed blob: a new inode, never a
        write into a file other containers may share. ``replace``: renamed over
        ``path`` (a damaged one); else linked there unless another process was
        first (replacing its file would unlink the inode it is linking from)."""
        tmp = self.tmp_path("pool")
        try:
            self.extract_blob(blob_id, tmp)
            os.chmod(tmp, 0o555 if executable else 0o444)
            os.utime(tmp, (FIXED_MTIME, FIXED_MTIME))
            _makedirs(os.path.dirname(path))
            if replace:
                os.replace(tmp, path)
            else:  # Windows' rename never replaces; elsewhere a link does not
                try:
                    os.rename(tmp, path) if os.name == "nt" else os.link(tmp, path)
                except FileExistsError:
                    pass
                except OSError:  # a disk without hard links (FAT): rename over it
                    os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                _remove_read_only(tmp)
        st = os.stat(path)
        new_inodes.append((st.st_dev, st.st_ino, blob_id, st.st_size, int(executable)))

    @staticmethod
    def pool_file_problem(path, size, executable=False, object_id=None, full=False, st=None):
        """What is wrong with a pool file, or None (also when it is missing:
        it is simply made): it must be a regular file of ``size`` bytes with
        the fixed mtime, read-only with its exact mode (Windows: read-only).
        Its bytes are hashed against ``object_id``, if given, when ``full``
        or when it is writable. ``st``: its lstat, when the caller has it."""
        if st is None:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return None
        mode, want = stat.S_IMODE(st.st_mode), 0o555 if executable else 0o444
        writable = mode & 0o222
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if st.st_size != size:
            return f"has {st.st_size} bytes, not {size}"
        if st.st_mtime_ns != FIXED_MTIME * 1_000_000_000:
            return "was modified (its mtime changed)"
        if object_id is not None and (full or writable) and _hash_file(path) != object_id:
            return "its bytes do not match its ID"
        if writable:
            return "is writable" + (" (its bytes are intact)" if object_id else "")
        if mode != want and not WINDOWS:  # read at call time, as Target.local() does
            return f"has mode {mode:o}, not {want:o}"
        return None

    def pool_copies(self, blob_id):
        """[(path, executable)] of the pool files of a blob (any mode or generation)."""
        d = os.path.dirname(self.pool_path(blob_id))
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        return [(os.path.join(d, n), bool(m[2])) for n in names
                if (m := _POOL_NAME_RE.match(n)) and m[1] == blob_id]

    def pool_copy(self, blob_id, size):
        """The first pool file of a blob that passes the fast check and hashes right, or None."""
        for path, executable in self.pool_copies(blob_id):
            if not self.pool_file_problem(path, size, executable, blob_id, full=True) \
                    and os.path.lexists(path):
                return path
        return None

    def pyc_stream(self, pyc_id):
        """(size, read) of a compiled ``.pyc`` as :meth:`blob_stream` gives
        a blob's: its pool file, hashed as it is read."""
        path = self.pool_path(pyc_id)
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            raise NotFoundError("compiled .pyc", pyc_id, "push again (or with --no-bytecode); "
                                "a create compiles it anew") from None

        def read(out, files):
            h = blake3.blake3()
            for chunk in _file_chunks(path):
                h.update(chunk)
                out(chunk)
            if h.hexdigest() != pyc_id:
                raise IntegrityError("pyc", pyc_id, "its pool file was changed")
        return size, read

    def stream_pooled(self, blob_id, size, write):
        """The bytes of a pool-only blob to ``write``, from an intact pool
        file, hashed again as they are read."""
        path = self.pool_copy(blob_id, size)
        h = blake3.blake3()
        for chunk in _file_chunks(path) if path is not None else ():
            h.update(chunk)
            write(chunk)
        if path is None or h.hexdigest() != blob_id:
            exc = IntegrityError("blob", blob_id, "its one copy, a pool file, was changed")
            exc.hint = "run vocker verify --repair --from REPO, with a repository holding its image"
            raise exc

    def repair_pool(self, blob_id, executable, path, new_inodes):
        """Replace a damaged pool file by a fresh copy from its blob and forget
        the old inode (containers holding it keep their own damaged copy)."""
        old = os.lstat(path)
        if stat.S_ISDIR(old.st_mode):
            rmtree(path)
        self._write_pool_file(blob_id, executable, path, new_inodes)
        self.drop_pool_inode(old.st_dev, old.st_ino)

    def pool_inodes_on(self, dev, inos):
        """Rows (ino, blob, size, exec) of the pool files among inodes ``inos`` of ``dev``."""
        return self._select_in("SELECT ino, blob, size, exec FROM pool_inodes "
                               "WHERE dev=? AND ino IN ({q})", inos, (dev,))

    def add_pool_inodes(self, rows):
        """Record pool files by inode: rows (dev, ino, blob, size, exec). A
        row recorded as it is already is not written again (a create notes
        every pool file it links)."""
        with self.transaction() as db:
            db.executemany("INSERT INTO pool_inodes(dev, ino, blob, size, exec) VALUES (?,?,?,?,?) "
                           "ON CONFLICT(dev, ino) DO UPDATE SET blob=excluded.blob, "
                           "size=excluded.size, exec=excluded.exec WHERE blob != excluded.blob "
                           "OR size != excluded.size OR exec != excluded.exec", rows)

    def drop_pool_inode(self, dev, ino):
        with self.transaction() as db:
            db.execute("DELETE FROM pool_inodes WHERE dev=? AND ino=?", (dev, ino))
            db.execute("DELETE FROM image_inodes")  # which images linked it is not known

    def next_pool_generation(self, blob_id, executable, new_inodes):
        """The pool file hit its link limit: start a fresh copy."""
        gen = self._pool_gen.get((blob_id, executable), 0)
        while True:
            gen += 1
            path = self.pool_path(blob_id, executable, gen)
            if not os.path.exists(path):
                break
            st = os.stat(path)
            if st.st_nlink < 1000:
                break
        self._pool_gen[(blob_id, executable)] = gen
        self.materialize_pool(blob_id, executable, new_inodes, gen)
        return path

    def ingest_pool_file(self, tmp):
        """Move a finished file (a compiled .pyc) into the pool by its hash;
        returns (ID, path, size). A pool file already there is kept only if
        it passes the fast check and holds the same bytes."""
        with open(tmp, "rb") as f:
            data = f.read()
        object_id = hash_bytes(data)
        path = self.pool_path(object_id)
        if not self.pool_file_problem(path, len(data)) and self._same_bytes(path, data):
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o444)
            os.utime(tmp, (FIXED_MTIME, FIXED_MTIME))
            _makedirs(os.path.dirname(path))
            os.replace(tmp, path)
        return object_id, path, len(data)

    @staticmethod
    def _same_bytes(path, data):
        try:
            with open(path, "rb") as f:
                return f.read(len(data) + 1) == data
        except OSError:
            return False

    def cached_pycs(self, cache_tag, sources):
        """({source blob: pyc ID ("": it did not compile)}, {pyc ID: its
        recorded size}) of the .pyc compiled for interpreter ``cache_tag``."""
        rows = self._select_in("SELECT c.source, c.pyc, f.size FROM pyc_cache c LEFT JOIN "
                               "pyc_files f ON f.id = c.pyc WHERE c.cache_tag=? AND c.opt=0 "
                               "AND c.source IN ({q})", sorted(sources), (cache_tag,))
        return ({s: p for s, p, _ in rows},
                {p: size for _, p, size in rows if p and size is not None})

    def add_pycs(self, cache_rows, file_rows):
        """Record compiled files: cache rows (cache_tag, source, opt, pyc) and
        pool rows (pyc, size, dev, ino)."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO pyc_cache VALUES (?,?,?,?)", cache_rows)
            db.executemany("INSERT OR REPLACE INTO pyc_files VALUES (?,?,?,?)", file_rows)

    def check_pyc(self, pyc_id, size):
        """"ok", "missing" or "damaged" for the pool copy of a compiled .pyc.
        With no recorded size (a store from an older vocker) its bytes are
        hashed once: its ID is the hash of its bytes."""
        path = self.pool_path(pyc_id)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "missing"
        if size is None:
            if not stat.S_ISREG(st.st_mode):
                return "damaged"
            size = st.st_size
            with open(path, "rb") as f:
                if hash_bytes(f.read(size + 1)) != pyc_id:
                    return "damaged"
        return "damaged" if self.pool_file_problem(path, size) else "ok"

    def seal_pool(self):
        """Windows: set the read-only attribute back on every pool file that
        lost it. It belongs to the inode, so clearing it on any hardlink (rm,
        pip's own rmtree in a container) clears it for the pool and every
        container; returns how many were sealed again."""
        sealed = 0
        for d, _, names in os.walk(self.pool_dir):
            for name in names:
                p = os.path.join(d, name)
                with contextlib.suppress(OSError):
                    mode = os.lstat(p).st_mode
                    if stat.S_ISREG(mode) and mode & stat.S_IWRITE:  # chmod follows links
                        os.chmod(p, 0o555 if _POOL_EXEC_RE.search(name) else 0o444)
                        sealed += 1
        return sealed

    def restore_readonly(self, st):
        """A container's hardlink of inode ``st`` lost its read-only attribute
        to be deleted (Windows: the attribute is per inode): set it back on
        the pool file of that inode, if there is one."""
        dev, ino = st.st_dev, st.st_ino
        paths = []
        row = self._one("SELECT blob, exec FROM pool_inodes WHERE dev=? AND ino=?", (dev, ino))
        if row is not None:
            paths = [(self.pool_path(row[0], bool(row[1]), gen), bool(row[1])) for gen in range(64)]
        else:
            row = self._one("SELECT id FROM pyc_files WHERE dev=? AND ino=?", (dev, ino))
            if row is not None:
                paths = [(self.pool_path(row[0]), False)]
        for path, executable in paths:
            try:
                pst = os.lstat(path)
            except FileNotFoundError:
                continue
            if (pst.st_dev, pst.st_ino) == (dev, ino):
                os.chmod(path, 0o555 if executable else 0o444)
                return path
        return None


class _StoreContainers:
    """Containers, creates in progress, and the stat cache of committed folders."""

    _CONTAINER = "SELECT path, image, created, link_mode, python FROM containers"

    def container_row(self, path):
        """(path, image, created, link_mode, python) of the container at ``path``, or None."""
        return self._one(self._CONTAINER + " WHERE path=?", (path,))

    def container_rows(self):
        """Every container's row (as :meth:`container_row`), newest first."""
        return self._all(self._CONTAINER + " ORDER BY created DESC")

    def container_origin(self, path):
        """(image ID, recorded interpreter) if ``path`` is a container, else None."""
        row = self.container_row(os.path.abspath(path))
        return (row[1], row[4]) if row else None

    def containers_using(self, image_id):
        """Paths of the containers made from ``image_id``, sorted."""
        return [r[0] for r in self._all("SELECT path FROM containers WHERE image=? "
                                        "ORDER BY path", (image_id,))]

    def add_container(self, path, image_id, link_mode, python):
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO containers(path, image, created, link_mode, python)"
                       " VALUES (?,?,?,?,?)", (path, image_id, time.time(), link_mode, python))

    def remove_container_row(self, path):
        """Forget the container at ``path`` and the stat cache of its files."""
        with self.transaction() as db:
            db.execute("DELETE FROM containers WHERE path=?", (path,))
            db.execute("DELETE FROM stat_cache WHERE path >= ? AND path < ?", _below(path))

    # -- stat cache -----------------------------------------------------------

    def stat_cache_under(self, root):
        """{path: (dev, ino, size, mtime_ns, ctime_ns, blob, template)} below ``root``."""
        return {r[0]: r[1:] for r in self._all(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, blob, template "
            "FROM stat_cache WHERE path >= ? AND path < ?", _below(root))}

    def cache_stats(self, rows):
        """Remember rows (path, dev, ino, size, mtime_ns, ctime_ns, blob, template)."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO stat_cache VALUES (?,?,?,?,?,?,?,?)", rows)

    # -- creates in progress --------------------------------------------------

    _PENDING = ("path", "stage", "pid", "host", "started", "dev", "ino", "mtime_ns")

    def pending_create(self, path):
        """The in-progress row of a create at ``path``, as a dict, or None."""
        row = self._one(f"SELECT {', '.join(self._PENDING)} FROM pending_creates WHERE path=?",
                        (path,))
        return None if row is None else dict(zip(self._PENDING, row))

    def pending_creates(self):
        """Every create in progress (or killed), as dicts."""
        return [dict(zip(self._PENDING, r))
                for r in self._all(f"SELECT {', '.join(self._PENDING)} FROM pending_creates")]

    def add_pending_create(self, path, stage, host):
        """Record a create before its staging folder exists; refuses while
        another live process creates the same path."""
        with self.transaction() as db:
            row = self.pending_create(path)
            if row is not None and not _create_dead(row, host):
                raise ConflictError(f"{path} is being created by vocker process {row['pid']}",
                                    "wait for it to finish, or choose another path")
            db.execute("INSERT OR REPLACE INTO pending_creates VALUES (?,?,?,?,?,NULL,NULL,NULL)",
                       (path, stage, os.getpid(), host, time.time()))

    def set_pending_stage(self, path, stage, st):
        """Remember the finished staging folder (inode and mtime, which the
        rename keeps): PATH is vocker's leftover only while it is that folder."""
        with self.transaction() as db:
            db.execute("UPDATE pending_creates SET dev=?, ino=?, mtime_ns=? "
                       "WHERE path=? AND stage=?",
                       (st.st_dev, st.st_ino, st.st_mtime_ns, path, stage))

    def drop_pending_create(self, path, stage):
        with self.transaction() as db:
            db.execute("DELETE FROM pending_creates WHERE path=? AND stage=?", (path, stage))


def _below(path):
    """(lo, hi): the text range of the paths strictly inside folder ``path``."""
    return path + os.sep, path + chr(ord(os.sep) + 1)


class _StoreImages:
    """Images: manifests, their trees, tags and local facts (size, source)."""

    def resolve_ref(self, ref):
        """(image ID, tag or None) for a tag, a full ID or a unique ID prefix
        (:func:`ref_forms`); the tag is the one the image was found by."""
        tag, prefix = ref_forms(ref)
        row = self._one("SELECT image FROM tags WHERE name=?", (tag,)) if tag else None
        if row is not None:
            return row[0], tag
        if prefix is None:
            raise NotFoundError("image", ref, "run 'vocker images' to list images")
        rows = self._all("SELECT id FROM images WHERE id >= ? AND id < ? ORDER BY id LIMIT 20",
                         (prefix, prefix + "g"))
        if not rows:
            raise NotFoundError("image", ref, "run 'vocker images' to list images")
        if len(rows) > 1:
            raise AmbiguousError(ref, [r[0] for r in rows])
        return rows[0][0], None

    def resolve_image(self, ref):
        """Image ID for a full ID, a unique ID prefix, or a tag."""
        return self.resolve_ref(ref)[0]

    def manifest(self, image_id):
        row = self._one("SELECT manifest FROM images WHERE id=?", (image_id,))
        if row is None:
            raise NotFoundError("image", image_id, "run 'vocker images' to list images")
        return Manifest.parse(bytes(row[0]), image_id)

    def has_image(self, image_id):
        return self._one("SELECT 1 FROM images WHERE id=?", (image_id,)) is not None

    def image_row(self, image_id):
        """(created, source, size, files) of a stored image."""
        row = self._one("SELECT created, source, size, files FROM images WHERE id=?", (image_id,))
        if row is None:
            raise NotFoundError("image", image_id, "run 'vocker images' to list images")
        return row

    def image_rows(self):
        """(id, manifest bytes, created, size, files, source) of every image, newest first."""
        return self._all("SELECT id, manifest, created, size, files, source FROM images "
                         "ORDER BY created DESC")

    def python_facts(self, path, stamp):
        """The facts remembered of interpreter ``path`` while ``stamp`` holds, or None."""
        row = self._one("SELECT facts FROM python_facts WHERE path=? AND stamp=?", (path, stamp))
        with contextlib.suppress(ValueError, TypeError):
            facts = json.loads(row[0]) if row else None
            if isinstance(facts, dict) and _PY_FACT_KEYS <= set(facts):
                return facts
        return None

    def remember_python(self, path, stamp, facts):
        if not self.readonly:
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO python_facts(path, stamp, facts) "
                           "VALUES (?,?,?)", (path, stamp, json.dumps(facts, sort_keys=True)))

    def base_exe(self, image_id):
        """The base interpreter seen when ``image_id`` was committed here, or None."""
        row = self._one("SELECT base_exe FROM images WHERE id=?", (image_id,))
        return row[0] if row else None

    def tree(self, tree_id):
        row = self._one("SELECT data FROM trees WHERE id=?", (tree_id,))
        if row is None:
            raise NotFoundError("tree", tree_id, "the store is incomplete; commit or pull the image again")
        return Tree.parse(bytes(row[0]), tree_id)

    def tags_of(self, image_id):
        return [r[0] for r in self._all("SELECT name FROM tags WHERE image=? ORDER BY name",
                                        (image_id,))]

    def tag_names(self):
        """Every tag name, sorted (the suggestions for a name not found)."""
        return [r[0] for r in self._all("SELECT name FROM tags ORDER BY name")]

    def set_tag(self, name, image_id):
        """Point tag ``name`` (normalized) at ``image_id``."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO tags(name, image) VALUES (?,?)", (name, image_id))

    def untag(self, name):
        with self.transaction() as db:
            db.execute("DELETE FROM tags WHERE name=?", (name,))

    def delete_image(self, image_id):
        """Forget an image, its tags and plans (its trees and blobs stay)."""
        with self.transaction() as db:
            db.execute("DELETE FROM tags WHERE image=?", (image_id,))
            db.execute("DELETE FROM plans WHERE image=?", (image_id,))
            db.execute("DELETE FROM image_inodes WHERE image=?", (image_id,))
            db.execute("DELETE FROM image_sources WHERE image=?", (image_id,))
            db.execute("DELETE FROM bytecode WHERE image=?", (image_id,))
            db.execute("DELETE FROM images WHERE id=?", (image_id,))

    def plan(self, image_id, rules):
        """The bytes of an image's :class:`Plan` for ``rules``, or None (none
        kept, or its hash fails: then it is made again)."""
        row = self._one("SELECT CAST(data AS BLOB), hash FROM plans WHERE image=? AND rules=?",
                        (image_id, rules))
        if row is None or _plan_hash(image_id, rules, bytes(row[0])) != row[1]:
            return None
        return bytes(row[0])

    def inodes_noted(self, image_id):
        """The :func:`inodes_digest` of the pool files the last create of
        ``image_id`` linked and recorded, or None."""
        row = self._one("SELECT digest FROM image_inodes WHERE image=?", (image_id,))
        return row and row[0]

    def note_inodes(self, image_id, digest):
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO image_inodes(image, digest) VALUES (?,?)",
                       (image_id, digest))

    def set_plan(self, image_id, rules, data):
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO plans(image, rules, data, hash) VALUES (?,?,?,?)",
                       (image_id, rules, data, _plan_hash(image_id, rules, data)))

    def add_bytecode(self, bytecode_id, record, trees, blobs):
        """Record pulled bytecode in one transaction: its tree ({id: bytes}),
        new blob rows (as :meth:`add_image`) and the record."""
        rec = Bytecode.parse(record, bytecode_id)
        with self.transaction() as db:
            self._add_blobs(blobs)
            db.executemany("INSERT OR IGNORE INTO trees(id, data) VALUES (?,?)", trees.items())
            db.execute("INSERT OR IGNORE INTO bytecode(id, image, cache_tag, record) "
                       "VALUES (?,?,?,?)", (bytecode_id, rec.image, rec.cache_tag, record))

    def has_bytecode(self, bytecode_id):
        return self._one("SELECT 1 FROM bytecode WHERE id=?", (bytecode_id,)) is not None

    def bytecode_of(self, image_id, cache_tag=None):
        """[(ID, Bytecode)] shipped with ``image_id`` (for ``cache_tag``)."""
        rows = self._all("SELECT id, record FROM bytecode WHERE image=? ORDER BY id", (image_id,))
        return [(i, rec) for i, r in rows
                if (rec := Bytecode.parse(bytes(r), i)).cache_tag == cache_tag or not cache_tag]

    def shipped_pycs(self, image_id, cache_tag):
        """{source blob: pyc blob} of the bytecode shipped with ``image_id``."""
        out = {}
        for _, rec in self.bytecode_of(image_id, cache_tag):
            out.update(Bytecode.pycs(self.tree(rec.root)))
        return out

    def add_image_sources(self, rows):
        """Rows (image, location): where each image can be fetched again."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO image_sources(image, location) VALUES (?,?)",
                           rows)

    def image_sources(self, image_id=None):
        """Locations image ``image_id`` can be fetched from again; without
        it, {image: [location]} of every image that has one."""
        if image_id is not None:
            return [r[0] for r in self._all("SELECT location FROM image_sources WHERE image=? "
                                            "ORDER BY location", (image_id,))]
        out = {}
        for image, location in self._all("SELECT image, location FROM image_sources "
                                         "ORDER BY location"):
            out.setdefault(image, []).append(location)
        return out

    def add_image(self, image_id, manifest_bytes, trees, blobs, tags=(), source=None,
                  base_exe=None):
        """Record an image in one transaction: its trees ({id: Tree}, parsed
        and checked, or built by commit), new blob rows (id, size, csize, pack,
        offset), the image and its tags. Returns its (size, files), derived
        from its trees (:func:`image_totals`)."""
        def get_tree(tid):
            return trees[tid] if tid in trees else self.tree(tid)
        root = Manifest.parse(manifest_bytes, image_id).root
        with self.transaction() as db:
            self._add_blobs(blobs)
            db.executemany("INSERT OR IGNORE INTO trees(id, data) VALUES (?,?)",
                           ((tid, t.serialize()) for tid, t in trees.items()))
            size, files = image_totals(get_tree, root, self.blob_sizes)
            db.execute("INSERT OR IGNORE INTO images(id, manifest, created, source, base_exe, "
                       "size, files) VALUES (?,?,?,?,?,?,?)",
                       (image_id, manifest_bytes, time.time(), source, base_exe, size, files))
            if base_exe:
                db.execute("UPDATE images SET base_exe=? WHERE id=?", (base_exe, image_id))
            for t in tags:
                self.set_tag(t, image_id)
        return size, files


def image_totals(get_tree, root, blob_sizes):
    """(bytes, files) of an image: its regular files as :func:`walk_image`
    reaches them (a shared sub-tree counts each time), so the same image
    reports the same figures in every store. ``blob_sizes(ids)`` -> {blob: size}."""
    trees = {tid: t for tid, (t, _, _) in _expansion(get_tree, root).items()}
    sizes = blob_sizes({e.ref for t in trees.values() for e in t.entries
                        if e.type != T_DIR and e.type not in LINK_TYPES})
    done = {}

    def totals(tid):  # recursion is bounded: _expansion refused trees over MAX_DEPTH
        if tid not in done:
            size = files = 0
            for e in trees[tid].entries:
                if e.type == T_DIR:
                    sub = totals(e.ref)
                    size, files = size + sub[0], files + sub[1]
                elif e.type not in LINK_TYPES:
                    if e.ref not in sizes:
                        raise NotFoundError("blob", e.ref, "the store is incomplete; "
                                            "commit or pull the image again")
                    size, files = size + sizes[e.ref], files + 1
            done[tid] = size, files
        return done[tid]
    return totals(root)


class _StoreGc:
    """What gc and verify read of the store, and what they make it forget or replace."""

    def image_roots(self):
        """The root tree ID of every stored image and bytecode record."""
        rows = self._all("SELECT id, manifest FROM images")
        shipped = self._all("SELECT id, record FROM bytecode")
        return [Manifest.parse(bytes(m), i).root for i, m in rows] + \
            [Bytecode.parse(bytes(r), i).root for i, r in shipped]

    def tree_ids(self):
        return {r[0] for r in self._all("SELECT id FROM trees")}

    def blob_table(self):
        """{blob: (size, csize, pack or None, offset)} of every blob."""
        rows = self._all("SELECT id, size, csize, pack, offset FROM blobs")
        return {r[0]: tuple(r[1:]) for r in rows}

    def blob_rows(self, blob_ids=(), packs=()):
        """:meth:`blob_table`'s rows of the given blobs, and of every blob in ``packs``."""
        rows = self._select_in("SELECT id, size, csize, pack, offset FROM blobs WHERE id IN ({q})",
                               blob_ids)
        rows += self._select_in("SELECT id, size, csize, pack, offset FROM blobs "
                                "WHERE pack IN ({q})", packs)
        return {r[0]: tuple(r[1:]) for r in rows}

    def pyc_table(self):
        """[(source blob, pyc ID)] of every compiled file, and the pyc IDs recorded."""
        return (self._all("SELECT source, pyc FROM pyc_cache"),
                {r[0] for r in self._all("SELECT id FROM pyc_files")})

    def stale_stat_paths(self):
        """Stat cache paths under no container (it was removed)."""
        homes = {r[0] for r in self._all("SELECT path FROM containers")}
        out = []
        for (path,) in self._all("SELECT path FROM stat_cache"):
            d = os.path.dirname(path)
            while d not in homes and os.path.dirname(d) != d:
                d = os.path.dirname(d)
            if d not in homes:
                out.append(path)
        return out

    def repacked(self, pack_id, moved, dead, pooled=()):
        """Blobs ``moved`` ({blob: offset}) now live in pack ``pack_id``;
        ``dead`` ones are gone; ``pooled`` ones keep only their pool copy."""
        with self.transaction() as db:
            db.executemany("UPDATE blobs SET pack=?, offset=? WHERE id=?",
                           [(pack_id, off, b) for b, off in moved.items()])
            db.executemany(f"UPDATE blobs SET pack='{POOL_ONLY}', csize=0, offset=NULL "
                           "WHERE id=?", [(b,) for b in pooled])
            db.executemany("DELETE FROM blobs WHERE id=?", [(b,) for b in dead])

    def forget(self, trees=(), blobs=(), pyc_sources=(), pyc_files=(), inodes=(), stats=()):
        """Delete rows of what gc removes (before it removes the files)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM trees WHERE id=?", [(t,) for t in trees])
            db.executemany("DELETE FROM blobs WHERE id=?", [(b,) for b in blobs])
            db.executemany("DELETE FROM pyc_cache WHERE source=?", [(b,) for b in pyc_sources])
            db.executemany("DELETE FROM pyc_files WHERE id=?", [(p,) for p in pyc_files])
            db.executemany("DELETE FROM pool_inodes WHERE dev=? AND ino=?", list(inodes))
            if inodes:
                db.execute("DELETE FROM image_inodes")
            db.executemany("DELETE FROM stat_cache WHERE path=?", [(p,) for p in stats])

    def check_database(self, full=False):
        """What SQLite's own check (``full``: integrity_check) and the links
        between rows say is wrong: [problem]."""
        try:
            rows = self._all(f"PRAGMA {'integrity_check' if full else 'quick_check'}")
        except sqlite3.DatabaseError as exc:
            return [f"the database cannot be read: {exc}"]
        out = [r[0] for r in rows if r[0] != "ok"]
        out += [f"tag {name} names image {short_id(image)}, which is not in the store"
                for name, image in self._all("SELECT name, image FROM tags WHERE image NOT "
                                             "IN (SELECT id FROM images)")]
        return out

    def pyc_files(self):
        """{pyc ID: size} of every compiled pool file recorded."""
        return dict(self._all("SELECT id, size FROM pyc_files"))

    def forget_pyc(self, pyc_id):
        """A damaged compiled file: forget it (the next create compiles it again)."""
        with self.transaction() as db:
            db.execute("DELETE FROM pyc_cache WHERE pyc=?", (pyc_id,))
            db.execute("DELETE FROM pyc_files WHERE id=?", (pyc_id,))

    _REPLACE_BLOB = "INSERT OR REPLACE INTO blobs(id, size, csize, pack, offset) VALUES (?,?,?,?,?)"

    def replace_blobs(self, rows):
        """Blobs (id, size, csize, pack, offset) now live in a new frame."""
        with self.transaction() as db:
            db.executemany(self._REPLACE_BLOB, rows)

    def replace_objects(self, image_id, manifest_bytes, trees, blobs):
        """Repair from a repository, every object verified by its ID: the
        manifest of ``image_id`` (None: kept), ``trees`` {id: bytes}, blob rows."""
        with self.transaction() as db:
            if image_id is not None:
                db.execute("UPDATE images SET manifest=? WHERE id=?", (manifest_bytes, image_id))
            db.executemany("INSERT OR REPLACE INTO trees(id, data) VALUES (?,?)",
                           list(trees.items()))
            db.executemany(self._REPLACE_BLOB, blobs)

    def compact(self):
        """Give the database's free pages back to the disk."""
        try:
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._fail(exc)


class Store(_StoreImages, _StoreContainers, _StorePool, _StoreBlobs, _StoreGc):
    """The local store: ``vocker.db`` plus ``blobs/``, ``pool/``, ``tmp/``. Every
    SQL statement of vocker is one of its verbs. ``with Store(home) as store:``"""

    #: seconds to wait for another process's write to the store
    LOCK_TIMEOUT = 60

    def __init__(self, home, readonly=None):
        """Open the store at ``home``, making it if needed. ``readonly``: True
        opens it for reading only; False needs it writable (else
        EnvironmentProblem); None detects, opening a store that cannot be
        written (read-only or full disk) read-only, so that listing,
        inspecting and saving still work (a write then fails in
        :meth:`transaction`)."""
        self.home = os.path.abspath(home)
        self.blobs_dir = os.path.join(self.home, "blobs")
        self.pool_dir = os.path.join(self.home, "pool")
        self.tmp_dir = os.path.join(self.home, "tmp")
        self.packs_dir = os.path.join(self.home, "packs")
        self._packs = {}
        self._pool_gen = {}
        self._valid = set()  # object IDs whose format digest_to_path has checked
        self._local, self._readers, self._readers_lock = threading.local(), [], threading.Lock()
        self._in_transaction = False
        self._lock = _StoreLock.of(os.path.join(self.home, "gc.lock"))
        self.readonly = bool(readonly)
        if not self.readonly:
            try:
                self._open_writable()
            except (OSError, sqlite3.DatabaseError) as exc:
                if readonly is False or not (_cannot_write(exc) or self._full(exc)):
                    raise self.write_problem(exc) from None
                self.readonly = True
        if self.readonly:
            self._open_readonly()
        else:
            self._clean_tmp()

    def _open_writable(self):
        for d in (self.home, self.blobs_dir, self.pool_dir, self.tmp_dir, self.packs_dir):
            os.makedirs(d, exist_ok=True)
        self._check_writable()
        if not os.path.exists(self._lock.path):  # never deleted; an open-and-close of
            os.close(os.open(self._lock.path, os.O_RDWR | os.O_CREAT, 0o644))  # a held one
            # would drop this process's record locks on it
        path = os.path.join(self.home, "vocker.db")
        self._uri = None  # made by reader(), when a thread first needs one
        self.db = sqlite3.connect(path, timeout=self.LOCK_TIMEOUT, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_load_schema())
        except BaseException:
            self.db.close()
            raise

    def _open_readonly(self):
        """Read-only SQLite: ``mode=ro`` reads a WAL database when its -wal and
        -shm files exist or can be made; else (a read-only disk after a clean
        close, so no WAL content) ``immutable=1``."""
        path = os.path.join(self.home, "vocker.db")
        if not os.path.isfile(path):
            raise EnvironmentProblem(f"no store at {self.home}, and it cannot be made there",
                                     "check the path and that the disk is writable, "
                                     "or pass --home DIR")
        uri = _file_uri(path)
        for query in ("?mode=ro", "?immutable=1"):
            db = sqlite3.connect(uri + query, uri=True, timeout=self.LOCK_TIMEOUT,
                                 isolation_level=None)
            try:
                db.execute("SELECT count(*) FROM images").fetchone()
            except sqlite3.Error as exc:
                db.close()
                error = exc
                continue
            self.db, self._uri = db, uri + query
            return
        raise EnvironmentProblem(f"cannot read the store at {self.home}: {error}",
                                 "check the permissions of its vocker.db") from None

    def read_only_error(self):
        return EnvironmentProblem(f"the store at {self.home} is read-only",
                                  "check the disk is writable (and mounted read-write), "
                                  "or pass --home DIR")

    def full_error(self):
        return EnvironmentProblem(f"the disk holding the store at {self.home} is full",
                                  "free some space on that disk and retry")

    def _full(self, exc):
        """A full disk; SQLite may call it an I/O error (its -shm cannot grow)."""
        if _disk_full(exc):
            return True
        if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF != _SQLITE_IOERR:
            return False
        try:
            return free_bytes(self.home) < CHUNK
        except OSError:
            return False

    def write_problem(self, exc):
        """The EnvironmentProblem for a failed write into the store."""
        if self._full(exc):
            return self.full_error()
        if _cannot_write(exc):
            return self.read_only_error()
        return EnvironmentProblem(f"cannot use the store at {self.home}: {exc}",
                                  "check the disk is writable and not full, or pass --home DIR")

    def _check_writable(self):
        probe = os.path.join(self.tmp_dir, f".probe-{random_hex()}")
        with open(probe, "wb"):
            pass
        _unlink_quiet(probe)  # a gc running meanwhile may have removed it: tmp/ is its

    def _clean_tmp(self):
        """Remove staging left by crashed processes (older than an hour) and
        files that could not be deleted earlier (tmp/trash)."""
        cutoff = time.time() - 3600
        trash = os.path.join(self.tmp_dir, "trash")
        if os.path.isdir(trash):  # hardlinks of the pool may wait here (Windows)
            with contextlib.suppress(OSError, EnvironmentProblem):
                rmtree(trash, restore_readonly=self.restore_readonly)
        with os.scandir(self.tmp_dir) as it:
            for entry in it:
                try:
                    if entry.name == "trash":
                        continue
                    st = entry.stat(follow_symlinks=False)
                    # ctime too: a pool file gets its fixed 2000-01-01 mtime here
                    if max(st.st_mtime, st.st_ctime) < cutoff:
                        if entry.is_dir(follow_symlinks=False):
                            rmtree(entry.path)
                        else:
                            os.unlink(entry.path)
                except OSError:
                    pass

    def trash_dir_for(self, path):
        """Where files that cannot be deleted now go: the store's tmp/trash
        when on the same volume (a rename cannot cross volumes), else a
        hidden folder beside ``path``."""
        trash = os.path.join(self.tmp_dir, "trash")
        try:
            if os.stat(self.tmp_dir).st_dev == os.stat(os.path.dirname(path)).st_dev:
                return trash
        except OSError:
            pass
        return os.path.join(os.path.dirname(path), ".vocker-trash")

    def tmp_path(self, hint="tmp"):
        return os.path.join(self.tmp_dir, f"{hint}-{random_hex()}")

    # -- SQL: every statement of vocker runs through these -------------------

    def _fail(self, exc):
        """The one store-problem path: an SQLite error from the disk or file
        becomes an EnvironmentProblem (exit 6); a bug in a statement stays one."""
        if _store_fault(exc):
            raise self.write_problem(exc) from None
        raise exc

    def _one(self, sql, params=(), db=None):
        try:
            return (db or self.db).execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            self._fail(exc)

    def _all(self, sql, params=()):
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._fail(exc)

    def _select_in(self, sql, values, params=()):
        """Rows of ``sql`` (which holds one ``IN ({q})``) for all ``values``,
        queried 500 at a time (SQLite limits the number of parameters)."""
        values, rows = list(values), []
        for i in range(0, len(values), 500):
            chunk = values[i:i + 500]
            rows += self._all(sql.format(q=",".join("?" * len(chunk))), [*params, *chunk])
        return rows

    def reader(self):
        """This thread's own connection for reading (one SQLite connection
        must not be shared by threads); closed by :meth:`close_readers`."""
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                self._uri = self._uri or _file_uri(os.path.join(self.home, "vocker.db"))
                db = sqlite3.connect(self._uri, uri=True, timeout=self.LOCK_TIMEOUT,
                                     check_same_thread=False, isolation_level=None)
            except sqlite3.Error as exc:
                self._fail(exc)
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        return db

    def close_readers(self):
        with self._readers_lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
            self._local = threading.local()

    def close_packs(self):
        """Close the pack files kept open for reading (Windows: before one is deleted)."""
        for f in self._packs.values():
            f.close()
        self._packs.clear()

    def close(self):
        self.close_readers()
        self.close_packs()
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    #: seconds a writer waits for a running gc, and gc for running writers
    GC_WAIT = 900

    @contextlib.contextmanager
    def writing(self):
        """Held by commit, create, pull and load from their first object to
        their last record, shared with each other: gc waits for them."""
        if self.readonly:
            yield
            return
        busy = ConflictError(f"the store at {self.home} is busy: vocker gc is running",
                             f"retry when it has finished (waited {self.GC_WAIT} s)")
        with self._lock.hold(False, self.GC_WAIT, busy):
            # a gc since the last write may have removed empty shard folders
            _made_dirs.difference_update([d for d in _made_dirs if d.startswith(self.home)])
            yield

    @contextlib.contextmanager
    def collecting(self, wait=None):
        """Held by gc alone: no commit, create, pull or load runs meanwhile
        (``wait``: seconds to wait for them, default GC_WAIT)."""
        wait = self.GC_WAIT if wait is None else wait
        if self.readonly:
            raise self.read_only_error()
        busy = ConflictError(f"the store at {self.home} is in use (commit, create, pull or load)",
                             f"retry when they have finished (waited {wait} s)")
        with self._lock.hold(True, wait, busy):
            yield

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction; inside one, joins it. A store that cannot take
        it (read-only, full disk, unreadable) is an EnvironmentProblem here,
        for every caller, as is any SQLite error from the disk inside it."""
        if self._in_transaction:
            yield self.db
            return
        if self.readonly:
            raise self.read_only_error()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(exc)
        self._in_transaction = True
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._fail(exc)
            raise
        finally:
            self._in_transaction = False


def normalize_tag(ref):
    """``name`` -> ``name:latest``; raise on names Docker would refuse."""
    if not TAG_RE.fullmatch(ref):
        raise UsageError(f"invalid image name or tag: {ref!r}",
                         "use NAME[:TAG] with letters, digits, '.', '_', '-', '/'")
    return ref if ":" in ref else ref + ":latest"


def ref_forms(ref):
    """The one rule for what names an image, here and in a repository:
    (tag or None, ID prefix or None). A name with ``:`` or anything but
    lowercase hex is a tag; hex is an ID prefix, and first the tag ``hex:latest``."""
    if not isinstance(ref, str) or not ref:
        raise UsageError("empty image name")
    if ":" in ref or not PREFIX_RE.fullmatch(ref):
        return normalize_tag(ref), None
    return ref + ":latest", ref



###############################################################################
# Linking #####################################################################
###############################################################################

FICLONE = 0x40049409


def reflink_file(src, dst):
    """Copy-on-write clone of ``src`` at ``dst``; raises OSError if unsupported."""
    if sys.platform == "darwin":
        import ctypes  # here: only this platform has it, or needs it
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.clonefile(os.fsencode(src), os.fsencode(dst), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return
    if not sys.platform.startswith("linux"):
        raise OSError(errno.EOPNOTSUPP, "reflinks are not supported on this platform")
    import fcntl  # here: POSIX only
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = create_exclusive(dst)
        try:
            fcntl.ioctl(dfd, FICLONE, sfd)
        except OSError:
            os.close(dfd)
            os.unlink(dst)
            raise
        os.close(dfd)
    finally:
        os.close(sfd)


_O_EXCL_NEW = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_BINARY", 0))


def create_exclusive(path, mode=0o644):
    """Open a new file for writing; fails if anything (a symlink included)
    is already at ``path``, so a write never goes through a link."""
    return os.open(path, _O_EXCL_NEW, mode)


def copy_file(src, dst, mode=0o644):
    """Copy ``src`` to a new file ``dst`` (never through an existing name)."""
    with open(src, "rb") as fin:
        with os.fdopen(create_exclusive(dst, mode), "wb") as fout:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)


#: fewer files than this are linked by one process (a fork costs ~1 ms)
FORK_MIN = 2000


def link_intact(at, parts, sizes, problem, progress, fork_min=FORK_MIN):
    """Make each part's folders (relative to ``at``), then hardlink each of
    its jobs [(blob, executable, destination)] to its pool file (its srcs)
    when the lstat shows that file intact: a read-only regular file of its
    size (``sizes``) with the fixed mtime, as ``problem``
    (:meth:`Store.pool_file_problem`) checks. parts: [(folders, jobs,
    srcs)], two whole sub-trees; on Linux a process with one thread forks
    to make the second when there are ``fork_min`` files or more, so that
    both cores make the syscalls, which are most of a create (a fork that
    fails leaves both parts to this process). Returns, for each part,
    ([(index, dev, ino)] linked, [index] left: pool file missing, damaged or
    at its link limit); any other OSError is raised, the child having ended
    (killed if this process failed first)."""
    fork = sum(len(p[1]) for p in parts) >= fork_min and len(parts) > 1 and _can_fork()
    child = _fork_linker(at, parts[-1], sizes, problem) if fork else None
    try:
        out = [_make_part(at, *p, sizes, problem, progress) for p in parts[:-1 if child else None]]
    except BaseException:
        if child:
            _stop_child(*child)
        raise
    if child:
        linked, rest = _join_linker(*child)
        jobs = parts[-1][1]
        progress.update(len(linked), nbytes=sum(max(sizes.get(jobs[i][0], -1), 0)
                                                for i, _, _ in linked))
        out.append((linked, rest))
    return out


def make_folders(at, folders):
    """Make ``folders`` (parents first), each relative to ``at``."""
    for rel in folders:
        os.mkdir(at + rel)


def _can_fork():
    """Whether forking is safe and cheap here: Linux (macOS frameworks are
    not fork-safe, Windows has no fork), and no other thread running."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def _make_part(at, folders, jobs, srcs, sizes, problem, progress):
    """One part of :func:`link_intact`, in this process."""
    make_folders(at, folders)
    lstat, link, get = os.lstat, os.link, sizes.get
    fixed, modes = FIXED_MTIME * 1_000_000_000, (stat.S_IFREG | 0o444, stat.S_IFREG | 0o555)
    linked, rest, done, nbytes = [], [], 0, 0
    for i, (blob, executable, dst) in enumerate(jobs):
        src, size = srcs[i], get(blob, -1)
        try:
            st = lstat(src)
            if (st.st_mode != modes[executable] or st.st_size != size
                    or st.st_mtime_ns != fixed) and problem(src, size, executable, st=st):
                rest.append(i)
                continue
            link(src, dst)
        except FileNotFoundError:
            rest.append(i)
            continue
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            rest.append(i)
            continue
        linked.append((i, st.st_dev, st.st_ino))
        if progress is not None:
            done, nbytes = done + 1, nbytes + max(size, 0)
            if done == 256:
                progress.update(done, nbytes=nbytes)
                done = nbytes = 0
    if progress is not None:
        progress.update(done, nbytes=nbytes)
    return linked, rest


def _fork_linker(at, part, sizes, problem):
    """A child process doing :func:`_make_part` of ``part``; returns (pid,
    read end of the pipe its result comes through), or None when no process
    can be started now."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # EAGAIN, ENOMEM: the parent makes both parts
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the child: never returns, never runs the parent's cleanup
        code = 1
        try:
            os.close(r)
            try:
                out = ("ok", *_make_part(at, *part, sizes, problem, None))
            except OSError as exc:
                out = ("error", exc.errno, exc.strerror, exc.filename)
            with os.fdopen(w, "wb") as f:
                f.write(marshal.dumps(out))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _join_linker(pid, r):
    """The child's (linked, rest), once it has ended; its OSError raised."""
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
    except BaseException:  # Ctrl+C while waiting: the child stops too
        _stop_child(pid)
        raise
    _, status = os.waitpid(pid, 0)
    try:
        out = marshal.loads(data) if status == 0 else None
    except (EOFError, ValueError, TypeError):
        out = None
    if not out:
        raise OSError(errno.EIO, "the process making half of the files stopped early")
    if out[0] == "error":
        raise OSError(*out[1:3], out[3])
    return out[1], out[2]


def _stop_child(pid, r=None):
    """Kill a :func:`_fork_linker` child and reap it (and close its pipe)."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)
    if r is not None:
        with contextlib.suppress(OSError):
            os.close(r)


class Linker:
    """Places pool files into a container by the chosen link mode."""

    def __init__(self, store, mode, new_inodes):
        if mode not in LINK_MODES:
            raise UsageError(f"unknown link mode {mode!r}", "use auto, reflink, hardlink or copy")
        self.store = store
        self.requested = mode
        self.mode = None if mode == "auto" else mode
        self.new_inodes = new_inodes
        self.copies = []  # files that are not pool inodes (for the stat cache)
        self.decided = False
        self.seen = []  # (dev, ino, blob, size, exec) of the pool files linked as they were
        self.sizes = {}      # blob -> size, for the check of pool files
        self.checked = set()  # (blob, executable) whose pool file was checked
        self.repaired = 0

    def _one(self, mode, src, dst, executable):
        if mode == "hardlink":
            os.link(src, dst)
        elif mode == "reflink":
            reflink_file(src, dst)
            os.chmod(dst, 0o755 if executable else 0o644)
            os.utime(dst, (FIXED_MTIME, FIXED_MTIME))
        else:
            copy_file(src, dst)
            os.chmod(dst, 0o755 if executable else 0o644)
            os.utime(dst, (FIXED_MTIME, FIXED_MTIME))

    def place(self, blob_id, executable, dst):
        """Put pool object ``blob_id`` at ``dst`` by the link mode."""
        if (blob_id, executable) in self.checked:
            src = self.store.current_pool_path(blob_id, executable)
        else:
            src = self._checked_pool(blob_id, executable)
        try:
            self._place(blob_id, executable, src, dst)
        except FileNotFoundError:
            if not os.path.exists(src):  # the pool copy was removed behind our back
                src = self.store.materialize_pool(blob_id, executable, self.new_inodes)
            # else another create replaced it meanwhile: its old inode had no link left
            self._place(blob_id, executable, src, dst)
        if self.mode != "hardlink":
            self.copies.append(dst)

    def place_tree(self, at, parts, progress):
        """Make each part's folders and :meth:`place` its jobs, counted on
        ``progress``. parts: [(folders relative to ``at``, [(blob, executable,
        destination)])], whole sub-trees. The first job settles the link mode
        (its folder is made first unless it is there: :func:`_halves` puts a
        file of a folder made before the parts first); then, for hardlinks,
        :func:`link_intact` links the pool files that are intact and notes
        them in :attr:`seen`; anything else takes :meth:`place` (which
        checks, repairs and copies)."""
        parts = [(list(folders), list(jobs)) for folders, jobs in parts]
        if not self.decided and parts and parts[0][1]:
            folders, jobs = parts[0]
            blob, executable, dst = jobs.pop(0)
            if not os.path.isdir(os.path.dirname(dst)):
                make_folders(at, folders)
                folders.clear()
            self.place(blob, executable, dst)
            progress.update(nbytes=max(self.sizes.get(blob, -1), 0))
        if self.mode != "hardlink":
            for folders, jobs in parts:
                make_folders(at, folders)
                for blob, executable, dst in jobs:
                    self.place(blob, executable, dst)
                    progress.update(nbytes=max(self.sizes.get(blob, -1), 0))
            return
        parts = [(folders, jobs, self.store.pool_paths(jobs)) for folders, jobs in parts]
        done = link_intact(at, parts, self.sizes, self.store.pool_file_problem, progress)
        for (_, jobs, _), (linked, rest) in zip(parts, done):
            self._note(jobs, linked, rest, progress)

    def _note(self, jobs, linked, rest, progress):
        """Record what :func:`link_intact` linked; :meth:`place` the rest."""
        sizes = self.sizes
        for i, dev, ino in linked:
            blob, executable, _ = jobs[i]
            self.checked.add((blob, executable))
            self.seen.append((dev, ino, blob, sizes.get(blob, -1), int(executable)))
        for i in rest:
            blob, executable, dst = jobs[i]
            self.place(blob, executable, dst)
            progress.update(nbytes=max(sizes.get(blob, -1), 0))

    def _checked_pool(self, blob_id, executable):
        """The pool file to link, checked first (type, size, fixed mtime,
        read-only); a damaged one is replaced from the compressed blob."""
        store, key = self.store, (blob_id, executable)
        path = store.current_pool_path(blob_id, executable)
        size = self.sizes.get(blob_id)
        if size is None:
            size = store.blob_sizes([blob_id]).get(blob_id, -1)
        self.checked.add(key)
        if store.pool_file_problem(path, size, executable):
            store.repair_pool(blob_id, executable, path, self.new_inodes)
            self.repaired += 1
            return path
        return store.materialize_pool(blob_id, executable, self.new_inodes)

    def _place(self, blob_id, executable, src, dst):
        try:
            if self.mode is None:
                if not os.path.exists(src):
                    raise FileNotFoundError(errno.ENOENT, "missing pool file", src)
                self._decide(src, dst, executable)
            else:
                self._one(self.mode, src, dst, executable)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if self.mode == "hardlink" and exc.errno == errno.EMLINK:
                src = self.store.next_pool_generation(blob_id, executable, self.new_inodes)
                os.link(src, dst)
            elif self.requested != "auto" and not self.decided:
                raise LinkModeError(self.mode, os.path.dirname(dst),
                                    exc.strerror or str(exc)) from None
            else:
                raise
        self.decided = True

    def place_file(self, src, dst):
        """Put an existing pool file (a compiled .pyc) at ``dst``."""
        try:
            if self.mode is None:
                self._decide(src, dst, False)
            else:
                self._one(self.mode, src, dst, False)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            self._one("copy", src, dst, False)
        self.decided = True

    def _decide(self, src, dst, executable):
        """Try reflink, hardlink, copy; the first that works is the mode. A
        pool file at its link limit (EMLINK) settles hardlinks, and is raised."""
        last = None
        for mode in ("reflink", "hardlink", "copy"):
            try:
                self._one(mode, src, dst, executable)
            except OSError as exc:
                _unlink_quiet(dst)
                if mode == "hardlink" and exc.errno == errno.EMLINK:
                    self.mode = mode
                    raise
                last = exc
                continue
            self.mode = mode
            return
        raise LinkModeError(self.requested, os.path.dirname(dst), last.strerror or str(last))


###############################################################################
# Python interpreters #########################################################
###############################################################################

class Target:
    """Where an environment lives, as that system spells it: the path flavour
    (``win``: Windows, else POSIX), the environment's ``path``, the facts of
    its base interpreter (``python``; None: found on this machine) and the
    system's name rules. :meth:`local` is this machine (the default
    everywhere); :meth:`windows` a Windows environment elsewhere (tests)."""

    def __init__(self, win, path=None, python=None, elsewhere=False):
        self.win, self.path, self.python = win, path, python
        #: the environment's path is not where its files are written: nothing
        #: of it runs or is compiled here
        self.elsewhere = elsewhere

    @classmethod
    def local(cls, python=None):
        """This machine, read at call time (tests may patch WINDOWS)."""
        return cls(WINDOWS, python=python)

    @classmethod
    def windows(cls, path=None, python=None):
        """A Windows environment at ``path``, its files written here."""
        return cls(True, path, python, elsewhere=True)

    def at(self, folder):
        """This target for the environment in the local ``folder``: the
        folder's own path unless the target names another."""
        if self.path is not None:
            return self
        return Target(self.win, os.path.abspath(folder), self.python, self.elsewhere)

    def name(self, path):
        """The last component of ``path``, as this system splits it."""
        parts = _pure_parts(path, self.win)[1]
        return parts[-1] if parts else ""

    def parent(self, path):
        """The folder of ``path``, as this system splits it."""
        anchor, parts = _pure_parts(path, self.win)
        if len(parts) < 2:
            return anchor or "."
        return anchor + ("\\" if self.win else "/").join(parts[:-1])

    def spellings(self, paths):
        """Every spelling of each of ``paths`` that files may hold (bytes)."""
        out = set()
        for p in paths:
            if p:
                out.update(os.fsencode(s) for s in
                           (windows_spellings(p) if self.win else path_spellings(p)))
        return sorted(out, key=lambda b: (-len(b), b))

    def placeholders(self, exe=None, prompt=None):
        """{placeholder: text} of the environment at this target whose base
        interpreter is ``exe``: what create writes and commit looks for."""
        out = {PH_ENV: self.path, PH_PROMPT: prompt or self.name(self.path)}
        if exe:
            out[PH_PYEXE], out[PH_PYHOME] = exe, self.parent(exe)
        return out

    def check_name(self, name):
        """Raise if this system cannot hold a file named ``name`` (the rules
        every name already meets are :func:`validate_name`'s)."""
        if self.win:
            check_windows_name(name)
        return name

    def is_absolute(self, link):
        """Whether a symlink target is absolute on this system."""
        if self.win:
            return link[:1] in ("/", "\\") or bool(re.match(r"[A-Za-z]:", link))
        return link.startswith("/")


def _pure_parts(path, win):
    """(anchor, parts) of ``path`` as pathlib's pure paths split it, without
    importing pathlib: separators collapsed, ``.`` parts dropped; on Windows
    ``/`` is ``\\`` and the anchor holds the drive."""
    if win:
        drive, rest = ntpath.splitdrive(path.replace("/", "\\"))
        root = "\\" if rest.startswith("\\") or drive.startswith("\\") else ""  # UNC: rooted
        return drive + root, [p for p in rest.split("\\") if p and p != "."]
    root = "//" if path.startswith("//") and not path.startswith("///") else \
        "/" if path.startswith("/") else ""
    return root, [p for p in path.split("/") if p and p != "."]


def _windows_path(*parts):
    """``parts`` joined as Windows spells a path (pathlib's pure form)."""
    from pathlib import PureWindowsPath  # here: used on Windows only
    return str(PureWindowsPath(*parts))


def python_facts(info):
    """The manifest's python facts of an interpreter's :func:`query_python` info."""
    return {k: info[k] for k in PYTHON_FACTS}


def _inside(path, root):
    """True if ``path`` is ``root`` or lies below it, as written or resolved
    (a symlink into the folder counts as inside)."""
    for p, r in ((os.path.abspath(path), os.path.abspath(root)),
                 (os.path.realpath(path), os.path.realpath(root))):
        p, r = os.path.normcase(p), os.path.normcase(r).rstrip(os.sep)
        if p == r or p.startswith(r + os.sep):
            return True
    return False


_PY_QUERY = (
    "import sys,sysconfig,json;print(json.dumps({"
    "'implementation':sys.implementation.name,"
    "'version':'%d.%d.%d'%sys.version_info[:3],"
    "'cache_tag':sys.implementation.cache_tag,"
    "'platform':sysconfig.get_platform(),"
    "'executable':sys.executable,"
    "'in_venv':sys.prefix!=sys.base_prefix}))")
_PY_FACT_KEYS = {"implementation", "version", "cache_tag", "platform", "executable", "in_venv"}
_py_cache = {}


def query_python(exe, facts=None):
    """Facts about an interpreter (runs it isolated), or None if it fails.
    ``facts`` (a :class:`Store`) remembers them while :func:`python_stamp`
    holds, so that a create need not start the interpreter."""
    exe = str(exe)
    if exe in _py_cache:
        return _py_cache[exe]
    stamp = python_stamp(exe) if facts is not None else None
    info = facts.python_facts(exe, stamp) if stamp else None
    if info is None:
        info = _run_query(exe)
        if info is not None and stamp:
            facts.remember_python(exe, stamp, info)
    _py_cache[exe] = info
    return info


def python_stamp(exe):
    """What must not change for remembered facts of ``exe`` to hold: the
    path's link and the file it reaches (inode, size, times), and the
    pyvenv.cfg beside it or one folder up (a venv's marker); None if ``exe``
    is not there."""
    try:
        lst, st = os.lstat(exe), os.stat(exe)
    except OSError:
        return None
    d = os.path.dirname(os.path.abspath(exe))
    cfgs = [os.path.exists(os.path.join(x, "pyvenv.cfg")) for x in (d, os.path.dirname(d))]
    return ":".join(str(int(x)) for x in (lst.st_ino, lst.st_mtime_ns, lst.st_ctime_ns,
                                          st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                          st.st_ctime_ns, *cfgs))


def _run_query(exe):
    import subprocess  # here: imported on first use, for a faster start
    info = None
    try:
        out = subprocess.run([exe, "-I", "-c", _PY_QUERY], capture_output=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        if out.returncode == 0:
            info = json.loads(out.stdout.decode("utf-8").strip().splitlines()[-1])
            info["executable"] = os.path.realpath(info["executable"]) if not WINDOWS \
                else info["executable"]
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        info = None
    return info


def python_matches(info, need):
    return (info is not None and not info.get("in_venv")
            and info["implementation"] == need["implementation"]
            and info["version"].split(".")[:2] == need["version"].split(".")[:2]
            and info["cache_tag"] == need["cache_tag"]
            and info["platform"] == need["platform"])


def _python_names(major, minor):
    """File names an interpreter of that version goes by, most specific first."""
    return ([f"python{major}.{minor}"] if minor else []) + \
        [f"python{major or 3}", "python", "python.exe"]


#: bounds of interpreter discovery: a source that stalls or floods is skipped
PY_LIST_TIMEOUT = 10            # seconds ``py -0p`` may take
PY_LIST_LIMIT = 64 * 1024       # bytes of its output read at most
DISCOVERY_MAX = 32              # entries taken from any one source or folder


class PythonSources:
    """Where discovery looks beyond fixed paths: the ``py`` launcher command
    (argv before ``-0p``), a reader of the PEP 514 registry tree and the
    environment mapping; None takes this machine's (py and registry on Windows)."""

    def __init__(self, py=None, registry=None, env=None):
        self.env = os.environ if env is None else env
        self.py = py if py is not None or not WINDOWS else _py_launcher(self.env)
        self.registry = read_pep514 if registry is None and WINDOWS else registry


def _py_launcher(env):
    """[path] of the ``py`` launcher: on PATH, else where its installers put
    it (per user, then for all users); None if there is none."""
    local, windir = env.get("LOCALAPPDATA"), env.get("SystemRoot") or env.get("WINDIR")
    import shutil  # here: imported on first use, for a faster start
    found = shutil.which("py", path=env.get("PATH", ""))
    for exe in [found] + [os.path.join(d, *rest, "py.exe") for d, rest in
                          ((local, ("Programs", "Python", "Launcher")), (windir, ())) if d]:
        if exe and os.path.isfile(exe):
            return [exe]
    return None


def _mentions(tag, mm):
    """Whether a launcher or registry tag names version ``mm`` (X.Y)."""
    return bool(re.search(r"(?<![\d.])" + re.escape(mm) + r"(?!\d)", tag))


def _by_version(pairs, mm):
    """The paths of (tag, path) ``pairs``, the ones tagged ``mm`` first."""
    pairs = list(pairs)[:DISCOVERY_MAX]
    return [p for t, p in pairs if _mentions(t, mm)] + \
        [p for t, p in pairs if not _mentions(t, mm)]


def bounded_output(argv, timeout=PY_LIST_TIMEOUT, limit=PY_LIST_LIMIT):
    """The text ``argv`` prints, or "" if it fails, takes over ``timeout``
    seconds or prints over ``limit`` bytes (it is killed then)."""
    import subprocess  # here: imported on first use, for a faster start
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except (OSError, ValueError):
        return ""
    got = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.read(limit + 1)),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    try:
        if reader.is_alive() or not got or len(got[0]) > limit or proc.wait(timeout=1) != 0:
            return ""
    except subprocess.TimeoutExpired:
        return ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not reader.is_alive():
            proc.stdout.close()
    try:
        return got[0].decode("utf-8")
    except UnicodeDecodeError:     # the old launcher writes the ANSI code page
        return got[0].decode("mbcs" if WINDOWS else "latin-1", "replace")


#: one ``py -0p`` line: the new launcher's `` -V:3.11 *  C:\..``, the old
#: one's `` -3.11-64  C:\.. *``; ``(venv)`` lines and path-less lines never match
_PY_LIST_LINE = _Regex(r"^\s*(-V:\S+|-\d[\w.\-]*)\s+(?:\*\s+)?(\S.*?)(?:\s+\*)?\s*$")


def parse_py_list(text):
    """(tag, path) of each interpreter in ``py -0p`` output, in its order."""
    out = []
    for line in text.splitlines()[:DISCOVERY_MAX * 2]:
        m = _PY_LIST_LINE.match(line)
        if m and (m[2][1:3] == ":\\" or m[2][:2] == "\\\\" or m[2][:1] == "/"):
            out.append((m[1].lstrip("-").removeprefix("V:"), m[2]))
    return out


def launcher_pythons(mm, sources):
    """Interpreters the ``py`` launcher lists (``py -0p``), ``mm`` first."""
    if not sources.py:
        return []
    return _by_version(parse_py_list(bounded_output([*sources.py, "-0p"])), mm)


def read_pep514():
    """This machine's PEP 514 tree: {view: {company: {tag: {"InstallPath":
    folder, "ExecutablePath": exe}}}} of HKCU, HKLM and HKLM's 32-bit view."""
    import winreg  # exists only on Windows; only called there
    views = (("HKCU", winreg.HKEY_CURRENT_USER, 0),
             ("HKLM", winreg.HKEY_LOCAL_MACHINE, winreg.KEY_WOW64_64KEY),
             ("HKLM-32", winreg.HKEY_LOCAL_MACHINE, winreg.KEY_WOW64_32KEY))
    tree = {}
    for view, hive, flag in views:
        try:
            with winreg.OpenKey(hive, r"Software\Python", 0, winreg.KEY_READ | flag) as key:
                tree[view] = {c: _reg_tags(winreg, key, c, flag)
                              for c in _reg_subkeys(winreg, key) if c != "PyLauncher"}
        except OSError:
            continue
    return tree


def _reg_subkeys(winreg, key):
    """The first names of the subkeys of ``key`` (bounded)."""
    out = []
    for i in range(DISCOVERY_MAX):
        try:
            out.append(winreg.EnumKey(key, i))
        except OSError:
            break
    return out


def _reg_tags(winreg, key, company, flag):
    """{tag: {"InstallPath", "ExecutablePath"}} of one company's key."""
    tags = {}
    try:
        with winreg.OpenKey(key, company, 0, winreg.KEY_READ | flag) as ck:
            for tag in _reg_subkeys(winreg, ck):
                tags[tag] = values = {}
                with contextlib.suppress(OSError), \
                        winreg.OpenKey(ck, tag + r"\InstallPath", 0, winreg.KEY_READ | flag) as ik:
                    for field, name in (("InstallPath", ""), ("ExecutablePath", "ExecutablePath")):
                        with contextlib.suppress(OSError):
                            values[field] = winreg.QueryValueEx(ik, name)[0]
    except OSError:
        pass
    return tags


def registry_pythons(mm, sources):
    """Interpreters the PEP 514 registry names (its ``ExecutablePath``, else
    ``python.exe`` in its ``InstallPath``), ``mm`` first; a bad tree is skipped."""
    if sources.registry is None:
        return []
    pairs = []
    try:
        for companies in sources.registry().values():
            for company, tags in companies.items():
                for tag, v in tags.items():
                    exe = v.get("ExecutablePath") or (
                        v.get("InstallPath") and _windows_path(v["InstallPath"], "python.exe"))
                    if isinstance(exe, str) and exe:
                        pairs.append((f"{company}/{tag}", exe))
    except (OSError, ImportError, AttributeError, TypeError):
        return []
    return _by_version(pairs, mm)


def uv_python_dirs(env):
    """Folders uv installs Pythons in: ``UV_PYTHON_INSTALL_DIR``, else its
    data folder's ``python`` (``%APPDATA%\\uv\\data``, ``$XDG_DATA_HOME/uv``...)."""
    if env.get("UV_PYTHON_INSTALL_DIR"):
        return [env["UV_PYTHON_INSTALL_DIR"]]
    if WINDOWS:
        appdata = env.get("APPDATA")
        return [os.path.join(appdata, "uv", "data", "python"),
                os.path.join(appdata, "uv", "python")] if appdata else []
    data = env.get("XDG_DATA_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return [os.path.join(data, "uv", "python")]


def uv_pythons(mm, sources):
    """Interpreters uv manages (``<impl>-X.Y.Z-<platform>`` folders), newest first."""
    out = []
    for root in uv_python_dirs(sources.env):
        try:
            names = sorted(os.listdir(root), reverse=True)[:DISCOVERY_MAX * 4]
        except OSError:
            continue
        names = [n for n in names if re.match(r"[a-z]+-" + re.escape(mm) + r"[.+\-]", n)]
        for n in names[:DISCOVERY_MAX]:
            out += [os.path.join(root, n, "python.exe")] if WINDOWS else \
                [os.path.join(root, n, "bin", f"python{mm}"), os.path.join(root, n, "bin", "python3")]
    return out


def path_pythons(names, sources):
    """The usual names found on the environment's PATH, then this interpreter."""
    import shutil  # here: imported on first use, for a faster start
    path = sources.env.get("PATH", "")
    return [f for f in (shutil.which(n, path=path) for n in names[:-1]) if f] + [sys.executable]


def known_pythons(major, minor, sources):
    """The folders interpreters of that version usually are in: pyenv's,
    the system's, the python.org installer's on Windows."""
    mm, env, out = f"{major}.{minor}", sources.env, []
    vdir = os.path.join(env.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv"), "versions")
    with contextlib.suppress(OSError):
        for v in sorted(os.listdir(vdir), reverse=True)[:DISCOVERY_MAX * 4]:
            if v.startswith(mm + ".") or v == mm:
                out.append(os.path.join(vdir, v, "bin", f"python{mm}"))
    for d in ("/usr/local/bin", "/usr/bin", "/opt/homebrew/bin"):
        out.append(os.path.join(d, f"python{mm}"))
    if WINDOWS:
        local = env.get("LOCALAPPDATA")
        for base in ([os.path.join(local, "Programs", "Python")] if local else []) + \
                [env.get("ProgramFiles", r"C:\Program Files")]:
            out.append(os.path.join(base, f"Python{major}{minor}", "python.exe"))
    return out


def discover_pythons(version, hints=(), homes=(), search=True, sources=None):
    """([path], looked): existing paths where an interpreter of ``version``
    is likely to be, best first, de-duplicated: ``hints``, its usual names in
    ``homes``, then (``search``) each source; ``looked`` names the sources."""
    major, minor = (version.split(".") + ["", ""])[:2]
    mm, names = f"{major}.{minor}", _python_names(major, minor)
    recorded = list(hints) + [os.path.join(h, n) for h in homes if h for n in names]
    groups = [("recorded base", recorded)]
    if search:
        s = sources or PythonSources()
        groups += [("py -0p", launcher_pythons(mm, s) if s.py else None),
                   ("registry", registry_pythons(mm, s) if s.registry else None),
                   ("uv " + os.pathsep.join(uv_python_dirs(s.env)), uv_pythons(mm, s)),
                   ("PATH", path_pythons(names, s)),
                   ("known folders", known_pythons(major, minor, s))]
    seen, result, looked = set(), [], []
    for label, paths in groups:
        if paths is None:
            continue
        found = 0
        for c in paths:
            key = c and os.path.normcase(os.path.abspath(c))
            if c and key not in seen and os.path.exists(c):
                seen.add(key)
                result.append(c)
                found += 1
        looked.append(f"{label} ({found})")
    return result, looked


def python_candidates(version, hints=(), homes=(), search=True, sources=None):
    """The one candidate list of :func:`discover_pythons`, best first."""
    return discover_pythons(version, hints, homes, search, sources)[0]


def venv_links(root, bindir):
    """Absolute targets of the symlinks in a venv's ``bindir`` (its interpreter links)."""
    folder, links = os.path.join(root, bindir), []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            p = os.path.join(folder, name)
            if os.path.islink(p) and os.path.isabs(os.readlink(p)):
                links.append(os.readlink(p))
    return links


def venv_base_python(root, cfg, hints, facts=None):
    """(path, facts) of the interpreter the venv at ``root`` was made from:
    the first of ``hints``, then of the names in its ``home``, that runs;
    never one inside the environment (its files come from the image: running
    one would run the image). (None, None) if none does. ``facts``: as for
    :func:`query_python`."""
    version = cfg.get("version") or cfg.get("version_info") or ""
    for c in python_candidates(version, hints, [cfg.get("home")], search=False):
        if not _inside(c, root):
            info = query_python(c, facts)
            if info is not None and not _inside(info["executable"], root):
                return c, info
    return None, None


def find_python(need, explicit=None, hint=None, sources=None, facts=None):
    """(executable, info) of an interpreter that fits ``need``: ``explicit``,
    else the first discovered (``sources``: :class:`PythonSources`) that does.
    ``facts``: the store that remembers interpreters (:func:`query_python`)."""
    want = f"{need['implementation']} {'.'.join(need['version'].split('.')[:2])} ({need['platform']})"
    if explicit:
        info = query_python(explicit, facts)
        if info is None:
            raise PythonError(f"cannot run the interpreter {explicit}",
                              "pass --python with a working python executable")
        if info.get("in_venv"):
            raise PythonError(f"{explicit} belongs to a virtual environment",
                              "pass its base interpreter with --python")
        if not python_matches(info, need):
            raise PythonError(
                f"{explicit} is {info['implementation']} {info['version']} ({info['platform']}) "
                f"but the image needs {want}", "pass --python with a matching interpreter")
        return info["executable"], info
    if hint and os.path.exists(hint):  # the recorded base first: most often no search at all
        info = query_python(hint, facts)
        if python_matches(info, need):
            return info["executable"], info
    cands, looked = discover_pythons(need["version"], [hint], sources=sources)
    for cand in cands:
        info = query_python(cand, facts)
        if python_matches(info, need):
            return info["executable"], info
    mm = ".".join(need["version"].split(".")[:2])
    raise PythonError(f"no {want} interpreter found on this machine; looked in: "
                      + ", ".join(looked),
                      f"pass --python EXE, or install Python {mm}")


###############################################################################
# Venv logic: normalization ###################################################
###############################################################################

#: a match must not continue a longer name on either side
_BOUNDARY = rb"(?![A-Za-z0-9_.\-~+@\x80-\xff])"
_BOUNDARY_BEFORE = rb"(?<![A-Za-z0-9_.\-~+@\x80-\xff])"
_EXEC_HEADER = _Regex(
    rb"\A#!/bin/sh\n'''exec' (\"[^\"\n]*\"|'[^'\n]*'|[^\s'\"]+)([^\n]*?) \"\$0\" \"\$@\"\n' '''\n")
_SIMPLE_HEADER = _Regex(rb"\A#!(@@VOCKER:ENV@@[^\s]*)([^\n]*)\n")
_QUOTED_HEADER = _Regex(rb'\A#!("[^"\n]*")([^\n]*?)\n')
_ACTIVATE_RE = _Regex(r"(?i)^activate(\..*)?$|^activate_this\.py$")


def parse_pyvenv_cfg(text):
    cfg = {}
    for line in text.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            cfg[key.strip().lower()] = value.strip()
    return cfg


def detect_kind(root):
    if os.path.isfile(os.path.join(root, "pyvenv.cfg")):
        return "venv"
    for name in ("bin/python3", "bin/python", "python.exe", "python"):
        if os.path.isfile(os.path.join(root, name)):
            return "standalone"
    return None


class Normalizer:
    """Turns machine-specific text into templates, and back.

    ``spellings`` maps each placeholder to the strings it replaces; the
    longest strings are replaced first.
    """

    def __init__(self, env_paths, pyexe_paths=(), pyhome_paths=(), prompt=None, win=None):
        self.win = WINDOWS if win is None else win
        pairs = []
        for ph, paths in ((PH_ENV, env_paths), (PH_PYEXE, pyexe_paths),
                          (PH_PYHOME, pyhome_paths)):
            for p in paths:
                if p:
                    pairs.append((os.fsencode(p), ph))
        # longest first so that /a/b/python wins over /a/b
        pairs.sort(key=lambda p: -len(p[0]))
        seen, self.pairs = set(), []
        for raw, ph in pairs:
            if raw not in seen:
                seen.add(raw)
                self.pairs.append((raw, re.compile(_BOUNDARY_BEFORE + re.escape(raw) + _BOUNDARY), ph))
        self.env_needles = [raw for raw, _, ph in self.pairs if ph == PH_ENV]
        self.prompt = prompt.encode("utf-8") if prompt else None

    def find(self, data):
        """Which placeholders' strings occur in ``data``."""
        return [raw for raw, rx, ph in self.pairs if raw in data and rx.search(data)]

    def normalize(self, data, filename):
        """Template bytes for ``data``, or None if nothing machine-specific is in it."""
        if not self.find(data):
            return None
        if PH_MARK in data:
            raise InvalidInputError(f"{filename} already holds vocker placeholders",
                                    "remove the '@@VOCKER:' text from it")
        for raw, rx, ph in self.pairs:
            data = rx.sub(ph.replace(b"\\", b"\\\\"), data)
        data = canonical_header(data, self.win)
        if _ACTIVATE_RE.match(filename):
            data = template_prompt(data, self.prompt, filename)
        return data


#: where venv >= 3.13.1 writes shlex.quote(path/prompt) into activate, .csh, .fish;
#: a bare path there becomes '@@VOCKER:ENV@@', the form of a path that needs quotes
_SH_ENV_RE = _Regex(rb"(VIRTUAL_ENV[= ]|\$\((?:cyg|wsl)path )" + PH_ENV + rb"(?=\)|\r?\n)")
_SH_PROMPT_AT = (rb"(VIRTUAL_ENV_PROMPT[= ])({q})(?=\r?\n)", rb'(\(")({q})("\))',
                 rb"(4B8BBE\) )({q})( \()")


def template_prompt(data, prompt, filename):
    """An activate script's prompt (and 3.13.1+'s quoted path) as placeholders,
    in every form venv 3.8-3.14 writes."""
    posix = not filename.lower().endswith((".bat", ".ps1", ".py", ".nu"))
    if posix:
        data = _SH_ENV_RE.sub(lambda m: m.group(1) + b"'" + PH_ENV + b"'", data)
    if not prompt:
        return data
    if posix:  # shlex-quoted first: 'a b' and bare web (3.13.1+)
        q = re.escape(shlex.quote(prompt.decode("utf-8")).encode("utf-8"))
        for at in _SH_PROMPT_AT:
            data = re.sub(at.replace(b"{q}", q), lambda m: m.group(1) + PH_SHPROMPT
                          + (m.group(3) if m.lastindex == 3 else b""), data)
    p = re.escape(prompt)
    data = re.sub(rb"\(" + p + rb"\) ", b"(" + PH_PROMPT + b") ", data)
    data = re.sub(rb'"' + p + rb'"', b'"' + PH_PROMPT + b'"', data)
    if not posix:  # activate.bat: set "VIRTUAL_ENV_PROMPT=web"
        data = re.sub(rb"(VIRTUAL_ENV_PROMPT=)" + p + rb'(?="|\r?\n)', rb"\1" + PH_PROMPT, data)
    return data


def canonical_header(data, win=None):
    """Fold the header forms distlib writes into ``#!<exe><args>\\n``: on
    POSIX the ``/bin/sh`` exec form (a path with a space or over the shebang
    limit), on Windows ``#!"<exe>"`` (a path with a space)."""
    win = WINDOWS if win is None else win
    m = (_QUOTED_HEADER if win else _EXEC_HEADER).match(data)
    if m:
        exe = m.group(1)
        if exe[:1] in (b'"', b"'"):
            exe = exe[1:-1]
        if exe.startswith(PH_ENV):
            return b"#!" + exe + m.group(2) + b"\n" + data[m.end():]
    return data


def render_template(data, values, target=None):
    """Substitute placeholders; write the script header ``target`` (default:
    this machine) needs.
    Windows launchers (``MZ``...) are rendered structurally."""
    if data[:2] == b"MZ":
        if split_launcher(data) is not None:
            return render_launcher(data, PH_ENV, values[PH_ENV])
        if split_uv_trampoline(data) is not None:
            return render_uv_trampoline(data, PH_ENV, values[PH_ENV])
        raise InvalidInputError("an executable template is not a launcher vocker can render")
    header = _SIMPLE_HEADER.match(data)
    for ph, plain in SHELL_PLACEHOLDERS:
        if ph in data:
            if plain not in values:
                raise InvalidInputError(f"template needs {ph.decode()} which this image kind lacks")
            word = shlex.quote(values[plain].decode("utf-8", "surrogateescape"))
            data = data.replace(ph, word.encode("utf-8", "surrogateescape"))
    for ph in PLACEHOLDERS:
        if ph in data:
            if ph not in values:
                raise InvalidInputError(f"template needs {ph.decode()} which this image kind lacks")
            data = data.replace(ph, values[ph])
    if header:
        line_end = data.index(b"\n")
        rest = data[line_end + 1:]
        exe_len = len(header.group(1)) - len(PH_ENV) + len(values[PH_ENV])
        exe, post = data[2:2 + exe_len], data[2 + exe_len:line_end]
        quoted = b'"' + exe + b'"' if b" " in exe else exe
        if (target or Target.local()).win:
            data = b"#!" + quoted + post + b"\n" + rest
        elif b" " in exe or line_end + 1 > SHEBANG_MAX:
            data = (b"#!/bin/sh\n'''exec' " + quoted + post + b' "$0" "$@"\n'
                    + b"' '''\n" + rest)
    return data


def path_spellings(path):
    """The spellings of an absolute path that files may contain."""
    out = {path}
    real = os.path.realpath(path)
    out.add(real)
    return sorted(out)


# A venv copied (cp -a) or moved keeps naming the place it was made at: its
# scripts' "#!" lines, bin/activate's VIRTUAL_ENV, pyvenv.cfg's command. That
# old path is one more spelling of the environment when the evidence agrees;
# otherwise commit refuses: a container must never run another environment.

#: VIRTUAL_ENV set to a literal path in activate (sh), activate.csh, activate.fish
_VIRTUAL_ENV_RE = _Regex(
    r"""^[ \t]*(?:(?:export[ \t]+)?VIRTUAL_ENV=|(?:setenv|set[ \t]+-gx)[ \t]+VIRTUAL_ENV[ \t]+)"""
    r"""(?:"([^"$`\\\n]*)"|'([^'\n]*)'|([\w@%+=:,./-]+))[ \t]*$""", re.M)  # bare: 3.13.1+
COPIED_VENV_HINT = ("commit the original environment, or recreate this one where it is "
                    "(python -m venv, then reinstall its packages)")


def activate_prefix(root):
    """The literal path the activate scripts set VIRTUAL_ENV to, or None (no
    such script, or computed values). Different literal values are refused."""
    found = set()
    for name in ("activate", "activate.csh", "activate.fish"):
        try:
            with open(os.path.join(root, "bin", name), "rb") as f:
                text = f.read(1 << 20).decode("utf-8", "surrogateescape")
        except OSError:
            continue
        found |= {a or b or c for a, b, c in _VIRTUAL_ENV_RE.findall(text)}
    if len(found) > 1:
        raise InvalidInputError(f"cannot commit {root}: its activate scripts name more than "
                                f"one environment ({', '.join(sorted(found))})", COPIED_VENV_HINT)
    return found.pop() if found else None


def shebang_exe(head):
    """The interpreter a script's first bytes run (both of distlib's header
    forms), or None."""
    m = _EXEC_HEADER.match(head)
    if m:
        exe = m.group(1)
        return os.fsdecode(exe[1:-1] if exe[:1] in (b'"', b"'") else exe)
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].split()
        return os.fsdecode(words[0]) if words else None
    return None


def script_prefixes(root):
    """{prefix: script} for the scripts in bin/ that run ``<prefix>/bin/<name>``
    where this environment has a bin/<name>: where its interpreter was."""
    bindir, out = os.path.join(root, "bin"), {}
    try:
        names = sorted(os.listdir(bindir))
    except OSError:
        return out
    for name in names:
        path = os.path.join(bindir, name)
        try:
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                exe = shebang_exe(f.read(4096))
        except OSError:
            continue  # the walk reports what cannot be read
        if exe and os.path.isabs(exe):
            exe_dir, exe_name = os.path.split(exe)
            if (os.path.basename(exe_dir) == "bin" and exe_name.startswith("python")
                    and os.path.lexists(os.path.join(bindir, exe_name))):
                out.setdefault(os.path.dirname(exe_dir), f"bin/{name}")
    return out


def old_prefix(root, cfg, base_paths):
    """Where the venv at ``root`` was made, if it was copied or moved from there
    (its activate scripts name it, confirmed by a script or pyvenv.cfg's
    command), else None; raise when the evidence of another place disagrees."""
    own = set(path_spellings(root))
    base_bins = set(base_paths) | {os.path.realpath(p) for p in base_paths}
    scripts = {p: s for p, s in script_prefixes(root).items()
               if p not in own and os.path.join(p, "bin") not in base_bins}
    act = activate_prefix(root)
    if act is not None and act in own:
        act = None
    if act is None:
        if scripts:
            p, script = next(iter(scripts.items()))
            raise InvalidInputError(f"cannot commit {root}: {script} runs the Python of "
                                    f"another environment ({p})", COPIED_VENV_HINT)
        return None
    if set(scripts) - {act}:
        raise InvalidInputError(f"cannot commit {root}: its scripts name other environments "
                                f"than the one bin/activate names ({act})", COPIED_VENV_HINT)
    if os.path.realpath(act) == os.path.realpath(root):
        return act  # the same folder through a symlink
    _check_old_prefix(root, act, base_paths)
    command = cfg.get("command", "")
    if act not in scripts and not (" -m venv " in command and command.endswith(" " + act)):
        raise InvalidInputError(f"cannot commit {root}: bin/activate names {act}, and neither "
                                "a script nor pyvenv.cfg confirms it was made there",
                                COPIED_VENV_HINT)
    return act


def _check_old_prefix(root, old, base_paths):
    """Raise unless ``old`` may be templated as the environment's path: a
    plain absolute path, apart from the folder and from the base Python, and
    either gone (moved) or a venv (the original)."""
    why = None
    if (not os.path.isabs(old) or os.path.normpath(old) != old or old == os.sep
            or _CONTROL_RE.search(old)):
        why = "not a plain absolute path"
    elif any(_inside(root, s) or _inside(s, root) for s in path_spellings(old)):
        why = f"it holds or lies inside {root}"
    elif any(_inside(b, s) or _inside(s, b) for s in path_spellings(old) for b in base_paths):
        why = "it holds or lies inside the base Python"
    elif os.path.lexists(old) and not os.path.isfile(os.path.join(old, "pyvenv.cfg")):
        why = "it exists and is not a venv"
    if why:
        raise InvalidInputError(f"cannot commit {root}: it names {old} as its old location, "
                                f"and {why}", COPIED_VENV_HINT)


def venv_old_paths(root, cfg, env_paths, prompt, base_paths):
    """(env_paths, prompt) of the venv at ``root``, with the old path of a
    copied or moved venv (old_prefix) as one more spelling and its name as
    the prompt it was made with."""
    old = old_prefix(root, cfg, base_paths)
    if old is None:
        return env_paths, prompt
    return sorted(set(env_paths) | set(path_spellings(old))), prompt and os.path.basename(old)


###############################################################################
# Windows launchers ###########################################################
###############################################################################

# Console scripts on Windows are .exe launchers: a stub, a "#!" line naming the
# environment's python.exe, and an appended zip. Their templates keep the
# binary layout with the path replaced by a placeholder and the zip's
# timestamps normalized; rendering changes the "#!" line only.
#
# distlib launcher: ``stub + shebang_line + zip``. The zip is found through its
# End Of Central Directory record (searched from the end; a comment may follow
# it, nothing else); it starts at ``eocd - cd_size - cd_offset`` and its central
# directory and local headers must parse. The shebang is the last ``#!`` before
# the zip (as the C launcher reads it), free of NUL/CR/LF up to a 1-4 byte CR/LF
# ending (pip writes ``\n\r\n``, pypa/installer ``\n``) that ends at the zip.
# uv trampoline, tail layouts: ``stub [+ zip] + utf8_path + u32le(len) + magic``
# with magic UVUV, UVSC (script) or UVPY (python proxy, no zip); uv >= 0.8 keeps
# the path in PE resources, which vocker detects and refuses.
# Normalized zip: entries keep their order, names, comments, flags, method and
# compressed bytes; times become 1980-01-01 00:00, timestamp and uid/gid extra
# fields go, "version made by" is MS-DOS 2.0 (or "version needed"), attributes
# are 0 (0x10 for directories), data descriptors go, offsets are recomputed.

#: The distlib launcher reads this many bytes before the zip to find ``#!``
#: (``MAX_PATH``); a longer shebang line (including its line ending) makes
#: the launcher fail with "Failed to find shebang" / a truncated path.
LAUNCHER_SHEBANG_MAX = 260

# How far before the zip we look for ``#!`` when *parsing* (more lenient than
# the launcher itself, so we never mis-split an over-long but valid line).
_SHEBANG_SEARCH_WINDOW = 32 * 1024

_LFH_SIG = b"PK\x03\x04"
_CDH_SIG = b"PK\x01\x02"
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"

_LFH = struct.Struct("<4s5H3L2H")  # 30 bytes
_CDH = struct.Struct("<4s6H3L5H2L")  # 46 bytes
_EOCD = struct.Struct("<4s4H2LH")  # 22 bytes

# DOS date/time for 1980-01-01 00:00:00
_DOS_DATE_1980 = (0 << 9) | (1 << 5) | 1
_DOS_TIME_0 = 0

# Extra fields that carry timestamps or machine-specific ownership.
_VOLATILE_EXTRA_IDS = frozenset(
    {
        0x000A,  # NTFS times
        0x000D,  # PKWARE Unix (atime, mtime, uid, gid)
        0x5455,  # "UT" extended timestamp
        0x5855,  # "UX" Info-ZIP Unix, old (atime, mtime, uid, gid)
        0x7855,  # "Ux" Info-ZIP Unix, new-ish (uid, gid)
        0x7875,  # "ux" Info-ZIP Unix, newest (uid, gid)
    }
)

_UV_TAIL_MAGICS = (b"UVUV", b"UVSC", b"UVPY")
_UV_MAX_PATH_LEN = 32 * 1024
#: "UV_TRAMPOLINE_KIND" in UTF-16-LE (spelt out: that codec costs an import at start)
_UV_RSRC_MARKER = bytes(c for ch in b"UV_TRAMPOLINE_KIND" for c in (ch, 0))

_EXE_END_RE = _Regex(rb"\.exe(?=$|[\"\s])", re.IGNORECASE)


# --------------------------------------------------------------------------
# zip reading
# --------------------------------------------------------------------------


class _Entry:
    """One zip member: its central-directory fields, extra fields and raw data."""

    __slots__ = (
        "version_needed",
        "flags",
        "method",
        "crc",
        "csize",
        "usize",
        "name",
        "cd_extra",
        "local_extra",
        "comment",
        "data",
    )


def _find_eocd(data):
    """Offset of the EOCD record whose comment ends exactly at ``len(data)``, or None;
    searched backwards over the last 64 KiB + 22 bytes, as zip readers do."""
    n = len(data)
    lo = max(0, n - (_EOCD.size + 0xFFFF))
    pos = data.rfind(_EOCD_SIG, lo)
    while pos >= lo and pos != -1:
        if pos + _EOCD.size <= n:
            (comment_len,) = struct.unpack_from("<H", data, pos + 20)
            if pos + _EOCD.size + comment_len == n:
                return pos
        pos = data.rfind(_EOCD_SIG, lo, pos + len(_EOCD_SIG) - 1)
    return None


def _read_eocd(data, eocd_pos):
    """``(entry count, central directory start, zip start, archive comment)`` of
    the EOCD at ``eocd_pos``; single-disk archives without zip64 only."""
    if eocd_pos < 0 or eocd_pos + _EOCD.size > len(data):
        raise ZipFormatError("EOCD out of range")
    (sig, disk, disk_cd, n_disk, n_total, cd_size, cd_off, clen) = _EOCD.unpack_from(
        data, eocd_pos
    )
    if sig != _EOCD_SIG:
        raise ZipFormatError("bad EOCD signature")
    if 0xFFFF in (disk, disk_cd, n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_off):
        raise ZipFormatError("zip64 archives are not supported")
    if eocd_pos >= 20 and data[eocd_pos - 20 : eocd_pos - 16] == _ZIP64_LOCATOR_SIG:
        raise ZipFormatError("zip64 archives are not supported")
    if disk != 0 or disk_cd != 0 or n_disk != n_total:
        raise ZipFormatError("multi-disk archives are not supported")
    comment = data[eocd_pos + _EOCD.size : eocd_pos + _EOCD.size + clen]
    cd_start = eocd_pos - cd_size
    zip_start = cd_start - cd_off
    if cd_start < 0 or zip_start < 0:
        raise ZipFormatError("central directory out of range")
    return n_total, cd_start, zip_start, comment


def _read_cd_entry(data, p, end):
    """The central-directory record at ``p`` (which must end by ``end``):
    ``(entry without its local parts, local header offset, next record)``."""
    if p + _CDH.size > end:
        raise ZipFormatError("truncated central directory")
    (sig, _made_by, version_needed, flags, method, _time, _date, crc, csize, usize,
     nlen, xlen, mlen, _disk_start, _iattr, _eattr, hoff) = _CDH.unpack_from(data, p)
    if sig != _CDH_SIG:
        raise ZipFormatError("bad central directory signature")
    if 0xFFFFFFFF in (csize, usize, hoff):
        raise ZipFormatError("zip64 entries are not supported")
    q = p + _CDH.size
    e = _Entry()
    e.version_needed, e.flags, e.method = version_needed, flags, method
    e.crc, e.csize, e.usize = crc, csize, usize
    e.name = data[q : q + nlen]
    e.cd_extra = data[q + nlen : q + nlen + xlen]
    e.comment = data[q + nlen + xlen : q + nlen + xlen + mlen]
    nxt = q + nlen + xlen + mlen
    if nxt > end:
        raise ZipFormatError("truncated central directory entry")
    return e, hoff, nxt


def _read_local(data, e, lho, cd_start):
    """Fill ``e``'s local extra field and data from the local header at ``lho``;
    both must lie before the central directory."""
    if lho + _LFH.size > cd_start:
        raise ZipFormatError("local header out of range")
    (lsig, _lver, _lflags, _lmethod, _lt, _ld, _lcrc, _lcs, _lus, lnlen, lxlen) = (
        _LFH.unpack_from(data, lho)
    )
    if lsig != _LFH_SIG:
        raise ZipFormatError("bad local header signature")
    lname_start = lho + _LFH.size
    data_start = lname_start + lnlen + lxlen
    data_end = data_start + e.csize
    if data_end > cd_start:
        raise ZipFormatError("entry data out of range")
    e.local_extra = data[lname_start + lnlen : data_start]
    e.data = data[data_start:data_end]


def _read_zip(data, eocd_pos):
    """``(zip_start, entries, archive_comment)`` of the zip whose EOCD is at
    ``eocd_pos``; raises :class:`ZipFormatError` on anything odd."""
    n_total, cd_start, zip_start, comment = _read_eocd(data, eocd_pos)
    entries = []
    p = cd_start
    for _ in range(n_total):
        e, hoff, p = _read_cd_entry(data, p, eocd_pos)
        _read_local(data, e, zip_start + hoff, cd_start)
        entries.append(e)
    if p != eocd_pos:
        raise ZipFormatError("central directory size mismatch")
    return zip_start, entries, comment


def _read_standalone_zip(zip_bytes):
    """``(entries, archive_comment)`` of data that is one zip and nothing else."""
    eocd = _find_eocd(zip_bytes)
    if eocd is None:
        raise ZipFormatError("no End Of Central Directory record at the end of the data")
    start, entries, comment = _read_zip(zip_bytes, eocd)
    if start != 0:
        raise ZipFormatError("zip has %d bytes of prepended data; pass only the zip" % start)
    return entries, comment


def _entry_content(e):
    """The uncompressed content of ``e``, checked against its size and CRC."""
    if e.method == 0:
        content = e.data
    elif e.method == 8:
        d = zlib.decompressobj(-15)
        try:
            content = d.decompress(e.data) + d.flush()
        except zlib.error as exc:
            raise ZipFormatError("entry %r has bad deflate data: %s" % (e.name, exc)) from None
    else:
        raise ZipFormatError("compression method %d is not supported" % e.method)
    if len(content) != e.usize or (zlib.crc32(content) & 0xFFFFFFFF) != e.crc:
        raise ZipFormatError("entry %r fails its CRC/size check" % e.name)
    return content


# --------------------------------------------------------------------------
# zip writing
# --------------------------------------------------------------------------


def _set_entry_content(e, content):
    """Replace an entry's content, storing it uncompressed with a fresh CRC."""
    e.method = 0
    e.data = content
    e.crc = zlib.crc32(content) & 0xFFFFFFFF
    e.csize = e.usize = len(content)
    e.flags &= ~0x0006  # deflate option bits mean nothing for stored data


def _strip_volatile_extra(extra):
    """Drop timestamp / ownership extra fields; keep all others in order.
    Malformed extra data is kept verbatim (it is still deterministic)."""
    out = bytearray()
    p = 0
    while p < len(extra):
        if p + 4 > len(extra):
            return extra
        hid, hlen = struct.unpack_from("<HH", extra, p)
        if p + 4 + hlen > len(extra):
            return extra
        if hid not in _VOLATILE_EXTRA_IDS:
            out += extra[p : p + 4 + hlen]
        p += 4 + hlen
    return bytes(out)


def _local_record(e, flags):
    """``e``'s local header (fixed time, no volatile extras), name, extra and data."""
    extra = _strip_volatile_extra(e.local_extra)
    header = _LFH.pack(_LFH_SIG, e.version_needed, flags, e.method, _DOS_TIME_0,
                       _DOS_DATE_1980, e.crc, e.csize, e.usize, len(e.name), len(extra))
    return header + e.name + extra + e.data


def _central_record(e, flags, offset):
    """``e``'s central-directory record for a local header at ``offset``."""
    extra = _strip_volatile_extra(e.cd_extra)
    version_made_by = max(20, e.version_needed & 0xFF)  # create_system 0 (MS-DOS)
    external_attr = 0x10 if e.name.endswith(b"/") else 0  # MS-DOS dir bit
    header = _CDH.pack(_CDH_SIG, version_made_by, e.version_needed, flags, e.method,
                       _DOS_TIME_0, _DOS_DATE_1980, e.crc, e.csize, e.usize, len(e.name),
                       len(extra), len(e.comment), 0, 0, external_attr, offset)
    return header + e.name + extra + e.comment


def _write_zip(entries, comment):
    """Serialise entries as a normalised, standalone zip."""
    out = bytearray()
    cd = bytearray()
    for e in entries:
        if e.flags & 0x1:
            raise ZipFormatError("encrypted entries are not supported")
        flags = e.flags & ~0x0008  # no data descriptor: sizes are in the header
        offset = len(out)
        out += _local_record(e, flags)
        cd += _central_record(e, flags, offset)
    if len(entries) > 0xFFFE or len(out) > 0xFFFFFFFE or len(cd) > 0xFFFFFFFE:
        raise ZipFormatError("result would need zip64")
    eocd = _EOCD.pack(
        _EOCD_SIG, 0, 0, len(entries), len(entries), len(cd), len(out), len(comment)
    )
    return bytes(out) + bytes(cd) + eocd + comment


def normalize_zip(zip_bytes):
    """``zip_bytes`` rewritten deterministically (see the section comment), so zips
    differing only in timestamps and attributes give identical bytes. Raises
    :class:`ZipFormatError` unless it is one standalone single-disk, plain zip."""
    entries, comment = _read_standalone_zip(bytes(zip_bytes))
    return _write_zip(entries, comment)


# --------------------------------------------------------------------------
# path spellings
# --------------------------------------------------------------------------


def _strip_trailing_seps(p):
    """``p`` (str or bytes) without trailing separators, keeping roots like ``C:\\``."""
    sep = "\\/" if isinstance(p, str) else b"\\/"
    q = p.rstrip(sep)
    if not q or (len(q) == 2 and q[1:2] in (":", b":")):
        return p[: len(q) + 1] if len(p) > len(q) else p
    return q


def windows_spellings(path):
    """UTF-8 spellings of Windows ``path`` a file may hold: as given, all-``\\``,
    all-``/``, each with both drive-letter cases; no trailing separator (but a
    bare root), no duplicates, as given first (ANSI code pages, ``\\\\?\\``: no)."""
    p = _strip_trailing_seps(path)
    forms = [p, p.replace("/", "\\"), p.replace("\\", "/")]
    out = []
    for f in forms:
        cands = [f]
        if len(f) >= 2 and f[1] == ":" and f[0].isascii() and f[0].isalpha():
            cands += [f[0].upper() + f[1:], f[0].lower() + f[1:]]
        for c in cands:
            b = c.encode("utf-8")
            if b not in out:
                out.append(b)
    out.sort(key=len, reverse=True)  # stable: keeps "as given" first
    return out


def _canon(b, ignore_case):
    """``b`` with ``\\`` separators and a lower-case drive letter (or all lower case)."""
    b = b.replace(b"/", b"\\")
    if ignore_case:
        return b.lower()  # ASCII only, by design
    if len(b) >= 2 and b[1:2] == b":":
        return b[:1].lower() + b[1:]
    return b


def _match_env_prefix(path, env_spellings, ignore_case):
    """Length of the env-path prefix of ``path`` (followed by a separator),
    or None.  Slashes and drive-letter case never matter."""
    cp = _canon(path, ignore_case)
    for s in sorted((bytes(x) for x in env_spellings), key=len, reverse=True):
        s = _strip_trailing_seps(s)
        if not s:
            continue
        cs = _canon(s, ignore_case)
        if cs.endswith(b"\\"):  # a root like C:\ -- the separator is in it
            if cp.startswith(cs) and len(cp) > len(cs):
                return len(cs) - 1
            continue
        if cp.startswith(cs) and len(cp) > len(cs) and cp[len(cs) : len(cs) + 1] == b"\\":
            return len(cs)
    return None


def _contains_env(data, env_spellings, ignore_case):
    """True if ``data`` holds any spelling of the environment path anywhere."""
    hay = data.lower() if ignore_case else data
    for s in env_spellings:
        s = _strip_trailing_seps(bytes(s))
        if not s:
            continue
        variants = {s, s.replace(b"/", b"\\"), s.replace(b"\\", b"/")}
        for v in list(variants):
            if len(v) >= 2 and v[1:2] == b":":
                variants.add(v[:1].upper() + v[1:])
                variants.add(v[:1].lower() + v[1:])
        for v in variants:
            if (v.lower() if ignore_case else v) in hay:
                return True
    return False


def _shebang_bytes(what, value):
    """``value`` as bytes, refused when empty or holding a quote, CR, LF or NUL."""
    value = bytes(value)
    if not value or any(c in value for c in b'"\r\n\x00'):
        raise InvalidInputError(
            f"{what} cannot go into a launcher's #! line: {os.fsdecode(value)!r}",
            "it must be non-empty and free of quotes, newlines and NUL")
    return value


def _check_placeholder(placeholder):
    """The placeholder as bytes, checked for use in a shebang line."""
    return _shebang_bytes("placeholder", placeholder)


def _check_env_path(env_path):
    """The environment path as bytes without trailing separators, checked for use
    in a shebang line."""
    return _strip_trailing_seps(_shebang_bytes("environment path", env_path))


# --------------------------------------------------------------------------
# distlib launchers
# --------------------------------------------------------------------------


def _split_launcher(data):
    """:func:`split_launcher` on bytes, without its guard against surprises."""
    if len(data) < 64 or data[:2] != b"MZ":
        return None
    eocd = _find_eocd(data)
    if eocd is None:
        return None
    try:
        zip_start, entries, _comment = _read_zip(data, eocd)
    except ZipFormatError:
        return None
    if not entries or zip_start < 4:
        return None
    lo = max(0, zip_start - _SHEBANG_SEARCH_WINDOW)
    idx = data.rfind(b"#!", lo, zip_start)
    if idx < 2:  # not found, or would leave no "MZ" stub
        return None
    line = data[idx:zip_start]
    body = line.rstrip(b"\r\n")
    term = line[len(body) :]
    if not term or len(term) > 4 or len(body) <= 2:
        return None
    if b"\r" in body or b"\n" in body or b"\x00" in body:
        return None
    return data[:idx], line, data[zip_start:]


def split_launcher(data):
    """``(stub, shebang_line, zip_bytes)`` of a distlib launcher (layout in the
    section comment), their concatenation being ``data``; None for anything
    else, never raising on garbage."""
    try:
        return _split_launcher(bytes(data))
    except Exception:  # pragma: no cover - belt and braces for garbage input
        return None


def _parse_shebang(line):
    """``(exe, quoted, args, terminator)`` for a launcher shebang line, parsed
    like the C launcher (``#!``, optional whitespace, a quoted executable or
    one ending in ``.exe``), or None."""
    body = line.rstrip(b"\r\n")
    term = line[len(body) :]
    if not body.startswith(b"#!"):
        return None
    rest = body[2:].lstrip(b" \t")
    if rest.startswith(b'"'):
        end = rest.find(b'"', 1)
        if end < 2:
            return None
        return rest[1:end], True, rest[end + 1 :], term
    m = _EXE_END_RE.search(rest)
    if m is None:
        return None
    return rest[: m.end()], False, rest[m.end() :], term


def launcher_template(data, env_spellings, placeholder, *, ignore_case=False):
    """``stub + #!"placeholder\\rest_of_exe" + args + line end + normalized zip`` when
    ``data`` is a distlib launcher whose executable lies in the environment, else None.
    Raises :class:`UnsupportedLauncherError` when such a launcher cannot be templated."""
    placeholder = _check_placeholder(placeholder)
    parts = split_launcher(data)
    if parts is None:
        return None
    stub, line, zip_bytes = parts
    parsed = _parse_shebang(line)
    if parsed is None:
        return None
    exe, _quoted, args, term = parsed
    n = _match_env_prefix(exe, env_spellings, ignore_case)
    if n is None:
        return None
    rest = exe[n:]
    if b'"' in rest or b'"' in args:
        raise UnsupportedLauncherError("shebang %r has unexpected quotes" % line)
    try:
        zip_norm = normalize_zip(zip_bytes)
    except ZipFormatError as exc:
        raise UnsupportedLauncherError(
            "launcher names the environment but its zip cannot be normalised: %s" % exc.reason
        ) from None
    template = stub + b'#!"' + placeholder + rest + b'"' + args + term + zip_norm
    if _contains_env(template, env_spellings, ignore_case):
        raise UnsupportedLauncherError(
            "launcher still contains the environment path outside its shebang line"
        )
    return template


def render_launcher(template, placeholder, env_path, *, strict=True):
    """The launcher for ``env_path`` from a :func:`launcher_template`: only the ``#!``
    line changes, its executable quoted iff it holds a space (as distlib does); with
    ``strict``, a line over :data:`LAUNCHER_SHEBANG_MAX` bytes is refused."""
    placeholder = _check_placeholder(placeholder)
    env_path = _check_env_path(env_path)
    parts = split_launcher(template)
    if parts is None:
        raise InvalidInputError("not a launcher template")
    stub, line, zip_bytes = parts
    parsed = _parse_shebang(line)
    if parsed is None or not parsed[1] or not parsed[0].startswith(placeholder):
        raise InvalidInputError(
            "template shebang %r does not start with the placeholder" % line)
    exe, _quoted, args, term = parsed
    exe = env_path + exe[len(placeholder) :]
    exe_field = b'"' + exe + b'"' if b" " in exe else exe
    new_line = b"#!" + exe_field + args + term
    if strict and len(new_line) > LAUNCHER_SHEBANG_MAX:
        raise InvalidInputError(
            "shebang line for %r is %d bytes; the Windows launcher only reads %d"
            % (env_path, len(new_line), LAUNCHER_SHEBANG_MAX),
            "choose a shorter target path")
    return stub + new_line + zip_bytes


# --------------------------------------------------------------------------
# uv trampolines
# --------------------------------------------------------------------------


def _split_uv_tail(data):
    """:func:`split_uv_trampoline` on bytes, without its guard against surprises."""
    magic = data[-4:]
    if magic not in _UV_TAIL_MAGICS or len(data) < 2 + 8:
        return None
    (plen,) = struct.unpack_from("<L", data, len(data) - 8)
    if plen == 0 or plen > _UV_MAX_PATH_LEN or plen + 8 + 2 > len(data):
        return None
    path = data[len(data) - 8 - plen : len(data) - 8]
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(c in path for c in b"\x00\r\n"):
        return None
    front = data[: len(data) - 8 - plen]
    if front[:2] != b"MZ":
        return None
    if magic == b"UVPY":
        return front, b"", path, magic
    eocd = _find_eocd(front)
    if eocd is None:
        return None
    try:
        zip_start, entries, _c = _read_zip(front, eocd)
    except ZipFormatError:
        return None
    if not entries or zip_start < 2:
        return None
    return front[:zip_start], front[zip_start:], path, magic


def split_uv_trampoline(data):
    """``(stub, zip_bytes, python_path, magic)`` of a tail-layout uv trampoline
    (``zip_bytes`` empty for ``UVPY``); None for anything else, including the
    PE-resource layout; never raises."""
    try:
        return _split_uv_tail(bytes(data))
    except Exception:  # pragma: no cover
        return None


def uv_trampoline_format(data):
    """``"UVUV"``, ``"UVSC"`` or ``"UVPY"`` for a tail-layout uv trampoline,
    ``"rsrc"`` for the PE-resource layout of uv >= 0.8, else None; never raises."""
    try:
        data = bytes(data)
        if len(data) < 64 or data[:2] != b"MZ":
            return None
        if _split_uv_tail(data) is not None:
            return data[-4:].decode("ascii")
        if _UV_RSRC_MARKER in data:
            return "rsrc"
    except Exception:  # pragma: no cover
        return None
    return None


def is_uv_trampoline(data):
    """True if ``data`` is a uv trampoline executable of any known layout."""
    return uv_trampoline_format(data) is not None


def _uv_tail(stub, zip_bytes, path, magic):
    """A tail-layout uv trampoline from its parts."""
    return stub + zip_bytes + path + struct.pack("<L", len(path)) + magic


def _rewrite_main_shebang(zip_bytes, fn):
    """Normalise ``zip_bytes``; pass the executable of ``__main__.py``'s first
    ``#!`` line to ``fn(exe) -> new_exe | None``.  Returns (zip, changed)."""
    entries, comment = _read_standalone_zip(zip_bytes)
    changed = False
    for e in entries:
        if e.name != b"__main__.py":
            continue
        content = _entry_content(e)
        nl = content.find(b"\n")
        first = content if nl < 0 else content[:nl]
        body = first.rstrip(b"\r")
        if not body.startswith(b"#!"):
            continue
        new_exe = fn(body[2:])
        if new_exe is not None:
            _set_entry_content(e, b"#!" + new_exe + content[len(body) :])
            changed = True
    return _write_zip(entries, comment), changed


def _refuse_rsrc_trampoline(data, env_spellings, ignore_case):
    """Refuse a PE-resource uv trampoline that embeds the environment path."""
    if uv_trampoline_format(data) == "rsrc" and _contains_env(data, env_spellings, ignore_case):
        raise UnsupportedLauncherError(
            "uv trampoline stores the Python path in PE resources (uv >= 0.8 layout); "
            "rewriting it needs PE resource editing, which is not supported",
            "create the environment with `uv venv --relocatable` (relative Python path, "
            "nothing to template) or install console scripts with pip")


def uv_trampoline_template(data, env_spellings, placeholder, *, ignore_case=False):
    """A tail-layout uv trampoline with the environment prefix of its Python path and
    ``__main__.py`` shebang replaced by ``placeholder``, zip normalized; None if it is
    none or names no environment. Raises :class:`UnsupportedLauncherError` if it can't."""
    placeholder = _check_placeholder(placeholder)
    data = bytes(data)
    parts = split_uv_trampoline(data)
    if parts is None:
        _refuse_rsrc_trampoline(data, env_spellings, ignore_case)
        return None
    stub, zip_bytes, path, magic = parts

    def swap(exe):
        n = _match_env_prefix(exe, env_spellings, ignore_case)
        return None if n is None else placeholder + exe[n:]

    new_path = swap(path)
    new_zip, zip_changed = zip_bytes, False
    if zip_bytes:
        try:
            new_zip, zip_changed = _rewrite_main_shebang(zip_bytes, swap)
        except ZipFormatError as exc:
            if new_path is None and not _contains_env(data, env_spellings, ignore_case):
                return None
            raise UnsupportedLauncherError(
                "uv trampoline zip cannot be templated: %s" % exc.reason
            ) from None
    if new_path is None and not zip_changed:
        return None
    template = _uv_tail(stub, new_zip, new_path if new_path is not None else path, magic)
    if _contains_env(template, env_spellings, ignore_case):
        raise UnsupportedLauncherError(
            "uv trampoline still contains the environment path after templating"
        )
    return template


def render_uv_trampoline(template, placeholder, env_path):
    """Inverse of :func:`uv_trampoline_template`: ``env_path`` for ``placeholder`` at the
    start of the tail Python path and the ``__main__.py`` shebang (unquoted, as uv does)."""
    placeholder = _check_placeholder(placeholder)
    env_path = _check_env_path(env_path)
    parts = split_uv_trampoline(template)
    if parts is None:
        raise InvalidInputError("not a uv trampoline template")
    stub, zip_bytes, path, magic = parts

    def fill(exe):
        return env_path + exe[len(placeholder) :] if exe.startswith(placeholder) else None

    new_path = fill(path)
    if new_path is None:
        new_path = path
    if zip_bytes:
        zip_bytes, _ = _rewrite_main_shebang(zip_bytes, fill)
    return _uv_tail(stub, zip_bytes, new_path, magic)


###############################################################################
# Commit: environment -> image ################################################
###############################################################################


class _FileJob:
    """One regular file of a commit: its stat, then (read, or known from a
    cache) its blob."""

    __slots__ = ("rel", "path", "name", "executable", "st", "blob", "size", "csize",
                 "template", "read", "new", "offset", "readonly", "linked")

    def __init__(self, rel, path, st, exec_bits=True):
        # a compact stat: (dev, ino, size, mtime_ns, ctime_ns); a full
        # os.stat_result costs ~600 bytes a file
        self.rel, self.path = rel, path
        self.name = rel.rsplit("/", 1)[-1]
        self.executable = exec_bits and bool(st.st_mode & 0o111)
        self.st = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self.blob = None
        self.size = st.st_size
        self.csize = None
        self.template = False
        self.read = False   # content was read (no cache hit)
        self.readonly = not st.st_mode & 0o222
        self.linked = st.st_nlink > 1
        self.new = False    # this commit added the blob: "pack" or "loose"
        self.offset = None

    def tree_entry(self):
        """The file's tree entry, once its blob is known."""
        if self.template:
            type_ = T_TEMPLATE_EXEC if self.executable else T_TEMPLATE
        else:
            type_ = T_EXEC if self.executable else T_FILE
        return TreeEntry(self.name, type_, self.blob)


def _is_record(rel):
    parts = rel.rsplit("/", 2)
    return len(parts) >= 2 and parts[-1] == "RECORD" and parts[-2].endswith(".dist-info")


def _commit_kind(root, kind):
    """The kind to commit ``root`` as (detected unless given); raises for a
    folder that is missing or not an environment."""
    if not os.path.exists(root):
        raise NotFoundError("path", root, "check the path of the environment")
    if not os.path.isdir(root):
        raise InvalidInputError(f"{root} is not a directory", "give the environment's folder")
    kind = kind or detect_kind(root)
    if kind is None:
        raise InvalidInputError(
            f"{root} is not a Python environment (no pyvenv.cfg, no python executable)",
            "pass --kind plain to commit it as a plain folder")
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}", "use venv, standalone or plain")
    return kind


def _read_pyvenv(root):
    cfg_path = os.path.join(root, "pyvenv.cfg")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = parse_pyvenv_cfg(f.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {cfg_path}: {exc}") from None
    if not cfg.get("home"):
        raise InvalidInputError(f"{cfg_path} has no 'home' line", "recreate the venv")
    return cfg


class _Source:
    """Commit step 1: what the folder is (kind, python facts, pyvenv.cfg
    settings, base interpreter) and the normalizers of the text in it that
    names this machine."""

    def __init__(self, store, root, target, kind=None, python=None):
        self.store, self.root, self.target = store, root, target.at(root)
        #: (image ID, recorded interpreter) when the folder is a container
        self.origin = store.container_origin(root)
        self.kind = _commit_kind(root, kind)
        self.python, self.pyvenv, self.base_exe, self.cfg = None, {}, None, {}
        self.exe_paths, self.home_paths, self.own_prompt = [], [], False
        if self.kind == "venv":
            self._venv(python)
        elif self.kind == "standalone":
            self._standalone()
        self.env_norm, self.cfg_norm = self._normalizers()

    def _venv(self, explicit):
        cfg = self.cfg = _read_pyvenv(self.root)
        links = venv_links(self.root, "Scripts" if self.target.win else "bin")
        info = self.target.python
        if info is not None:
            self.base_exe = info["executable"]
        else:
            recorded = self.origin[1] if self.origin else None
            self.base_exe, info = venv_base_python(
                self.root, cfg, [recorded, explicit, cfg.get("executable"), *links],
                facts=self.store)
        if info is None:
            raise PythonError(f"the base interpreter of {self.root} (home = {cfg['home']}) "
                              "does not run or lies inside the environment",
                              "pass --python with the interpreter that made the venv")
        self.python = python_facts(info)
        origin_py = self._origin_python()
        if origin_py is not None and python_matches(info, origin_py):
            self.python = origin_py  # a container: keep its image's facts
        # a path inside the environment is not the base interpreter: it is
        # templated as the environment's own
        exes = {explicit, cfg.get("executable"), *links, info["executable"], self.base_exe}
        self.exe_paths = sorted(p for p in exes if p and (self.target.elsewhere
                                                          or not _inside(p, self.root)))
        self.home_paths = [cfg["home"], self.target.parent(info["executable"])]
        self.pyvenv = {k: v for k, v in cfg.items() if k not in PYVENV_PATH_KEYS}
        self.own_prompt = "prompt" not in cfg

    def _standalone(self):
        # a container takes its image's facts: nothing in it runs. A folder
        # vocker did not make is the user's own Python: running it to learn
        # its version is what committing it asks for.
        self.python = self._origin_python()
        for name in ("bin/python3", "bin/python", "python.exe", "python"):
            p = os.path.join(self.root, name)
            if self.python is None and os.path.isfile(p):
                info = query_python(p)
                if info is not None:
                    self.python = python_facts(info)
        if self.python is None:
            raise InvalidInputError(f"the python in {self.root} does not run",
                                    "pass --kind plain to commit it as a plain folder")

    def _normalizers(self):
        """The one place the placeholders' spellings are computed: the
        environment's path, its base interpreter's and the prompt. Returns
        (normalizer of files, normalizer of pyvenv.cfg)."""
        t = self.target
        values = t.placeholders()
        env, prompt = [values[PH_ENV]], values[PH_PROMPT] if self.own_prompt else None
        if self.kind == "venv" and not t.win:  # a copied or moved venv: its old path too
            env, prompt = venv_old_paths(self.root, self.cfg, env, prompt,
                                         self.exe_paths + self.home_paths)
        env = t.spellings(env)
        return (Normalizer(env, prompt=prompt, win=t.win),
                Normalizer(env, t.spellings(self.exe_paths), t.spellings(self.home_paths),
                           win=t.win))

    def _origin_python(self):
        """The python facts of the image this folder is a container of."""
        if self.origin is None:
            return None
        try:
            return self.store.manifest(self.origin[0]).python
        except NotFoundError:
            return None


class _Folder:
    """One walked folder: names of its sub-folders, its file jobs, and its
    symlinks' final tree entries."""

    __slots__ = ("subdirs", "files", "links")

    def __init__(self):
        self.subdirs, self.files, self.links = [], [], []


class _Walker:
    """Commit step 2: scan the folder into folders and file jobs, by the name
    and link rules pull and create apply."""

    def __init__(self, source):
        self.root, self.target, self.cfg_norm = source.root, source.target, source.cfg_norm
        self.folders = {}   # relative path ("" is the top) -> _Folder
        self.files = []

    def walk(self):
        """Iterative, and bounded by MAX_DEPTH: the depth rule walk_image applies."""
        stack = [""]
        while stack:
            rel = stack.pop()
            folder = self.folders[rel] = _Folder()
            for e, st in self._scan(rel):
                mode, child = st.st_mode, f"{rel}/{e.name}" if rel else e.name
                if stat.S_ISDIR(mode):
                    if child.count("/") >= MAX_DEPTH:
                        raise InvalidInputError(
                            f"cannot commit {e.path}: folders nest more than {MAX_DEPTH} deep",
                            "flatten the folder tree; images cannot be created that deep")
                    folder.subdirs.append(e.name)
                    stack.append(child)
                elif stat.S_ISLNK(mode):
                    folder.links.append(self._symlink(child, e.name, os.readlink(e.path)))
                elif stat.S_ISREG(mode):
                    # Windows has no x bit (Python makes one up from .exe/.bat):
                    # a Windows image is the same whichever OS commits it
                    job = _FileJob(child, e.path, st, not self.target.win)
                    folder.files.append(job)
                    self.files.append(job)
                else:
                    raise InvalidInputError(f"{e.path} is a socket, pipe or device file",
                                            "remove it from the environment")
        return self

    def _scan(self, rel):
        """[(DirEntry, lstat)] of one folder, sorted, bytecode left out (it is
        compiled again at create), names checked by the rules pull applies."""
        path = os.path.join(self.root, rel) if rel else self.root
        try:
            with os.scandir(path) as it:
                items = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
        items = [e for e in items
                 if e.name != "__pycache__" and not e.name.endswith((".pyc", ".pyo"))]
        for e in items:
            try:
                self.target.check_name(validate_name(e.name))
            except InvalidInputError as exc:
                _check_locale_name(e.path)
                raise InvalidInputError(f"cannot commit {e.path}: {exc.message}",
                                        "rename the file") from None
        try:
            check_folder_names(e.name for e in items)
        except InvalidInputError as exc:
            raise InvalidInputError(f"cannot commit {path}: {exc.message}", exc.hint) from None
        if WINDOWS:  # scandir's stat has no st_dev, st_ino or st_nlink there: the stat
            return [(e, os.lstat(e.path)) for e in items]   # cache and pool hits need them
        return [(e, e.stat(follow_symlinks=False)) for e in items]

    def _symlink(self, rel, name, target):
        """The link's tree entry. Literal targets follow check_link_target,
        templated ones check_link_template: the rules create and pull apply."""
        raw = os.fsencode(target)
        if not self.target.is_absolute(target):
            check_link_target(rel, target)
            return TreeEntry(name, T_SYMLINK, raw.hex())
        tpl = self.cfg_norm.normalize(raw, name)
        try:
            if tpl is None:
                raise InvalidInputError(f"symlink {rel} points outside the environment")
            check_link_template(rel, tpl)
        except InvalidInputError:
            raise InvalidInputError(
                f"cannot commit {os.path.join(self.root, rel)}: symlink points outside "
                f"the environment to {target}",
                "make it relative or replace it with the file") from None
        return TreeEntry(name, T_SYMLINK_TEMPLATE, tpl.hex())


class _Contents:
    """Commit step 3: the blob of every file, from the stat cache, from pool
    inodes, or read, normalized and stored into ``pack``. ``scan`` (status,
    verify): nothing is stored or changed, pool damage is only recorded in
    ``damaged``; ``full``: every file is read, no cache trusted."""

    def __init__(self, source, pack, progress, scan=False, full=False):
        self.store, self.root, self.target = source.store, source.root, source.target
        self.env_norm, self.cfg_norm = source.env_norm, source.cfg_norm
        self.pack, self.progress = pack, progress
        self.scan, self.full = scan, full
        self.damaged = {}  # (dev, ino) -> (blob, exec, rel): a pool file written through a link
        self.warnings = []
        self.claim_lock = threading.Lock()
        self.claimed = set()
        self.unsealed = {}  # (dev, ino) -> (blob, exec, job): a pool link made writable

    def read_all(self, files):
        """Fill every job's blob: RECORD files last (they list the templates)."""
        self.progress.total = len(files)
        self.progress.total_bytes = sum(j.st[2] for j in files)
        self._lookup_known(files)
        records = [j for j in files if _is_record(j.rel) and not j.blob]
        misses = [j for j in files if not j.blob and not _is_record(j.rel)]
        # largest first: a big file started last would leave the other threads idle
        misses.sort(key=lambda j: -j.st[2])
        known = [j for j in files if j.blob]
        self.progress.update(len(known), nbytes=sum(j.st[2] for j in known))
        if misses:
            workers = min(len(misses), COMMIT_THREADS)
            with thread_pool(workers) as pool:
                for batch in _bounded_map(pool, self._read_batch, _batches(misses),
                                          2 * workers):
                    self.progress.update(len(batch), nbytes=sum(j.st[2] for j in batch))
        self._seal_or_drop()
        templated = {j.rel for j in files if j.template}
        for job in records:
            self._read_record(job, templated)
            self.progress.update(nbytes=job.st[2])
        self.progress.close()

    def close(self):
        self.store.close_readers()

    def _lookup_known(self, files):
        """Fill blob IDs from the stat cache and from pool inodes."""
        cache = self.store.stat_cache_under(self.root)
        pool_q = {}
        empty = EMPTY_ID
        for job in files:
            st = job.st
            if st[2] == 0:
                job.blob = empty
                continue
            if _is_record(job.rel):
                continue
            hit = cache.pop(job.path, None)
            if hit and hit[:5] == st and not self.full:
                job.blob, job.template = hit[5], bool(hit[6])
                continue
            if job.linked:  # maybe a hardlink of a pool file
                pool_q.setdefault(st[0], {}).setdefault(st[1], []).append(job)
        self._pool_hits(pool_q)
        # every blob named by a cache must still be in the store
        present = self.store.present_blobs({j.blob for j in files if j.blob})
        for job in files:
            if job.blob and job.blob not in present:
                if job.blob == empty:
                    self._store_bytes(job, b"")
                    job.read = True
                    continue
                job.blob, job.template = None, False

    def _pool_hits(self, pool_q):
        """Jobs that are hardlinks of intact pool files take their blob."""
        fixed_ns = FIXED_MTIME * 10**9
        damaged = {}
        for dev, by_ino in pool_q.items():
            for ino, blob, size, exe in self.store.pool_inodes_on(dev, by_ino):
                for job in by_ino[ino]:
                    if job.st[2] != size or job.st[3] != fixed_ns:
                        damaged[(dev, ino)] = (blob, bool(exe), job.rel)  # written through it
                    elif job.readonly and not self.full:
                        job.blob = blob
                    else:  # read to know (Windows: pip's rmtree in any container clears
                        self.unsealed[(dev, ino)] = (blob, bool(exe), job)  # it for all)
        if damaged:
            self._drop_damaged_pool(damaged)

    def _seal_or_drop(self):
        """Pool links found writable, now read: with the same bytes they get
        their read-only mode back, and so does every pool file that lost it the
        same way (.pyc ones too); other bytes are damage."""
        damaged = {(dev, ino): (blob, exe, job.rel)
                   for (dev, ino), (blob, exe, job) in self.unsealed.items()
                   if job.blob != blob or job.template}
        if len(damaged) < len(self.unsealed) and not self.scan:
            self.store.seal_pool()   # the mode is the inode's: pool and every link
        if damaged:
            self._drop_damaged_pool(damaged)

    def _drop_damaged_pool(self, damaged):
        """Pool files that were modified through a container's hardlink no
        longer match their blob: unlink them (the next create rebuilds them
        from the compressed blob) and say so; a scan only notes them."""
        if self.scan:
            self.damaged.update(damaged)
            return
        with self.store.transaction():
            for (dev, ino), (blob, exe, rel) in damaged.items():
                for gen in range(0, 64):
                    path = self.store.pool_path(blob, exe, gen)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        if gen:
                            break
                        continue
                    if (st.st_dev, st.st_ino) == (dev, ino):
                        _unlink_quiet(path)
                        break
                self.store.drop_pool_inode(dev, ino)
                only = self.store.blob_row(blob)[2] == POOL_ONLY
                self.warnings.append(
                    f"{rel} was changed in place while hardlinked to the store; the store's "
                    "copy was dropped (other containers made with hardlinks see the change)"
                    + ("; it was the only copy here: run vocker verify --repair --from REPO"
                       if only else ""))

    def _content(self, job, data):
        """Normalize, hash and store bytes of one file."""
        name = job.name
        if name == "uv_cache.json" and job.rel.rsplit("/", 2)[-2].endswith(".dist-info"):
            data = normalize_uv_cache(data)
        norm = self.cfg_norm if job.rel == "pyvenv.cfg" else self.env_norm
        if self.target.win and data[:2] == b"MZ" and name.lower().endswith(".exe"):
            needles = self.env_norm.env_needles
            tpl = launcher_template(data, needles, PH_ENV, ignore_case=True)
            if tpl is None and is_uv_trampoline(data):
                tpl = uv_trampoline_template(data, needles, PH_ENV, ignore_case=True)
            if tpl is not None:
                data = tpl
                job.template = True
                norm = None
        if norm is not None and norm.find(data):
            if b"\0" in data:
                self.warnings.append(
                    f"{job.rel}: holds the environment's path inside binary data; "
                    "it will point to the original location")
            else:
                tpl = norm.normalize(data, name)
                if tpl is not None:
                    data = tpl
                    job.template = True
        job.blob = hash_bytes(data)
        job.size = len(data)
        self._store_bytes(job, data)
        job.read = True

    def _claim(self, blob_id):
        """True if this thread should store ``blob_id`` (new to the store)."""
        if self.scan:
            return False
        with self.claim_lock:
            if blob_id in self.claimed:
                return False
            self.claimed.add(blob_id)
        return not self.store.has_blob(blob_id)

    def _store_bytes(self, job, data):
        if self._claim(job.blob):
            cdata = _cctx().compress(data)
            job.offset = self.pack.append(cdata)
            job.csize = len(cdata)
            job.new = "pack"

    def _read_job(self, job):
        if job.st[2] <= SMALL_FILE:
            with open(job.path, "rb") as f:
                data = f.read()
            self._content(job, data)
            return job
        # large file: stream; look for the environment path across chunks
        h = blake3.blake3()
        needles = self.env_norm.env_needles
        keep = max(len(n) for n in needles) if needles else 0
        tail, found, n = b"", False, 0
        with open(job.path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
                if not found and needles:
                    window = tail + chunk
                    found = any(x in window for x in needles)
                    tail = window[-keep:]
        if found:
            self.warnings.append(f"{job.rel}: holds the environment's path in a large file; "
                                 "it will point to the original location")
        job.blob = h.hexdigest()
        job.size = n
        if self._claim(job.blob):
            job.csize = self.store.write_blob_file(job.blob, job.path, n)
            job.new = "loose"
        job.read = True
        return job

    def _read_batch(self, jobs):
        for job in jobs:
            self._read_job(job)
        return jobs

    def _read_record(self, job, templated):
        with open(job.path, "rb") as f:
            data = f.read()
        data = normalize_record(data, job.rel, templated)
        self._content(job, data)


class _NullPack:
    """The pack of a scan: nothing is ever stored in it."""

    def append(self, cdata):
        raise AssertionError("a scan stores nothing")

    def finish(self):
        return None

    def abort(self):
        pass


class Committed:
    """What a commit made: its manifest and trees, the file jobs (each with
    its blob), the pack new blobs went to, the base interpreter, warnings."""

    def __init__(self, manifest, trees, files, pack_id, base_exe, warnings, damaged=None):
        self.manifest, self.trees, self.files = manifest, trees, files
        self.pack_id, self.base_exe, self.warnings = pack_id, base_exe, warnings
        self.damaged = damaged or {}

    def get_tree(self, store):
        """A ``get_tree`` over this commit's trees, then the store's."""
        return lambda tid: self.trees[tid] if tid in self.trees else store.tree(tid)

    def blob_rows(self):
        """(id, size, csize, pack, offset) of the blobs this commit added."""
        return [(j.blob, j.size, j.csize, self.pack_id if j.new == "pack" else None, j.offset)
                for j in self.files if j.new]

    def stat_rows(self):
        """Stat cache rows of the files that were read."""
        return [(j.path, *j.st, j.blob, int(j.template)) for j in self.files
                if j.read and j.st[2]]


class Committer:
    """Turns one directory into trees, blobs and a manifest, in named steps:
    the source (kind, python, placeholders), the walk, the file contents,
    the trees, the manifest. :meth:`run` returns a :class:`Committed`.
    ``scan``/``full``: only look (:class:`_Contents`); nothing is written."""

    def __init__(self, store, root, kind=None, python=None, labels=None, progress=None,
                 target=None, scan=False, full=False, recipe=None, parent=None):
        self.store, self.root = store, os.path.abspath(root)
        self.kind, self.python_arg = kind, python
        self.labels = dict(labels or {})
        #: a build's recipe and base image: given, the folder's origin is not asked
        self.recipe, self.parent = recipe, parent
        self.progress = progress or Progress("committing", enabled=False)
        self.target = target or Target.local()
        self.scan, self.full = scan or full, full

    def run(self):
        """Build the image; new blobs go into one pack, finished here (or
        aborted, with loose blobs the only other writes so far)."""
        source = _Source(self.store, self.root, self.target, self.kind, self.python_arg)
        pack = _NullPack() if self.scan else self.store.pack_writer()
        contents = _Contents(source, pack, self.progress, self.scan, self.full)
        try:
            walker = _Walker(source).walk()
            contents.read_all(walker.files)
            root_id, trees = build_trees({rel: ([*(j.tree_entry() for j in f.files), *f.links],
                                                f.subdirs)
                                          for rel, f in walker.folders.items()})
            manifest = self._manifest(source, root_id, walker.files)
            pack_id = pack.finish()
        except BaseException as exc:
            pack.abort()
            if _disk_full(exc):
                raise self.store.full_error() from None
            raise
        finally:
            contents.close()
        return Committed(manifest, trees, walker.files, pack_id, source.base_exe,
                         contents.warnings, contents.damaged)

    def _manifest(self, source, root_id, files):
        """The image's manifest; a container unchanged gives its image back
        (whatever recipe that records), changed names it as parent. A venv's
        manifest records the distributions installed in it (for audit)."""
        recipe = self.recipe
        if recipe is None and source.kind == "venv":
            recipe = Recipe("commit", installed=installed_distributions(files)).to_dict()
        manifest = Manifest(source.kind, root_id, python=source.python, pyvenv=source.pyvenv,
                            labels=self.labels, parent=self.parent, recipe=recipe)
        if source.origin is None or self.recipe is not None:
            return manifest
        try:
            origin = self.store.manifest(source.origin[0])
        except NotFoundError:
            return manifest
        manifest.labels = {**origin.labels, **self.labels}
        if dict(origin.to_dict(), parent=None, recipe=None) == dict(manifest.to_dict(),
                                                                    recipe=None):
            return origin
        manifest.parent = source.origin[0]
        return manifest


_DIST_INFO_FILES = ("METADATA", "INSTALLER", "direct_url.json")


def installed_distributions(files):
    """[{name, version, installer, editable}] of the ``*.dist-info`` folders
    among a commit's file jobs, sorted: what audit rebuilds a commit from."""
    found = collections.defaultdict(dict)
    for j in files:
        folder, _, name = j.rel.rpartition("/")
        if folder.endswith(".dist-info") and name in _DIST_INFO_FILES:
            found[folder][name] = j.path
    out = []
    for folder, paths in found.items():
        meta = _head_text(paths.get("METADATA"), 64 << 10).replace("\r\n", "\n")
        meta = meta.partition("\n\n")[0]
        name = re.search(r"^Name:[ \t]*(\S+)[ \t]*$", meta, re.M)
        version = re.search(r"^Version:[ \t]*(\S+)[ \t]*$", meta, re.M)
        if not (name and version and DIST_NAME_RE.fullmatch(name[1])
                and DIST_VERSION_RE.fullmatch(version[1])):
            continue  # not a distribution audit could name
        installer = _head_text(paths.get("INSTALLER"), 256).strip()
        try:
            url = read_json(_head_text(paths.get("direct_url.json"), 64 << 10).encode()
                            or b"{}", "direct_url.json", 64 << 10)
        except InvalidInputError:
            url = {}
        dir_info = url.get("dir_info") if isinstance(url, dict) else None
        out.append({"name": name[1], "version": version[1],
                    "installer": installer if INSTALLER_RE.fullmatch(installer) else None,
                    "editable": isinstance(dir_info, dict) and dir_info.get("editable") is True})
    return sorted(out, key=lambda d: (dist_key(d["name"]), d["version"], d["installer"] or ""))


def _head_text(path, limit):
    """Up to ``limit`` bytes of a small file as text ("" when there is none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _full_disk_error(exc, stage, target, store):
    """Name the disk that is full: the target's when the failing write was
    under the stage (or, unnamed, when it has less room), else the store's."""
    names = [os.path.abspath(n) for n in (getattr(exc, "filename", None),
                                          getattr(exc, "filename2", None))
             if isinstance(n, str)]
    if names:
        on_target = any(_inside(n, stage) for n in names)
    else:
        on_target = free_bytes(stage) <= free_bytes(store.home)
    if not on_target:
        return store.full_error()
    return EnvironmentProblem(f"the disk holding {os.path.dirname(target)} is full",
                              f"free some space there and retry, or create {target} elsewhere")


def _batches(jobs, nbytes=4 << 20, count=64):
    """Consecutive ``jobs`` in lists of at most ``count`` files or about
    ``nbytes``: one task each, so that many small files cost few tasks."""
    batch, size = [], 0
    for job in jobs:
        batch.append(job)
        size += job.st[2]
        if size >= nbytes or len(batch) >= count:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _bounded_map(pool, fn, items, window):
    """pool.map that keeps at most ``window`` tasks in flight (flat memory)."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def normalize_record(data, record_rel, templated):
    """Blank hash and size in RECORD for templated files and .pyc files."""
    base = record_rel.rsplit("/", 2)[0] if record_rel.count("/") >= 2 else ""
    out = []
    for line in data.split(b"\n"):
        stripped = line.rstrip(b"\r")
        if not stripped:
            out.append(line)
            continue
        import csv  # here: imported on first use, for a faster start
        try:
            row = next(csv.reader([stripped.decode("utf-8")]))
        except (UnicodeDecodeError, StopIteration, csv.Error):
            out.append(line)
            continue
        if len(row) < 3 or not row[1]:
            out.append(line)
            continue
        rel = _record_rel(base, row[0])
        if row[0].endswith(".pyc") or "/__pycache__/" in "/" + row[0].replace("\\", "/") \
                or rel in templated or _LOCAL_FACTS_RE.search(rel):
            ending = line[len(stripped):]
            field = row[0]
            if any(c in field for c in ',"\n'):
                field = '"' + field.replace('"', '""') + '"'
            out.append(f"{field},,".encode("utf-8") + ending)
        else:
            out.append(line)
    return b"\n".join(out)


#: files whose content records a local fact (the install time of a local wheel)
_LOCAL_FACTS_RE = _Regex(r"\.dist-info/uv_cache\.json$")
_UV_TIMESTAMP_RE = _Regex(rb'"timestamp":\{[^{}]*\}')


def normalize_uv_cache(data):
    """uv's ``uv_cache.json`` holds the source wheel's mtime: zero it."""
    return _UV_TIMESTAMP_RE.sub(b'"timestamp":{"secs_since_epoch":0,"nanos_since_epoch":0}', data)


def _record_rel(base, path):
    parts = base.split("/") if base else []
    for comp in path.replace("\\", "/").split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
        else:
            parts.append(comp)
    return "/".join(parts)


_tls = threading.local()


def _cctx():
    c = getattr(_tls, "cctx", None)
    if c is None:
        c = _tls.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def commit(store, path, tags=(), kind=None, python=None, labels=None, progress=None,
           target=None, recipe=None, parent=None, source=None):
    """Commit the environment at ``path``; returns a dict describing the image.
    ``target`` (default: this machine) says how the environment's system
    spells it (tests: :meth:`Target.windows`); ``recipe``, ``parent`` and
    ``source`` (the folder recorded, default ``path``): a build's."""
    t0 = time.monotonic()
    tags = [normalize_tag(t) for t in tags]
    check_labels(dict(labels or {}))
    with store.writing():  # from the first blob found present to the image's record
        c = Committer(store, path, kind=kind, python=python, labels=labels,
                      progress=progress, target=target, recipe=recipe, parent=parent).run()
        data = c.manifest.serialize()
        image_id = hash_bytes(data)
        with store.transaction():
            store.add_image(image_id, data, c.trees, c.blob_rows(), tags=tags,
                            source=os.path.abspath(source or path), base_exe=c.base_exe)
            store.cache_stats(c.stat_rows())
    files = c.files
    return {**image_info(store, image_id), "files_read": sum(1 for j in files if j.read),
            "bytes_read": sum(j.st[2] for j in files if j.read),
            "seconds": round(time.monotonic() - t0, 3), "warnings": c.warnings}


###############################################################################
# Create: image -> container ##################################################
###############################################################################

#: runs in the target interpreter (-I): compiles each job with py_compile into
#: a timestamp .pyc (valid for FIXED_MTIME sources) and prints one JSON line a
#: job, ``[idx, null]`` or ``[idx, "the error, one line"]``
_COMPILE_WORKER = r"""
import sys, json, py_compile
mode = py_compile.PycInvalidationMode.TIMESTAMP
for idx, src, cfile, dfile in json.loads(sys.stdin.read()):
    try:
        py_compile.compile(src, cfile, dfile, doraise=True, invalidation_mode=mode)
        err = None
    except py_compile.PyCompileError as exc:
        v = exc.exc_value
        err = "%s: %s" % (exc.exc_type_name, getattr(v, "msg", None) or v)
        if getattr(v, "lineno", None):
            err += " (line %d)" % v.lineno
    except Exception as exc:
        err = "%s: %s" % (type(exc).__name__, exc)
    sys.stdout.write(json.dumps([idx, err and err[:300]]) + "\n")
    sys.stdout.flush()
"""


def compile_pycs(exe, jobs, progress):
    """Compile ``jobs`` ([idx, source, .pyc path, name in tracebacks]) in
    parallel worker processes of the interpreter ``exe``; returns {idx: None
    when compiled, else the error}. Jobs no worker reported are absent."""
    n = max(1, min(os.cpu_count() or 1, (len(jobs) + 49) // 50))
    by_size = sorted(jobs, key=lambda j: -os.path.getsize(j[1]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    results = {}
    with thread_pool(n) as pool:
        list(pool.map(lambda part: _compile_part(exe, part, env, results, progress),
                      [by_size[i::n] for i in range(n)]))
    return results


def _compile_part(exe, jobs, env, results, progress):
    """One worker process: feed it ``jobs``, read its lines into ``results``.
    A worker that cannot start is tried once more (a process start can fail
    for a moment: a scanner holding the file); then its jobs stay unreported,
    like those of a worker that died."""
    import subprocess  # here: imported on first use, for a faster start
    for attempt in range(2):
        try:
            proc = subprocess.Popen([exe, "-I", "-c", _COMPILE_WORKER], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            break
        except OSError:
            if attempt:
                return
    with proc:
        with contextlib.suppress(OSError):  # it died (Windows: EINVAL): jobs stay unreported
            proc.stdin.write(json.dumps(jobs).encode("utf-8"))
            proc.stdin.close()
        wanted = {j[0] for j in jobs}
        for line in proc.stdout:
            with contextlib.suppress(ValueError, TypeError):
                idx, err = json.loads(line)
                if type(idx) is int and idx in wanted and (err is None or isinstance(err, str)):
                    results[idx] = err
                    progress.update()


def pyc_warning(failed, errors):
    """One warning line for the sources with no .pyc: ``failed`` [(name,
    source blob)] in image order, ``errors`` {blob: error} of this compile."""
    rel, blob = failed[0]
    why = errors.get(blob) or "it did not compile in an earlier create"
    n = len(failed)
    return terminal_safe(f"{n} .py file{'s' if n > 1 else ''} not compiled to .pyc "
                         f"(first: {rel}: {why[:300]})")


def walk_image(get_tree, root):
    """Yield ``(relative path, entry)`` for every entry below tree ``root``,
    parents before children. Before yielding anything, refuses names that
    collide (images must work on case-insensitive disks), trees nested more
    than MAX_DEPTH deep and images expanding to more than MAX_PATHS paths;
    while walking, bytecode entries (``__pycache__``, ``*.pyc``).
    ``get_tree(id)`` returns a parsed, verified Tree."""
    trees = _expansion(get_tree, root)
    stack = [("", root)]
    while stack:
        rel, tree_id = stack.pop()
        tree = trees[tree_id][0]
        for e in tree.entries:
            child = f"{rel}/{e.name}" if rel else e.name
            check_bytecode_name(child, e.name)
            if e.type == T_DIR:
                stack.append((child, e.ref))
            yield child, e


def _too_large(what):
    return InvalidInputError(f"image tree is too {what}",
                             f"images hold at most {MAX_PATHS} paths, "
                             f"{MAX_DEPTH} folders deep")


def _expansion(get_tree, root):
    """{tree id: (tree, paths below it, folders below it)} for every distinct
    tree under ``root``: each tree is fetched and checked once, so the work is
    linear in the size of the trees, not in the paths a DAG expands to."""
    done = {}
    stack = [(root, False)]
    while stack:
        tree_id, children_done = stack.pop()
        if tree_id in done and done[tree_id] is not None:
            continue
        if not children_done:
            if tree_id in done:  # entered again before finishing: a cycle
                raise _too_large("deep (its trees form a cycle)")
            tree = get_tree(tree_id)
            done[tree_id] = None
            check_folder_names(e.name for e in tree.entries)
            stack.append((tree_id, tree))
            for e in tree.entries:
                if e.type == T_DIR and done.get(e.ref) is None:
                    if e.ref in done:
                        raise _too_large("deep (its trees form a cycle)")
                    stack.append((e.ref, False))
            continue
        tree = children_done
        paths, depth = 0, 0
        for e in tree.entries:
            paths += 1
            if e.type == T_DIR:
                _, sub_paths, sub_depth = done[e.ref]
                paths += sub_paths
                depth = max(depth, sub_depth + 1)
        if paths > MAX_PATHS:
            raise _too_large("large")
        if depth > MAX_DEPTH:
            raise _too_large("deep")
        done[tree_id] = (tree, paths, depth)
    return done


def check_bytecode_name(rel, name):
    """Raise for a tree entry that is bytecode or a bytecode folder: commit
    never stores them, and vocker places the store's own ``.pyc`` files."""
    if name == "__pycache__" or name.endswith((".pyc", ".pyo")):
        raise InvalidInputError(f"image holds bytecode at {rel}",
                                "vocker compiles bytecode itself; commit the image without it")


class Plan:
    """What create makes of an image for one system's name rules: ``dirs``
    (parents first), ``files`` and ``links`` [(relative path, type, ref)],
    every name and link target checked, ``sizes`` {blob: size} of the files
    and ``templates`` {blob: bytes} of its small templates (verified when
    read). The store keeps it (:meth:`Store.plan`), so that the next create
    of the image walks no tree and decompresses nothing."""

    #: the first item of the kept JSON; a plan of another format is made again
    FORMAT = "plan-2"
    #: templates up to this size are kept in the plan (activate scripts: ~2 KB)
    TEMPLATE_MAX = 64 << 10

    def __init__(self, dirs, files, links, sizes, templates, cuts):
        self.dirs, self.files, self.links, self.sizes = dirs, files, links, sizes
        self.templates = templates
        #: (folders made first, end of the first half's folders, end of its
        #: files): two halves of whole sub-trees, made by two processes
        self.cuts = cuts

    def to_bytes(self):
        """Column-wise JSON, read back in ~1 ms for 5,000 files (no zlib:
        decompressing took longer than reading the rest)."""
        paths, types, refs = zip(*self.files) if self.files else ((), (), ())
        data = [self.FORMAT, self.dirs, paths, "".join(types), refs,
                [self.sizes.get(r, -1) for r in refs], self.links,
                {b: raw.hex() for b, raw in self.templates.items()}, self.cuts]
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data):
        """The plan :meth:`to_bytes` wrote, or None for another format: the
        store's own bytes, which it hands out only when their hash holds
        (never bytes from outside)."""
        if not data.startswith(b'["%s",' % cls.FORMAT.encode()):
            return None
        _, dirs, paths, types, refs, sizes, links, templates, cuts = json.loads(data)
        return cls(dirs, list(zip(paths, types, refs)), [tuple(link) for link in links],
                   {r: n for r, n in zip(refs, sizes) if n >= 0},
                   {b: bytes.fromhex(h) for b, h in templates.items()}, cuts)


def image_plan(store, image_id, manifest, target):
    """The :class:`Plan` of an image for ``target``: the store's, else made
    by walking the image's trees (refused before anything is written) and
    kept. Plans are keyed by the vocker version too: a newer one checks again."""
    rules = f"{__version__} {'win' if target.win else 'posix'}"
    data = store.plan(image_id, rules)
    plan = data and Plan.from_bytes(data)
    if plan:
        return plan
    dirs, files, links = _walk_plan(store, manifest, target)
    dirs, files, cuts = _halves(dirs, files)
    sizes = {**store.blob_sizes({ref for _, _, ref in files}), EMPTY_ID: 0}
    templates = {ref: store.read_blob(ref) for _, t, ref in files
                 if t in TEMPLATE_TYPES and sizes.get(ref, -1) <= Plan.TEMPLATE_MAX}
    plan = Plan(dirs, files, links, sizes, templates, cuts)
    store.set_plan(image_id, rules, plan.to_bytes())
    return plan


def _walk_plan(store, manifest, target):
    """Walk an image's trees: (dirs, files, links) with validated relative
    paths, link targets and names that ``target``'s system can hold."""
    dirs, files, links = [], [], []
    for child, e in walk_image(store.tree, manifest.root):
        target.check_name(e.name)
        if e.type == T_DIR:
            dirs.append(child)
        elif e.type in LINK_TYPES:
            if e.type == T_SYMLINK:
                check_link_target(child, e.target)
            else:
                check_link_template(child, bytes.fromhex(e.ref))
            links.append((child, e.type, e.ref))
        else:
            files.append((child, e.type, e.ref))
    dirs.sort(key=lambda r: r.count("/"))
    return dirs, files, links


#: a path of this many names or more belongs to the sub-tree named by its
#: first SPLIT_DEPTH names (``lib/python3.11/site-packages/numpy``)
SPLIT_DEPTH = 4
#: a folder costs a create about as much as this many hardlinks (new inode)
DIR_COST = 4


def _halves(dirs, files):
    """``dirs`` (parents first) and ``files`` in two halves of whole
    sub-trees, about half the files each, for two processes: -> (the
    folders above SPLIT_DEPTH, then the first half's, then the second's;
    the first half's files, then the second's; :attr:`Plan.cuts`)."""
    def tree(rel):
        return "/".join(rel.split("/", SPLIT_DEPTH)[:SPLIT_DEPTH])

    cost = collections.Counter(tree(rel) for rel, _, _ in files)
    for d in dirs:
        if d.count("/") >= SPLIT_DEPTH - 1:
            cost[tree(d)] += DIR_COST
    first, n, half = set(), 0, cost.total() / 2
    for name, count in cost.items():
        if n >= half:
            break
        first.add(name)
        n += count
    shallow = [d for d in dirs if d.count("/") < SPLIT_DEPTH - 1]
    deep = [[d for d in dirs if d.count("/") >= SPLIT_DEPTH - 1 and (tree(d) in first) == f]
            for f in (True, False)]
    halves = [[e for e in files if (tree(e[0]) in first) == f] for f in (True, False)]
    ready = next(((h, e) for h in halves for e in h
                  if e[0].count("/") < SPLIT_DEPTH and e[1] in FILE_TYPES), None)
    if ready:  # a file whose folder is made before the halves comes first: it settles
        ready[0].remove(ready[1])  # the link mode (Linker.place_tree)
        halves[0].insert(0, ready[1])
    return (shallow + deep[0] + deep[1], halves[0] + halves[1],
            [len(shallow), len(shallow) + len(deep[0]), len(halves[0])])


def _pid_alive(pid):
    if WINDOWS:
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _windows_pid_alive(pid):  # pragma: no cover - Windows only
    import ctypes  # here: used on Windows only
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() != 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _pid_started(pid):
    """When process ``pid`` started (epoch seconds), where the system says
    (Linux /proc), else None. Only on Linux: under Wine, Windows sees the
    Linux /proc as Z:\\proc, whose pids are not Windows pids."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            btime = next(int(l.split()[1]) for l in f if l.startswith(b"btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _create_dead(row, host):
    """True when the process that recorded pending create ``row`` is gone:
    same host, and its pid is not alive (or is a newer process)."""
    if row["host"] != host:
        return False
    if not _pid_alive(row["pid"]):
        return True
    started = _pid_started(row["pid"])
    return started is not None and started > row["started"] + 2


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Ctrl+C (SIGINT) inside the block takes effect when it ends: what the
    block does is done whole. Main thread only, and only where Ctrl+C is
    not ignored already (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if caught:
        raise KeyboardInterrupt


def _remove_leftover(store, row):
    """Remove what an interrupted create left: its staging folder, and PATH
    if it is still that folder (same inode and mtime); then forget the row."""
    path, stage = row["path"], row["stage"]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:  # anything else at PATH is not vocker's: it stays
        if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino, st.st_mtime_ns) == \
                (row["dev"], row["ino"], row["mtime_ns"]):
            rmtree(extended_path(path), trash=store.trash_dir_for(path))
    if os.path.isdir(stage) and not os.path.islink(stage):
        rmtree(stage, trash=store.trash_dir_for(path))
    store.drop_pending_create(path, stage)


def _remove_stale_stages(parent, name):
    """Remove staging folders that killed vocker processes left beside ``name``."""
    _remove_stale(parent, f".{name}.vocker-")


def _remove_stale(parent, prefix):
    """Remove the folders ``PREFIX<pid>-<anything>`` in ``parent`` whose
    process is gone (killed, or the machine stopped): vocker names each
    folder it works in so. Another user's (not ours to remove) stays."""
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        pid, dash, _ = entry[len(prefix):].partition("-")
        if entry.startswith(prefix) and dash and pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                rmtree(os.path.join(parent, entry))


def _is_compilable(rel, kind):
    if not rel.endswith(".py"):
        return False
    top = rel.split("/", 1)[0]
    if kind == "venv" and top in ("bin", "Scripts"):
        return False
    return "/" in rel or kind != "venv"


def _create_python(store, image_id, manifest, target, explicit):
    """(executable, facts) of the base interpreter a container of a venv
    image uses: the target's, else a matching one found on this machine;
    (None, None) for other kinds."""
    if manifest.kind != "venv":
        return None, None
    if manifest.python is None:
        raise InvalidInputError("venv image has no python requirement")
    given = target.python
    if given is not None:
        if not python_matches(given, manifest.python):
            raise PythonError("the given interpreter does not match the image")
        return given["executable"], given
    return find_python(manifest.python, explicit, store.base_exe(image_id), facts=store)


class _Materializer:
    """Create step: an image's folders, files and templates written into a
    staging folder, then (after the bytecode) its links; the stat cache rows
    of the files that are not pool inodes."""

    def __init__(self, store, manifest, path, target, linker, values, progress):
        self.store, self.manifest, self.path, self.target = store, manifest, path, target
        self.linker, self.values, self.progress = linker, values, progress
        self.templates = []  # templated files, with their blob

    def files(self, stage, plan, compile):
        """Write a plan's folders and files; returns the .py files to compile,
        as [(rel, blob, executable)]."""
        at, files, sizes, progress = os.path.join(stage, ""), plan.files, plan.sizes, self.progress
        shallow, mid, cut = plan.cuts
        dirs, paths = plan.dirs, files  # as the file functions take them (:func:`os_rel`)
        if os.sep != "/":
            dirs, paths = [os_rel(d) for d in dirs], [(os_rel(r), t, ref) for r, t, ref in files]
        make_folders(at, dirs[:shallow])
        self.store.checked_ids({ref for _, t, ref in files if t in FILE_TYPES})  # from trees
        self.linker.sizes = sizes
        progress.total_bytes = sum(sizes.get(ref, 0) for _, _, ref in files)
        halves = [[(ref, t == T_EXEC, at + rel) for rel, t, ref in part if t in FILE_TYPES]
                  for part in (paths[:cut], paths[cut:])]  # empty files too: one inode
        self.linker.place_tree(at, [(dirs[shallow:mid], halves[0]), (dirs[mid:], halves[1])],
                               progress)
        for (rel, t, ref), (path, _, _) in zip(files, paths):
            if t in TEMPLATE_TYPES:
                self._template(rel, t, ref, at + path, plan.templates)
                progress.update(nbytes=sizes.get(ref, 0))
        kind = self.manifest.kind
        return [(rel, ref, t == T_EXEC) for rel, t, ref in files
                if compile and t in FILE_TYPES and _is_compilable(rel, kind)]

    def _template(self, rel, type_, ref, dst, kept):
        raw = kept[ref] if ref in kept else self.store.read_blob(ref)
        data = render_template(raw, self.values, self.target)
        fd = create_exclusive(dst, 0o755 if type_ == T_TEMPLATE_EXEC else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.templates.append((rel, ref))

    def links(self, stage, links):
        """Links last: no file or folder is ever made through one."""
        for rel, type_, ref in links:
            os.symlink(self._link_target(rel, type_, ref), os.path.join(stage, os_rel(rel)))

    def _link_target(self, rel, type_, ref):
        if type_ == T_SYMLINK:
            target = bytes.fromhex(ref).decode("utf-8")
            check_link_target(rel, target)
            return target
        tpl = bytes.fromhex(ref)
        check_link_template(rel, tpl)
        return os.fsdecode(render_template(tpl, self.values, self.target))

    def stat_rows(self, stage, files):
        """[(final path, lstat, blob, template)] of the files that are not
        pool inodes: templates, and copies."""
        join, rows = os.path.join, []
        for rel, blob in self.templates:  # spelt as commit's scandir will: os.sep
            rel = os_rel(rel)
            rows.append((join(self.path, rel), os.lstat(join(stage, rel)), blob, 1))
        if self.linker.mode != "hardlink":
            blob_of = {join(stage, os_rel(rel)): ref for rel, t, ref in files
                       if t in FILE_TYPES}
            for path in self.linker.copies:
                if path in blob_of:
                    rel = os.path.relpath(path, stage)
                    rows.append((join(self.path, rel), os.lstat(path), blob_of[path], 0))
        return rows


class Creator:
    """Materializes one image at one path, in named steps: the base
    interpreter, the plan (every name and link checked), the staging folder,
    its files, bytecode and links, the final rename, the record."""

    def __init__(self, store, image_id, path, link_mode="auto", python=None,
                 compile=True, progress=None, target=None, checkpoint=None):
        self.store = store
        # checkpoint: test-only, called with the name of each crash window
        # ("pending", "staged", "materialized", "renamed")
        self.checkpoint = checkpoint or (lambda window: None)
        self.image_id = image_id
        self.manifest = store.manifest(image_id)
        self.path = os.path.abspath(path)
        self.target = (target or Target.local()).at(self.path)
        if self.target.elsewhere:  # nothing of an environment elsewhere runs here
            compile = False
        self.python_arg = python
        self.compile = compile
        self.progress = progress or Progress("creating", enabled=False)
        self.new_inodes = []
        self.linker = Linker(store, link_mode, self.new_inodes)
        self.exe = None
        self.info = None
        self.pyc_compiled = 0
        self.pyc_cached = 0
        self.pyc_shipped = 0
        self.shipped = set()  # the pyc blobs placed from shipped bytecode
        self.pyc_failed = 0
        self.pyc_rows = []
        self.pyc_file_rows = []
        self.stat_rows = []
        self.warnings = []
        self.repaired = 0

    def run(self):
        self._clear_leftover()
        self.exe, self.info = _create_python(self.store, self.image_id, self.manifest,
                                             self.target, self.python_arg)
        plan = image_plan(self.store, self.image_id, self.manifest, self.target)
        self.progress.total = len(plan.files)
        stage = self._stage_path()
        self.store.add_pending_create(self.path, stage, hostname())
        try:
            self.checkpoint("pending")
            self._build(stage, plan)
        except BaseException:
            self._abandon(stage)
            raise
        finally:
            self.progress.close()
        with _ctrl_c_deferred():  # the rename and its record: both, or neither
            try:
                if os.path.lexists(self.path):
                    raise ConflictError(f"{self.path} appeared while it was being created")
                os.rename(stage, self.path)
            except BaseException:
                self._abandon(stage)
                raise
            self.checkpoint("renamed")
            return self._record(stage)

    def _abandon(self, stage):
        with contextlib.suppress(OSError):
            rmtree(stage)
        with contextlib.suppress(sqlite3.Error):
            self.store.drop_pending_create(self.path, stage)

    def _stage_path(self):
        """A new staging folder's path beside the target (leftovers of dead
        vocker processes there removed)."""
        parent, name = os.path.dirname(self.path), os.path.basename(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            _remove_stale_stages(parent, name)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot create {self.path}: {exc.strerror}",
                                     "check the folder is writable") from None
        return extended_path(os.path.join(
            parent, f".{name}.vocker-{os.getpid()}-{random_hex(8)}"))

    def _build(self, stage, plan):
        """Make and fill the staging folder; remember it in the pending row."""
        try:
            os.mkdir(stage)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot create {self.path}: {exc.strerror}",
                                     "check the folder is writable") from None
        self.checkpoint("staged")
        values = {ph: os.fsencode(v) for ph, v in self.target.placeholders(self.exe).items()}
        m = _Materializer(self.store, self.manifest, self.path, self.target, self.linker,
                          values, self.progress)
        try:
            py_files = m.files(stage, plan, self.compile)
            if py_files and self.manifest.kind != "plain":
                self._pycs(stage, py_files)
            self.checkpoint("materialized")
            m.links(stage, plan.links)
            self.stat_rows = m.stat_rows(stage, plan.files)
        except FileExistsError as exc:  # names this disk folds together (case, Unicode form)
            raise InvalidInputError(
                f"two entries of the image name one file on this disk: "
                f"{os.path.relpath(exc.filename, stage)}",
                "create it on a disk that keeps such names apart") from None
        except (OSError, LinkModeError) as exc:
            if _disk_full(exc):
                raise _full_disk_error(exc, stage, self.path, self.store) from None
            raise
        self.store.set_pending_stage(self.path, stage, os.lstat(stage))


    def _clear_leftover(self):
        """Refuse an existing target, unless it is what an interrupted create
        of vocker left there: then remove that and go on."""
        store, target = self.store, self.path
        row = store.pending_create(target)
        if row is not None:
            if not _create_dead(row, hostname()):
                raise ConflictError(f"{target} is being created by vocker process {row['pid']}",
                                    "wait for it to finish, or choose another path")
            try:
                _remove_leftover(store, row)
            except OSError as exc:
                raise EnvironmentProblem(f"cannot remove the interrupted create at {target}: "
                                         f"{exc.strerror}", "remove it by hand") from None
        if os.path.lexists(target):
            raise ConflictError(f"{target} already exists",
                                "choose a new path, or remove it first (vocker rm PATH)")

    def _pyc_interpreter(self):
        """The interpreter that compiles: never one from the image (nothing
        from an image runs); for a standalone image, a matching one on this
        machine, else no compile and a warning."""
        if self.exe:
            return self.exe, self.info["cache_tag"]
        m = self.manifest
        if m.kind == "standalone" and m.python is not None:
            try:
                exe, info = find_python(m.python, self.python_arg)
            except PythonError as exc:
                self.warnings.append(f"no .pyc files compiled: {exc.message}")
                return None, None
            return exe, info["cache_tag"]
        return None, None

    def _pycs(self, stage, py_files):
        """Bytecode for ``py_files``: the store's intact compiled .pyc linked
        at once (:meth:`_link_cached`), then the missing ones compiled (or
        taken from the bytecode shipped with the image) and placed."""
        exe, tag = self._pyc_interpreter()
        if not exe:
            return
        store, at = self.store, os.path.join(stage, "")
        sources = {b for _, b, _ in py_files}
        known, sizes = store.cached_pycs(tag, sources)
        self._drop_unusable(known, {p for p in known.values() if p and p not in sizes}, sizes)
        placed, made = self._link_cached(at, py_files, known, sizes, tag)
        shipped = {b: p for b, p in store.shipped_pycs(self.image_id, tag).items()
                   if b in sources and not known.get(b)}
        first = {}
        for rel, blob, executable in py_files:
            if blob not in known and blob not in first and blob not in shipped:
                first[blob] = (rel, executable)
        errors = self._compile(exe, tag, first, known) if first else {}
        failed = []
        for rel, blob, _ in py_files:
            pyc = known.get(blob) or shipped.get(blob)
            if rel in placed:
                continue
            if not pyc:
                failed.append((rel, blob))
                continue
            folder, dst = _pyc_place(rel, tag)
            if folder not in made:
                os.mkdir(at + os_rel(folder))  # never an existing name: trees hold no __pycache__
                made.add(folder)
            if known.get(blob):
                self.linker.place_file(store.pool_path(pyc), at + os_rel(dst))
                self.pyc_cached += blob not in first
            else:  # a blob of the bytecode pulled with this image
                self.linker.place(pyc, False, at + os_rel(dst))
                self.shipped.add(pyc)
                self.pyc_shipped += 1
        if failed:
            self.pyc_failed = len(failed)
            self.warnings.append(pyc_warning(failed, errors))

    def _link_cached(self, at, py_files, known, sizes, tag):
        """Link the compiled .pyc of ``py_files`` (``known``: source -> pyc)
        whose pool file is intact, by :func:`link_intact` (two processes,
        whole ``__pycache__`` folders each); a missing or damaged one is
        dropped from ``known``, to be compiled again. -> (rels placed,
        folders made). Copies and reflinks are only checked here: the caller
        places them by the link mode."""
        if self.linker.mode != "hardlink":
            self._drop_unusable(known, {p for p in known.values() if p}, sizes)
            return set(), set()
        by_folder = {}
        for rel, blob, _ in py_files:
            if (pyc := known.get(blob)) and pyc in sizes:
                folder, dst = _pyc_place(rel, tag)
                by_folder.setdefault(folder, []).append((rel, (pyc, False, at + os_rel(dst))))
        cost = {f: len(jobs) + DIR_COST for f, jobs in by_folder.items()}
        folders, n, half = list(by_folder), 0, sum(cost.values()) / 2
        cut = next((i for i, f in enumerate(folders) if (n := n + cost[f]) >= half), len(folders))
        parts = [(fs, [job for f in fs for job in by_folder[f]])
                 for fs in (folders[:cut + 1], folders[cut + 1:])]
        links = [[j for _, j in jobs] for _, jobs in parts]
        done = link_intact(at, [([os_rel(f) for f in fs], js, self.store.pool_paths(js))
                                for (fs, _), js in zip(parts, links)], sizes,
                           self.store.pool_file_problem, Progress("linking", enabled=False))
        placed, rest = set(), []
        for (_, jobs), (linked, left) in zip(parts, done):
            placed.update(jobs[i][0] for i, _, _ in linked)
            rest += [jobs[i] for i in left]
        bad = self._drop_unusable(known, {pyc for _, (pyc, _, _) in rest}, sizes)
        for rel, (pyc, _, dst) in rest:
            if pyc not in bad:  # intact, at its link limit
                self.linker.place_file(self.store.pool_path(pyc), dst)
                placed.add(rel)
        self.pyc_cached += len(placed)
        return placed, set(folders)

    def _drop_unusable(self, known, pycs, sizes):
        """Check ``pycs`` (by their hash where ``sizes`` has none, then noting
        it); the missing or damaged ones (a damaged one unlinked first, never
        written into: containers share it) leave ``known``, to be compiled
        again. Returns them."""
        bad = set()
        for pyc in pycs:
            state = self.store.check_pyc(pyc, sizes.get(pyc))
            if state == "damaged":
                _unlink_quiet(self.store.pool_path(pyc))
                self.repaired += 1
            if state != "ok":
                bad.add(pyc)
            elif pyc not in sizes:
                st = os.lstat(self.store.pool_path(pyc))
                sizes[pyc] = st.st_size
                self.pyc_file_rows.append((pyc, st.st_size, st.st_dev, st.st_ino))
        for b in [b for b, p in known.items() if p in bad]:
            del known[b]
        return bad

    def _compile(self, exe, tag, first, known):
        """Compile the sources of ``first`` {blob: (rel, executable)} with
        ``exe``; ``known`` gains each one's pyc ("" when it did not compile).
        Returns {blob: error}."""
        store, todo, errors = self.store, [], {}
        self.progress.stage("compiling", total=len(first))
        for idx, (blob, (rel, executable)) in enumerate(first.items()):
            src = store.current_pool_path(blob, executable)
            if not os.path.exists(src):
                src = store.materialize_pool(blob, executable, self.new_inodes)
            todo.append([idx, src, store.tmp_path("pyc"), rel])
        results = compile_pycs(exe, todo, self.progress)
        for (idx, src, cfile, rel), blob in zip(todo, first):
            if idx in results and results[idx] is None:
                pyc, path, size = store.ingest_pool_file(cfile)
                st = os.lstat(path)
                self.pyc_file_rows.append((pyc, size, st.st_dev, st.st_ino))
                known[blob] = pyc
                self.pyc_compiled += 1
            else:
                _unlink_quiet(cfile)
                known[blob] = ""
                errors[blob] = results.get(idx, "the compiler process did not start or stopped early")
            if idx in results:  # a compiler that died says nothing of the source
                self.pyc_rows.append((tag, blob, 0, known[blob]))
        return errors

    def _record(self, stage):
        """Record the container, its new pool files, bytecode and stat cache
        rows, and end its pending row: one transaction."""
        store, mode = self.store, self.linker.mode or "none"
        rows = [(p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, blob, tpl)
                for p, st, blob, tpl in self.stat_rows]
        linked = self.linker.seen + self.new_inodes
        digest = inodes_digest(linked)
        noted = store.inodes_noted(self.image_id) == digest  # then 5,000 rows are not written
        with store.transaction():
            store.add_pool_inodes(self.new_inodes if noted else linked)
            if not noted:
                store.note_inodes(self.image_id, digest)
            store.add_pycs(self.pyc_rows, self.pyc_file_rows)
            store.cache_stats(rows)
            store.add_container(self.path, self.image_id, mode, self.exe)
            store.drop_pending_create(self.path, stage)
        return {"path": self.path, "image": self.image_id, "short_id": short_id(self.image_id),
                "link_mode": mode, "python": self.exe,
                "pyc_compiled": self.pyc_compiled, "pyc_cached": self.pyc_cached,
                "pyc_shipped": self.pyc_shipped, "pyc_failed": self.pyc_failed,
                "repaired": self.repaired + self.linker.repaired, "warnings": self.warnings}


def _pyc_place(rel, tag):
    """(its ``__pycache__`` folder, the .pyc's path) of source ``rel``, both
    relative to the environment, as create makes them."""
    d, _, name = rel.rpartition("/")
    folder = f"{d}/__pycache__" if d else "__pycache__"
    return folder, f"{folder}/{name[:-3]}.{tag}.pyc"


def inodes_digest(seen):
    """One number for the pool files a create linked, ``seen`` [(dev, ino,
    blob, size, executable)], whatever their order: Python hashes tuples of
    ints the same way in every process (blob names are left out: strings
    are not). Equal numbers: :meth:`Store.add_pool_inodes` has the rows."""
    return hash(frozenset((dev, ino, size, x) for dev, ino, _, size, x in seen))


def create(store, image, path, link_mode="auto", python=None, compile=True, progress=None,
           target=None, checkpoint=None):
    """Create a container of ``image`` at ``path``; returns a dict describing it.
    ``target`` (default: this machine) says how the environment's system spells
    it (tests: :meth:`Target.windows`); ``checkpoint`` (tests) is called with
    the name of each crash window."""
    t0 = time.monotonic()
    if link_mode not in LINK_MODES:
        raise UsageError(f"unknown link mode {link_mode!r}", "use auto, reflink, hardlink or copy")
    image_id = store.resolve_image(image)
    c = Creator(store, image_id, path, link_mode, python, compile, progress,
                target, checkpoint)
    with store.writing():
        run = c.run()
    if store.image_sources(image_id):
        with contextlib.suppress(ConflictError):  # busy: a later gc drops them
            with store.collecting(wait=0):  # shipped .pyc keep theirs: the repair source
                drop_pooled_frames(store, {b for b, _ in c.linker.checked} - c.shipped)
    result = {**run, **find_container(store, c.path)}  # the container object's shape
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result


###############################################################################
# Images and containers #######################################################
###############################################################################

def iso_time(ts):
    """Seconds since the epoch as ISO 8601 UTC (``2026-12-02T11:42:07Z``)."""
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def image_object(store, image_id, manifest, created, size, files):
    """The one JSON shape of an image (docs/json.md); ``manifest`` is a dict."""
    py = manifest.get("python")
    return {"id": image_id, "short_id": short_id(image_id), "tags": store.tags_of(image_id),
            "kind": manifest["kind"], "python": dict(py) if py else None, "size": size,
            "files": files, "created": iso_time(created), "parent": manifest.get("parent")}


def container_object(store, path, image_id, created, link_mode, exe):
    """The one JSON shape of a container (docs/json.md): ``python`` holds the
    interpreter it runs and the image's Python facts, or is null."""
    try:
        facts = store.manifest(image_id).python
    except NotFoundError:  # the image was removed after the create
        facts = None
    python = None if exe is None and not facts else {"executable": exe, **(facts or {})}
    return {"path": path, "image": image_id, "short_id": short_id(image_id),
            "tags": store.tags_of(image_id), "created": iso_time(created),
            "link_mode": link_mode, "python": python, "exists": os.path.isdir(path),
            "image_present": store.has_image(image_id)}


def image_info(store, image_id):
    """The image object of a stored image."""
    created, _, size, files = store.image_row(image_id)
    return image_object(store, image_id, store.manifest(image_id).to_dict(), created, size, files)


def list_images(store):
    return [image_object(store, image_id, json.loads(bytes(manifest)), created, size, files)
            for image_id, manifest, created, size, files, source in store.image_rows()]


def list_containers(store):
    return [container_object(store, *row) for row in store.container_rows()]


def tag_image(store, image, name):
    image_id = store.resolve_image(image)
    name = normalize_tag(name)
    store.set_tag(name, image_id)
    return {"id": image_id, "tag": name}


def _rmi_plan(store, image, force):
    """What ``rmi IMAGE`` does, checked before anything changes: untag (a tag
    of an image with other tags) or delete; an image with several tags, or
    that containers use, only with ``force``."""
    image_id, tag = store.resolve_ref(image)
    tags = store.tags_of(image_id)
    if tag and len(tags) > 1:
        return {"untagged": [tag], "deleted": None, "containers": []}
    if len(tags) > 1 and not force:
        raise ConflictError(f"image {short_id(image_id)} has several tags ({', '.join(tags)})",
                            "remove a tag by name, or pass --force")
    users = store.containers_using(image_id)
    if users and not force:
        more = f" and {len(users) - 3} more" if len(users) > 3 else ""
        raise ConflictError(f"image {short_id(image_id)} is used by the container"
                            f"{'s' if len(users) > 1 else ''} {', '.join(users[:3])}{more}",
                            "remove them first (vocker rm PATH), or pass --force to keep "
                            "them without their image")
    return {"untagged": tags, "deleted": image_id, "containers": users}


def remove_images(store, images, force=False):
    """``rmi``: every argument is checked first, so a refusal changes nothing."""
    plans = [_rmi_plan(store, ref, force) for ref in images]
    for plan in plans:
        if plan["deleted"]:
            store.delete_image(plan["deleted"])
        else:
            store.untag(plan["untagged"][0])
    return plans


def find_container(store, path):
    target = os.path.abspath(path)
    row = store.container_row(target)
    if row is None:
        raise NotFoundError("container", target, "run 'vocker ps' to list containers")
    return container_object(store, *row)


def remove_container(store, path, system=None):
    """Delete a container's directory and its record, or what an interrupted
    create left at ``path``. ``system``: the Target whose rules apply (tests)."""
    target = os.path.abspath(path)
    row = store.pending_create(target)
    try:
        info = find_container(store, target)
    except NotFoundError as not_found:
        if row is None:
            raise
        if not _create_dead(row, hostname()):
            raise ConflictError(f"{target} is being created by vocker process {row['pid']}",
                                "wait for it to finish, then retry") from None
        try:
            _remove_leftover(store, row)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot delete {target}: {exc.strerror}",
                                     "close programs using it and retry") from None
        if os.path.lexists(target):  # not what the interrupted create left
            raise not_found from None
        return {"path": target, "removed": True, "interrupted": True}
    target = info["path"]
    if os.path.lexists(target):
        if not os.path.isdir(target) or os.path.islink(target):
            raise InvalidInputError(f"{target} is not a directory", "remove it by hand")
        try:
            rmtree(extended_path(target), trash=store.trash_dir_for(target),
                   restore_readonly=store.restore_readonly, target=system)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot delete {target}: {exc.strerror}",
                                     "close programs using it and retry") from None
        if (system or Target.local()).win:
            store.seal_pool()
    store.remove_container_row(target)
    return {"path": target, "removed": True}


def inspect(store, name):
    """Describe an image (by ID, prefix or tag) or a container (by path)."""
    if os.sep in name or (os.altsep and os.altsep in name) or os.path.isdir(name):
        with contextlib.suppress(NotFoundError):
            return {"type": "container", **find_container(store, name)}
    image_id = store.resolve_image(name)
    m = store.manifest(image_id).to_dict()
    created, source, size, files = store.image_row(image_id)
    return {"type": "image", **image_object(store, image_id, m, created, size, files),
            "manifest": m, "source": source, "containers": store.containers_using(image_id),
            "bytecode": [{"id": i, "cache_tag": rec.cache_tag}
                         for i, rec in store.bytecode_of(image_id)],
            "audit": audit_scope(m["recipe"])}


def audit_scope(recipe):
    """What ``vocker audit`` can show of an image with this recipe."""
    if recipe is None:
        return "no recipe: it cannot be audited"
    r = Recipe.check(recipe)
    if r.by == "commit":
        return ("made by commit: audit rebuilds its distributions from wheels and names "
                "every other file")
    if r.runs:
        return "rebuilt from its recipe; the audit depends on its RUN commands being deterministic"
    return "rebuilt from its recipe"


###############################################################################
# Store life: gc ##############################################################
###############################################################################

#: a pool file's name: ``ID``, ``ID.x`` (executable), each maybe ``.GEN``
_POOL_NAME_RE = _Regex(r"^([0-9a-f]{64})(\.x)?(\.[0-9]+)?$")


def live_objects(store, roots=None):
    """(trees, blobs) that the store's images need (or those of the trees
    ``roots``): every image is a root; tags and containers name images."""
    trees, blobs = set(), set()
    stack = list(store.image_roots() if roots is None else roots)
    while stack:
        tid = stack.pop()
        if tid in trees:
            continue
        trees.add(tid)
        for e in store.tree(tid).entries:
            if e.type == T_DIR:
                stack.append(e.ref)
            elif e.type in FILE_TYPES or e.type in TEMPLATE_TYPES:
                blobs.add(e.ref)
    return trees, blobs


class Collector:
    """``vocker gc``: removes what no image needs, in an order where a kill at
    any point leaves a store that works and that the next gc finishes. Rows are
    forgotten before their files are deleted; a repacked pack is written and
    recorded before the old one goes."""

    def __init__(self, store):
        self.store, self.freed, self.counts = store, 0, dict.fromkeys(
            ("trees", "blobs", "packs", "repacked", "pool_files", "pyc_files", "tmp", "frames"), 0)

    def plan(self):
        st = self.store
        live_trees, self.live = live_objects(st)
        self.dead_trees = st.tree_ids() - live_trees
        self.blobs = st.blob_table()
        self.dead = set(self.blobs) - self.live
        by_pack = {}
        for b, (_, _, pack, _) in self.blobs.items():
            by_pack.setdefault(pack, [set(), set()])[b in self.dead].add(b)
        self.loose_dead = by_pack.pop(None, [set(), set()])[1]
        self.pool_dead = by_pack.pop(POOL_ONLY, [set(), set()])[1]  # their files are victims
        self.dead_packs = {p for p, (alive, _) in by_pack.items() if not alive}
        self.mixed = {p: parts for p, parts in by_pack.items() if parts[0] and parts[1]}
        self.orphan_packs = {n[:-5] for n in os.listdir(st.packs_dir)  # only vocker's names
                             if re.fullmatch(r"[0-9a-f]{64}\.pack", n) and n[:-5] not in by_pack}
        pyc_rows, pyc_ids = st.pyc_table()
        self.dead_sources = {src for src, _ in pyc_rows if src not in self.live}
        self.live_pycs = {pyc for src, pyc in pyc_rows if src in self.live}
        self.dead_pycs = pyc_ids - self.live_pycs
        self.stats = st.stale_stat_paths()
        self.loose_orphans = [os.path.join(d, n) for d, _, names in os.walk(st.blobs_dir)
                              for n in names if n not in self.blobs]
        return self

    def pool_victims(self):
        """[(path, lstat)] of pool files no image needs and no container links."""
        out = []
        for d, _, names in os.walk(self.store.pool_dir):
            for name in names:
                m, path = _POOL_NAME_RE.match(name), os.path.join(d, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    needed = m and (m[1] in self.live or m[1] in self.live_pycs)
                    if not needed and (st.st_nlink <= 1 or not stat.S_ISREG(st.st_mode)):
                        out.append((path, st))
        return out

    def run(self, dry_run):
        """Remove (or with ``dry_run`` only count) every unneeded object."""
        victims = self.pool_victims()
        self._count(victims)
        if dry_run:
            return self
        for pack, (alive, dead) in sorted(self.mixed.items()):
            self._repack(pack, alive, dead)
        st = self.store
        st.forget(self.dead_trees, self.loose_dead | self.pool_dead |
                  {b for b in self.dead if self.blobs[b][2] in self.dead_packs},
                  self.dead_sources, self.dead_pycs,
                  [(v.st_dev, v.st_ino) for _, v in victims], self.stats)
        st.close_packs()
        doomed = [st.pack_path(p) for p in self.dead_packs | self.orphan_packs]
        doomed += [st.blob_path(b) for b in self.loose_dead] + self.loose_orphans
        for path in doomed + [path for path, _ in victims]:
            with contextlib.suppress(OSError):
                _remove_read_only(path)
        self._clean_folders()
        self._clean_stages()
        st.compact()
        return self

    def _clean_stages(self):
        """The hidden staging folders of creates whose process died (beside
        their PATH); PATH itself stays for ``create``/``rm`` to judge."""
        host = hostname()
        for row in self.store.pending_creates():
            if _create_dead(row, host) and os.path.isdir(row["stage"]) \
                    and not os.path.islink(row["stage"]):
                with contextlib.suppress(OSError, VockerError):
                    rmtree(row["stage"], trash=self.store.trash_dir_for(row["path"]))

    def _count(self, victims):
        st, c = self.store, self.counts
        c.update(trees=len(self.dead_trees), blobs=len(self.dead), repacked=len(self.mixed),
                 packs=len(self.dead_packs | self.orphan_packs), pyc_files=len(self.dead_pycs),
                 pool_files=len(victims),
                 tmp=len(os.listdir(st.tmp_dir)) + len(self.loose_orphans))
        sizes = [_disk_size(st.pack_path(p)) for p in self.dead_packs | self.orphan_packs]
        sizes += [self.blobs[b][1] for p in self.mixed for b in self.mixed[p][1]]
        sizes += [_disk_size(st.blob_path(b)) for b in self.loose_dead]
        sizes += [_disk_size(p) for p in self.loose_orphans]
        sizes += [_st_disk_size(v) for _, v in victims]
        sizes += [_tree_size(os.path.join(st.tmp_dir, n)) for n in os.listdir(st.tmp_dir)]
        self.freed = sum(sizes)

    def _repack(self, pack, alive, dead):
        """Copy the live frames of ``pack`` into a new pack, record it, drop the old."""
        st = self.store
        new, moved = _copy_frames(st, alive, self.blobs)
        st.repacked(new, moved, dead)
        st.close_packs()
        with contextlib.suppress(OSError):
            _remove_read_only(st.pack_path(pack))

    def _clean_folders(self):
        """tmp/ (no writer runs: everything there is a leftover), and the
        empty shard folders of blobs/ and pool/."""
        st = self.store
        for name in os.listdir(st.tmp_dir):
            with contextlib.suppress(OSError):
                p = os.path.join(st.tmp_dir, name)
                rmtree(p, restore_readonly=st.restore_readonly) if os.path.isdir(p) \
                    else os.unlink(p)
        for top in (st.blobs_dir, st.pool_dir):
            for name in os.listdir(top):
                d = os.path.join(top, name)
                with contextlib.suppress(OSError):
                    os.rmdir(d)           # only when empty
                    _made_dirs.discard(d)

    def report(self, dry_run):
        return {"dry_run": dry_run, "bytes": self.freed, **self.counts}


def _copy_frames(store, blobs, table):
    """The frames of ``blobs`` copied into one new pack: -> (its ID, {blob: offset})."""
    w, moved = store.pack_writer(), {}
    try:
        for b in sorted(blobs, key=lambda b: (table[b][2] or "", table[b][3] or 0)):
            size, f, csize = store.open_blob(b)
            moved[b] = w.append_stream(lambda write, f=f, n=csize: _copy_exactly(f, n, write))
        new = w.finish()
    except BaseException:
        w.abort()
        raise
    return new, moved


def drop_pooled_frames(store, blob_ids, dry_run=False):
    """One copy of each byte: a blob of ``blob_ids`` whose pool file hashes
    right keeps no compressed frame beside it. Its loose file goes; its pack
    goes once all its blobs are pooled, or is repacked without them when they
    are at least half its bytes (else a later gc does it). Rows change before
    files go: a kill leaves a working store, at worst with an orphan pack that
    gc removes. Callers pass only blobs of images that a repository or archive
    holds too (``image_sources``): that copy repairs a pool file changed
    through a container's hardlink. Held under gc's lock.
    -> (frames dropped, compressed bytes)."""
    ids = set(blob_ids) - {EMPTY_ID}
    st, table, members = store, store.blob_rows(ids), {}
    want = {b for b in ids if b in table and table[b][2] != POOL_ONLY and table[b][1] > 0}
    table.update(st.blob_rows(packs={table[b][2] for b in want} - {None}))  # their packs' others
    for b, row in table.items():
        members.setdefault(row[2], []).append(b)
    count = freed = 0
    for pack in sorted({table[b][2] for b in want}, key=str):
        group = sorted(members[pack] if pack is not None else want & set(members[None]))
        drop = {b for b in group if b in want and st.pool_copy(b, table[b][0])}
        keep = [] if pack is None else [b for b in group if b not in drop]
        gain = sum(table[b][1] for b in drop)
        if not drop or gain < sum(table[b][1] for b in keep):
            continue
        count, freed = count + len(drop), freed + gain
        if dry_run:
            continue
        new, moved = _copy_frames(st, keep, table) if keep else (None, {})
        st.repacked(new, moved, (), pooled=drop)
        st.close_packs()
        for path in [st.blob_path(b) for b in drop] if pack is None else [st.pack_path(pack)]:
            with contextlib.suppress(OSError):
                _remove_read_only(path)
    return count, freed


def _copy_exactly(f, n, write):
    while n:
        data = f.read(min(n, CHUNK))
        if not data:
            raise IntegrityError("pack", "?", "is truncated")
        write(data)
        n -= len(data)


def _st_disk_size(st):
    blocks = getattr(st, "st_blocks", None)
    return blocks * 512 if blocks is not None else st.st_size


def _disk_size(path):
    try:
        return _st_disk_size(os.lstat(path))
    except OSError:
        return 0


def _tree_size(path):
    if not os.path.isdir(path) or os.path.islink(path):
        return _disk_size(path)
    return sum(_disk_size(os.path.join(d, n)) for d, _, ns in os.walk(path) for n in ns)


def _pool_bytes(store):
    """{object ID: bytes on disk of its pool files} (each inode once)."""
    out, seen = {}, set()
    for d, _, names in os.walk(store.pool_dir):
        for name in names:
            m = _POOL_NAME_RE.match(name)
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(d, name))
                if m and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    out[m[1]] = out.get(m[1], 0) + _st_disk_size(st)
    return out


def _container_bytes(path):
    """(apparent bytes of its files, bytes on disk only it holds): a file
    linked to the pool (more than one link) costs nothing of its own."""
    apparent = own = 0
    for d, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(d, name))
                if stat.S_ISREG(st.st_mode):
                    apparent += st.st_size
                    own += _st_disk_size(st) if st.st_nlink == 1 else 0
    return apparent, own


def disk_usage(store):
    """``vocker df``: per image its logical size, the store bytes only it
    needs and those it shares (compressed blob + pool copy), its containers
    and what they save against plain copies; in total, the store's size and
    what gc would free."""
    images, table, pool = list_images(store), store.blob_table(), _pool_bytes(store)
    pycs = {}
    for source, pyc in store.pyc_table()[0]:   # its compiled .pyc count with a source
        pycs[source] = pycs.get(source, 0) + pool.get(pyc, 0)
    blobs = {i["id"]: live_objects(store, [store.manifest(i["id"]).root, *(  # and its .pyc
        rec.root for _, rec in store.bytecode_of(i["id"]))])[1] for i in images}
    users = collections.Counter(b for bs in blobs.values() for b in bs)
    containers = [c for c in list_containers(store) if c["exists"]]
    rows = []
    for i in images:
        cost = {b: table[b][1] + pool.get(b, 0) + pycs.get(b, 0)
                for b in blobs[i["id"]] if b in table}
        used = [_container_bytes(c["path"]) for c in containers if c["image"] == i["id"]]
        rows.append({"id": i["id"], "short_id": i["short_id"], "tags": i["tags"],
                     "size": i["size"], "containers": len(used),
                     "unique": sum(v for b, v in cost.items() if users[b] == 1),
                     "shared": sum(v for b, v in cost.items() if users[b] > 1),
                     "saved": sum(max(0, a - o) for a, o in used)})
    reclaimable = Collector(store).plan().run(True).report(True)["bytes"]
    return {"images": rows, "store": _tree_size(store.home), "containers": len(containers),
            "reclaimable": reclaimable}


def gc(store, dry_run=False):
    """Remove everything that no image, tag or container needs (``dry_run``:
    only say what that would free). Waits for running commits, creates,
    pulls and loads; they wait for it."""
    with store.collecting():
        c = Collector(store).plan().run(dry_run)
        roots = [store.manifest(i).root for i in store.image_sources() if store.has_image(i)]
        c.counts["frames"], freed = drop_pooled_frames(store, live_objects(store, roots)[1],
                                                       dry_run)
        c.freed += freed
        return c.report(dry_run)


###############################################################################
# Transport: repositories and archives ########################################
###############################################################################

# A repository is a folder of immutable objects plus one small mutable index,
# laid out so that any static HTTP server or file share can serve it:
#
#   vocker-repo.json         {"format": 1, "kind": "vocker-repository"}
#   index.json               {"format": 1, "images": {id: summary}, "tags": {name: id}}
#   images/<id>.json         the manifest (its hash is the image ID)
#   images/<id>.trees        every tree of the image: "<id> <length>\n<bytes>" records
#   images/<id>.blobs        "<blob> <size> <pack> <offset> <csize>\n" per blob, sorted
#   packs/<id>.pack          zstd frames, one per blob; <id> = hash of the pack file
#
# Writers put packs first, then image files (manifest last), then index.json;
# a reader never sees an image whose objects are missing.

REPO_MARKER = "vocker-repo.json"
REPO_MARKER_DATA = b'{"format":1,"kind":"vocker-repository"}\n'
RANGE_GAP = 256 << 10         # coalesce reads of blobs closer than this
RANGE_MAX = 16 << 20          # largest single read (bigger frames come in pieces)
HTTP_THREADS = 4
#: a stalled or trickling server fails when fewer than VOCKER_HTTP_MIN_RATE
#: bytes/s arrive averaged over a window of VOCKER_HTTP_TIMEOUT seconds (which
#: also bounds connecting and the first byte)
HTTP_TIMEOUT = 30
HTTP_MIN_RATE = 1024
#: files vocker writes in a repository's tmp/; cleanup deletes nothing else
REPO_TMP_PREFIX = "vocker-tmp-"
_REPO_TMP_RE = _Regex(r"vocker-tmp-[0-9a-f]{32}")
_FILE_ATTRIBUTE_REPARSE_POINT = 0x400
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
#: errno values of an open that met a link, FIFO or device where a folder or file was due
_NOT_PLAIN = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK, errno.ENXIO, errno.EISDIR,
              errno.ENODEV, getattr(errno, "EFTYPE", errno.ELOOP)}


def _at(d, name):
    """(path, keyword arguments) to reach ``name`` in folder ``d``: a
    descriptor (POSIX, used as dir_fd) or a checked path (Windows)."""
    return (name, {"dir_fd": d}) if isinstance(d, int) else (os.path.join(d, name), {})


class RepoDir:
    """The one way vocker reads and writes a repository folder: no symlink,
    FIFO or device in its layout is ever followed or opened. On POSIX every
    component is opened relative to its parent's descriptor with O_NOFOLLOW,
    files non-blocking and then fstat'ed (regular files only), and renames
    use dir_fd; on Windows each component is lstat'ed and reparse points and
    non-regular files are refused."""

    def __init__(self, root):
        self.root = root

    def _bad(self, rel, what):
        return InvalidInputError(
            f"{self.root}: {rel} in the repository is {what}",
            "something other than vocker changed the repository folder; replace that "
            "entry by a plain file or folder (or remove it) and retry")

    def _error(self, exc, rel, kind):
        if isinstance(exc, FileNotFoundError):
            return NotFoundError("repository file", f"{self.root}/{rel}")
        if exc.errno in _NOT_PLAIN:
            return self._bad(rel, f"not {kind} (a link or special file)")
        return exc

    def _win_check(self, path, rel, folder):
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise self._error(exc, rel, "a folder" if folder else "a file") from None
        ok = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
        if not ok or getattr(st, "st_file_attributes", 0) & _FILE_ATTRIBUTE_REPARSE_POINT:
            raise self._bad(rel, f"not a plain {'folder' if folder else 'file'}")

    @contextlib.contextmanager
    def folder(self, rel="", create=False):
        """A descriptor (POSIX) or checked path (Windows) of folder ``rel``."""
        parts = [p for p in rel.split("/") if p]
        if WINDOWS:
            path = self.root
            for i, p in enumerate(parts):
                path = os.path.join(path, p)
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(path)
                self._win_check(path, "/".join(parts[:i + 1]), True)
            yield path
            return
        try:  # the root is the user's own path: it may be reached through a link
            fd = os.open(self.root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except OSError as exc:
            raise self._error(exc, ".", "a folder") from None
        try:
            for i, p in enumerate(parts):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(p, dir_fd=fd)
                try:
                    sub = os.open(p, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_NONBLOCK
                                  | _O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    raise self._error(exc, "/".join(parts[:i + 1]), "a folder") from None
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)

    def _open(self, rel, flags, mode=0o644):
        folder, _, name = rel.rpartition("/")
        with self.folder(folder) as d:
            path, kw = _at(d, name)
            if WINDOWS:  # no O_NOFOLLOW there: refuse a link before opening
                try:
                    self._win_check(path, rel, False)
                except NotFoundError:
                    if not flags & os.O_CREAT:
                        raise
            for attempt in range(20):
                try:
                    fd = os.open(path, flags | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, mode, **kw)
                    break
                except PermissionError as exc:  # Windows: a racer's link of it is being
                    if not WINDOWS or attempt == 19:  # deleted ("delete pending"): wait
                        raise self._error(exc, rel, "a file") from None
                    time.sleep(0.05)
                except OSError as exc:
                    raise self._error(exc, rel, "a file") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._bad(rel, "not a regular file")
        return fd

    def open(self, rel):
        """A binary file object for reading the regular file ``rel``."""
        return os.fdopen(self._open(rel, os.O_RDONLY), "rb")

    def open_lock(self):
        """The descriptor of ``.lock`` (made if missing, never deleted)."""
        return self._open(".lock", os.O_RDWR | os.O_CREAT)

    def read(self, rel, limit):
        with self.open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InvalidInputError(f"{rel} in the repository {self.root} is too large")
        return data

    def exists(self, rel):
        try:
            self.open(rel).close()
        except NotFoundError:
            return False
        return True

    def listdir(self, rel):
        with self.folder(rel) as d:
            return sorted(os.listdir(d))

    def tmp_name(self):
        return REPO_TMP_PREFIX + random_hex()

    def create_tmp(self, name):
        with self.folder("tmp", create=True) as d:
            path, kw = _at(d, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
                         0o644, **kw)
        return os.fdopen(fd, "wb")

    def _write_tmp(self, data):
        name = self.tmp_name()
        try:
            with self.create_tmp(name) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self.unlink_tmp(name)
            raise
        return name

    def replace_tmp(self, name, rel):
        """Move tmp/``name`` to ``rel``, replacing the entry itself (a link
        there is replaced, never followed)."""
        folder, _, target = rel.rpartition("/")
        with self.folder("tmp") as t, self.folder(folder, create=True) as d:
            if WINDOWS:
                self._win_check(os.path.join(t, name), f"tmp/{name}", False)
                os.replace(os.path.join(t, name), os.path.join(d, target))
            else:
                os.replace(name, target, src_dir_fd=t, dst_dir_fd=d)

    def write(self, rel, data):
        """Durably (fsynced temp file, then rename) write ``rel``."""
        name = self._write_tmp(data)
        try:
            self.replace_tmp(name, rel)
        except BaseException:
            self.unlink_tmp(name)
            raise

    def create_once(self, rel, data):
        """Create ``rel`` with ``data`` unless an entry exists; safe when racing."""
        name = self._write_tmp(data)
        try:
            for attempt in range(20):
                try:
                    with self.folder("tmp") as t, self.folder() as d:
                        if WINDOWS:
                            os.link(os.path.join(t, name), os.path.join(d, rel))
                        else:
                            os.link(name, rel, src_dir_fd=t, dst_dir_fd=d, follow_symlinks=False)
                    return
                except FileExistsError:
                    return
                except PermissionError:  # Windows: a racer's link of it is still open
                    if not WINDOWS or attempt == 19:
                        raise
                    if self.exists(rel):
                        return
                    time.sleep(0.05)
        finally:
            self.unlink_tmp(name)

    def unlink_tmp(self, name):
        with contextlib.suppress(OSError, VockerError):
            with self.folder("tmp") as t:
                path, kw = _at(t, name)
                os.unlink(path, **kw)

    def clean_tmp(self, age=3600):
        """Remove what interrupted writers left in tmp/: only regular files
        named by vocker (``vocker-tmp-<32 hex>``), never through a link."""
        cutoff = time.time() - age
        with self.folder("tmp", create=True) as t:
            for name in os.listdir(t):
                if not _REPO_TMP_RE.fullmatch(name):
                    continue
                path, kw = _at(t, name)
                with contextlib.suppress(OSError):
                    st = os.stat(path, follow_symlinks=False, **kw)
                    link = getattr(st, "st_file_attributes", 0) & _FILE_ATTRIBUTE_REPARSE_POINT
                    if stat.S_ISREG(st.st_mode) and not link and st.st_mtime < cutoff:
                        os.unlink(path, **kw)


class FolderSource:
    """A repository in a local folder, a share or a ``file://`` URL."""

    def __init__(self, root):
        self.root = root
        self.repo = RepoDir(root)
        self.bytes = 0
        self.requests = 0
        self.files = {}
        self.lock = threading.Lock()  # reads come from several threads

    def expect(self, rel, end):
        """Hint: bytes of ``rel`` up to ``end`` will be read (used by HTTP)."""

    def _reading(self, rel, fn):
        try:
            return fn()
        except OSError as exc:
            raise NetworkError(f"{self.root}/{rel}", exc.strerror or str(exc)) from None

    def get(self, rel, limit=MAX_META):
        self.requests += 1
        data = self._reading(rel, lambda: self.repo.read(rel, limit))
        self.bytes += len(data)
        return data

    def get_range(self, rel, offset, length):
        def read():
            f = self.files.get(rel)
            if f is None:
                f = self.files[rel] = self.repo.open(rel)
            f.seek(offset)
            return f.read(length)
        with self.lock:
            self.requests += 1
            data = self._reading(rel, read)
            self.bytes += len(data)
        if len(data) != length:
            raise InvalidInputError(f"{rel} in the repository is truncated")
        return data

    def close(self):
        for f in self.files.values():
            f.close()
        self.files.clear()


class TarSource(FolderSource):
    """A saved archive (a tar of a repository), read in place."""

    def __init__(self, path):
        super().__init__(path)
        try:
            import tarfile  # here: imported on first use, for a faster start
            self.tar = tarfile.open(path, "r:")
            members = self.tar.getmembers()
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise InvalidInputError(f"{path} is not a vocker archive (or is truncated): {exc}",
                                    "save it again, or copy the whole file") from None
        self.members = {m.name: m for m in members if m.isfile()}
        self.f = open(path, "rb")

    def _member(self, rel):
        m = self.members.get(rel)
        if m is None:
            raise NotFoundError("archive member", f"{self.root}:{rel}")
        return m

    def get(self, rel, limit=MAX_META):
        m = self._member(rel)
        if m.size > limit:
            raise InvalidInputError(f"{rel} in the archive is too large")
        return self.get_range(rel, 0, m.size)

    def get_range(self, rel, offset, length):
        m = self._member(rel)
        if offset + length > m.size:
            raise InvalidInputError(f"{rel} in the archive is truncated")
        with self.lock:
            self.requests += 1
            self.f.seek(m.offset_data + offset)
            data = self.f.read(length)
            self.bytes += len(data)
        if len(data) != length:
            raise InvalidInputError(f"{rel} in the archive is truncated")
        return data

    def close(self):
        self.f.close()
        self.tar.close()


def _env_uint(name, default):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = read_uint(text.strip(), name, limit=1 << 40)
    except InvalidInputError:
        value = 0
    if value <= 0:
        raise UsageError(f"{name}={text[:40]!r} is not a positive whole number",
                         f"set {name} to a number, or unset it")
    return value


class _Pace:
    """The deadline of one HTTP connection: it fails when fewer than ``rate``
    bytes/s arrive averaged over a window of ``window`` seconds, so a server
    that never answers, stalls or trickles fails after at most two windows."""

    def __init__(self, url, window, rate):
        self.url, self.window, self.rate = url, window, rate
        self.start()

    def start(self):
        self.t0, self.got = time.monotonic(), 0

    def remaining(self):
        return self.t0 + self.window - time.monotonic()

    def error(self):
        return NetworkError(self.url, f"the server sent less than {self.rate} bytes/s "
                            f"for {self.window} s (stalled or too slow)",
                            "retry later; on a slow line raise VOCKER_HTTP_TIMEOUT or lower "
                            "VOCKER_HTTP_MIN_RATE")

    def account(self, n):
        self.got += n
        now = time.monotonic()
        if now - self.t0 >= self.window:
            if self.got < self.rate * self.window:
                raise self.error()
            self.t0, self.got = now, 0


class _PacedReader(io.RawIOBase):
    def __init__(self, paced):
        self.paced, self.sock, self.pace = paced, paced._sock, paced._pace

    def readable(self):
        return True

    def readinto(self, b):
        self.pace.account(0)
        self.sock.settimeout(max(self.pace.remaining(), 0.001))
        try:
            n = self.sock.recv_into(b)
        except TimeoutError:  # socket.timeout
            raise self.pace.error() from None
        self.pace.account(n)
        return n

    def close(self):
        if not self.closed:
            self.paced._release()
        super().close()


class _PacedSocket:
    """A socket whose reads (status line, headers and body) follow a _Pace;
    like socket.makefile, the socket stays open until its readers are closed."""

    def __init__(self, sock, pace):
        self._sock, self._pace = sock, pace
        self._readers, self._closing = 0, False

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def sendall(self, data, *args):
        self._sock.settimeout(self._pace.window)
        return self._sock.sendall(data, *args)

    def makefile(self, mode="rb", *args, **kwargs):
        self._readers += 1
        return io.BufferedReader(_PacedReader(self))

    def _release(self):
        self._readers -= 1
        self.close() if self._closing else None

    def close(self):
        self._closing = True
        if self._readers <= 0:
            self._sock.close()


def _paced_connection(base):
    class Paced(base):
        def connect(self):
            super().connect()
            self.sock = _PacedSocket(self.sock, self.pace)
    return Paced


class Proxy:
    """The HTTP proxy a request to ``scheme://host`` goes through, as curl,
    pip and urllib find it: ``HTTPS_PROXY``/``HTTP_PROXY`` (either case; on
    Windows, else the system's settings), unless ``NO_PROXY`` names the host.
    https goes through a CONNECT tunnel; user:password in the proxy's URL is
    sent as Proxy-Authorization. None when there is no proxy."""

    def __init__(self, host, port, auth):
        self.host, self.port = host, port
        self.headers = {"Proxy-Authorization": auth} if auth else {}

    @classmethod
    def find(cls, scheme, host):
        import urllib.request  # here: imported on first use, for a faster start
        url = urllib.request.getproxies().get(scheme)
        if not url or urllib.request.proxy_bypass(host):
            return None
        import base64  # here: imported on first use, for a faster start
        import urllib.parse  # here: imported on first use, for a faster start
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port or 80
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise UsageError(f"cannot use the proxy {terminal_safe(url)[:80]!r} from "
                             f"{scheme.upper()}_PROXY", "give it as http://HOST:PORT")
        auth = None
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:" \
                   f"{urllib.parse.unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, port, auth)


class HttpSource:
    """A repository on any static HTTP(S) server: persistent connections (one
    per thread), retries with backoff, resumed ranges, optional auth header,
    a proxy (:class:`Proxy`) and a deadline (_Pace) on every connection."""

    def __init__(self, url, headers=None, timeout=None, retries=4, min_rate=None):
        import urllib.parse  # here: imported on first use, for a faster start
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"bad repository URL {url!r}")
        self.url = url.rstrip("/")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.base = parts.path.rstrip("/")
        self.proxy = Proxy.find(self.scheme, self.host)
        if self.proxy is not None and self.scheme == "http":  # the proxy gets whole URLs
            self.base = f"http://{parts.netloc.rpartition('@')[2]}{self.base}"
        self.headers = {"User-Agent": f"vocker/{__version__}", "Accept-Encoding": "identity"}
        self.headers.update(headers or {})
        if "Authorization" not in self.headers:
            self._netrc_auth()
        self.timeout = timeout or _env_uint("VOCKER_HTTP_TIMEOUT", HTTP_TIMEOUT)
        self.min_rate = min_rate or _env_uint("VOCKER_HTTP_MIN_RATE", HTTP_MIN_RATE)
        self.retries = retries
        self.local = threading.local()
        self.lock = threading.RLock()
        self.bytes = 0
        self.requests = 0
        self.range_ok = set()   # files the server answered with 206
        self.file_locks = {}
        self.whole = {}         # rel -> local copy of a file whose server ignored Range
        self.ends = {}          # rel -> largest end offset a pull needs
        self.tmp_dir = None

    def _netrc_auth(self):
        try:
            import netrc  # here: imported on first use, for a faster start
            auth = netrc.netrc().authenticators(self.host)
        except (OSError, netrc.NetrcParseError):
            return
        if auth:
            import base64  # here: imported on first use, for a faster start
            token = base64.b64encode(f"{auth[0]}:{auth[2]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def expect(self, rel, end):
        with self.lock:
            self.ends[rel] = max(self.ends.get(rel, 0), end)

    def _conn(self, url, fresh=False):
        conn = getattr(self.local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            import http.client  # here: imported on first use, for a faster start
            base = (http.client.HTTPSConnection if self.scheme == "https"
                    else http.client.HTTPConnection)
            via = self.proxy
            conn = self.local.conn = _paced_connection(base)(
                via.host if via else self.host, via.port if via else self.port,
                timeout=self.timeout)
            if via is not None and self.scheme == "https":
                conn.set_tunnel(self.host, self.port, headers=via.headers)
            conn.pace = _Pace(url, self.timeout, self.min_rate)
        conn.pace.url = url
        conn.pace.start()
        return conn

    def _drop(self):
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def _fetch(self, rel, start=None, end=None, limit=MAX_META):
        """GET ``rel`` (bytes start..end-1 if given); resumes after a cut."""
        try:
            return self._fetch_once(rel, start, end, limit)
        except BaseException:
            self._drop()
            raise

    def _headers(self, start, end, received):
        """A GET's headers: ours, the proxy's (plain http) and the range left."""
        headers = dict(self.headers)
        if self.proxy is not None and self.scheme == "http":
            headers.update(self.proxy.headers)
        if start is not None:
            headers["Range"] = f"bytes={start + received}-{end - 1}"
        elif received:
            headers["Range"] = f"bytes={received}-"
        return headers

    def _fetch_once(self, rel, start, end, limit):
        import http.client  # here: imported on first use, for a faster start
        url = f"{self.url}/{rel}"
        got = bytearray()
        received = 0
        attempt = 0
        while True:
            headers = self._headers(start, end, received)
            try:
                conn = self._conn(url, fresh=attempt > 0)
                conn.request("GET", f"{self.base}/{rel}", headers=headers)
                resp = conn.getresponse()
                status = resp.status
                if status in (200, 206):
                    if status == 200 and received:
                        received = 0  # server restarted from the beginning
                        got.clear()
                    if status == 200 and start is not None:
                        self._keep_whole(rel, resp, end)  # Range ignored
                        return None
                    with self.lock:
                        self.requests += 1
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        received += len(chunk)
                        with self.lock:
                            self.bytes += len(chunk)
                        if start is None and received > limit:
                            raise InvalidInputError(f"{url} is too large")
                        if start is not None and received > end - start:
                            raise InvalidInputError(f"{url}: the server sent more than was asked",
                                                    "the server mishandles Range requests")
                        got += chunk
                    if start is not None and received != end - start:
                        raise http.client.IncompleteRead(b"", end - start - received)
                    return bytes(got)
                resp.read(64 << 10)
                self._drop()
                if status == 404:
                    raise NotFoundError("repository file", url)
                if status in (401, 403):
                    raise NetworkError(url, f"access denied (HTTP {status})",
                                       "set the Authorization header with --header or ~/.netrc")
                if status == 416:
                    raise InvalidInputError(f"{url} is shorter than its index says")
                if status < 500 and status != 429:
                    raise NetworkError(url, f"HTTP {status} {resp.reason}")
                detail = f"HTTP {status} {resp.reason}"
            except (OSError, http.client.HTTPException) as exc:
                detail = str(exc) or type(exc).__name__
            attempt += 1
            if attempt > self.retries:
                raise NetworkError(url, detail)
            time.sleep(min(0.2 * 2 ** attempt, 5))

    def get(self, rel, limit=MAX_META):
        return self._fetch(rel, limit=limit)

    def _keep_whole(self, rel, resp, end):
        """The server ignored Range: keep the file's bytes up to the largest
        end offset this pull needs from it (never more), then hang up."""
        with self.lock:
            need = max(self.ends.get(rel, 0), end)
        import tempfile  # here: imported on first use, for a faster start
        path = os.path.join(self.tmp_dir or tempfile.gettempdir(), f"http-{random_hex()}")
        kept = 0
        try:
            with open(path, "wb") as f:
                while kept < need:
                    chunk = resp.read(min(CHUNK, need - kept))
                    if not chunk:
                        break
                    f.write(chunk)
                    kept += len(chunk)
                    with self.lock:
                        self.bytes += len(chunk)
        except BaseException:
            _unlink_quiet(path)
            raise
        self._drop()  # whatever else the server sends is not read
        with self.lock:
            self.requests += 1
            self.whole[rel] = path

    def get_range(self, rel, offset, length):
        with self.lock:
            flock = self.file_locks.setdefault(rel, threading.Lock())
        if rel not in self.range_ok:
            with flock:  # the first read of a file learns whether Range works
                if rel not in self.range_ok and rel not in self.whole:
                    data = self._fetch(rel, offset, offset + length)
                    if data is not None:
                        self.range_ok.add(rel)
                        return data
        if rel in self.range_ok:
            data = self._fetch(rel, offset, offset + length)
            if data is not None:
                return data
        with open(self.whole[rel], "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise InvalidInputError(f"{self.url}/{rel} is truncated")
        return data

    def close(self):
        for p in self.whole.values():
            _unlink_quiet(p)
        self.whole.clear()
        self._drop()


def open_source(location, headers=None):
    """A reader for a repository folder, ``file://`` or ``http(s)://`` URL, or archive."""
    if re.match(r"(?i)https?://", location):
        return HttpSource(location, headers)
    if location.lower().startswith("file://"):
        import urllib.request  # here: imported on first use, for a faster start
        location = urllib.request.url2pathname(urllib.parse.urlsplit(location).path)
    if os.path.isfile(location):
        return TarSource(location)
    if not os.path.isdir(location):
        raise NotFoundError("repository", location, "check the path, or run 'vocker repo init DIR'")
    try:
        RepoDir(location).read(REPO_MARKER, 4096)
    except NotFoundError:
        raise InvalidInputError(f"{location} is not a vocker repository",
                                "run 'vocker repo init DIR' to make one") from None
    return FolderSource(location)


_SUMMARY_FIELDS = ("kind", "python")


def parse_index(data, where):
    try:
        obj = read_json(data, f"{where}: index.json", MAX_META)
    except InvalidInputError as exc:
        raise InvalidInputError(exc.message, "the server may have answered with an error page") \
            from None
    if not isinstance(obj, dict) or obj.get("format") != 1 or \
            not isinstance(obj.get("images"), dict) or not isinstance(obj.get("tags"), dict):
        raise InvalidInputError(f"{where}: index.json is not a vocker index")
    for name, image_id in obj["tags"].items():
        if not isinstance(name, str) or not TAG_RE.fullmatch(name):
            raise InvalidInputError(f"{where}: bad tag name in index: {str(name)[:60]!r}")
        check_id(image_id, "image")
    for image_id, info in obj["images"].items():
        check_id(image_id, "image")
        if not isinstance(info, dict) or any(
                not isinstance(info.get(k), (str, type(None))) for k in _SUMMARY_FIELDS):
            raise InvalidInputError(f"{where}: bad summary of image {short_id(image_id)} in "
                                    "index.json", "push the image again to rewrite the index")
    shipped = obj.setdefault("bytecode", {})  # {image: bytecode ID}; older indexes lack it
    if not isinstance(shipped, dict):
        raise InvalidInputError(f"{where}: index.json has a malformed 'bytecode' field")
    for image_id, bytecode_id in shipped.items():
        check_id(image_id, "image")
        check_id(bytecode_id, "bytecode")
    return obj


def parse_trees_file(data, image_id):
    """Records ``<id> <len>\\n<bytes>`` -> {tree id: Tree} (each verified)."""
    data = unpack_meta(data, f"image {short_id(image_id)}: tree bundle")
    trees, pos = {}, 0
    while pos < len(data):
        nl = data.find(b"\n", pos, pos + 100)
        if nl < 0:
            raise InvalidInputError(f"image {short_id(image_id)}: malformed tree bundle")
        tid, sep, length = data[pos:nl].decode("ascii", "replace").partition(" ")
        check_id(tid, "tree")
        length = read_uint(length, f"image {short_id(image_id)}: tree bundle record length",
                           MAX_META)
        body = data[nl + 1:nl + 1 + length]
        if len(body) != length:
            raise InvalidInputError(f"image {short_id(image_id)}: tree bundle is truncated")
        trees[tid] = Tree.parse(body, tid)
        pos = nl + 1 + length
    return trees


def trees_file_bytes(trees, level=WIRE_LEVEL):
    """{tree id: bytes} -> the ``.trees`` file that :func:`parse_trees_file` reads."""
    return pack_meta(b"".join(f"{tid} {len(data)}\n".encode("ascii") + data
                              for tid, data in sorted(trees.items())), level)


MAX_BLOB_SIZE = 1 << 40

#: where a repository holds a blob: the frame (pack, offset, csize) and the
#: blob's place ``at`` in the frame's content
BlobLoc = collections.namedtuple("BlobLoc", "size pack offset csize at")


def unpack_meta(data, what):
    """A ``.trees`` or ``.blobs`` file as pushed (one zstd frame) or as
    written by hand (plain): its bytes, at most MAX_META of them."""
    if data[:4] != ZSTD_MAGIC:
        return data
    parts, n = [], 0
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=1 << WIRE_WINDOW_LOG) \
            .stream_reader(io.BytesIO(data), read_size=CHUNK)
        while chunk := reader.read(CHUNK):
            n += len(chunk)
            if n > MAX_META:
                raise InvalidInputError(f"{what} is too large")
            parts.append(chunk)
    except zstandard.ZstdError as exc:
        raise InvalidInputError(f"{what} cannot be decompressed: {exc}") from None
    return b"".join(parts)


def pack_meta(data, level=WIRE_LEVEL):
    """What :func:`unpack_meta` reads back: ``data`` as one wire frame."""
    return _wire_cctx(len(data), level).compress(data)


def parse_blobs_file(data, image_id):
    """Lines ``<blob> <size> <pack> <offset> <csize> [<at>]`` -> {blob: BlobLoc}.
    The blobs listed in one frame must tile its content exactly (``at`` 0 when
    absent: the frame holds that blob alone); a frame of several blobs holds at
    most GROUP_MAX bytes, so a reader never decompresses more than that for them."""
    out = {}
    what = f"image {short_id(image_id)}: blob index"
    try:
        text = unpack_meta(data, what).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{what} is malformed") from None
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) not in (5, 6) or parts[0] in out:
            raise InvalidInputError(f"{what}: malformed line")
        blob, size, pack, offset, csize = parts[:5]
        check_id(blob, "blob")
        check_id(pack, "pack")
        out[blob] = BlobLoc(read_uint(size, f"{what}: size", MAX_BLOB_SIZE), pack,
                            read_uint(offset, f"{what}: offset"),
                            read_uint(csize, f"{what}: compressed size", MAX_BLOB_SIZE),
                            read_uint(parts[5], f"{what}: place in frame", GROUP_MAX)
                            if len(parts) == 6 else 0)
    for (_, _, csize), members in frame_members(out).items():
        if not frame_tiles(csize, members):
            raise InvalidInputError(f"blob {short_id(members[0][2])}: implausible sizes "
                                    "in blob index (its frame's blobs do not fill it)")
    return out


def frame_members(index):
    """{(pack, offset, csize): [(at, size, blob)] sorted} of a blob index."""
    frames = {}
    for blob, loc in index.items():
        frames.setdefault((loc.pack, loc.offset, loc.csize), []).append((loc.at, loc.size, blob))
    for members in frames.values():
        members.sort()
    return frames


def frame_tiles(csize, members):
    """Whether sorted members [(at, size, blob)] fill their frame's content
    end to end with plausible sizes: several only up to GROUP_MAX bytes, and
    a frame no bigger than zstd makes of incompressible data."""
    pos = 0
    for at, size, _ in members:
        if at != pos:
            return False
        pos += size
    return 0 < csize <= pos + (pos >> 7) + 1024 and (len(members) == 1 or pos <= GROUP_MAX)


def blobs_file_bytes(blobs, level=WIRE_LEVEL):
    """{blob: BlobLoc} -> the ``.blobs`` file that :func:`parse_blobs_file` reads."""
    return pack_meta("".join(f"{b} {loc.size} {loc.pack} {loc.offset} {loc.csize} {loc.at}\n"
                             for b, loc in sorted(blobs.items(), key=_frame_order)
                             ).encode("ascii"), level)


def _frame_order(item):
    """Lines of one frame together, in order (they compress better so)."""
    b, loc = item
    return loc.pack, loc.offset, loc.at, b


def read_frame_members(f, csize, members, wanted, out, done):
    """Decompress one repository frame read from ``f`` (at most ``csize``
    bytes) holding ``members`` [(at, size, blob)], which must tile it, and
    verify each ``wanted`` one against its ID as it passes: ``out(blob,
    chunk)`` per piece, then ``done(blob)``. Nothing is decompressed past the
    last wanted member; a frame read to its end must end exactly there."""
    if not frame_tiles(csize, members):
        raise IntegrityError("blob", members[0][2], "lies in a frame its listing does not fill")
    last = max(i for i, m in enumerate(members) if m[2] in wanted)
    src = _Tee(f, csize, _FrameShape(members[0][2]), None)
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=1 << WIRE_WINDOW_LOG) \
            .stream_reader(src, read_size=CHUNK, closefd=False)
        for i, (at, size, blob) in enumerate(members[:last + 1]):
            h = _member(reader, blob, size, out if blob in wanted else None)
            if i == len(members) - 1:  # the frame must end here, and be whole
                if reader.read(1):
                    raise IntegrityError("blob", blob, "expands past its declared size")
                while src.read(CHUNK):
                    pass
                src.shape.finish()
            if h is not None and h.hexdigest() != blob:
                raise IntegrityError("blob", blob, "content does not match its ID")
            if h is not None:
                done(blob)
    except zstandard.ZstdError as exc:
        raise IntegrityError("blob", members[0][2], f"cannot decompress: {exc}") from None


def _member(reader, blob, size, out):
    """Read one member of ``size`` bytes; with ``out``, pass it on and
    return its hasher (else None)."""
    h, left = blake3.blake3() if out is not None else None, size
    while left:
        chunk = reader.read(min(left, CHUNK))
        if not chunk:
            raise IntegrityError("blob", blob, "is truncated")
        left -= len(chunk)
        if out is not None:
            h.update(chunk)
            out(blob, chunk)
    return h


def _wire_cctx(total, level):
    """A compressor for one wire frame of ``total`` bytes."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=total, enable_ldm=True,
        window_log=max(10, min(WIRE_WINDOW_LOG, (total - 1).bit_length())))
    return zstandard.ZstdCompressor(compression_params=params)


def group_key(path):
    """Which blobs a push compresses together: those of one distribution (the
    first name below ``site-packages``, without version or suffix), else of one
    top folder; so a changed distribution is its own group."""
    parts = path.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "site-packages":
            name = re.split(r"[-.]", parts[i + 1], maxsplit=1)[0]
            return "/".join(parts[:i + 1] + [name.lower()])
    return "/".join(parts[:2]) if len(parts) > 2 else ""


def plan_groups(sizes, paths):
    """Blobs {blob: size} (each with a path) -> the lists of blobs that go
    into one frame each: by :func:`group_key`, similar files next to each
    other, up to GROUP_MAX bytes (a bigger blob goes alone)."""
    by_key = {}
    for b in sizes:
        by_key.setdefault(group_key(paths[b]), []).append(b)
    groups = []
    for key in sorted(by_key):
        cur, n = [], 0
        for b in sorted(by_key[key], key=lambda b: _similar(paths[b])):
            if cur and n + sizes[b] > GROUP_MAX:
                groups.append(cur)
                cur, n = [], 0
            cur.append(b)
            n += sizes[b]
        groups.append(cur)
    return groups


def _similar(path):
    """Sort key that puts files of one kind and name next to each other."""
    name = path.rpartition("/")[2]
    return name.rpartition(".")[2] if "." in name else "", name, path


def check_image_trees(trees, root):
    """Walk the trees from ``root``: all present, names and links safe (the
    names by this machine's rules when they were parsed). Returns the set of
    blob IDs the image needs."""

    def get_tree(tid):
        tree = trees.get(tid)
        if tree is None:
            raise InvalidInputError(f"tree {short_id(tid)} is missing from the image")
        return tree
    need = set()
    for child, e in walk_image(get_tree, root):
        if e.type == T_SYMLINK:
            check_link_target(child, e.target)
        elif e.type == T_SYMLINK_TEMPLATE:
            check_link_template(child, bytes.fromhex(e.ref))
        elif e.type != T_DIR:
            need.add(e.ref)
    return need


def _image_objects(store, image_id):
    """(manifest bytes, {tree id: bytes}, {blob: its first path}) of a local
    image, walked (and so checked) as create walks it."""
    m = store.manifest(image_id)
    trees = {}

    def get_tree(tid):
        tree = trees[tid] = store.tree(tid)
        return tree
    paths = {}
    for child, e in walk_image(get_tree, m.root):
        if e.type != T_DIR and e.type not in LINK_TYPES:
            paths.setdefault(e.ref, child)
    return m.serialize(), {tid: t.serialize() for tid, t in trees.items()}, paths


_REPO_ENTRIES = {"tmp", "images", "bytecode", "packs", "index.json", REPO_MARKER, ".lock"}


def repo_init(path):
    """Make an empty repository folder (idempotent, safe when racing)."""
    os.makedirs(path, exist_ok=True)
    repo = RepoDir(path)
    for d in ("tmp", "images", "packs"):
        with repo.folder(d, create=True):
            pass
    repo.create_once("index.json", index_bytes({"format": 1, "images": {}, "tags": {}}))
    repo.create_once(REPO_MARKER, REPO_MARKER_DATA)
    return {"path": os.path.abspath(path)}


def index_bytes(index):
    """The canonical bytes of a repository's index.json."""
    return json.dumps(index, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


_LOCK_GUARD = threading.Lock()  # POSIX record locks are per process: one holder per process


@contextlib.contextmanager
def repo_lock(root, timeout=120):
    """Exclusive lock for updating index.json: an OS lock (fcntl.lockf, which
    NFS honours; msvcrt.locking on Windows) on ``.lock``, a file that is never
    deleted. A process that dies releases it, so there is no stale lock to break."""
    repo = root if isinstance(root, RepoDir) else RepoDir(root)
    busy = ConflictError(f"the repository {repo.root} is locked by another push",
                         f"retry when it has finished (waited {timeout} s)")
    deadline = time.monotonic() + timeout
    if not _LOCK_GUARD.acquire(timeout=timeout):
        raise busy
    try:
        fd = repo.open_lock()
        try:
            while not _lock_range(fd, True, 0, 1):
                if time.monotonic() > deadline:
                    raise busy
                time.sleep(0.02)
            try:
                yield
            finally:
                _unlock_range(fd, 0, 1)
        finally:
            os.close(fd)
    finally:
        _LOCK_GUARD.release()


def hostname():
    """This machine's name, recorded with a create in progress."""
    if hasattr(os, "uname"):  # POSIX: what gethostname(2) says, without socket's import
        return os.uname().nodename or "localhost"
    import socket  # here: imported on first use, for a faster start
    return socket.gethostname() or "localhost"


def _repo_blobs(repo):
    """{blob: BlobLoc} of what a folder repository lists. A listing only says
    where to look: push verifies each frame it relies on; a malformed listing
    is not used at all."""
    out = {}
    for folder in ("images", "bytecode"):
        names = repo.listdir(folder) if folder == "images" or repo.exists(folder) else []
        for name in names:
            if name.endswith(".blobs"):
                data = repo.read(f"{folder}/{name}", MAX_META)
                with contextlib.suppress(InvalidInputError):
                    out.update(parse_blobs_file(data, name[:-6]))
    return out


def _push_target(repo):
    root = os.path.abspath(repo)
    target = RepoDir(root)
    if os.path.isdir(root) and not target.exists(REPO_MARKER):
        if set(os.listdir(root)) - _REPO_ENTRIES:
            raise InvalidInputError(f"{root} is not a vocker repository",
                                    "push to an empty folder or one made by 'vocker repo init'")
    repo_init(root)
    return target


def _repo_holds(repo, have, blobs):
    """The blobs among ``blobs`` that the repository really holds where its
    listings ``have`` say: each frame they lie in is read back once (bounded
    by its listed size) and all its members are hashed; a frame that fails
    in any way vouches for none of them."""
    frames, good, files = frame_members(have), set(), {}
    keys = {(loc.pack, loc.offset, loc.csize) for b in blobs if (loc := have.get(b))}
    try:
        for pack, offset, csize in sorted(keys):
            members, ok = frames[pack, offset, csize], set()
            try:
                f = files.get(pack) or files.setdefault(pack, repo.open(f"packs/{pack}.pack"))
                f.seek(offset)
                read_frame_members(f, csize, members, {m[2] for m in members},
                                   lambda b, chunk: None, ok.add)
            except (IntegrityError, NotFoundError):
                continue
            good |= ok
    finally:
        for f in files.values():
            f.close()
    return good


def _send_blobs(store, repo, missing, paths, have, good, progress, level, stream=None):
    """Write ``missing`` blobs into one new pack as wire frames, one per group
    (:func:`plan_groups`), each blob verified as it is read from the local
    store (``stream``, default :meth:`Store.blob_stream`): a damaged local
    copy never leaves it. -> bytes sent"""
    streams = {b: (stream or store.blob_stream)(b) for b in missing}
    sizes = {b: size for b, (size, _) in streams.items()}
    writer = PackWriter(repo.tmp_name(), None, readonly=False, repo=repo)
    progress.total, progress.total_bytes = len(missing), sum(sizes.values())

    budget = _Budget(WIRE_MEMORY)

    def one(group):
        total = sum(sizes[b] for b in group)
        if total > GROUP_MAX:
            return group, total, None  # one big blob: streamed below, memory stays flat
        import tempfile  # here: imported on first use, for a faster start
        spool = tempfile.SpooledTemporaryFile(WIRE_SPOOL, dir=store.tmp_dir)
        try:
            _compress_group([streams[b][1] for b in group], total, spool.write, level, budget)
        except BaseException:
            spool.close()
            raise
        return group, total, spool
    try:
        with thread_pool(WIRE_THREADS) as pool:
            groups = plan_groups(sizes, paths)
            for group, total, spool in _bounded_map(pool, one, groups, WIRE_THREADS + 1):
                if spool is None:  # in order, so that a pack's bytes never depend on timing
                    offset = writer.append_stream(lambda write: _compress_group(
                        [streams[b][1] for b in group], total, write, level, budget))
                else:
                    with spool:
                        n = spool.tell()
                        spool.seek(0)
                        offset = writer.append_stream(lambda write: _copy_exactly(spool, n, write))
                csize = writer.offset - offset
                at = 0
                for b in group:
                    have[b] = BlobLoc(sizes[b], None, offset, csize, at)
                    at += sizes[b]
                progress.update(len(group), nbytes=at)
        pack_id = writer.finish()
    except IntegrityError as exc:
        writer.abort()
        exc.message = f"{exc.message} (in the local store; nothing was sent)"
        exc.hint = "pull or commit the image holding that file again, or remove it (vocker rmi)"
        raise
    except BaseException:
        writer.abort()
        raise
    for b in missing:
        have[b] = have[b]._replace(pack=pack_id)
    good.update(missing)
    return writer.offset


def _compress_group(reads, total, write, level, budget):
    """Compress the blobs that ``reads`` pass on (``total`` bytes) into one
    wire frame, each piece of it given to ``write``; its compression state
    held from ``budget`` (:class:`_Budget`) until it is freed."""
    with budget.hold(frame_memory(total, level)):
        _compress_frame(reads, total, write, level)


def _compress_frame(reads, total, write, level):
    cobj, files = _wire_cctx(total, level).compressobj(size=total), {}

    def put(chunk):
        data = cobj.compress(chunk)
        if data:
            write(data)
    try:
        for read in reads:
            read(put, files)
    finally:
        for f in files.values():
            f.close()
    write(cobj.flush())


def frame_memory(total, level):
    """A bound on the memory zstd holds to compress one wire frame of
    ``total`` bytes at ``level`` (measured with ``_wire_cctx``, in MB for
    window 2^22/24/26/27: level 19 55/105/177/273, level 9 -/29/-/155,
    level 3 6/19/-/138)."""
    window = 1 << max(10, min(WIRE_WINDOW_LOG, (total - 1).bit_length()))
    return (2 * window + (80 << 20)) if level > 3 else window + (16 << 20)


class _Budget:
    """A bound on what threads hold at once: :meth:`hold` of ``n`` waits
    until ``n`` fits beside what the others hold, or nothing is held (so
    one bigger than the bound still runs, alone)."""

    def __init__(self, limit):
        self.limit, self.used, self.cond = limit, 0, threading.Condition()

    @contextlib.contextmanager
    def hold(self, n):
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            with self.cond:
                self.used -= n
                self.cond.notify_all()


def _listing(have, blobs):
    """The ``.blobs`` entries of an image: every member of each frame that
    holds one of its ``blobs``, so that the listing tiles its frames."""
    frames = frame_members(have)
    out = {}
    for b in blobs:
        loc = have[b]
        for at, size, m in frames[loc.pack, loc.offset, loc.csize]:
            out[m] = have[m]
    return out


def _push_bytecode(store, repo, image_id, paths, have, good, progress, level):
    """Ship the ``.pyc`` of an image for its own interpreter: those this
    store compiled (intact ones), else those pulled with it, as a bytecode
    record (:class:`Bytecode`) in ``bytecode/``. -> {"id", "cache_tag",
    "pycs", "bytes"}, or None when there are none."""
    found = _bytecode_to_push(store, image_id, paths)
    if found is None:
        return None
    rec, tree, streams = found
    pycs = sorted(set(streams))
    good |= _repo_holds(repo, have, [p for p in pycs if p not in good])
    missing = [p for p in pycs if p not in good]
    sent = 0
    if missing:
        progress.stage(f"{progress.label} bytecode of {short_id(image_id)}")
        names = {pyc: paths[src] + "c" for src, pyc in Bytecode.pycs(tree).items()}
        sent = _send_blobs(store, repo, missing, names, have, good, progress, level,
                           stream=lambda p: streams[p])
    bytecode_id = rec.id
    repo.write(f"bytecode/{bytecode_id}.trees", trees_file_bytes({tree.id: tree.serialize()},
                                                                level))
    repo.write(f"bytecode/{bytecode_id}.blobs", blobs_file_bytes(_listing(have, pycs), level))
    repo.write(f"bytecode/{bytecode_id}.json", rec.serialize())
    return {"id": bytecode_id, "cache_tag": rec.cache_tag, "pycs": len(streams), "bytes": sent}


def _bytecode_to_push(store, image_id, paths):
    """(Bytecode, its tree, {pyc: stream}) of an image's sources ``paths``
    for the cache tag of its interpreter, or None. A ``.pyc`` compiled here
    comes before one pulled with the image."""
    python = store.manifest(image_id).python
    if python is None:
        return None
    tag = python["cache_tag"]
    pycs = {s: p for s, p in store.shipped_pycs(image_id, tag).items() if s in paths}
    local, sizes = store.cached_pycs(tag, set(paths))
    local = {s: p for s, p in local.items() if p and store.check_pyc(p, sizes.get(p)) == "ok"}
    pycs.update(local)
    if not pycs:
        return None
    ours = set(local.values())
    streams = {p: store.pyc_stream(p) if p in ours else store.blob_stream(p)
               for p in set(pycs.values())}
    tree = Bytecode.tree(pycs)
    return Bytecode(image_id, tag, tree.id), tree, streams


def push(store, refs, repo, progress=None, record=True, with_bytecode=True):
    """Copy images (and the tags named) into a repository folder. Every blob
    sent is verified as it is read; a blob the repository lists is skipped only
    after its frame there was verified (a bad or missing one is sent again).
    ``record``: the store notes that the repository holds them (save notes
    its archive instead). ``with_bytecode``: the ``.pyc`` of each image's
    interpreter go too (:func:`_push_bytecode`)."""
    if re.match(r"(?i)https?://", repo):
        raise UsageError("push goes to a folder or a share, not to an HTTP URL",
                         "push to the folder your web server serves")
    wanted = [store.resolve_ref(ref) for ref in refs]  # before a repository is made
    level = push_level()
    progress = progress or Progress("pushing", enabled=False)
    verb = progress.label  # "pushing", or "saving"
    target = _push_target(repo)
    target.clean_tmp()
    have, good = _repo_blobs(target), set()
    pushed, sent = [], 0
    try:
        with store.writing():  # it reads packs: gc must not repack them meanwhile
            for image_id, tag in wanted:
                manifest, trees, paths = _image_objects(store, image_id)
                good |= _repo_holds(target, have, [b for b in paths if b not in good])
                missing = sorted(b for b in paths if b not in good)
                if missing:
                    progress.stage(f"{verb} {short_id(image_id)}")
                    sent += _send_blobs(store, target, missing, paths, have, good, progress,
                                        level)
                target.write(f"images/{image_id}.trees", trees_file_bytes(trees, level))
                target.write(f"images/{image_id}.blobs",
                             blobs_file_bytes(_listing(have, paths), level))
                target.write(f"images/{image_id}.json", manifest)
                pushed.append({"id": image_id, "tag": tag, "blobs": len(paths),
                               "new_blobs": len(missing), "bytecode": None})
                if with_bytecode:
                    shipped = _push_bytecode(store, target, image_id, paths, have, good,
                                             progress, level)
                    sent += shipped["bytes"] if shipped else 0
                    pushed[-1]["bytecode"] = shipped
    finally:
        progress.close()
    with repo_lock(target):
        index = parse_index(target.read("index.json", MAX_META), target.root)
        for (image_id, tag), done in zip(wanted, pushed):
            m = json.loads(store.manifest(image_id).serialize())
            index["images"][image_id] = {"kind": m["kind"],
                                         "python": (m["python"] or {}).get("version")}
            if tag:
                index["tags"][tag] = image_id
            if done["bytecode"]:
                index.setdefault("bytecode", {})[image_id] = done["bytecode"]["id"]
        target.write("index.json", index_bytes(index))
    if record:
        _record_sources(store, [image_id for image_id, _ in wanted], target.root)
    return {"repository": target.root, "images": pushed, "bytes": sent}


def push_level():
    """The zstd level of what push and save write: ``$VOCKER_PUSH_LEVEL``
    (1-19; lower is faster and bigger), else WIRE_LEVEL."""
    level = _env_uint("VOCKER_PUSH_LEVEL", WIRE_LEVEL)
    if level > 19:
        raise UsageError(f"VOCKER_PUSH_LEVEL={level} is above 19",
                         "set VOCKER_PUSH_LEVEL to 1-19, or unset it (19)")
    return level


def _resolve_remote(src, ref, index):
    """(image ID, tag or None) of ``ref`` in a repository's index (:func:`ref_forms`)."""
    tag, prefix = ref_forms(ref)
    if tag in index["tags"]:
        return index["tags"][tag], tag
    if prefix is None:
        raise NotFoundError("tag in repository", tag, "run 'vocker repo ls REPO'")
    if len(ref) == ID_HEX_LEN:
        return ref, None
    hits = sorted(i for i in {*index["images"], *index["bytecode"].values()} if i.startswith(ref))
    if not hits:
        raise NotFoundError("image in repository", ref, "run 'vocker repo ls REPO'")
    if len(hits) > 1:
        raise AmbiguousError(ref, hits)
    return hits[0], None


def _location_key(location):
    """How the store records a repository or archive: a URL as given, a path absolute."""
    return location if re.match(r"(?i)https?://", location) else os.path.abspath(location)


def _record_sources(store, image_ids, location):
    """Note that ``location`` holds these images (a read-only store notes nothing)."""
    if not store.readonly:
        store.add_image_sources([(i, _location_key(location)) for i in image_ids])


def _remote_bytecode(src, ref_id, tag, index, with_bytecode):
    """(image ID, bytecode ID or None, its record bytes) for a resolved ref.
    A bytecode ID pins its image (the record, checked against the ID, names
    it); a tag brings the bytecode the index lists with its image (the index
    chose the image too); an image ID alone brings none."""
    if ref_id in index["bytecode"].values() and ref_id not in index["images"]:
        record = src.get(f"bytecode/{ref_id}.json", limit=MAX_MANIFEST)
        return Bytecode.parse(record, ref_id).image, ref_id, record
    bytecode_id = index["bytecode"].get(ref_id) if tag and with_bytecode else None
    if bytecode_id is None:
        return ref_id, None, None
    record = src.get(f"bytecode/{bytecode_id}.json", limit=MAX_MANIFEST)
    if Bytecode.parse(record, bytecode_id).image != ref_id:
        raise InvalidInputError(f"{tag}: the repository's bytecode {short_id(bytecode_id)} "
                                f"is not of image {short_id(ref_id)}",
                                "push the image again, or pull with --no-bytecode")
    return ref_id, bytecode_id, record


def pull(store, location, refs, headers=None, progress=None, with_bytecode=True):
    """Fetch images from a repository or archive, verifying every object;
    with the bytecode a tag or a bytecode ID names (:func:`_remote_bytecode`)
    unless ``with_bytecode`` is false."""
    src = open_source(location, headers)
    if isinstance(src, HttpSource):
        src.tmp_dir = store.tmp_dir
    try:
        with store.writing():  # from its first spooled file in tmp/ to its last record
            index = parse_index(src.get("index.json"), location)
            results = []
            for ref in refs:
                ref_id, tag = _resolve_remote(src, ref, index)
                image_id, bytecode_id, record = _remote_bytecode(src, ref_id, tag, index,
                                                                 with_bytecode)
                one = _pull_one(store, src, image_id, tag, progress)
                one["bytecode"] = bytecode_id and _pull_bytecode(
                    store, src, bytecode_id, record, progress)
                results.append({**image_info(store, image_id), **one})
            _record_sources(store, [r["id"] for r in results], location)
        return {"source": location, "images": results, "bytes": src.bytes,
                "requests": src.requests}
    finally:
        src.close()


def _pull_one(store, src, image_id, tag, progress):
    manifest_bytes = src.get(f"images/{image_id}.json", limit=MAX_MANIFEST)
    m = Manifest.parse(manifest_bytes, image_id)
    present = store.has_image(image_id)
    fetched = 0
    if not present:
        trees = parse_trees_file(src.get(f"images/{image_id}.trees"), image_id)
        need = check_image_trees(trees, m.root)
        index = parse_blobs_file(src.get(f"images/{image_id}.blobs"), image_id)
        lacking = need - set(index)
        if lacking:
            raise InvalidInputError(f"image {short_id(image_id)}: blob index lacks "
                                    f"{len(lacking)} blob(s) the trees name")
        ids = sorted(need)
        have = store.present_blobs(ids, framed=True)
        missing = [b for b in ids if b not in have]
        rows = _fetch_blobs(store, src, missing, index, progress)
        fetched = len(rows)
        store.add_image(image_id, manifest_bytes, trees, rows, [tag] if tag else ())
    elif tag:
        store.set_tag(tag, image_id)
    return {"id": image_id, "tag": tag, "present": bool(present), "fetched_blobs": fetched}


def _pull_bytecode(store, src, bytecode_id, record, progress):
    """Fetch a bytecode record's tree and ``.pyc`` blobs, each verified by
    its ID, and record them. -> {"id", "cache_tag", "pycs", "fetched_blobs"}"""
    rec = Bytecode.parse(record, bytecode_id)
    if store.has_bytecode(bytecode_id):
        pycs = store.shipped_pycs(rec.image, rec.cache_tag)
        return {"id": bytecode_id, "cache_tag": rec.cache_tag, "pycs": len(pycs),
                "fetched_blobs": 0}
    trees = parse_trees_file(src.get(f"bytecode/{bytecode_id}.trees"), bytecode_id)
    if set(trees) != {rec.root}:
        raise InvalidInputError(f"bytecode {short_id(bytecode_id)}: its .trees file holds "
                                "other trees than its root")
    pycs = Bytecode.pycs(trees[rec.root])
    index = parse_blobs_file(src.get(f"bytecode/{bytecode_id}.blobs"), bytecode_id)
    need = set(pycs.values())
    if need - set(index):
        raise InvalidInputError(f"bytecode {short_id(bytecode_id)}: blob index lacks "
                                f"{len(need - set(index))} blob(s) its tree names")
    have = store.present_blobs(sorted(need), framed=True)
    rows = _fetch_blobs(store, src, sorted(need - set(have)), index, progress)
    store.add_bytecode(bytecode_id, record, {t: tree.serialize() for t, tree in trees.items()},
                       rows)
    return {"id": bytecode_id, "cache_tag": rec.cache_tag, "pycs": len(pycs),
            "fetched_blobs": len(rows)}


def _plan_reads(missing, index):
    """The frames holding ``missing`` blobs, as coalesced reads [(pack, [start,
    end, frames])] of at most RANGE_MAX (a bigger frame is a read of its own,
    fetched in pieces), and the frames of one blob over GROUP_MAX [frame],
    which are streamed; a frame is (offset, csize, members, wanted)."""
    frames, wanted = frame_members(index), {}
    for b in missing:
        loc = index[b]
        wanted.setdefault((loc.pack, loc.offset, loc.csize), set()).add(b)
    by_pack, big = {}, []
    for (pack, offset, csize), want in sorted(wanted.items()):
        frame = (offset, csize, frames[pack, offset, csize], want)
        if len(frame[2]) == 1 and frame[2][0][1] > GROUP_MAX:
            big.append((pack, frame))
        else:
            by_pack.setdefault(pack, []).append(frame)
    reads = []
    for pack, items in sorted(by_pack.items()):
        cur = None
        for frame in items:
            offset, csize = frame[0], frame[1]
            if cur and offset >= cur[1] and offset - cur[1] <= RANGE_GAP and \
                    offset + csize - cur[0] <= RANGE_MAX:
                cur[1] = max(cur[1], offset + csize)
                cur[2].append(frame)
            else:
                cur = [offset, offset + csize, [frame]]
                reads.append((pack, cur))
    return reads, big


class _Pieces:
    """A file-like view of ``length`` bytes of a source file from ``offset``,
    fetched in pieces of at most RANGE_MAX (memory stays flat)."""

    def __init__(self, src, rel, offset, length):
        self.src, self.rel, self.pos, self.left = src, rel, offset, length
        self.buf = memoryview(b"")

    def read(self, size=-1):
        if not self.buf and self.left:
            n = min(self.left, RANGE_MAX)
            self.buf = memoryview(self.src.get_range(self.rel, self.pos, n))
            self.pos += n
            self.left -= n
        size = len(self.buf) if size < 0 else size
        data, self.buf = bytes(self.buf[:size]), self.buf[size:]
        return data


def _check_room(store, nbytes):
    try:
        free = free_bytes(store.tmp_dir)
    except OSError:
        return
    if nbytes > free:
        raise EnvironmentProblem(f"the pull needs {human_size(nbytes)} in {store.home}, "
                                 f"which has {human_size(free)} free",
                                 "free some space (vocker rmi) or pass --home DIR")


def _fetch_blobs(store, src, missing, index, progress):
    """Fetch the frames holding ``missing`` blobs in coalesced ranges, verify
    each blob, and write them (compressed again for the store) into one pack."""
    reads, big = _plan_reads(missing, index)
    _check_room(store, _room_needed(reads, big))
    for pack, (start, end, frames) in reads:
        src.expect(f"packs/{pack}.pack", end)
    for pack, (offset, csize, members, want) in big:
        src.expect(f"packs/{pack}.pack", offset + csize)
    writer = store.pack_writer()
    rows = []
    if progress is not None:
        progress.stage(progress.label, len(missing), sum(index[b].size for b in missing))

    def keep(b, size, offset, csize):
        rows.append([b, size, csize, None, offset])
        if progress is not None:
            progress.update(nbytes=size)

    def put(b, size, parts):  # in a worker: the pack takes each blob as it comes
        offset = writer.append_stream(lambda write: [write(p) for p in parts])
        return b, size, offset, sum(map(len, parts))

    try:
        workers = HTTP_THREADS if isinstance(src, HttpSource) else WIRE_THREADS
        with thread_pool(workers) as pool:
            for out in _bounded_map(pool, lambda job: _read_job(src, *job, put), reads,
                                    workers + 1):
                for b, size, offset, csize in out:
                    keep(b, size, offset, csize)
        for pack, (offset, csize, members, want) in big:
            size = members[0][1]
            at = writer.append_stream(lambda write: _recompress(
                _Pieces(src, f"packs/{pack}.pack", offset, csize), csize, members, size, write))
            keep(members[0][2], size, at, writer.offset - at)
        pack_id = writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        if progress is not None:
            progress.close()
    if rows and pack_id is None:  # never record a blob without its frame
        raise IntegrityError("blob", rows[0][0], "has no frame")
    for r in rows:
        r[3] = pack_id
    return [tuple(r) for r in rows]


def _room_needed(reads, big):
    """What the store's pack may grow by: each frame's blobs at the store's
    faster level, reckoned as twice the frame (at most its content)."""
    frames = [f for _, (_, _, fs) in reads for f in fs] + [f for _, f in big]
    return sum(min(2 * csize, sum(m[1] for m in members))
               for _, csize, members, _ in frames)


#: frames being decompressed at once, whatever the number of fetching threads:
#: each holds a window of up to 2**WIRE_WINDOW_LOG bytes
_UNPACKING = threading.BoundedSemaphore(WIRE_THREADS)


def _read_job(src, pack, job, put):
    """One coalesced read: its frames' wanted blobs, each compressed again
    and given to ``put(blob, size, store frame)`` as soon as it is verified
    (memory holds one blob, not a frame's) -> what ``put`` returned, in order."""
    start, end, frames = job
    rel = f"packs/{pack}.pack"
    data = src.get_range(rel, start, end - start) if end - start <= RANGE_MAX else None
    out = []
    with _UNPACKING:
        for offset, csize, members, want in frames:
            f = _Pieces(src, rel, offset, csize) if data is None else \
                io.BytesIO(data[offset - start:offset - start + csize])
            sizes = {b: size for _, size, b in members}
            frame = _StoreFrames(sizes)
            read_frame_members(f, csize, members, want, frame.write,
                               lambda b: out.append(put(b, sizes[b], frame.finish(b))))
    return out


class _StoreFrames:
    """Blobs of a wire frame compressed again for the store as their pieces
    pass (memory holds a blob's store frame, not its content)."""

    def __init__(self, sizes):
        self.sizes, self.cobj, self.parts = sizes, None, []

    def write(self, blob, chunk):
        if self.cobj is None:
            self.cobj = _cctx().compressobj(size=self.sizes[blob])
        data = self.cobj.compress(chunk)
        if data:
            self.parts.append(data)

    def finish(self, blob):
        """The store frame of ``blob``, now verified; the next blob starts anew."""
        if self.cobj is None:  # an empty blob: no piece passed
            self.cobj = _cctx().compressobj(size=0)
        self.parts.append(self.cobj.flush())
        parts, self.cobj, self.parts = self.parts, None, []
        return parts


def _recompress(f, csize, members, size, write):
    """Stream the one blob of a big wire frame into a store frame, verified."""
    cobj = _cctx().compressobj(size=size)

    def put(b, chunk):
        data = cobj.compress(chunk)
        if data:
            write(data)
    read_frame_members(f, csize, members, {members[0][2]}, put, lambda b: write(cobj.flush()))


def repo_ls(location, headers=None):
    src = open_source(location, headers)
    try:
        index = parse_index(src.get("index.json"), location)
    finally:
        src.close()
    tags = {}
    for name, image_id in index["tags"].items():
        tags.setdefault(image_id, []).append(name)
    return [{"id": i, "short_id": short_id(i), "tags": sorted(tags.get(i, [])),
             "kind": info.get("kind"), "python": info.get("python"),
             "bytecode": index["bytecode"].get(i)}
            for i, info in sorted(index["images"].items())]


def save(store, refs, out, progress=None, with_bytecode=True):
    """Write images into one portable archive (a tar of a repository), with
    their bytecode unless ``with_bytecode`` is false (as :func:`push`)."""
    out = os.path.abspath(out)
    # staged beside the output, not in the store: save works on a read-only store
    stage = os.path.join(os.path.dirname(out),
                         f".{os.path.basename(out)}.vocker-{random_hex(8)}")
    try:
        result = push(store, refs, stage, progress=progress, record=False,
                      with_bytecode=with_bytecode)
        tmp = out + f".tmp-{random_hex(8)}"
        try:
            import tarfile  # here: imported on first use, for a faster start
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                names = []
                for dirpath, dirnames, filenames in os.walk(stage):
                    dirnames[:] = sorted(d for d in dirnames if d != "tmp")
                    for n in sorted(filenames):
                        if n != ".lock":
                            names.append(os.path.relpath(os.path.join(dirpath, n), stage))
                for rel in sorted(names):
                    info = tar.gettarinfo(os.path.join(stage, rel), arcname=rel.replace(os.sep, "/"))
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    info.mode = 0o644
                    with open(os.path.join(stage, rel), "rb") as f:
                        tar.addfile(info, f)
            os.replace(tmp, out)
        except BaseException:
            _unlink_quiet(tmp)
            raise
    finally:
        rmtree(stage)
    _record_sources(store, [i["id"] for i in result["images"]], out)
    return {"file": out, "images": result["images"], "size": os.path.getsize(out)}


def load(store, path, progress=None):
    """Load every image of an archive; skips what the store already has."""
    if not os.path.isfile(path):
        raise NotFoundError("archive", path)
    src = TarSource(path)
    try:
        index = parse_index(src.get("index.json"), path)
    finally:
        src.close()
    shipped = index["bytecode"]  # an untagged image by its bytecode ID, so that it comes too
    refs = list(index["tags"]) + [shipped.get(i, i) for i in index["images"]
                                  if i not in index["tags"].values()]
    return pull(store, path, refs, progress=progress)


###############################################################################
# Store life: verify, status, diff, history ###################################
###############################################################################

#: a distribution's metadata: ``NAME-VERSION.dist-info/METADATA`` at any depth
_DIST_RE = _Regex(r"(?:^|/)([^/]+)-([^/-]+)\.dist-info/METADATA$")


def flat_image(get_tree, root):
    """{relative path: (type, ref)} of an image's files and links (folders
    are implied by them), refusing what :func:`walk_image` refuses."""
    return {rel: (e.type, e.ref) for rel, e in walk_image(get_tree, root) if e.type != T_DIR}


def compare_flat(a, b):
    """[(status, path)] from ``a`` to ``b``: A added, C changed, D deleted."""
    out = []
    for rel in sorted(a.keys() | b.keys()):
        if rel not in b:
            out.append(("D", rel))
        elif rel not in a:
            out.append(("A", rel))
        elif a[rel] != b[rel]:
            out.append(("C", rel))
    return out


def distributions(flat):
    """{normalized name: (name, version)} of the ``*.dist-info`` folders."""
    out = {}
    for rel in flat:
        m = _DIST_RE.search(rel)
        if m:
            out[re.sub(r"[-_.]+", "-", m[1]).lower()] = (m[1], m[2])
    return out


def package_changes(a, b):
    """[{"name", "from", "to"}] of distributions added (from None), removed
    (to None) or of another version, from ``a`` to ``b``."""
    da, db = distributions(a), distributions(b)
    out = []
    for key in sorted(da.keys() | db.keys()):
        old, new = da.get(key), db.get(key)
        if old is None or new is None or old[1] != new[1]:
            out.append({"name": (new or old)[0], "from": old and old[1], "to": new and new[1]})
    return out


def package_line(p):
    if p["from"] is None:
        return f"+ {p['name']} {p['to']}"
    if p["to"] is None:
        return f"- {p['name']} {p['from']}"
    return f"~ {p['name']} {p['from']} \u2192 {p['to']}"


def scan_container(store, path, full=False):
    """(container row, flat map of its files now, the scan's pool damage):
    the container read as commit reads it, storing and changing nothing;
    ``full`` reads every file instead of trusting stat and inode caches."""
    info = find_container(store, path)
    try:  # read as the kind it was made of (a plain folder is no environment to detect)
        kind = store.manifest(info["image"]).kind
    except NotFoundError:  # its image was removed: what the folder looks like
        kind = None
    c = Committer(store, info["path"], kind=kind, scan=True, full=full).run()
    return info, flat_image(c.get_tree(store), c.manifest.root), c.damaged


def _image_flat(store, image_id, path=None):
    try:
        return flat_image(store.tree, store.manifest(image_id).root)
    except NotFoundError:
        where = f"the image of {path} " if path else "image "
        raise NotFoundError("image", image_id,
                            f"{where}was removed (rmi --force); pull it again or "
                            "commit the container as a new image") from None


def status(store, path, full=False):
    """``vocker status``: the container's files against its image (A/C/D)
    and the distributions added, removed or of another version."""
    info, now, damaged = scan_container(store, path, full)
    before = _image_flat(store, info["image"], info["path"])
    changes = compare_flat(before, now)
    return {"path": info["path"], "image": info["image"], "clean": not changes,
            "changes": [{"status": s, "path": p} for s, p in changes],
            "packages": package_changes(before, now),
            "store_damage": sorted(rel for _, _, rel in damaged.values())}


def _flat_of(store, ref, full=False):
    """(description, flat map) of an image reference or a container path."""
    if store.container_origin(ref) is not None:
        info, flat, _ = scan_container(store, ref, full)
        return {"container": info["path"], "image": info["image"]}, flat
    image_id = store.resolve_image(ref)
    return {"image": image_id}, _image_flat(store, image_id)


def _stat_group(rel):
    """What a changed path belongs to: its top folder under site-packages
    (``numpy``, ``numpy-2.1.dist-info``), else its first folder."""
    parts = rel.split("/")
    if "site-packages" in parts[:-1]:
        i = parts.index("site-packages") + 1
        return "/".join(parts[:i + 1])
    return parts[0]


def diff(store, a, b, full=False):
    """``vocker diff A B`` (images or containers): per path A/C/D, per
    group (:func:`_stat_group`) the counts and bytes, and the packages."""
    side_a, fa = _flat_of(store, a, full)
    side_b, fb = _flat_of(store, b, full)
    changes = compare_flat(fa, fb)
    sizes = store.blob_sizes({v[1] for v in (*fa.values(), *fb.values())
                              if v[0] in FILE_TYPES or v[0] in TEMPLATE_TYPES})
    groups = {}
    for s, rel in changes:
        g = groups.setdefault(_stat_group(rel), {"group": _stat_group(rel), "A": 0, "C": 0,
                                                 "D": 0, "added": 0, "removed": 0})
        g[s] += 1
        g["added"] += sizes.get(fb[rel][1], 0) if rel in fb else 0
        g["removed"] += sizes.get(fa[rel][1], 0) if rel in fa else 0
    return {"a": side_a, "b": side_b, "changes": [{"status": s, "path": p} for s, p in changes],
            "stat": sorted(groups.values(), key=lambda g: g["group"]),
            "packages": package_changes(fa, fb)}


def history(store, ref):
    """``vocker history``: the image and its parents (as far as the store has
    them), newest first, each with what it changed against its parent."""
    image_id = store.resolve_image(ref)
    steps, seen = [], set()
    while image_id and image_id not in seen:
        seen.add(image_id)
        if not store.has_image(image_id):
            steps.append({"id": image_id, "present": False})
            break
        m = store.manifest(image_id)
        created, _, size, files = store.image_row(image_id)
        steps.append({"id": image_id, "present": True, "created": iso_time(created),
                      "size": size, "files": files, "tags": store.tags_of(image_id),
                      "flat": flat_image(store.tree, m.root), "recipe": recipe_lines(m.recipe)})
        image_id = m.parent
    for i, step in enumerate(steps):
        if not step["present"]:
            continue
        parent = steps[i + 1] if i + 1 < len(steps) and steps[i + 1]["present"] else None
        before = parent["flat"] if parent else {}
        changes = compare_flat(before, step["flat"])
        new = {step["flat"][rel][1] for s, rel in changes if s != "D"}
        step.update(added=sum(s == "A" for s, _ in changes),
                    changed=sum(s == "C" for s, _ in changes),
                    deleted=sum(s == "D" for s, _ in changes),
                    added_bytes=sum(store.blob_sizes(new).values()),
                    packages=package_changes(before, step["flat"]) if parent else [],
                    base=parent is None)
    for step in steps:
        step.pop("flat", None)
    return steps


def recipe_lines(recipe):
    """The instructions of a built image's recipe text (history shows them)."""
    if not recipe or recipe.get("by") != "build":
        return []
    return [ln.strip() for ln in recipe["text"].splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def _file_chunks(path):
    """A file's bytes in CHUNK pieces, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def _hash_file(path):
    """BLAKE3 of a file's bytes, read in chunks (no link followed)."""
    h = blake3.blake3()
    for chunk in _file_chunks(path):
        h.update(chunk)
    return h.hexdigest()


#: pool file problems that leave its bytes intact: ``chmod`` mends them
_SEALABLE = ("is writable (", "has mode")


class _Repairs:
    """``verify --repair``: the fixes of what :class:`Verifier` found."""

    def repair(self, location=None, headers=None):
        """Fix what can be fixed: blob frames from intact pool copies, then
        (given a repository) manifests, trees and frames from it, then pool
        and ``.pyc`` files from the frames. Containers are never changed."""
        self._frames_from_pool()
        if location is not None and (self.bad_blobs or self.bad_trees or self.bad_images):
            self._from_repository(location, headers)
        self._pool_from_frames()
        return self

    def _mark(self, what, object_id, how):
        for p in self.problems:
            if p["object"] == what and p["id"] == object_id and not p["repaired"]:
                p["repaired"], p["how"] = True, how

    def _frames_from_pool(self):
        """A damaged or lost frame whose pool copy hashes right: that copy is
        its one copy from now on (a later create or gc holds only it anyway)."""
        st = self.store
        found = [b for b in sorted(self.bad_blobs) if b in self.sizes
                 and st.pool_copy(b, self.sizes[b])]
        st.replace_blobs([(b, self.sizes[b], 0, POOL_ONLY, None) for b in found])
        for b in found:
            self.bad_blobs.discard(b)
            self._mark("blob", b, "its intact pool copy is kept as its one copy")

    def _from_repository(self, location, headers):
        st = self.store
        src = open_source(location, headers)
        if isinstance(src, HttpSource):
            src.tmp_dir = st.tmp_dir
        try:
            index = parse_index(src.get("index.json"), location)
            wanted = {*self.bad_images, *(self.owner.get(t) for t in self.bad_trees),
                      *(self.owner.get(b) for b in self.bad_blobs)} - {None}
            for image_id in sorted(wanted):
                if image_id not in index["images"]:
                    continue
                self._image_from(src, image_id)
        finally:
            src.close()

    def _image_from(self, src, image_id):
        """Replace this image's damaged manifest, trees and frames by the
        repository's, each verified by its ID first."""
        st = self.store
        manifest_bytes = src.get(f"images/{image_id}.json", limit=MAX_MANIFEST)
        m = Manifest.parse(manifest_bytes, image_id)
        trees = parse_trees_file(src.get(f"images/{image_id}.trees"), image_id)
        need = check_image_trees(trees, m.root)
        blobs = parse_blobs_file(src.get(f"images/{image_id}.blobs"), image_id)
        fix = sorted(b for b in self.bad_blobs & need if b in blobs)
        rows = _fetch_blobs(st, src, fix, blobs, None) if fix else []
        st.replace_objects(image_id if image_id in self.bad_images else None, manifest_bytes,
                           {t: trees[t].serialize() for t in self.bad_trees & trees.keys()},
                           rows)
        if image_id in self.bad_images:
            self.bad_images.discard(image_id)
            self._mark("image", image_id, "from the repository")
        for t in self.bad_trees & trees.keys():
            self.bad_trees.discard(t)
            self._mark("tree", t, "from the repository")
        for b in fix:
            self.bad_blobs.discard(b)
            self._mark("blob", b, "from the repository")

    def _pool_from_frames(self):
        """Damaged pool files: made again from their (now intact) frame as a
        new inode; a writable intact one is sealed; a damaged ``.pyc`` is
        removed (the next create compiles it again)."""
        st, new_inodes = self.store, []
        for (dev, ino), p in self.bad_pool.items():
            path = os.path.join(st.home, p["path"])
            if p["problem"].startswith(_SEALABLE):
                os.chmod(path, 0o555 if p["executable"] else 0o444)
                p["repaired"], p["how"] = True, "made read-only again"
            elif p["object"] == "pyc":
                st.forget_pyc(p["id"])
                _remove_read_only(path)
                p["repaired"], p["how"] = True, "removed; the next create compiles it again"
            elif p["id"] not in self.bad_blobs:
                st.repair_pool(p["id"], p["executable"], path, new_inodes)
                p["repaired"], p["how"] = True, "made again from its compressed blob"
            else:
                continue
            if p["links"]:
                p["how"] += "; the containers listed keep the changed file (recreate them)"
        if new_inodes:
            st.add_pool_inodes(new_inodes)


class Verifier(_Repairs):
    """``vocker verify``: checks the store (database, manifests, trees, blob
    frames, pool and ``.pyc`` files) and containers against their images;
    ``full`` re-hashes every object. Each finding is a dict ``problem`` with
    ``repaired`` set once :meth:`repair` fixed it."""

    def __init__(self, store, full=False):
        self.store, self.full = store, full
        self.problems, self.containers = [], []
        self.counts = dict.fromkeys(("images", "trees", "blobs", "pool_files", "pyc_files",
                                     "containers"), 0)
        self.bad_blobs, self.bad_trees, self.bad_images = set(), set(), set()
        self.bad_pool = {}  # (dev, ino) -> problem of a damaged pool file
        self.owner = {}     # tree or blob -> an image that needs it

    def _bad(self, what, object_id, problem, **more):
        p = {"object": what, "id": object_id, "problem": problem, "repaired": False, **more}
        self.problems.append(p)
        return p

    def run(self, refs=()):
        images, containers = self._scope(refs)
        self._database()
        blobs = self._images(images)
        self._blobs(blobs)
        self._pool(blobs, whole=not refs)
        for path in containers:
            self._container(path)
        if self.bad_pool:
            self._name_links()
        return self

    def _scope(self, refs):
        st = self.store
        if not refs:
            return [r[0] for r in st.image_rows()], []
        images, containers = [], []
        for ref in refs:
            origin = st.container_origin(ref)
            if origin is None:
                images.append(st.resolve_image(ref))
                continue
            containers.append(os.path.abspath(ref))
            if st.has_image(origin[0]):
                images.append(origin[0])
        return list(dict.fromkeys(images)), containers

    def _database(self):
        for problem in self.store.check_database(self.full):
            self._bad("database", None, problem)

    def _images(self, images):
        """Manifests and trees of ``images``; -> the blobs they name."""
        st, blobs, done = self.store, set(), set()
        for image_id in images:
            self.counts["images"] += 1
            try:
                root = st.manifest(image_id).root
                shipped = [rec.root for _, rec in st.bytecode_of(image_id)]
            except VockerError as exc:
                self.bad_images.add(image_id)
                self._bad("image", image_id, exc.message)
                continue
            stack = [root, *shipped]  # the .pyc shipped with it are checked as its files
            while stack:
                tid = stack.pop()
                if tid in done:
                    continue
                done.add(tid)
                self.owner.setdefault(tid, image_id)
                try:
                    tree = st.tree(tid)
                except VockerError as exc:
                    self.bad_trees.add(tid)
                    self._bad("tree", tid, "missing" if isinstance(exc, NotFoundError)
                              else "its bytes do not match its ID", image=image_id)
                    continue
                for e in tree.entries:
                    if e.type == T_DIR:
                        stack.append(e.ref)
                    elif e.type in FILE_TYPES or e.type in TEMPLATE_TYPES:
                        blobs.add(e.ref)
                        self.owner.setdefault(e.ref, image_id)
        self.counts["trees"] = len(done)
        return blobs

    def _blobs(self, blobs):
        st = self.store
        table = st.blob_table()
        self.sizes = {b: r[0] for b, r in table.items()}
        self.sizes[EMPTY_ID] = 0  # stored nowhere, but containers link its pool file
        self.pool_only = {b: r[2] == POOL_ONLY for b, r in table.items()}
        pack_sizes, wanted = {}, blobs - {EMPTY_ID}
        self.counts["blobs"] = len(wanted)
        for b in sorted(wanted - table.keys()):
            self.bad_blobs.add(b)
            self._bad("blob", b, "missing", image=self.owner.get(b))
        for b in sorted(wanted & table.keys(), key=lambda b: (table[b][2] or "", table[b][3] or 0)):
            problem = self._frame_problem(b, table[b], pack_sizes)
            if problem:
                self.bad_blobs.add(b)
                self._bad("blob", b, problem, image=self.owner.get(b))

    def _frame_problem(self, b, row, pack_sizes):
        size, csize, pack, offset = row
        st = self.store
        if pack == POOL_ONLY:  # its pool file is checked with the pool
            return None if st.pool_copies(b) else "its one copy here, a pool file, is missing" \
                + self._held(b)
        if csize <= 0:
            return "has no compressed frame"
        path = st.blob_path(b) if pack is None else st.pack_path(pack)
        if path not in pack_sizes:
            try:
                s = os.lstat(path)
                pack_sizes[path] = s.st_size if stat.S_ISREG(s.st_mode) else -1
            except FileNotFoundError:
                pack_sizes[path] = None
        have = pack_sizes[path]
        where = "its loose file" if pack is None else f"pack {short_id(pack)}"
        if have is None:
            return f"{where} is missing"
        if have < (csize if pack is None else offset + csize):
            return f"{where} is truncated or not a file"
        if self.full:
            try:
                size, f, csize = st.open_blob(b)
                with f:
                    verify_frame(b, size, f, csize)
            except IntegrityError as exc:
                return exc.message.split(": ", 1)[-1]
        return None

    def _pool(self, blobs, whole):
        """Pool copies of blobs (those of ``blobs`` unless ``whole``) and
        compiled ``.pyc`` files: type, size, fixed mtime, read-only, and
        with ``full`` their hash."""
        st = self.store
        pycs = st.pyc_files()
        for d, _, names in os.walk(st.pool_dir):
            for name in names:
                m = _POOL_NAME_RE.match(name)
                if not m:
                    continue
                oid, path = m[1], os.path.join(d, name)
                if oid in self.sizes and (whole or oid in blobs):
                    self.counts["pool_files"] += 1
                    self._pool_file("pool", oid, path, self.sizes[oid], bool(m[2]))
                elif oid in pycs and not m[2] and not m[3]:
                    self.counts["pyc_files"] += 1
                    self._pool_file("pyc", oid, path, pycs[oid], False)

    def _pool_file(self, what, oid, path, size, executable):
        problem = self.store.pool_file_problem(path, size, executable, oid, self.full)
        if problem:
            s = os.lstat(path)
            rel = os.path.relpath(path, self.store.home)
            p = self._bad(what, oid, problem, path=rel, executable=executable, links=[])
            self.bad_pool[(s.st_dev, s.st_ino)] = p
            if what == "pool" and self.pool_only.get(oid) and oid not in self.bad_blobs \
                    and not problem.startswith(_SEALABLE) \
                    and self.store.pool_copy(oid, size) is None:
                self.bad_blobs.add(oid)
                self._bad("blob", oid, "its one copy here, a pool file, was changed"
                          + self._held(oid), image=self.owner.get(oid))

    def _held(self, blob):
        """"; LOCATION holds it": where the image needing ``blob`` came from or went."""
        image = self.owner.get(blob)
        held = self.store.image_sources(image) if image else []
        return f"; {held[0]} holds it" if held else ""

    def _container(self, path):
        self.counts["containers"] += 1
        try:
            r = status(self.store, path, self.full)
        except VockerError as exc:
            self._bad("container", None, exc.message, container=path)
            return
        self.containers.append(r)
        for rel in r["store_damage"]:
            self._bad("container", None, "a file linked to the store was changed in place",
                      container=path, path=rel)

    def _name_links(self):
        """Each container path that is a hardlink of a damaged pool file."""
        for row in self.store.container_rows():
            root = row[0]
            for d, _, names in os.walk(root):
                for name in names:
                    p = os.path.join(d, name)
                    with contextlib.suppress(OSError):
                        s = os.lstat(p)
                        hit = s.st_nlink > 1 and self.bad_pool.get((s.st_dev, s.st_ino))
                        if hit:
                            hit["links"].append(p)

    def damaged(self):
        """Whether anything found is still wrong (a container with changes too)."""
        return any(not p["repaired"] for p in self.problems) or \
            any(not c["clean"] for c in self.containers)

    def report(self):
        return {"full": self.full, "checked": self.counts, "problems": self.problems,
                "containers": self.containers, "damaged": self.damaged()}


def verify(store, refs=(), full=False, repair=False, location=None, headers=None):
    """``vocker verify``: the whole store, or the images and containers
    ``refs``; with ``repair`` (and a repository ``location``) fixes what it
    can. gc waits meanwhile, so nothing vanishes while it is checked."""
    if location is not None and not repair:
        raise UsageError("--from is for --repair", "add --repair")
    with store.writing():
        v = Verifier(store, full).run(refs)
        if repair and v.damaged():
            v.repair(location, headers)
    return v.report()


###############################################################################
# Build and audit: recipe -> image, image -> rebuilt and compared ############
###############################################################################

#: pip as a build runs it: hermetic (no configuration, cache, sdist, or index
#: unless one is given), pinned (hashes, no dependencies), no bytecode
PIP_INSTALL = ("install", "--isolated", "--no-input", "--disable-pip-version-check",
               "--no-cache-dir", "--no-deps", "--only-binary=:all:", "--progress-bar", "off")
BUILD_STEP_TIMEOUT = 3600
#: the pip wheels an interpreter brings (ensurepip's, or a distribution's copy)
_PIP_WHEEL_QUERY = (
    "import ensurepip,glob,json,os,sysconfig;"
    "d=[os.path.join(os.path.dirname(ensurepip.__file__),'_bundled'),"
    "sysconfig.get_config_var('WHEEL_PKG_DIR') or ''];"
    "print(json.dumps(sorted(p for x in d if x for p in glob.glob(os.path.join(x,'pip-*.whl')))))")
#: runs pip from that wheel for the venv at argv[1] (its python: argv[2]) under
#: the base interpreter with -I -S, as if pip ran inside the venv: pip sees the
#: venv's site-packages (what is installed there) but imports nothing from it,
#: and no .pth file runs; it refuses to go on unless pip would install there
_PIP_RUNNER = r"""
import sys, runpy
env, exe, whl = sys.argv[1:4]
sys.prefix = sys.exec_prefix = env
sys.executable = exe
import os, sysconfig, importlib.machinery
class Blind(importlib.machinery.FileFinder):
    def find_spec(self, name, target=None):
        return None
    def find_module(self, name, path=None):
        return None
sites = list(dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib")))
inside = os.path.normcase(os.path.join(os.path.abspath(env), ""))
if not all(os.path.normcase(os.path.abspath(p)).startswith(inside) for p in sites):
    sys.exit("vocker: pip would not install into %s: %s" % (env, sites))
for p in sites:
    sys.path.append(p)
    sys.path_importer_cache[p] = Blind(p)
sys.path.insert(0, whl)
sys.argv = ["pip"] + sys.argv[4:]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""
_PIP_WHEEL_RE = _Regex(r"pip-([0-9][0-9A-Za-z.+!_]*)-py3-none-any\.whl")
#: settings a build step never sees: pip's, uv's, Python's and a venv's
_HERMETIC_DROP = ("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV", "CONDA", "__PYVENV")
#: text files up to this size get a unified diff in an audit report
AUDIT_DIFF_MAX = 64 << 10
AUDIT_DIFF_LINES = 200


class WheelSource:
    """Where a build's wheels come from: folders (``--find-links``) and at
    most one index. Never part of the recipe: the hashes pin the wheels."""

    def __init__(self, find_links=(), index_url=None):
        self.find_links = [os.path.abspath(d) for d in find_links]
        self.index_url = index_url

    def pip_args(self):
        args = [a for d in self.find_links for a in ("--find-links", d)]
        return args + (["--index-url", self.index_url] if self.index_url else ["--no-index"])

    def __str__(self):
        return ", ".join(self.find_links + [self.index_url or "no index"])


def hermetic_env(env_dir=None, bindir=None):
    """The environment a build step runs in: this one without pip's, uv's,
    Python's or a venv's settings, no pip configuration file, a fixed
    SOURCE_DATE_EPOCH and hash seed; ``env_dir``: that venv active."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_HERMETIC_DROP)}
    env.update(SOURCE_DATE_EPOCH=str(FIXED_MTIME), PYTHONHASHSEED="0",
               PIP_CONFIG_FILE=os.devnull)
    if env_dir:
        env.update(VIRTUAL_ENV=env_dir, PATH=bindir + os.pathsep + env.get("PATH", ""))
    return env


def build_python(want, explicit=None, need=None):
    """(exe, info) of the interpreter a build starts from: ``explicit``, else
    the first found whose version starts with ``want`` (X.Y or X.Y.Z); an
    audit's ``need`` (an image's python facts) must match exactly."""
    parts = want.split(".")
    wanted = f"{need['implementation']} {need['version']} ({need['platform']})" if need \
        else f"Python {want}"

    def fits(info):
        return (info is not None and not info.get("in_venv")
                and info["version"].split(".")[:len(parts)] == parts
                and (need is None or python_facts(info) == need))
    if explicit:
        info = query_python(explicit)
        if info is not None and info.get("in_venv"):  # a venv's python: its base's
            info = query_python(info["executable"])    # (POSIX: the link's target)
            if info is not None and info.get("in_venv"):  # (Windows: a launcher copy)
                raise PythonError(f"{explicit} belongs to a virtual environment",
                                  "pass its base interpreter with --python")
        if not fits(info):
            raise PythonError(f"{explicit} is not {wanted}",
                              "pass --python with a base interpreter of that version")
        return info["executable"], info
    cands, looked = discover_pythons(need["version"] if need else want)
    for cand in cands:
        info = query_python(cand)
        if fits(info):
            return info["executable"], info
    raise PythonError(f"no {wanted} interpreter found on this machine; looked in: "
                      + ", ".join(looked), "install it, or pass --python EXE")


def _step_output(argv, label, cwd=None, env=None):
    """Run a build step; its output (stdout + stderr) as text, or BuildError."""
    import subprocess  # here: imported on first use, for a faster start
    try:
        p = subprocess.run(argv, cwd=cwd, env=env or hermetic_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=BUILD_STEP_TIMEOUT)
    except FileNotFoundError:
        raise BuildError(label, f"{argv[0]} not found", "check the command's name") from None
    except OSError as exc:
        raise BuildError(label, f"cannot run {argv[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise BuildError(label, f"did not finish in {BUILD_STEP_TIMEOUT} s") from None
    out = (p.stdout + b"\n" + p.stderr).decode("utf-8", "replace")
    return p.returncode, out


def _last_error(out):
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return ((errors or lines or ["no output"])[-1])[:300]


_PIP_HASH_RE = _Regex(r"^\s*(\S+)==(\S+) from .*?:\s*\n\s*Expected sha256 (\w+)\n"
                          r"(?:\s*or \w+\n)*\s*Got\s+(\w+)", re.M)
_PIP_MISSING_RE = _Regex(r"No matching distribution found for (\S+)")


def pip_failure(out, label, wheels):
    """The error a failed pip install stands for: a wheel whose hash is not
    pinned (exit 5), a wheel not found (exit 3), else the step's failure."""
    m = _PIP_HASH_RE.search(out)
    if m:
        return WheelHashError(f"{m[1]}=={m[2]}", f"got {m[4][:16]}…, pinned {m[3][:16]}…")
    m = _PIP_MISSING_RE.search(out)
    if m:
        return NotFoundError("wheel", f"{m[1]} (in {wheels})",
                             "put the wheel in a --find-links folder or pass --index-url")
    return BuildError(label, f"pip failed: {_last_error(out)}")


def read_pip_report(path, pins):
    """[{name, version, wheel, sha256}] that pip's ``--report`` says it
    installed, each checked against ``pins`` ([Pin]; no pins: any hash)."""
    with open(path, "rb") as f:
        report = read_json(f.read(MAX_LOCK + 1), "pip report", MAX_LOCK)
    allowed = {dist_key(p.name): set(p.hashes) for p in pins}
    out = []
    for item in (report.get("install") if isinstance(report, dict) else None) or []:
        try:
            meta, info = item["metadata"], item["download_info"]
            sha = info["archive_info"]["hashes"]["sha256"]
            import urllib.parse  # here: imported on first use, for a faster start
            wheel = urllib.parse.unquote(urllib.parse.urlsplit(info["url"]).path).rsplit("/", 1)[-1]
            w = {"name": meta["name"], "version": meta["version"], "wheel": wheel, "sha256": sha}
            Recipe._check_install({"wheels": [w]}, lambda v, what: v)
        except (KeyError, TypeError, AttributeError, InvalidInputError):
            raise InvalidInputError("pip's install report is not in the form vocker reads",
                                    "use pip 22.2 or later in the environment") from None
        if pins and sha not in allowed.get(dist_key(w["name"]), ()):
            raise WheelHashError(f"{w['name']}=={w['version']}", f"pip installed {sha[:16]}…")
        out.append(w)
    return sorted(out, key=lambda w: dist_key(w["name"]))


def _walk_context(context, rel):
    """[(relative path, absolute path)] of the files at ``rel`` in the build
    context: a file, or a folder's files, sorted; a symlink is refused."""
    where = os.path.join(context, *rel.split("/"))
    path, out = context, []
    for comp in rel.split("/"):
        path = os.path.join(path, comp)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise NotFoundError("copy source", where, "COPY paths are relative to the "
                                "context folder") from None
        if stat.S_ISLNK(st.st_mode):
            raise InvalidInputError(f"COPY {rel}: {path} is a symlink",
                                    "copy the file it points to into the context")
    if stat.S_ISREG(st.st_mode):
        return [(rel, where)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"COPY {rel}: {where} is not a plain file or folder")
    stack = [rel]
    while stack:
        d = stack.pop()
        full = os.path.join(context, *d.split("/"))
        for e in sorted(os.scandir(full), key=lambda e: e.name):
            child = f"{d}/{e.name}"
            if e.is_symlink() or not (e.is_dir() or e.is_file()):
                raise InvalidInputError(f"COPY {rel}: {e.path} is not a plain file or folder",
                                        "copy the file it points to into the context")
            if e.is_dir():
                stack.append(child)
            else:
                out.append((_recipe_path(child, "COPY source"), e.path))
    return sorted(out)


def copy_plan(context, src, dest):
    """[(from, to)] of ``COPY SRC DEST``: a file to DEST (or into DEST/ when
    it ends with /), a folder's files under DEST."""
    src, into = _recipe_path(src.rstrip("/"), "COPY source"), dest.endswith("/")
    dest = _recipe_path(dest.rstrip("/"), "COPY destination")
    files = _walk_context(context, src)
    if files == [(src, files[0][1])]:
        return [(src, f"{dest}/{src.rsplit('/', 1)[-1]}" if into else dest)]
    return [(rel, dest + rel[len(src):]) for rel, _ in files]


def _open_in_env(env, rel, executable):
    """A new file at ``rel`` in the venv being built, opened for writing;
    no folder on the way is a symlink (a venv has some: they are refused)."""
    path = env
    for comp in rel.split("/")[:-1]:
        path = os.path.join(path, comp)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        if os.path.islink(path) or not os.path.isdir(path):
            raise InvalidInputError(f"COPY to {rel}: {path} is not a plain folder",
                                    "copy into another folder")
    path = os.path.join(path, rel.rsplit("/", 1)[-1])
    if os.path.isdir(path) and not os.path.islink(path):
        raise InvalidInputError(f"COPY to {rel}: a folder is there")
    _unlink_quiet(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
        getattr(os, "O_BINARY", 0)
    return os.fdopen(os.open(path, flags, 0o755 if executable else 0o644), "wb")


def copy_into_env(context, frm, env, to):
    """Copy one context file into the venv; (its blob ID, executable)."""
    src = os.path.join(context, *frm.split("/"))
    st = os.lstat(src)
    executable = not WINDOWS and bool(st.st_mode & stat.S_IXUSR)
    h = blake3.blake3()
    with _open_in_env(env, to, executable) as out:
        for chunk in _file_chunks(src):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest(), executable


class Builder:
    """Runs a recipe's actions in a fresh venv under ``work`` and commits it
    to ``store``. ``base_store`` holds FROM images; ``python``: the
    interpreter asked for (a path); ``need``: the exact python facts an audit
    must match; ``allow_run``: whether RUN steps may run (audit asks)."""

    def __init__(self, store, work, wheels, context, python=None, need=None,
                 base_store=None, allow_run=True):
        self.store, self.work, self.wheels, self.context = store, work, wheels, context
        self.python, self.need, self.allow_run = python, need, allow_run
        self.base_store = base_store or store
        self.env = os.path.join(work, "env")
        self.bindir = os.path.join(self.env, "Scripts" if WINDOWS else "bin")
        self.env_python = os.path.join(self.bindir, "python.exe" if WINDOWS else "python")
        self.exe, self.parent, self.installer, self.pip_wheel = None, None, None, None
        self.labels, self.steps = {}, []

    def run(self, actions, text, tags=(), kind_commit=False, source=None, progress=None):
        """Every action, then the commit: the image's dict (see :func:`commit`).
        ``progress``: a :class:`Progress` counting the steps."""
        progress = progress or Progress("building", enabled=False)
        progress.total = len(actions)
        for op, label, *args in actions:
            progress.update(0, label=label[:70])
            getattr(self, "_" + op)(label, *args)
            progress.update(1)
        progress.close()
        recipe = None if kind_commit else Recipe("build", text, self.installer,
                                                 self.steps).to_dict()
        return commit(self.store, self.env, tags, kind="venv", python=self.exe,
                      labels=self.labels, recipe=recipe, parent=self.parent, source=source,
                      progress=Progress("committing", enabled=progress.enabled))

    def close(self):
        """Forget the build's folder (it goes with ``work``): the FROM step's
        container, and the stat cache of its files in either store."""
        for s in {id(self.store): self.store, id(self.base_store): self.base_store}.values():
            s.remove_container_row(os.path.abspath(self.env))

    def _python(self, label, version, with_pip=True):
        self.exe, _ = build_python(version, self.python, self.need)
        rc, out = _step_output([self.exe, "-I", "-m", "venv", self.env,
                                *([] if with_pip else ["--without-pip"])], label)
        if rc:
            raise BuildError(label, f"venv failed: {_last_error(out)}")
        self.steps.append({"op": "python", "version": version})

    def _from(self, label, ref):
        image_id = self.base_store.resolve_image(ref)
        m = self.base_store.manifest(image_id)
        if m.kind != "venv":
            raise BuildError(label, f"image {short_id(image_id)} is a {m.kind}, not a venv")
        if self.need is not None and m.python != self.need:
            raise BuildError(label, "the base image's Python is not the image's")
        info = create(self.base_store, image_id, self.env, link_mode="copy",
                      python=self.python, compile=False)
        self.exe = (info.get("python") or {}).get("executable")
        self.parent, self.labels = image_id, dict(m.labels)
        self.steps.append({"op": "from", "image": image_id})

    def _install(self, label, pins, hashed=True, compile=False):
        n = len(self.steps)
        req, report = (os.path.join(self.work, f"{name}-{n}") for name in ("req.txt", "report.json"))
        with open(req, "w", encoding="utf-8") as f:
            f.write("".join((p.requirement() if hashed else str(p)) + "\n" for p in pins))
        rc, out = self._pip(label, *PIP_INSTALL, *(["--require-hashes"] if hashed else []),
                            *([] if compile else ["--no-compile"]), "--report", report,
                            "-r", req, *self.wheels.pip_args())
        if rc:
            raise pip_failure(out, label, self.wheels)
        self.steps.append({"op": "install",
                           "wheels": read_pip_report(report, pins if hashed else ())})

    def _pip(self, label, *args):
        """Run the base interpreter's own pip for the venv (see _PIP_RUNNER):
        the same pip for a build and its audit, and never the image's."""
        if self.pip_wheel is None:
            rc, out = _step_output([self.exe, "-I", "-S", "-c", _PIP_WHEEL_QUERY], label)
            try:
                wheels = json.loads(out.strip().splitlines()[0]) if rc == 0 else []
            except (ValueError, IndexError):
                wheels = []
            found = [w for w in wheels if _PIP_WHEEL_RE.fullmatch(os.path.basename(w))]
            if not found:
                raise BuildError(label, f"{self.exe} brings no pip wheel (ensurepip)",
                                 "use a Python with ensurepip")
            self.pip_wheel = found[-1]
            self.installer = "pip " + _PIP_WHEEL_RE.fullmatch(os.path.basename(found[-1]))[1]
        return _step_output([self.exe, "-I", "-S", "-c", _PIP_RUNNER, self.env,
                             self.env_python, self.pip_wheel, *args], label, cwd=self.work)

    def _copy(self, label, files):
        if self.context is None:
            raise NotFoundError("build context", f"{label} needs the folder it copies from",
                                "pass it: vocker audit IMAGE --context DIR")
        out = []
        for frm, to in files:
            blob, executable = copy_into_env(self.context, frm, self.env, to)
            out.append({"from": frm, "to": to, "blob": blob, "exec": executable})
        self.steps.append({"op": "copy", "files": out})

    def _label(self, label, labels):
        self.labels.update(labels)
        self.steps.append({"op": "label", "labels": dict(labels)})

    def _run(self, label, argv):
        if not self.allow_run:
            raise UsageError(f"the recipe runs a command ({label[:60]}); audit runs a "
                             "recipe's commands only when asked", "read the recipe "
                             "(vocker inspect IMAGE), then: vocker audit IMAGE --run")
        exe = argv[0]
        for name in (exe, exe + ".exe"):
            if os.path.basename(name) == name and os.path.isfile(os.path.join(self.bindir, name)):
                exe = os.path.join(self.bindir, name)
                break
        rc, out = _step_output([exe, *argv[1:]], label, cwd=self.env,
                               env=hermetic_env(self.env, self.bindir))
        if rc:
            raise BuildError(label, f"exited with code {rc}: {_last_error(out)}")
        self.steps.append({"op": "run", "argv": list(argv)})


def recipe_actions(text, where, context, labels=None):
    """The builder's actions for a recipe text: each line's, with every lock
    read and every COPY expanded here (``context``: the folder they are in)."""
    actions = []
    for n, word, args in parse_recipe_text(text, where):
        label = f"{where}:{n}: {word} {' '.join(args)}"[:200]
        if word == "PYTHON":
            if not PYTHON_WANT_RE.fullmatch(args[0]):
                raise InvalidInputError(f"{where}:{n}: PYTHON takes a version (3.12 or 3.12.7)")
            actions.append(("python", label, args[0]))
        elif word == "FROM":
            actions.append(("from", label, args[0]))
        elif word == "INSTALL":
            actions.append(("install", label, read_lock(os.path.join(context, args[0]))))
        elif word == "COPY":
            actions.append(("copy", label, copy_plan(context, *args)))
        elif word == "LABEL":
            actions.append(("label", label, parse_label_words(args, f"{where}:{n}")))
        else:
            actions.append(("run", label, args))
    if labels:
        actions.append(("label", "--label", dict(labels)))
    return actions


def parse_label_words(words, where):
    labels = {}
    for w in words:
        k, eq, v = w.partition("=")
        if not eq:
            raise InvalidInputError(f"{where}: LABEL takes KEY=VALUE words, not {w[:40]!r}")
        labels[k] = v
    return check_labels(labels)


def flags_recipe(python, lock=None, labels=None):
    """The recipe text ``build --python X -r LOCK --label K=V`` stands for:
    the lock named by its file name, so no local path enters the image."""
    lines = [f"PYTHON {python}"]
    if lock:
        lines.append(f"INSTALL {shlex.quote(os.path.basename(lock))}")
    lines += [f"LABEL {shlex.quote(f'{k}={v}')}" for k, v in sorted((labels or {}).items())]
    return "\n".join(lines) + "\n"


def build(store, text, context, wheels=None, tags=(), labels=None, python=None,
          where="recipe", progress=None):
    """Build the image a recipe ``text`` describes (COPY and INSTALL paths
    relative to ``context``, wheels from ``wheels``, a :class:`WheelSource`;
    ``python``: an interpreter's path, or a version) and returns the image's
    dict (see :func:`commit`)."""
    explicit = python if python and not PYTHON_WANT_RE.fullmatch(python) else None
    text = text.replace("\r\n", "\n")  # one recipe, one text: written on Windows or not
    actions = recipe_actions(text, where, os.path.abspath(context), labels)
    with _work_dir(store) as work:
        b = Builder(store, work, wheels or WheelSource(), os.path.abspath(context), explicit)
        try:
            return b.run(actions, text, tags, source=context, progress=progress)
        finally:
            b.close()


@contextlib.contextmanager
def _work_dir(store):
    """A fresh folder for one build, in the system's temp folder: not the
    store's tmp/, which a gc running meanwhile empties. Named by this
    process, so that the next build removes it if this one is killed."""
    import tempfile  # here: imported on first use, for a faster start
    _remove_stale(tempfile.gettempdir(), "vocker-build-")
    work = tempfile.mkdtemp(prefix=f"vocker-build-{os.getpid()}-")
    try:
        yield work
    finally:
        rmtree(work)


def _audit_actions(recipe, manifest):
    """The actions that rebuild an image from its recorded recipe, and notes
    on what the rebuild cannot show."""
    if recipe.by == "build":
        notes = ["the image runs commands its audit needs to be deterministic: "
                 + "; ".join(shlex.join(a) for a in recipe.runs)] if recipe.runs else []
        return [_step_action(s, f"step {i + 1}: {s['op']}")
                for i, s in enumerate(recipe.steps)], notes
    return _commit_actions(recipe, manifest)


def _step_action(s, label):
    """The builder's action that repeats one recorded build step."""
    op = s["op"]
    if op == "install":  # the exact wheel each was installed from
        return (op, label, [Pin(w["name"], w["version"], None, [w["sha256"]], label)
                            for w in s["wheels"]])
    if op == "copy":
        return (op, label, [(f["from"], f["to"]) for f in s["files"]])
    return (op, label, s[Recipe.STEP_KEYS[op][1]])


def _commit_actions(recipe, manifest):
    """A commit's rebuild: a venv of its interpreter (with pip if it had pip)
    and each distribution installed by name and version as pip does by
    default (pip sees what the venv already holds: its own pip, setuptools)."""
    dists = recipe.installed
    notes = [f"{d['name']} {d['version']} is an editable install: no wheel rebuilds it"
             for d in dists if d["editable"]]
    notes += [f"{d['name']} {d['version']} was installed by "
              f"{d['installer'] or 'an unknown installer'}: the rebuild uses pip"
              for d in dists if (d["installer"] or "") != "pip" and not d["editable"]]
    pins = [Pin(d["name"], d["version"], None, (), "recipe") for d in dists if not d["editable"]]
    with_pip = any(dist_key(d["name"]) == "pip" for d in dists)
    actions = [("python", "venv", manifest.python["version"], with_pip)]
    if pins:
        actions.append(("install", "installed distributions", pins, False, True))
    actions.append(("label", "labels", dict(manifest.labels)))
    return actions, notes


def audit(store, ref, wheels=None, context=None, python=None, allow_run=False,
          progress=None):
    """``vocker audit``: rebuild an image from the recipe it records, in a
    fresh folder and a store of its own (nothing of the image is used or
    run), and compare. Returns {"image", "rebuilt", "reproduced",
    "differences", "manifest", "notes"}."""
    image_id = store.resolve_image(ref)
    m = store.manifest(image_id)
    if m.recipe is None or m.kind != "venv":
        raise InvalidInputError(f"image {short_id(image_id)} records no recipe to rebuild it from",
                                "audit images made by vocker build, or venvs made by commit")
    recipe = Recipe.check(m.recipe)
    actions, notes = _audit_actions(recipe, m)
    with _work_dir(store) as work:
        scratch = Store(os.path.join(work, "store"))
        b = Builder(scratch, work, wheels or WheelSource(),
                    context and os.path.abspath(context), python, need=m.python,
                    base_store=store, allow_run=allow_run)
        if recipe.by == "commit":
            b.parent = m.parent
        try:
            rebuilt = b.run(actions, recipe.text, kind_commit=recipe.by == "commit",
                            progress=progress)
            report = compare_images(store, image_id, scratch, rebuilt["id"])
        finally:
            b.close()
            scratch.close()
    if recipe.by == "commit":
        for d in report["differences"]:
            d["why"] = _COMMIT_WHY[d["status"]]
    return {**report, "notes": notes}


#: what a difference means for an image made by commit (audit JSON "why")
_COMMIT_WHY = {"only in image": "no recorded distribution installs it",
               "differs": "changed after its distribution was installed",
               "only in rebuild": "a recorded distribution installs it: removed after"}


def compare_images(store, image_id, other, other_id):
    """What differs between an image and its rebuild (in ``other``): each
    path with both blob IDs and, for small text files, a unified diff; and
    each manifest field apart from the root."""
    a, b = store.manifest(image_id), other.manifest(other_id)
    fa, fb = flat_image(store.tree, a.root), flat_image(other.tree, b.root)
    diffs = []
    for status, rel in compare_flat(fb, fa):  # from the rebuild to the image
        ea, eb = fa.get(rel), fb.get(rel)
        d = {"path": rel, "status": {"A": "only in image", "D": "only in rebuild",
                                     "C": "differs"}[status],
             "image": ea and list(ea), "rebuilt": eb and list(eb), "diff": None}
        if status == "C":
            d["diff"] = _text_diff(store, ea, other, eb, rel)
        diffs.append(d)
    fields = [{"field": f, "image": getattr(a, f), "rebuilt": getattr(b, f)}
              for f in Manifest.FIELDS if f != "root" and getattr(a, f) != getattr(b, f)]
    return {"image": image_id, "rebuilt": other_id, "reproduced": image_id == other_id,
            "differences": diffs, "manifest": fields}


def _text_diff(store, ea, other, eb, rel):
    """A unified diff of two small UTF-8 files (templates as stored), else None."""
    if ea[0] in LINK_TYPES or eb[0] in LINK_TYPES:
        return None
    sizes = [s.blob_sizes([e[1]]).get(e[1], AUDIT_DIFF_MAX + 1) for s, e in
             ((store, ea), (other, eb))]
    if max(sizes) > AUDIT_DIFF_MAX:
        return None
    try:
        texts = [s.read_blob(e[1]).decode("utf-8") for s, e in ((store, ea), (other, eb))]
    except UnicodeDecodeError:
        return None
    if any("\0" in t for t in texts):
        return None
    import difflib  # here: imported on first use, for a faster start
    lines = list(difflib.unified_diff(texts[1].splitlines(True), texts[0].splitlines(True),
                                      f"rebuilt/{rel}", f"image/{rel}"))
    if len(lines) > AUDIT_DIFF_LINES:
        lines = lines[:AUDIT_DIFF_LINES] + [f"... {len(lines) - AUDIT_DIFF_LINES} more lines\n"]
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)


###############################################################################
# Commands ####################################################################
###############################################################################

def _json_text(data, indent=2):
    """JSON for a terminal: the same values, with DEL and C1 characters
    ``\\u``-escaped too (json.dumps escapes only C0)."""
    text = json.dumps(data, indent=indent, sort_keys=True, ensure_ascii=False)
    return re.sub(r"[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", text)


def _print_json(data, stream=None, indent=2):
    """Write ``data`` as one JSON document of UTF-8 bytes, whatever the console's
    or locale's encoding: built whole, then written at once."""
    stream = stream or sys.stdout
    raw = (_json_text(data, indent) + "\n").encode("utf-8", "backslashreplace")
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a stream of text only (io.StringIO)
        stream.write(raw.decode("utf-8"))
        return
    stream.flush()
    buffer.write(raw)
    buffer.flush()


def _emit(args, data, text, quiet_text=None):
    """Print ``data`` as JSON, or ``text``; with --quiet only ``quiet_text``."""
    if args.json:
        _print_json(data)
    elif args.quiet:
        if quiet_text:
            print(quiet_text)
    elif text:
        print(text)


def _warn(args, warnings):
    """Warnings on stderr (under --json they are in the result instead)."""
    if not args.quiet and not args.json:
        for w in warnings:
            print(terminal_safe(f"vocker: warning: {w}"), file=sys.stderr)


def _progress(args, label):
    """Progress on stderr: a bar on a terminal by default (not with -q or
    --json); --progress gives JSON lines instead (for an installer that wraps
    vocker, terminal or not), --no-progress none."""
    mode = getattr(args, "progress", None)
    if mode is None:
        return Progress(label, enabled=sys.stderr.isatty() and not args.quiet and not args.json)
    return Progress(label, enabled=mode, mode="json")


def _looks_like_path(word):
    """A word that names a folder or a repository location, not an image."""
    return (os.path.isabs(word) or "://" in word or os.path.isdir(word)
            or word.startswith(("./", "../", "~", "." + os.sep, ".." + os.sep)))


def _is_image(store, ref):
    try:
        store.resolve_image(ref)
    except VockerError:
        return False
    return True


def command_line(words, win=None):
    """Words as a command line the user's shell reads back: cmd's quoting on
    Windows ("C:\\a b"), the POSIX shell's elsewhere ('/a b')."""
    if WINDOWS if win is None else win:
        import subprocess  # here: imported on first use, for a faster start
        return subprocess.list2cmdline(words)
    return shlex.join(words)


def _swapped(command, words):
    """The error for ``vocker COMMAND A B ...`` where B, A ... was meant."""
    what = "an image" if command in ("create", "push") else "a repository"
    fixed = command_line([words[1], words[0], *words[2:]])
    return UsageError(f"'{words[1]}' looks like {what} and '{words[0]}' does not",
                      f"arguments swapped? try: vocker {command} {fixed}")


def _explain_missing(store, exc):
    """Reword 'image not found' for a local name: the tags meant, and whether
    ':latest' was implied."""
    ref = exc.name
    if exc.what != "image" or not isinstance(ref, str) or not TAG_RE.fullmatch(ref):
        return
    implied = ":" not in ref
    full = ref + ":latest" if implied else ref
    repo = full.partition(":")[0]
    names = store.tag_names()
    same = [n.partition(":")[2] for n in names if n.partition(":")[0] == repo]
    import difflib  # here: imported on first use, for a faster start
    close = difflib.get_close_matches(full, names, n=3)
    if implied and PREFIX_RE.fullmatch(ref):
        exc.message = f"no image ID starts with {ref}, and there is no image {full}"
    else:
        exc.message = f"no image {full}" + (" (':latest' is implied when no tag is given)"
                                            if implied else "")
    hints = [f"did you mean {' or '.join(close)}?"] if close else []
    if same and (implied or not close):
        hints.append(f"tags of {repo}: {', '.join(same)}")
    exc.hint = "; ".join(hints) or exc.hint


def _labels(args):
    labels = {}
    for item in args.label or ():
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"bad label {item!r}", "use --label KEY=VALUE")
        labels[k] = v
    return labels


def cmd_commit(store, args):
    r = commit(store, args.path, tags=args.tag or (), kind=args.kind, python=args.python,
               labels=_labels(args), progress=_progress(args, "committing"))
    _warn(args, r["warnings"])
    _emit(args, r, r["id"], r["id"])
    return EXIT_OK


def _wheels(args):
    return WheelSource(args.find_links or (), args.index_url)


def cmd_build(store, args):
    labels = _labels(args)
    if args.file:
        if args.requirements:
            raise UsageError("-r goes in the recipe with -f", "write INSTALL LOCK in the recipe")
        text = read_small_text(args.file, MAX_RECIPE_TEXT, "recipe")
        context = args.context or os.path.dirname(os.path.abspath(args.file))
        where = os.path.basename(args.file)
    elif args.python:
        if args.context:
            raise UsageError("CONTEXT goes with -f RECIPE", "vocker build -f RECIPE CONTEXT")
        version = args.python
        if not PYTHON_WANT_RE.fullmatch(version):  # an interpreter: its X.Y
            info = query_python(version)
            if info is None:
                raise PythonError(f"cannot run the interpreter {version}")
            version = ".".join(info["version"].split(".")[:2])
        text, labels = flags_recipe(version, args.requirements, labels), None
        context = os.path.dirname(os.path.abspath(args.requirements or "x"))
        where = "recipe"
    else:
        raise UsageError("build needs -f RECIPE, or --python X.Y [-r LOCK]",
                         "see vocker build --help")
    r = build(store, text, context, _wheels(args), args.tag or (), labels, args.python, where,
              _progress(args, "building"))
    _emit(args, r, r["id"], r["id"])
    return EXIT_OK


def _audit_lines(r):
    if r["reproduced"]:
        lines = [f"reproduced {r['image']}"]
    else:
        lines = [f"not reproduced: image {r['image']} rebuilt as {r['rebuilt']}"]
    for d in r["differences"]:
        ids = [e and (e[1][:SHORT_ID_LEN] if e[0] not in LINK_TYPES else "symlink")
               for e in (d["image"], d["rebuilt"])]
        lines.append(f"{d['status']}: {d['path']} (image {ids[0] or '-'}, "
                     f"rebuilt {ids[1] or '-'})" + (f": {d['why']}" if d.get("why") else ""))
        lines += ["    " + ln for ln in (d["diff"] or "").splitlines()]
    for f in r["manifest"]:
        lines.append(f"manifest {f['field']}: image {_json_text(f['image'], None)[:200]}, "
                     f"rebuilt {_json_text(f['rebuilt'], None)[:200]}")
    return [terminal_safe(ln) for ln in lines] + [terminal_safe("note: " + n)
                                                   for n in r["notes"]]


def cmd_audit(store, args):
    r = audit(store, args.image, _wheels(args), args.context, args.python, args.run,
              _progress(args, "rebuilding"))
    _emit(args, r, "\n".join(_audit_lines(r)), r["rebuilt"])
    return EXIT_OK if r["reproduced"] else EXIT_DAMAGED


def cmd_create(store, args):
    try:
        r = create(store, args.image, args.path, link_mode=args.link_mode, python=args.python,
                   compile=not args.no_compile, progress=_progress(args, "creating"))
    except (NotFoundError, UsageError):
        if (_looks_like_path(args.image) and not _is_image(store, args.image)
                and _is_image(store, args.path)):
            raise _swapped("create", [args.image, args.path]) from None
        raise
    _warn(args, r["warnings"])
    text = (f"created {r['path']} from {r['short_id']} "
            f"({r['link_mode']}, {r['pyc_compiled']} compiled, {r['pyc_cached']} cached"
            + (f", {r['pyc_shipped']} shipped" if r["pyc_shipped"] else "") + " .pyc"
            + (f", {r['repaired']} damaged store files repaired" if r["repaired"] else "") + ")")
    _emit(args, r, terminal_safe(text), r["path"])
    return EXIT_OK


def _tag_matches(tag, name):
    """``web`` matches every tag of repository web; ``web:1.0`` one tag."""
    return tag == name if ":" in name else tag.partition(":")[0] == name


def cmd_images(store, args):
    rows = list_images(store)
    if args.name is not None:
        normalize_tag(args.name)  # refuses what no tag can be
        rows = [r for r in rows if any(_tag_matches(t, args.name) for t in r["tags"])]
    if args.json or args.quiet:
        _emit(args, rows, None, "\n".join(r["id"] for r in rows))
        return EXIT_OK
    lines = [f"{'NAME:TAG':<30} {'IMAGE ID':<12}  {'KIND':<10} {'PYTHON':<8} {'SIZE':>9}  CREATED"]
    for r in rows:
        tags = [t for t in r["tags"] if args.name is None or _tag_matches(t, args.name)]
        version = (r["python"] or {}).get("version") or "-"
        for t in tags or ["<none>"]:
            lines.append(f"{t:<30} {r['short_id']:<12}  {r['kind']:<10} {version:<8} "
                         f"{human_size(r['size']):>9}  {r['created'] or '-'}")
    print("\n".join(lines))
    return EXIT_OK


def _container_status(c):
    """ok; missing (its folder is gone); no-image (rmi --force removed its image)."""
    return "missing" if not c["exists"] else "ok" if c["image_present"] else "no-image"


def cmd_ps(store, args):
    rows = list_containers(store)
    if args.json or args.quiet:
        _emit(args, rows, None, "\n".join(terminal_safe(r["path"]) for r in rows))
        return EXIT_OK
    lines = [f"{'IMAGE ID':<12}  {'LINK':<8} {'STATUS':<8} {'CREATED':<20}  PATH"]
    for r in rows:
        lines.append(terminal_safe(f"{r['short_id']:<12}  {r['link_mode']:<8} "
                                   f"{_container_status(r):<8} "
                                   f"{r['created'] or '-':<20}  {r['path']}"))
    print("\n".join(lines))
    return EXIT_OK


def cmd_tag(store, args):
    r = tag_image(store, args.image, args.name)
    _emit(args, r, None)
    return EXIT_OK


def cmd_rmi(store, args):
    results = remove_images(store, args.images, force=args.force)
    text = "\n".join([f"untagged: {t}" for r in results for t in r["untagged"]]
                     + [f"deleted: {r['deleted']}" for r in results if r["deleted"]]
                     + [terminal_safe(f"kept without its image: {p}")
                        for r in results for p in r["containers"]])
    _emit(args, results, text)
    return EXIT_OK


def cmd_df(store, args):
    r = disk_usage(store)
    lines = [f"{'IMAGE ID':<12}  {'NAME:TAG':<24} {'SIZE':>9} {'UNIQUE':>9} {'SHARED':>9} "
             f"{'CONTAINERS':>10} {'SAVED':>9}"]
    for i in r["images"]:
        lines.append(terminal_safe(
            f"{i['short_id']:<12}  {(', '.join(i['tags']) or '<none>'):<24} "
            f"{human_size(i['size']):>9} {human_size(i['unique']):>9} "
            f"{human_size(i['shared']):>9} {i['containers']:>10} {human_size(i['saved']):>9}"))
    lines.append(f"store: {human_size(r['store'])} on disk, {len(r['images'])} images, "
                 f"{r['containers']} containers; vocker gc would free "
                 f"{human_size(r['reclaimable'])}")
    _emit(args, r, "\n".join(lines))
    return EXIT_OK


def cmd_gc(store, args):
    r = gc(store, dry_run=args.dry_run)
    parts = [f"{r['blobs']} blobs", f"{r['trees']} trees",
             f"{r['packs']} packs ({r['repacked']} repacked)", f"{r['pool_files']} pool files",
             f"{r['pyc_files']} .pyc", f"{r['tmp']} leftovers",
             f"{r['frames']} frames of pooled files"]
    verb = "would free" if r["dry_run"] else "freed"
    _emit(args, r, f"{verb} {human_size(r['bytes'])}: {', '.join(parts)}")
    return EXIT_OK


#: ``vocker status``/``verify`` lines: git status --porcelain's letters
_PORCELAIN = {"C": " M", "D": " D", "A": "??"}


def _status_lines(r):
    lines = [terminal_safe(f"{_PORCELAIN[c['status']]} {c['path']}") for c in r["changes"]]
    lines += [terminal_safe(package_line(p)) for p in r["packages"]]
    return lines


def cmd_status(store, args):
    r = status(store, args.path, full=args.full)
    head = terminal_safe(f"container {r['path']}, image {short_id(r['image'])}: "
                         + ("no changes" if r["clean"] else f"{len(r['changes'])} changed paths"))
    lines = [head, *_status_lines(r)]
    lines += [terminal_safe(f"warning: {rel} is linked to the store and was changed in place "
                            "(vocker verify names every container it reaches)")
              for rel in r["store_damage"]]
    _emit(args, r, "\n".join(lines))
    return EXIT_OK


def cmd_diff(store, args):
    r = diff(store, args.a, args.b, full=args.full)
    if args.stat:
        lines = [terminal_safe(f"{g['group']:<48} A {g['A']:<5} C {g['C']:<5} D {g['D']:<5} "
                               f"+{human_size(g['added'])} -{human_size(g['removed'])}")
                 for g in r["stat"]]
    else:
        lines = [terminal_safe(f"{c['status']} {c['path']}") for c in r["changes"]]
    lines += [terminal_safe(package_line(p)) for p in r["packages"]]
    n = {k: sum(c["status"] == k for c in r["changes"]) for k in "ACD"}
    lines.append(f"{n['A']} added, {n['C']} changed, {n['D']} deleted")
    _emit(args, r, "\n".join(lines))
    return EXIT_OK


def cmd_history(store, args):
    steps = history(store, args.image)
    lines = [f"{'IMAGE ID':<12}  {'CREATED':<20}  {'SIZE':>9}  {'STEP':<28}  TAGS"]
    for h in steps:
        if not h["present"]:
            lines.append(f"{short_id(h['id']):<12}  (not in this store)")
            continue
        step = (f"base: {h['files']} files" if h["base"] else
                f"+{h['added']} ~{h['changed']} -{h['deleted']} ({human_size(h['added_bytes'])})")
        lines.append(terminal_safe(f"{short_id(h['id']):<12}  {h['created']:<20}  "
                                   f"{human_size(h['size']):>9}  {step:<28}  "
                                   f"{', '.join(h['tags'])}"))
        lines += [terminal_safe(" " * 14 + ln) for ln in h["recipe"]]
        lines += [terminal_safe(" " * 14 + package_line(p)) for p in h["packages"]]
    _emit(args, steps, "\n".join(lines), "\n".join(h["id"] for h in steps))
    return EXIT_OK


def _problem_line(p):
    where = p.get("path") or (p["id"] and short_id(p["id"])) or ""
    text = f"{'repaired' if p['repaired'] else 'damaged'}: {p['object']} {where}: {p['problem']}"
    if p.get("container"):
        text += f" (container {p['container']})"
    if p.get("links"):
        text += f"; linked at {', '.join(p['links'][:5])}"
        text += f" and {len(p['links']) - 5} more" if len(p["links"]) > 5 else ""
    if p.get("how"):
        text += f"; {p['how']}"
    return terminal_safe(text)


def cmd_verify(store, args):
    r = verify(store, args.refs, full=args.full, repair=args.repair, location=args.source,
               headers=_headers(args))
    lines = [_problem_line(p) for p in r["problems"]]
    for c in r["containers"]:
        if not c["clean"]:
            lines.append(terminal_safe(f"container {c['path']} differs from image "
                                       f"{short_id(c['image'])}:"))
            lines += _status_lines(c)
    n = r["checked"]
    left = sum(not p["repaired"] for p in r["problems"])
    lines.append(f"checked {n['images']} images, {n['trees']} trees, {n['blobs']} blobs, "
                 f"{n['pool_files']} pool files, {n['pyc_files']} .pyc, {n['containers']} "
                 f"containers{' (full)' if r['full'] else ''}: "
                 + (f"{len(r['problems'])} problems, {left} not repaired" if r["problems"]
                    else "no damage")
                 + "".join(f"; {c['path']} differs from its image" for c in r["containers"]
                           if not c["clean"]))
    if left and not args.repair:
        lines.append("to repair: vocker verify --repair [--from REPO]")
    _emit(args, r, "\n".join(lines))
    return EXIT_DAMAGED if r["damaged"] else EXIT_OK


def cmd_rm(store, args):
    results = [remove_container(store, p) for p in args.paths]
    _emit(args, results, "\n".join(terminal_safe(
        ("removed an interrupted create at " if r.get("interrupted") else "") + r["path"])
        for r in results))
    return EXIT_OK


def _headers(args):
    out = {}
    for h in getattr(args, "header", None) or ():
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            raise UsageError(f"bad header {h!r}", "use --header 'Name: value'")
        out[k.strip()] = v.strip()
    env = os.environ.get("VOCKER_AUTH")
    if env and "Authorization" not in out:
        out["Authorization"] = env
    return out


def _push_swapped(args):
    """``push REPO IMAGE``: the error to show instead, or None."""
    first = args.images[0]
    if (len(args.images) != 1 or not _looks_like_path(first) or _looks_like_path(args.repo)
            or os.path.exists(args.repo) or not TAG_RE.fullmatch(args.repo)):
        return None
    return _swapped("push", [first, args.repo])


def cmd_push(store, args):
    try:
        r = push(store, args.images, args.repo, progress=_progress(args, "pushing"),
                 with_bytecode=not args.no_bytecode)
    except VockerError:
        swapped = _push_swapped(args)
        if swapped:
            raise swapped from None
        raise
    text = "\n".join(f"pushed {short_id(i['id'])}{' as ' + i['tag'] if i['tag'] else ''} "
                     f"({i['new_blobs']} of {i['blobs']} blobs new"
                     + (f"; bytecode {short_id(b['id'])}: {b['pycs']} .pyc for {b['cache_tag']}"
                        if (b := i["bytecode"]) else "") + ")" for i in r["images"])
    _emit(args, r, text)
    return EXIT_OK


def _pull_swapped(args):
    """``pull IMAGE REPO``: the error to show instead, or None."""
    places = [w for w in args.images if _looks_like_path(w)]
    if (len(places) != 1 or _looks_like_path(args.repo) or os.path.exists(args.repo)
            or not TAG_RE.fullmatch(args.repo)):
        return None
    others = [w for w in args.images if w is not places[0]]
    return _swapped("pull", [args.repo, places[0], *others])


def cmd_pull(store, args):
    try:
        r = pull(store, args.repo, args.images, headers=_headers(args),
                 progress=_progress(args, "pulling"), with_bytecode=not args.no_bytecode)
    except VockerError:
        swapped = _pull_swapped(args)
        if swapped:
            raise swapped from None
        raise
    text = "\n".join(f"{'up to date' if i['present'] else 'pulled'} {i['id']}"
                     f"{' as ' + i['tag'] if i['tag'] else ''}"
                     + (f" (bytecode {short_id(b['id'])}: {b['pycs']} .pyc for {b['cache_tag']})"
                        if (b := i["bytecode"]) else "") for i in r["images"])
    _emit(args, r, text, "\n".join(i["id"] for i in r["images"]))
    return EXIT_OK


def cmd_save(store, args):
    r = save(store, args.images, args.output, progress=_progress(args, "saving"),
             with_bytecode=not args.no_bytecode)
    _emit(args, r, f"saved {len(r['images'])} image(s) to {r['file']} ({human_size(r['size'])})")
    return EXIT_OK


def cmd_load(store, args):
    r = load(store, args.file, progress=_progress(args, "loading"))
    text = "\n".join(f"{'present' if i['present'] else 'loaded'} {i['id']}"
                     f"{' as ' + i['tag'] if i['tag'] else ''}" for i in r["images"])
    _emit(args, r, text, "\n".join(i["id"] for i in r["images"]))
    return EXIT_OK


def cmd_repo(store, args):
    if args.repo_command == "init":
        r = repo_init(args.path)
        _emit(args, r, f"initialized repository {r['path']}")
        return EXIT_OK
    rows = repo_ls(args.repo, headers=_headers(args))
    for r in rows:  # a repository's index knows only the version: the same object shape
        r["python"] = {"version": r["python"]} if r["python"] else None
    if args.json or args.quiet:
        _emit(args, rows, None, "\n".join(r["id"] for r in rows))
        return EXIT_OK
    lines = [f"{'NAME:TAG':<30} {'IMAGE ID':<12}  {'KIND':<10} PYTHON"]
    for r in rows:
        for t in r["tags"] or ["<none>"]:
            lines.append(terminal_safe(f"{t:<30} {r['short_id']:<12}  {r['kind'] or '-':<10} "
                                       f"{(r['python'] or {}).get('version') or '-'}"))
    print("\n".join(lines))
    return EXIT_OK


def _field(obj, path):
    """The value at dotted ``path`` into ``obj``; a usage error naming the
    fields there when it is not one."""
    value, done = obj, []
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            keys = sorted(value) if isinstance(value, dict) else []
            import difflib  # here: imported on first use, for a faster start
            close = difflib.get_close_matches(key, keys, n=1)
            where = ".".join(done) or "the top level"
            hint = (f"did you mean {'.'.join(done + close)}?" if close
                    else f"fields at {where}: {', '.join(keys)}" if keys
                    else f"{where} is {_json_text(value, None)[:40]}, not an object")
            raise UsageError(f"no field {path!r} in this {obj['type']}", hint)
        value = value[key]
        done.append(key)
    return value


def cmd_inspect(store, args):
    r = inspect(store, args.name)
    if not args.format:
        _print_json(r)
        return EXIT_OK
    values = [_field(r, f.strip()) for f in args.format.split(",")]
    print("\t".join(terminal_safe(v if isinstance(v, str) else _json_text(v, None))
                    for v in values))
    return EXIT_OK


###############################################################################
# Argument parser #############################################################
###############################################################################

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message, f"see '{self.prog} --help'")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help as written, as wide as the terminal: measured as shutil does,
    without importing shutil at every start (argparse makes a formatter for
    each option it adds)."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns():
    """``shutil.get_terminal_size().columns``: $COLUMNS, else the terminal's, else 80."""
    with contextlib.suppress(KeyError, ValueError):
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if (columns := os.get_terminal_size(sys.__stdout__.fileno()).columns) > 0:
            return columns
    return 80


def _global_options(parser, default):
    """Options accepted before or after the command (``default`` SUPPRESS in
    the commands, so that one given first is not reset)."""
    d = (lambda v: v) if default is None else (lambda v: default)
    parser.add_argument("--home", metavar="DIR", default=d(None),
                        help="store folder (default: $VOCKER_HOME, else the user data dir)")
    parser.add_argument("--debug", action="store_true", default=d(False),
                        help="show tracebacks of errors (not of usage errors)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d(None),
                        help="progress on stderr as JSON lines (docs/json.md); default: a "
                             "bar, only on a terminal")
    parser.add_argument("--json", action="store_true", default=d(False),
                        help="print JSON for scripts, errors too (docs/json.md)")


def _wheel_options(sp):
    sp.add_argument("--find-links", action="append", metavar="DIR",
                    help="a folder of wheels (repeatable)")
    sp.add_argument("--index-url", metavar="URL", help="a package index (default: none)")


class _Unbuilt:
    """Stands in for the parser of a command that ``build_parser(only=...)``
    leaves out: every call on it does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: self


def build_parser(only=None):
    """The command line's parser; ``only``: just that command's sub-parser,
    for a faster start (a command line it cannot parse is parsed again with
    the whole parser, which names the problem)."""
    fmt = _Formatter
    p = _Parser(prog="vocker", formatter_class=fmt,
                description="Docker-like images and containers for Python environments.",
                epilog="examples:\n"
                       "  vocker commit ./venv -t web:1.0     # environment -> image\n"
                       "  vocker create web:1.0 ./web2        # image -> new environment\n"
                       "  vocker images                       # list images\n"
                       "  vocker ps                           # list containers\n\n"
                       "options --home, --debug, --progress and --json go before or after "
                       "the command.\n\n" + EXIT_CODES_HELP)
    p.add_argument("--version", action="version", version=f"vocker {__version__}")
    _global_options(p, None)
    common = argparse.ArgumentParser(add_help=False, formatter_class=fmt)
    _global_options(common, argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="print only IDs (containers: paths), one a line, or nothing")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_, examples):
        if only is not None and name != only:
            return _Unbuilt()
        sp = sub.add_parser(name, help=help_, description=help_, parents=[common],
                            formatter_class=fmt, epilog="examples:\n" + examples)
        sp.set_defaults(func=func)
        return sp

    sp = add("commit", cmd_commit, "turn an environment into an image; prints its ID",
             "  vocker commit ./venv\n  vocker commit ./venv -t web:1.0 --label team=data\n"
             "  vocker commit ./venv --kind venv --json\n")
    sp.add_argument("path", help="the environment's folder")
    sp.add_argument("-t", "--tag", action="append", metavar="NAME[:TAG]", help="tag the image")
    sp.add_argument("--kind", choices=KINDS, help="venv, standalone or plain (default: detect)")
    sp.add_argument("--python", metavar="EXE", help="the venv's base interpreter, if it moved")
    sp.add_argument("--label", action="append", metavar="KEY=VALUE", help="add a label")

    sp = add("build", cmd_build, "build an image from a recipe, or from a Python and a lock",
             "  vocker build --python 3.12 -r requirements.txt --find-links wheels -t app:1\n"
             "  vocker build -f Vockerfile --find-links wheels -t app:2 .\n")
    sp.add_argument("context", nargs="?", metavar="CONTEXT",
                    help="folder the recipe's INSTALL and COPY paths are in (default: the "
                         "recipe's folder)")
    sp.add_argument("-f", "--file", metavar="RECIPE", help="the recipe (docs/recipe.md)")
    sp.add_argument("--python", metavar="X.Y[.Z]|EXE",
                    help="without -f: the Python version (or interpreter) to build on; with "
                         "-f: the interpreter to use for the recipe's PYTHON line")
    sp.add_argument("-r", "--requirements", metavar="LOCK",
                    help="without -f: a requirements file with --hash pins, or a pylock.toml")
    _wheel_options(sp)
    sp.add_argument("-t", "--tag", action="append", metavar="NAME[:TAG]", help="tag the image")
    sp.add_argument("--label", action="append", metavar="KEY=VALUE", help="add a label")
    sp = add("audit", cmd_audit, "rebuild an image from the recipe it records and compare",
             "  vocker audit app:1 --find-links wheels\n"
             "  vocker audit app:2 --find-links wheels --context . --json\n")
    sp.add_argument("image", metavar="IMAGE")
    _wheel_options(sp)
    sp.add_argument("--context", metavar="DIR", help="the folder the recipe's COPY files are in")
    sp.add_argument("--python", metavar="EXE", help="the interpreter to rebuild with (it must "
                    "be the image's exact Python)")
    sp.add_argument("--run", action="store_true",
                    help="run the recipe's RUN commands (they come from the image)")

    sp = add("create", cmd_create, "make a new environment (container) from an image",
             "  vocker create web:1.0 ./web\n  vocker create web:1.0 ./web-copy --link-mode copy\n"
             "  vocker create web:1.0 ./web-quick --no-compile\n")
    sp.add_argument("image", help="image ID, unique ID prefix, or NAME[:TAG]")
    sp.add_argument("path", help="folder to create (must not exist)")
    sp.add_argument("--link-mode", choices=LINK_MODES, default="auto",
                    help="how files are shared with the store (default: auto = reflink, "
                         "else hardlink, else copy)")
    sp.add_argument("--python", metavar="EXE", help="base interpreter to use")
    sp.add_argument("--no-compile", action="store_true", help="do not create .pyc files")

    sp = add("images", cmd_images, "list images (all, or those of one name)",
             "  vocker images\n  vocker images web           # every tag of web\n"
             "  vocker images web:1.0 -q    # its full ID\n  vocker images --json\n")
    sp.add_argument("name", nargs="?", metavar="NAME[:TAG]", help="only this repository or tag")
    add("ps", cmd_ps, "list containers", "  vocker ps\n  vocker ps -q\n  vocker ps --json\n")
    sp = add("tag", cmd_tag, "give an image a name", "  vocker tag web:1.0 web:stable\n")
    sp.add_argument("image")
    sp.add_argument("name", metavar="NAME[:TAG]")
    sp = add("inspect", cmd_inspect, "show an image or a container as JSON",
             "  vocker inspect web:1.0\n  vocker inspect ./web\n"
             "  vocker inspect web:1.0 --format id,manifest.python.version\n")
    sp.add_argument("name", metavar="IMAGE|CONTAINER")
    sp.add_argument("--format", metavar="FIELD[,FIELD]",
                    help="print only these fields, tab-separated: dotted paths into the "
                         "JSON (strings as is, other values as JSON)")

    sp = add("push", cmd_push, "copy images (and their tags) to a repository folder or share",
             "  vocker push web:1.0 ./repo\n  vocker push web:1.0 web:stable ./repo\n")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("repo", metavar="REPO", help="repository folder (made if empty)")
    sp.add_argument("--no-bytecode", action="store_true",
                    help="leave out the .pyc this store compiled for the image (by default "
                         "they go as a bytecode record, so a pull by tag need not compile)")
    sp = add("pull", cmd_pull, "fetch images from a repository (folder, file:// or http(s)://)",
             "  vocker pull ./repo web:1.0\n  vocker pull ./repo web:1.0 --home ./other-store\n")
    sp.add_argument("repo", metavar="REPO")
    sp.add_argument("images", nargs="+", metavar="IMAGE",
                    help="NAME[:TAG], ID, unique ID prefix, or a bytecode ID (its image "
                         "and its .pyc)")
    sp.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                    help="extra HTTP header (e.g. Authorization); also $VOCKER_AUTH, ~/.netrc")
    sp.add_argument("--no-bytecode", action="store_true",
                    help="with a tag, fetch no .pyc (create compiles them); an image ID "
                         "never brings any")
    sp = add("save", cmd_save, "write images to one portable archive file",
             "  vocker save web:1.0 -o web.vocker\n")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("-o", "--output", required=True, metavar="FILE")
    sp.add_argument("--no-bytecode", action="store_true",
                    help="leave out the .pyc this store compiled (as push --no-bytecode)")
    sp = add("load", cmd_load, "load every image of an archive (skips what is present)",
             "  vocker load web.vocker\n")
    sp.add_argument("file", metavar="FILE")
    sp = add("repo", cmd_repo, "make or list a repository",
             "  vocker repo init ./repo2\n  vocker repo ls ./repo\n")
    rsub = sp.add_subparsers(dest="repo_command", metavar="ACTION", required=True)
    r1 = rsub.add_parser("init", help="make an empty repository folder", parents=[common],
                         formatter_class=fmt)
    r1.add_argument("path", metavar="DIR")
    r2 = rsub.add_parser("ls", help="list a repository's images and tags", parents=[common],
                         formatter_class=fmt)
    r2.add_argument("repo", metavar="REPO")
    r2.add_argument("--header", action="append", metavar="'NAME: VALUE'")
    sp = add("rm", cmd_rm, "delete containers (their folders and records)",
             "  vocker rm ./web\n  vocker rm $(vocker ps -q)    # every container\n")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    add("df", cmd_df, "disk use: per image, shared and unique bytes, what containers save",
        "  vocker df\n  vocker df --json\n")
    sp = add("gc", cmd_gc, "remove what no image, tag or container needs",
             "  vocker gc --dry-run    # what it would free\n  vocker gc\n")
    sp.add_argument("-n", "--dry-run", action="store_true",
                    help="only say what would be removed and how much it frees")
    sp = add("verify", cmd_verify, "check the store and containers; --repair fixes the store",
             "  vocker verify                  # the whole store, fast\n"
             "  vocker verify --full           # re-hash every object\n"
             "  vocker verify ./web            # a container against its image\n"
             "  vocker verify --repair --from https://example.org/repo\n")
    sp.add_argument("refs", nargs="*", metavar="IMAGE|CONTAINER",
                    help="only these (default: the whole store)")
    sp.add_argument("--full", action="store_true", help="re-hash every blob, pool file, "
                    ".pyc and container file")
    sp.add_argument("--repair", action="store_true",
                    help="rewrite damaged store files from packs, pool copies or --from")
    sp.add_argument("--from", dest="source", metavar="REPO",
                    help="repository to fetch damaged objects from (with --repair)")
    sp.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                    help="HTTP header for --from (repeatable)")
    sp = add("status", cmd_status, "a container's changes against its image, like git status",
             "  vocker status ./web\n  vocker status ./web --json\n")
    sp.add_argument("path", metavar="CONTAINER")
    sp.add_argument("--full", action="store_true", help="read every file (trust no cache)")
    sp = add("diff", cmd_diff, "compare two images or containers (A added, C changed, D deleted)",
             "  vocker diff web:1.0 web:stable\n  vocker diff web:1.0 ./web --stat\n")
    sp.add_argument("a", metavar="A", help="image or container")
    sp.add_argument("b", metavar="B", help="image or container")
    sp.add_argument("--stat", action="store_true", help="per package folder: counts and bytes")
    sp.add_argument("--full", action="store_true", help="read every container file")
    sp = add("history", cmd_history, "an image's parent chain and what each step changed",
             "  vocker history web:1.0\n")
    sp.add_argument("image", metavar="IMAGE")
    sp = add("rmi", cmd_rmi, "remove images (or one tag of an image)",
             "  vocker rmi web:stable\n  vocker rmi --force $(vocker images -q)    # every image\n")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("-f", "--force", action="store_true",
                    help="remove an image with several tags, or one that containers use "
                         "(they stay, without their image)")
    return p


###############################################################################
# main ########################################################################
###############################################################################

#: commands that only read the store: they work on a read-only store too
READ_ONLY_COMMANDS = (cmd_images, cmd_inspect, cmd_ps, cmd_save, cmd_df, cmd_status, cmd_diff,
                      cmd_history, cmd_verify)
#: the hidden names vocker stages under: ``.NAME.vocker-PID-RANDOM`` beside NAME
_STAGE_RE = _Regex(r"(?<![^/\\])\.([^/\\]+?)\.vocker-(?:[0-9]+-)?[0-9a-f]{8}(?![0-9A-Za-z])")


def _given(argv, flag):
    """Whether ``flag`` is on the command line (before any ``--``)."""
    words = list(argv)
    return flag in (words[:words.index("--")] if "--" in words else words)


def _command_word(argv):
    """The command ``argv`` names (its first word that is no option nor
    ``--home``'s value), else None: also when help is asked before it."""
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help", "--"):
            return None
        if word == "--home":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _user_paths(text, store):
    """``text`` naming the user's paths where it named vocker's staging ones."""
    text = _STAGE_RE.sub(r"\1", text)
    if store is not None:
        tmp = re.escape(store.tmp_dir + os.sep) + r"[^\s;:,)]*"
        text = re.sub(tmp, lambda m: f"{store.home} (the store)", text)
    return text


def _fail(code, kind, message, hint, as_json, store, prefix="vocker: error: "):
    """Report an error on stderr (one line, or the JSON error object); returns ``code``."""
    message, hint = _user_paths(message, store), hint and _user_paths(hint, store)
    if as_json:
        error = {"code": code, "type": kind, "message": message, "hint": hint}
        _print_json({"error": error}, sys.stderr, None)
    else:
        print(terminal_safe(prefix + message + (f"; {hint}" if hint else "")), file=sys.stderr)
    return code


def _check_imports():
    """Raise the one-line reason blake3 did not import (the ImportError is
    chained: --debug shows its traceback); zstandard says so where used."""
    if _IMPORT_ERROR is not None:
        exc, module = _IMPORT_ERROR
        raise import_problem(exc, module) from exc


def import_problem(exc, module):
    """The :class:`EnvironmentProblem` of ``module`` (blake3, zstandard)
    that failed to import with ``exc``: what is missing, and how to fix it."""
    import sysconfig  # here: needed only to say what failed
    here = f"Python {sys.version_info[0]}.{sys.version_info[1]} on {sysconfig.get_platform()}"
    pyz = bool(sys.argv) and sys.argv[0].lower().endswith(".pyz")
    if isinstance(exc, ModuleNotFoundError) and pyz:
        message = f"this vocker.pyz has no blake3/zstandard modules for {here} ({exc})"
        hint = ("rebuild the .pyz for this Python (build_zipapp.py, --platform windows for "
                "Windows), run it with a CPython it was built for (py -3.12 vocker.pyz ...), "
                "or get the universal build (build_zipapp.py --universal)")
    elif isinstance(exc, ModuleNotFoundError):
        message = f"vocker needs the blake3 and zstandard modules ({exc}) for {here}"
        hint = "install them (pip install blake3 zstandard) or use a vocker.pyz built for this Python"
    else:
        message = f"cannot load {module} for {here}: {exc}"
        hint = _IMPORT_HINTS["dll" if "DLL load failed" in str(exc) else "pyz" if pyz else "pip"]
    return EnvironmentProblem(message, hint)


_IMPORT_HINTS = {
    "dll": "this system lacks a runtime DLL that module needs: update Windows "
           "(and install the latest Microsoft Visual C++ Redistributable)",
    "pyz": "rebuild the .pyz for this Python (build_zipapp.py), or run it with another CPython",
    "pip": "reinstall it (pip install --force-reinstall blake3 zstandard)",
}


def _check_locale(words):
    """A word this locale could not decode (its bytes became surrogates) can
    be neither stored nor printed: say why, once, before anything is done."""
    for word in words:
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            raise EnvironmentProblem(
                f"{os.fsencode(word).decode('utf-8', 'replace')!r} is not text in this "
                "locale's encoding "
                f"({sys.getfilesystemencoding()})",
                "run vocker in a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1") from None


def _check_locale_name(path):
    """A file name whose bytes are UTF-8 but which this locale could not
    decode (LC_ALL=C with PYTHONUTF8=0) is the locale's problem, not the
    file's: :func:`_check_locale` says so. Bytes that are not UTF-8 pass."""
    if os.name == "nt" or sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        return
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return
    _check_locale([path])


def _run(argv, state):
    """Parse ``argv`` and run its command; the store goes into ``state``."""
    _check_locale([*argv, os.environ.get("VOCKER_HOME", "")])
    only = _command_word(argv)
    try:
        try:
            parser = build_parser(only)
            args, extra = parser.parse_known_args(argv)
        except UsageError:
            if only is None:
                raise
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if extra:  # named here, where the command is known
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}",
                         f"see 'vocker {args.command or ''} --help'".replace("  ", " "))
    _check_imports()
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if args.func is not cmd_repo:  # repo init/ls need no local store
        state["store"] = Store(args.home or default_home(),
                               readonly=None if args.func in READ_ONLY_COMMANDS else False)
    return args.func(state["store"], args)


def _safe_streams():
    """Text on stdout and stderr can never fail on encoding: what the console's
    code page lacks is written as ``\\uXXXX``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(errors="backslashreplace")


def _os_error_code(exc):
    """`` [WinError N]`` or `` [Errno N]`` for an OSError that names no file:
    the code is then all that tells its cause apart."""
    winerror = getattr(exc, "winerror", None)  # Windows only
    if winerror:
        return f" [WinError {winerror}]"
    return f" [Errno {exc.errno}]" if exc.errno else ""


def print_traceback():
    """--debug: the traceback of the exception being handled, on stderr."""
    import traceback  # here: imported on first use, for a faster start
    traceback.print_exc()


def main(argv=None):
    """Run the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _safe_streams()
    debug, as_json = _given(argv, "--debug"), _given(argv, "--json")
    state = {"store": None}
    try:
        return _run(argv, state)
    except VockerError as exc:
        if debug and not isinstance(exc, UsageError):
            print_traceback()
        if isinstance(exc, NotFoundError) and state["store"] is not None:
            with contextlib.suppress(sqlite3.Error):  # the plain message is still true
                _explain_missing(state["store"], exc)
        return _fail(exc.exit_code, type(exc).__name__, exc.message, exc.hint, as_json,
                     state["store"])
    except BrokenPipeError:  # output piped into head & co.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "KeyboardInterrupt", "interrupted", None, as_json,
                     state["store"], prefix="vocker: ")
    except OSError as exc:
        if debug:
            print_traceback()
        where = f" ({exc.filename})" if exc.filename else _os_error_code(exc)
        return _fail(EXIT_ENVIRONMENT, type(exc).__name__, f"{exc.strerror or exc}{where}",
                     "check the path, free space and permissions", as_json, state["store"])
    except Exception as exc:  # a bug
        if debug:
            print_traceback()
        return _fail(EXIT_ERROR, type(exc).__name__, f"{type(exc).__name__}: {exc}",
                     "run again with --debug and report it", as_json, state["store"],
                     prefix="vocker: internal error: ")
    finally:
        if state["store"] is not None:
            state["store"].close()


def run():
    """The ``vocker`` program (its console script, ``python vocker.py``,
    vocker.pyz): :func:`main`, its output flushed, then the process ends at
    once. Every file and the store are closed by then; tearing down the
    interpreter's ~60 modules would add ~8 ms to each run (a create from a
    warm store takes ~100)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()