"""The store's life (issue 10): what rmi may remove, and what it must keep."""

import json

import pytest

import vocker
from conftest import cli


@pytest.fixture
def used(tmp_path):
    """web:1.0 with two containers, and an unused image other:1."""
    home = tmp_path / "home"
    for name, tag in (("src", "web:1.0"), ("other", "other:1")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text(name)
        cli("commit", str(tmp_path / name), "--kind", "plain", "-t", tag, home=home, check=True)
    for c in ("c1", "c2"):
        cli("create", "web:1.0", str(tmp_path / c), home=home, check=True)
    return home, tmp_path


def _images(home):
    return {t for i in json.loads(cli("images", "--json", home=home, check=True).stdout)
            for t in i["tags"]}


def test_rmi_refuses_an_image_containers_use_and_names_them(used):
    home, base = used
    p = cli("rmi", "other:1", "web:1.0", home=home)
    assert p.returncode == vocker.EXIT_CONFLICT, p.stderr
    assert p.stderr.count("\n") == 1 and str(base / "c1") in p.stderr and \
        str(base / "c2") in p.stderr and "--force" in p.stderr
    assert _images(home) == {"web:1.0", "other:1"}   # checked first: nothing removed


def test_rmi_force_keeps_the_containers_and_ps_marks_them(used):
    home, base = used
    r = json.loads(cli("rmi", "--force", "web:1.0", "--json", home=home, check=True).stdout)
    assert r[0]["containers"] == [str(base / "c1"), str(base / "c2")] and r[0]["deleted"]
    assert _images(home) == {"other:1"}
    ps = json.loads(cli("ps", "--json", home=home, check=True).stdout)
    assert [(c["exists"], c["image_present"]) for c in ps] == [(True, False)] * 2
    text = cli("ps", home=home, check=True).stdout
    assert text.count("no-image") == 2
    assert (base / "c1" / "f.txt").read_text() == "src"           # rm of one container
    cli("rm", str(base / "c1"), home=home, check=True)             # removes only it
    assert not (base / "c1").exists() and (base / "c2" / "f.txt").read_text() == "src"


def test_untagging_an_image_containers_use_is_allowed(used):
    home, base = used
    cli("tag", "web:1.0", "web:latest", home=home, check=True)
    r = json.loads(cli("rmi", "web:latest", "--json", home=home, check=True).stdout)
    assert r == [{"untagged": ["web:latest"], "deleted": None, "containers": []}]
    assert cli("rm", str(base / "c1"), str(base / "c2"), home=home).returncode == 0
    r = json.loads(cli("rmi", "web:1.0", "--json", home=home, check=True).stdout)
    assert r[0]["deleted"] and r[0]["containers"] == []
