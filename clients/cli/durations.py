"""Durations on the command line: 90s, 15m, 12h, 30d."""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"(\d{1,9})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_seconds(text: str) -> int:
    match = _DURATION.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 12h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2)]
