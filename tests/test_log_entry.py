"""Canonical entry bytes: deterministic, JCS-compatible, and strictly checked on the way back in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.entry import MAX_SAFE_INTEGER, EntryError, canonical_bytes, decode_entry
from tests.fuzzing import fuzz_settings

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


# What a hostile log could serve as an entry, and what decode_entry must say about it: each one an
# EntryError (so the auditor can name the entry), never RecursionError or the ValueError int() raises
# past 4,300 digits.
HOSTILE_ENTRIES = {
    "nested arrays 30,000 deep": (b'{"a":' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nested too deeply"),
    "nested objects 10,000 deep": (b'{"a":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001, "nested too deeply"),
    "a 4,301-digit integer": (b'{"a":' + b"9" * 4301 + b"}", "4301 digits"),
    "a negative 20,000-digit integer": (b'{"a":-' + b"1" * 20_000 + b"}", "20000 digits"),
    "a 17-digit integer": (b'{"a":10000000000000000}', "17 digits"),
    "invalid UTF-8": (b'{"a":"\xc3\x28"}', "not UTF-8"),
    "a UTF-8-encoded surrogate": (b'{"a":"\xed\xa0\x80"}', "not UTF-8"),
    "an escaped lone surrogate": (b'{"a":"\\ud800"}', "surrogate"),
    "a duplicate member": (b'{"a":1,"a":2}', "repeats the member 'a'"),
    "NaN": (b'{"a":NaN}', "floating-point"),
    "Infinity": (b'{"a":-Infinity}', "floating-point"),
    "oversize": (b'{"a":"' + b"x" * 70_000 + b'"}', "larger than any entry"),
    "not an object": (b"[1]", "a JSON object"),
    "truncated": (b'{"a":[1,', "not UTF-8 JSON"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ENTRIES))
def test_hostile_entries_are_a_typed_error_saying_what_is_wrong(name: str) -> None:
    data, reason = HOSTILE_ENTRIES[name]
    with pytest.raises(EntryError, match=reason):
        decode_entry(data)


def test_nesting_the_writer_can_encode_is_read_back() -> None:
    """The guard against deep nesting refuses nothing canonical_bytes writes at ordinary depths."""
    value: Any = 1
    for _ in range(200):
        value = [value]
    data = canonical_bytes({"a": value})
    assert decode_entry(data) == {"a": value}


# Random bytes, JSON-looking text, and long runs of what breaks recursive or digit-converting decoders.
hostile_bytes = (
    st.binary(max_size=400)
    | st.text(alphabet='{}[]":,.-+0123456789eEaNnIfilrstu\\ ', max_size=400).map(str.encode)
    | st.builds(
        lambda opener, count, tail: b'{"a":' + opener * count + tail,
        st.sampled_from([b"[", b'{"a":', b"9", b"-1", b'"\\ud800', b"\xed\xa0\x80"]),
        st.integers(min_value=0, max_value=40_000),
        st.binary(max_size=16),
    )
)


@given(hostile_bytes)
@fuzz_settings(300)
def test_any_bytes_decode_or_are_an_entry_error(data: bytes) -> None:
    try:
        entry = decode_entry(data)
    except EntryError:
        return
    assert canonical_bytes(entry) == data  # what decodes is exactly canonical
