"""Build small, valid, deterministic pure-Python wheels for the test-suite.

Standard library only.  Nothing here touches the network.

Public API:

* ``build_wheel(dest_dir, name, version, files, console_scripts=None) -> Path``
* ``build_demo_wheelhouse(dest_dir) -> Path``
* ``normalize_dist_name(name) -> str``  (wheel-filename form of a project name)
* ``record_hash(data) -> str``           (``sha256=<urlsafe-b64-nopad>``)
* ``DEMO_WHEELS``                        (project -> versions built by the wheelhouse)
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import re
import textwrap
import zipfile

__all__ = [
    "build_wheel",
    "build_demo_wheelhouse",
    "normalize_dist_name",
    "record_hash",
    "DEMO_WHEELS",
]

# 1980-01-01 00:00:00 is the earliest timestamp a zip file can hold.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_GENERATOR = "vocker-tests-wheelfactory (1.0)"

#: What ``build_demo_wheelhouse`` produces: project name -> versions.
DEMO_WHEELS = {
    "vockdemo": ("1.0", "2.0"),
    "vockextra": ("1.0",),
    "vockbig": ("1.0",),
}


def normalize_dist_name(name: str) -> str:
    """Return the form of *name* used in wheel and .dist-info file names."""
    return re.sub(r"[-_.]+", "_", name)


def record_hash(data: bytes) -> str:
    """Return the RECORD hash field for *data*: ``sha256=`` + urlsafe b64, no padding."""
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _as_bytes(content: str | bytes) -> bytes:
    if isinstance(content, bytes):
        return content
    return content.encode("utf-8")


def _check_archive_path(path: str) -> str:
    if not path or path.startswith("/") or "\\" in path:
        raise ValueError(f"bad wheel member path: {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad wheel member path: {path!r}")
    return path


def _zipinfo(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so external_attr carries the mode
    info.external_attr = (0o100644 & 0xFFFF) << 16  # regular file, rw-r--r--
    return info


def build_wheel(
    dest_dir,
    name: str,
    version: str,
    files: dict[str, str | bytes],
    console_scripts: dict[str, str] | None = None,
) -> pathlib.Path:
    """Write ``{name}-{version}-py3-none-any.whl`` into *dest_dir* and return its path.

    *files* maps archive paths (relative, ``/``-separated, e.g.
    ``"pkg/__init__.py"``) to their content (``str`` is UTF-8 encoded).
    *console_scripts* maps script names to ``module:function`` entry points.

    The wheel is byte-for-byte deterministic: entries are sorted, timestamps
    and permissions are fixed, and the ``.dist-info`` files come last with
    ``RECORD`` as the final entry.
    """
    dest = pathlib.Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)

    dist = normalize_dist_name(name)
    dist_info = f"{dist}-{version}.dist-info"

    payload: dict[str, bytes] = {}
    for path, content in files.items():
        path = _check_archive_path(path)
        if path.split("/")[0].endswith((".dist-info", ".data")):
            raise ValueError(f"files must not write into {path.split('/')[0]!r}")
        payload[path] = _as_bytes(content)

    metadata = (
        "Metadata-Version: 2.1\n"
        f"Name: {name}\n"
        f"Version: {version}\n"
        f"Summary: vocker test package {name} {version}\n"
        "Requires-Python: >=3.8\n"
        "\n"
    ).encode("utf-8")
    wheel = (
        "Wheel-Version: 1.0\n"
        f"Generator: {_GENERATOR}\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
        "\n"
    ).encode("utf-8")

    meta_files: dict[str, bytes] = {
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": wheel,
    }
    if console_scripts:
        lines = ["[console_scripts]"]
        for script in sorted(console_scripts):
            target = console_scripts[script]
            if ":" not in target:
                raise ValueError(f"console script {script!r} needs module:func, got {target!r}")
            lines.append(f"{script} = {target}")
        meta_files[f"{dist_info}/entry_points.txt"] = ("\n".join(lines) + "\n\n").encode("utf-8")

    record_path = f"{dist_info}/RECORD"
    ordered = sorted(payload.items()) + sorted(meta_files.items())

    record_lines = [f"{path},{record_hash(data)},{len(data)}" for path, data in ordered]
    record_lines.append(f"{record_path},,")
    record = ("\n".join(record_lines) + "\n").encode("utf-8")

    wheel_path = dest / f"{dist}-{version}-py3-none-any.whl"
    tmp_path = wheel_path.with_name(wheel_path.name + ".tmp")
    with zipfile.ZipFile(tmp_path, "w") as zf:
        for path, data in ordered + [(record_path, record)]:
            zf.writestr(_zipinfo(path), data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    tmp_path.replace(wheel_path)
    return wheel_path


# --------------------------------------------------------------------------
# demo wheelhouse
# --------------------------------------------------------------------------


def _vockdemo_files(version: str) -> dict[str, str | bytes]:
    major = version.split(".")[0]
    init = textwrap.dedent(
        f'''\
        """vockdemo: a tiny package used by the vocker test-suite."""

        __version__ = "{version}"

        from vockdemo.core import hello  # noqa: E402

        __all__ = ["__version__", "hello"]
        '''
    )
    core = textwrap.dedent(
        f'''\
        """Core module of vockdemo {version}."""

        import sys

        VERSION = "{version}"
        GENERATION = {major}


        def hello():
            return "hello from vockdemo " + VERSION


        def info_text():
            try:
                from importlib.resources import files
            except ImportError:  # Python < 3.9
                import os
                here = os.path.dirname(os.path.abspath(__file__))
                with open(os.path.join(here, "data", "info.txt"), encoding="utf-8") as f:
                    return f.read()
            return files("vockdemo").joinpath("data/info.txt").read_text(encoding="utf-8")


        def main():
            print("vockdemo " + VERSION + " from " + sys.executable)
            return 0
        '''
    )
    if major == "2":
        # make 2.0 differ structurally, not only in the version string
        core += textwrap.dedent(
            '''

            def shout():
                return hello().upper() + "!"
            '''
        )
    info = f"vockdemo data file, version {version}\n"
    return {
        "vockdemo/__init__.py": init,
        "vockdemo/core.py": core,
        "vockdemo/data/info.txt": info,
        "vockdemo/py.typed": b"",
    }


def _vockextra_files() -> dict[str, str | bytes]:
    mod = textwrap.dedent(
        '''\
        """vockextra: a single-module distribution for the vocker test-suite."""

        import sys

        __version__ = "1.0"


        def extra():
            return "vockextra " + __version__


        def main():
            print("vockextra " + __version__ + " from " + sys.executable)
            return 0
        '''
    )
    return {"vockextra.py": mod}


def _vockbig_files(n_modules: int = 40) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        "vockbig/__init__.py": '"""vockbig: many modules to give pyc compilation work."""\n\n__version__ = "1.0"\n',
    }
    for i in range(n_modules):
        # Every 4th module shares identical content (content-addressed
        # stores should deduplicate them); the rest are unique.
        if i % 4 == 3:
            tag = "shared"
        else:
            tag = f"mod{i:02d}"
        lines = [f'"""vockbig module body ({tag})."""', "", f'TAG = "{tag}"', ""]
        for j in range(24):
            lines.append(f"def func_{j:02d}(x, y={j}):")
            lines.append(f'    """Return a value derived from x ({tag}, {j})."""')
            lines.append(f"    total = x * {j + 1} + y")
            lines.append(f"    for k in range({j % 5 + 1}):")
            lines.append("        total += k * k")
            lines.append(f"    return total, TAG, {j!r}")
            lines.append("")
        lines.append("TABLE = [" + ", ".join(f"func_{j:02d}" for j in range(24)) + "]")
        lines.append("")
        files[f"vockbig/m{i:02d}.py"] = "\n".join(lines)
    return files


def build_demo_wheelhouse(dest_dir) -> pathlib.Path:
    """Build the fixed demo wheel set into *dest_dir* and return it as a Path.

    Contents: ``vockdemo`` 1.0 and 2.0, ``vockextra`` 1.0, ``vockbig`` 1.0.
    """
    dest = pathlib.Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for version in DEMO_WHEELS["vockdemo"]:
        build_wheel(
            dest,
            "vockdemo",
            version,
            _vockdemo_files(version),
            console_scripts={"vockdemo": "vockdemo.core:main"},
        )
    build_wheel(
        dest,
        "vockextra",
        "1.0",
        _vockextra_files(),
        console_scripts={"vockextra": "vockextra:main"},
    )
    build_wheel(dest, "vockbig", "1.0", _vockbig_files())
    return dest


if __name__ == "__main__":  # python3 tests/wheelfactory.py DIR: the demo wheels in DIR
    import sys

    print(build_demo_wheelhouse(sys.argv[1]))
