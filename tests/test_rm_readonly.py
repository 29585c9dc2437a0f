"""After rm every pool file is read-only again, on Windows too.

On Windows (NTFS, and Wine) the read-only attribute belongs to the file, so
every hardlink shares it: clearing it on a container's link to delete it
clears it on the pool copy and in every other container. Driven here through
the Windows code path (``Target.windows()``) on Linux, where a file's write
bits are per inode too.
"""

import os
import stat

import pytest

import vocker
from conftest import WINDOWS
from vocker import Target


def pool_files(store):
    return sorted(os.path.join(d, n) for d, _, ns in os.walk(store.pool_dir) for n in ns)


def writable(paths):
    return [p for p in paths if os.lstat(p).st_mode & 0o222]


@pytest.fixture
def two_containers(store, tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(6):
        (src / "pkg" / f"m{i}.py").write_text(f"X = {i}\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    image = vocker.commit(store, src, kind="plain")["id"]
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    for c in (c1, c2):
        assert vocker.create(store, image, c, link_mode="hardlink")["link_mode"] == "hardlink"
    pool = pool_files(store)
    assert len(pool) == 7 and writable(pool) == []
    return c1, c2, pool


def pip_rmtree(path):
    """What pip's rmtree does on Windows with a read-only file: clear the
    attribute (of the inode), then delete the link."""
    os.chmod(path, stat.S_IWRITE | stat.S_IREAD)
    os.unlink(path)


@pytest.mark.parametrize("spoil", ["nothing", "pip_removed_a_file", "inode_rows_lost"])
def test_rm_on_windows_leaves_every_pool_file_read_only(store, two_containers, spoil):
    c1, c2, pool = two_containers
    if spoil == "pip_removed_a_file":  # pip uninstall/upgrade in the container
        pip_rmtree(c1 / "pkg" / "m0.py")
    elif spoil == "inode_rows_lost":  # the pool lookup by inode finds nothing
        with store.transaction() as db:
            db.execute("DELETE FROM pool_inodes")
    assert vocker.remove_container(store, c1, system=Target.windows())["removed"]
    assert not c1.exists()
    assert writable(pool) == []
    assert writable([os.path.join(d, n) for d, _, ns in os.walk(c2) for n in ns]) == []
    exe = [p for p in pool if p.endswith(".x")]
    if WINDOWS:  # no x bit to commit: run.sh is a plain file there
        assert exe == []
    else:
        assert len(exe) == 1 and os.lstat(exe[0]).st_mode & 0o111


def test_seal_pool_counts_what_it_sealed(store, two_containers):
    c1, _, pool = two_containers
    pip_rmtree(c1 / "pkg" / "m1.py")
    os.chmod(c1 / "pkg" / "m2.py", 0o644)
    assert len(writable(pool)) == 2
    assert store.seal_pool() == 2 and writable(pool) == [] and store.seal_pool() == 0


def test_commit_seals_again_what_pip_in_another_container_made_writable(store, two_containers):
    """Windows: pip's rmtree in c1 clears the read-only attribute of an inode c2
    and the pool share. Committing c2 reads those files, finds them intact and
    seals them again: same image, no 'changed in place' warning, pool kept."""
    c1, c2, pool = two_containers
    image = vocker.commit(store, c2, kind="plain")["id"]
    pip_rmtree(c1 / "pkg" / "m3.py")
    assert len(writable(pool)) == 1
    r = vocker.commit(store, c2, kind="plain")
    assert (r["id"], r["warnings"], r["files_read"]) == (image, [], 1)
    assert writable(pool) == [] and pool_files(store) == pool
