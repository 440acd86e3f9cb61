"""Tenants and API tokens, with row-level security on PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyserver.db.types import UTCDateTime
from migrations import rls

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    rls.create_scope_functions()
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "(role = 'operator') = (tenant_id IS NULL)",
            name=op.f("ck_api_tokens_operator_has_no_tenant"),
        ),
        sa.CheckConstraint(
            "role IN ('operator', 'tenant-admin', 'ci-signer', 'auditor')",
            name=op.f("ck_api_tokens_known_role"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_tokens_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    )
    op.create_index(op.f("ix_api_tokens_tenant_id"), "api_tokens", ["tenant_id"], unique=False)

    # The operator manages the tenant registry; a tenant's principals see their own tenant only.
    rls.enable_rls(
        "tenants",
        using="keyserver_is_operator() OR id = keyserver_tenant()",
        with_check="keyserver_is_operator()",
    )
    # Operator tokens (tenant_id NULL) are visible to the operator scope only.
    rls.enable_rls("api_tokens", using="keyserver_is_operator() OR tenant_id = keyserver_tenant()")


def downgrade() -> None:
    rls.disable_rls("api_tokens")
    rls.disable_rls("tenants")
    op.drop_index(op.f("ix_api_tokens_tenant_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("tenants")
    rls.drop_scope_functions()
