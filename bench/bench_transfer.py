#!/usr/bin/env python3
"""Transfer benchmark: push / pull / save / load of real venvs, in one run.

Standard library only. Usage:

    python3 bench/bench_transfer.py [--work DIR] [--cache DIR] [--vocker CMD]
                                    [--pandas-b VERSION] [--keep]

What it does:

1. Corpus: two real venvs built like bench_core.py's corpus (``python -m venv``
   + ``pip install --no-index --no-compile`` from the wheel cache
   CACHE/wheels, every ``__pycache__`` stripped):
   A = bench_core's pins (numpy 2.4.6, pandas 3.1.1, scipy 1.17.1 + deps);
   B = the same pins with another pandas (--pandas-b, default 3.0.6, the
   previous minor release). Missing wheels are fetched once (bench_core's
   pins with ``pip download --only-binary=:all:``, pandas B with ``--no-deps``).
2. ``vocker commit`` A and B into a source store, then ``push`` A and ``push``
   B (two pushes: each writes its own pack) into a repository folder REPO.
   From REPO's ``images/<id>.blobs`` it computes B's size (sum of the
   uncompressed sizes) and the blobs B lacks once A is present (``B.blobs``
   minus ``A.blobs``) with their compressed size.
3. Serves REPO on 127.0.0.1 twice, each server in a subprocess: a small
   Range-capable static server (this script with ``--serve``: HTTP/1.1
   keep-alive, Content-Length, single ``bytes=`` ranges, logs every request
   with the bytes it sent), and plain ``python -m http.server`` (HTTP/1.0,
   ignores Range: shows vocker's fallback; its request log is parsed, bytes
   are estimated as the size of each file it answered 200 for).
4. For each transport (folder, ``file://``, HTTP with Range, HTTP without
   Range): into an EMPTY store, ``pull A``, then ``pull B``, then ``pull B``
   again (present: metadata only). Reports seconds, bytes and requests as
   vocker's ``--json`` gives them, and the server's own count for HTTP.
   Target (per transport): bytes(pull B) <= 1.2 * csize(frames holding the blobs B lacks)
   + 0.02 * size(B).
5. ``save A -o FILE`` from the source store and ``load FILE`` into an empty
   store: seconds, archive size.

Wall-clock seconds of each vocker subprocess, one run each. As in bench_core,
the files a step reads are read once (untimed) before it and ``sync`` runs
before it: figures are warm-cache figures on loopback (no network latency).

Prints a Markdown report and writes bench/results-transfer.md with the raw
data in bench/results-transfer.json. Progress goes to stderr. Exit status 1 if
a step failed or the target is missed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import http.server
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

DEFAULT_WORK = Path("/tmp/vocker-bench-transfer")
WORK_MARKER = ".vocker-bench-transfer-workdir"
DEFAULT_PANDAS_B = "3.0.6"
TAG_A, TAG_B = "transfer:a", "transfer:b"


# --------------------------------------------------------------------------- #
# the Range-capable server (runs in a subprocess: this script with --serve)
# --------------------------------------------------------------------------- #


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range ``Range: bytes=`` support, HTTP/1.1
    keep-alive, Content-Length always; one JSON line per request in LOG."""

    protocol_version = "HTTP/1.1"
    log_path: str | None = None
    log_lock = threading.Lock()

    def log_message(self, format, *args):  # quiet: the JSON log is enough
        pass

    def send_response(self, code, message=None):
        self._status = code
        super().send_response(code, message)

    def _record(self):
        if not self.log_path:
            return
        line = json.dumps({"path": self.path, "range": self.headers.get("Range"),
                           "status": getattr(self, "_status", None),
                           "bytes": getattr(self, "_sent", 0)})
        with self.log_lock, open(self.log_path, "a") as f:
            f.write(line + "\n")

    def do_GET(self):
        self._sent, self._status, self._remaining = 0, None, None
        try:
            super().do_GET()
        finally:
            self._record()

    def send_head(self):
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            return super().send_head()
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        try:
            size = os.fstat(f.fileno()).st_size
            start, end = 0, size - 1
            rng = self.headers.get("Range")
            status = 200
            if rng:
                m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng)
                if m and (m.group(1) or m.group(2)):  # one range; others: ignored
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    else:  # suffix: last N bytes
                        start, end = max(0, size - int(m.group(2))), size - 1
                    if start >= size or start > end:
                        f.close()
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            f.seek(start)
            self._remaining = end - start + 1
            return f
        except BaseException:
            f.close()
            raise

    def copyfile(self, source, outputfile):
        n = self._remaining
        if n is None:  # directory listing (BytesIO)
            data = source.read()
            outputfile.write(data)
            self._sent += len(data)
            return
        while n > 0:
            buf = source.read(min(n, 1 << 20))
            if not buf:
                break
            outputfile.write(buf)
            self._sent += len(buf)
            n -= len(buf)


def serve_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="bench_transfer.py --serve")
    ap.add_argument("--serve", required=True, metavar="DIR")
    ap.add_argument("--log", default=None)
    a = ap.parse_args(argv)
    RangeHandler.log_path = a.log

    class Handler(RangeHandler):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=a.serve, **kw)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print(f"PORT {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------- #
# everything else needs bench_core's helpers
# --------------------------------------------------------------------------- #

sys.path.insert(0, str(HERE))
import bench_core as bc  # noqa: E402  (run, log, rmtree, tree_stats, ensure_wheels, ...)

log, run, StepFailed, rmtree = bc.log, bc.run, bc.StepFailed, bc.rmtree


def mb(n) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def ensure_wheel_b(py: Path, wheels: Path, pins_b: list[str], pandas_b: str) -> None:
    """The B corpus needs one more wheel: fetch it once, without dependencies."""
    try:
        run([py, "-m", "pip", "download", "-q", "--only-binary=:all:", "--dest", wheels,
             "--no-index", "--find-links", wheels, *pins_b], env=bc.hermetic_pip_env(), sync=False)
        return
    except StepFailed:
        pass
    log(f"downloading pandas=={pandas_b} into {wheels} (once, --no-deps)")
    try:
        run([py, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps",
             "--dest", wheels, f"pandas=={pandas_b}"], sync=False)
    except StepFailed as e:
        sys.exit(f"bench: could not download pandas=={pandas_b}: {e}")


def build_venv(py: Path, wheels: Path, pins: list[str], venv: Path) -> list[str]:
    """bench_core's corpus venv (no pyc), without the with-pyc copy."""
    log(f"building {venv}: {' '.join(pins)}")
    t0 = time.perf_counter()
    frz = bc.build_source_venv(py, wheels, pins, venv)
    log(f"built {venv} in {time.perf_counter() - t0:.1f} s")
    return frz


def read_blobs(repo: Path, image_id: str) -> dict:
    """{blob: (size, pack, offset, csize)} from REPO/images/<id>.blobs, read
    by vocker's own parser (the file is compressed); (pack, offset, csize) is
    the frame holding the blob, which it may share with others."""
    import vocker  # bench/.venv holds this checkout
    data = (repo / "images" / f"{image_id}.blobs").read_bytes()
    return {b: (loc.size, loc.pack, loc.offset, loc.csize)
            for b, loc in vocker.parse_blobs_file(data, image_id).items()}


def frames_csize(entries) -> int:
    """Compressed bytes of the frames holding these blobs, each frame once."""
    return sum(csize for _, csize in {(f"{pack}:{offset}", csize)
                                      for size, pack, offset, csize in entries})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout=15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


class Server:
    """A static server over REPO in a subprocess, with a request log we can read."""

    def __init__(self, kind: str, root: Path, logfile: Path):
        self.kind, self.root, self.logfile = kind, root, logfile
        self.proc = None
        self.port = None
        self._mark = 0

    def start(self):
        py = sys.executable
        if self.kind == "range":
            self.cmd = [py, str(Path(__file__).resolve()), "--serve", str(self.root),
                        "--log", str(self.logfile)]
            self.logfile.write_text("")
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                         text=True)
            line = self.proc.stdout.readline()
            if not line.startswith("PORT "):
                raise RuntimeError(f"range server did not start: {line!r}")
            self.port = int(line.split()[1])
        else:
            self.port = free_port()
            self.cmd = [py, "-u", "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                        "--directory", str(self.root)]
            self.log_f = open(self.logfile, "w")
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.log_f,
                                         stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        self.mark()  # the readiness probe is not a request worth counting
        return self

    def mark(self):
        time.sleep(0.05)
        self._mark = self.logfile.stat().st_size

    def since_mark(self) -> dict:
        """Server-side requests and bytes since the last mark()."""
        time.sleep(0.2)  # let the server finish writing its log lines
        with open(self.logfile, "rb") as f:
            f.seek(self._mark)
            text = f.read().decode("utf-8", "replace")
        reqs, nbytes, statuses = 0, 0, {}
        if self.kind == "range":
            for line in text.splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                reqs += 1
                nbytes += r.get("bytes") or 0
                statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
        else:
            for m in re.finditer(r'"GET (\S+) HTTP/[\d.]+" (\d{3})', text):
                reqs += 1
                st = m.group(2)
                statuses[st] = statuses.get(st, 0) + 1
                if st == "200":
                    p = self.root / m.group(1).lstrip("/").split("?")[0]
                    if p.is_file():
                        nbytes += p.stat().st_size
        self.mark()
        return {"requests": reqs, "bytes": nbytes, "statuses": statuses}

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log_f", None):
            self.log_f.close()


# --------------------------------------------------------------------------- #
# vocker steps
# --------------------------------------------------------------------------- #


class V:
    """Runs vocker with --home STORE; records every step (ok or FAILED)."""

    def __init__(self, vocker: list[str], work: Path, timeout: float):
        self.vocker, self.work, self.timeout = vocker, work, timeout
        self.steps: list[dict] = []
        script = next((Path(a) for a in vocker if a.endswith(".py")), None)
        self.warm = [script] if script is not None and script.exists() else []

    def __call__(self, label: str, store: Path, *args, warm=(), group="", **extra) -> dict:
        cmd = self.vocker + ["--home", str(store), *map(str, args)]
        st = {"label": label, "group": group,
              "cmd": shlex.join(cmd), "ok": False, "seconds": None, "json": None,
              "error": None, **extra}
        env = dict(os.environ, VOCKER_HOME=str(store))
        try:
            dt, p = run(cmd, env=env, timeout=self.timeout, warm=[*warm, *self.warm])
            st["seconds"] = dt
            if "--json" in args:
                st["json"] = bc.parse_json_out(p.stdout, p.stderr)
            st["ok"] = True
            log(f"{label}: {dt:.3f} s")
        except StepFailed as e:
            st["error"] = str(e)
            log(f"FAILED {label}: {e}\n    reproduce: {st['cmd']}")
        self.steps.append(st)
        return st


def commit_id(st: dict) -> str | None:
    j = st.get("json") or {}
    return str(j["id"]) if st["ok"] and "id" in j else None


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #


def fmt_s(x):
    return "—" if x is None else f"{x:.3f}"


def fmt_int(x):
    return "—" if x is None else f"{x:,}"


def render(meta: dict, steps: list[dict], pulls: list[dict], targets: list[dict]) -> str:
    c = meta.get("corpus", {})
    L = ["# vocker transfer benchmark", ""]
    L.append(f"- date: {meta['date']}  ")
    L.append(f"- machine: {meta['machine']}  ")
    L.append(f"- python (venvs): {meta['python']}; vocker: `{meta['vocker_cmd']}`"
             + (f" (vocker.py sha256 {meta['vocker_py_sha256']})" if meta.get("vocker_py_sha256")
                else "") + "  ")
    for k in ("A", "B"):
        v = c.get(k)
        if v:
            L.append(f"- venv {k}: `{' '.join(v['pins'])}` → {v['stats']['mb']:.1f} MB in "
                     f"{v['stats']['files']:,} files (no pyc)  ")
    im = meta.get("images", {})
    for k in ("A", "B"):
        v = im.get(k)
        if v:
            L.append(f"- image {k} `{v['id'][:12]}`: {v['blobs']:,} blobs, size "
                     f"{mb(v['size'])} (uncompressed), {mb(v['csize'])} compressed  ")
    lk = meta.get("lacking")
    if lk:
        L.append(f"- **B lacks {lk['blobs']:,} blobs once A is present: csize(lacking) = "
                 f"{mb(lk['csize'])}** (uncompressed {mb(lk['size'])}); repository packs: "
                 + ", ".join(f"`{p['id'][:12]}` {mb(p['size'])}" for p in meta.get("packs", []))
                 + "  ")
    L.append("- timing: wall clock of each vocker subprocess, one run; warm page cache "
             "(files a step reads are read untimed just before it), `sync` before each step; "
             "HTTP over loopback (no latency); MB = 10^6 bytes")
    L.append("")
    L.append("## Pulls (each transport into an empty store: A, then B, then B again)")
    L.append("")
    L.append("| transport | pull | s | bytes (vocker) | requests (vocker) | server requests "
             "| server bytes | fetched blobs | notes |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for p in pulls:
        if not p["ok"]:
            err = (p["error"] or "not run").replace("|", "\\|")
            L.append(f"| {p['transport']} | {p['what']} | FAILED | — | — | — | — | — | {err} |")
            continue
        srv = p.get("server") or {}
        L.append(f"| {p['transport']} | {p['what']} | {fmt_s(p['seconds'])} | {fmt_int(p['bytes'])} "
                 f"| {fmt_int(p['requests'])} | {fmt_int(srv.get('requests'))} "
                 f"| {fmt_int(srv.get('bytes'))} | {fmt_int(p['fetched_blobs'])} "
                 f"| {'; '.join(p.get('notes', []))} |")
    L.append("")
    L.append("Server columns: the Range server logs each request with the bytes it sent; for "
             "`python -m http.server` they come from its request log, each 200 counted as the "
             "whole file. vocker's columns are its `--json` `bytes` and `requests`.")
    L.append("")
    L.append("## Target: bytes(pull B) <= 1.2 × csize(blobs B lacks) + 0.02 × size(B)")
    L.append("")
    if lk:
        L.append(f"csize(lacking) = {lk['csize']:,}; size(B) = {im['B']['size']:,}; "
                 f"bound = {targets[0]['bound']:,.0f} bytes" if targets else "")
        L.append("")
    L.append("| transport | bytes (vocker) | server bytes | bound | bytes / csize(lacking) | status |")
    L.append("| --- | ---: | ---: | ---: | ---: | --- |")
    for t in targets:
        ratio = "—" if t["ratio"] is None else f"{t['ratio']:.3f}"
        L.append(f"| {t['transport']} | {fmt_int(t['bytes'])} | {fmt_int(t.get('server_bytes'))} "
                 f"| {t['bound']:,.0f} | {ratio} | {t['status']} |")
    L.append("")
    L.append("Status is judged on the bytes on the wire: the server's count for HTTP (the "
             "larger of the two if they differ), vocker's otherwise. Of the bytes, "
             f"{im['B']['meta_bytes']:,} are B's metadata files (.json + .trees + .blobs) and "
             "~0.5 KB index.json, fetched whole on every pull of B." if im.get("B") else "")
    L.append("")
    L.append("## Commit, push, save, load")
    L.append("")
    L.append("| step | s | result |")
    L.append("| --- | ---: | --- |")
    for s in steps:
        if s["group"] not in ("commit", "push", "archive"):
            continue
        if not s["ok"]:
            err = (s["error"] or "").replace("|", "\\|")
            L.append(f"| {s['label']} | FAILED | {err} |")
            continue
        L.append(f"| {s['label']} | {fmt_s(s['seconds'])} | {s.get('summary', '')} |")
    L.append("")
    if meta.get("verify"):
        L.append(f"Check: {meta['verify']}")
        L.append("")
    L.append("## Commands")
    L.append("")
    seen = set()
    for s in steps:
        cmd = meta_replace(meta, s["cmd"])
        if cmd not in seen:
            seen.add(cmd)
            L.append(f"- {s['label']}: `{cmd}`")
    for srv in meta.get("servers", []):
        L.append(f"- server ({srv['kind']}): `{meta_replace(meta, srv['cmd'])}`")
    L.append("")
    return "\n".join(L)


def meta_replace(meta: dict, text: str) -> str:
    text = text.replace(meta["work"], "WORK")
    for k, v in meta.get("images", {}).items():
        text = text.replace(v["id"], f"<{k}>")
    return text


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def prepare_work(work: Path) -> None:
    bc.prepare_work(work, WORK_MARKER, "bench_transfer.py")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        return serve_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"scratch dir, removed at the end unless --keep (default {DEFAULT_WORK})")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache",
                    help="wheel cache, kept between runs (default bench/.cache)")
    ap.add_argument("--vocker", default=None,
                    help="vocker command line (default: '<this python3> <repo>/vocker.py')")
    ap.add_argument("--python", type=Path, default=bc.DEFAULT_PY if bc.DEFAULT_PY.exists()
                    else Path(sys.executable), help=f"base interpreter of the venvs "
                    f"(default {bc.DEFAULT_PY})")
    ap.add_argument("--pandas-b", default=DEFAULT_PANDAS_B,
                    help=f"pandas version of venv B (default {DEFAULT_PANDAS_B})")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds before a vocker command is called FAILED (default 1800)")
    ap.add_argument("--keep", action="store_true", help="do not remove the work dir")
    args = ap.parse_args(argv)

    work, cache, py = args.work.resolve(), args.cache.resolve(), args.python
    vocker = (shlex.split(args.vocker) if args.vocker
              else [sys.executable, str(REPO_ROOT / "vocker.py")])
    pins_a = list(bc.PINS_FULL)
    pins_b = [f"pandas=={args.pandas_b}" if p.startswith("pandas==") else p for p in pins_a]

    prepare_work(work)
    meta: dict = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
                   f"{os.cpu_count()} cores",
        "work": str(work), "cache": str(cache), "vocker_cmd": shlex.join(vocker),
        "python": subprocess.run([str(py), "-c", "import sys; print(sys.version.split()[0], "
                                  "sys.executable)"], stdout=subprocess.PIPE,
                                 text=True).stdout.strip(),
        "corpus": {}, "images": {}, "servers": [],
    }
    script = next((Path(a) for a in vocker if a.endswith(".py")), None)
    if script is not None and script.exists():
        meta["vocker_py_sha256"] = hashlib.sha256(script.read_bytes()).hexdigest()[:16]

    V_ = V(vocker, work, args.timeout)
    pulls: list[dict] = []
    targets: list[dict] = []
    servers: list[Server] = []
    try:
        # ---- corpus ------------------------------------------------------ #
        wheels = bc.ensure_wheels(py, cache, pins_a)
        ensure_wheel_b(py, wheels, pins_b, args.pandas_b)
        venvs = {}
        for k, pins in (("A", pins_a), ("B", pins_b)):
            venv = work / "corpus" / k.lower() / "venv"
            installed = build_venv(py, wheels, pins, venv)
            venvs[k] = venv
            meta["corpus"][k] = {"pins": pins, "installed": installed,
                                 "stats": bc.tree_stats(venv)}

        # ---- commit + push ---------------------------------------------- #
        src_store, repo = work / "src-store", work / "repo"
        ids = {}
        for k, tag in (("A", TAG_A), ("B", TAG_B)):
            st = V_(f"commit {k} (source store)", src_store, "commit", venvs[k], "-t", tag,
                    "--json", warm=[venvs[k]], group="commit")
            ids[k] = commit_id(st)
            if st["ok"]:
                st["summary"] = f"image {str(ids[k])[:12]}"
        if not all(ids.values()):
            raise StepFailed("commit failed; nothing to transfer")
        for k, tag in (("A", TAG_A), ("B", TAG_B)):
            packs_before = set(os.listdir(repo / "packs")) if (repo / "packs").exists() else set()
            st = V_(f"push {k} to the repository folder", src_store, "push", tag, repo, "--json",
                    warm=[src_store], group="push")
            if st["ok"]:
                new = sorted(set(os.listdir(repo / "packs")) - packs_before)
                j = st["json"]
                imgs = j.get("images") or [{}]
                st["summary"] = (f"{fmt_int(imgs[0].get('new_blobs'))} of "
                                 f"{fmt_int(imgs[0].get('blobs'))} blobs new, "
                                 f"{fmt_int(j.get('bytes'))} bytes written; new pack(s): "
                                 + (", ".join(f"{n[:12]} {mb((repo / 'packs' / n).stat().st_size)}"
                                              for n in new) or "none"))
            else:
                raise StepFailed(f"push {k} failed: {st['error']}")
        meta["packs"] = [{"id": n[:-5], "size": (repo / "packs" / n).stat().st_size}
                         for n in sorted(os.listdir(repo / "packs"))]

        # ---- what B lacks ------------------------------------------------ #
        blobs = {k: read_blobs(repo, ids[k]) for k in ("A", "B")}
        for k in ("A", "B"):
            meta["images"][k] = {
                "id": ids[k], "tag": TAG_A if k == "A" else TAG_B, "blobs": len(blobs[k]),
                "size": sum(v[0] for v in blobs[k].values()),
                "csize": frames_csize(blobs[k].values()),
                "meta_bytes": sum((repo / "images" / f"{ids[k]}{ext}").stat().st_size
                                  for ext in (".json", ".trees", ".blobs")),
            }
        lacking = {b: v for b, v in blobs["B"].items() if b not in blobs["A"]}
        meta["lacking"] = {"blobs": len(lacking), "csize": frames_csize(lacking.values()),
                           "size": sum(v[0] for v in lacking.values()),
                           "packs": sorted({v[1] for v in lacking.values()})}
        bound = 1.2 * meta["lacking"]["csize"] + 0.02 * meta["images"]["B"]["size"]
        bound_a = 1.2 * meta["images"]["A"]["csize"] + 0.02 * meta["images"]["A"]["size"]
        log(f"B lacks {len(lacking)} blobs, csize {meta['lacking']['csize']:,}; "
            f"size(B) {meta['images']['B']['size']:,}; bound {bound:,.0f}")

        # ---- servers ----------------------------------------------------- #
        srv_range = Server("range", repo, work / "range-server.log").start()
        servers.append(srv_range)
        srv_plain = Server("plain", repo, work / "plain-server.log").start()
        servers.append(srv_plain)
        meta["servers"] = [{"kind": s.kind, "cmd": shlex.join(s.cmd), "url": s.url}
                           for s in servers]

        transports = [
            ("folder", str(repo), None),
            ("file://", repo.as_uri(), None),
            ("http (Range server)", srv_range.url + "/", srv_range),
            ("http (python -m http.server, no Range)", srv_plain.url + "/", srv_plain),
        ]

        # ---- pulls ------------------------------------------------------- #
        for ti, (tname, loc, srv) in enumerate(transports):
            store = work / "pull" / f"t{ti}" / "store"
            for what, tag, k in (("A (empty store)", TAG_A, "A"),
                                 ("B (A present)", TAG_B, "B"),
                                 ("B again (present)", TAG_B, "B")):
                if srv:
                    srv.mark()
                st = V_(f"pull {what} from {tname}", store, "pull", loc, tag, "--json",
                        warm=[repo], group="pull")
                p = {"transport": tname, "what": what, "image": k, "ok": st["ok"],
                     "error": st["error"], "seconds": st["seconds"], "cmd": st["cmd"],
                     "bytes": None, "requests": None, "fetched_blobs": None, "notes": []}
                if srv:
                    p["server"] = srv.since_mark()
                if st["ok"]:
                    j = st["json"]
                    p["bytes"], p["requests"] = j.get("bytes"), j.get("requests")
                    imgs = j.get("images") or [{}]
                    p["fetched_blobs"] = imgs[0].get("fetched_blobs")
                    want = {"A (empty store)": len(blobs["A"]), "B (A present)": len(lacking),
                            "B again (present)": 0}[what]
                    if p["fetched_blobs"] != want:
                        p["notes"].append(f"UNEXPECTED fetched_blobs (expected {want})")
                    if imgs[0].get("id") != ids[k]:
                        p["notes"].append(f"UNEXPECTED image id {imgs[0].get('id')}")
                    srvd = p.get("server")
                    if srvd and p["bytes"] is not None and srvd["bytes"] > p["bytes"] * 1.01 + 4096:
                        p["notes"].append(f"server sent {srvd['bytes'] / max(p['bytes'], 1):.2f}× "
                                          "what vocker reports")
                    if srvd and p["requests"] is not None and srvd["requests"] != p["requests"]:
                        p["notes"].append(f"server saw {srvd['requests']} requests")
                    if srvd and set(srvd["statuses"]) - {"200", "206"}:
                        p["notes"].append(f"statuses {srvd['statuses']}")
                    if what == "A (empty store)":
                        p["notes"].append(f"csize(A) {meta['images']['A']['csize']:,}; "
                                          f"bytes/csize {p['bytes'] / meta['images']['A']['csize']:.3f}"
                                          f"; same formula's bound {bound_a:,.0f}: "
                                          f"{'ok' if p['bytes'] <= bound_a else 'over'}")
                pulls.append(p)
                if what == "B (A present)":
                    t = {"transport": tname, "bytes": p["bytes"], "bound": bound,
                         "server_bytes": (p.get("server") or {}).get("bytes"),
                         "ratio": (p["bytes"] / meta["lacking"]["csize"]
                                   if p["bytes"] is not None and meta["lacking"]["csize"] else None)}
                    if p["bytes"] is None:
                        t["status"] = "n/a (pull failed)"
                    else:
                        # on the wire: what the server sent when we know it
                        sb = t["server_bytes"]
                        wire = max(p["bytes"], sb) if sb is not None else p["bytes"]
                        t["status"] = "PASS" if wire <= bound else "FAIL"
                        if p["bytes"] <= bound < wire:
                            t["status"] += (f" (vocker counts {p['bytes']:,} bytes, under the "
                                            f"bound, but the server sent {sb:,})")
                    targets.append(t)
            # images present? (first transport only: also rebuild B and compare files)
            if ti == 2 and all(x["ok"] for x in pulls[-3:]):
                dest = work / "verify-b"
                st = V_("create B --no-compile (check of the HTTP pull)", store, "create",
                        TAG_B, dest, "--no-compile", group="verify")
                if st["ok"]:
                    meta["verify"] = compare_trees(venvs["B"], dest)
                    rmtree(dest)
                else:
                    meta["verify"] = f"create B from the pulled store FAILED: {st['error']}"
            rmtree(work / "pull" / f"t{ti}")

        # ---- save / load ------------------------------------------------- #
        archive = work / "a.vocker"
        st = V_("save A -o FILE", src_store, "save", TAG_A, "-o", archive, "--json",
                warm=[src_store], group="archive")
        if st["ok"] and archive.exists():
            size = archive.stat().st_size
            meta["archive"] = {"size": size}
            st["summary"] = (f"archive {size:,} bytes ({mb(size)}); csize(A) "
                             f"{meta['images']['A']['csize']:,} → overhead "
                             f"{size / meta['images']['A']['csize'] - 1:+.2%}")
            st2 = V_("load FILE (empty store)", work / "load-store", "load", archive, "--json",
                     warm=[archive], group="archive")
            if st2["ok"]:
                j = st2["json"]
                imgs = j.get("images") or [{}]
                st2["summary"] = (f"{fmt_int(j.get('bytes'))} bytes read in "
                                  f"{fmt_int(j.get('requests'))} reads; "
                                  f"{fmt_int(imgs[0].get('fetched_blobs'))} blobs; image "
                                  f"{str(imgs[0].get('id'))[:12]}")
                if imgs[0].get("id") != ids["A"]:
                    st2["summary"] += " — UNEXPECTED image id"
        rmtree(work / "load-store")
    except StepFailed as e:
        log(f"stopped: {e}")
        meta["stopped"] = str(e)
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            rmtree(work)

    md = render(meta, V_.steps, pulls, targets)
    if meta.get("stopped"):
        md += f"\n**Stopped early:** {meta['stopped']}\n"
    (HERE / "results-transfer.md").write_text(md)
    (HERE / "results-transfer.json").write_text(json.dumps(
        {"meta": meta, "steps": V_.steps, "pulls": pulls, "targets": targets},
        indent=2, default=str) + "\n")
    print(md)
    log(f"wrote {HERE / 'results-transfer.md'} and {HERE / 'results-transfer.json'}")
    failed = (any(not s["ok"] for s in V_.steps) or meta.get("stopped")
              or not targets or any(not t["status"].startswith("PASS") for t in targets))
    return 1 if failed else 0


def compare_trees(a: Path, b: Path) -> str:
    """Does container b hold venv a? Same relative paths (files, symlinks), same
    bytes for every file outside bin/ and pyvenv.cfg (which hold the venv's own
    path); a ``*.dist-info/RECORD`` may differ only in its lines for bin/
    scripts (their hashes and sizes follow the path in the shebang)."""
    def listing(root: Path) -> dict:
        out = {}
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for n in files + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, root)] = "link" if os.path.islink(p) else "file"
        return out

    def digest(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    la, lb = listing(a), listing(b)
    only_a, only_b = sorted(set(la) - set(lb)), sorted(set(lb) - set(la))
    diff, records = [], 0
    for rel in sorted(set(la) & set(lb)):
        if la[rel] != "file" or lb[rel] != "file":
            if la[rel] != lb[rel]:
                diff.append(rel)
            continue
        if rel.startswith("bin" + os.sep) or rel == "pyvenv.cfg":
            continue
        pa, pb = a / rel, b / rel
        if os.path.getsize(pa) == os.path.getsize(pb) and digest(pa) == digest(pb):
            continue
        if rel.endswith(".dist-info" + os.sep + "RECORD"):
            ra = set(pa.read_text("utf-8", "replace").splitlines())
            rb = set(pb.read_text("utf-8", "replace").splitlines())
            if all(ln.startswith("../../../bin/") for ln in ra ^ rb):
                records += 1
                continue
        diff.append(rel)
    if not (only_a or only_b or diff):
        return (f"`create B` from the store filled over HTTP (Range server) gives the "
                f"{len(la):,} paths of venv B, byte-identical outside bin/ and pyvenv.cfg "
                f"({records} RECORD files differ only in their bin/ script lines): OK")
    return (f"`create B` from the store filled over HTTP differs from venv B: "
            f"{len(only_a)} paths only in venv B {only_a[:3]}, {len(only_b)} only in the "
            f"container {only_b[:3]}, {len(diff)} content differences {diff[:3]}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _setup  # here, not at the top: importing this module must not re-execute anything
    _setup.reexec_in_bench_venv(__file__)
    sys.exit(main())
