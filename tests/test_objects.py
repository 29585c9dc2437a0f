"""Unit tests of vocker's object formats: hashing, sharded paths, names,
trees, manifests and error objects.

Pure and fast: no venvs, no subprocesses. Every digest below was computed
once with the ``blake3`` module and pasted in as a literal, so that any change
to the hash or to a canonical byte format (which would change every image ID)
fails here first.
"""

from __future__ import annotations

import json
import os

import pytest

import vocker
from vocker import (
    AmbiguousError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    Manifest,
    NotFoundError,
    Tree,
    TreeEntry,
    VockerError,
)

# --------------------------------------------------------------- constants

#: blake3(b"")
EMPTY_HASH = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
#: blake3(b"vocker\n")
VOCKER_NL_HASH = "1b45ea5fbaeadd3f3a354d05178dd0e53747c8aeff54f28cadcd2bf690b1cc53"

#: one entry of every kind, plus non-ASCII names; given here out of order
TREE_ENTRIES = [
    TreeEntry("\U0001f600", "f", VOCKER_NL_HASH),       # F0 9F 98 80
    TreeEntry("run", "x", EMPTY_HASH),
    TreeEntry("\uff5e", "f", EMPTY_HASH),               # EF BD 9E
    TreeEntry("lib", "d", EMPTY_HASH),                  # the empty tree's ID
    TreeEntry("activate", "t", VOCKER_NL_HASH),
    TreeEntry("python3", "l", "python".encode("utf-8").hex()),
    TreeEntry("\u00e9t\u00e9.txt", "f", EMPTY_HASH),    # C3 A9 ...
    TreeEntry("README.txt", "f", VOCKER_NL_HASH),
]

#: the canonical bytes of TREE_ENTRIES: sorted by UTF-8 bytes, "<type> <ref> <name>\n"
TREE_BYTES = (
    b"f 1b45ea5fbaeadd3f3a354d05178dd0e53747c8aeff54f28cadcd2bf690b1cc53 README.txt\n"
    b"t 1b45ea5fbaeadd3f3a354d05178dd0e53747c8aeff54f28cadcd2bf690b1cc53 activate\n"
    b"d af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262 lib\n"
    b"l 707974686f6e python3\n"
    b"x af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262 run\n"
    b"f af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262 \xc3\xa9t\xc3\xa9.txt\n"
    b"f af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262 \xef\xbd\x9e\n"
    b"f 1b45ea5fbaeadd3f3a354d05178dd0e53747c8aeff54f28cadcd2bf690b1cc53 \xf0\x9f\x98\x80\n"
)
#: blake3(TREE_BYTES)
TREE_ID = "faad59fdbc6aaf657ac1dd1ddfefde41f32f41f9189f78c3c3d3269655d8a23f"

PYTHON_INFO = {"implementation": "cpython", "version": "3.11.7",
               "cache_tag": "cpython-311", "platform": "linux-x86_64"}
PYVENV = {"include-system-site-packages": "false", "version": "3.11.7"}
LABELS = {"owner": "Zo\u00eb", "app": "web"}

#: canonical manifest of Manifest("venv", TREE_ID, PYTHON_INFO, PYVENV, LABELS):
#: sorted keys, no spaces, UTF-8 (not \u-escaped)
MANIFEST_BYTES = (
    b'{"format":1,"kind":"venv","labels":{"app":"web","owner":"Zo\xc3\xab"},'
    b'"parent":null,"python":{"cache_tag":"cpython-311","implementation":"cpython",'
    b'"platform":"linux-x86_64","version":"3.11.7"},'
    b'"pyvenv":{"include-system-site-packages":"false","version":"3.11.7"},'
    b'"recipe":null,'
    b'"root":"faad59fdbc6aaf657ac1dd1ddfefde41f32f41f9189f78c3c3d3269655d8a23f"}'
)
#: blake3(MANIFEST_BYTES)
MANIFEST_ID = "259f75e8879f7f87b3f7bb86fb2a1d9716b86d921ae1f0997fd710e071327e6c"


def _manifest():
    return Manifest("venv", TREE_ID, python=dict(PYTHON_INFO), pyvenv=PYVENV, labels=LABELS)


# ------------------------------------------------------------------ hashing


def test_hash_of_empty_input_is_the_blake3_constant():
    assert vocker.hash_bytes(b"") == EMPTY_HASH == vocker.EMPTY_ID


def test_hash_of_small_input_is_the_blake3_constant():
    assert vocker.hash_bytes(b"vocker\n") == VOCKER_NL_HASH


def test_hash_is_lowercase_hex_of_id_length():
    h = vocker.hash_bytes(b"x" * 5000)
    assert len(h) == vocker.ID_HEX_LEN == 64
    assert vocker.ID_RE.fullmatch(h)


# ------------------------------------------------------------ digest_to_path

BAD_IDS = [
    pytest.param(VOCKER_NL_HASH.upper(), id="uppercase"),
    pytest.param(VOCKER_NL_HASH[:63], id="short-63"),
    pytest.param(VOCKER_NL_HASH[:12], id="short-prefix"),
    pytest.param(VOCKER_NL_HASH + "0", id="long-65"),
    pytest.param("", id="empty"),
    pytest.param("../" + VOCKER_NL_HASH[3:], id="dotdot-slash"),
    pytest.param("ab/" + VOCKER_NL_HASH[3:], id="slash"),
    pytest.param(VOCKER_NL_HASH[:63] + "g", id="non-hex-g"),
    pytest.param(VOCKER_NL_HASH + "\n", id="trailing-newline"),
    pytest.param(" " + VOCKER_NL_HASH[1:], id="leading-space"),
    pytest.param(None, id="None"),
    pytest.param(VOCKER_NL_HASH.encode(), id="bytes"),
    pytest.param(int(VOCKER_NL_HASH, 16), id="int"),
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_digest_to_path_validates_the_id(bad):
    with pytest.raises(InvalidInputError):
        vocker.digest_to_path("/store/blobs", bad)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_check_id_rejects(bad):
    with pytest.raises(InvalidInputError):
        vocker.check_id(bad)


def test_digest_to_path_shards_blobs_one_level_deep():
    root = os.path.join("store", "blobs")
    assert vocker.digest_to_path(root, VOCKER_NL_HASH) == os.path.join(
        root, "1b", VOCKER_NL_HASH)
    assert vocker.digest_to_path(root, VOCKER_NL_HASH, depth=2) == os.path.join(
        root, "1b", "45", VOCKER_NL_HASH)


def test_digest_to_path_shards_pool_one_level_deep_with_suffix():
    root = os.path.join("store", "pool")
    assert vocker.digest_to_path(root, EMPTY_HASH, depth=1) == os.path.join(
        root, "af", EMPTY_HASH)
    assert vocker.digest_to_path(root, EMPTY_HASH, depth=1, suffix=".x") == os.path.join(
        root, "af", EMPTY_HASH + ".x")


# -------------------------------------------------------------------- names

NAMES_BAD_EVERYWHERE = [
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dotdot"),
    pytest.param("a/b", id="slash"),
    pytest.param("/", id="only-slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a\0b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\rb", id="carriage-return"),
    pytest.param("\udcff", id="lone-surrogate-not-utf8"),
    pytest.param(None, id="None"),
    pytest.param(b"name", id="bytes"),
]


@pytest.mark.parametrize("name", NAMES_BAD_EVERYWHERE)
def test_validate_name_rejects(name):
    with pytest.raises(InvalidInputError):
        vocker.validate_name(name)


@pytest.mark.parametrize("name", [
    "python3.11", "__init__.py", ".hidden", "a b", "caf\u00e9", "\U0001f600",
    "console", "CONFIG", "CON_x", "x.CON", "com10", "lpt", "nul_", "connect.py",
    "activate.bat", "python.exe", "..a", "a..b",
])
def test_ordinary_names_are_accepted_everywhere(name, monkeypatch):
    assert vocker.validate_name(name) == name
    vocker.check_windows_name(name)
    monkeypatch.setattr(vocker, "WINDOWS", True)
    assert vocker.validate_name(name) == name


@pytest.mark.parametrize("name", [
    pytest.param("CON", id="CON"),
    pytest.param("con", id="con-lowercase"),
    pytest.param("PRN", id="PRN"),
    pytest.param("aux.tar.gz", id="aux-double-ext"),
    pytest.param("nul.txt", id="nul.txt"),
    pytest.param("NUL .txt", id="nul-space-ext"),
    pytest.param("COM1", id="COM1"),
    pytest.param("com9.dat", id="com9.dat"),
    pytest.param("LPT9.log", id="LPT9.log"),
    # Windows reserves device names with any extension: "CON.txt" and "con.d"
    # cannot be created (ntpath.isreserved agrees)
    pytest.param("CON.txt", id="CON.txt"),
    pytest.param("con.d", id="con.d"),
    pytest.param("trailing.", id="trailing-dot"),
    pytest.param("trailing ", id="trailing-space"),
    pytest.param("a:b", id="colon-stream"),
    pytest.param("a*b", id="star"),
    pytest.param("a?b", id="question"),
    pytest.param("a<b", id="lt"),
    pytest.param("a>b", id="gt"),
    pytest.param("a|b", id="pipe"),
    pytest.param('a"b', id="dquote"),
    pytest.param("a\x01b", id="control-char"),
    pytest.param("a\tb", id="tab"),
    # Windows also reserves the superscript-digit ports and the console
    # devices (see CPython's ntpath._reserved_names, Python 3.13)
    pytest.param("COM\u00b9", id="COM-superscript-1"),
    pytest.param("LPT\u00b3.txt", id="LPT-superscript-3"),
    pytest.param("CONIN$", id="CONIN$"),
    pytest.param("conout$.log", id="conout$.log"),
])
def test_check_windows_name_refuses(name):
    with pytest.raises(InvalidInputError):
        vocker.check_windows_name(name)


def test_validate_name_applies_windows_rules_only_on_windows(monkeypatch):
    monkeypatch.setattr(vocker, "WINDOWS", False)
    assert vocker.validate_name("CON") == "CON"
    monkeypatch.setattr(vocker, "WINDOWS", True)
    with pytest.raises(InvalidInputError):
        vocker.validate_name("CON")


# -------------------------------------------------------------------- trees


def test_tree_serializes_to_exact_canonical_bytes():
    assert Tree(TREE_ENTRIES).serialize() == TREE_BYTES


def test_tree_id_is_the_known_constant():
    assert Tree(TREE_ENTRIES).id == TREE_ID
    assert vocker.hash_bytes(TREE_BYTES) == TREE_ID


def test_empty_tree_is_empty_bytes():
    assert Tree([]).serialize() == b""
    assert Tree([]).id == EMPTY_HASH
    assert Tree.parse(b"", EMPTY_HASH).entries == []


@pytest.mark.parametrize("order", ["given", "reversed", "rotated", "str-lower", "by-type"])
def test_tree_sorts_by_utf8_bytes_whatever_the_input_order(order):
    entries = list(TREE_ENTRIES)
    if order == "reversed":
        entries.reverse()
    elif order == "rotated":
        entries = entries[3:] + entries[:3]
    elif order == "str-lower":
        entries.sort(key=lambda e: e.name.lower())
    elif order == "by-type":
        entries.sort(key=lambda e: (e.type, e.name))
    tree = Tree(entries)
    assert tree.serialize() == TREE_BYTES
    names = [e.name for e in tree.entries]
    assert names == sorted(names, key=lambda n: n.encode("utf-8"))


def test_tree_order_is_bytewise_not_case_insensitive_nor_utf16():
    names = [e.name for e in Tree(TREE_ENTRIES).entries]
    # bytewise: "README.txt" (0x52) sorts before "activate" (0x61)
    assert names.index("README.txt") < names.index("activate")
    # U+FF5E (EF BD 9E) sorts before U+1F600 (F0 9F 98 80) in UTF-8; in
    # UTF-16 (Windows/.NET/JS string order) the surrogate D83D sorts first
    assert names.index("\uff5e") < names.index("\U0001f600")
    assert "\U0001f600".encode("utf-16-be") < "\uff5e".encode("utf-16-be")


def test_tree_parse_round_trips():
    tree = Tree.parse(TREE_BYTES, expected_id=TREE_ID)
    assert tree.serialize() == TREE_BYTES
    assert tree.id == TREE_ID
    assert tree.entries == Tree(TREE_ENTRIES).entries
    assert all(isinstance(e, TreeEntry) for e in tree.entries)
    link = [e for e in tree.entries if e.type == "l"][0]
    assert (link.name, link.target) == ("python3", "python")


def test_tree_parse_with_wrong_expected_id_raises_integrity_error():
    with pytest.raises(IntegrityError) as info:
        Tree.parse(TREE_BYTES, expected_id=EMPTY_HASH)
    assert info.value.object_id == EMPTY_HASH
    assert info.value.exit_code == vocker.EXIT_INVALID


def test_tree_parse_with_one_flipped_byte_raises_integrity_error():
    data = TREE_BYTES.replace(b"README", b"README2")
    with pytest.raises(IntegrityError):
        Tree.parse(data, expected_id=TREE_ID)


H = VOCKER_NL_HASH.encode()
E = EMPTY_HASH.encode()

BAD_TREES = [
    pytest.param(b"f " + H + b" ..\n", id="name-dotdot"),
    pytest.param(b"f " + H + b" .\n", id="name-dot"),
    pytest.param(b"f " + H + b" \n", id="name-empty"),
    pytest.param(b"f " + H + b" a/b\n", id="name-slash"),
    pytest.param(b"f " + H + b" ../etc\n", id="name-dotdot-slash"),
    pytest.param(b"f " + H + b" a\\b\n", id="name-backslash"),
    pytest.param(b"f " + H + b" a\0b\n", id="name-nul"),
    pytest.param(b"f " + H + b" a\nb\n", id="name-newline"),
    pytest.param(b"f " + H + b" a\rb\n", id="name-carriage-return"),
    pytest.param(b"q " + H + b" a\n", id="unknown-type"),
    pytest.param(b"F " + H + b" a\n", id="type-uppercase-F"),
    pytest.param(b"ff " + H + b" a\n", id="type-two-chars"),
    pytest.param(b" " + H + b" a\n", id="type-empty"),
    pytest.param(b"f " + H[:63] + b" a\n", id="id-short"),
    pytest.param(b"f " + H.upper() + b" a\n", id="id-uppercase"),
    pytest.param(b"f " + H + b"0 a\n", id="id-65-chars"),
    pytest.param(b"f " + H[:63] + b"z a\n", id="id-non-hex"),
    pytest.param(b"d 707974686f6e lib\n", id="dir-with-link-ref"),
    pytest.param(b"f " + H + b" b\nf " + H + b" a\n", id="unsorted"),
    pytest.param(b"f " + H + b" a\nx " + E + b" a\n", id="duplicate-name"),
    pytest.param(b"f " + H + b" a\nf " + H + b" B\n", id="unsorted-case"),
    pytest.param(b"f " + H + b" a", id="truncated-no-newline"),
    pytest.param(b"f " + H + b" a\nf " + H[:20], id="truncated-mid-line"),
    pytest.param(b"f " + H + b" \xff\xfe\n", id="non-utf8-name"),
    pytest.param(b"f " + H + b" \xed\xa0\x80\n", id="utf8-encoded-surrogate"),
    pytest.param(b"l zz6f6e python\n", id="link-target-not-hex"),
    pytest.param(b"l 707 python\n", id="link-target-odd-hex"),
    pytest.param(b"l  python\n", id="link-target-empty"),
    pytest.param(b"l 7079746F6E python\n", id="link-target-uppercase-hex"),
    pytest.param(b"l ff python\n", id="link-target-not-utf8"),
    pytest.param(b"l 610062 python\n", id="link-target-nul"),
    pytest.param(b"f " + H + b"\n", id="too-few-fields"),
    pytest.param(b"f\n", id="only-type"),
    pytest.param(b"\n", id="blank-line"),
    pytest.param(b"f " + H + b" a\n\n", id="trailing-blank-line"),
    pytest.param(b"f  " + H + b" a\n", id="double-space"),
    pytest.param(b"f\t" + H + b"\ta\n", id="tab-separated"),
    pytest.param(b"f " + H + b" a\r\n", id="crlf"),
    pytest.param(b"l 61\t62 python\n", id="link-target-hex-with-tab"),
]


@pytest.mark.parametrize("data", BAD_TREES)
def test_tree_parse_rejects(data):
    with pytest.raises(InvalidInputError):
        Tree.parse(data)


def test_tree_parse_refuses_case_collisions_only_on_windows(monkeypatch):
    data = b"f " + H + b" README\nf " + H + b" readme\n"
    monkeypatch.setattr(vocker, "WINDOWS", False)
    assert [e.name for e in Tree.parse(data).entries] == ["README", "readme"]
    monkeypatch.setattr(vocker, "WINDOWS", True)
    with pytest.raises(InvalidInputError):
        Tree.parse(data)


def test_tree_parse_refuses_windows_reserved_names_on_windows(monkeypatch):
    monkeypatch.setattr(vocker, "WINDOWS", True)
    with pytest.raises(InvalidInputError):
        Tree.parse(b"f " + H + b" nul.txt\n")


# ---------------------------------------------------------------- manifests


def test_manifest_serializes_to_exact_canonical_bytes():
    data = _manifest().serialize()
    assert data == MANIFEST_BYTES
    assert b" " not in data
    assert b"Zo\xc3\xab" in data and b"\\u00eb" not in data


def test_manifest_id_is_the_known_constant():
    assert _manifest().id == MANIFEST_ID
    assert vocker.hash_bytes(MANIFEST_BYTES) == MANIFEST_ID


def test_manifest_is_the_same_whatever_the_dict_order():
    m = Manifest("venv", TREE_ID,
                 python=dict(reversed(list(PYTHON_INFO.items()))),
                 pyvenv=dict(reversed(list(PYVENV.items()))),
                 labels=dict(reversed(list(LABELS.items()))))
    assert m.serialize() == MANIFEST_BYTES


def test_manifest_parse_round_trips():
    m = Manifest.parse(MANIFEST_BYTES, expected_id=MANIFEST_ID)
    assert m.to_dict() == _manifest().to_dict()
    assert m.serialize() == MANIFEST_BYTES
    assert m.labels["owner"] == "Zo\u00eb"


SHA = "ab" * 32
WHEEL = {"name": "vockdemo", "version": "1.0", "wheel": "vockdemo-1.0-py3-none-any.whl",
         "sha256": SHA}
COPIED = {"from": "app/main.py", "to": "app/main.py", "blob": TREE_ID, "exec": False}
BUILD_RECIPE = {"by": "build", "text": "PYTHON 3.12\nINSTALL req.txt\n", "installer": "pip 24.2",
                "steps": [{"op": "python", "version": "3.12"},
                          {"op": "install", "wheels": [WHEEL]},
                          {"op": "copy", "files": [COPIED]},
                          {"op": "label", "labels": {"team": "data"}},
                          {"op": "run", "argv": ["python", "-c", "pass"]}]}
COMMIT_RECIPE = {"by": "commit", "installed": [
    {"name": "pip", "version": "24.2", "installer": "pip", "editable": False}]}


@pytest.mark.parametrize("recipe", [BUILD_RECIPE, COMMIT_RECIPE, None], ids=["build", "commit", "none"])
def test_manifest_with_parent_and_recipe_round_trips(recipe):
    m = Manifest("venv", EMPTY_HASH, python=PYTHON_INFO, parent=MANIFEST_ID, recipe=recipe)
    again = Manifest.parse(m.serialize(), m.id)
    assert again.to_dict() == m.to_dict()


def _recipe(*path_and_value, base=BUILD_RECIPE):
    """BUILD_RECIPE with the item at ``path`` set to value (... removes it)."""
    obj = json.loads(json.dumps(base))
    *path, value = path_and_value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


BAD_RECIPES = [
    pytest.param({"steps": ["pip install x"]}, id="free-form"),
    pytest.param(_recipe("by", "docker"), id="by-unknown"),
    pytest.param(_recipe("text", ...), id="no-text"),
    pytest.param(_recipe("text", "x" * (65 << 10)), id="text-too-long"),
    pytest.param(_recipe("installer", "pip\n--index-url x"), id="installer-newline"),
    pytest.param(_recipe("steps", []), id="no-steps"),
    pytest.param(_recipe("steps", 0, "op", "install"), id="first-not-base"),
    pytest.param(_recipe("steps", 2, {"op": "from", "image": TREE_ID}), id="second-base"),
    pytest.param(_recipe("steps", 0, "version", "3.x"), id="python-version"),
    pytest.param(_recipe("steps", 0, "extra", 1), id="step-extra-key"),
    pytest.param(_recipe("steps", 1, "op", "pip"), id="step-unknown"),
    pytest.param(_recipe("steps", 1, "wheels", 0, "sha256", SHA.upper()), id="sha-upper"),
    pytest.param(_recipe("steps", 1, "wheels", 0, "name", "../x"), id="wheel-name"),
    pytest.param(_recipe("steps", 1, "wheels", 0, "wheel", "x/../y.whl"), id="wheel-file"),
    pytest.param(_recipe("steps", 1, "wheels", 0, "version", ""), id="wheel-version"),
    pytest.param(_recipe("steps", 2, "files", 0, "to", "../outside"), id="copy-escapes"),
    pytest.param(_recipe("steps", 2, "files", 0, "to", "/etc/passwd"), id="copy-absolute"),
    pytest.param(_recipe("steps", 2, "files", 0, "from", "a//b"), id="copy-empty-name"),
    pytest.param(_recipe("steps", 2, "files", 0, "blob", "x"), id="copy-blob"),
    pytest.param(_recipe("steps", 2, "files", 0, "exec", 1), id="copy-exec-int"),
    pytest.param(_recipe("steps", 3, "labels", {"": "x"}), id="label-key"),
    pytest.param(_recipe("steps", 4, "argv", []), id="run-empty"),
    pytest.param(_recipe("steps", 4, "argv", ["a\0b"]), id="run-nul"),
    pytest.param(_recipe("installed", 0, "editable", "no", base=COMMIT_RECIPE), id="editable"),
    pytest.param(_recipe("installed", 0, "name", "x y", base=COMMIT_RECIPE), id="installed-name"),
    pytest.param(_recipe("installed", 0, "extra", 1, base=COMMIT_RECIPE), id="installed-key"),
]


@pytest.mark.parametrize("recipe", BAD_RECIPES)
def test_malformed_recipe_is_refused_in_one_line(recipe):
    data = Manifest("venv", EMPTY_HASH, python=PYTHON_INFO, recipe=recipe).serialize()
    with pytest.raises(InvalidInputError) as info:
        Manifest.parse(data)
    assert "recipe" in str(info.value) and "\n" not in str(info.value)


def test_manifest_parse_with_wrong_expected_id_raises_integrity_error():
    with pytest.raises(IntegrityError) as info:
        Manifest.parse(MANIFEST_BYTES, expected_id=TREE_ID)
    assert info.value.object_id == TREE_ID


def _canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _variant(**changes):
    """The fixed manifest as canonical JSON, with fields changed or removed
    (a value of ... removes the field)."""
    obj = json.loads(MANIFEST_BYTES)
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return _canon(obj)


def _python(**changes):
    py = dict(PYTHON_INFO)
    for key, value in changes.items():
        if value is ...:
            del py[key]
        else:
            py[key] = value
    return py


BAD_MANIFESTS = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b"[]", id="json-list"),
    pytest.param(b'"venv"', id="json-string"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"{}", id="json-empty-object"),
    pytest.param(_variant(recipe=...), id="missing-recipe"),
    pytest.param(_variant(root=...), id="missing-root"),
    pytest.param(_variant(created="2024-01-01T00:00:00Z"), id="extra-field"),
    pytest.param(_variant(format=2), id="format-2"),
    pytest.param(_variant(format=0), id="format-0"),
    pytest.param(_variant(format="1"), id="format-string"),
    pytest.param(_variant(format=None), id="format-null"),
    pytest.param(_variant(kind="docker"), id="kind-unknown"),
    pytest.param(_variant(kind="VENV"), id="kind-uppercase"),
    pytest.param(_variant(kind=["venv"]), id="kind-list"),
    pytest.param(_variant(root=TREE_ID[:63]), id="root-short"),
    pytest.param(_variant(root=TREE_ID.upper()), id="root-uppercase"),
    pytest.param(_variant(root=None), id="root-null"),
    pytest.param(_variant(root="../" + TREE_ID[3:]), id="root-traversal"),
    pytest.param(_variant(parent=MANIFEST_ID[:12]), id="parent-short"),
    pytest.param(_variant(parent=42), id="parent-int"),
    pytest.param(_variant(python=_python(cache_tag=...)), id="python-missing-cache-tag"),
    pytest.param(_variant(python=_python(platform=...)), id="python-missing-platform"),
    pytest.param(_variant(python=_python(version=3.11)), id="python-version-number"),
    pytest.param(_variant(python=_python(cache_tag="../x")), id="python-bad-cache-tag"),
    pytest.param(_variant(python=["cpython", "3.11"]), id="python-list"),
    pytest.param(_variant(python=_python(version="3")), id="python-version-major-only"),
    pytest.param(_variant(python=_python(version="3.11.7rc1")), id="python-version-suffix"),
    pytest.param(_variant(python=_python(version="")), id="python-version-empty"),
    pytest.param(_variant(python=_python(abi="cp311")), id="python-unknown-key"),
    pytest.param(_variant(python=_python(implementation="CPython")),
                 id="python-implementation-uppercase"),
    pytest.param(_variant(python=_python(implementation="1python")),
                 id="python-implementation-digit-first"),
    pytest.param(_variant(python=_python(platform="linux x86_64")), id="python-platform-space"),
    pytest.param(_variant(python=_python(platform="linux\x1b[2J")),
                 id="python-platform-escape"),
    pytest.param(_variant(python=_python(platform="p" * 65)), id="python-platform-long"),
    pytest.param(_variant(python=_python(cache_tag=["cpython-311"])), id="python-cache-tag-list"),
    pytest.param(_variant(labels={"a\x1b[31m": "x"}), id="labels-escape-in-key"),
    pytest.param(_variant(labels={"a\nb": "x"}), id="labels-newline-in-key"),
    pytest.param(_variant(labels={"a\x9b": "x"}), id="labels-c1-in-key"),
    pytest.param(_variant(labels={"": "x"}), id="labels-empty-key"),
    pytest.param(_variant(labels={"k" * 129: "x"}), id="labels-long-key"),
    pytest.param(_variant(labels={"k": "v" * 4097}), id="labels-long-value"),
    pytest.param(_variant(labels={f"k{i:03d}": "v" for i in range(257)}), id="labels-too-many"),
    pytest.param(_variant(labels={"app": 1}), id="labels-int-value"),
    pytest.param(_variant(labels={"app": None}), id="labels-null-value"),
    pytest.param(_variant(labels=["app"]), id="labels-list"),
    pytest.param(_variant(labels=None), id="labels-null"),
    pytest.param(_variant(pyvenv={"version": ["3.11"]}), id="pyvenv-list-value"),
    # valid JSON, valid content, but not the canonical bytes
    pytest.param(json.dumps(json.loads(MANIFEST_BYTES), sort_keys=True,
                            ensure_ascii=False).encode(), id="noncanonical-spacing"),
    pytest.param(json.dumps(dict(reversed(json.loads(MANIFEST_BYTES).items())),
                            separators=(",", ":"), ensure_ascii=False).encode(),
                 id="noncanonical-key-order"),
    pytest.param(json.dumps(json.loads(MANIFEST_BYTES), sort_keys=True,
                            separators=(",", ":")).encode(), id="noncanonical-ascii-escapes"),
    pytest.param(json.dumps(json.loads(MANIFEST_BYTES), sort_keys=True, indent=1,
                            ensure_ascii=False).encode(), id="noncanonical-indented"),
    pytest.param(MANIFEST_BYTES + b"\n", id="noncanonical-trailing-newline"),
    pytest.param(b" " + MANIFEST_BYTES, id="noncanonical-leading-space"),
    pytest.param(b"\xef\xbb\xbf" + MANIFEST_BYTES, id="utf8-bom"),
    pytest.param(MANIFEST_BYTES.replace(b'"format":1', b'"format":1,"format":1'),
                 id="duplicate-key"),
    # True == 1 and 1.0 == 1 in Python, so these slip past "!= FORMAT_VERSION"
    # and then re-serialize to themselves, passing the canonical check
    pytest.param(MANIFEST_BYTES.replace(b'"format":1', b'"format":true'), id="format-true"),
    pytest.param(MANIFEST_BYTES.replace(b'"format":1', b'"format":1.0'), id="format-1.0"),
]


@pytest.mark.parametrize("data", BAD_MANIFESTS)
def test_manifest_parse_rejects(data):
    with pytest.raises(InvalidInputError):
        Manifest.parse(data)


def test_python_version_3_is_refused_at_parse_not_at_create():
    with pytest.raises(InvalidInputError, match="python version"):
        Manifest.parse(_variant(python=_python(version="3")))


@pytest.mark.parametrize("labels", [{"note": "line one\nline two\x1b[31m"},
                                    {"k" * 128: "v" * 4096}])
def test_label_values_may_hold_any_text_within_bounds(labels):
    m = Manifest("plain", EMPTY_HASH, labels=labels)
    assert Manifest.parse(m.serialize(), m.id).labels == labels


def test_noncanonical_key_order_case_is_really_out_of_order():
    # guard the table above: the reordered variant is valid JSON of the same object
    data = [p.values[0] for p in BAD_MANIFESTS if p.id == "noncanonical-key-order"][0]
    assert json.loads(data) == json.loads(MANIFEST_BYTES)
    assert data != MANIFEST_BYTES


# ------------------------------------------------------------------- errors


def test_not_found_error_carries_what_and_name():
    err = NotFoundError("image", "web:latest", "run 'vocker images' to list images")
    assert (err.what, err.name) == ("image", "web:latest")
    assert err.exit_code == vocker.EXIT_NOT_FOUND == 3
    assert str(err) == "image not found: web:latest; run 'vocker images' to list images"
    assert isinstance(err, VockerError)


def test_ambiguous_error_carries_candidates():
    ids = [MANIFEST_ID, MANIFEST_ID[:-1] + "0"]
    err = AmbiguousError("259f", ids)
    assert err.candidates == ids
    assert err.prefix == "259f"
    assert err.exit_code == vocker.EXIT_CONFLICT == 4
    assert isinstance(err, ConflictError)
    assert MANIFEST_ID[:12] in str(err) and MANIFEST_ID not in str(err)


def test_ambiguous_error_copies_the_candidate_list():
    ids = [MANIFEST_ID]
    err = AmbiguousError("25", ids)
    ids.append(TREE_ID)
    assert err.candidates == [MANIFEST_ID]


@pytest.mark.parametrize("err", [
    pytest.param(NotFoundError("image", "web", "run 'vocker images'"), id="not-found"),
    pytest.param(AmbiguousError("ab", [MANIFEST_ID, TREE_ID]), id="ambiguous"),
    pytest.param(IntegrityError("blob", EMPTY_HASH, "content does not match its ID"),
                 id="integrity"),
    pytest.param(InvalidInputError("bad thing", "do this instead"), id="invalid-input"),
    pytest.param(vocker.LinkModeError("hardlink", "/tmp/x", "cross-device link"),
                 id="link-mode"),
])
def test_error_with_hint_is_one_line(err):
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert err.hint and text.endswith("; " + err.hint)
    assert text.startswith(err.message)


def test_error_without_hint_is_just_the_message():
    err = InvalidInputError("bad thing")
    assert str(err) == "bad thing"
    assert err.hint is None
    assert err.exit_code == vocker.EXIT_INVALID == 5


def test_integrity_error_is_invalid_input_and_shows_short_id():
    err = IntegrityError("tree", TREE_ID, "content does not match its ID")
    assert isinstance(err, InvalidInputError)
    assert err.what == "tree" and err.object_id == TREE_ID
    assert TREE_ID[:12] in str(err) and TREE_ID not in str(err)


# ------------------------------------------------------------ image names

@pytest.mark.parametrize("ref, forms", [
    ("web", ("web:latest", None)),
    ("web:1.0", ("web:1.0", None)),
    ("org/web:1.0", ("org/web:1.0", None)),
    ("cafe", ("cafe:latest", "cafe")),             # hex: the tag first, then an ID prefix
    ("cafe:1", ("cafe:1", None)),
    ("CAFE", ("CAFE:latest", None)),               # IDs are lowercase
    (TREE_ID, (TREE_ID + ":latest", TREE_ID)),
])
def test_one_rule_says_tag_or_id_prefix(ref, forms):
    assert vocker.ref_forms(ref) == forms


@pytest.mark.parametrize("ref", ["", ":1", "-web", "we b", "web:1:2", "web:" + "1" * 200, None])
def test_bad_image_names_are_usage_errors(ref):
    with pytest.raises(vocker.UsageError):
        vocker.ref_forms(ref)


def test_local_and_repository_names_resolve_by_the_same_rule(tmp_path):
    """A hex name that is also a tag means the tag, in the store and in a repository."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2" / "b.txt").write_text("b\n")
    repo = str(tmp_path / "repo")
    with vocker.Store(tmp_path / "home") as store:
        first = vocker.commit(store, src, kind="plain")["id"]
        second = vocker.commit(store, tmp_path / "src2", kind="plain")["id"]
        prefix = first[:6]
        vocker.tag_image(store, second, prefix)   # the tag "<prefix>:latest" names the other image
        assert store.resolve_ref(prefix) == (second, prefix + ":latest")
        assert store.resolve_ref(first[:8]) == (first, None)
        pushed = vocker.push(store, [prefix, first[:8]], repo)["images"]
        assert [(p["id"], p["tag"]) for p in pushed] == [(second, prefix + ":latest"), (first, None)]
    with vocker.Store(tmp_path / "home2") as other:
        pulled = vocker.pull(other, repo, [prefix])["images"][0]
        assert (pulled["id"], pulled["tag"]) == (second, prefix + ":latest")
