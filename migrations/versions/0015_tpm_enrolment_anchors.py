"""A TPM enrolment records the ek-ca anchors its EK certificate chained to, so that activation can check
the EK is still trusted.

An enrolment is begun by an EK the tenant trusts (a pinned EK, or an EK certificate chaining to one of its
``ek-ca`` anchors) and completed up to five minutes later by credential activation. Activation did not
look at the tenant's trust again, so an enrolment begun just before the tenant admin removed the pin or
the anchor could still make its AK trusted after the removal (found by review). A pinned EK is checked
again by its fingerprint, which the enrolment already holds; for a certificate, the new column
``ek_anchors`` holds the fingerprints of the anchors in the verified chain, and activation requires one of
them to be an anchor still.

Enrolments in flight at the upgrade (at most five minutes' worth) have no anchors recorded: those begun
with a certificate are refused at activation and the TPM starts again (fail closed). The column is
nullable: a pinned EK's enrolment records none.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tpm_enrolments") as batch:
        batch.add_column(sa.Column("ek_anchors", sa.Text(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by recreating the table (batch mode); PostgreSQL in place.
    with op.batch_alter_table("tpm_enrolments") as batch:
        batch.drop_column("ek_anchors")
