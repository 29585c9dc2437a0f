"""The module's shape: persistence only in Store, functions and classes small
enough to hold in mind (issue 8's figures, measured on every run)."""
import ast
import pathlib

import pytest

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "vocker.py"
MAX_FUNCTION = 60
MAX_CLASS = 300
LONG_ALLOWED = {"build_parser"}  # a table of options, read as one


def _nodes():
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    out = []

    def walk(node, cls):
        for child in ast.iter_child_nodes(node):
            out.append((child, cls))
            walk(child, child.name if isinstance(child, ast.ClassDef) else cls)
    walk(tree, None)
    return out


NODES = _nodes()


def _length(node):
    return node.end_lineno - node.lineno + 1


def test_sql_lives_in_store():
    outside = [(cls, node.lineno) for node, cls in NODES
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr in ("execute", "executemany", "executescript")
               and not (cls or "").lstrip("_").startswith("Store")]
    assert outside == []


@pytest.mark.parametrize("kind,limit", [(ast.FunctionDef, MAX_FUNCTION), (ast.ClassDef, MAX_CLASS)])
def test_short_enough(kind, limit):
    long = [(node.name, _length(node)) for node, _ in NODES
            if isinstance(node, kind) and _length(node) > limit
            and node.name not in LONG_ALLOWED]
    assert long == []


def test_checker_sees_long_code():
    """The measure itself can fail: it finds the long parser it allows."""
    names = {node.name for node, _ in NODES
             if isinstance(node, ast.FunctionDef) and _length(node) > MAX_FUNCTION}
    assert "build_parser" in names


#: modules only some commands need: imported where used, so that every
#: start (vocker create, run from batch files) does not pay for them
NOT_AT_START = ("base64", "concurrent.futures", "csv", "difflib", "http.client", "netrc",
                "pathlib", "shutil", "socket", "subprocess", "tarfile", "tempfile", "traceback",
                "urllib.request", "uuid", "zstandard")


def test_start_imports_only_what_every_command_needs():
    import subprocess
    import sys
    code = "import sys, vocker; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-E", "-c", code], cwd=SOURCE.parent, check=True,
                         stdout=subprocess.PIPE, text=True).stdout.split()
    assert "vocker" in out and "sqlite3" in out
    assert [m for m in NOT_AT_START if m in out] == []
