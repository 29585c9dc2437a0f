"""Unit tests of normalization: what makes an image reproducible and relocatable.

Covers Normalizer (env path and prompt placeholders), the script header
forms pip/distlib and uv write, render_template (compared byte for byte with
pip's vendored distlib), normalize_record, check_link_target,
parse_pyvenv_cfg and detect_kind.

Pure and fast: no venvs, no subprocesses.
"""

from __future__ import annotations

import os
import types

import pytest

import vocker
from vocker import (
    PH_ENV,
    PH_PROMPT,
    InvalidInputError,
    Normalizer,
    canonical_header,
    check_link_target,
    detect_kind,
    normalize_record,
    parse_pyvenv_cfg,
    render_template,
)

# --------------------------------------------------------------- constants

#: the body distlib writes below the header of a console script
BODY = (
    b"# -*- coding: utf-8 -*-\n"
    b"import re\n"
    b"import sys\n"
    b"from vockdemo import main\n"
    b"if __name__ == '__main__':\n"
    b"    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
    b"    sys.exit(main())\n"
)

#: every header form normalizes to this, for the exe at <env>/bin/python
CANONICAL_SCRIPT = b"#!@@VOCKER:ENV@@/bin/python\n" + BODY

SHORT_ENV = "/tmp/web"
SPACE_ENV = "/tmp/x y/web"
#: "#!" + LONG_ENV + "/bin/python\n" is 128 bytes: one past Linux's limit
LONG_ENV = "/tmp/" + "l" * 109
assert len(b"#!" + LONG_ENV.encode() + b"/bin/python\n") == 128

#: (env path, bytes of a script as an installer wrote it there)
HEADER_FORMS = [
    pytest.param(SHORT_ENV, b"#!/tmp/web/bin/python\n" + BODY, id="simple"),
    pytest.param(SPACE_ENV, b"#!/tmp/x y/web/bin/python\n" + BODY, id="simple-with-space"),
    pytest.param(SPACE_ENV,
                 b"#!/bin/sh\n"
                 b"'''exec' \"/tmp/x y/web/bin/python\" \"$0\" \"$@\"\n"
                 b"' '''\n" + BODY, id="pip-exec-double-quoted"),
    pytest.param(LONG_ENV,
                 b"#!/bin/sh\n"
                 b"'''exec' " + LONG_ENV.encode() + b"/bin/python \"$0\" \"$@\"\n"
                 b"' '''\n" + BODY, id="pip-exec-unquoted-long"),
    pytest.param(SHORT_ENV,
                 b"#!/bin/sh\n"
                 b"'''exec' '/tmp/web/bin/python' \"$0\" \"$@\"\n"
                 b"' '''\n" + BODY, id="uv-exec-single-quoted"),
    pytest.param(SPACE_ENV,
                 b"#!/bin/sh\n"
                 b"'''exec' '/tmp/x y/web/bin/python' \"$0\" \"$@\"\n"
                 b"' '''\n" + BODY, id="uv-exec-single-quoted-space"),
]


#: the same for a Windows target: distlib quotes a path with a space, pip's
#: fix_script (a wheel's .data/scripts) writes it bare with os.linesep
WIN_ENV = "C:\\x y\\web"
WIN_CANONICAL = b"#!@@VOCKER:ENV@@\\Scripts\\python.exe\n" + BODY
WIN_HEADER_FORMS = [
    pytest.param(b'#!"C:\\x y\\web\\Scripts\\python.exe"\n' + BODY, WIN_CANONICAL,
                 id="distlib-quoted"),
    pytest.param(b"#!C:\\x y\\web\\Scripts\\python.exe\n" + BODY, WIN_CANONICAL,
                 id="bare"),
    pytest.param(b'#!"C:\\x y\\web\\Scripts\\python.exe"\r\n' + BODY,
                 b"#!@@VOCKER:ENV@@\\Scripts\\python.exe\r\n" + BODY, id="quoted-crlf"),
    pytest.param(b'#!"C:\\other\\python.exe"\n' + BODY, None, id="foreign-interpreter"),
]


def _env(path):
    return {PH_ENV: os.fsencode(path)}


# ------------------------------------------------------- script header forms


@pytest.mark.parametrize("env, script", HEADER_FORMS)
def test_every_header_form_normalizes_to_one_template(env, script):
    out = Normalizer([env], prompt="web", win=False).normalize(script, "vockdemo")
    assert out == CANONICAL_SCRIPT


@pytest.mark.parametrize("env, script", HEADER_FORMS)
def test_canonical_header_is_idempotent(env, script):
    tpl = Normalizer([env], win=False).normalize(script, "vockdemo")
    assert canonical_header(tpl, win=False) == tpl


@pytest.mark.parametrize("script, expected", WIN_HEADER_FORMS)
def test_windows_header_forms_normalize_to_one_template(script, expected):
    """For a Windows target only: on POSIX a quoted "#!" line is not distlib's."""
    assert Normalizer([WIN_ENV], win=True).normalize(script, "tool.py") == expected


def test_a_quoted_header_is_folded_only_for_a_windows_target():
    script = b'#!"/tmp/x y/web/bin/python"\n' + BODY
    assert Normalizer([SPACE_ENV], win=True).normalize(script, "t") == CANONICAL_SCRIPT
    kept = Normalizer([SPACE_ENV], win=False).normalize(script, "t")
    assert kept == b'#!"@@VOCKER:ENV@@/bin/python"\n' + BODY


def test_exec_form_for_a_foreign_interpreter_is_left_alone():
    script = (b"#!/bin/sh\n'''exec' \"/opt/other python/bin/python\" \"$0\" \"$@\"\n' '''\n"
              b"print('/tmp/web')\n")
    out = Normalizer([SHORT_ENV]).normalize(script, "tool")
    assert out == script.replace(b"'/tmp/web'", b"'@@VOCKER:ENV@@'")


def test_header_with_interpreter_arguments_keeps_them():
    script = (b"#!/bin/sh\n'''exec' \"/tmp/x y/web/bin/python\" -E \"$0\" \"$@\"\n' '''\n"
              + BODY)
    out = Normalizer([SPACE_ENV], win=False).normalize(script, "vockdemo")
    assert out == b"#!@@VOCKER:ENV@@/bin/python -E\n" + BODY


# ----------------------------------------------------------- render_template


def test_render_short_path_gives_the_simple_form():
    out = render_template(CANONICAL_SCRIPT, _env(SHORT_ENV))
    assert out == b"#!/tmp/web/bin/python\n" + BODY


@pytest.mark.skipif(vocker.WINDOWS, reason="Windows scripts always use the simple form")
def test_render_path_with_space_gives_the_double_quoted_exec_form():
    out = render_template(CANONICAL_SCRIPT, _env(SPACE_ENV))
    assert out == (b"#!/bin/sh\n"
                   b"'''exec' \"/tmp/x y/web/bin/python\" \"$0\" \"$@\"\n"
                   b"' '''\n" + BODY)


@pytest.mark.skipif(vocker.WINDOWS or vocker.SHEBANG_MAX != 127,
                    reason="the 127-byte shebang limit is Linux's")
def test_render_long_path_gives_the_unquoted_exec_form():
    out = render_template(CANONICAL_SCRIPT, _env(LONG_ENV))
    assert out == (b"#!/bin/sh\n"
                   b"'''exec' " + LONG_ENV.encode() + b"/bin/python \"$0\" \"$@\"\n"
                   b"' '''\n" + BODY)


def _distlib_header(env, post_interp=b"", win=False, monkeypatch=None):
    """The header pip writes for a venv at ``env`` (distlib's ScriptMaker), as
    it writes it on Windows (*win*) or POSIX: distlib asks only ``os.name``."""
    scripts = pytest.importorskip("pip._vendor.distlib.scripts")
    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake_os.name = "nt" if win else "posix"
    monkeypatch.setattr(scripts, "os", fake_os)
    maker = scripts.ScriptMaker(None, None)
    exe = scripts.enquote_executable(env + "/bin/python").encode("utf-8")
    shebang = maker._build_shebang(exe, post_interp)
    monkeypatch.undo()
    # _write_script appends os.linesep when the shebang does not end with it
    return shebang if shebang.endswith(b"\n") else shebang + b"\n"


#: bytes of "#!<env>/bin/python\n" is len(env) + 14; 127 is the last simple one
RENDER_PATHS = [
    pytest.param(SHORT_ENV, id="short"),
    pytest.param(SPACE_ENV, id="space"),
    pytest.param("/" + "a" * 112, id="line-127-simple"),
    pytest.param("/" + "a" * 113, id="line-128-exec"),
    pytest.param(LONG_ENV, id="long"),
    pytest.param("/tmp/" + "b" * 200 + "/x y", id="long-and-space"),
    pytest.param("/tmp/Zo\u00eb/web", id="non-ascii-short"),
    # 60 characters but 115 bytes: the limit counts bytes
    pytest.param("/tmp/" + "\u00e9" * 55, id="non-ascii-bytes-over-limit"),
    pytest.param("/tmp/web's", id="single-quote"),
    pytest.param("/tmp/a$b", id="dollar"),
]


TARGETS = pytest.mark.parametrize("win", [False, True], ids=["posix", "windows"])


@TARGETS
@pytest.mark.parametrize("env", RENDER_PATHS)
def test_render_writes_what_pips_distlib_writes(env, win, monkeypatch):
    out = render_template(CANONICAL_SCRIPT, _env(env), vocker.Target(win=win))
    assert out == _distlib_header(env, win=win, monkeypatch=monkeypatch) + BODY


@pytest.mark.parametrize("env", [
    pytest.param("/" + "a" * 109, id="line-127-simple"),
    pytest.param("/" + "a" * 110, id="line-128-exec"),
    pytest.param(SPACE_ENV, id="space"),
])
@TARGETS
def test_render_with_interpreter_arguments_matches_distlib(env, win, monkeypatch):
    tpl = b"#!@@VOCKER:ENV@@/bin/python -E\n" + BODY
    assert render_template(tpl, _env(env), vocker.Target(win=win)) == \
        _distlib_header(env, b" -E", win, monkeypatch) + BODY


@TARGETS
@pytest.mark.parametrize("env", RENDER_PATHS)
def test_pip_script_round_trips_through_the_template(env, win, monkeypatch):
    """What pip wrote at a path normalizes to the template, and rendering the
    template at that same path gives back pip's exact bytes."""
    written = _distlib_header(env, win=win, monkeypatch=monkeypatch) + BODY
    tpl = Normalizer([env], win=win).normalize(written, "vockdemo")
    assert tpl == CANONICAL_SCRIPT
    assert render_template(tpl, _env(env), vocker.Target(win=win)) == written


def test_render_substitutes_every_occurrence_and_the_prompt():
    tpl = b'VIRTUAL_ENV="@@VOCKER:ENV@@"\nPS1="(@@VOCKER:PROMPT@@) $PS1"\nx=@@VOCKER:ENV@@/lib\n'
    out = render_template(tpl, {PH_ENV: b"/srv/app", PH_PROMPT: b"app"})
    assert out == b'VIRTUAL_ENV="/srv/app"\nPS1="(app) $PS1"\nx=/srv/app/lib\n'


def test_render_without_a_needed_value_raises():
    with pytest.raises(InvalidInputError):
        render_template(b"home = @@VOCKER:PYHOME@@\n", _env(SHORT_ENV))


# ------------------------------------------------- env path match boundaries


@pytest.mark.parametrize("text", [
    pytest.param(b"/tmp/webapp/bin", id="letters"),
    pytest.param(b"/tmp/web2", id="digit"),
    pytest.param(b"/tmp/web-old", id="dash"),
    pytest.param(b"/tmp/web_2", id="underscore"),
    pytest.param(b"/tmp/web.bak", id="dot"),
    pytest.param(b"/tmp/WEB", id="other-case"),
    pytest.param(b"/tmp/we", id="prefix-only"),
    # a longer path that merely ends in the env path is another directory
    pytest.param(b"/mnt/x/tmp/web/lib", id="inside-other-path"),
    # a path that merely continues with a non-ASCII letter, '~' or '+' is
    # another directory, and must not become @@VOCKER:ENV@@<rest>
    pytest.param("/tmp/web\u00e9/lib".encode(), id="non-ascii-letter"),
    pytest.param(b"/tmp/web~1/lib", id="tilde"),
    pytest.param(b"/tmp/web+old/lib", id="plus"),
])
def test_env_path_followed_by_a_path_character_is_not_a_match(text):
    data = b"path = " + text + b"\n"
    assert Normalizer([SHORT_ENV], prompt="web").normalize(data, "f.pth") is None


@pytest.mark.parametrize("after, expected", [
    pytest.param(b"/lib", b"@@VOCKER:ENV@@/lib", id="slash"),
    pytest.param(b'"', b'@@VOCKER:ENV@@"', id="double-quote"),
    pytest.param(b"'", b"@@VOCKER:ENV@@'", id="single-quote"),
    pytest.param(b" ", b"@@VOCKER:ENV@@ ", id="space"),
    pytest.param(b"\n", b"@@VOCKER:ENV@@\n", id="newline"),
    pytest.param(b"\r\n", b"@@VOCKER:ENV@@\r\n", id="crlf"),
    pytest.param(b":", b"@@VOCKER:ENV@@:", id="colon-PATH-separator"),
    pytest.param(b"", b"@@VOCKER:ENV@@", id="end-of-data"),
])
def test_env_path_followed_by_a_terminator_is_a_match(after, expected):
    data = b"x=/tmp/web" + after
    assert Normalizer([SHORT_ENV]).normalize(data, "f.pth") == b"x=" + expected


def test_all_occurrences_are_templated_and_neighbours_kept():
    data = b"/tmp/web/a /tmp/webapp/b '/tmp/web' /tmp/web"
    out = Normalizer([SHORT_ENV]).normalize(data, "f")
    assert out == b"@@VOCKER:ENV@@/a /tmp/webapp/b '@@VOCKER:ENV@@' @@VOCKER:ENV@@"


def test_longest_spelling_wins():
    # macOS: /tmp is a symlink to /private/tmp, and files may hold either spelling
    norm = Normalizer(["/tmp/web", "/private/tmp/web"])
    data = b"a=/private/tmp/web/lib\nb=/tmp/web/lib\n"
    assert norm.normalize(data, "f.pth") == b"a=@@VOCKER:ENV@@/lib\nb=@@VOCKER:ENV@@/lib\n"


def test_file_without_env_path_is_not_touched():
    assert Normalizer([SHORT_ENV], prompt="web").normalize(b"print('hi')\n", "m.py") is None


# ------------------------------------------------------------------ prompts

ACTIVATE_BODY = (
    b'VIRTUAL_ENV="/tmp/x y/web"\n'
    b'PS1="(web) ${PS1:-}"\n'
    b'VIRTUAL_ENV_PROMPT="web"\n'
    b"echo web 'web' (web)! webapp \"webapp\" (webs) \"web \" \"web2\"\n"
)
ACTIVATE_TEMPLATE = (
    b'VIRTUAL_ENV="@@VOCKER:ENV@@"\n'
    b'PS1="(@@VOCKER:PROMPT@@) ${PS1:-}"\n'
    b'VIRTUAL_ENV_PROMPT="@@VOCKER:PROMPT@@"\n'
    b"echo web 'web' (web)! webapp \"webapp\" (webs) \"web \" \"web2\"\n"
)


@pytest.mark.parametrize("name", ["activate", "activate.csh", "activate.fish", "Activate.ps1",
                                  "activate.bat", "activate.nu", "activate_this.py"])
def test_activate_scripts_get_the_prompt_placeholder(name):
    out = Normalizer([SPACE_ENV], prompt="web").normalize(ACTIVATE_BODY, name)
    assert out == ACTIVATE_TEMPLATE


@pytest.mark.parametrize("name", ["web.py", "deactivate", "activate_web", "myactivate",
                                  "activate-this", "activatE_this.pyc", "README"])
def test_other_files_keep_the_prompt_text(name):
    out = Normalizer([SPACE_ENV], prompt="web").normalize(ACTIVATE_BODY, name)
    assert out == ACTIVATE_BODY.replace(b'"/tmp/x y/web"', b'"@@VOCKER:ENV@@"')
    assert PH_PROMPT not in out


@pytest.mark.parametrize("name", ["activate", "activate.fish", "Activate.ps1"])
def test_activate_regex_matches_the_venv_scripts(name):
    assert vocker._ACTIVATE_RE.match(name)


@pytest.mark.parametrize("name", ["deactivate", "activate_web", "web", "xactivate"])
def test_activate_regex_does_not_match_other_names(name):
    assert not vocker._ACTIVATE_RE.match(name)


def test_package_file_with_the_prompt_word_is_untouched():
    data = b'SERVICE = "web"\n# a web framework\nprint("(web) ")\n'
    norm = Normalizer([SPACE_ENV], prompt="web")
    assert norm.normalize(data, "app.py") is None
    assert norm.normalize(data, "activate") is None  # no env path: not a template


def test_activate_without_a_prompt_setting_keeps_the_prompt_text():
    out = Normalizer([SPACE_ENV]).normalize(ACTIVATE_BODY, "activate")
    assert PH_PROMPT not in out and b'"(web) ' in out


def test_prompt_with_regex_characters_is_literal():
    data = b'X="/tmp/a+b"\nPS1="(a+b) $PS1"\nPS1="(aab) $PS1"\n'
    out = Normalizer(["/tmp/a+b"], prompt="a+b").normalize(data, "activate")
    assert out == b'X="@@VOCKER:ENV@@"\nPS1="(@@VOCKER:PROMPT@@) $PS1"\nPS1="(aab) $PS1"\n'


# ------------------------------------------------------------- placeholders


def test_file_with_env_path_and_placeholder_text_is_refused():
    data = b"x = '/tmp/web/lib'\ny = '@@VOCKER:ENV@@'\n"
    with pytest.raises(InvalidInputError) as info:
        Normalizer([SHORT_ENV]).normalize(data, "evil.py")
    assert "evil.py" in str(info.value)


def test_placeholder_text_without_env_path_is_ordinary_content():
    data = b"MARK = '@@VOCKER:ENV@@'\n"
    assert Normalizer([SHORT_ENV]).normalize(data, "vocker_docs.py") is None


# ------------------------------------------------------------ normalize_record

RECORD_REL = "lib/python3.11/site-packages/pkg-1.0.dist-info/RECORD"
TEMPLATED = {"bin/vockdemo", "lib/python3.11/site-packages/pkg/a,b.sh",
             "lib/python3.11/site-packages/pkg/q\"x.sh"}

RECORD_IN_LINES = [
    b"../../../bin/vockdemo,sha256=3fQ1yz8CbOWjXxBm0Z0pN0Bh8p4P8C1iP1W0y0Yt0jI,232",
    b"pkg/__pycache__/m.cpython-311.pyc,sha256=AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK,100",
    b"pkg/m.pyc,sha256=ZZZZbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjjKKK,99",
    b"pkg/__init__.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0",
    b'"pkg/a,b.txt",sha256=Lu7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,5',
    b'"pkg/a,b.sh",sha256=Mv7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,17',
    b'"pkg/q""x.sh",sha256=Nv7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,18',
    b"../../../bin/other,sha256=Pu7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,40",
    b"pkg-1.0.dist-info/RECORD,,",
    b"pkg/caf\xc3\xa9.txt,sha256=Qu7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,3",
    b"pkg/\xff-not-utf8.txt,sha256=Ru7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,3",
]
RECORD_OUT_LINES = [
    b"../../../bin/vockdemo,,",
    b"pkg/__pycache__/m.cpython-311.pyc,,",
    b"pkg/m.pyc,,",
    RECORD_IN_LINES[3],
    RECORD_IN_LINES[4],
    b'"pkg/a,b.sh",,',
    b'"pkg/q""x.sh",,',
    RECORD_IN_LINES[7],
    RECORD_IN_LINES[8],
    RECORD_IN_LINES[9],
    RECORD_IN_LINES[10],
]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_record_blanks_only_templated_and_pyc_lines(eol):
    data = eol.join(RECORD_IN_LINES) + eol
    out = normalize_record(data, RECORD_REL, TEMPLATED)
    assert out == eol.join(RECORD_OUT_LINES) + eol


def test_record_without_trailing_newline_and_with_mixed_endings():
    data = RECORD_IN_LINES[0] + b"\r\n" + RECORD_IN_LINES[3] + b"\n" + RECORD_IN_LINES[1]
    out = normalize_record(data, RECORD_REL, TEMPLATED)
    assert out == (RECORD_OUT_LINES[0] + b"\r\n" + RECORD_IN_LINES[3] + b"\n"
                   + RECORD_OUT_LINES[1])


def test_record_with_nothing_templated_only_blanks_pyc():
    data = b"\n".join(RECORD_IN_LINES) + b"\n"
    out = normalize_record(data, RECORD_REL, set())
    expected = list(RECORD_IN_LINES)
    expected[1], expected[2] = RECORD_OUT_LINES[1], RECORD_OUT_LINES[2]
    assert out == b"\n".join(expected) + b"\n"


def test_record_paths_resolve_from_the_site_packages_dir():
    # the same RECORD line in a RECORD at the root of the environment
    data = b"bin/vockdemo,sha256=x,1\n"
    assert normalize_record(data, "pkg-1.0.dist-info/RECORD", {"bin/vockdemo"}) == \
        b"bin/vockdemo,,\n"
    assert normalize_record(data, RECORD_REL, {"bin/vockdemo"}) == data


def test_record_blanks_uv_cache_json_a_local_fact():
    data = (b"pkg-1.0.dist-info/uv_cache.json,sha256=Su7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,84\n"
            b"pkg-1.0.dist-info/METADATA,sha256=Tu7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,60\n")
    assert normalize_record(data, RECORD_REL, set()) == (
        b"pkg-1.0.dist-info/uv_cache.json,,\n"
        b"pkg-1.0.dist-info/METADATA,sha256=Tu7dYhSwSMKxS0h2ZBz-ZJ3aW9oQo2-ZlEYl4yYyvQk,60\n")


def test_record_is_unchanged_when_nothing_matches():
    data = b"pkg/__init__.py,sha256=x,0\r\npkg-1.0.dist-info/RECORD,,\r\n\r\n"
    assert normalize_record(data, RECORD_REL, TEMPLATED) == data


# --------------------------------------------------------- check_link_target


@pytest.mark.parametrize("rel, target", [
    pytest.param("bin/python3", "python", id="sibling"),
    pytest.param("bin/lib", "../lib", id="up-then-down"),
    pytest.param("bin/x", "./python", id="dot-slash"),
    pytest.param("lib64", "lib", id="top-level"),
    pytest.param("bin/x", "..", id="parent-is-root"),
    pytest.param("a/b/c/x", "../../../lib/python3.11", id="up-to-root-and-down"),
    pytest.param("bin/x", "..\\lib", id="backslash-inside"),
])
def test_link_targets_inside_the_env_are_allowed(rel, target):
    check_link_target(rel, target)


@pytest.mark.parametrize("rel, target", [
    pytest.param("bin/python", "../../x", id="two-up-from-bin"),
    pytest.param("python", "..", id="dotdot-from-top"),
    pytest.param("bin/python", "/usr/bin/python3", id="absolute"),
    pytest.param("bin/python", "/", id="root"),
    pytest.param("bin/python", "C:/x", id="drive-forward-slash"),
    pytest.param("bin/python", "c:\\Python311\\python.exe", id="drive-backslash"),
    pytest.param("bin/python", "C:x", id="drive-relative"),
    pytest.param("bin/python", "\\\\server\\share\\x", id="unc"),
    pytest.param("bin/python", "..\\..\\x", id="backslash-escape"),
    pytest.param("bin/x", "a/../../../x", id="down-then-escape"),
    # '..' after a name: that name may be a symlink, so a chain could escape
    pytest.param("bin/x", "a/../b", id="down-up-down"),
    pytest.param("d/x", "up/..", id="chain-through-link"),
    pytest.param("bin/x", "py\0thon", id="nul"),
])
def test_link_targets_escaping_the_env_are_refused(rel, target):
    with pytest.raises(InvalidInputError):
        check_link_target(rel, target)


@pytest.mark.skipif(vocker.WINDOWS, reason="needs POSIX symlinks")
def test_a_chain_of_accepted_links_cannot_escape(tmp_path):
    env = tmp_path / "env"
    (env / "d").mkdir(parents=True)
    for rel, target in [("d/up", ".."), ("d/x", "up/..")]:
        try:
            check_link_target(rel, target)
        except InvalidInputError:
            continue
        os.symlink(target, env / rel)
    real_env = os.path.realpath(env)
    real = os.path.realpath(env / "d" / "x")
    assert os.path.commonpath([real, real_env]) == real_env


# ------------------------------------------------- pyvenv.cfg and detect_kind


def test_parse_pyvenv_cfg():
    text = ("home = /usr/local/bin\r\n"
            "include-system-site-packages = false\n"
            "Version = 3.11.7\n"
            "\n"
            "# a comment without an equals sign\n"
            "prompt = 'my web'\n"
            "executable=/usr/local/bin/python3.11\n"
            "command = /usr/local/bin/python3 -m venv --prompt=x /tmp/web\n")
    assert parse_pyvenv_cfg(text) == {
        "home": "/usr/local/bin",
        "include-system-site-packages": "false",
        "version": "3.11.7",
        "prompt": "'my web'",
        "executable": "/usr/local/bin/python3.11",
        "command": "/usr/local/bin/python3 -m venv --prompt=x /tmp/web",
    }


def test_parse_empty_pyvenv_cfg():
    assert parse_pyvenv_cfg("") == {}


def _touch(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.mark.parametrize("files, kind", [
    pytest.param(["pyvenv.cfg"], "venv", id="pyvenv.cfg"),
    pytest.param(["pyvenv.cfg", "bin/python"], "venv", id="venv-wins-over-python"),
    pytest.param(["bin/python"], "standalone", id="bin-python"),
    pytest.param(["bin/python3"], "standalone", id="bin-python3"),
    pytest.param(["python.exe"], "standalone", id="windows-python.exe"),
    pytest.param([], None, id="empty"),
    pytest.param(["lib/pyvenv.cfg", "lib/bin/python", "README"], None, id="nested-only"),
])
def test_detect_kind(tmp_path, files, kind):
    for rel in files:
        _touch(tmp_path, rel)
    assert detect_kind(str(tmp_path)) == kind


def test_detect_kind_needs_files_not_directories(tmp_path):
    (tmp_path / "pyvenv.cfg").mkdir()
    (tmp_path / "bin" / "python").mkdir(parents=True)
    assert detect_kind(str(tmp_path)) is None
