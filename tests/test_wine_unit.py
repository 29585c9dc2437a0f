"""The Windows lane, part two (issue 9): this suite's own tests under the Windows
CPython 3.13.2, run by Wine.

The same ``tests/`` folder runs under ``C:\\Python313\\python.exe`` with pytest,
blake3 and zstandard installed there from Windows wheels (the versions this
lane runs).  A test that needs a POSIX fact skips and names it (conftest's
``posix_only``, ``needs_symlinks``, ``make_names``); the Wine lane's own tests
skip there (they drive Wine from Linux).  Any failure under Windows fails this
test, with pytest's summary lines; the whole output is kept in
``build/wine/unit-tests.txt``. It is the longest test by far, so it starts as
soon as the suite is collected (conftest) and runs beside the Linux tests on
the second core; the test only waits for it.
"""

from __future__ import annotations

import re
import threading

import pytest

import winelane
from winelane import winpath

#: the Windows run passes about 830 tests; far fewer means they were skipped wholesale
MIN_PASSED = 750
TIMEOUT = 1750  # seconds; 24.5 minutes seen (xdist, beside the Linux tests on 2 cores)


def _counts(summary):
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                   summary)}


def _failure_details(out, limit=6000):
    """pytest's FAILURES/ERRORS section (its tail), so that a CI log shows why:
    build/wine/unit-tests.txt goes with the CI machine."""
    start = min((i for i in (out.find("= FAILURES ="), out.find("= ERRORS =")) if i >= 0),
                default=-1)
    if start < 0:
        return ""
    end = out.find("short test summary info", start)
    return out[start:end if end > 0 else None][-limit:]


_run = {}  # "thread"; then "result" (rc, out, err), "skip" (a reason) or "error"


def start_in_background():
    """Start the Windows run now (conftest calls this once the tests are
    collected): it goes on beside the Linux tests, on the second core, and
    the test below waits for it. Twice is once."""
    if "thread" not in _run:
        _run["thread"] = threading.Thread(target=_windows_run, name="windows-run", daemon=True)
        _run["thread"].start()


def _windows_run():
    try:
        lane = winelane.shared_lane()
        lane.install_test_requirements()
        _run["result"] = lane.py("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                                 "--tb=short", "-n", str(winelane.WORKERS),
                                 winpath(winelane.REPO / "tests"),
                                 cwd=winelane.REPO, timeout=TIMEOUT)
    except winelane.LaneUnavailable as e:
        _run["skip"] = str(e)
    except BaseException as e:  # reported by the test, not lost in a thread
        _run["error"] = f"{type(e).__name__}: {e}"


def test_the_unit_tests_pass_under_the_windows_python(lane):  # lane: stopped at the end
    start_in_background()
    _run["thread"].join(TIMEOUT + 900)  # setup and pip install come first
    if "skip" in _run:
        pytest.skip(f"Windows lane not run: {_run['skip']}")
    assert "error" not in _run and "result" in _run, _run.get("error", "the Windows run hung")
    rc, out, err = _run["result"]
    (winelane.CACHE / "unit-tests.txt").write_text(out + "\n" + err, encoding="utf-8")
    lines = out.strip().splitlines()
    summary = lines[-1] if lines else err.strip()[-300:]
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    assert rc == 0, (f"under Windows: {summary}\n" + "\n".join(failures[:40] or lines[-40:])
                     + "\n" + _failure_details(out))
    counts = _counts(summary)
    assert counts.get("passed", 0) >= MIN_PASSED, summary
    winelane.log(f"unit tests under Windows: {summary}")
