"""Output never fails on encoding: --json is UTF-8 bytes whatever the locale,
text goes through a writer that escapes what the stream's encoding lacks.

Runs the real entry point in a subprocess whose stdout and stderr are ASCII
(PYTHONIOENCODING=ascii, PYTHONUTF8=0), as a Windows console's
code page lacks most of Unicode, with a container path outside it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import posix_only

VOCKER = Path(__file__).resolve().parent.parent / "vocker.py"
#: file names stay UTF-8 (as on Windows, whose file names are Unicode); stdio is ASCII
NARROW = {"PYTHONIOENCODING": "ascii", "LC_ALL": "C.UTF-8", "PYTHONUTF8": "0"}


def vocker(home, *argv):
    env = {k: v for k, v in os.environ.items() if k not in ("LC_CTYPE", "LANGUAGE")}
    env.update(NARROW, VOCKER_HOME=str(home))
    return subprocess.run([sys.executable, str(VOCKER), *map(str, argv)], env=env,
                          capture_output=True, timeout=120)


@pytest.fixture
def made(tmp_path):
    """A plain image, and a container at a path ASCII cannot spell."""
    src = tmp_path / "src 日本"
    src.mkdir()
    (src / "data é.txt").write_text("hello\n")
    home = tmp_path / "store"
    r = vocker(home, "commit", "--kind", "plain", "-t", "enc:1", src, "--json")
    assert r.returncode == 0, r.stderr
    target = tmp_path / "envs" / "日本 env"
    r = vocker(home, "create", "enc:1", target, "--json")
    return home, target, r


def test_create_json_is_utf8_on_an_ascii_stdout(made):
    home, target, r = made
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.decode("utf-8"))["path"] == str(target)


@pytest.mark.parametrize("argv, names_it", [
    (["ps", "--json"], lambda data, target: data[0]["path"] == str(target)),
    (["images", "--json"], lambda data, target: data[0]["tags"] == ["enc:1"]),
    (["inspect", "enc:1"], lambda data, target: data["containers"] == [str(target)]),
], ids=["ps", "images", "inspect"])
def test_json_commands_keep_working(made, argv, names_it):
    home, target, _ = made
    r = vocker(home, *argv)
    assert r.returncode == 0, r.stderr
    assert names_it(json.loads(r.stdout.decode("utf-8")), target), r.stdout


@pytest.mark.parametrize("argv", [["ps"], ["images"], ["create", "enc:1", "{target}"]])
def test_text_output_escapes_what_the_stream_cannot_encode(made, argv):
    home, target, _ = made
    r = vocker(home, *[a.format(target=target) for a in argv])
    out = (r.stdout + r.stderr).decode("ascii")  # really ASCII: nothing raised, nothing lost
    assert b"UnicodeEncodeError" not in r.stderr
    if argv[0] == "create":  # the error message names the path, escaped
        assert r.returncode != 1 and "\\u65e5\\u672c env" in out
    else:
        assert r.returncode == 0
    if argv == ["ps"]:
        assert "\\u65e5\\u672c env" in out


def test_json_error_is_utf8_too(made):
    home, target, _ = made
    r = vocker(home, "create", "enc:1", target, "--json")
    assert r.returncode not in (0, 1)
    assert json.loads(r.stderr.decode("utf-8"))["error"]["message"].count("日本") >= 1


@posix_only("an ASCII file-system encoding (the C locale without UTF-8 mode)")
def test_a_path_this_locale_cannot_decode_is_a_clear_error(tmp_path):
    """LC_ALL=C with PYTHONUTF8=0: argv bytes outside ASCII become surrogates,
    which neither SQLite nor a terminal takes. One line, exit 6, nothing made."""
    src = tmp_path / "src é"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHON"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    for extra in ([], ["--json"]):
        r = subprocess.run([sys.executable, str(VOCKER), "--home", str(tmp_path / "h"), "commit",
                            "--kind", "plain", os.fsencode(src), *extra], env=env,
                           capture_output=True, timeout=120)
        assert r.returncode == 6, r.stderr
        assert r.stderr.count(b"\n") == 1 and b"UTF-8 locale" in r.stderr, r.stderr
    assert not (tmp_path / "h").exists()   # refused before the store is opened


@posix_only("file names are bytes, and the C locale without UTF-8 mode")
@pytest.mark.parametrize("name, locale, code, says", [
    # a UTF-8 name this locale cannot read: the locale's problem, as for argv
    ("caf\u00e9.txt".encode(), {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
     6, b"UTF-8 locale"),
    # bytes that are not UTF-8 (Latin-1): the file's problem, in any locale
    (b"caf\xe9.txt", {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
     5, b"rename the file"),
    (b"caf\xe9.txt", {"LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"}, 5, b"rename the file"),
])
def test_a_file_name_commit_cannot_read_says_whose_problem_it_is(tmp_path, name, locale,
                                                                 code, says):
    """A name found inside the environment: one line that says what to fix."""
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), name), "wb") as f:
        f.write(b"a\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHON"))}
    env.update(locale)
    r = subprocess.run([sys.executable, str(VOCKER), "--home", str(tmp_path / "h"), "commit",
                        "--kind", "plain", str(src)], env=env, capture_output=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert r.stderr.count(b"\n") == 1 and says in r.stderr, r.stderr
