"""One certificate is one TPM trust anchor of a kind, per tenant: a unique index on (tenant, kind,
fingerprint).

``tpm_enrolment.add_anchor`` checked for the certificate and then inserted it, so two adds of one
certificate at once could both pass the check and store it twice (found by review; no error, no 500, but
a tenant whose anchor list and log show the same certificate under two ids). The index makes the second
wait for the first's commit and fail as the conflict a sequential add already was.

A store that already holds such a pair is not repaired here: dropping a row would leave the log's
"anchor added" entry for it without its "anchor removed". The upgrade stops and names the pairs; a tenant
admin removes one of each (``DELETE /v1/tenants/{tenant}/tpm/anchors/{id}``, which logs it) and the
upgrade is run again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

from migrations import rls

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "tpm_trust_anchors"
INDEX = "uq_tpm_trust_anchors_certificate"

_DUPLICATES = sa.text(
    "SELECT tenant_id, kind, fingerprint, id FROM tpm_trust_anchors a"
    " WHERE EXISTS (SELECT 1 FROM tpm_trust_anchors b WHERE b.tenant_id = a.tenant_id AND b.kind = a.kind"
    " AND b.fingerprint = a.fingerprint AND b.id <> a.id)"
    " ORDER BY tenant_id, kind, fingerprint, created_at, id"
)


class DuplicateAnchors(RuntimeError):
    """The store holds one certificate twice as an anchor of one kind; what to remove is in the message."""


def duplicate_anchors_message(rows: list[tuple[object, str, str, object]]) -> str:
    pairs: dict[tuple[str, str, str], list[str]] = {}
    for tenant_id, kind, fingerprint, anchor_id in rows:
        # uuid.UUID(): SQLite stores a UUID as 32 hex digits; the API names it in its usual form.
        pairs.setdefault((str(uuid.UUID(str(tenant_id))), kind, fingerprint), []).append(
            str(uuid.UUID(str(anchor_id)))
        )
    lines = [
        f"  tenant {tenant} {kind} certificate sha256:{fingerprint[:16]}…: anchors {', '.join(ids)}"
        for (tenant, kind, fingerprint), ids in pairs.items()
    ]
    return (
        "migration 0014 needs each TPM trust anchor certificate stored once per tenant and kind, and "
        "these are stored more than once:\n"
        + "\n".join(lines)
        + "\nRemove all but the first of each (a tenant admin: DELETE /v1/tenants/{tenant}/tpm/anchors/{id},"
        " which the tenant's log records), then run the upgrade again."
    )


def _duplicates() -> list[tuple[object, str, str, object]]:
    bind = op.get_bind()
    if not rls.is_postgresql():
        return [tuple(row) for row in bind.execute(_DUPLICATES)]
    # Row-level security is forced on the owner too; every tenant's rows are read with it lifted inside
    # this migration's transaction (DDL is transactional here: a failed upgrade leaves it forced).
    op.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")
    rows = [tuple(row) for row in bind.execute(_DUPLICATES)]
    op.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")
    return rows


def upgrade() -> None:
    rows = _duplicates()
    if rows:
        raise DuplicateAnchors(duplicate_anchors_message(rows))
    op.create_index(INDEX, TABLE, ["tenant_id", "kind", "fingerprint"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
