"""Release-log entries and their canonical bytes.

An entry is a JSON object encoded canonically: RFC 8785 (JCS) restricted to what entries contain —
objects with ASCII keys (sorted), arrays, strings, integers of magnitude below 2**53, true, false, null;
no floats; UTF-8; no whitespace. For that subset JCS is exactly
``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, so any JSON library
that sorts keys can reproduce the bytes. The log hashes these bytes (RFC 9162 leaf hash) and serves
them verbatim; an auditor checks that the bytes it got are canonical before trusting their meaning.

Entries hold digests of evidence and claims, names and versions — never key material.
"""

from __future__ import annotations

import json
from typing import Any

ENTRY_VERSION = 1
MAX_SAFE_INTEGER = 2**53 - 1
MAX_ENTRY_BYTES = 64 * 1024
# 2**53 - 1 has 16 digits: a longer integer is out of range whatever its digits, so it is refused as text,
# before int() (which raises an untyped ValueError past 4,300 digits and is quadratic below that).
_MAX_INTEGER_DIGITS = len(str(MAX_SAFE_INTEGER))


class EntryError(ValueError):
    """Bytes that are not a canonical, well-formed log entry."""


def canonical_bytes(value: dict[str, Any]) -> bytes:
    _check(value, path="$")
    try:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise EntryError("a log entry's strings are Unicode text (a lone surrogate is not)") from None
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"a log entry is limited to {MAX_ENTRY_BYTES} bytes; this one is {len(data)}")
    return data


def decode_entry(data: bytes) -> dict[str, Any]:
    """Parse entry bytes, insisting that they are exactly the canonical encoding of what they say.

    Any bytes at all get a value or an :class:`EntryError` saying what is wrong: an auditor reads
    entries from a log it does not trust, and must name a bad entry, not stop on it.
    """
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError("the entry is larger than any entry the log writes")
    try:
        text = data.decode("utf-8")
        value = _parse(text)
        if not isinstance(value, dict):
            raise EntryError("an entry is a JSON object")
        if canonical_bytes(value) != data:
            # Say why when it is a repeated member (the decoded dict kept one of them); the check is only
            # made here so that honest entries are parsed at the C decoder's speed.
            _parse(text, object_pairs_hook=_no_duplicate_members)
            raise EntryError("the entry bytes are not in canonical form (key order, spacing or escapes)")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EntryError(f"the entry is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        # The entry is nested deeper than this interpreter can walk (an entry's bytes allow tens of
        # thousands of levels); the writer could not have encoded it either.
        raise EntryError("the entry is nested too deeply to decode") from None
    return value


def _parse(text: str, **hooks: Any) -> Any:
    return json.loads(
        text, parse_float=_refuse_float, parse_constant=_refuse_float, parse_int=_bounded_int, **hooks
    )


def _refuse_float(text: str) -> Any:
    raise EntryError(f"entries carry no floating-point numbers ({text[:20]})")


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > _MAX_INTEGER_DIGITS:
        raise EntryError(f"an integer of {digits} digits is outside the interoperable range")
    return int(text)


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two readers could pick different values of a duplicated member; canonical form has none.
    value: dict[str, Any] = {}
    for name, item in pairs:
        if name in value:
            raise EntryError(f"the entry repeats the member {name[:64]!r}")
        value[name] = item
    return value


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise EntryError(f"{path}: integer {value} is outside the interoperable range")
        return
    if isinstance(value, list):
        for position, item in enumerate(value):
            _check(item, f"{path}[{position}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise EntryError(f"{path}: object keys must be ASCII strings")
            _check(item, f"{path}.{key}")
        return
    raise EntryError(f"{path}: {type(value).__name__} cannot appear in a log entry")
