"""The release log: entries, Merkle nodes, heads and signing keys; append-only at the database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyserver.db.types import UTCDateTime
from migrations import rls

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

APPEND_ONLY_TABLES = ("log_entries", "log_nodes")
TENANT_TABLES = ("log_heads", "log_entries", "log_nodes", "log_keys")


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=op.f(f"fk_{table}_tenant_id_tenants"), ondelete="RESTRICT"
    )


def upgrade() -> None:
    op.create_table(
        "log_heads",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _tenant_fk("log_heads"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_log_heads")),
    )
    op.create_table(
        "log_entries",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _tenant_fk("log_entries"),
        sa.PrimaryKeyConstraint("tenant_id", "idx", name=op.f("pk_log_entries")),
    )
    op.create_table(
        "log_nodes",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        _tenant_fk("log_nodes"),
        sa.PrimaryKeyConstraint("tenant_id", "level", "idx", name=op.f("pk_log_nodes")),
    )
    op.create_table(
        "log_keys",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("public_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("wrapped_private_key", sa.LargeBinary(), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _tenant_fk("log_keys"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_log_keys")),
    )
    for table in TENANT_TABLES:
        rls.enable_tenant_rls(table)
    for table in APPEND_ONLY_TABLES:
        rls.make_append_only(table)


def downgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        rls.drop_append_only(table)
    rls.drop_append_only_function()
    for table in TENANT_TABLES:
        rls.disable_rls(table)
    for table in reversed(TENANT_TABLES):
        op.drop_table(table)
