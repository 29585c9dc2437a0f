"""Windows launchers without an environment: distlib launchers built from pip's
real stubs, uv trampolines, zip normalization and path spellings; templates,
rendering and the refusals, on good, hostile and garbage input."""

from __future__ import annotations

import inspect
import io
import os
import random
import struct
import subprocess
import sys
import time
import types
import zipfile
import zipimport

import pytest

import pip._vendor.distlib as _distlib
import pip._vendor.distlib.scripts as distlib_scripts

from vocker import (
    EXIT_INVALID,
    LAUNCHER_SHEBANG_MAX,
    InvalidInputError,
    UnsupportedLauncherError,
    ZipFormatError,
    is_uv_trampoline,
    launcher_template,
    normalize_zip,
    render_launcher,
    render_uv_trampoline,
    split_launcher,
    split_uv_trampoline,
    uv_trampoline_format,
    uv_trampoline_template,
    windows_spellings,
)

DISTLIB_DIR = os.path.dirname(_distlib.__file__)


def _stub(name: str) -> bytes:
    with open(os.path.join(DISTLIB_DIR, name), "rb") as f:
        return f.read()


T64 = _stub("t64.exe")
W64 = _stub("w64.exe")
ALL_STUBS = [_stub(n) for n in ("t64.exe", "w64.exe", "t32.exe", "w32.exe", "t64-arm.exe", "w64-arm.exe")]

PH = b"@@VOCKER:ENV@@"
ENV_A = r"C:\Users\Ann Lee\envs\web"
ENV_B = r"D:\short"
ENV_C = r"F:\vocker\envs\third"
ENV_D = r"G:\with space\env"
T1 = (2023, 5, 17, 13, 45, 10)
T2 = (2024, 12, 31, 23, 59, 58)

# pip's console-script template, as vendored (module/func filled in).
MAIN_PY = (
    distlib_scripts.SCRIPT_TEMPLATE
    % {"module": "json.tool", "import_name": "main", "func": "main"}
).encode("utf-8")


def distlib_shebang(exe: str) -> bytes:
    """What distlib 0.3.x writes on Windows: _get_shebang -> _build_shebang
    (simple form on Windows, after enquote_executable) -> b'\\n', then
    _write_script appends os.linesep (b'\\r\\n') because the shebang does
    not already end with it."""
    shebang = b"#!" + distlib_scripts.enquote_executable(exe).encode("utf-8") + b"\n"
    if not shebang.endswith(b"\r\n"):
        shebang += b"\r\n"
    return shebang


def make_zip(script: bytes, date_time, comment: bytes = b"", compress=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        info = zipfile.ZipInfo("__main__.py", date_time=date_time)
        info.compress_type = compress
        info.external_attr = 0o600 << 16  # what writestr(str, ...) sets
        zf.writestr(info, script)
        if comment:
            zf.comment = comment
    return buf.getvalue()


def make_launcher(stub, env, date_time, exe_name="python.exe", comment=b"", script=MAIN_PY):
    exe = env + "\\Scripts\\" + exe_name
    shebang = distlib_shebang(exe)
    zipb = make_zip(script, date_time, comment)
    return stub + shebang + zipb, (stub, shebang, zipb)


# --------------------------------------------------------------------------
# split_launcher
# --------------------------------------------------------------------------


@pytest.mark.parametrize("stub", ALL_STUBS, ids=["t64", "w64", "t32", "w32", "t64-arm", "w64-arm"])
@pytest.mark.parametrize("env", [ENV_A, ENV_B])
def test_split_finds_exact_parts(stub, env):
    data, parts = make_launcher(stub, env, T1)
    assert split_launcher(data) == parts
    # the stub contains a "#!" literal of its own; it must not confuse us
    assert b"#!" in stub


def test_shebang_forms_match_distlib_on_windows():
    _, (_, sb_a, _) = make_launcher(T64, ENV_A, T1)
    _, (_, sb_b, _) = make_launcher(T64, ENV_B, T1)
    assert sb_a == b'#!"C:\\Users\\Ann Lee\\envs\\web\\Scripts\\python.exe"\n\r\n'
    assert sb_b == b"#!D:\\short\\Scripts\\python.exe\n\r\n"


#: WinPython (the Wine lane's CPython) patches its own pip's distlib to write a
#: relative "#!python.exe"; venvs get ensurepip's unpatched pip
PATCHED_DISTLIB = "basename(get_executable())" in inspect.getsource(
    distlib_scripts.ScriptMaker._get_shebang)


@pytest.mark.skipif(PATCHED_DISTLIB, reason="this interpreter's pip is WinPython's, whose distlib "
                    "writes a relative '#!python.exe' (not what pip writes)")
def test_real_distlib_scriptmaker_with_windows_faked(tmp_path, monkeypatch):
    """Run distlib's own ScriptMaker code path with os.name/os.linesep faked to
    Windows, and check it produces what make_launcher builds by hand."""
    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake_os.name = "nt"
    fake_os.linesep = "\r\n"
    monkeypatch.setattr(distlib_scripts, "os", fake_os)
    exe = ENV_A + "\\Scripts\\python.exe"
    monkeypatch.setattr(distlib_scripts, "get_executable", lambda: exe)
    monkeypatch.setattr(distlib_scripts.sysconfig, "is_python_build", lambda: False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(time.mktime(T2 + (0, 0, -1)))))

    maker = distlib_scripts.ScriptMaker(None, str(tmp_path))
    maker._is_nt = True
    maker._get_launcher = lambda kind: T64 if kind == "t" else W64
    maker.variants = {""}
    out = maker.make("myjson = json.tool:main")
    assert [os.path.basename(p) for p in out] == ["myjson.exe"]
    real = (tmp_path / "myjson.exe").read_bytes()

    stub, shebang, zipb = split_launcher(real)
    assert stub == T64
    assert shebang == b'#!"' + exe.encode() + b'"\n\r\n'  # pip's odd "\n\r\n"
    assert zipfile.ZipFile(io.BytesIO(zipb)).read("__main__.py") == MAIN_PY

    hand, _ = make_launcher(T64, ENV_B, T1)
    spell_a, spell_b = windows_spellings(ENV_A), windows_spellings(ENV_B)
    assert launcher_template(real, spell_a, PH) == launcher_template(hand, spell_b, PH)


# --------------------------------------------------------------------------
# templates and rendering
# --------------------------------------------------------------------------


@pytest.mark.parametrize("stub,exe_name", [(T64, "python.exe"), (W64, "pythonw.exe")])
def test_two_installs_give_identical_templates(stub, exe_name):
    a, _ = make_launcher(stub, ENV_A, T1, exe_name)
    b, _ = make_launcher(stub, ENV_B, T2, exe_name)
    assert a != b
    ta = launcher_template(a, windows_spellings(ENV_A), PH)
    tb = launcher_template(b, windows_spellings(ENV_B), PH)
    assert ta is not None and ta == tb
    stub_t, shebang_t, zip_t = split_launcher(ta)
    assert stub_t == stub
    assert shebang_t == b'#!"' + PH + b"\\Scripts\\" + exe_name.encode() + b'"\n\r\n'
    assert zipfile.ZipFile(io.BytesIO(zip_t)).getinfo("__main__.py").date_time == (1980, 1, 1, 0, 0, 0)


@pytest.mark.parametrize("env,quoted", [(ENV_C, False), (ENV_D, True)])
def test_render_at_third_path(tmp_path, env, quoted):
    a, _ = make_launcher(T64, ENV_A, T1)
    tmpl = launcher_template(a, windows_spellings(ENV_A), PH)
    out = render_launcher(tmpl, PH, env.encode())

    # the zip is readable straight through the prepended stub + shebang
    with zipfile.ZipFile(io.BytesIO(out)) as zf:
        assert zf.namelist() == ["__main__.py"]
        assert zf.read("__main__.py") == MAIN_PY
        assert zf.testzip() is None

    stub, shebang, _ = split_launcher(out)
    assert stub == T64
    exe = (env + "\\Scripts\\python.exe").encode()
    assert shebang == (b'#!"' + exe + b'"' if quoted else b"#!" + exe) + b"\n\r\n"
    assert shebang == distlib_shebang(env + "\\Scripts\\python.exe")
    assert PH not in out

    # zipimport (what `python launcher.exe` uses) reads it too
    p = tmp_path / "tool.exe"
    p.write_bytes(out)
    imp = zipimport.zipimporter(str(p))
    assert imp.get_source("__main__") == MAIN_PY.decode()

    # and CPython can actually run the launcher file as a zip application
    r = subprocess.run([sys.executable, str(p)], input='{"a": 1}', capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '"a": 1' in r.stdout


def test_render_at_original_path_roundtrips():
    data, (stub, shebang, zipb) = make_launcher(T64, ENV_A, T1)
    tmpl = launcher_template(data, windows_spellings(ENV_A), PH)
    assert render_launcher(tmpl, PH, ENV_A.encode()) == stub + shebang + normalize_zip(zipb)


def test_render_never_touches_stub_or_zip():
    # a stub and zip content that contain the placeholder bytes
    stub = T64 + PH + b"padding"
    script = b"# " + PH + b"\nprint('hi')\n"
    data, _ = make_launcher(stub, ENV_B, T1, script=script)
    tmpl = launcher_template(data, windows_spellings(ENV_B), PH)
    out = render_launcher(tmpl, PH, ENV_C.encode())
    s, sb, z = split_launcher(out)
    assert s == stub
    assert zipfile.ZipFile(io.BytesIO(z)).read("__main__.py") == script
    assert sb == b"#!F:\\vocker\\envs\\third\\Scripts\\python.exe\n\r\n"


def test_render_rejects_overlong_shebang():
    a, _ = make_launcher(T64, ENV_A, T1)
    tmpl = launcher_template(a, windows_spellings(ENV_A), PH)
    long_env = ("C:\\" + "x" * 250).encode()
    with pytest.raises(InvalidInputError, match="only reads"):
        render_launcher(tmpl, PH, long_env)
    out = render_launcher(tmpl, PH, long_env, strict=False)
    assert len(split_launcher(out)[1]) > LAUNCHER_SHEBANG_MAX
    with pytest.raises(InvalidInputError, match="not a launcher template"):
        render_launcher(b"not a template", PH, b"C:\\x")


def test_forward_slash_and_lowercase_drive_spellings_match():
    exe = "c:/Users/Ann Lee/envs/web/Scripts/python.exe"
    data = T64 + distlib_shebang(exe) + make_zip(MAIN_PY, T1)
    tmpl = launcher_template(data, windows_spellings(ENV_A), PH)
    assert split_launcher(tmpl)[1] == b'#!"' + PH + b'/Scripts/python.exe"\n\r\n'
    # one spelling is enough: slashes and drive case are normalised internally
    assert launcher_template(data, [ENV_A.encode()], PH) == tmpl


def test_installer_style_unquoted_shebang_with_spaces():
    # pypa/installer writes b"#!" + exe (never quoted) + b"\n"
    exe = (ENV_A + "\\Scripts\\python.exe").encode()
    data = T64 + b"#!" + exe + b"\n" + make_zip(MAIN_PY, T1)
    tmpl = launcher_template(data, windows_spellings(ENV_A), PH)
    assert split_launcher(tmpl)[1] == b'#!"' + PH + b'\\Scripts\\python.exe"\n'
    out = render_launcher(tmpl, PH, ENV_D.encode())
    assert split_launcher(out)[1] == b'#!"G:\\with space\\env\\Scripts\\python.exe"\n'


def test_shebang_not_in_env_returns_none():
    data, _ = make_launcher(T64, ENV_A, T1)
    assert launcher_template(data, windows_spellings(ENV_B), PH) is None
    # a prefix that does not end at a path separator is not a match
    assert launcher_template(data, windows_spellings(ENV_A[:-1]), PH) is None
    assert launcher_template(data, windows_spellings(ENV_A + "2"), PH) is None
    # the base interpreter, not the env
    data2 = T64 + distlib_shebang(r"C:\Python311\python.exe") + make_zip(MAIN_PY, T1)
    assert launcher_template(data2, windows_spellings(ENV_A), PH) is None


def test_env_path_elsewhere_in_launcher_is_refused():
    script = b"# built for C:\\Users\\Ann Lee\\envs\\web\n" + MAIN_PY
    data, _ = make_launcher(T64, ENV_A, T1, script=script)
    with pytest.raises(UnsupportedLauncherError):
        launcher_template(data, windows_spellings(ENV_A), PH)


def test_ignore_case_option():
    data = T64 + distlib_shebang(r"C:\USERS\ann lee\Envs\WEB\Scripts\python.exe") + make_zip(MAIN_PY, T1)
    assert launcher_template(data, windows_spellings(ENV_A), PH) is None
    tmpl = launcher_template(data, windows_spellings(ENV_A), PH, ignore_case=True)
    assert split_launcher(tmpl)[1] == b'#!"' + PH + b'\\Scripts\\python.exe"\n\r\n'


# --------------------------------------------------------------------------
# garbage / non-launchers
# --------------------------------------------------------------------------


def test_random_bytes_and_plain_pe_return_none():
    rng = random.Random(1234)
    for n in (0, 1, 2, 21, 22, 63, 64, 100, 1000, 70000):
        blob = bytes(rng.getrandbits(8) for _ in range(n))
        assert split_launcher(blob) is None
        assert split_launcher(b"MZ" + blob) is None
        assert launcher_template(b"MZ" + blob, windows_spellings(ENV_A), PH) is None
        assert not is_uv_trampoline(b"MZ" + blob)
    for stub in ALL_STUBS:
        assert split_launcher(stub) is None  # a plain PE, no zip
    # stub + shebang but no zip; stub + zip but no shebang
    assert split_launcher(T64 + distlib_shebang(ENV_B + "\\Scripts\\python.exe")) is None
    assert split_launcher(T64 + make_zip(MAIN_PY, T1)) is None
    # a zip that is not preceded by an MZ stub
    assert split_launcher(b"#!python.exe\r\n" + make_zip(MAIN_PY, T1)) is None
    # non-bytes-like garbage in a bytes-like container
    assert split_launcher(bytearray(b"MZ" + b"\x00" * 100)) is None


def test_fake_eocd_in_garbage_returns_none():
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 46, 0, 0)
    for prefix in (b"MZ" + b"\x00" * 100, T64, T64 + b"#!x.exe\n"):
        assert split_launcher(prefix + eocd) is None
        assert split_launcher(prefix + b"PK\x01\x02" + b"\xff" * 42 + eocd) is None


def test_mutation_fuzz_never_raises():
    data, _ = make_launcher(T64, ENV_A, T1, comment=b"c")
    tail_start = len(T64) - 300
    rng = random.Random(42)
    spell = windows_spellings(ENV_A)
    for _ in range(2000):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(tail_start, len(b))
            b[i] = rng.getrandbits(8)
        if rng.random() < 0.2:
            b = b[: rng.randrange(len(T64), len(b))]
        b = bytes(b)
        split_launcher(b)  # must not raise
        try:
            launcher_template(b, spell, PH)
        except UnsupportedLauncherError:
            pass
        uv_trampoline_format(b)
        split_uv_trampoline(b)


# --------------------------------------------------------------------------
# zip comment, normalize_zip
# --------------------------------------------------------------------------


def test_zip_comment_is_handled():
    comment = b"built by vocker tests\r\n" * 3
    a, (stub, shebang, zipb) = make_launcher(T64, ENV_A, T1, comment=comment)
    assert split_launcher(a) == (stub, shebang, zipb)
    b, _ = make_launcher(T64, ENV_B, T2, comment=comment)
    ta = launcher_template(a, windows_spellings(ENV_A), PH)
    assert ta == launcher_template(b, windows_spellings(ENV_B), PH)
    out = render_launcher(ta, PH, ENV_C.encode())
    with zipfile.ZipFile(io.BytesIO(out)) as zf:
        assert zf.comment == comment
        assert zf.read("__main__.py") == MAIN_PY
    # trailing bytes after the comment: not a launcher we can reproduce
    assert split_launcher(a + b"x") is None


def test_zip_comment_containing_eocd_signature():
    # zipfile and the C launcher both stumble over this; our parser still
    # finds the EOCD whose comment ends exactly at the end of the data.
    comment = b"fake PK\x05\x06 signature"
    a, parts = make_launcher(T64, ENV_A, T1, comment=comment)
    assert split_launcher(a) == parts
    tmpl = launcher_template(a, windows_spellings(ENV_A), PH)
    assert tmpl.endswith(comment)


def _multi_zip(date_time, create_system, attr, compress):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in (("__main__.py", MAIN_PY), ("pkg/", b""), ("pkg/data.txt", b"x" * 5000)):
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.create_system = create_system
            info.external_attr = attr if not name.endswith("/") else (0o40755 << 16) | 0x10
            info.compress_type = compress if content else zipfile.ZIP_STORED
            zf.writestr(info, content)
    return buf.getvalue()


def test_normalize_zip_timestamps_and_attributes():
    z1 = _multi_zip(T1, 3, 0o644 << 16, zipfile.ZIP_DEFLATED)
    z2 = _multi_zip(T2, 0, 0x20, zipfile.ZIP_DEFLATED)
    assert z1 != z2
    n1, n2 = normalize_zip(z1), normalize_zip(z2)
    assert n1 == n2
    assert normalize_zip(n1) == n1  # idempotent
    with zipfile.ZipFile(io.BytesIO(n1)) as zf, zipfile.ZipFile(io.BytesIO(z1)) as orig:
        assert zf.namelist() == orig.namelist()
        assert zf.testzip() is None
        for a, b in zip(zf.infolist(), orig.infolist()):
            assert a.date_time == (1980, 1, 1, 0, 0, 0)
            assert (a.compress_type, a.CRC, a.compress_size, a.file_size) == (
                b.compress_type, b.CRC, b.compress_size, b.file_size)
            assert zf.read(a.filename) == orig.read(b.filename)
            assert a.create_system == 0 and a.external_attr == (0x10 if a.is_dir() else 0)
        # compressed bytes are reused verbatim
        i = orig.getinfo("pkg/data.txt")
        raw = z1[i.header_offset + 30 + len(i.filename) + len(i.extra):][: i.compress_size]
        assert raw in n1


def test_normalize_zip_drops_timestamp_extras_and_data_descriptors():
    def with_ut(t):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo("__main__.py", date_time=T1)
            info.extra = struct.pack("<HHBL", 0x5455, 5, 1, t)
            zf.writestr(info, MAIN_PY)
        return buf.getvalue()

    assert normalize_zip(with_ut(1)) == normalize_zip(with_ut(2)) == normalize_zip(make_zip(MAIN_PY, T2))

    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.buf = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.buf += b
            return len(b)

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w") as zf:
        with zf.open(zipfile.ZipInfo("__main__.py", date_time=T2), "w") as f:
            f.write(MAIN_PY)
    dd = bytes(sink.buf)
    assert zipfile.ZipFile(io.BytesIO(dd)).infolist()[0].flag_bits & 0x08
    n = normalize_zip(dd)
    info = zipfile.ZipFile(io.BytesIO(n)).infolist()[0]
    assert not info.flag_bits & 0x08
    assert zipfile.ZipFile(io.BytesIO(n)).read("__main__.py") == MAIN_PY


def test_normalize_zip_rejects_non_standalone():
    z = make_zip(MAIN_PY, T1)
    for bad in (b"", b"junk", b"x" + z, z + b"x"):
        with pytest.raises(ZipFormatError):
            normalize_zip(bad)


# --------------------------------------------------------------------------
# windows_spellings
# --------------------------------------------------------------------------


def test_windows_spellings():
    s = windows_spellings(ENV_A)
    assert s[0] == ENV_A.encode()
    assert len(s) == len(set(s))
    assert [len(x) for x in s] == sorted((len(x) for x in s), reverse=True)
    assert set(s) == {
        b"C:\\Users\\Ann Lee\\envs\\web",
        b"c:\\Users\\Ann Lee\\envs\\web",
        b"C:/Users/Ann Lee/envs/web",
        b"c:/Users/Ann Lee/envs/web",
    }
    assert windows_spellings("D:\\short\\") == windows_spellings("D:\\short")
    assert "é".encode() in windows_spellings(r"C:\envs\é")[0]
    assert windows_spellings("C:\\") [0] in (b"C:\\", b"C:/")


# --------------------------------------------------------------------------
# uv trampolines
# --------------------------------------------------------------------------

FAKE_UV_STUB = b"MZ" + bytes(range(256)) * 40  # stands in for uv-trampoline-*.exe


def uv_main(exe: str) -> bytes:
    # uv-install-wheel's get_script_launcher: "#!{exe}" unquoted on Windows
    return (
        "#!" + exe + "\n# -*- coding: utf-8 -*-\nimport sys\nfrom json.tool import main\n"
        'if __name__ == "__main__":\n    sys.exit(main())\n'
    ).encode()


def make_uv(env: str, date_time, magic=b"UVSC") -> bytes:
    exe = env + "\\Scripts\\python.exe"
    path = exe.encode()
    zipb = b"" if magic == b"UVPY" else make_zip(uv_main(exe), date_time)
    return FAKE_UV_STUB + zipb + path + struct.pack("<L", len(path)) + magic


@pytest.mark.parametrize("magic", [b"UVSC", b"UVUV", b"UVPY"])
def test_uv_tail_trampolines(tmp_path, magic):
    a, b = make_uv(ENV_A, T1, magic), make_uv(ENV_B, T2, magic)
    assert is_uv_trampoline(a) and uv_trampoline_format(a) == magic.decode()
    assert split_launcher(a) is None  # not a distlib launcher
    stub, zipb, path, m = split_uv_trampoline(a)
    assert (stub, path, m) == (FAKE_UV_STUB, (ENV_A + "\\Scripts\\python.exe").encode(), magic)
    ta = uv_trampoline_template(a, windows_spellings(ENV_A), PH)
    assert ta == uv_trampoline_template(b, windows_spellings(ENV_B), PH)
    assert ENV_A.encode() not in ta
    out = render_uv_trampoline(ta, PH, ENV_D.encode())
    stub, zipb, path, m = split_uv_trampoline(out)
    exe = ENV_D + "\\Scripts\\python.exe"
    assert path == exe.encode() and stub == FAKE_UV_STUB and m == magic
    if magic != b"UVPY":
        with zipfile.ZipFile(io.BytesIO(out)) as zf:
            assert zf.testzip() is None
            assert zf.read("__main__.py") == uv_main(exe)
        p = tmp_path / "tool.exe"
        p.write_bytes(out)
        r = subprocess.run([sys.executable, str(p)], input="[2]", capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "2" in r.stdout


def test_uv_relocatable_and_foreign_paths_are_not_templates():
    path = b"python.exe"
    zipb = make_zip(uv_main("python.exe"), T1)
    reloc = FAKE_UV_STUB + zipb + path + struct.pack("<L", len(path)) + b"UVSC"
    assert is_uv_trampoline(reloc)
    assert uv_trampoline_template(reloc, windows_spellings(ENV_A), PH) is None
    assert uv_trampoline_template(make_uv(ENV_B, T1), windows_spellings(ENV_A), PH) is None
    # a distlib launcher is not a uv trampoline and vice versa
    data, _ = make_launcher(T64, ENV_A, T1)
    assert not is_uv_trampoline(data)
    assert uv_trampoline_template(data, windows_spellings(ENV_A), PH) is None
    assert launcher_template(make_uv(ENV_A, T1), windows_spellings(ENV_A), PH) is None


def test_uv_pe_resource_trampoline_is_detected_and_refused():
    marker = "UV_TRAMPOLINE_KIND".encode("utf-16-le")
    exe = (ENV_A + "\\Scripts\\python.exe").encode()
    rsrc = FAKE_UV_STUB + marker + b"\x00\x00\x01" + exe + make_zip(uv_main(ENV_A + "\\Scripts\\python.exe"), T1) + b"\x00" * 300
    assert is_uv_trampoline(rsrc) and uv_trampoline_format(rsrc) == "rsrc"
    assert split_uv_trampoline(rsrc) is None
    with pytest.raises(UnsupportedLauncherError, match="PE resources"):
        uv_trampoline_template(rsrc, windows_spellings(ENV_A), PH)
    # relocatable (relative "python.exe") resource trampolines need no template
    reloc = FAKE_UV_STUB + marker + b"\x00\x00\x01python.exe" + b"\x00" * 300
    assert uv_trampoline_template(reloc, windows_spellings(ENV_A), PH) is None


# --------------------------------------------------------------------------
# refusals are vocker errors (exit 5, one line, with the reason), never a crash
# --------------------------------------------------------------------------


def _template_a():
    return launcher_template(make_launcher(T64, ENV_A, T1)[0], windows_spellings(ENV_A), PH)


def _encrypted_launcher():
    z = bytearray(make_zip(MAIN_PY, T1))
    cd = z.find(b"PK\x01\x02")
    z[6] |= 1       # local header flags: encrypted
    z[cd + 8] |= 1  # central directory flags: encrypted
    return T64 + distlib_shebang(ENV_A + "\\Scripts\\python.exe") + bytes(z)


def _bad_deflate_uv():
    exe = ENV_A + "\\Scripts\\python.exe"
    z = bytearray(make_zip(uv_main(exe), T1, compress=zipfile.ZIP_DEFLATED))
    z[30 + len("__main__.py") + 2] ^= 0xFF  # inside the deflate stream
    path = exe.encode()
    return FAKE_UV_STUB + bytes(z) + path + struct.pack("<L", len(path)) + b"UVSC"


SPELL_A = windows_spellings(ENV_A)
REFUSALS = [
    ("overlong-shebang", lambda: render_launcher(_template_a(), PH, ("C:\\" + "x" * 250).encode()),
     InvalidInputError, "only reads"),
    ("quote-in-target", lambda: render_launcher(_template_a(), PH, b'C:\\a"b'),
     InvalidInputError, "#! line"),
    ("newline-in-target", lambda: render_uv_trampoline(make_uv(ENV_A, T1), PH, b"C:\\a\nb"),
     InvalidInputError, "#! line"),
    ("empty-target", lambda: render_launcher(_template_a(), PH, b""), InvalidInputError, "#! line"),
    ("not-a-template", lambda: render_launcher(T64, PH, b"C:\\x"),
     InvalidInputError, "not a launcher template"),
    ("no-placeholder", lambda: render_launcher(make_launcher(T64, ENV_A, T1)[0], PH, b"C:\\x"),
     InvalidInputError, "placeholder"),
    ("not-a-uv-template", lambda: render_uv_trampoline(b"junk", PH, b"C:\\x"),
     InvalidInputError, "not a uv trampoline"),
    ("prepended-zip", lambda: normalize_zip(b"x" + make_zip(MAIN_PY, T1)), ZipFormatError, "prepended"),
    ("encrypted-zip", lambda: launcher_template(_encrypted_launcher(), SPELL_A, PH),
     UnsupportedLauncherError, "encrypted"),
    ("env-outside-shebang", lambda: launcher_template(
        make_launcher(T64, ENV_A, T1, script=b"# " + ENV_A.encode() + b"\n" + MAIN_PY)[0], SPELL_A, PH),
     UnsupportedLauncherError, "outside its shebang"),
    ("bad-deflate-uv", lambda: uv_trampoline_template(_bad_deflate_uv(), SPELL_A, PH),
     UnsupportedLauncherError, "bad deflate data"),
]


@pytest.mark.parametrize("make, cls, match", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_are_invalid_input_errors(make, cls, match):
    with pytest.raises(cls, match=match) as info:
        make()
    assert isinstance(info.value, InvalidInputError)
    assert info.value.exit_code == EXIT_INVALID
    assert "\n" not in str(info.value)
    if cls is not InvalidInputError:
        assert info.value.reason and info.value.reason in info.value.message


def test_bad_deflate_uv_zip_outside_the_env_is_not_a_template():
    # the same broken trampoline, for another environment: nothing to template
    assert uv_trampoline_template(_bad_deflate_uv(), windows_spellings(ENV_B), PH) is None
