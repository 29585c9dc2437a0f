"""Kill trials (issue 10): ``vocker gc``, ``commit``, ``create`` and ``pull``
killed at random points, each kill followed by ``verify --full`` (it must be
clean) and a re-run of the killed command (it must complete).

Used by tests/test_store_life.py (a few trials) and bench/bench_soak.py (100).
Each command runs as a user runs it: the real entry point, in its own process,
killed with SIGKILL (Windows: TerminateProcess) after a delay drawn uniformly
from [0, 1.2 × the time one unkilled run of it took]."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

COMMANDS = ("gc", "commit", "create", "pull")


def _files(n, seed):
    """``n`` small files, half shared between every seed, half its own."""
    return {f"d{j % 7}/f{j}.txt": (f"shared {j}\n" if j % 2 else f"own {seed} {j}\n") * (40 + j)
            for j in range(n)}


def _write(path: Path, files: dict) -> Path:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(data)
    return path


class Soak:
    """One store, one repository; ``trial()`` kills one command and checks."""

    def __init__(self, base: Path, vocker_cmd: list, env: dict, seed=1, files=400):
        self.base, self.cmd, self.env = base, vocker_cmd, env
        self.home, self.repo = base / "home", base / "repo"
        self.rng, self.files, self.n = random.Random(seed), files, 0
        self.took = {}
        self.log = []

    def run(self, *args, check=True, timeout=600):
        p = subprocess.run([*self.cmd, "--home", str(self.home), *map(str, args)],
                           env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"vocker {' '.join(map(str, args))}: rc {p.returncode}: "
                                 f"{p.stderr.strip()[-500:]}")
        return p

    def setup(self):
        """base:1 (pushed, with a container, so its frames are dropped),
        pull:1..3 in the repository only, and timings of one run of each."""
        other = self.base / "other-home"
        for i in (1, 2, 3):
            src = _write(self.base / f"pull-src{i}", _files(self.files, f"p{i}"))
            subprocess.run([*self.cmd, "--home", str(other), "commit", str(src), "--kind",
                            "plain", "-t", f"pull:{i}", "-q"], env=self.env, check=True,
                           capture_output=True)
            subprocess.run([*self.cmd, "--home", str(other), "push", f"pull:{i}",
                            str(self.repo)], env=self.env, check=True, capture_output=True)
        self.run("commit", _write(self.base / "base-src", _files(self.files, "base")),
                 "--kind", "plain", "-t", "base:1", "-q")
        self.run("push", "base:1", self.repo)
        for what in COMMANDS * 2:   # the second run is timed: the first does more
            self._prepare(what)         # (a create drops the pushed image's frames)
            t0 = time.monotonic()
            self.run(*self._args(what))
            self.took[what] = time.monotonic() - t0
        return self

    def _garbage(self):
        src = _write(self.base / f"junk{self.n}", _files(self.files // 2, f"junk{self.n}"))
        image = self.run("commit", src, "--kind", "plain", "-q").stdout.strip()
        self.run("rmi", image)

    def _prepare(self, what):
        """Make the next command have work: garbage for gc, a new folder for
        commit, a new path for create, an absent image for pull."""
        self.n += 1
        if what == "gc":
            self._garbage()
        elif what == "commit":
            _write(self.base / f"src{self.n}", _files(self.files, f"c{self.n}"))
        elif what == "pull":
            self.pulled = f"pull:{1 + self.n % 3}"
            if self.run("inspect", self.pulled, check=False).returncode == 0:
                self.run("rmi", "--force", self.pulled)
                self.run("gc")

    def _args(self, what):
        if what == "gc":
            return ("gc",)
        if what == "commit":
            return ("commit", self.base / f"src{self.n}", "--kind", "plain", "-t", f"c:{self.n}",
                    "-q")
        if what == "create":
            return ("create", "base:1", self.base / f"ctr{self.n}")
        return ("pull", self.repo, self.pulled)

    def trial(self, what=None):
        """Kill one command at a random point; verify --full must be clean and
        the command, run again, must complete (unless it had finished before
        the kill). -> a dict of what happened."""
        what = what or self.rng.choice(COMMANDS)
        self._prepare(what)
        args = self._args(what)
        delay = self.rng.uniform(0, 1.2 * self.took[what])
        p = subprocess.Popen([*self.cmd, "--home", str(self.home), *map(str, args)],
                             env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.kill()
        rc = p.wait()
        v = self.run("verify", "--full", "--json", check=False)
        report = json.loads(v.stdout) if v.stdout.strip() else {}
        # it finished before the kill: exit 0, or (create) its container was recorded
        killed = rc != 0 and not (what == "create" and self._recorded(args[2]))
        again = self.run(*args, check=False) if killed else None
        out = {"command": what, "delay": round(delay, 3), "killed_rc": rc, "killed": killed,
               "verify_rc": v.returncode, "problems": report.get("problems", []),
               "rerun_rc": again.returncode if again else None,
               "rerun_err": again.stderr.strip()[-300:] if again else ""}
        self.log.append(out)
        return out

    def _recorded(self, path):
        return any(c["path"] == str(path) for c in json.loads(self.run("ps", "--json").stdout))

    def final(self):
        """After the trials: verify --full is clean, and every image creates."""
        v = self.run("verify", "--full", "--json", check=False)
        images = json.loads(self.run("images", "--json").stdout)
        made = 0
        for i, image in enumerate(images):
            if self.run("create", image["id"], self.base / f"final{i}", check=False).returncode \
                    == 0:
                made += 1
        return {"verify_rc": v.returncode, "problems": json.loads(v.stdout)["problems"],
                "images": len(images), "created": made}


def failures(log):
    """The trials that broke a promise."""
    return [t for t in log if t["verify_rc"] != 0 or t["rerun_rc"] not in (None, 0)]

