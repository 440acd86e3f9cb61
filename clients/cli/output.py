"""How the remote CLI prints: aligned tables for people (colour only on a terminal, never with
NO_COLOR), one JSON document with ``--json``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}


def wants_colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class Printer:
    def __init__(self, *, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.colour = wants_colour(self.stream)

    def paint(self, text: str, colour: str) -> str:
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m" if self.colour else text

    def decision(self, text: str | None) -> str:
        if text == "granted":
            return self.paint(text, "green")
        if text == "denied":
            return self.paint(text, "red")
        return text or ""

    def emit(self, document: Any, human: str) -> None:
        if self.as_json:
            self.stream.write(json.dumps(plain(document), indent=2, sort_keys=True) + "\n")
        elif human:
            self.stream.write(human.rstrip("\n") + "\n")
        self.stream.flush()

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        if not rows:
            return "(none)"
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [max(len(_visible(r[i])) for r in [list(headers), *cells]) for i in range(len(headers))]
        header = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
        lines = [self.paint(header, "bold")]
        for row in cells:
            padded = [
                value + " " * (width - len(_visible(value))) for value, width in zip(row, widths, strict=True)
            ]
            lines.append("  ".join(padded).rstrip())
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _visible(text: str) -> str:
    """``text`` without colour escapes, for measuring widths."""
    out, skipping = [], False
    for char in text:
        if char == "\x1b":
            skipping = True
        elif skipping and char == "m":
            skipping = False
        elif not skipping:
            out.append(char)
    return "".join(out)


def plain(value: Any) -> Any:
    """SDK models (dataclasses, named tuples), datetimes and bytes as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value
