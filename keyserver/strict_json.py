"""JSON parsing for security decisions: duplicate members are refused (two parsers could pick different
values of a duplicated member), so are NaN and Infinity (not JSON, and not equal to themselves), and only
an object is accepted where an object is expected. The one strict parser of the project: the server, the
loader, the SDK, policy documents and TDX collateral all read JSON through it."""

from __future__ import annotations

import json
from typing import Any


class DuplicateMember(ValueError):
    """An object names a member twice."""


class NotJsonConstant(ValueError):
    """NaN, Infinity or -Infinity, which Python's reader would otherwise accept."""


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise DuplicateMember(f"duplicate member {name[:64]!r}")
        result[name] = value
    return result


def refuse_constant(name: str) -> Any:
    raise NotJsonConstant(f"{name} is not JSON")


# For readers that need ``raw_decode`` (several values, or a value followed by other text).
STRICT_DECODER = json.JSONDecoder(object_pairs_hook=no_duplicates, parse_constant=refuse_constant)


def loads_strict(raw: bytes) -> Any:
    """The JSON value in ``raw`` (UTF-8); ``ValueError`` saying what is wrong for anything else."""
    try:
        return json.loads(
            raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=refuse_constant
        )
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def loads_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw`` (UTF-8); ``ValueError`` for anything else."""
    try:
        value = loads_strict(raw)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
