"""The one bounded reader for numbers and JSON that come from outside."""

import pytest

import vocker

BAD_JSON = [
    ("deep-list", b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ("deep-object", b'{"a":' * 40 + b"1" + b"}" * 40, "nested too deeply"),
    ("duplicate-key", b'{"a":1,"a":2}', "duplicate key"),
    ("float", b'{"a":1.5}', "unsupported JSON value"),
    ("nan", b'{"a":NaN}', "unsupported JSON value"),
    ("huge-int", b'{"a":' + b"9" * 5000 + b"}", "number too long"),
    ("not-utf8", b'{"a":"\xff"}', "not valid JSON"),
    ("not-json", b"<html>", "not valid JSON"),
    ("too-large", b'"' + b"x" * 2000 + b'"', "too large"),
]


@pytest.mark.parametrize("data, fragment", [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_read_json_refuses(data, fragment):
    with pytest.raises(vocker.InvalidInputError) as info:
        vocker.read_json(data, "thing", limit=1000 if fragment == "too large" else 1 << 20)
    assert fragment in str(info.value)
    assert str(info.value).startswith("thing")


def test_read_json_accepts_brackets_inside_strings():
    data = b'{"a":"' + b"[" * 100 + b'","b":[1,{"c":"]}"}]}'
    assert vocker.read_json(data, "thing", 1 << 20) == {"a": "[" * 100, "b": [1, {"c": "]}"}]}


BAD_UINT = ["", "-1", "+1", " 1", "1 ", "1.0", "0x10", "\uff11", "1" * 20, str(10 ** 20), "1e3"]


@pytest.mark.parametrize("text", BAD_UINT)
def test_read_uint_refuses(text):
    with pytest.raises(vocker.InvalidInputError, match="not a number in range"):
        vocker.read_uint(text, "offset")


def test_read_uint_limit():
    assert vocker.read_uint("4096", "size", limit=4096) == 4096
    with pytest.raises(vocker.InvalidInputError):
        vocker.read_uint("4097", "size", limit=4096)
