"""The key-encryption key's identity, recorded in the database at first use and checked at every start.

Without it a missing KEK is silently replaced: the software backend creates a new ``kek.bin``, the PKCS#11
backend a new token key under the label, the Vault backend a new transit key, and ``/readyz`` says 200
while no stored key opens any more; replicas given different KEK files split the tenants between them.

The record is a *key check value* by known answer: 32 random bytes wrapped by the backend under a fixed
context, with their SHA-256. The backend holds the same KEK if and only if it unwraps the record to bytes
of that digest; this works alike for every backend (AES-GCM in a file, a non-extractable HSM key, a Vault
transit key) without reading the KEK itself. The row is written once (append-only table, operator scope,
migration 0008); two replicas starting together race on its primary key and the loser checks the
winner's record.

:func:`check_kek_identity` is the one entry point: start-up calls it once the database is reached (before
serving), and ``/readyz`` calls it on every probe, so a KEK replaced while the service runs (a Vault key
deleted and re-created, another token) turns readiness off too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.exc import IntegrityError

from keyserver.backends.base import BackendError, KeyBackend
from keyserver.db.models import KekCheck
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.errors import ConfigurationError

KEK_CHECK_CONTEXT = b"keyserver/kek-check/v1"
_ROW_ID = 1


class KekMismatch(ConfigurationError):
    """The configured backend does not hold the KEK the database's keys were wrapped under.

    A configuration error: at start-up it stops the worker; found later (the database answered only
    after the start) the service keeps refusing (503) until the right KEK is configured."""

    code = "kek-mismatch"
    http_status = 503
    title = "Key-encryption key mismatch"


async def kek_recorded(db: Database) -> bool:
    """Whether a KEK was recorded (then a missing one must not be created afresh)."""
    async with db.transaction(Scope.for_operator()) as session:
        return await session.get(KekCheck, _ROW_ID) is not None


async def check_kek_identity(db: Database, backend: KeyBackend) -> None:
    """Record the backend's KEK if none is recorded yet; otherwise raise :class:`KekMismatch` unless the
    backend holds the recorded one. A backend that cannot be reached raises its own ``BackendError``."""
    async with db.transaction(Scope.for_operator()) as session:
        row = await session.get(KekCheck, _ROW_ID)
        if row is None:
            check = secrets.token_bytes(32)
            wrapped = await backend.wrap(check, KEK_CHECK_CONTEXT)
            try:
                # Added inside the savepoint: begin_nested() flushes what is pending BEFORE its
                # SAVEPOINT, so an insert added outside it would fail outside it, and the transaction
                # with it (another worker starting at the same moment recorded its KEK first).
                async with session.begin_nested():
                    session.add(
                        KekCheck(
                            id=_ROW_ID,
                            backend=backend.name,
                            wrapped_check=wrapped,
                            check_sha256=hashlib.sha256(check).digest(),
                            created_at=utcnow(),
                        )
                    )
                return
            except IntegrityError:
                row = await session.get(KekCheck, _ROW_ID, populate_existing=True)
                if row is None:
                    raise
        recorded_backend, wrapped, digest = row.backend, row.wrapped_check, row.check_sha256
    await _verify(backend, recorded_backend, wrapped, digest)


async def _verify(backend: KeyBackend, recorded_backend: str, wrapped: bytes, digest: bytes) -> None:
    if recorded_backend != backend.name:
        raise KekMismatch(
            f"this database's keys are wrapped by the {recorded_backend} key backend, but the "
            f"{backend.name} backend is configured: set KEYSERVER_KEY_BACKEND={recorded_backend}"
        )
    try:
        check = await backend.unwrap(wrapped, KEK_CHECK_CONTEXT)
    except BackendError:
        # Unreachable, or reachable with another KEK? Only the second is a mismatch.
        await backend.health()
        check = None
    if check is None or not hmac.compare_digest(hashlib.sha256(check).digest(), digest):
        raise KekMismatch(_mismatch_message(backend.name))


def _mismatch_message(backend: str) -> str:
    where = {
        "software": "the KEK file (KEYSERVER_KEK_FILE, default kek.bin in the data directory) is missing or "
        "was replaced",
        "pkcs11": "the token's key under KEYSERVER_PKCS11_KEK_LABEL is another key than the one recorded "
        "(another token, or the key was deleted and re-created)",
        "vault": "the transit key (KEYSERVER_VAULT_KEY_NAME) is another key than the one recorded (another "
        "Vault, mount or key name, or the key was deleted and re-created)",
    }.get(backend, "the backend holds another KEK")
    return (
        f"the {backend} key backend does not hold the key-encryption key this database was written with: "
        f"{where}. No stored key would open; restore the original KEK (every replica must share one). "
        "Not starting."
    )
