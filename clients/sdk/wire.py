"""Reading the keyserver's JSON answers, strictly.

A :class:`Fields` wraps one JSON object of a response and hands out its members with the type the API
documents; a member that is missing or of another type raises :class:`UnexpectedResponse` naming the
request and the member. Nothing is defaulted: a response that does not say what the API promises is not
trusted (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from clients.sdk.errors import UnexpectedResponse
from keyserver.strict_json import loads_strict

T = TypeVar("T")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def loads(data: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate members, no NaN/Infinity; ``ValueError`` otherwise."""
    return loads_strict(data)


class Fields:
    """Typed access to the members of one JSON object of a response."""

    def __init__(self, value: object, where: str, status: int | None = None) -> None:
        self.where = where
        self.status = status
        if not isinstance(value, dict):
            raise self.error(f"expected a JSON object, got {type(value).__name__}")
        self.raw: dict[str, Any] = value

    def error(self, message: str) -> UnexpectedResponse:
        return UnexpectedResponse(f"{self.where}: {message}", status=self.status)

    def _get(self, name: str, kind: type[T] | tuple[type, ...], what: str) -> Any:
        if name not in self.raw:
            raise self.error(f"member {name!r} is missing")
        value = self.raw[name]
        # bool is an int in Python, never in JSON's sense of a count.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise self.error(f"member {name!r} should be {what}, got {type(value).__name__}")
        return value

    def _optional(self, name: str, read: Callable[[str], T]) -> T | None:
        if name not in self.raw:
            raise self.error(f"member {name!r} is missing")
        return None if self.raw[name] is None else read(name)

    def string(self, name: str) -> str:
        value: str = self._get(name, str, "a string")
        return value

    def optional_string(self, name: str) -> str | None:
        return self._optional(name, self.string)

    def integer(self, name: str) -> int:
        value: int = self._get(name, int, "an integer")
        return value

    def boolean(self, name: str) -> bool:
        value: bool = self._get(name, bool, "true or false")
        return value

    def timestamp(self, name: str) -> datetime:
        text = self.string(name)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise self.error(f"member {name!r} is not an ISO 8601 time: {text[:40]!r}") from None
        if value.tzinfo is None:
            raise self.error(f"member {name!r} has no time zone")
        return value

    def optional_timestamp(self, name: str) -> datetime | None:
        return self._optional(name, self.timestamp)

    def mapping(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] = self._get(name, dict, "an object")
        return value

    def optional_mapping(self, name: str) -> dict[str, Any] | None:
        return self._optional(name, self.mapping)

    def fields(self, name: str) -> Fields:
        return Fields(self.mapping(name), f"{self.where} member {name!r}", self.status)

    def array(self, name: str) -> list[Any]:
        value: list[Any] = self._get(name, list, "an array")
        return value

    def strings(self, name: str) -> list[str]:
        values = self.array(name)
        if not all(isinstance(v, str) for v in values):
            raise self.error(f"member {name!r} should hold strings only")
        return values

    def integers(self, name: str) -> list[int]:
        values = self.array(name)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise self.error(f"member {name!r} should hold integers only")
        return values

    def mappings(self, name: str) -> list[dict[str, Any]]:
        values = self.array(name)
        if not all(isinstance(v, dict) for v in values):
            raise self.error(f"member {name!r} should hold objects only")
        return values

    def items(self, name: str) -> list[Fields]:
        return [
            Fields(value, f"{self.where} {name}[{i}]", self.status)
            for i, value in enumerate(self.array(name))
        ]

    def hex_bytes(self, name: str) -> bytes:
        text = self.string(name)
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise self.error(f"member {name!r} is not hex") from None

    def hex_list(self, name: str) -> list[bytes]:
        try:
            return [bytes.fromhex(h) for h in self.strings(name)]
        except ValueError:
            raise self.error(f"member {name!r} should hold hex strings") from None

    def base64(self, name: str) -> bytes:
        try:
            return base64.b64decode(self.string(name), validate=True)
        except (binascii.Error, ValueError):
            raise self.error(f"member {name!r} is not standard base64") from None

    def base64url(self, name: str) -> bytes:
        text = self.string(name)
        # urlsafe_b64decode skips characters outside the alphabet; insist on the alphabet first.
        if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
            raise self.error(f"member {name!r} is not unpadded base64url")
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def items_of(value: object, where: str, status: int | None) -> list[Fields]:
    """A response that is a JSON array of objects."""
    if not isinstance(value, list):
        raise UnexpectedResponse(f"{where}: expected a JSON array, got {type(value).__name__}", status=status)
    return [Fields(item, f"{where} [{i}]", status) for i, item in enumerate(value)]
