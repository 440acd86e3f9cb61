"""TPM trust anchors, pinned EKs, enrolments and AKs; tenant-name lookup for unauthenticated callers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyserver.db.types import UTCDateTime
from migrations import rls

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = ("tpm_trust_anchors", "tpm_pinned_eks", "tpm_enrolments", "tpm_aks")


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=op.f(f"fk_{table}_tenant_id_tenants"), ondelete="RESTRICT"
    )


def upgrade() -> None:
    op.create_table(
        "tpm_trust_anchors",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("certificate", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('ek-ca', 'ak-ca')", name=op.f("ck_tpm_trust_anchors_known_kind")),
        _tenant_fk("tpm_trust_anchors"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_tpm_trust_anchors")),
    )
    op.create_table(
        "tpm_pinned_eks",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _tenant_fk("tpm_pinned_eks"),
        sa.PrimaryKeyConstraint("tenant_id", "fingerprint", name=op.f("pk_tpm_pinned_eks")),
    )
    op.create_table(
        "tpm_enrolments",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ak_public", sa.LargeBinary(), nullable=False),
        sa.Column("ak_name", sa.String(length=140), nullable=False),
        sa.Column("ek_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("ek_trust", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        _tenant_fk("tpm_enrolments"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_tpm_enrolments")),
    )
    op.create_table(
        "tpm_aks",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("ak_name", sa.String(length=140), nullable=False),
        sa.Column("ak_public", sa.LargeBinary(), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("ek_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("enrolled_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "method IN ('credential-activation', 'ak-certificate')", name=op.f("ck_tpm_aks_known_method")
        ),
        _tenant_fk("tpm_aks"),
        sa.PrimaryKeyConstraint("tenant_id", "ak_name", name=op.f("pk_tpm_aks")),
    )
    for table in TABLES:
        rls.enable_tenant_rls(table)
    # Unauthenticated callers (loaders, enrolling TPMs) name their tenant in the path; resolving that
    # name to an id needs to read the registry, and only that. A "lookup" scope may read (not write)
    # tenant rows; it sees no tenant's data.
    if rls.is_postgresql():
        op.execute("DROP POLICY tenants_scope ON tenants")
        op.execute(
            "CREATE POLICY tenants_scope ON tenants USING (keyserver_is_operator() OR id = keyserver_tenant()"
            " OR current_setting('keyserver.lookup', true) = 'on') WITH CHECK (keyserver_is_operator())"
        )


def downgrade() -> None:
    if rls.is_postgresql():
        op.execute("DROP POLICY tenants_scope ON tenants")
        op.execute(
            "CREATE POLICY tenants_scope ON tenants"
            " USING (keyserver_is_operator() OR id = keyserver_tenant()) WITH CHECK (keyserver_is_operator())"
        )
    for table in TABLES:
        rls.disable_rls(table)
    for table in reversed(TABLES):
        op.drop_table(table)
