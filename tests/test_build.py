"""vocker build and vocker audit: images from recipes, rebuilt and compared.

Real pip, real venvs, real wheels (tests/wheelfactory.py), the real CLI.
One recipe image and one commit image are built once per module; each test
that changes something builds in its own store.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

import vocker
from conftest import (MAIN_MINOR, WINDOWS, clean_env, cli, cli_json, main_python, make_venv,
                      posix_only, run, vocker_cmd, venv_site_packages)
from wheelfactory import build_wheel

#: what the Windows lane leaves to the Linux one: every build costs seconds of
#: pip and venv under Wine, and the two tests that run there cover its paths
LINUX_LANE = posix_only("CI time: each build costs seconds more under Wine; the "
                        "recipe, history and pull-and-audit tests cover Windows")


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def requirements(path, wheels, *names):
    """A requirements file pinning each ``name-version`` wheel by its sha256."""
    lines = []
    for name in names:
        whl = next(wheels.glob(f"{name}-py3-none-any.whl"))
        dist, version = name.split("-")
        lines.append(f"{dist}=={version} \\\n    --hash=sha256:{sha256(whl)}\n    # via test\n")
    path.write_text("# locked by the test\n" + "".join(lines), encoding="utf-8")
    return path


def pylock(path, wheels, *names):
    out = ['lock-version = "1.0"\ncreated-by = "test"\n']
    for name in names:
        dist, version = name.split("-")
        whl = next(wheels.glob(f"{name}-py3-none-any.whl"))
        out.append(f'[[packages]]\nname = "{dist}"\nversion = "{version}"\n'
                   f'[[packages.wheels]]\nname = "{whl.name}"\n'
                   f'url = "https://example.invalid/{whl.name}"\n'
                   f'hashes = {{sha256 = "{sha256(whl)}"}}\n')
    path.write_text("".join(out), encoding="utf-8")
    return path


def build(home, *args, cwd=None):
    return cli("build", "--python", main_python(), *args, home=home, cwd=cwd, timeout=600)


def one_line_error(p, code):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def context(tmp_path_factory, wheelhouse):
    """A build context: a lock, a folder and files to COPY, and a recipe."""
    ctx = tmp_path_factory.mktemp("context")
    requirements(ctx / "requirements.txt", wheelhouse, "vockdemo-1.0")
    pylock(ctx / "pylock.toml", wheelhouse, "vockdemo-1.0", "vockextra-1.0")
    (ctx / "app").mkdir()
    (ctx / "app" / "main.py").write_text("print('app', 1)\n", encoding="utf-8")
    (ctx / "app" / "conf").mkdir()
    (ctx / "app" / "conf" / "settings.ini").write_text("[app]\nlevel = 1\n", encoding="utf-8")
    (ctx / "NOTICE").write_text("notice\n", encoding="utf-8")
    (ctx / "Vockerfile").write_text(
        "# the app image\n"
        f"PYTHON {MAIN_MINOR}\n"
        "INSTALL pylock.toml\n"
        "COPY app app\n"
        "COPY NOTICE share/doc/\n"
        "LABEL org.example.name=app 'org.example.title=the app'\n", encoding="utf-8")
    return ctx


@pytest.fixture(scope="module")
def built(tmp_path_factory, context, wheelhouse):
    """(home, image ID) of the recipe image, built once."""
    home = tmp_path_factory.mktemp("built-home")
    p = cli("build", "-f", context / "Vockerfile", "--python", main_python(),
            "--find-links", wheelhouse, "-t", "app:1", "-q", home=home, timeout=600)
    assert p.returncode == 0, p.stderr
    return home, p.stdout.strip()


def test_recipe_build_records_every_input(built, context, wheelhouse):
    home, image_id = built
    m = cli_json("inspect", image_id, home=home)["manifest"]
    recipe = m["recipe"]
    assert recipe["by"] == "build" and recipe["text"] == (context / "Vockerfile").read_text()
    assert recipe["installer"].startswith("pip ")
    ops = [s["op"] for s in recipe["steps"]]
    assert ops == ["python", "install", "copy", "copy", "label"]
    wheels = {w["name"]: w for w in recipe["steps"][1]["wheels"]}
    assert wheels["vockdemo"]["sha256"] == sha256(wheelhouse / "vockdemo-1.0-py3-none-any.whl")
    assert wheels["vockextra"]["wheel"] == "vockextra-1.0-py3-none-any.whl"
    copied = {f["to"]: f for f in recipe["steps"][2]["files"] + recipe["steps"][3]["files"]}
    assert sorted(copied) == ["app/conf/settings.ini", "app/main.py", "share/doc/NOTICE"]
    assert copied["app/main.py"]["blob"] == vocker.hash_bytes((context / "app/main.py").read_bytes())
    assert m["labels"] == {"org.example.name": "app", "org.example.title": "the app"}
    assert m["python"]["version"].split(".")[:2] == recipe["steps"][0]["version"].split(".")
    info = cli_json("inspect", image_id, home=home)
    assert info["audit"] == "rebuilt from its recipe"
    files = vocker.flat_image(vocker.Store(home).tree, m["root"])
    assert not [rel for rel in files if rel.endswith(".pyc") or "__pycache__" in rel]
    assert any(rel.endswith("vockextra-1.0.dist-info/RECORD") for rel in files)


def test_history_shows_the_recipe_steps(built):
    home, image_id = built
    steps = cli_json("history", image_id, home=home)
    assert steps[0]["recipe"][:2] == [f"PYTHON {steps[0]['recipe'][0].split()[1]}",
                                      "INSTALL pylock.toml"]
    text = cli("history", image_id, home=home).stdout
    assert "COPY app app" in text and "INSTALL pylock.toml" in text


def test_build_audit_pull_round_trip(tmp_path, built, context, wheelhouse):
    """A vendor builds and pushes; a user with an empty store pulls and audits."""
    home, image_id = built
    assert cli("push", "app:1", tmp_path / "repo", home=home).returncode == 0
    user = tmp_path / "user-home"
    assert cli("pull", tmp_path / "repo", "app:1", home=user).returncode == 0
    p = cli("audit", "app:1", "--find-links", wheelhouse, "--context", context, home=user,
            timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == f"reproduced {image_id}"
    r = cli_json("audit", "app:1", "--find-links", wheelhouse, "--context", context, home=user)
    assert r["reproduced"] and r["differences"] == [] and r["rebuilt"] == image_id
    assert cli("images", "-q", home=user).stdout.split() == [image_id]  # nothing else kept


@LINUX_LANE
def test_one_recipe_gives_one_image_id(tmp_path, context, wheelhouse):
    """Two working folders, two TMPDIRs, two times, SOURCE_DATE_EPOCH set or
    not, a warm or a cold pip cache and store: one image ID."""
    req = context / "requirements.txt"
    moved = tmp_path / "elsewhere" / "wheels"
    shutil.copytree(wheelhouse, moved)
    ids = []
    for i, (links, extra) in enumerate([(wheelhouse, {}),
                                        (moved, {"SOURCE_DATE_EPOCH": "1700000000"}),
                                        (wheelhouse, {"PIP_CACHE_DIR": str(tmp_path / "c")})]):
        cwd = tmp_path / f"cwd{i}"
        (cwd / "tmp").mkdir(parents=True)
        env = {"TMPDIR": str(cwd / "tmp"), **extra}
        home = tmp_path / ("home-a" if i < 2 else "home-b")  # warm, then a cold store
        p = vocker_run(["build", "--python", main_python(), "-r", req, "--find-links", links,
                        "-q"], home, cwd, env)
        ids.append(p.stdout.strip())
    assert len(set(ids)) == 1 and vocker.ID_RE.fullmatch(ids[0]), ids


def vocker_run(args, home, cwd, env):
    return run([*vocker_cmd(), "--home", home, *args], cwd=cwd, env=clean_env(env), timeout=600)


@LINUX_LANE
def test_flags_and_pylock_build_install_the_same_wheels(tmp_path, context, wheelhouse):
    home = tmp_path / "home"
    a = json.loads(build(home, "-r", context / "requirements.txt", "--find-links", wheelhouse,
                         "--json").stdout)
    lock = pylock(tmp_path / "pylock.toml", wheelhouse, "vockdemo-1.0")
    b = json.loads(build(home, "-r", lock, "--find-links", wheelhouse, "--label", "k=v",
                         "-t", "pl:1", "--json").stdout)
    ra, rb = (cli_json("inspect", r["id"], home=home)["manifest"]["recipe"] for r in (a, b))
    assert ra["steps"][1] == rb["steps"][1]
    assert rb["text"].splitlines()[1:] == ["INSTALL pylock.toml", "LABEL k=v"]
    c = cli("create", "pl:1", tmp_path / "c", home=home)
    assert c.returncode == 0, c.stderr
    py = tmp_path / "c" / ("Scripts/python.exe" if WINDOWS else "bin/python")
    assert run([py, "-c", "import vockdemo; print(vockdemo.__version__)"]).stdout.strip() == "1.0"


@LINUX_LANE
def test_derived_image_records_its_parent_and_audits(tmp_path, built, context, wheelhouse):
    home, base_id = built
    home2 = tmp_path / "home"
    shutil.copytree(home, home2)
    (tmp_path / "Vockerfile").write_text("FROM app:1\nINSTALL req.txt\nLABEL stage=2\n")
    requirements(tmp_path / "req.txt", wheelhouse, "vockbig-1.0")
    p = cli("build", "-f", tmp_path / "Vockerfile", "--find-links", wheelhouse, "-t", "app:2",
            "-q", home=home2, timeout=600)
    assert p.returncode == 0, p.stderr
    m = cli_json("inspect", "app:2", home=home2)["manifest"]
    assert m["parent"] == base_id and m["recipe"]["steps"][0] == {"op": "from", "image": base_id}
    assert m["labels"]["org.example.name"] == "app" and m["labels"]["stage"] == "2"
    steps = cli_json("history", "app:2", home=home2)
    assert [s["id"] for s in steps] == [p.stdout.strip(), base_id]
    assert [x["name"] for x in steps[0]["packages"]] == ["vockbig"]
    assert cli_json("ps", home=home2) == []  # the build's own container is forgotten
    r = cli("audit", "app:2", "--find-links", wheelhouse, home=home2, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("reproduced "), r.stdout + r.stderr


@LINUX_LANE
def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path, context):
    evil = tmp_path / "evil"
    build_wheel(evil, "vockdemo", "1.0", {"vockdemo/__init__.py": "import os  # changed\n"})
    line = one_line_error(build(tmp_path / "home", "-r", context / "requirements.txt",
                                "--find-links", evil), 5)
    assert "refused vockdemo==1.0" in line and "sha256" in line
    assert cli("images", "-q", home=tmp_path / "home").stdout == ""


@LINUX_LANE
def test_a_missing_wheel_is_named(tmp_path, context):
    (tmp_path / "empty").mkdir()
    line = one_line_error(build(tmp_path / "home", "-r", context / "requirements.txt",
                                "--find-links", tmp_path / "empty"), 3)
    assert "wheel not found: vockdemo==1.0" in line and "--find-links" in line


@LINUX_LANE
def test_audit_of_a_missing_wheel_is_one_line(built):
    home, _ = built
    line = one_line_error(cli("audit", "app:1", "--context", ".", home=home, timeout=600), 3)
    assert "wheel not found" in line


@LINUX_LANE
def test_audit_names_a_file_changed_under_the_same_recipe(tmp_path, built, context, wheelhouse):
    """A tampered image: a file changed after the build, the result committed
    and given the build's manifest (same recipe) - audit names the file."""
    home, image_id = built
    home2 = tmp_path / "home"
    shutil.copytree(home, home2)
    assert cli("create", "app:1", tmp_path / "c", "--no-compile", home=home2).returncode == 0
    target = tmp_path / "c" / "app" / "main.py"
    target.write_text("print('app', 1)\nimport os; os.system('evil')\n", encoding="utf-8")
    changed = cli_json("commit", tmp_path / "c", home=home2)["id"]
    store = vocker.Store(home2)
    m, c = store.manifest(image_id), store.manifest(changed)
    forged = vocker.Manifest(m.kind, c.root, python=m.python, pyvenv=m.pyvenv, labels=m.labels,
                             recipe=m.recipe)
    data = forged.serialize()
    with store.transaction():
        store.add_image(forged.id, data, {}, [], tags=["forged:1"])
    store.close()
    p = cli("audit", "forged:1", "--find-links", wheelhouse, "--context", context, home=home2,
            timeout=600)
    assert p.returncode == vocker.EXIT_DAMAGED, p.stdout + p.stderr
    assert "differs: app/main.py" in p.stdout and "+import os; os.system('evil')" in p.stdout
    r = cli_json_rc("audit", "forged:1", "--find-links", wheelhouse, "--context", context,
                    home=home2)
    assert [(d["path"], d["status"]) for d in r["differences"]] == [("app/main.py", "differs")]
    assert r["differences"][0]["image"][1] == store_blob(home2, forged.id, "app/main.py")


def cli_json_rc(*args, home):
    p = cli(*args, "--json", home=home, timeout=600)
    return json.loads(p.stdout)


def store_blob(home, image_id, rel):
    s = vocker.Store(home)
    try:
        return vocker.flat_image(s.tree, s.manifest(image_id).root)[rel][1]
    finally:
        s.close()


@LINUX_LANE
def test_run_steps_run_at_build_and_at_audit_only_when_asked(tmp_path, context, wheelhouse):
    (tmp_path / "Vockerfile").write_text(
        f"PYTHON {MAIN_MINOR}\n"
        "INSTALL requirements.txt\n"
        "RUN python -c \"open('made.txt', 'w').write('made')\"\n")
    shutil.copy(context / "requirements.txt", tmp_path)
    home = tmp_path / "home"
    p = cli("build", "-f", tmp_path / "Vockerfile", "--python", main_python(), "--find-links",
            wheelhouse, "-t", "run:1", home=home, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "made.txt" in vocker.flat_image(vocker.Store(home).tree,
                                           vocker.Store(home).manifest(p.stdout.strip()).root)
    assert "deterministic" in cli_json("inspect", "run:1", home=home)["audit"]
    line = one_line_error(cli("audit", "run:1", "--find-links", wheelhouse, home=home), 2)
    assert "--run" in line
    r = cli("audit", "run:1", "--run", "--find-links", wheelhouse, home=home, timeout=600)
    assert r.returncode == 0 and "reproduced" in r.stdout, r.stdout + r.stderr
    assert "deterministic" in r.stdout  # the note says what the audit relies on


@LINUX_LANE
def test_a_pip_venv_commit_is_audited_from_its_distributions(tmp_path, wheelhouse):
    """commit records name, version and installer of each distribution: audit
    rebuilds them from wheels and names what no distribution made."""
    venv = make_venv(main_python(), tmp_path / "venv", ["vockdemo==1.0"], wheelhouse=wheelhouse)
    home = tmp_path / "home"
    image_id = cli_json("commit", venv, "-t", "mine:1", home=home)["id"]
    recipe = cli_json("inspect", image_id, home=home)["manifest"]["recipe"]
    assert recipe["by"] == "commit"
    assert {(d["name"], d["installer"]) for d in recipe["installed"]} >= {("vockdemo", "pip"),
                                                                         ("pip", "pip")}
    p = cli("audit", "mine:1", "--find-links", wheelhouse, home=home, timeout=600)
    assert p.returncode == 0 and p.stdout.strip() == f"reproduced {image_id}", p.stdout + p.stderr
    (venv_site_packages(venv) / "extra_by_hand.py").write_text("x = 1\n")
    cli_json("commit", venv, "-t", "mine:2", home=home)
    r = cli_json_rc("audit", "mine:2", "--find-links", wheelhouse, home=home)
    assert not r["reproduced"]
    assert [d["status"] for d in r["differences"]] == ["only in image"]
    assert r["differences"][0]["path"].endswith("site-packages/extra_by_hand.py")
    assert r["differences"][0]["why"] == "no recorded distribution installs it"


BAD_RECIPES = [
    ("PYTHON 3.12\nPYTHON 3.11\n", 5, "starts with one PYTHON"),
    ("INSTALL requirements.txt\n", 5, "starts with one PYTHON"),
    ("PYTHON 3.12\nADD x y\n", 5, "unknown instruction 'ADD'"),
    ("PYTHON three\n", 5, "PYTHON takes a version"),
    ("PYTHON 3.12\nCOPY ../outside x\n", 5, "is not a relative path"),
    ("PYTHON 3.12\nCOPY app /etc\n", 5, "is not a relative path"),
    ("PYTHON 3.12\nCOPY missing x\n", 3, "copy source not found"),
    ("PYTHON 3.12\nCOPY link x\n", 5, "is a symlink"),
    ("PYTHON 3.12\nINSTALL nohash.txt\n", 5, "has no sha256 hash"),
    ("PYTHON 3.12\nINSTALL editable.txt\n", 5, "only 'name==version --hash=sha256:...'"),
    ("PYTHON 3.12\nINSTALL nowheels.toml\n", 5, "has no wheels"),
    ("PYTHON 3.12\nLABEL novalue\n", 5, "LABEL takes KEY=VALUE"),
    ("PYTHON 3.12\nCOPY 'unclosed\n", 5, "No closing quotation"),
    ("PYTHON 3.12\nCOPY app lib64/x\n", 5, "is not a plain folder"),
]


@LINUX_LANE
@pytest.mark.parametrize("text,code,words", BAD_RECIPES, ids=[r[2][:24] for r in BAD_RECIPES])
def test_bad_recipes_fail_in_one_line(tmp_path, text, code, words):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "a.py").write_text("a = 1\n")
    (tmp_path / "nohash.txt").write_text("vockdemo==1.0\n")
    (tmp_path / "editable.txt").write_text("-e ./src\n")
    (tmp_path / "nowheels.toml").write_text('lock-version = "1.0"\n[[packages]]\nname = "x"\n'
                                            'version = "1"\n')
    os.symlink("app", tmp_path / "link")
    (tmp_path / "Vockerfile").write_text(text.replace("3.12", MAIN_MINOR))
    line = one_line_error(cli("build", "-f", tmp_path / "Vockerfile", "--python", main_python(),
                              home=tmp_path / "home", timeout=600), code)
    assert words in line, line


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@LINUX_LANE
def test_build_from_an_http_index(tmp_path, context, wheelhouse):
    """--index-url: a PEP 503 simple index on 127.0.0.1, the wheel pinned by hash."""
    whl = wheelhouse / "vockdemo-1.0-py3-none-any.whl"
    page = tmp_path / "index" / "simple" / "vockdemo"
    page.mkdir(parents=True)
    shutil.copy(whl, page)
    (page / "index.html").write_text(f'<a href="{whl.name}#sha256={sha256(whl)}">{whl.name}</a>\n')
    handler = functools.partial(_Quiet, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        home = tmp_path / "home"
        p = build(home, "-r", context / "requirements.txt", "--index-url", url, "-q")
        assert p.returncode == 0, p.stderr
        local = build(tmp_path / "home2", "-r", context / "requirements.txt", "--find-links",
                      wheelhouse, "-q")
        assert p.stdout == local.stdout  # where a wheel came from is not part of the image
        r = cli("audit", p.stdout.strip(), "--index-url", url, home=home, timeout=600)
        assert r.returncode == 0 and r.stdout.startswith("reproduced"), r.stdout + r.stderr
    finally:
        server.shutdown()


@LINUX_LANE
def test_nothing_of_the_image_runs_while_building_on_it_or_auditing_it(tmp_path, wheelhouse,
                                                                       context):
    """A base image with a .pth file and a sitecustomize that would leave a
    mark: FROM it, INSTALL into it and audit the result; nothing runs."""
    mark = tmp_path / "ran"
    venv = make_venv(main_python(), tmp_path / "venv")
    payload = f"import pathlib; pathlib.Path({str(mark)!r}).write_text('ran')\n"
    (venv_site_packages(venv) / "evil.pth").write_text(payload)
    (venv_site_packages(venv) / "sitecustomize.py").write_text(payload)
    home = tmp_path / "home"
    cli_json("commit", venv, "-t", "base:1", home=home)
    mark.unlink(missing_ok=True)  # commit ran nothing either; make sure
    (tmp_path / "ctx").mkdir()
    shutil.copy(context / "requirements.txt", tmp_path / "ctx")
    (tmp_path / "ctx" / "Vockerfile").write_text("FROM base:1\nINSTALL requirements.txt\n")
    p = cli("build", "-f", tmp_path / "ctx" / "Vockerfile", "--find-links", wheelhouse,
            "-t", "derived:1", "-q", home=home, timeout=600)
    assert p.returncode == 0, p.stderr
    r = cli("audit", "derived:1", "--find-links", wheelhouse, home=home, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("reproduced"), r.stdout + r.stderr
    assert not mark.exists()
    created = cli("create", "derived:1", tmp_path / "c", home=home)
    assert created.returncode == 0
    run([tmp_path / "c" / "bin" / "python", "-c", "pass"])
    assert mark.exists()  # the payload is real: it runs once the user runs the image


@LINUX_LANE
def test_what_a_commit_audit_cannot_rebuild_is_named(tmp_path, wheelhouse, uv_bin):
    """A uv-made venv (no pip, uv's INSTALLER and RECORD): the rebuild uses
    pip, so audit names that in a note and shows what differs (exit 9)."""
    venv = make_venv(main_python(), tmp_path / "venv", ["vockdemo==1.0"], installer="uv",
                     wheelhouse=wheelhouse)
    home = tmp_path / "home"
    cli_json("commit", venv, "-t", "uv:1", home=home)
    r = cli_json_rc("audit", "uv:1", "--find-links", wheelhouse, home=home)
    assert not r["reproduced"]
    assert r["notes"] == ["vockdemo 1.0 was installed by uv: the rebuild uses pip"]
    changed = {d["path"].rsplit("/", 1)[-1] for d in r["differences"] if d["status"] == "differs"}
    assert "INSTALLER" in changed and "RECORD" in changed
    assert all(d["why"] for d in r["differences"])


def test_an_image_without_a_recipe_cannot_be_audited(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a\n")
    home = tmp_path / "home"
    cli_json("commit", tmp_path / "folder", "--kind", "plain", "-t", "plain:1", home=home)
    assert cli_json("inspect", "plain:1", home=home)["audit"] == "no recipe: it cannot be audited"
    line = one_line_error(cli("audit", "plain:1", home=home), 5)
    assert "records no recipe" in line
    one_line_error(cli("build", home=home), 2)  # neither -f nor --python
    one_line_error(cli("build", "-f", tmp_path / "missing", home=home), 3)


def test_a_build_removes_the_folders_of_killed_builds(tmp_path):
    """A killed build leaves its work folder (a venv, wheels) in the temp
    folder; the next build removes those whose process is gone, and only those."""
    temp = tmp_path / "temp"
    temp.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid names no process now
    dead, alive = temp / f"vocker-build-{child.pid}-x1", temp / f"vocker-build-{os.getpid()}-x2"
    others = [alive, temp / "vocker-build-12345678", temp / "unrelated"]
    for d in (dead, *others):
        (d / "env").mkdir(parents=True)
    (tmp_path / "Vockerfile").write_text("PYTHON 3\n", encoding="utf-8")
    env = dict(clean_env(), TMPDIR=str(temp), TEMP=str(temp), TMP=str(temp))
    p = run([*vocker_cmd(), "--home", tmp_path / "home", "build", "-f", tmp_path / "Vockerfile",
             "--python", tmp_path / "no-python", tmp_path], env=env, check=False)
    one_line_error(p, 7)
    assert sorted(temp.iterdir()) == sorted(others)
