"""Interpreter discovery: the py launcher's list, the PEP 514 registry, uv's
Python folders, PATH; their order, de-duplication and bounds; create finding
an interpreter only one source knows."""

import os
import sys
import time

import pytest

import vocker
from conftest import clean_env, make_venv, require_python, run, vocker_cmd
from vocker import PythonSources

#: the fake ``py`` is a /bin/sh script and uv layouts are symlinks (which Wine
#: only pretends to make): these run on POSIX; the Windows lane runs the rest
posix_only = pytest.mark.skipif(os.name == "nt", reason="fake py is a /bin/sh script; "
                                "uv layouts use symlinks")
windows_only = pytest.mark.skipif(os.name != "nt", reason="runs a .bat launcher and the "
                                  "real registry reader: Windows only")

# ``py -0p`` as the launchers print it (new launcher2: ``-V:TAG [*] PATH``;
# old launcher: ``-X.Y[-BITS] PATH [*]``), with lines that name no interpreter.
PY_LISTS = [
    ("Installed Pythons found by py Launcher for Windows\n"
     " -V:3.13 *        C:\\Users\\me\\AppData\\Local\\Programs\\Python\\Python313\\python.exe\n"
     " -V:3.11-32       C:\\Python311-32\\python.exe\n",
     [("3.13", r"C:\Users\me\AppData\Local\Programs\Python\Python313\python.exe"),
      ("3.11-32", r"C:\Python311-32\python.exe")]),
    (" -V:Astral/CPython3.12.4 C:\\Users\\me\\AppData\\Roaming\\uv\\data\\python\\c p\\python.exe\r\n",
     [("Astral/CPython3.12.4", r"C:\Users\me\AppData\Roaming\uv\data\python\c p\python.exe")]),
    ("Installed Pythons found by C:\\WINDOWS\\py.exe Launcher for Windows\n"
     " -3.8-64        C:\\Users\\vma\\AppData\\Local\\Programs\\Python\\Python38\\python.exe *\n"
     " -3.7-32        C:\\Program Files (x86)\\Python37-32\\python.exe\n",
     [("3.8-64", r"C:\Users\vma\AppData\Local\Programs\Python\Python38\python.exe"),
      ("3.7-32", r"C:\Program Files (x86)\Python37-32\python.exe")]),
    (" -3.11          \\\\server\\share\\Python311\\python.exe\n",
     [("3.11", r"\\server\share\Python311\python.exe")]),
    # no paths (``py -0``), a venv line, junk
    (" -3.10-64 *\n -3.7-64\n", []),
    ("  (venv)         .env\\Scripts\\python.exe *\n", []),
    ("Usage: py [launcher-args] [python-args]\n\x00\xff garbage -V:\n", []),
    ("", []),
]


@pytest.mark.parametrize("text, expected", PY_LISTS)
def test_py_list_formats(text, expected):
    assert vocker.parse_py_list(text) == expected


def fake_py(tmp_path, body, name="py"):
    """An executable ``py`` that runs the shell ``body``."""
    exe = tmp_path / name
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return [str(exe)]


def listing(*pairs):
    """``py -0p`` output naming ``pairs`` of (tag, path), new and old forms mixed."""
    lines = ["Installed Pythons found by py Launcher for Windows"]
    for i, (tag, path) in enumerate(pairs):
        lines.append(f" -V:{tag} *   {path}" if i % 2 == 0 else f" -{tag}-64     {path} *")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pys():
    """Real interpreters of this machine: {minor: path}."""
    return {m: require_python(m) for m in ("3.9", "3.11", "3.12")}


@posix_only
def test_py_launcher_lists_matching_version_first(tmp_path, pys):
    out = listing(("3.12", pys["3.12"]), ("3.11", pys["3.11"]), ("3.9", pys["3.9"]))
    py = fake_py(tmp_path, f"[ \"$1\" = -0p ] || exit 3\ncat <<'EOF'\n{out}EOF")
    got = vocker.launcher_pythons("3.11", PythonSources(py=py, env={}))
    assert got == [pys["3.11"], pys["3.12"], pys["3.9"]]


@posix_only
@pytest.mark.parametrize("body", [
    "exit 1",                                  # fails
    "printf '\\377\\376 not a list\\n'",       # junk
    "yes ' -V:3.11 /usr/bin/python3.11'",      # floods: over the output bound
    "echo ' -V:3.11 /usr/bin/python3.11'; exit 2",  # prints, then fails
])
def test_a_bad_py_is_skipped_quietly(tmp_path, body):
    py = fake_py(tmp_path, body)
    assert vocker.launcher_pythons("3.11", PythonSources(py=py, env={})) == []


def test_a_missing_py_is_skipped_quietly(tmp_path):
    py = [str(tmp_path / "no-such-py")]
    assert vocker.launcher_pythons("3.11", PythonSources(py=py, env={})) == []


@posix_only
@pytest.mark.parametrize("body", ["exec sleep 30", "sleep 30; echo late"])
def test_a_py_that_hangs_is_abandoned_in_time(tmp_path, body):
    py = fake_py(tmp_path, body)
    start = time.monotonic()
    assert vocker.bounded_output([*py, "-0p"], timeout=1) == ""
    assert time.monotonic() - start < 5


@posix_only
def test_py_output_is_bounded(tmp_path, pys):
    many = listing(*[("3.11", pys["3.11"])] * 1000)
    py = fake_py(tmp_path, f"cat <<'EOF'\n{many}EOF")
    got = vocker.launcher_pythons("3.11", PythonSources(py=py, env={}))
    assert 0 < len(got) <= vocker.DISCOVERY_MAX


def registry_tree(pys, tmp_path):
    """A PEP 514 tree as :func:`vocker.read_pep514` returns it."""
    return {
        "HKCU": {"PythonCore": {"3.12": {"InstallPath": os.path.dirname(pys["3.12"]),
                                         "ExecutablePath": pys["3.12"]}},
                 "PyLauncher": {}},
        "HKLM": {"PythonCore": {"3.11": {"InstallPath": str(tmp_path / "gone")}},
                 "Astral": {"CPython3.11.7": {"ExecutablePath": pys["3.11"]}}},
        "HKLM-32": {"PythonCore": {"3.9-32": {"ExecutablePath": pys["3.9"]},
                                   "3.8-32": {}}},
    }


def test_registry_names_executables_matching_version_first(tmp_path, pys):
    tree = registry_tree(pys, tmp_path)
    got = vocker.registry_pythons("3.11", PythonSources(registry=lambda: tree, env={}))
    assert got[0] == str(tmp_path / "gone" / "python.exe").replace("/", "\\")
    assert got[1:] == [pys["3.11"], pys["3.12"], pys["3.9"]]


@pytest.mark.parametrize("tree", [{"HKCU": None}, {"HKCU": {"PythonCore": ["3.11"]}},
                                  {"HKCU": {"PythonCore": {"3.11": {"ExecutablePath": 7}}}}])
def test_a_bad_registry_is_skipped_quietly(tree):
    assert vocker.registry_pythons("3.11", PythonSources(registry=lambda: tree, env={})) == []


def test_an_unreadable_registry_is_skipped_quietly():
    def reader():
        raise PermissionError("denied")
    assert vocker.registry_pythons("3.11", PythonSources(registry=reader, env={})) == []
    if not vocker.WINDOWS:     # the real reader, where there is no winreg
        real = PythonSources(registry=vocker.read_pep514, env={})
        assert vocker.registry_pythons("3.11", real) == []


def uv_dir(root, pys):
    """uv's layout, ``<impl>-X.Y.Z-<platform>/bin/python3``, of real interpreters."""
    for minor, name in (("3.11", "cpython-3.11.7-linux-x86_64-gnu"),
                        ("3.12", "cpython-3.12.1-linux-x86_64-gnu"),
                        ("3.9", "cpython-3.9.18-linux-x86_64-gnu")):
        (root / name / "bin").mkdir(parents=True)
        (root / name / "bin" / "python3").symlink_to(pys[minor])
    (root / ".lock").write_text("")
    (root / "cpython-3.11.1-linux-x86_64-gnu").mkdir()      # half-installed: no python
    return root


@posix_only
def test_uv_install_dir_override_and_default(tmp_path, pys):
    root = uv_dir(tmp_path / "uvpy", pys)
    want = [str(root / "cpython-3.11.7-linux-x86_64-gnu" / "bin" / "python3")]
    found = vocker.python_candidates("3.11.7", search=True, sources=PythonSources(
        env={"UV_PYTHON_INSTALL_DIR": str(root), "PATH": "", "PYENV_ROOT": str(tmp_path)}))
    assert found[:1] == want
    (tmp_path / "data" / "uv").mkdir(parents=True)
    (tmp_path / "data" / "uv" / "python").symlink_to(root)
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "PATH": ""}
    assert vocker.uv_python_dirs(env) == [str(tmp_path / "data" / "uv" / "python")]
    assert vocker.uv_python_dirs({"HOME": "/h"}) == ["/h/.local/share/uv/python"]
    assert [p for p in vocker.uv_pythons("3.11", PythonSources(env=env))
            if os.path.exists(p)] == [want[0].replace(str(root), env["XDG_DATA_HOME"] + "/uv/python")]


def test_uv_scan_is_bounded(tmp_path):
    for i in range(300):
        (tmp_path / f"cpython-3.11.{i}-linux-x86_64-gnu").mkdir()
    got = vocker.uv_pythons("3.11", PythonSources(env={"UV_PYTHON_INSTALL_DIR": str(tmp_path)}))
    assert len(got) <= 2 * vocker.DISCOVERY_MAX


@posix_only
def test_sources_in_order_each_path_once(tmp_path, pys):
    root = uv_dir(tmp_path / "uvpy", pys)
    uv311 = str(root / "cpython-3.11.7-linux-x86_64-gnu" / "bin" / "python3")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3.11").symlink_to(pys["3.11"])
    py = fake_py(tmp_path, "cat <<'EOF'\n" + listing(("3.11", pys["3.11"]), ("3.12", pys["3.12"]))
                 + "EOF")
    tree = {"HKCU": {"PythonCore": {"3.11": {"ExecutablePath": pys["3.11"]},
                                    "3.9": {"ExecutablePath": pys["3.9"]}}}}
    env = {"UV_PYTHON_INSTALL_DIR": str(root), "PATH": str(bindir),
           "PYENV_ROOT": str(tmp_path / "nopyenv")}
    sources = PythonSources(py=py, registry=lambda: tree, env=env)
    hint = pys["3.12"]
    found, looked = vocker.discover_pythons("3.11.7", [hint, None], sources=sources)
    assert found[:5] == [hint, pys["3.11"], pys["3.9"], uv311, str(bindir / "python3.11")]
    assert len(found) == len(set(found))
    assert [w.split(" ")[0] for w in looked] == \
        ["recorded", "py", "registry", "uv", "PATH", "known"]
    assert looked[:3] == ["recorded base (1)", "py -0p (1)", "registry (1)"]


@posix_only
def test_find_python_through_one_source_only(tmp_path, pys):
    root = uv_dir(tmp_path / "uvpy", pys)
    info = vocker.query_python(pys["3.9"])
    need = vocker.python_facts(info)
    env = {"PATH": "", "PYENV_ROOT": str(tmp_path / "nopyenv"), "HOME": str(tmp_path)}
    with pytest.raises(vocker.PythonError) as err:
        vocker.find_python(need, sources=PythonSources(env=env))
    assert "looked in: recorded base (0), uv " in err.value.message
    assert "--python EXE" in err.value.hint and "Python 3.9" in err.value.hint
    exe, found = vocker.find_python(need, sources=PythonSources(
        env=dict(env, UV_PYTHON_INSTALL_DIR=str(root))))
    assert os.path.realpath(exe) == os.path.realpath(pys["3.9"])


def vocker_run(*args, home, extra):
    return run([*vocker_cmd(), "--home", home, *args], check=False,
               env=clean_env(extra), timeout=300)


@posix_only
def test_create_finds_a_python_only_uv_knows(tmp_path, pys):
    src = make_venv(pys["3.9"], tmp_path / "src", ())
    first, home = tmp_path / "first", tmp_path / "home"
    plain = {"PATH": "/usr/bin:/bin", "PYENV_ROOT": str(tmp_path / "nopyenv"),
             "XDG_DATA_HOME": str(tmp_path / "nodata")}
    assert vocker_run("commit", src, "-t", "py39", home=first, extra=plain).returncode == 0
    # an archive carries no recorded base interpreter: only discovery can find one
    p = vocker_run("save", "py39", "-o", tmp_path / "a.tar", home=first, extra=plain)
    assert p.returncode == 0, p.stderr
    assert vocker_run("load", tmp_path / "a.tar", home=home, extra=plain).returncode == 0
    p = vocker_run("create", "py39", tmp_path / "dst", home=home, extra=plain)
    assert p.returncode == vocker.EXIT_PYTHON, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert "looked in: recorded base (0), uv " in p.stderr and "--python EXE" in p.stderr
    assert not (tmp_path / "dst").exists()
    root = uv_dir(tmp_path / "uvpy", pys)
    p = vocker_run("create", "py39", tmp_path / "dst", home=home,
                   extra=dict(plain, UV_PYTHON_INSTALL_DIR=str(root)))
    assert p.returncode == 0, p.stderr
    out = run([tmp_path / "dst" / "bin" / "python", "-c", "import sys; print(sys.version)"])
    assert out.stdout.startswith("3.9.")


def test_py_launcher_is_found_where_its_installers_put_it(tmp_path):
    launcher = tmp_path / "local" / "Programs" / "Python" / "Launcher"
    launcher.mkdir(parents=True)
    env = {"PATH": "", "LOCALAPPDATA": str(tmp_path / "local"), "SystemRoot": str(tmp_path)}
    assert vocker._py_launcher(env) is None
    (tmp_path / "py.exe").write_bytes(b"MZ")
    assert vocker._py_launcher(env) == [str(tmp_path / "py.exe")]
    (launcher / "py.exe").write_bytes(b"MZ")
    assert vocker._py_launcher(env) == [str(launcher / "py.exe")]
    if not vocker.WINDOWS:     # no launcher, no registry looked for off Windows
        s = PythonSources(env=env)
        assert s.py is None and s.registry is None


@windows_only
def test_a_py_bat_on_path_is_listed_on_windows(tmp_path):
    base = getattr(sys, "_base_executable", sys.executable)
    mm = "%d.%d" % sys.version_info[:2]
    (tmp_path / "py.bat").write_bytes(
        b"@echo off\r\necho Installed Pythons found by py Launcher for Windows\r\n"
        b"echo  -V:3.99 *        C:\\nowhere\\python.exe\r\n"
        + f"echo  -{mm}-64        {base}\r\n".encode("mbcs"))
    env = dict(os.environ, PATH=str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    sources = PythonSources(env=env)
    assert [os.path.normcase(p) for p in sources.py] == [os.path.normcase(tmp_path / "py.bat")]
    assert vocker.launcher_pythons(mm, sources) == [base, r"C:\nowhere\python.exe"]


@windows_only
def test_the_real_registry_is_read_on_windows(tmp_path):
    import winreg  # exists only on Windows
    company, hkcu = f"VockerTest{os.getpid()}", winreg.HKEY_CURRENT_USER
    with winreg.CreateKey(hkcu, rf"Software\Python\{company}\9.9\InstallPath") as key:
        winreg.SetValueEx(key, "", 0, winreg.REG_SZ, str(tmp_path))
        winreg.SetValueEx(key, "ExecutablePath", 0, winreg.REG_SZ, str(tmp_path / "p.exe"))
    try:
        assert vocker.read_pep514()["HKCU"][company] == {"9.9": {
            "InstallPath": str(tmp_path), "ExecutablePath": str(tmp_path / "p.exe")}}
        assert vocker.registry_pythons("9.9", PythonSources(env={}))[0] == str(tmp_path / "p.exe")
    finally:
        for sub in (r"\9.9\InstallPath", r"\9.9", ""):
            winreg.DeleteKey(hkcu, rf"Software\Python\{company}{sub}")
