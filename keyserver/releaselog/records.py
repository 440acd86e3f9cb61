"""The log entries keyserver writes (their canonical bytes: audit.entry).

Every entry has ``v`` (format version), ``kind`` and ``time`` (UTC, RFC 3339, microseconds); the other
fields depend on the kind and are documented in docs/release-log.md. Entries name things and carry
digests; they never carry key material or credentials.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from audit.entry import ENTRY_VERSION
from keyserver.db.types import utcnow

TPM_AK_ENROLLED = "tpm-ak-enrolled"
TPM_AK_REVOKED = "tpm-ak-revoked"
TPM_TRUST_ANCHOR_ADDED = "tpm-trust-anchor-added"
TPM_TRUST_ANCHOR_REMOVED = "tpm-trust-anchor-removed"
TPM_EK_PINNED = "tpm-ek-pinned"
TPM_EK_UNPINNED = "tpm-ek-unpinned"
KEY_RELEASE = "key-release"
TOKEN_ISSUED = "token-issued"
TOKEN_REVOKED = "token-revoked"


def record(kind: str, *, principal: str | None, now: datetime | None = None, **fields: Any) -> dict[str, Any]:
    """A log entry of ``kind``: who did it (a token id, or ``None`` for an evidence-authenticated caller)."""
    return {
        "v": ENTRY_VERSION,
        "kind": kind,
        "time": timestamp(now or utcnow()),
        "principal": principal,
        **fields,
    }


def timestamp(moment: datetime) -> str:
    """A time as entries write it: UTC, RFC 3339, microseconds, ``Z``."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
