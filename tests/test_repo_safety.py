"""Trust boundaries of the transport: what leaves the store is verified, a
repository folder or HTTP server is hostile, the repository lock holds, and
every refusal is one line with a documented exit code (issue 7, classes 3-8).

Each table row runs the real command line (``vocker.main`` in-process, or the
``vocker`` subprocess with a timeout where a hang must be caught) and checks
the exit code, a one-line message, that nothing was written outside the
repository and the store's tmp/, and that honest use works afterwards."""

import http.server
import json
import os
import shutil
import socketserver
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zstandard

import vocker
from conftest import REPO, WINDOWS, clean_env, cli, needs_symlinks, require_symlinks, vocker_cmd
from test_transport import GOOD_BLOBS, GOOD_TREE, _craft_repo, _store_snapshot
from vocker import hash_bytes



# ------------------------------------------------------------------ helpers


def vk(capsys, *argv):
    """Run the real entry point in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = vocker.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vocker: error: "), err
    return lines[0]


def make_tree(root, big=0):
    """A small plain folder: a text file, an empty file, 100 KB of noise, and
    optionally ``big`` bytes of noise (one frame larger than RANGE_MAX)."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n" * 100)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "noise.bin").write_bytes(os.urandom(100_000))
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))
    return root


@pytest.fixture
def image(tmp_path):
    """(store home, image ID) of a plain image tagged p:1."""
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        image_id = vocker.commit(store, make_tree(tmp_path / "src"), tags=["p:1"],
                                 kind="plain")["id"]
    return home, image_id


def pushed(tmp_path, image, name="repo"):
    home, image_id = image
    repo = tmp_path / name
    assert vocker.main(["--home", str(home), "push", "p:1", str(repo)]) == 0
    return repo


def tree_snapshot(root):
    """relative path -> (kind, size, bytes hash) of everything below root, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = ("f", st.st_size, hash_bytes(f.read()))
            else:
                out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), 0, "")
    return out


def pull_and_check(tmp_path, location, image_id, name="check"):
    """An honest pull into a fresh store works, and create gives the files."""
    home = tmp_path / f"{name}-home"
    with vocker.Store(home) as store:
        assert vocker.pull(store, str(location), ["p:1"])["images"][0]["id"] == image_id
        env = tmp_path / f"{name}-env"
        vocker.create(store, "p:1", env)
        assert (env / "a.txt").read_text() == "alpha\n" * 100
        assert (env / "empty").read_bytes() == b""


def local_pack(home):
    packs = sorted((home / "packs").iterdir())
    assert packs
    return packs[0]


def flip(path, where=None):
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if where is None else where] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------- class 3: damage never spreads


def test_push_and_save_refuse_a_damaged_local_blob(tmp_path, image, capsys):
    home, image_id = image
    repo = tmp_path / "repo"
    vocker.repo_init(str(repo))
    before = tree_snapshot(repo)
    flip(local_pack(home))
    rc, out, err = vk(capsys, "--home", home, "push", "p:1", repo)
    assert rc == vocker.EXIT_INVALID
    assert "failed verification" in one_line(err) and "nothing was sent" in err
    assert tree_snapshot(repo) == before
    rc, out, err = vk(capsys, "--home", home, "save", "p:1", "-o", tmp_path / "x.vocker")
    assert rc == vocker.EXIT_INVALID and "failed verification" in one_line(err)
    assert not any(p.name.startswith("x.vocker") for p in tmp_path.iterdir())
    assert os.listdir(home / "tmp") == []


def test_honest_push_repairs_a_poisoned_repository_frame(tmp_path, image, capsys):
    home, image_id = image
    repo = pushed(tmp_path, image)
    packs = list((repo / "packs").iterdir())
    assert len(packs) == 1
    flip(packs[0])
    rc, out, err = vk(capsys, "--home", home, "push", "p:1", repo, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["images"][0]["new_blobs"] >= 1   # the listing alone did not decide
    pull_and_check(tmp_path, repo, image_id)
    # a frame listed where nothing is (a deleted pack) is sent again too
    for p in (repo / "packs").iterdir():
        p.unlink()
    rc, out, err = vk(capsys, "--home", home, "push", "p:1", repo, "--json")
    assert rc == 0 and json.loads(out)["images"][0]["new_blobs"] == 3
    pull_and_check(tmp_path, repo, image_id, "again")
    # and an intact repository costs nothing new
    rc, out, err = vk(capsys, "--home", home, "push", "p:1", repo, "--json")
    assert json.loads(out)["images"][0]["new_blobs"] == 0


def test_frame_rules():
    """A stored blob is exactly one complete zstd frame: no truncation, nothing after it."""
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    for data in (b"", b"x", os.urandom(70_000), b"a" * 3_000_000):
        frame = cctx.compress(data)
        bid = hash_bytes(data)
        assert vocker.decompress_blob(bid, frame, len(data)) == data
        for bad in (b"", frame[:-1], frame[:4], frame + b"\0", frame + cctx.compress(b"")):
            with pytest.raises(vocker.IntegrityError):
                vocker.decompress_blob(bid, bad, len(data))
    # a declared size far beyond the content allocates nothing: it just fails
    with pytest.raises(vocker.IntegrityError, match="does not match"):
        vocker.decompress_blob(hash_bytes(b"x"), cctx.compress(b"x"), 1 << 40)


# ------------------------------------------------ class 7: the empty blob


def poison_empty_blob(store):
    """What an older vocker recorded after a hostile pull: the empty blob, with no frame."""
    store.db.execute("INSERT INTO blobs(id, size, csize, pack, offset) "
                     "VALUES (?, 0, 0, NULL, NULL)", (hash_bytes(b""),))


def test_a_repository_listing_the_empty_blob_without_a_frame_is_refused(tmp_path, capsys):
    empty = hash_bytes(b"")

    def csize0(root, image_id, pack_id):
        p = root / "images" / f"{image_id}.blobs"
        lines = [f"{empty} 0 {pack_id} 0 0" if line.startswith(empty) else line
                 for line in p.read_text().splitlines()]
        p.write_text("\n".join(lines) + "\n")

    def half_frame(root, image_id, pack_id):
        p = root / "images" / f"{image_id}.blobs"
        pack = root / "packs" / f"{pack_id}.pack"
        data = pack.read_bytes()
        lines = [f"{empty} 0 {pack_id} {len(data)} 4" if line.startswith(empty) else line
                 for line in p.read_text().splitlines()]
        pack.write_bytes(data + vocker.ZSTD_MAGIC)
        p.write_text("\n".join(lines) + "\n")
    blobs = {"e": b""}
    tree = {"": [("empty", "f", "e")]}
    for corrupt in (csize0, half_frame):
        repo = tmp_path / corrupt.__name__
        _craft_repo(repo, tree, blobs, corrupt=corrupt)
        home = tmp_path / f"h-{corrupt.__name__}"
        rc, out, err = vk(capsys, "--home", home, "pull", repo, "evil:1")
        assert rc == vocker.EXIT_INVALID, err
        one_line(err)
        with vocker.Store(home) as store:
            assert store.db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0


def test_push_save_and_pull_mend_a_store_poisoned_by_a_frameless_empty_blob(tmp_path, capsys):
    home = tmp_path / "home"
    with vocker.Store(home) as store:  # what an older vocker recorded after a hostile pull
        poison_empty_blob(store)
        image_id = vocker.commit(store, make_tree(tmp_path / "src"), tags=["p:1"],
                                 kind="plain")["id"]
    repo = tmp_path / "repo"
    rc, out, err = vk(capsys, "--home", home, "push", "p:1", repo)
    assert rc == 0, err
    rc, out, err = vk(capsys, "--home", home, "save", "p:1", "-o", tmp_path / "p.vocker")
    assert rc == 0, err
    pull_and_check(tmp_path, repo, image_id)
    h2 = tmp_path / "h2"
    assert vk(capsys, "--home", h2, "load", tmp_path / "p.vocker")[0] == 0
    # a pull into the poisoned store replaces the frameless row by a real frame
    h3 = tmp_path / "h3"
    with vocker.Store(h3) as store:
        poison_empty_blob(store)
        vocker.pull(store, str(repo), ["p:1"])
        size, csize, pack = store.db.execute("SELECT size, csize, pack FROM blobs WHERE id=?",
                                             (hash_bytes(b""),)).fetchone()
        assert csize > 0 and pack is not None
        assert store.db.execute("SELECT count(*) FROM blobs WHERE pack IS NULL").fetchone()[0] == 0
        vocker.create(store, "p:1", tmp_path / "env3")
        assert (tmp_path / "env3" / "empty").read_bytes() == b""


# ---------------------------------------- class 5: a hostile repository folder


def _link_outside(rel):
    """Move ``rel`` into the watched folder and leave a symlink to it."""
    def corrupt(repo, outside, image_id):
        require_symlinks()
        src = repo / rel.format(id=image_id, pack=_pack_of(repo))
        dst = outside / src.name
        shutil.move(str(src), str(dst))
        os.symlink(dst, src)
    return corrupt


def _pack_of(repo):
    return sorted(p.name for p in (repo / "packs").iterdir() if not p.is_symlink())[0][:-5] \
        if any(True for _ in (repo / "packs").iterdir()) else ""


def _tmp_link(repo, outside, image_id):
    require_symlinks()
    for i in range(5):
        p = outside / f"old-{i}"
        p.write_text("precious")
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    q = outside / f"vocker-tmp-{'0' * 32}"  # even a name vocker would pick is not deleted there
    q.write_text("precious")
    os.utime(q, (time.time() - 7200, time.time() - 7200))
    shutil.rmtree(repo / "tmp")
    os.symlink(outside, repo / "tmp")


def _dev_zero(repo, outside, image_id):
    require_symlinks()
    os.symlink("/dev/zero", repo / "images" / "x.blobs")


def _fifo(rel):
    def corrupt(repo, outside, image_id):
        p = repo / rel.format(id=image_id)
        if WINDOWS:
            pytest.skip("POSIX only: makes a FIFO (os.mkfifo)")
        if p.exists():
            p.unlink()
        os.mkfifo(p)
    return corrupt


LAYOUT = [
    # (id, corrupt, push exit, pull exit, repo init exit); 0: the command does not use
    # that entry (init only makes what is missing, through no link)
    ("tmp-is-symlink", _tmp_link, vocker.EXIT_INVALID, 0, vocker.EXIT_INVALID),
    ("images-is-symlink", _link_outside("images"),
     vocker.EXIT_INVALID, vocker.EXIT_INVALID, vocker.EXIT_INVALID),
    ("blobs-is-dev-zero", _dev_zero, vocker.EXIT_INVALID, 0, 0),
    ("index-is-fifo", _fifo("index.json"), vocker.EXIT_INVALID, vocker.EXIT_INVALID, 0),
    ("fifo-in-images", _fifo("images/{id}.blobs"), vocker.EXIT_INVALID, vocker.EXIT_INVALID, 0),
    ("manifest-is-fifo", _fifo("images/{id}.json"), 0, vocker.EXIT_INVALID, 0),
    ("packs-is-symlink", _link_outside("packs"),
     vocker.EXIT_INVALID, vocker.EXIT_INVALID, vocker.EXIT_INVALID),
    ("pack-is-symlink", _link_outside("packs/{pack}.pack"), vocker.EXIT_INVALID,
     vocker.EXIT_INVALID, 0),
    ("marker-is-symlink", _link_outside("vocker-repo.json"), vocker.EXIT_INVALID,
     vocker.EXIT_INVALID, 0),
    ("index-is-symlink", _link_outside("index.json"),
    vocker.EXIT_INVALID, vocker.EXIT_INVALID, 0),
    ("lock-is-symlink", _link_outside(".lock"), vocker.EXIT_INVALID, 0, 0),
]


@pytest.mark.parametrize("case", LAYOUT, ids=[c[0] for c in LAYOUT])
def test_hostile_repository_layout(case, tmp_path, image):
    name, corrupt, push_rc, pull_rc, init_rc = case
    home, image_id = image
    repo = pushed(tmp_path, image)
    backup = tmp_path / "backup"
    shutil.copytree(repo, backup, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    corrupt(repo, outside, image_id)
    watched = tree_snapshot(outside)
    store_before = _store_snapshot(home)
    for argv, want in ((["pull", repo, "p:1"], pull_rc),
                       (["repo", "ls", repo], pull_rc if "index" in name or "marker" in name
                        else None),
                       (["repo", "init", repo], init_rc),
                       (["push", "p:1", repo], push_rc)):  # last: push rewrites what it owns
        if want is None:
            continue
        h = home if argv[0] != "pull" else tmp_path / "pull-home"
        t0 = time.monotonic()
        p = cli(*argv, home=h, timeout=30)
        assert time.monotonic() - t0 < 20
        assert p.returncode == want, (argv, p.stderr)
        if want:
            one_line(p.stderr)
        assert tree_snapshot(outside) == watched, argv   # nothing written (or deleted) there
        assert os.listdir(h / "tmp") == []
    assert _store_snapshot(home) == store_before
    # once the layout is fixed, honest push and pull work
    shutil.rmtree(repo)
    shutil.copytree(backup, repo, symlinks=True)
    assert cli("push", "p:1", repo, home=home, timeout=60).returncode == 0
    pull_and_check(tmp_path, repo, image_id)


@needs_symlinks
def test_tmp_cleanup_deletes_only_its_own_regular_files(tmp_path, image):
    home, image_id = image
    repo = pushed(tmp_path, image)
    old = time.time() - 7200
    mine = repo / "tmp" / f"vocker-tmp-{'a' * 32}"
    other = repo / "tmp" / "notes.txt"
    target = tmp_path / "precious"
    target.write_text("keep")
    link = repo / "tmp" / f"vocker-tmp-{'b' * 32}"
    os.symlink(target, link)
    for p in (mine, other):
        p.write_text("x")
        os.utime(p, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    assert vocker.main(["--home", str(home), "push", "p:1", str(repo)]) == 0
    assert not mine.exists() and other.exists() and link.is_symlink()
    assert target.read_text() == "keep"


# ------------------------------------------------------------ class 6: lock


LOCKER = textwrap.dedent("""
    import json, os, sys, time
    import vocker
    root, me, rounds, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    while not os.path.exists(go):
        time.sleep(0.001)
    repo = vocker.RepoDir(root)
    marker = os.path.join(root, "holder")
    for i in range(rounds):
        with vocker.repo_lock(root, timeout=60):
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if held twice
            index = vocker.parse_index(repo.read("index.json", 1 << 20), root)
            index["tags"][f"{me}:r{i}"] = "0" * 64
            repo.write("index.json", vocker.index_bytes(index))
            os.close(fd)
            os.unlink(marker)
""")


def _stale_lock(repo):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (repo / ".lock").write_text(f"{dead.pid} {vocker.hostname()}\n")
    os.utime(repo / ".lock", (time.time() - 3600, time.time() - 3600))


def test_lock_three_processes_racing_on_a_stale_lock(tmp_path):
    repo = tmp_path / "repo"
    vocker.repo_init(str(repo))
    _stale_lock(repo)
    go = tmp_path / "go"
    rounds, names = 100, ("pa", "pb", "pc")
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(repo), n, str(rounds), str(go)],
                              cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in names]
    time.sleep(0.3)
    go.write_text("go")
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err   # FileExistsError here would be a second holder
    tags = json.loads((repo / "index.json").read_text())["tags"]
    assert set(tags) == {f"{n}:r{i}" for n in names for i in range(rounds)}  # no lost update
    assert (repo / ".lock").is_file()


def test_three_real_pushes_at_once_over_a_stale_lock(tmp_path):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        ids = {}
        for i in (1, 2, 3):
            src = tmp_path / f"src{i}"
            src.mkdir()
            (src / "f.txt").write_text(f"image {i}\n" * 1000)
            ids[f"t:{i}"] = vocker.commit(store, src, tags=[f"t:{i}"], kind="plain")["id"]
    target = tmp_path / "shared"
    vocker.repo_init(str(target))
    _stale_lock(target)
    procs = [subprocess.Popen([*vocker_cmd(), "--home", str(home), "push", tag, str(target)],
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for tag in ids]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert json.loads((target / "index.json").read_text())["tags"] == ids


def test_lock_held_elsewhere_times_out_with_a_conflict(tmp_path):
    repo = tmp_path / "repo"
    vocker.repo_init(str(repo))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, vocker\n"
         "with vocker.repo_lock(sys.argv[1]):\n    print('held', flush=True)\n"
         "    time.sleep(30)\n", str(repo)],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(vocker.ConflictError, match="locked by another push"):
            with vocker.repo_lock(str(repo), timeout=0.5):
                pass
        assert time.monotonic() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    with vocker.repo_lock(str(repo), timeout=5):  # a killed holder released it
        pass


# ------------------------------------------------- class 4: hostile servers


class _Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _file(self):
        path = os.path.join(self.server.root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def _endless(self, prefix=b"", filler=b"\0" * 65536, rate=None):
        w = self.wfile
        try:
            if prefix:
                w.write(prefix)
                self.server.sent += len(prefix)
            deadline = time.monotonic() + 30
            while not self.server.stop.is_set() and time.monotonic() < deadline:
                w.write(filler)
                self.server.sent += len(filler)
                if rate:
                    time.sleep(1 / rate)
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self):
        mode, pack = self.server.mode, self.path.endswith(".pack")
        self.server.ranges.append(self.headers.get("Range"))
        if mode == "silent" or (mode == "silent-pack" and pack):
            self.server.stop.wait(30)
            self.close_connection = True
            return
        if mode == "trickle":
            self.close_connection = True
            return self._endless(filler=b"H", rate=1)
        data = self._file()
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rng = self.headers.get("Range")
        if pack and mode in ("ignore-range-junk", "ignore-range-endless"):
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            return self._endless(prefix=data if mode == "ignore-range-endless" else b"")
        if rng:
            start, _, end = rng.split("=", 1)[1].partition("-")
            body = data[int(start):int(end) + 1]
            self.send_response(206)
        else:
            body = data
            self.send_response(200)
        if pack and mode == "endless-206":
            self.send_header("Connection", "close")
            self.end_headers()
            return self._endless(prefix=body)
        if pack and mode == "trickle-body":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self._endless(filler=b"\0", rate=1)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.sent += len(body)


class _HostileServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def hostile():
    servers = []

    def start(root, mode):
        srv = _HostileServer(("127.0.0.1", 0), _Hostile)
        srv.root, srv.mode, srv.sent, srv.ranges = str(root), mode, 0, []
        srv.stop = threading.Event()
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        start.last = srv
        return f"http://127.0.0.1:{srv.server_address[1]}"
    yield start
    for s in servers:
        s.stop.set()
        s.shutdown()
        s.server_close()


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setenv("VOCKER_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("VOCKER_HTTP_MIN_RATE", "1024")


SERVERS = [
    # (mode, exit code): each fails fast with the deadline set to 1 s
    ("ignore-range-junk", vocker.EXIT_INVALID),
    ("endless-206", vocker.EXIT_INVALID),
    ("trickle", vocker.EXIT_NETWORK),
    ("trickle-body", vocker.EXIT_NETWORK),
    ("silent", vocker.EXIT_NETWORK),
    ("silent-pack", vocker.EXIT_NETWORK),
]


@pytest.mark.parametrize("mode, code", SERVERS, ids=[s[0] for s in SERVERS])
def test_hostile_server_fails_fast(mode, code, tmp_path, image, hostile, short_deadline, capsys):
    home, image_id = image
    repo = pushed(tmp_path, image)
    h = tmp_path / "pull-home"
    vocker.Store(h).close()
    before = _store_snapshot(h)
    t0 = time.monotonic()
    rc, out, err = vk(capsys, "--home", h, "pull", hostile(repo, mode), "p:1")
    elapsed = time.monotonic() - t0
    assert rc == code, err
    line = one_line(err)
    if code == vocker.EXIT_NETWORK:
        assert "VOCKER_HTTP_TIMEOUT" in line
    assert elapsed < 8, elapsed
    assert os.listdir(h / "tmp") == []
    assert _store_snapshot(h) == before
    rc, out, err = vk(capsys, "--home", h, "pull", hostile(repo, "range"), "p:1")
    assert rc == 0, err


def test_server_ignoring_range_is_read_only_as_far_as_needed(tmp_path, image, hostile, capsys):
    home, image_id = image
    repo = pushed(tmp_path, image)
    pack_size = sum(p.stat().st_size for p in (repo / "packs").iterdir())
    h = tmp_path / "pull-home"
    t0 = time.monotonic()
    rc, out, err = vk(capsys, "--home", h, "pull", hostile(repo, "ignore-range-endless"), "p:1",
                      "--json")
    assert rc == 0, err
    assert time.monotonic() - t0 < 10
    assert json.loads(out)["bytes"] < pack_size + 4096   # index files + the pack, no more
    assert os.listdir(h / "tmp") == []


def test_frames_larger_than_range_max_come_in_bounded_pieces(tmp_path, hostile, capsys):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        big = make_tree(tmp_path / "src", big=vocker.RANGE_MAX + 3_000_000)
        image_id = vocker.commit(store, big, tags=["p:1"], kind="plain")["id"]
    repo = pushed(tmp_path, (home, image_id))
    url = hostile(repo, "range")
    pull_and_check(tmp_path, url, image_id)
    sizes = []
    for r in hostile.last.ranges:
        if r:
            start, _, end = r.split("=", 1)[1].partition("-")
            sizes.append(int(end) + 1 - int(start))
    assert sizes and max(sizes) <= vocker.RANGE_MAX
    pull_and_check(tmp_path, repo, image_id, "folder")


def test_bad_http_settings_are_usage_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VOCKER_HTTP_TIMEOUT", "soon")
    rc, out, err = vk(capsys, "--home", tmp_path / "h", "pull", "http://127.0.0.1:9/", "p:1")
    assert rc == vocker.EXIT_USAGE and "VOCKER_HTTP_TIMEOUT" in one_line(err)


# ------------------------------------- class 8: numbers and structures from outside


def _blobs_field(index, value):
    def corrupt(root, image_id, pack_id):
        p = root / "images" / f"{image_id}.blobs"
        lines = p.read_text().splitlines()
        parts = lines[0].split(" ")
        parts[index] = value
        lines[0] = " ".join(parts)
        p.write_text("\n".join(lines) + "\n")
    return corrupt


def _trees_length(value):
    def corrupt(root, image_id, pack_id):
        p = root / "images" / f"{image_id}.trees"
        head, _, rest = p.read_bytes().partition(b"\n")
        p.write_bytes(head.split(b" ")[0] + b" " + value.encode() + b"\n" + rest)
    return corrupt


def _index(fn):
    def corrupt(root, image_id, pack_id):
        index = json.loads((root / "index.json").read_text())
        (root / "index.json").write_bytes(fn(index, image_id))
    return corrupt


def _deep_manifest(root, image_id, pack_id):
    data = b'{"a":' * 5000 + b"1" + b"}" * 5000
    deep = hash_bytes(data)
    (root / "images" / f"{deep}.json").write_bytes(data)
    index = json.loads((root / "index.json").read_text())
    index["images"][deep] = {"kind": "plain", "python": None}
    index["tags"]["evil:1"] = deep
    (root / "index.json").write_text(json.dumps(index))


NUMBERS = [
    # (id, corrupt, command, exit code)
    ("offset-10^20", _blobs_field(3, str(10 ** 20)), "pull", vocker.EXIT_INVALID),
    ("offset-5000-digits", _blobs_field(3, "7" * 5000), "pull", vocker.EXIT_INVALID),
    ("size-negative", _blobs_field(1, "-5"), "pull", vocker.EXIT_INVALID),
    ("size-2^36", _blobs_field(1, str(1 << 36)), "pull", vocker.EXIT_INVALID),
    ("size-2^40-csize-2^39", lambda r, i, p: (_blobs_field(1, str(1 << 40))(r, i, p),
                                              _blobs_field(4, str(1 << 39))(r, i, p)),
     "pull", vocker.EXIT_ENVIRONMENT),
    ("size-2^41", _blobs_field(1, str(1 << 41)), "pull", vocker.EXIT_INVALID),
    ("tree-length-5000-digits", _trees_length("9" * 5000), "pull", vocker.EXIT_INVALID),
    ("tree-length-huge", _trees_length(str(10 ** 18)), "pull", vocker.EXIT_INVALID),
    ("deep-manifest", _deep_manifest, "pull", vocker.EXIT_INVALID),
    ("deep-index", _index(lambda idx, i: b'{"format":1,"images":{},"tags":{},"x":'
                          + b"[" * 100000 + b"]" * 100000 + b"}"), "pull", vocker.EXIT_INVALID),
    ("deep-index-ls", _index(lambda idx, i: b"[" * 100000 + b"]" * 100000), "ls",
     vocker.EXIT_INVALID),
    ("summary-list-ls", _index(lambda idx, i: json.dumps(
        {**idx, "images": {i: {"kind": ["plain"], "python": None}}}).encode()), "ls",
     vocker.EXIT_INVALID),
    ("summary-list-pull", _index(lambda idx, i: json.dumps(
        {**idx, "images": {i: {"kind": "plain", "python": [3, 11]}}}).encode()), "pull",
     vocker.EXIT_INVALID),
    ("summary-not-object", _index(lambda idx, i: json.dumps(
        {**idx, "images": {i: [1]}}).encode()), "ls", vocker.EXIT_INVALID),
]


@pytest.mark.parametrize("case", NUMBERS, ids=[c[0] for c in NUMBERS])
def test_numbers_and_structures_from_a_repository(case, tmp_path, capsys):
    name, corrupt, command, code = case
    repo = tmp_path / "repo"
    _craft_repo(repo, GOOD_TREE, GOOD_BLOBS, corrupt=corrupt)
    h = tmp_path / "h"
    argv = ["pull", repo, "evil:1"] if command == "pull" else ["repo", "ls", repo]
    t0 = time.monotonic()
    rc, out, err = vk(capsys, "--home", h, *argv)
    assert rc == code, err
    one_line(err)
    assert time.monotonic() - t0 < 10
    if command == "pull":
        assert os.listdir(h / "tmp") == []
        with vocker.Store(h) as store:
            assert vocker.list_images(store) == []
            assert store.db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
        honest = tmp_path / "honest"
        _craft_repo(honest, GOOD_TREE, GOOD_BLOBS)
        assert vk(capsys, "--home", h, "pull", honest, "evil:1")[0] == 0


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.75])
def test_truncated_archive_is_invalid_input(cut, tmp_path, image, capsys):
    home, image_id = image
    out = tmp_path / "p.vocker"
    assert vk(capsys, "--home", home, "save", "p:1", "-o", out)[0] == 0
    data = out.read_bytes()
    bad = tmp_path / "cut.vocker"
    bad.write_bytes(data[:int(len(data) * cut)])
    rc, o, err = vk(capsys, "--home", tmp_path / "h", "load", bad)
    assert rc == vocker.EXIT_INVALID, err
    one_line(err)
    assert vk(capsys, "--home", tmp_path / "h", "load", out)[0] == 0


def test_repo_ls_escapes_terminal_control_characters(tmp_path, capsys):
    repo = tmp_path / "repo"
    evil = "\x1b]0;owned\x07\x1b[2J\x9b31m\r\n"
    _craft_repo(repo, GOOD_TREE, GOOD_BLOBS, corrupt=_index(lambda idx, i: json.dumps(
        {**idx, "images": {i: {"kind": evil, "python": "3.11\x1b[0m"}}}).encode()))
    rc, out, err = vk(capsys, "--home", tmp_path / "h", "repo", "ls", repo)
    assert rc == 0, err
    assert not any(0 <= ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) <= 0x9f for c in out)
    assert len(out.strip().splitlines()) == 2 and "\\x1b]0;owned" in out
    rc, out, err = vk(capsys, "--home", tmp_path / "h", "repo", "ls", repo, "--json")
    row = json.loads(out)[0]
    assert row["kind"] == evil and row["python"] == {"version": "3.11\x1b[0m"}
