"""The real `vocker` entry point: exit codes, one-line errors, --json, atomicity."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import vocker
from conftest import clean_env, cli, cli_json, main_python, posix_only, venv_python, vocker_cmd


@pytest.fixture(scope="module")
def plain_home(tmp_path_factory):
    """A store holding 17 small plain images (so some share a 1-char ID prefix)."""
    base = tmp_path_factory.mktemp("cli")
    home = base / "home"
    ids = []
    with vocker.Store(home) as store:
        for i in range(17):
            d = base / f"src{i}"
            d.mkdir()
            (d / "file.txt").write_text(f"image {i}\n")
            ids.append(vocker.commit(store, d, kind="plain", tags=[f"plain:{i}"])["id"])
    return home, ids, base


def _one_line_error(p, code):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("vocker: error: ")
    assert "vocker:" not in lines[0][len("vocker: error: "):]  # one prefix
    assert "Traceback" not in p.stderr


def test_help_and_version(tmp_path):
    p = cli("--help", home=tmp_path)
    assert p.returncode == 0 and "exit codes:" in p.stdout
    for command in ("commit", "build", "audit", "create", "images", "ps", "tag", "rmi", "rm",
                    "inspect", "gc", "df"):
        assert command in p.stdout
        sub = cli(command, "--help", home=tmp_path)
        assert sub.returncode == 0 and "examples:" in sub.stdout and "vocker " + command in sub.stdout
    v = cli("--version", home=tmp_path)
    assert v.returncode == 0 and v.stdout.strip() == f"vocker {vocker.__version__}"


def test_bad_inputs_give_one_line_errors(plain_home, tmp_path):
    home, ids, base = plain_home
    first = {}
    for i in ids:
        first.setdefault(i[0], []).append(i)
    shared = next(p for p, group in first.items() if len(group) > 1)
    notenv = tmp_path / "notenv"
    notenv.mkdir()
    (notenv / "readme.txt").write_text("hi")
    exists = tmp_path / "exists"
    exists.mkdir()
    cases = [
        (["commit", str(tmp_path / "missing")], vocker.EXIT_NOT_FOUND, "not found"),
        (["commit", str(notenv)], vocker.EXIT_INVALID, "not a Python environment"),
        (["commit", str(notenv / "readme.txt")], vocker.EXIT_INVALID, "not a directory"),
        (["commit", str(notenv), "--kind", "plain", "-t", "Bad Tag!"], vocker.EXIT_USAGE, "invalid"),
        (["create", "plain:0", str(exists)], vocker.EXIT_CONFLICT, "already exists"),
        (["create", "nosuch:1", str(tmp_path / "x")], vocker.EXIT_NOT_FOUND, "no image nosuch:1;"),
        (["create", "abcdef0123", str(tmp_path / "x")], vocker.EXIT_NOT_FOUND,
         "no image ID starts with abcdef0123, and there is no image abcdef0123:latest"),
        (["create", shared, str(tmp_path / "x")], vocker.EXIT_CONFLICT, "ambiguous"),
        (["create", "plain:0", str(tmp_path / "x"), "--link-mode", "magic"], vocker.EXIT_USAGE, "invalid choice"),
        (["frobnicate"], vocker.EXIT_USAGE, "invalid choice"),
        (["inspect", "nosuch"], vocker.EXIT_NOT_FOUND, "no image nosuch:latest (':latest' is"),
        (["rm", str(tmp_path / "never-created")], vocker.EXIT_NOT_FOUND, "container not found"),
        (["tag", "nosuch", "x:1"], vocker.EXIT_NOT_FOUND, "no image nosuch:latest"),
        (["images", "--frob"], vocker.EXIT_USAGE, "unrecognized arguments: --frob; see 'vocker images --help'"),
        (["images", "--debug", "--frob"], vocker.EXIT_USAGE, "unrecognized arguments"),
        (["create", "plain:0"], vocker.EXIT_USAGE, "required: path"),
    ]
    for args, code, fragment in cases:
        p = cli(*args, home=home)
        _one_line_error(p, code)
        assert fragment in p.stderr, (args, p.stderr)
    assert not (tmp_path / "x").exists()


def test_json_outputs_and_lifecycle(plain_home, tmp_path):
    home, ids, base = plain_home
    r = cli_json("commit", str(base / "src0"), "--kind", "plain", "-t", "again:1", home=home)
    assert r["id"] == ids[0] and r["tags"] == ["again:1", "plain:0"]  # all its tags
    images = cli_json("images", home=home)
    assert {i["id"] for i in images} == set(ids)
    c = cli_json("create", ids[0][:12], str(tmp_path / "ctr"), home=home)
    assert c["image"] == ids[0] and (tmp_path / "ctr" / "file.txt").read_text() == "image 0\n"
    ps = cli_json("ps", home=home)
    assert [x["path"] for x in ps] == [str(tmp_path / "ctr")] and ps[0]["exists"]
    info = json.loads(cli("inspect", "again:1", home=home, check=True).stdout)
    assert info["id"] == ids[0] and sorted(info["tags"]) == ["again:1", "plain:0"]
    assert info["containers"] == [str(tmp_path / "ctr")]
    assert cli("tag", "again:1", "other:2", home=home).returncode == 0
    # rmi of one tag of a multi-tag image only untags
    r = cli_json("rmi", "other:2", home=home)
    assert r[0]["untagged"] == ["other:2"] and r[0]["deleted"] is None
    _one_line_error(cli("rmi", ids[0], home=home), vocker.EXIT_CONFLICT)
    assert cli_json("rm", str(tmp_path / "ctr"), home=home)[0]["removed"]
    assert not (tmp_path / "ctr").exists() and cli_json("ps", home=home) == []
    r = cli_json("rmi", "--force", ids[0], home=home)
    assert r[0]["deleted"] == ids[0]
    _one_line_error(cli("inspect", ids[0], home=home), vocker.EXIT_NOT_FOUND)


def test_quiet_prints_only_the_id(plain_home):
    home, ids, base = plain_home
    p = cli("commit", str(base / "src3"), "--kind", "plain", "-q", home=home, check=True)
    assert p.stdout.strip() == ids[3]


def test_corrupt_store_fails_create_without_leaving_anything(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n" * 100)   # bytes: no CRLF on Windows
    (src / "b.txt").write_bytes(b"beta\n" * 100)
    home = tmp_path / "home"
    image = cli_json("commit", str(src), "--kind", "plain", home=home)["id"]
    blob = vocker.hash_bytes(b"beta\n" * 100)
    with vocker.Store(home) as store:
        size, csize, pack, offset = store.blob_row(blob)
        path = store.pack_path(pack)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # damage the middle of the blob's frame
        f.seek(offset + csize // 2)
        f.write(b"\xff\xff")
    parent = tmp_path / "out"
    parent.mkdir()
    p = cli("create", image, str(parent / "c"), home=home)
    _one_line_error(p, vocker.EXIT_INVALID)
    assert "failed verification" in p.stderr
    assert os.listdir(parent) == []


def _wait_for_stage(parent, name, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(n.startswith(f".{name}.vocker-") for n in os.listdir(parent)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("sig", [
    pytest.param(signal.SIGINT, id="sigint", marks=posix_only(
        "sends SIGINT to a child (Windows delivers Ctrl+C only to a console's process group)")),
    pytest.param(None, id="kill"),
])
def test_interrupted_create_leaves_no_partial_directory(sig, demo_image, tmp_path):
    home, image = demo_image
    parent = tmp_path / "p"
    parent.mkdir()
    target = parent / "env"
    cmd = [*vocker_cmd(), "--home", str(home), "create", image, str(target), "--link-mode", "copy"]
    # a user's Ctrl+C reaches a process whose SIGINT is the default; a job that
    # bash started in the background (no job control) would pass on "ignored"
    default_sigint = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)} \
        if sig == signal.SIGINT else {}
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **default_sigint)
    assert _wait_for_stage(parent, "env", proc), "create finished before it could be interrupted"
    time.sleep(0.05)
    proc.send_signal(sig) if sig else proc.kill()
    out, err = proc.communicate(timeout=60)
    recorded = str(target) in cli("ps", home=home, check=True).stdout
    if sig == signal.SIGINT:  # Ctrl+C in the rename-and-record step waits for its end
        assert proc.returncode == vocker.EXIT_INTERRUPTED, err
        assert os.listdir(parent) == (["env"] if recorded else []), (recorded, err)
    if recorded:   # a loaded machine let it reach the record first: it is whole
        assert subprocess.run([str(venv_python(target)), "-c", "import vockdemo"]).returncode == 0
        return
    # a re-run succeeds and removes what a killed run left behind
    p = cli("create", image, str(target), home=home)
    assert p.returncode == 0, p.stderr
    assert os.listdir(parent) == ["env"]


def test_read_only_store_is_a_clear_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    home = tmp_path / "home"
    cli_json("commit", str(src), "--kind", "plain", home=home)
    try:
        r = subprocess.run(["mount", "--bind", str(home), str(home)], capture_output=True)
    except OSError as e:  # Windows: no mount(8)
        pytest.skip(f"cannot bind-mount here to make a read-only disk: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here to make a read-only disk: {r.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(home)], check=True)
        p = cli("commit", str(src), "--kind", "plain", home=home)
        _one_line_error(p, vocker.EXIT_ENVIRONMENT)
        assert "store" in p.stderr and "writable" in p.stderr
    finally:
        subprocess.run(["umount", str(home)], check=True)


def test_progress_only_on_request_when_not_a_terminal(plain_home, tmp_path):
    home, ids, base = plain_home
    quiet = cli("create", "plain:1", str(tmp_path / "a"), home=home, check=True)
    assert quiet.stderr == ""                      # not a terminal: no progress
    forced = cli("--progress", "create", "plain:1", str(tmp_path / "b"), home=home, check=True)
    lines = [json.loads(ln) for ln in forced.stderr.splitlines()]  # JSON lines, every one
    assert lines[-1]["event"] == "done" and lines[-1]["stage"] == "creating"
    assert lines[-1]["done"] == lines[-1]["total"] == 1
    assert forced.stdout.startswith("created ")   # stdout stays clean for scripts


PROGRESS_KEYS = {"event", "stage", "done", "total", "bytes", "total_bytes", "rate",
                 "seconds_left"}


def test_progress_json_lines_for_commit_create_push_pull(tmp_path):
    """--progress: one JSON object a line on stderr, a "done" line at the end
    of each stage, with items and bytes (docs/json.md)."""
    py = main_python()
    subprocess.run([py, "-m", "venv", str(tmp_path / "venv")], check=True)
    home = tmp_path / "home"
    stages = {}
    for args in (["commit", tmp_path / "venv", "-t", "p:1"], ["create", "p:1", tmp_path / "c"],
                 ["push", "p:1", tmp_path / "repo"]):
        p = cli("--progress", *args, home=home, check=True)
        for line in p.stderr.splitlines():
            ev = json.loads(line)
            assert set(ev) == PROGRESS_KEYS, ev
            if ev["event"] == "done":
                stages[ev["stage"].split()[0]] = ev
    p = cli("--progress", "pull", tmp_path / "repo", "p:1", home=tmp_path / "home2", check=True)
    stages.update({json.loads(ln)["stage"]: json.loads(ln) for ln in p.stderr.splitlines()
                   if json.loads(ln)["event"] == "done"})
    assert {"committing", "creating", "compiling", "pushing", "pulling"} <= set(stages), stages
    c = stages["committing"]
    assert c["done"] == c["total"] > 100 and c["bytes"] == c["total_bytes"] > 1 << 20
    assert stages["creating"]["bytes"] == stages["creating"]["total_bytes"] > 1 << 20
    assert stages["pushing"]["bytes"] > 1 << 20 and stages["pulling"]["bytes"] > 0


@posix_only("a pseudo-terminal for stderr")
def test_progress_bar_on_a_terminal(tmp_path):
    import pty
    py = main_python()
    subprocess.run([py, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    master, slave = pty.openpty()
    p = subprocess.run([*vocker_cmd(), "--home", str(tmp_path / "home"), "commit",
                        str(tmp_path / "venv")], stderr=slave, stdout=subprocess.PIPE,
                       env=clean_env(), timeout=120)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.returncode == 0
    text = out.decode("utf-8", "replace")
    assert "\rcommitting [" in text and "/s" in text, text


#: the order in which the examples of every --help run, as a user would
HELP_ORDER = [[], ["commit"], ["build"], ["audit"], ["create"], ["images"], ["ps"], ["tag"], ["inspect"], ["push"],
              ["pull"], ["save"], ["load"], ["repo"], ["status"], ["diff"], ["history"],
              ["verify"], ["rm"], ["rmi"], ["df"], ["gc"]]


@posix_only("pastes each example into bash")
def test_help_examples_are_true(tmp_path, wheelhouse):
    """Every example of every --help, pasted into a shell in this order, works."""
    py = main_python()
    subprocess.run([py, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    shutil.copytree(wheelhouse, tmp_path / "wheels")  # what build's examples name
    whl = tmp_path / "wheels" / "vockdemo-1.0-py3-none-any.whl"
    (tmp_path / "requirements.txt").write_text(
        f"vockdemo==1.0 --hash=sha256:{hashlib.sha256(whl.read_bytes()).hexdigest()}\n")
    (tmp_path / "app.py").write_text("print('app')\n")
    (tmp_path / "Vockerfile").write_text("PYTHON 3.12\nINSTALL requirements.txt\n"
                                         "COPY app.py app/\n")
    env = clean_env({"VOCKER_HOME": str(tmp_path / "home")})
    env["PATH"] = os.path.dirname(vocker_cmd()[0]) + os.pathsep + env["PATH"]
    ran = []
    for words in HELP_ORDER:
        text = cli(*words, "--help", home=tmp_path / "home", check=True).stdout
        examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert examples, words
        for line in examples:
            assert line.startswith("  vocker "), line
            p = subprocess.run(["bash", "-c", line.strip()], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, (line, p.stdout, p.stderr)
            ran.append(line.split()[1])
    assert set(ran) == {w[0] for w in HELP_ORDER if w} and vocker_cmd()[0].endswith("vocker")
    assert cli("images", "-q", home=tmp_path / "home").stdout == ""  # the last one removed all
