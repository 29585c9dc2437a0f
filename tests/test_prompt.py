"""Prompt templating in activate scripts, for every form venv 3.8-3.14 writes.

CPython 3.13.1 (gh-124651) quotes what it substitutes into activate scripts:
shlex.quote() for activate, activate.csh and activate.fish, nothing for
activate.bat. The templates below are CPython 3.13.1's own lines (every line
holding a ``__VENV_*__`` variable, in order), expanded the way its
``EnvBuilder.replace_variables`` expands them.
"""

import shlex
import subprocess

import pytest

import vocker
from conftest import SCRIPTS, WINDOWS, require_python, run
from vocker import PH_ENV, PH_PROMPT, Normalizer, render_template

# Lib/venv/scripts/common/activate (3.13.1+; the wslpath branch is 3.14's), abridged
# comments aside; 3.13.2's lines checked against a real win-amd64 3.13.2 Lib/venv
ACTIVATE_3131 = """\
# This file must be used with "source bin/activate" *from bash*
# You cannot run it directly

deactivate () {
    if [ -n "${_OLD_VIRTUAL_PATH:-}" ] ; then
        PATH="${_OLD_VIRTUAL_PATH:-}"
        export PATH
        unset _OLD_VIRTUAL_PATH
    fi
    if [ -n "${_OLD_VIRTUAL_PS1:-}" ] ; then
        PS1="${_OLD_VIRTUAL_PS1:-}"
        unset _OLD_VIRTUAL_PS1
    fi
    unset VIRTUAL_ENV
    unset VIRTUAL_ENV_PROMPT
    if [ ! "${1:-}" = "nondestructive" ] ; then
        unset -f deactivate
    fi
}

deactivate nondestructive

case "$(uname)" in
    CYGWIN*|MSYS*|MINGW*)
        VIRTUAL_ENV=$(cygpath __VENV_DIR__)
        export VIRTUAL_ENV
        ;;
    *)
        case "$(uname -r)" in
            *Microsoft*|*WSL*)
                VIRTUAL_ENV=$(wslpath __VENV_DIR__)
                export VIRTUAL_ENV
                ;;
            *)
                export VIRTUAL_ENV=__VENV_DIR__
                ;;
        esac
        ;;
esac

_OLD_VIRTUAL_PATH="$PATH"
PATH="$VIRTUAL_ENV/"__VENV_BIN_NAME__":$PATH"
export PATH

VIRTUAL_ENV_PROMPT=__VENV_PROMPT__
export VIRTUAL_ENV_PROMPT

if [ -z "${VIRTUAL_ENV_DISABLE_PROMPT:-}" ] ; then
    _OLD_VIRTUAL_PS1="${PS1:-}"
    PS1="("__VENV_PROMPT__") ${PS1:-}"
fi
hash -r 2> /dev/null || true
"""
# Lib/venv/scripts/common/activate.fish (3.13.1+), the substituted lines
FISH_3131 = """\
set -gx VIRTUAL_ENV __VENV_DIR__
set -gx PATH "$VIRTUAL_ENV/"__VENV_BIN_NAME__ $PATH
set -gx VIRTUAL_ENV_PROMPT __VENV_PROMPT__
        printf "%s(%s)%s " (set_color 4B8BBE) __VENV_PROMPT__ (set_color normal)
        builtin printf "%s(%s)%s " (builtin set_color 4B8BBE) __VENV_PROMPT__ (builtin set_color normal)
"""
# Lib/venv/scripts/posix/activate.csh (3.13.1+), the substituted lines
CSH_3131 = """\
setenv VIRTUAL_ENV __VENV_DIR__
setenv PATH "$VIRTUAL_ENV/"__VENV_BIN_NAME__":$PATH"
setenv VIRTUAL_ENV_PROMPT __VENV_PROMPT__
    set prompt = "("__VENV_PROMPT__") $prompt:q"
"""
# Lib/venv/scripts/nt/activate.bat (3.13.1+; quote_bat is the identity), CRLF
BAT_3131 = ('set "VIRTUAL_ENV=__VENV_DIR__"\r\n'
            'set "PROMPT=(__VENV_PROMPT__) %PROMPT%"\r\n'
            'set "PATH=%VIRTUAL_ENV%\\__VENV_BIN_NAME__;%PATH%"\r\n'
            'set "VIRTUAL_ENV_PROMPT=__VENV_PROMPT__"\r\n')
SCRIPTS_3131 = {"activate": ACTIVATE_3131, "activate.fish": FISH_3131,
                "activate.csh": CSH_3131, "activate.bat": BAT_3131}


def venv_3131(name, env_dir, prompt, bin_name="bin"):
    """What CPython 3.13.1's replace_variables writes for script ``name``."""
    quote = (lambda s: s) if name.endswith(".bat") else shlex.quote
    values = {"__VENV_DIR__": env_dir, "__VENV_PROMPT__": prompt, "__VENV_BIN_NAME__": bin_name}
    text = SCRIPTS_3131[name]
    for key, value in values.items():
        text = text.replace(key, quote(value))
    return text.encode("utf-8")


FOLDERS = ["/srv/web", "/srv/a b", "/home/x/Mes Envs é/web app", "/srv/.venv"]


@pytest.mark.parametrize("name", sorted(SCRIPTS_3131))
def test_313_1_scripts_give_one_template_for_every_folder(name):
    templates = set()
    for env in FOLDERS:
        prompt = env.rsplit("/", 1)[1]
        data = venv_3131(name, env, prompt)
        tpl = Normalizer([env], prompt=prompt).normalize(data, name)
        templates.add(tpl)
        assert prompt.encode() not in tpl
    assert len(templates) == 1, templates


@pytest.mark.parametrize("name", sorted(SCRIPTS_3131))
@pytest.mark.parametrize("new", ["/opt/new one", "/opt/plain", "/opt/Mes Envs é/x"])
def test_313_1_template_renders_as_venv_writes_it(name, new):
    tpl = Normalizer(["/srv/a b"], prompt="a b").normalize(venv_3131(name, "/srv/a b", "a b"), name)
    prompt = new.rsplit("/", 1)[1]
    out = render_template(tpl, {PH_ENV: new.encode(), PH_PROMPT: prompt.encode()})
    assert out == quoted_path(venv_3131(name, new, prompt), name, new)


def quoted_path(data, name, path):
    """The path single-quoted even where shlex leaves it bare: the same word to
    the shell, and the one form for every folder (uv's scripts use it too)."""
    if name.endswith(".bat"):
        return data
    return data.replace(shlex.quote(path).encode(), b"'" + path.encode() + b"'")


@pytest.mark.parametrize("body", [
    b'VIRTUAL_ENV="/srv/a b"\nVIRTUAL_ENV_PROMPT="a b"\nPS1="(a b) ${PS1:-}"\n',  # 3.12-3.13.0
    b'VIRTUAL_ENV="/srv/a b"\nPS1="(a b) ${PS1:-}"\nVIRTUAL_ENV_PROMPT="(a b) "\n',  # 3.8-3.11
])
def test_older_forms_keep_their_templates(body):
    tpl = Normalizer(["/srv/a b"], prompt="a b").normalize(body, "activate")
    assert b"a b" not in tpl and b"SHPROMPT" not in tpl


def _venv(py, path):
    subprocess.run([py, "-m", "venv", "--without-pip", str(path)], check=True)
    for name in ("activate", "activate.fish", "activate.csh", "activate.bat"):
        (path / SCRIPTS / name).write_bytes(venv_3131(name, str(path), path.name))
    return path


def test_313_1_venvs_in_two_folders_give_one_id_and_render_the_new_name(store, tmp_path):
    py = require_python("3.13")
    a, b = _venv(py, tmp_path / "a b"), _venv(py, tmp_path / "Mes Envs é" / "web")
    ra, rb = vocker.commit(store, a), vocker.commit(store, b)
    assert ra["id"] == rb["id"]
    target = tmp_path / "new place" / "new one"
    vocker.create(store, ra["id"], target)
    for name in ("activate", "activate.fish", "activate.csh", "activate.bat"):
        assert (target / SCRIPTS / name).read_bytes() == \
            quoted_path(venv_3131(name, str(target), "new one"), name, str(target))
    if WINDOWS:  # the Windows lane runs activate.bat end to end
        return
    out = run(["bash", "-c", f'. "{target}/bin/activate" && echo "$VIRTUAL_ENV" && '
               'echo "$VIRTUAL_ENV_PROMPT" && echo "$PS1"'])
    assert out.stdout.splitlines() == [str(target), "new one", "(new one) "]
