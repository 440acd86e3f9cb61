"""``--now`` for the evidence commands: verifiers take the time as an input (DESIGN.md)."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_now(text: str | None) -> datetime:
    """Parse ISO 8601 with an offset or ``Z``; ``None`` means the current time.

    ``ValueError`` for a naive or malformed time (a usage error): a verifier must never guess a zone.
    """
    if text is None:
        return datetime.now(UTC)
    value = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"--now {text!r} has no timezone; write e.g. 2025-06-01T00:00:00Z")
    return value.astimezone(UTC)
