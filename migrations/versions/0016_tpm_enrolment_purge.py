"""An index for purging a tenant's expired TPM enrolments, as challenges have one.

Beginning a TPM enrolment takes no token and stores a row; nothing deleted those rows, so anyone could
grow the table without bound (found by review). Enrolments are now budgeted with challenges and purged
as they are (keyserver/tpm_enrolment.py): per tenant, by expiry, at most once a minute per process. The
index keeps that DELETE to the expired rows instead of all of the tenant's.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | None = None
depends_on: str | None = None

INDEX = "ix_tpm_enrolments_tenant_id_expires_at"


def upgrade() -> None:
    op.create_index(INDEX, "tpm_enrolments", ["tenant_id", "expires_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="tpm_enrolments")
