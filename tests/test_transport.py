"""Repositories (folder, file://, HTTP) and archives, verified end to end."""

import contextlib
import http.server
import json
import os
import random
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time

import pytest
import zstandard

import vocker
from conftest import (clean_env, cli, image_entries, make_venv, main_python, run, venv_script,
                      vocker_cmd)
from vocker import PH_ENV, Manifest, Tree, TreeEntry, hash_bytes

# ------------------------------------------------------------------ servers


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with Range support and injectable misbehaviour."""

    protocol_version = "HTTP/1.1"
    mode = "range"          # range | plain | html | cut-once | cut-always | 403 | 500
    state = {}

    def log_message(self, *a):
        pass

    def do_GET(self):
        mode = self.server.mode
        if mode == "403":
            return self._send(403, b"forbidden")
        if mode == "500":
            return self._send(500, b"oops")
        if mode == "html":
            return self._send(200, b"<html><body>Sign in to continue</body></html>",
                              "text/html")
        if self.path.startswith(("http://", "https://")):  # absolute form: from a proxy
            self.server.absolute = getattr(self.server, "absolute", 0) + 1
            self.path = "/" + self.path.split("/", 3)[3]
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return self._send(404, b"not found")
        with open(path, "rb") as f:
            data = f.read()
        rng = self.headers.get("Range")
        status, body = 200, data
        if rng and mode != "plain":
            start, _, end = rng.split("=", 1)[1].partition("-")
            start, end = int(start), (int(end) if end else len(data) - 1)
            status, body = 206, data[start:end + 1]
        if mode in ("cut-once", "cut-always") and self.path.endswith(".pack"):
            n = self.server.cuts = getattr(self.server, "cuts", 0) + 1
            if mode == "cut-always" or n == 1:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
        self._send(status, body)

    def _send(self, status, body, ctype="application/octet-stream"):
        self.server.sent = getattr(self.server, "sent", 0) + len(body)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture
def serve():
    servers = []

    def start(root, mode="range", tls=None):
        """Serve ``root``; ``tls``: an ssl server context (https)."""
        handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
        srv = _Server(("127.0.0.1", 0), handler)
        srv.mode = mode
        srv.sent = 0
        if tls is not None:
            srv.socket = tls.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        start.last = srv
        return f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_address[1]}"
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(vocker.time, "sleep", lambda s: None)


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images(pip_venvs, tmp_path_factory, wheelhouse):
    """A store with demo:1 and demo:2 (vockdemo 1.0 vs 2.0), pushed to a repo."""
    base = tmp_path_factory.mktemp("transport")
    v2 = make_venv(main_python(), base / "v2", ("vockdemo==2.0", "vockextra", "vockbig"),
                   wheelhouse=wheelhouse)
    home = base / "home"
    repo = base / "repo"
    with vocker.Store(home) as store:
        a = vocker.commit(store, pip_venvs[0], tags=["demo:1"])["id"]
        b = vocker.commit(store, v2, tags=["demo:2"])["id"]
        vocker.push(store, ["demo:1", "demo:2"], str(repo))
    return home, repo, a, b


def _store_snapshot(home):
    out = {}
    for dirpath, dirnames, filenames in os.walk(home):
        dirnames[:] = [d for d in dirnames if not (dirpath == str(home) and d == "tmp")]
        for n in filenames:
            if not n.startswith("vocker.db"):
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, home)] = os.path.getsize(p)
    return out


def _image_complete(store, image_id):
    for e in image_entries(store, image_id).values():
        if e.type in vocker.FILE_TYPES + vocker.TEMPLATE_TYPES:
            store.read_blob(e.ref)
    return True


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize("transport", ["folder", "file-url", "http-range", "http-plain"])
def test_round_trip_through_each_transport(transport, images, tmp_path, serve):
    home, repo, a, b = images
    location = {"folder": lambda: str(repo), "file-url": lambda: repo.as_uri(),
                "http-range": lambda: serve(repo, "range"),
                "http-plain": lambda: serve(repo, "plain")}[transport]()
    with vocker.Store(tmp_path / "home") as store:
        r = vocker.pull(store, location, ["demo:1"])
        assert r["images"][0]["id"] == a
        assert _image_complete(store, a)
        c = vocker.create(store, "demo:1", tmp_path / "env")
        assert c["image"] == a
        assert "vockdemo 1.0" in run([venv_script(tmp_path / "env", "vockdemo")]).stdout
        assert vocker.commit(store, tmp_path / "env")["id"] == a
        # pinned by full ID and by prefix
        assert vocker.pull(store, location, [b])["images"][0]["id"] == b
        again = vocker.pull(store, location, [a[:10]])
        assert again["images"][0]["present"]


def test_pull_from_python_http_server_subprocess(images, tmp_path):
    home, repo, a, b = images
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                            "127.0.0.1", "-d", str(repo)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        p = cli("pull", url, "demo:2", "--json", home=tmp_path / "h", check=True)
        assert json.loads(p.stdout)["images"][0]["id"] == b
        ls = json.loads(cli("repo", "ls", url, "--json", home=tmp_path / "h", check=True).stdout)
        assert {r["id"] for r in ls} == {a, b}
    finally:
        srv.terminate()
        srv.wait()


@pytest.mark.parametrize("mode", ["range", "plain"])
def test_only_missing_blobs_move(mode, images, tmp_path, serve):
    home, repo, a, b = images
    url = serve(repo, mode)
    server = serve.last
    with vocker.Store(tmp_path / "home") as store:
        vocker.pull(store, url, ["demo:1"])
        have = {r[0] for r in store.db.execute("SELECT id FROM blobs")}
        index = vocker.parse_blobs_file((repo / "images" / f"{b}.blobs").read_bytes(), b)
        # what B lacks lies in solid frames: the pull reads those frames whole
        lacking = sum(csize for _, _, csize in {(loc.pack, loc.offset, loc.csize)
                                                for blob, loc in index.items() if blob not in have})
        image_size = sum(loc.size for loc in index.values())
        server.sent = 0
        r = vocker.pull(store, url, ["demo:2"])
        assert r["images"][0]["fetched_blobs"] == len(set(index) - have)
        assert server.sent == r["bytes"]  # what vocker reports is what crossed the wire
        assert 0 < r["bytes"] <= 1.2 * lacking + 0.02 * image_size, (r, lacking, image_size)
        assert r["requests"] <= 10


def test_one_image_reports_one_size_and_file_count_in_every_store(pip_venvs, tmp_path):
    """size/files come from the image itself: committed again (stat cache hits),
    committed from another folder, or pulled, the same ID gives the same figures."""
    a, b = pip_venvs
    repo = str(tmp_path / "repo")
    with vocker.Store(tmp_path / "one") as one:
        first = vocker.commit(one, a, tags=["demo:1"])
        again = vocker.commit(one, a)
        vocker.push(one, ["demo:1"], repo)
        entries = image_entries(one, first["id"]).values()
        blobs = [e.ref for e in entries if e.type in vocker.FILE_TYPES + vocker.TEMPLATE_TYPES]
        sizes = one.blob_sizes(blobs)
        expected = (sum(sizes[ref] for ref in blobs), len(blobs))
        assert one.image_row(first["id"])[2:] == expected
    with vocker.Store(tmp_path / "two") as two:
        vocker.pull(two, repo, ["demo:1"])
        assert two.image_row(first["id"])[2:] == expected
    with vocker.Store(tmp_path / "three") as three:
        other = vocker.commit(three, b)
        assert three.image_row(first["id"])[2:] == expected
    assert len(set(blobs)) < len(blobs)  # shared contents: counting files, not blobs
    assert again["id"] == other["id"] == first["id"]
    for r in (first, again, other):
        assert (r["size"], r["files"]) == expected


def test_save_and_load(images, tmp_path):
    home, repo, a, b = images
    out = tmp_path / "demo.vocker"
    cli("save", "demo:1", "demo:2", "-o", out, home=home, check=True)
    assert out.is_file()
    h2 = tmp_path / "h2"
    r = json.loads(cli("load", out, "--json", home=h2, check=True).stdout)
    assert {i["id"] for i in r["images"]} == {a, b}
    again = json.loads(cli("load", out, "--json", home=h2, check=True).stdout)
    assert all(i["present"] for i in again["images"])
    with vocker.Store(h2) as store:
        assert _image_complete(store, b)
        assert set(store.tags_of(a)) == {"demo:1"}
    # saving twice gives the same bytes (no timestamps inside)
    out2 = tmp_path / "again.vocker"
    cli("save", "demo:1", "demo:2", "-o", out2, home=home, check=True)
    assert out.read_bytes() == out2.read_bytes()


# ------------------------------------------------------------ hostile input


def _craft_repo(root, entries_by_dir, blobs, tag="evil:1", corrupt=None, solid=False):
    """Write a one-image repository by hand: entries_by_dir maps a dir path to
    a list of (name, type, ref-or-content); ``solid``: all blobs in one frame,
    the listing's sixth field placing each. Returns the image ID."""
    root.mkdir(parents=True, exist_ok=True)
    vocker.repo_init(str(root))
    trees = {}

    def build(rel):
        out = []
        for name, type_, ref in entries_by_dir[rel]:
            if type_ == "d":
                ref = build(f"{rel}/{name}" if rel else name)
            elif type_ in ("f", "x", "t"):
                ref = hash_bytes(blobs[ref])
            out.append(TreeEntry(name, type_, ref))
        t = Tree.__new__(Tree)
        t.entries = sorted(out, key=lambda e: e.name.encode())
        data = t.serialize()
        trees[hash_bytes(data)] = data
        return hash_bytes(data)
    root_id = build("")
    cctx = zstandard.ZstdCompressor()
    pack, lines, offset = b"", [], 0
    pack_id = None
    frames = []
    for key, data in sorted(blobs.items()):
        c = cctx.compress(data)
        frames.append((hash_bytes(data), len(data), offset, len(c)))
        pack += c
        offset += len(c)
    if solid:
        content = [blobs[k] for k in sorted(blobs)]
        pack = cctx.compress(b"".join(content))
        ats = [sum(map(len, content[:i])) for i in range(len(content))]
        frames = [(hash_bytes(d), len(d), 0, len(pack), at) for d, at in zip(content, ats)]
    pack_id = hash_bytes(pack)
    (root / "packs" / f"{pack_id}.pack").write_bytes(pack)
    lines = [" ".join([bid, str(size), pack_id] + [str(x) for x in rest]) + "\n"
             for bid, size, *rest in sorted(frames)]
    m = Manifest("plain", root_id)
    mbytes = m.serialize()
    image_id = hash_bytes(mbytes)
    bundle = b"".join(f"{tid} {len(d)}\n".encode() + d for tid, d in sorted(trees.items()))
    (root / "images" / f"{image_id}.trees").write_bytes(bundle)
    (root / "images" / f"{image_id}.blobs").write_text("".join(lines))
    (root / "images" / f"{image_id}.json").write_bytes(mbytes)
    index = {"format": 1, "images": {image_id: {"kind": "plain", "python": None}},
             "tags": {tag: image_id}}
    (root / "index.json").write_text(json.dumps(index))
    if corrupt:
        corrupt(root, image_id, pack_id)
    return image_id


GOOD_BLOBS = {"a": b"alpha\n" * 50, "b": b"beta\n" * 50}
GOOD_TREE = {"": [("a.txt", "f", "a"), ("sub", "d", None)], "sub": [("b.txt", "f", "b")]}


def _tree(**dirs):
    t = {k: list(v) for k, v in GOOD_TREE.items()}
    t.update(dirs)
    return t


def _flip_pack(root, image_id, pack_id):
    p = root / "packs" / f"{pack_id}.pack"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _truncate_pack(root, image_id, pack_id):
    p = root / "packs" / f"{pack_id}.pack"
    p.write_bytes(p.read_bytes()[:-7])


def _edit(rel_fmt, fn):
    def corrupt(root, image_id, pack_id):
        p = root / rel_fmt.format(id=image_id, pack=pack_id)
        p.write_bytes(fn(p.read_bytes()))
    return corrupt


def _lie_sizes(data):
    lines = data.decode().splitlines()
    parts = lines[0].split()
    parts[1] = str(int(parts[1]) // 4)   # declared size smaller than the frame's
    lines[0] = " ".join(parts)
    return ("\n".join(lines) + "\n").encode()


def _lie_offset(data):
    lines = data.decode().splitlines()
    parts = lines[-1].split()
    parts[3] = "3"
    lines[-1] = " ".join(parts)
    return ("\n".join(lines) + "\n").encode()


def _drop_line(data):
    return ("\n".join(data.decode().splitlines()[1:]) + "\n").encode()


def _drop_subtree(data):
    # keep only the first record of the bundle
    head, _, rest = data.partition(b"\n")
    n = int(head.split()[1])
    return head + b"\n" + rest[:n]


def _tag_to_missing(root, image_id, pack_id):
    idx = json.loads((root / "index.json").read_text())
    idx["tags"]["evil:1"] = "0" * 64
    (root / "index.json").write_text(json.dumps(idx))


def _manifest_swap(root, image_id, pack_id):
    p = root / "images" / f"{image_id}.json"
    p.write_bytes(p.read_bytes().replace(b'"labels":{}', b'"labels":{"x":"y"}'))


def _bad_index(root, image_id, pack_id):
    (root / "index.json").write_text("{not json")


def _not_repo(root, image_id, pack_id):
    (root / "vocker-repo.json").unlink()


def _bomb(root, image_id, pack_id):
    # replace blob "a" by a frame that expands to 5 MB while the index says 300 bytes
    big = zstandard.ZstdCompressor().compress(b"\0" * (5 << 20))
    lines = (root / "images" / f"{image_id}.blobs").read_text().splitlines()
    a_id = hash_bytes(GOOD_BLOBS["a"])
    pack = root / "packs" / f"{pack_id}.pack"
    data = pack.read_bytes()
    new_lines = []
    for line in lines:
        bid, size, pk, off, cs = line.split()
        if bid == a_id:
            off, cs = str(len(data)), str(len(big))
        new_lines.append(" ".join([bid, size, pk, off, cs]))
    pack.write_bytes(data + big)
    (root / "images" / f"{image_id}.blobs").write_text("\n".join(new_lines) + "\n")


def _frame_plus_trailing(data):
    # the first frame's listed size takes in 4 bytes of the next frame
    lines = data.decode().splitlines()
    first = min(range(len(lines)), key=lambda i: int(lines[i].split()[3]))
    parts = lines[first].split()
    parts[4] = str(int(parts[4]) + 4)
    lines[first] = " ".join(parts)
    return ("\n".join(lines) + "\n").encode()


def _empty_frame_listed(data):
    lines = data.decode().splitlines()
    parts = lines[0].split()
    parts[4] = "0"
    lines[0] = " ".join(parts)
    return ("\n".join(lines) + "\n").encode()


def _solid_field(index, fn):
    """Edit field ``index`` of the solid frame's second member (in frame order)."""
    def edit(data):
        lines = sorted(data.decode().splitlines(), key=lambda line: int(line.split()[5]))
        parts = lines[1].split()
        parts[index] = str(fn(int(parts[index])))
        lines[1] = " ".join(parts)
        return ("\n".join(lines) + "\n").encode()
    return edit


def _meta_bomb(root, image_id, pack_id):
    """A listing that is one small zstd frame expanding past MAX_META."""
    cobj, zeros = zstandard.ZstdCompressor(level=1).compressobj(), bytes(1 << 20)
    parts = [cobj.compress(zeros) for _ in range((vocker.MAX_META >> 20) + 1)]
    (root / "images" / f"{image_id}.blobs").write_bytes(b"".join(parts) + cobj.flush())


HOSTILE = [
    # (id, tree, corrupt, expected exception, message fragment)
    ("solid-gap", GOOD_TREE, _edit("images/{id}.blobs", _solid_field(5, lambda at: at + 1)),
     vocker.InvalidInputError, "implausible sizes"),
    ("solid-overlap", GOOD_TREE, _edit("images/{id}.blobs", _solid_field(5, lambda at: 0)),
     vocker.InvalidInputError, "implausible sizes"),
    ("solid-over-group-max", GOOD_TREE,
     _edit("images/{id}.blobs", _solid_field(1, lambda size: vocker.GROUP_MAX)),
     vocker.InvalidInputError, "implausible sizes"),
    ("solid-member-lies", GOOD_TREE, _edit("images/{id}.blobs", _solid_field(1, lambda n: n - 1)),
     vocker.IntegrityError, "expands past"),
    ("listing-bomb", GOOD_TREE, _meta_bomb, vocker.InvalidInputError, "too large"),
    ("frame-with-trailing-bytes", GOOD_TREE, _edit("images/{id}.blobs", _frame_plus_trailing),
     vocker.IntegrityError, "after its zstd frame"),
    ("frame-listed-empty", GOOD_TREE, _edit("images/{id}.blobs", _empty_frame_listed),
     vocker.InvalidInputError, "implausible sizes"),
    ("blob-bytes-mismatch", GOOD_TREE, _flip_pack, vocker.InvalidInputError, "blob"),
    ("truncated-pack", GOOD_TREE, _truncate_pack, vocker.InvalidInputError, "truncated"),
    ("manifest-not-its-id", GOOD_TREE, _manifest_swap, vocker.IntegrityError, "manifest"),
    ("dotdot-name", _tree(sub=[("..", "f", "b")]), None, vocker.InvalidInputError, "unsafe"),
    ("dot-name", _tree(sub=[(".", "f", "b")]), None, vocker.InvalidInputError, "unsafe"),
    ("absolute-name", _tree(sub=[("/etc", "f", "b")]), None, vocker.InvalidInputError, "unsafe"),
    ("backslash-name", _tree(sub=[("..\\x", "f", "b")]), None, vocker.InvalidInputError, "unsafe"),
    ("nul-name", _tree(sub=[("a\0b", "f", "b")]), None, vocker.InvalidInputError, "unsafe"),
    ("newline-name", _tree(sub=[("a\nb", "f", "b")]), None, vocker.InvalidInputError, ""),
    ("case-collision", _tree(sub=[("B.txt", "f", "b"), ("b.txt", "f", "b")]), None,
     vocker.InvalidInputError, "collide by case"),
    ("symlink-escape", _tree(sub=[("l", "l", "../../etc/passwd".encode().hex())]), None,
     vocker.InvalidInputError, "outside the environment"),
    ("symlink-absolute", _tree(sub=[("l", "l", "/etc/passwd".encode().hex())]), None,
     vocker.InvalidInputError, "outside the environment"),
    ("symlink-drive-letter", _tree(sub=[("l", "l", "C:\\Windows".encode().hex())]), None,
     vocker.InvalidInputError, "outside the environment"),
    ("symlink-chain", _tree(sub=[("up", "l", "..".encode().hex()),
                                 ("x", "l", "up/..".encode().hex())]), None,
     vocker.InvalidInputError, "outside the environment"),
    ("symlink-template-escape", _tree(sub=[("l", "L", (PH_ENV + b"/../..").hex())]), None,
     vocker.InvalidInputError, "outside the environment"),
    ("zstd-bomb", GOOD_TREE, _bomb, vocker.IntegrityError, "expands past"),
    ("declared-size-lies", GOOD_TREE, _edit("images/{id}.blobs", _lie_sizes),
     vocker.InvalidInputError, ""),
    ("pack-index-offset-lies", GOOD_TREE, _edit("images/{id}.blobs", _lie_offset),
     vocker.InvalidInputError, "blob"),
    ("blob-index-lacks-blob", GOOD_TREE, _edit("images/{id}.blobs", _drop_line),
     vocker.InvalidInputError, "lacks"),
    ("missing-subtree", GOOD_TREE, _edit("images/{id}.trees", _drop_subtree),
     vocker.InvalidInputError, ""),
    ("tree-bundle-truncated", GOOD_TREE, _edit("images/{id}.trees", lambda d: d[:-5]),
     vocker.InvalidInputError, "truncated"),
    ("tag-to-missing-image", GOOD_TREE, _tag_to_missing, vocker.NotFoundError, "not found"),
    ("index-not-json", GOOD_TREE, _bad_index, vocker.InvalidInputError, "index.json"),
    ("not-a-repository", GOOD_TREE, _not_repo, vocker.InvalidInputError, "not a vocker repository"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_repository_is_refused_and_changes_nothing(case, tmp_path):
    name, tree, corrupt, exc, fragment = case
    repo = tmp_path / "repo"
    _craft_repo(repo, tree, GOOD_BLOBS, corrupt=corrupt, solid=name.startswith("solid"))
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        before = _store_snapshot(home)
        with pytest.raises(exc) as info:
            vocker.pull(store, str(repo), ["evil:1"])
        assert fragment in str(info.value)
        assert "\n" not in str(info.value)
        assert _store_snapshot(home) == before
        assert vocker.list_images(store) == []
        assert store.db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
        assert store.db.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
        # a later honest pull succeeds
        honest = tmp_path / "honest"
        good = _craft_repo(honest, GOOD_TREE, GOOD_BLOBS)
        assert vocker.pull(store, str(honest), ["evil:1"])["images"][0]["id"] == good
        vocker.create(store, good, tmp_path / "ok")
        assert (tmp_path / "ok" / "sub" / "b.txt").read_bytes() == GOOD_BLOBS["b"]


def test_a_solid_frame_is_read_up_to_the_last_blob_wanted(tmp_path):
    """Blobs sharing one frame: a store lacking only the first reads the frame
    no further than that blob, so damage after it does not matter; the frame
    read to its end is verified whole."""
    blobs = {"a": b"alpha\n" * 50, "b": os.urandom(300_000)}
    repo = tmp_path / "repo"
    image_id = _craft_repo(repo, GOOD_TREE, blobs, solid=True)
    listing = vocker.parse_blobs_file((repo / "images" / f"{image_id}.blobs").read_bytes(),
                                      image_id)
    assert len(vocker.frame_members(listing)) == 1
    with vocker.Store(tmp_path / "home") as store:
        vocker.pull(store, str(repo), ["evil:1"])
        vocker.create(store, image_id, tmp_path / "env")
    assert (tmp_path / "env" / "sub" / "b.txt").read_bytes() == blobs["b"]
    order = sorted(blobs)  # the order _craft_repo puts them in the frame
    first, last = (hash_bytes(blobs[k]) for k in order)
    pack = next((repo / "packs").iterdir())
    pack.write_bytes(pack.read_bytes()[:-100] + bytes(100))  # the frame's tail is garbage
    members = vocker.frame_members(listing)
    ((_, offset, csize), frame), = members.items()
    got = []
    with open(pack, "rb") as f:
        vocker.read_frame_members(f, csize, frame, {first}, lambda b, c: got.append(c),
                                  lambda b: None)
    assert b"".join(got) == blobs[order[0]]
    with open(pack, "rb") as f, pytest.raises(vocker.IntegrityError):
        vocker.read_frame_members(f, csize, frame, {last}, lambda b, c: None, lambda b: None)


@pytest.mark.parametrize("value, level", [("", 19), ("1", 1), ("19", 19), ("0", None),
                                          ("20", None), ("fast", None), ("-3", None)])
def test_push_level_comes_from_the_environment(value, level, monkeypatch):
    monkeypatch.setenv("VOCKER_PUSH_LEVEL", value)
    if level is None:
        with pytest.raises(vocker.UsageError, match="VOCKER_PUSH_LEVEL"):
            vocker.push_level()
    else:
        assert vocker.push_level() == level


def test_push_compresses_each_distribution_as_one_solid_frame(tmp_path, monkeypatch):
    """A venv-like tree: each distribution's files (package, .libs, dist-info)
    share a frame, other distributions get their own; the listing and tree
    bundle are compressed too, and a pull rebuilds the same files."""
    monkeypatch.delenv("VOCKER_PUSH_LEVEL")  # the default level, as users push
    src = tmp_path / "src"
    site = src / "lib" / "python3.11" / "site-packages"
    for dist in ("alpha", "beta"):
        for rel in (f"{dist}/__init__.py", f"{dist}/core.py", f"{dist}.libs/lib{dist}.so",
                    f"{dist}-1.0.dist-info/METADATA"):
            p = site / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f"# {rel}\n".encode() + os.urandom(2000))
    (src / "README").write_text("top\n")
    home, repo = tmp_path / "home", tmp_path / "repo"
    with vocker.Store(home) as store:
        image_id = vocker.commit(store, src, tags=["d:1"], kind="plain")["id"]
        vocker.push(store, ["d:1"], str(repo))
    for ext in ("blobs", "trees"):
        assert (repo / "images" / f"{image_id}.{ext}").read_bytes()[:4] == vocker.ZSTD_MAGIC
    listing = vocker.parse_blobs_file((repo / "images" / f"{image_id}.blobs").read_bytes(),
                                      image_id)
    frames = vocker.frame_members(listing)
    by_frame = {key: {m[2] for m in members} for key, members in frames.items()}
    for dist in ("alpha", "beta"):
        ids = {hash_bytes(p.read_bytes()) for p in site.glob(f"{dist}[.-]*/*")} | \
              {hash_bytes(p.read_bytes()) for p in (site / dist).iterdir()}
        assert len(ids) == 4 and ids in by_frame.values()
    assert len(frames) == 3  # alpha, beta, and the top folder's file
    with vocker.Store(tmp_path / "h2") as store:
        vocker.pull(store, str(repo), ["d:1"])
        vocker.create(store, "d:1", tmp_path / "out")

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(tmp_path / "out") == files(src)


def test_windows_reserved_names_refused_for_a_windows_target(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    _craft_repo(repo, _tree(sub=[("CON.txt", "f", "b")]), GOOD_BLOBS)
    monkeypatch.setattr(vocker, "WINDOWS", True)
    with vocker.Store(tmp_path / "home") as store:
        with pytest.raises(vocker.InvalidInputError, match="reserved on Windows"):
            vocker.pull(store, str(repo), ["evil:1"])
        assert vocker.list_images(store) == []


@pytest.mark.parametrize("mode, exc, fragment", [
    ("html", vocker.InvalidInputError, "error page"),
    ("403", vocker.NetworkError, "access denied"),
    ("500", vocker.NetworkError, "HTTP 500"),
    ("cut-always", vocker.VockerError, ""),
])
def test_misbehaving_server_is_refused(mode, exc, fragment, images, tmp_path, serve):
    home, repo, a, b = images
    url = serve(repo, mode)
    with vocker.Store(tmp_path / "home") as store:
        with pytest.raises(exc) as info:
            vocker.pull(store, url, ["demo:1"])
        assert fragment in str(info.value)
        assert vocker.list_images(store) == []
        # and an honest server afterwards works
        assert vocker.pull(store, serve(repo, "range"), ["demo:1"])["images"][0]["id"] == a


def test_connection_cut_half_way_is_resumed(images, tmp_path, serve):
    home, repo, a, b = images
    url = serve(repo, "cut-once")
    with vocker.Store(tmp_path / "home") as store:
        r = vocker.pull(store, url, ["demo:1"])
        assert r["images"][0]["id"] == a and _image_complete(store, a)


def test_cli_errors_for_repositories(images, tmp_path, serve):
    home, repo, a, b = images
    p = cli("pull", serve(repo, "403"), "demo:1", home=tmp_path / "h")
    assert p.returncode == vocker.EXIT_NETWORK and len(p.stderr.strip().splitlines()) == 1
    p = cli("pull", str(repo), "nosuch:1", home=tmp_path / "h")
    assert p.returncode == vocker.EXIT_NOT_FOUND
    p = cli("pull", str(tmp_path / "nowhere"), "demo:1", home=tmp_path / "h")
    assert p.returncode == vocker.EXIT_NOT_FOUND
    bad = tmp_path / "bad.vocker"
    bad.write_bytes(b"this is not a tar file" * 100)
    p = cli("load", bad, home=tmp_path / "h")
    assert p.returncode == vocker.EXIT_INVALID and "not a vocker archive" in p.stderr
    p = cli("push", "demo:1", "http://example.invalid/repo", home=home)
    assert p.returncode == vocker.EXIT_USAGE


# ------------------------------------------------------------ interruption


def _repo_consistent(repo):
    index = json.loads((repo / "index.json").read_text())
    for tag, image_id in index["tags"].items():
        assert image_id in index["images"]
    for image_id in index["images"]:
        m = (repo / "images" / f"{image_id}.json").read_bytes()
        assert hash_bytes(m) == image_id
        blobs = vocker.parse_blobs_file((repo / "images" / f"{image_id}.blobs").read_bytes(),
                                        image_id)
        trees = vocker.parse_trees_file((repo / "images" / f"{image_id}.trees").read_bytes(),
                                        image_id)
        need = vocker.check_image_trees(trees, Manifest.parse(m, image_id).root)
        assert need <= set(blobs)
        for loc in blobs.values():
            assert (repo / "packs" / f"{loc.pack}.pack").stat().st_size >= loc.offset + loc.csize


def _kill_randomly(cmd, rng):
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.05, 0.6))
    proc.kill()
    proc.wait()


def test_interrupted_push_and_pull_leave_both_sides_consistent(images, tmp_path):
    home, repo, a, b = images
    rng = random.Random(1234)
    target = tmp_path / "repo"
    for _ in range(6):
        _kill_randomly([*vocker_cmd(), "--home", str(home), "push", "demo:1", "demo:2",
                        str(target)], rng)
        if (target / "index.json").exists():
            _repo_consistent(target)
    assert cli("push", "demo:1", "demo:2", str(target), home=home).returncode == 0
    _repo_consistent(target)
    h2 = tmp_path / "h2"
    for _ in range(6):
        _kill_randomly([*vocker_cmd(), "--home", str(h2), "pull", str(target), "demo:1",
                        "demo:2"], rng)
        if (h2 / "vocker.db").exists():
            with vocker.Store(h2) as store:
                for image in vocker.list_images(store):
                    assert _image_complete(store, image["id"])
    cli("pull", str(target), "demo:1", "demo:2", "--json", home=h2, check=True)
    with vocker.Store(h2) as store:
        assert {i["id"] for i in vocker.list_images(store)} == {a, b}
        assert _image_complete(store, a) and _image_complete(store, b)


# ------------------------------------------------------ nothing is executed


def test_pull_load_ls_inspect_execute_nothing(images, tmp_path, serve, monkeypatch):
    home, repo, a, b = images

    def forbidden(*a, **kw):
        raise AssertionError("a process was started")
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    with vocker.Store(tmp_path / "home") as store:
        vocker.pull(store, serve(repo), ["demo:1"])
        vocker.repo_ls(str(repo))
        vocker.inspect(store, "demo:1")
        out = tmp_path / "x.vocker"
        vocker.save(store, ["demo:1"], str(out))
        with vocker.Store(tmp_path / "home2") as store2:
            vocker.load(store2, str(out))
            vocker.inspect(store2, a)


def test_two_developers_pushing_at_once(images, tmp_path):
    home, repo, a, b = images
    target = tmp_path / "shared"
    procs = [subprocess.Popen([*vocker_cmd(), "--home", str(home), "push", tag, str(target)],
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for tag in ("demo:1", "demo:2")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    _repo_consistent(target)
    index = json.loads((target / "index.json").read_text())
    assert index["tags"] == {"demo:1": a, "demo:2": b}


def test_lock_left_by_a_killed_push_is_broken(images, tmp_path):
    home, repo, a, b = images
    target = tmp_path / "repo"
    vocker.repo_init(str(target))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (target / ".lock").write_text(f"{dead.pid} {vocker.hostname()}\n")
    p = cli("push", "demo:1", str(target), home=home, timeout=60)
    assert p.returncode == 0, p.stderr
    # the lock is an OS lock on a file that stays: nothing to break, nothing to delete
    assert (target / ".lock").is_file()
    assert json.loads((target / "index.json").read_text())["tags"] == {"demo:1": a}


# ------------------------------------------------------------------ proxies


class _Proxy(socketserver.StreamRequestHandler):
    """A forward proxy: CONNECT tunnels, and absolute-form requests relayed to
    their server; it records (method, target, Proxy-Authorization)."""

    def handle(self):
        head = [self.rfile.readline()]
        while head[-1] not in (b"\r\n", b"\n", b""):
            head.append(self.rfile.readline())
        method, target, _ = head[0].decode("latin-1").split(" ", 2)
        auth = next((h.split(b":", 1)[1].strip().decode() for h in head[1:]
                     if h.lower().startswith(b"proxy-authorization:")), None)
        self.server.seen.append((method, target, auth))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
        else:
            host, port = target.split("/")[2].rsplit(":", 1)
        up = socket.create_connection((host, int(port)))
        if method == "CONNECT":
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up.sendall(b"".join(head))
        self.wfile.flush()
        pump = threading.Thread(target=self._pump, args=(self.rfile, up), daemon=True)
        pump.start()
        while True:
            data = up.recv(65536)
            if not data:
                break
            self.wfile.write(data)
            self.wfile.flush()
        up.close()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.read1(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Proxy)
    srv.daemon_threads, srv.seen = True, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_pull_through_an_http_proxy_and_no_proxy(images, tmp_path, serve, proxy, monkeypatch):
    home, repo, a, b = images
    url = serve(repo)
    monkeypatch.setenv("HTTP_PROXY", f"http://me:s%40cret@127.0.0.1:{proxy.server_address[1]}")
    with vocker.Store(tmp_path / "home") as store:
        assert vocker.pull(store, url + "/", ["demo:1"])["images"][0]["id"] == a
        assert _image_complete(store, a)
    assert proxy.seen and all(m == "GET" and t.startswith(url + "/") for m, t, _ in proxy.seen)
    assert {auth for _, _, auth in proxy.seen} == {"Basic bWU6c0BjcmV0"}  # me:s@cret
    assert serve.last.absolute >= len(proxy.seen)
    n = len(proxy.seen)
    monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")
    with vocker.Store(tmp_path / "home2") as store:
        assert vocker.pull(store, url, ["demo:2"])["images"][0]["id"] == b
    assert len(proxy.seen) == n  # NO_PROXY: straight to the server


@pytest.fixture
def tls_files(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the https proxy test makes its certificate with openssl, not found here")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    return cert, key


def test_https_pull_goes_through_a_connect_tunnel(images, tmp_path, serve, proxy, tls_files,
                                                  monkeypatch):
    home, repo, a, b = images
    cert, key = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    url = serve(repo, tls=ctx)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("https_proxy", f"127.0.0.1:{proxy.server_address[1]}")
    with vocker.Store(tmp_path / "home") as store:
        r = vocker.pull(store, url, ["demo:1"])
        assert r["images"][0]["id"] == a and _image_complete(store, a)
    port = serve.last.server_address[1]
    assert proxy.seen and {(m, t) for m, t, _ in proxy.seen} == {("CONNECT", f"127.0.0.1:{port}")}


@pytest.mark.parametrize("value", ["socks5://127.0.0.1:1080", "http://127.0.0.1:notaport"])
def test_a_proxy_vocker_cannot_use_is_one_line(images, tmp_path, serve, value):
    home, repo, a, b = images
    env = {"HTTP_PROXY": value}
    p = run([*vocker_cmd(), "--home", tmp_path / "h", "pull", serve(repo), "demo:1"],
            env=clean_env(env), check=False)
    assert p.returncode == vocker.EXIT_USAGE and "HTTP_PROXY" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_frame_bigger_than_the_spool_goes_through_a_temp_file(tmp_path):
    """A group whose compressed frame outgrows WIRE_SPOOL waits on disk, not
    in memory; the pack is the same, and nothing is left in the store's tmp/."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    big = os.urandom(vocker.WIRE_SPOOL + (1 << 20))  # incompressible: the frame is as big
    (src / "pkg" / "big.bin").write_bytes(big)
    (src / "pkg" / "small.txt").write_text("small\n")
    home, repo = tmp_path / "home", tmp_path / "repo"
    with vocker.Store(home) as store:
        vocker.commit(store, src, tags=["s:1"], kind="plain")
        vocker.push(store, ["s:1"], str(repo))
        assert os.listdir(store.tmp_dir) == []
    packs = list((repo / "packs").glob("*.pack"))
    assert len(packs) == 1 and packs[0].stat().st_size > vocker.WIRE_SPOOL
    with vocker.Store(tmp_path / "h2") as store:
        vocker.pull(store, str(repo), ["s:1"])
        vocker.create(store, "s:1", tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "big.bin").read_bytes() == big


def _holding(budget, n, inside, started, release):
    with budget.hold(n):
        inside.append(n)
        started.set()
        release.wait(5)
        inside.remove(n)


@pytest.mark.parametrize("first,second,together", [
    (60, 40, True),     # both fit the limit of 100
    (60, 50, False),    # the second waits for the first
    (150, 10, False),   # bigger than the limit: runs, alone
])
def test_compression_budget_bounds_what_threads_hold_at_once(first, second, together):
    budget = vocker._Budget(100)
    inside, release = [], threading.Event()
    started = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=_holding, args=(budget, n, inside, ev, release))
               for n, ev in zip((first, second), started)]
    threads[0].start()
    assert started[0].wait(5)
    threads[1].start()
    assert started[1].wait(0.3) == together
    release.set()
    for t in threads:
        t.join(5)
    assert started[1].is_set() and inside == [] and budget.used == 0


def test_frame_memory_grows_with_the_frame_and_the_level():
    """The bound push holds per frame: above the zstd window it compresses
    with, more at high levels, and no more for frames past the window."""
    mb = 1 << 20
    for total in (4 * mb, 64 * mb, 128 * mb):
        assert vocker.frame_memory(total, 19) > vocker.frame_memory(total, 3) > total // 2
    assert vocker.frame_memory(512 * mb, 19) == vocker.frame_memory(128 * mb, 19)
    assert vocker.frame_memory(4 * mb, 19) < vocker.frame_memory(64 * mb, 19)


def test_a_blob_bigger_than_a_group_streams_through_push_and_pull(tmp_path):
    """A blob over GROUP_MAX is its own frame, compressed as it is read and
    decompressed as it arrives; it comes back byte for byte."""
    src = tmp_path / "src"
    src.mkdir()
    block = os.urandom(1 << 20)
    with open(src / "huge.bin", "wb") as f:
        for i in range(vocker.GROUP_MAX // len(block) + 1):
            f.write(block[i:] + block[:i])  # repeats the window sees: a small pack
    (src / "small.txt").write_text("small\n")
    home, repo = tmp_path / "home", tmp_path / "repo"
    with vocker.Store(home) as store:
        image = vocker.commit(store, src, tags=["h:1"], kind="plain")["id"]
        vocker.push(store, ["h:1"], str(repo))
    listing = vocker.parse_blobs_file((repo / "images" / f"{image}.blobs").read_bytes(), image)
    huge = hash_bytes((src / "huge.bin").read_bytes())
    assert listing[huge].size > vocker.GROUP_MAX
    assert len(vocker.frame_members(listing)[listing[huge].pack, listing[huge].offset,
                                             listing[huge].csize]) == 1
    with vocker.Store(tmp_path / "h2") as store:
        vocker.pull(store, str(repo), ["h:1"])
        vocker.create(store, "h:1", tmp_path / "out")
    assert hash_bytes((tmp_path / "out" / "huge.bin").read_bytes()) == huge
