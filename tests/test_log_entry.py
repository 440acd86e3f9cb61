"""Canonical entry bytes: deterministic, JCS-compatible, and strictly checked on the way back in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.entry import MAX_SAFE_INTEGER, EntryError, canonical_bytes, decode_entry

pytestmark = pytest.mark.fuzz

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(codec="ascii"), max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
entries = st.dictionaries(st.text(alphabet=st.characters(codec="ascii"), max_size=8), json_values, max_size=6)


@given(entries)
def test_round_trip_and_determinism(entry: dict[str, Any]) -> None:
    data = canonical_bytes(entry)
    assert decode_entry(data) == entry
    reordered = dict(reversed(list(entry.items())))
    assert canonical_bytes(reordered) == data


@given(entries)
def test_any_other_spelling_of_the_same_json_is_refused(entry: dict[str, Any]) -> None:
    pretty = json.dumps(entry, indent=1, sort_keys=True, ensure_ascii=False).encode()
    if pretty != canonical_bytes(entry):
        with pytest.raises(EntryError, match="canonical"):
            decode_entry(pretty)


def test_known_bytes() -> None:
    entry = {"v": 1, "kind": "key-release", "decision": "denied", "b": [1, None, True], "é": 0}
    with pytest.raises(EntryError, match="ASCII"):
        canonical_bytes(entry)
    del entry["é"]
    assert canonical_bytes(entry) == b'{"b":[1,null,true],"decision":"denied","kind":"key-release","v":1}'
    assert canonical_bytes({"s": "é\u2028"}) == '{"s":"é\u2028"}'.encode()


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"a":1.5}',
        b'{"a":NaN}',
        b"\xff",
        b'{"a":1',
        b'{"b":1,"a":2}',
        b' {"a":1}',
        b'{"a":"\\u0041"}',
        b'{"a":9007199254740993}',
    ],
)
def test_refused_bytes(data: bytes) -> None:
    with pytest.raises(EntryError):
        decode_entry(data)


def test_values_that_cannot_be_logged() -> None:
    for bad in ({"x": 1.0}, {"x": b"bytes"}, {"x": 2**60}, {"x": {1: "a"}}, {"x": "\ud800"}, {"\udfff": 1}):
        with pytest.raises(EntryError):
            canonical_bytes(bad)
    with pytest.raises(EntryError, match="limited"):
        canonical_bytes({"x": "a" * 70_000})
