"""A store on a full or read-only disk: documented exit codes, one line.

Real disks, not mocks: a small tmpfs fills up, a read-only bind mount refuses
writes even to root. Each row runs the real entry point (``vocker.main``) and
checks the exit code (never 1), a one-line message, that nothing is left in
the store's ``tmp/``, and that vocker works again once space is freed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest

import vocker


def _mount(*args):
    try:
        r = subprocess.run(["mount", *args], capture_output=True, text=True)
    except OSError as e:  # Windows: no mount(8)
        return False, f"no mount command ({e})"
    return r.returncode == 0, r.stderr.strip()


@contextlib.contextmanager
def tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    ok, err = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if not ok:
        pytest.skip(f"cannot mount a {size} tmpfs here to fill a disk: {err}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def read_only(path):
    ok, err = _mount("--bind", str(path), str(path))
    if not ok:
        pytest.skip(f"cannot bind-mount here to make a read-only disk: {err}")
    try:
        ok, err = _mount("-o", "remount,ro,bind", str(path))
        if not ok:
            pytest.skip(f"cannot remount read-only: {err}")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def run(capsys, home, *args):
    """(exit code, stdout, stderr) of the real command line."""
    code = vocker.main(["--home", str(home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err, code, expected, fragment):
    assert code == expected, err
    assert err.startswith("vocker: error: ") and err.count("\n") == 1, err
    assert fragment in err, err


def fill(disk, leave=0):
    """Fill ``disk`` to the last block (or to ``leave`` bytes free); returns
    the filler to delete."""
    filler = disk / "filler"
    if leave:
        with open(filler, "wb") as f:
            f.write(b"\0" * (shutil.disk_usage(disk).free - leave))
        return filler
    with open(filler, "wb", buffering=0) as f:  # unbuffered: close() has nothing to flush
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
    with contextlib.suppress(OSError):
        with open(disk / "filler2", "wb", buffering=0) as f:  # the last partial block
            while True:
                f.write(b"\0" * 512)
    return filler


def leftovers(home):
    tmp = home / "tmp"
    return [n for n in os.listdir(tmp) if n.startswith(("blob-", "pack-", "pool-"))] \
        if tmp.is_dir() else []


def small_env(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "a.txt").write_text("a\n")
    return path


# ------------------------------------------------------------ read-only

def test_read_only_store_serves_read_commands_and_refuses_writes(tmp_path, capsys):
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    code, out, err = run(capsys, home, "commit", str(src), "--kind", "plain", "-t", "x:1")
    assert code == 0, err
    with read_only(home):
        for args in (["images"], ["images", "--json"], ["inspect", "x:1"], ["ps"],
                     ["save", "x:1", "-o", str(tmp_path / "x.vocker")]):
            code, out, err = run(capsys, home, *args)
            assert code == 0 and err == "", (args, err)
        assert "x:1" in run(capsys, home, "images")[1]
        for args in (["tag", "x:1", "y:1"], ["rmi", "x:1"],
                     ["commit", str(src), "--kind", "plain"],
                     ["create", "x:1", str(tmp_path / "c")],
                     ["load", str(tmp_path / "x.vocker")]):
            code, out, err = run(capsys, home, *args)
            one_line_error(err, code, vocker.EXIT_ENVIRONMENT, "is read-only")
        assert not (tmp_path / "c").exists()
    # save staged beside its output and left nothing there
    assert sorted(os.listdir(tmp_path)) == ["home", "src", "x.vocker"]
    other = tmp_path / "other"
    assert run(capsys, other, "load", str(tmp_path / "x.vocker"))[0] == 0


def test_read_only_store_api_refuses_a_transaction(tmp_path):
    home = tmp_path / "home"
    vocker.Store(home).close()
    with read_only(home):
        with vocker.Store(home) as store:  # detects
            assert store.readonly
            with pytest.raises(vocker.EnvironmentProblem, match="read-only"):
                with store.transaction():
                    pass
        with pytest.raises(vocker.EnvironmentProblem, match="read-only"):
            vocker.Store(home, readonly=False)
    with vocker.Store(home, readonly=True) as store:  # asked for, on a writable disk
        with pytest.raises(vocker.EnvironmentProblem, match="read-only"):
            with store.transaction():
                pass


# ------------------------------------------------------------ disk full

def test_commit_of_a_large_file_on_a_full_disk(tmp_path, capsys):
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    with open(src / "big.bin", "wb") as f:
        f.write(os.urandom(20 << 20))          # incompressible, past SMALL_FILE
    with tmpfs(home, "12m"):
        code, out, err = run(capsys, home, "commit", str(src), "--kind", "plain")
        one_line_error(err, code, vocker.EXIT_ENVIRONMENT, "is full")
        assert "store" in err
        assert leftovers(home) == []
        assert run(capsys, home, "images", "--json")[1].strip() == "[]"
        (src / "big.bin").unlink()
        code, out, err = run(capsys, home, "commit", str(src), "--kind", "plain", "-t", "s:1")
        assert code == 0, err


def test_commit_of_many_small_files_on_a_full_disk(tmp_path, capsys):
    # the pack writer (files under SMALL_FILE) hits the full disk
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    for i in range(8):
        (src / f"f{i}.bin").write_bytes(os.urandom(2 << 20))
    with tmpfs(home, "12m"):
        code, out, err = run(capsys, home, "commit", str(src), "--kind", "plain")
        one_line_error(err, code, vocker.EXIT_ENVIRONMENT, "is full")
        assert leftovers(home) == []
        for i in range(8):
            (src / f"f{i}.bin").unlink()
        assert run(capsys, home, "commit", str(src), "--kind", "plain")[0] == 0


def test_tag_and_rmi_on_a_full_disk(tmp_path, capsys):
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    with tmpfs(home, "12m"):
        assert run(capsys, home, "commit", str(src), "--kind", "plain", "-t", "s:1")[0] == 0
        filler = fill(home)
        for args in (["tag", "s:1", "t:1"], ["rmi", "s:1"]):
            code, out, err = run(capsys, home, *args)
            one_line_error(err, code, vocker.EXIT_ENVIRONMENT, "is full")
        code, out, err = run(capsys, home, "images")   # reading still works
        assert code == 0 and "s:1" in out, err
        filler.unlink()
        (home / "filler2").unlink(missing_ok=True)
        assert run(capsys, home, "tag", "s:1", "t:1")[0] == 0


def test_a_transaction_on_a_disk_that_fills_up(tmp_path):
    # the store was opened while there was room: Store.transaction maps the error
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    with tmpfs(home, "12m"):
        with vocker.Store(home) as store:
            image = vocker.commit(store, src, kind="plain")["id"]
            fill(home)
            with pytest.raises(vocker.EnvironmentProblem, match="is full"):
                for i in range(2000):  # grow the WAL past what it already holds
                    vocker.tag_image(store, image, f"t{i}:{'x' * 100}")


def test_create_on_a_full_target_disk_names_the_target(tmp_path, capsys):
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    (src / "z.bin").write_bytes(os.urandom(3 << 20))
    assert run(capsys, home, "commit", str(src), "--kind", "plain", "-t", "b:1")[0] == 0
    disk = tmp_path / "small"
    with tmpfs(disk, "1m"):
        for mode in ("copy", "auto"):
            code, out, err = run(capsys, home, "create", "b:1", str(disk / "c"),
                                 "--link-mode", mode)
            one_line_error(err, code, vocker.EXIT_ENVIRONMENT, f"the disk holding {disk} is full")
            assert "pool" not in err
            assert os.listdir(disk) == []
        assert run(capsys, home, "create", "b:1", str(tmp_path / "ok"))[0] == 0


def test_create_with_a_full_store_disk_names_the_store(tmp_path, capsys):
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    (src / "z.bin").write_bytes(os.urandom(3 << 20))
    with tmpfs(home, "12m"):
        assert run(capsys, home, "commit", str(src), "--kind", "plain", "-t", "b:1")[0] == 0
        filler = fill(home, leave=1 << 20)    # room to open, not to unpack the 3 MB blob
        code, out, err = run(capsys, home, "create", "b:1", str(tmp_path / "c"))
        assert code == vocker.EXIT_ENVIRONMENT, err
        assert err.count("\n") == 1 and "store" in err and "full" in err, err
        assert not (tmp_path / "c").exists()
        filler.unlink()
        (home / "filler2").unlink(missing_ok=True)
        assert run(capsys, home, "create", "b:1", str(tmp_path / "c"))[0] == 0


# ------------------------------------------------------------ damaged database

def _damage_table(db_path, table):
    """Overwrite the root page of ``table`` with garbage (a bad disk sector)."""
    import sqlite3
    db = sqlite3.connect(db_path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    finally:
        db.close()
    with open(db_path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


@pytest.mark.parametrize("table, args", [
    ("images", ["images"]),
    ("tags", ["tag", "IMAGE", "y:1"]),
    ("tags", ["rmi", "x:1"]),
    ("images", ["inspect", "IMAGE"]),
    ("containers", ["ps"]),
    ("containers", ["rm", "CONTAINER"]),
    ("blobs", ["df"]),
    ("plans", ["create", "x:1", "NEW"]),  # a second create reads the kept plan, not blobs
    ("stat_cache", ["commit", "SRC", "--kind", "plain"]),
])
def test_a_damaged_table_is_a_store_problem_for_every_command(table, args, tmp_path, capsys):
    home = tmp_path / "home"
    src = small_env(tmp_path / "src")
    code, out, err = run(capsys, home, "commit", str(src), "--kind", "plain", "-t", "x:1", "-q")
    assert code == 0, err
    names = {"IMAGE": out.strip(), "CONTAINER": str(tmp_path / "c"), "NEW": str(tmp_path / "new"),
             "SRC": str(src)}
    assert run(capsys, home, "create", "x:1", names["CONTAINER"])[0] == 0
    _damage_table(home / "vocker.db", table)
    code, out, err = run(capsys, home, *[names.get(a, a) for a in args])
    one_line_error(err, code, vocker.EXIT_ENVIRONMENT, "malformed")


# ------------------------------------------------------------ no file named

WINDOWS_ONLY_CODE = OSError(None, "Internal error", None, 1359)  # winerror is Windows only
CODES = [
    (OSError(5, "Input/output error"), " [Errno 5]"),
    (OSError("no code at all"), ""),
    (WINDOWS_ONLY_CODE, " [WinError 1359]" if os.name == "nt" else ""),
]


@pytest.mark.parametrize("exc, text", CODES, ids=["errno", "none", "winerror"])
def test_an_os_error_naming_no_file_shows_its_code(exc, text):
    assert vocker._os_error_code(exc) == text
