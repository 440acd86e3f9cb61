"""Fault-injection points on the release path: a test seam, inert in production.

The release path (``keyserver/release.py``) announces each step it reaches to ``ReleaseService.faults``.
In production that attribute is ``None`` and an announcement is a single ``is None`` test: nothing reads
configuration, the environment or a request to set it, so no deployment and no caller can turn it on.
Only code in the same process can, which is to say the tests.

The tests (``tests/test_faults_*.py``) install a :data:`FaultHook` that breaks a *real* part at a named
step — stop or restart PostgreSQL, kill the transaction's connection, make the transaction read-only,
seal or cut off OpenBao, remove the HSM token — and then check what the service promises: no key material
without a committed log entry, no half-written state (the challenge is consumed if and only if the entry
committed), a 503 problem document, and recovery on its own once the part is back (docs/security.md,
"Faults and recovery").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession


class ReleaseStep(StrEnum):
    """Where a release can be interrupted, in the order a granted release passes them."""

    # Before the release's transaction begins (the tenant was looked up already).
    START = "start"
    # In the transaction: the challenge is marked used (not yet committed).
    CHALLENGE_CONSUMED = "challenge-consumed"
    # The evidence verified and its binding to the challenge and ephemeral key holds.
    EVIDENCE_VERIFIED = "evidence-verified"
    # The key and its live version were read.
    KEY_FOUND = "key-found"
    # The policy granted; next the key backend wraps the key.
    APPRAISED = "appraised"
    # The JWE exists in memory; nothing is logged yet.
    KEY_WRAPPED = "key-wrapped"
    # The log entry, tree nodes and new signed head are written (not yet committed).
    LOG_APPENDED = "log-appended"
    # The receipt's inclusion proof is made (from the append's own nodes); next is COMMIT.
    BEFORE_COMMIT = "before-commit"
    # The transaction committed: the entry is durable; next the response leaves.
    COMMITTED = "committed"


# Called with the step reached and, inside the transaction, its session (``None`` outside it).
FaultHook = Callable[[ReleaseStep, AsyncSession | None], Awaitable[None]]
