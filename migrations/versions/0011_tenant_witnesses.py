"""The witnesses each tenant's log asks to cosign its checkpoints (keyserver/witness/tenant_config.py).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyserver.db.types import UTCDateTime
from migrations import rls

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "tenant_witnesses"
COSIGNED = "log_cosigned_heads"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=120), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_witnesses_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_witnesses")),
    )
    rls.enable_tenant_rls(TABLE)
    op.create_table(
        COSIGNED,
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_log_cosigned_heads_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_log_cosigned_heads")),
    )
    rls.enable_tenant_rls(COSIGNED)


def downgrade() -> None:
    rls.disable_rls(COSIGNED)
    op.drop_table(COSIGNED)
    rls.disable_rls(TABLE)
    op.drop_table(TABLE)
