"""The key-encryption key's identity: one row, written once (keyserver/kek_identity.py).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyserver.db.types import UTCDateTime
from migrations import rls

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "kek_check"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("wrapped_check", sa.LargeBinary(), nullable=False),
        sa.Column("check_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_kek_check_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kek_check")),
    )
    # The service's own start-up reads and writes it, in the operator scope; no tenant ever sees it.
    rls.enable_rls(TABLE, "keyserver_is_operator()")
    # Written once: replacing the record would be replacing the KEK without anyone noticing.
    rls.make_append_only(TABLE)


def downgrade() -> None:
    rls.drop_append_only(TABLE)
    rls.disable_rls(TABLE)
    op.drop_table(TABLE)
