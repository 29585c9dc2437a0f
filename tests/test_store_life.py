"""The store's life (issue 10): what rmi may remove, what gc removes, and
what both must keep."""

import json
import os
import random
import subprocess
import sys
import time

import pytest

import vocker
import soak
from conftest import (REPO, WINDOWS, clean_env, cli, image_entries, main_python, make_venv,
                      vocker_cmd)


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


# ------------------------------------------------------------------ gc

def _disk_usage(path):
    """Bytes a folder takes on disk (du -s), each inode once."""
    seen, total = set(), 0
    for d, dirs, files in os.walk(path):
        for n in [*dirs, *files, "."]:
            st = os.lstat(os.path.join(d, n))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def _plain(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def _readable(store, image_id):
    """Every blob of the image reads back and verifies."""
    blobs = [e.ref for e in image_entries(store, image_id).values()
             if e.type in vocker.FILE_TYPES + vocker.TEMPLATE_TYPES]
    for b in blobs:
        store.read_blob(b)
    return len(blobs)


def test_gc_after_rm_and_rmi_of_everything_leaves_at_most_1_mib(tmp_path, big_venv):
    venv, home = big_venv, tmp_path / "home"
    image = cli("commit", str(venv), "-q", home=home, check=True).stdout.strip()
    for c in ("c1", "c2"):
        cli("create", image, str(tmp_path / c), home=home, check=True)
    before = _disk_usage(home)
    r = json.loads(cli("gc", "--json", home=home, check=True).stdout)
    assert r["blobs"] == r["trees"] == r["pool_files"] == 0   # everything is in use
    cli("rm", str(tmp_path / "c1"), str(tmp_path / "c2"), home=home, check=True)
    cli("rmi", image, home=home, check=True)
    dry = json.loads(cli("gc", "--dry-run", "--json", home=home, check=True).stdout)
    assert _disk_usage(home) >= before - (1 << 20)           # a dry run removes nothing
    assert dry["dry_run"] and dry["blobs"] > 100 and dry["bytes"] > 0.8 * (before - (1 << 20))
    r = json.loads(cli("gc", "--json", home=home, check=True).stdout)
    assert {k: v for k, v in r.items() if k != "dry_run"} == \
        {k: v for k, v in dry.items() if k != "dry_run"}
    left = sorted((os.lstat(os.path.join(d, n)).st_size, os.path.relpath(os.path.join(d, n), home))
                  for d, _, ns in os.walk(home) for n in ns)
    assert _disk_usage(home) <= 1 << 20, left[-8:]
    again = cli("gc", home=home, check=True).stdout
    assert again.startswith("freed 0 B: 0 blobs, 0 trees, 0 packs")


def test_gc_repacks_a_pack_half_of_whose_blobs_are_dead(tmp_path):
    home = tmp_path / "home"
    shared, only_a = b"shared\n" * 500, b"only in a\n" * 500
    with vocker.Store(home) as store:
        a = vocker.commit(store, _plain(tmp_path / "a", {"s": shared, "x": only_a}),
                          kind="plain")["id"]
        b = vocker.commit(store, _plain(tmp_path / "b", {"s": shared, "y": b"b\n" * 99}),
                          kind="plain")["id"]
        packs = sorted(os.listdir(store.packs_dir))
        vocker.remove_images(store, [a])
        r = vocker.gc(store)
        assert (r["blobs"], r["repacked"], r["packs"]) == (1, 1, 0)
        assert len(os.listdir(store.packs_dir)) == 2 and sorted(os.listdir(store.packs_dir)) != packs
        assert _readable(store, b) == 2
        vocker.create(store, b, tmp_path / "c")
    assert (tmp_path / "c" / "s").read_bytes() == shared


def test_gc_keeps_what_a_container_left_without_its_image_still_links(tmp_path):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        image = vocker.commit(store, _plain(tmp_path / "a", {"f": b"mine\n" * 300}),
                              kind="plain")["id"]
        vocker.create(store, image, tmp_path / "c", link_mode="hardlink")
        vocker.remove_images(store, [image], force=True)
        r = vocker.gc(store)
        assert r["blobs"] == 1 and r["pool_files"] == 0       # the container links it
        assert (tmp_path / "c" / "f").read_bytes() == b"mine\n" * 300
        assert vocker.commit(store, tmp_path / "c", kind="plain")["id"] == image


def test_gc_and_writers_wait_for_each_other(tmp_path):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        vocker.commit(store, _plain(tmp_path / "a", {"f": b"x"}), kind="plain")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, vocker\n"
         "with vocker.Store(sys.argv[1]) as s, s.writing():\n"
         "    print('held', flush=True); time.sleep(2)\n", str(home)],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with vocker.Store(home) as store:
            store.GC_WAIT = 0.3
            with pytest.raises(vocker.ConflictError, match="in use"):
                vocker.gc(store)
            store.GC_WAIT = 30
            t0 = time.monotonic()
            vocker.gc(store)                                   # waits for the writer
            assert time.monotonic() - t0 > 0.5
    finally:
        holder.wait(timeout=30)


def test_a_killed_gc_leaves_a_working_store_that_the_next_gc_finishes(tmp_path):
    rng = random.Random(7)
    home = tmp_path / "home"
    files = {f"m{i}.txt": (f"file {i}\n" * (50 + i)).encode() for i in range(300)}
    with vocker.Store(home) as store:
        keep = vocker.commit(store, _plain(tmp_path / "k", dict(list(files.items())[:150])),
                             kind="plain")["id"]
    for trial in range(4):
        with vocker.Store(home) as store:
            gone = vocker.commit(store, _plain(tmp_path / f"g{trial}", {
                **files, "t": str(trial).encode()}), kind="plain")["id"]
            vocker.create(store, gone, tmp_path / f"c{trial}")
            vocker.remove_container(store, tmp_path / f"c{trial}")
            vocker.remove_images(store, [gone])
        p = subprocess.Popen([*vocker_cmd(), "--home", str(home), "gc"], env=clean_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.4))
        p.kill()
        p.wait()
        with vocker.Store(home) as store:
            assert _readable(store, keep) == 150
    with vocker.Store(home) as store:
        vocker.gc(store)
        assert vocker.gc(store)["blobs"] == 0
        assert _readable(store, keep) == 150
        vocker.create(store, keep, tmp_path / "final")
    assert (tmp_path / "final" / "m7.txt").read_bytes() == files["m7.txt"]


def test_gc_removes_what_killed_runs_left(tmp_path):
    """An unrecorded pack (a commit killed before its record), a loose blob
    file no row names, staging in tmp/, and a dead create's hidden folder."""
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        image = vocker.commit(store, _plain(tmp_path / "a", {"f": b"kept\n" * 99}),
                              kind="plain")["id"]
        orphan_pack = os.path.join(store.packs_dir, "ab" * 32 + ".pack")
        loose = os.path.join(store.blobs_dir, "cd", "cd" * 32)
        os.makedirs(os.path.dirname(loose))
        for path in (orphan_pack, loose, os.path.join(store.tmp_dir, "pack-left")):
            with open(path, "wb") as f:
                f.write(b"x" * 5000)
        stage = tmp_path / ".web.vocker-99999-dead"
        (stage / "sub").mkdir(parents=True)
        store.add_pending_create(str(tmp_path / "web"), str(stage), vocker.hostname())
        with store.transaction() as db:   # its process is gone
            db.execute("UPDATE pending_creates SET pid=?", (2 ** 22 + 12345,))
        r = vocker.gc(store)
        assert (r["packs"], r["tmp"], r["blobs"]) == (1, 2, 0) and r["bytes"] >= 15000
        assert not any(os.path.exists(p) for p in (orphan_pack, loose, stage))
        assert os.listdir(store.tmp_dir) == [] and _readable(store, image) == 1


_WORKER = r"""
import sys, vocker
home, kind, base, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import os
with vocker.Store(home) as store:
    for i in range(rounds):
        if kind.startswith("commit"):
            d = os.path.join(base, f"{kind}-{i}")
            os.makedirs(d)
            for j in range(20):   # half shared by every worker, half its own
                data = f"shared {j}\n" if j % 2 else f"{kind} {i} {j}\n"
                with open(os.path.join(d, f"f{j}.txt"), "w") as f:
                    f.write(data * 200)
            vocker.commit(store, d, kind="plain", tags=[f"{kind}:{i}"])
        elif kind.startswith("create"):
            vocker.create(store, "base:1", os.path.join(base, f"{kind}-{i}"))
        else:
            vocker.gc(store)
print("done", flush=True)
"""


def test_gc_while_commits_and_creates_run_loses_nothing(tmp_path):
    home = tmp_path / "home"
    with vocker.Store(home) as store:
        vocker.commit(store, _plain(tmp_path / "base", {f"b{j}": b"base %d\n" % j * 300
                                                        for j in range(30)}),
                      kind="plain", tags=["base:1"])
        vocker.push(store, ["base:1"], str(tmp_path / "repo"))  # creates drop its frames
        for old in range(3):   # garbage for gc to find meanwhile
            gone = vocker.commit(store, _plain(tmp_path / f"old{old}", {"x": b"old %d" % old}),
                                 kind="plain")["id"]
            vocker.remove_images(store, [gone])
    rounds = 10
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(home), kind, str(tmp_path),
                               str(rounds)], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for kind in ("commit-a", "commit-b", "create-a", "create-b", "gc")]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip() == "done", err[-2000:]
    with vocker.Store(home) as store:
        images = vocker.list_images(store)
        assert len(images) == 1 + 2 * rounds
        for image in images:
            assert _readable(store, image["id"]) >= 20 or image["tags"] == ["base:1"]
        vocker.gc(store)
        r = vocker.verify(store, full=True)
        assert not r["damaged"] and r["checked"]["images"] == len(images), r["problems"][:3]
        base = {e.ref for e in image_entries(store, store.resolve_image("base:1")).values()
                if e.type in vocker.FILE_TYPES}
        assert {store.blob_table()[b][2] for b in base} == {vocker.POOL_ONLY}
        for image in images:   # every image is still complete, and creatable
            vocker.create(store, image["id"], tmp_path / "check" / image["short_id"])


# ------------------------------------------------------------------ df

def test_df_splits_each_images_bytes_into_unique_and_shared(tmp_path):
    home = tmp_path / "home"
    shared, mine, yours = b"shared\n" * 4000, b"a only\n" * 3000, b"b only\n" * 1000
    with vocker.Store(home) as store:
        a = vocker.commit(store, _plain(tmp_path / "a", {"s": shared, "x": mine}),
                          kind="plain", tags=["a:1"])["id"]
        b = vocker.commit(store, _plain(tmp_path / "b", {"s": shared, "y": yours}),
                          kind="plain", tags=["b:1"])["id"]
        vocker.create(store, a, tmp_path / "linked", link_mode="hardlink")
        vocker.create(store, a, tmp_path / "copied", link_mode="copy")
        gone = vocker.commit(store, _plain(tmp_path / "g", {"z": b"gone\n" * 999}),
                             kind="plain")["id"]
        vocker.remove_images(store, [gone])
        r = vocker.disk_usage(store)
        rows = {i["id"]: i for i in r["images"]}
        assert rows[a]["shared"] == rows[b]["shared"] > 0         # the one blob they share
        assert rows[a]["unique"] > rows[b]["unique"] > 0          # a's own blob is bigger
        assert (rows[a]["size"], rows[a]["containers"]) == (len(shared) + len(mine), 2)
        assert rows[a]["saved"] == len(shared) + len(mine)        # the linked one; a copy saves 0
        assert rows[b]["containers"] == rows[b]["saved"] == 0
        assert r["reclaimable"] == vocker.gc(store, dry_run=True)["bytes"] > 0
        assert r["store"] >= rows[a]["unique"] + rows[b]["unique"] + rows[a]["shared"]
    out = cli("df", home=home, check=True).stdout.splitlines()
    assert out[0].split()[:3] == ["IMAGE", "ID", "NAME:TAG"] and len(out) == 4
    assert out[-1].startswith("store: ") and "2 containers" in out[-1]


def test_two_stores_of_one_home_in_one_process_share_the_lock(tmp_path):
    """A record lock belongs to the process: a second Store of the same home
    (opened while the first writes) neither drops it nor takes it beside it."""
    home = tmp_path / "home"
    with vocker.Store(home) as a, a.writing():
        with vocker.Store(home) as b:
            b.GC_WAIT = 0.2
            with pytest.raises(vocker.ConflictError, match="in use"):
                vocker.gc(b)
        probe = subprocess.run(   # another process sees the lock still held
            [sys.executable, "-c", "import sys, vocker\ns = vocker.Store(sys.argv[1])\n"
             "s.GC_WAIT = 0.2\ntry:\n    vocker.gc(s)\nexcept vocker.ConflictError:\n"
             "    print('busy')\n", str(home)], cwd=REPO, env=clean_env(),
            capture_output=True, text=True, timeout=60)
        assert probe.stdout.strip() == "busy", probe.stderr
    with vocker.Store(home) as b:
        assert vocker.gc(b)["blobs"] == 0


# ------------------------------------------------------------------ one copy of each byte

def _frames(home, image_id):
    """(pool-only file blobs, framed file blobs, framed template blobs) of an image."""
    with vocker.Store(str(home)) as store:
        table = store.blob_table()
        entries = image_entries(store, image_id).values()
    files = {e.ref for e in entries if e.type in vocker.FILE_TYPES} - {vocker.EMPTY_ID}
    templates = {e.ref for e in entries if e.type in vocker.TEMPLATE_TYPES}
    pooled = {b for b in files if table[b][2] == vocker.POOL_ONLY}
    return pooled, files - pooled, {b for b in templates if table[b][2] != vocker.POOL_ONLY}


@pytest.fixture(scope="module")
def big_venv(tmp_path_factory, wheelhouse):
    """A pip venv with vockdemo and vockbig, made once (no test changes it)."""
    return make_venv(main_python(), tmp_path_factory.mktemp("life") / "env",
                     ["vockdemo==1.0", "vockbig"], wheelhouse=wheelhouse)


@pytest.fixture
def pushed(tmp_path, big_venv):
    """The venv committed as web:1 and pushed to repo/; container c1."""
    home, repo, venv = tmp_path / "home", tmp_path / "repo", big_venv
    image = cli("commit", str(venv), "-q", "-t", "web:1", home=home, check=True).stdout.strip()
    assert cli("push", "web:1", str(repo), home=home).returncode == 0
    cli("create", "web:1", str(tmp_path / "c1"), home=home, check=True)
    return home, repo, image, tmp_path


def test_a_committed_image_never_pushed_keeps_its_frames(tmp_path, big_venv):
    home = tmp_path / "home"
    image = cli("commit", str(big_venv), "-q", home=home, check=True).stdout.strip()
    cli("create", image, str(tmp_path / "c1"), home=home, check=True)
    pooled, framed, _ = _frames(home, image)
    assert not pooled and len(framed) > 50      # nothing else could repair the pool
    assert json.loads(cli("gc", "--json", home=home, check=True).stdout)["frames"] == 0
    cli("push", image, str(tmp_path / "repo"), home=home, check=True)
    r = json.loads(cli("gc", "--json", home=home, check=True).stdout)
    assert r["frames"] == len(framed) and r["bytes"] > 0
    assert _frames(home, image)[1] == set()
    assert cli("verify", "--full", home=home).returncode == 0


def test_after_create_a_pushed_image_keeps_one_copy_and_still_works(pushed):
    home, repo, image, base = pushed
    pooled, framed, templates = _frames(home, image)
    assert len(pooled) > 50 and framed == set() and templates
    packs = sum(os.path.getsize(home / "packs" / n) for n in os.listdir(home / "packs"))
    pool = _disk_usage(home / "pool")
    # only the templates' frames are left (level 1: 1.0% of the pool on Windows, launchers)
    assert packs < 0.02 * pool, (packs, pool)
    assert cli("verify", "--full", home=home).returncode == 0
    cli("create", "web:1", str(base / "c2"), "--link-mode", "copy", home=home, check=True)
    with vocker.Store(str(home)) as store:
        assert _readable(store, image) > 50
    # push and save compress from the pool; what arrives is the same image
    assert cli("push", "web:1", str(base / "repo2"), home=home).returncode == 0
    assert cli("save", "web:1", "-o", str(base / "a.tar"), home=home).returncode == 0
    for src in (base / "repo2", base / "a.tar"):
        home2 = base / ("h-" + src.name)
        verb = ["pull", str(src), "web:1"] if src.is_dir() else ["load", str(src)]
        cli(*verb, home=home2, check=True)
        cli("create", "web:1", str(base / ("c-" + src.name)), home=home2, check=True)
        again = cli("commit", str(base / ("c-" + src.name)), "-q", home=home2, check=True)
        assert again.stdout.strip() == image


def test_an_edit_of_the_one_copy_is_named_and_repaired_from_the_repository(pushed):
    home, repo, image, base = pushed
    f = next(p for p in (base / "c1").rglob("m05.py"))
    rel = f.relative_to(base / "c1").as_posix()
    os.chmod(f, 0o644)                              # what root (or Windows' attribute) allows
    with open(f, "ab") as out:
        out.write(b"# edited through the hardlink\n")
    p = cli("verify", "--json", home=home)
    r = json.loads(p.stdout)
    assert p.returncode == vocker.EXIT_DAMAGED
    assert {q["object"] for q in r["problems"]} == {"pool", "blob"}
    blob = next(q for q in r["problems"] if q["object"] == "blob")
    assert str(repo) in blob["problem"] and blob["image"] == image
    pool = next(q for q in r["problems"] if q["object"] == "pool")
    assert pool["links"] == [str(base / "c1" / rel)]
    # nothing local holds it: create refuses, in one line, and says how to repair
    c = cli("create", "web:1", str(base / "c2"), home=home)
    assert c.returncode == vocker.IntegrityError.exit_code and c.stderr.count("\n") == 1
    assert "verify --repair --from" in c.stderr and not (base / "c2").exists()
    assert cli("verify", "--repair", home=home).returncode == vocker.EXIT_DAMAGED
    p = cli("verify", "--repair", "--from", str(repo), "--json", home=home)
    assert p.returncode == 0, p.stdout
    assert cli("verify", "--full", home=home).returncode == 0
    cli("create", "web:1", str(base / "c3"), home=home, check=True)
    assert b"edited through" not in (base / "c3" / rel).read_bytes()
    assert cli("commit", str(base / "c3"), "-q", home=home, check=True).stdout.strip() == image


def test_a_lost_pool_file_of_a_pool_only_blob_is_named(pushed):
    home, repo, image, base = pushed
    cli("rm", str(base / "c1"), home=home, check=True)
    pooled = _frames(home, image)[0]
    victim = next(p for p in sorted((home / "pool").rglob("*"))
                  if p.name in pooled and p.stat().st_size > 1000)
    os.chmod(victim, 0o644)
    victim.unlink()
    p = cli("verify", "--json", home=home)
    r = json.loads(p.stdout)
    assert p.returncode == vocker.EXIT_DAMAGED
    assert [(q["object"], q["id"]) for q in r["problems"]] == [("blob", victim.name)]
    assert "missing" in r["problems"][0]["problem"]
    assert cli("verify", "--repair", "--from", str(repo), home=home).returncode == 0
    cli("create", "web:1", str(base / "c2"), home=home, check=True)
    assert cli("verify", "--full", home=home).returncode == 0


# ------------------------------------------------------------------ kill trials

@pytest.mark.skipif(WINDOWS, reason="kill trials run in the Linux lane; bench/bench_soak.py "
                    "holds the 100-trial soak")
def test_killed_gc_commit_create_and_pull_leave_a_clean_store_and_complete_when_run_again(
        tmp_path):
    s = soak.Soak(tmp_path, vocker_cmd(), clean_env(), seed=3, files=200).setup()
    for what in soak.COMMANDS * 2:
        s.trial(what)
    assert soak.failures(s.log) == [], soak.failures(s.log)
    end = s.final()
    assert end["verify_rc"] == 0 and end["created"] == end["images"] >= 5, end
