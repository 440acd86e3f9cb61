"""Release limits per tenant and per key, and their counters (one row per scope and fixed window).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyserver.db.types import UTCDateTime
from migrations import rls

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = ("release_limits", "release_counters")


def upgrade() -> None:
    op.create_table(
        "release_limits",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=110), nullable=False),
        sa.Column("max_releases", sa.BigInteger(), nullable=True),
        sa.Column("window_seconds", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=120), nullable=False),
        sa.CheckConstraint(
            "max_releases IS NULL OR max_releases >= 1", name=op.f("ck_release_limits_positive_max")
        ),
        sa.CheckConstraint(
            "window_seconds >= 1 AND window_seconds <= 2592000", name=op.f("ck_release_limits_window_range")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_release_limits_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "scope", name=op.f("pk_release_limits")),
    )
    op.create_table(
        "release_counters",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=110), nullable=False),
        sa.Column("window_seconds", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_release_counters_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "scope", "window_seconds", "window_start", name=op.f("pk_release_counters")
        ),
    )
    for table in TABLES:
        rls.enable_tenant_rls(table)


def downgrade() -> None:
    for table in TABLES:
        rls.disable_rls(table)
    op.drop_table("release_counters")
    op.drop_table("release_limits")
