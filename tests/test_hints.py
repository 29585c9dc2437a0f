"""Hints where users go wrong: swapped arguments, names not found (close tags,
an implied ':latest'), and no hidden staging path in any message."""

import errno
import os

import pytest

import vocker
from conftest import SYMLINKS, cli, require_symlinks


@pytest.fixture(scope="module")
def web_home(tmp_path_factory):
    """A store with web:1.0, web:2.0 (one plain image) and a repository holding web:1.0."""
    base = tmp_path_factory.mktemp("hints")
    home = base / "home"
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a\n")
    if SYMLINKS:
        os.symlink("sub/a.txt", src / "link")
    cli("commit", str(src), "--kind", "plain", "-t", "web:1.0", "-t", "web:2.0", home=home,
        check=True)
    cli("push", "web:1.0", str(base / "repo"), home=home, check=True)
    return home, base


def _error(p, code):
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), p.stderr
    return lines[0]


@pytest.mark.parametrize("words, win, line", [
    (["web:1.0", "/tmp/a b"], False, "web:1.0 '/tmp/a b'"),
    (["web:1.0", "C:\\a b"], True, 'web:1.0 "C:\\a b"'),
    (["web:1.0", "C:\\ab"], True, "web:1.0 C:\\ab"),
    (["web:1.0", "it's"], False, "web:1.0 'it'\"'\"'s'"),
])
def test_suggested_commands_are_quoted_for_the_users_shell(words, win, line):
    assert vocker.command_line(words, win) == line


@pytest.mark.parametrize("words,expect", [
    (["create", "./new", "web:1.0"], "arguments swapped? try: vocker create web:1.0 ./new"),
    (["create", "{base}/new", "web:2.0"], "arguments swapped? try: vocker create web:2.0 {base}/new"),
    (["create", "{base}/src", "web"], None),  # web:latest is no image: nothing to swap
    (["create", "./new", "nosuch:1"], None),
    (["pull", "web:1.0", "{base}/repo"], "arguments swapped? try: vocker pull {base}/repo web:1.0"),
    (["pull", "web:1.0", "./repo", "web:2.0"],
     "arguments swapped? try: vocker pull ./repo web:1.0 web:2.0"),
    (["pull", "{base}/repo", "web:9"], None),
    (["push", "./repo", "web:1.0"], "arguments swapped? try: vocker push web:1.0 ./repo"),
    (["push", "{base}/repo", "web:2.0"], "arguments swapped? try: vocker push web:2.0 {base}/repo"),
    (["push", "nosuch:1", "./elsewhere"], None),
])
def test_swapped_arguments_say_so(web_home, words, expect):
    home, base = web_home
    words = [w.replace("{base}", str(base)) for w in words]
    p = cli(*words, home=home, cwd=base)
    assert not (base / "new").exists()
    assert not any((base / w).exists() for w in ("web:1.0", "web:2.0"))  # no repository made
    if expect is None:
        assert p.returncode != 0 and "swapped" not in p.stderr, p.stderr
        return
    line = _error(p, vocker.EXIT_USAGE)
    assert line.endswith(expect.replace("{base}", str(base))), line


@pytest.mark.parametrize("words,message", [
    (["create", "web", "{base}/x"],
     "no image web:latest (':latest' is implied when no tag is given); tags of web: 1.0, 2.0"),
    (["inspect", "web:1.5"], "no image web:1.5; did you mean web:1.0 or web:2.0?"),
    (["tag", "wbe:1.0", "other:1"], "no image wbe:1.0; did you mean web:1.0"),
    (["rmi", "web:3"], "no image web:3; did you mean web:"),
    (["push", "web:2", "{base}/r2"], "no image web:2; did you mean web:2.0"),
    (["push", "webb", "{base}/r2"], "no image webb:latest (':latest' is implied when no tag is "
                                    "given); run 'vocker images'"),
    (["save", "zzz:1", "-o", "{base}/x.vocker"], "no image zzz:1; run 'vocker images' to list"),
    (["create", "abc123", "{base}/x"], "no image ID starts with abc123, and there is no image "
                                       "abc123:latest; run 'vocker images'"),
])
def test_names_not_found_suggest_close_tags(web_home, words, message):
    home, base = web_home
    p = cli(*[w.replace("{base}", str(base)) for w in words], home=home)
    assert message in _error(p, vocker.EXIT_NOT_FOUND)


def test_a_name_not_in_a_repository_is_not_explained_with_local_tags(web_home):
    home, base = web_home
    line = _error(cli("pull", str(base / "repo"), "web:2.0", home=home), vocker.EXIT_NOT_FOUND)
    assert "tag in repository not found: web:2.0" in line and "did you mean" not in line


def _no_staging_names(text, name):
    assert ".vocker-" not in text and f".{name}" not in text, text


@pytest.mark.parametrize("mode", ["reflink", "auto"])
def test_link_mode_errors_name_the_users_path(web_home, tmp_path, monkeypatch, capsys, mode):
    home, base = web_home

    def refuse(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(vocker, "reflink_file", refuse)
    monkeypatch.setattr(vocker, "copy_file", refuse)
    monkeypatch.setattr(os, "link", refuse)
    target = tmp_path / "web"
    assert vocker.main(["--home", str(home), "create", "web:1.0", str(target),
                        "--link-mode", mode]) == vocker.EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert f"does not work for {target}" in err, err
    _no_staging_names(err, "web")
    assert os.listdir(tmp_path) == []


def test_os_errors_while_creating_name_the_users_path(web_home, tmp_path, monkeypatch, capsys):
    require_symlinks()  # the failure is injected into the image's one symlink
    home, base = web_home

    def refuse(src, dst, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", dst)

    monkeypatch.setattr(os, "symlink", refuse)
    target = tmp_path / "web"
    for extra in ([], ["--json"]):
        assert vocker.main(["--home", str(home), "create", "web:1.0", str(target), *extra]) \
            == vocker.EXIT_ENVIRONMENT
        err = capsys.readouterr().err
        assert f"Permission denied ({target}{os.sep}link)" in err, err
        _no_staging_names(err, "web")
    assert os.listdir(tmp_path) == []
