"""JSON parsing for security decisions: duplicate members are refused (two parsers could pick different
values of a duplicated member), and only an object is accepted where an object is expected."""

from __future__ import annotations

import json
from typing import Any


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def loads_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw`` (UTF-8); ``ValueError`` for anything else."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
