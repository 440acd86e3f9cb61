"""The tenant registry's row-level security, one policy per command: the lookup scope only reads.

Until now one policy covered every command with the read condition, so a transaction in the tenant
lookup scope (unauthenticated loaders resolving a tenant's name) or in a tenant's own scope could
DELETE tenant rows (issue 21, item 4). Now reading is open to the operator, the tenant itself and the
lookup scope; inserting, updating and deleting to the operator only.

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from migrations import rls

revision: str = "0009"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_READ = (
    "keyserver_is_operator() OR id = keyserver_tenant() OR current_setting('keyserver.lookup', true) = 'on'"
)
_WRITE = "keyserver_is_operator()"


def upgrade() -> None:
    if not rls.is_postgresql():
        return
    op.execute("DROP POLICY tenants_scope ON tenants")
    op.execute(f"CREATE POLICY tenants_read ON tenants FOR SELECT USING ({_READ})")
    op.execute(f"CREATE POLICY tenants_insert ON tenants FOR INSERT WITH CHECK ({_WRITE})")
    op.execute(f"CREATE POLICY tenants_update ON tenants FOR UPDATE USING ({_WRITE}) WITH CHECK ({_WRITE})")
    op.execute(f"CREATE POLICY tenants_delete ON tenants FOR DELETE USING ({_WRITE})")


def downgrade() -> None:
    if not rls.is_postgresql():
        return
    for command in ("read", "insert", "update", "delete"):
        op.execute(f"DROP POLICY tenants_{command} ON tenants")
    op.execute(f"CREATE POLICY tenants_scope ON tenants USING ({_READ}) WITH CHECK ({_WRITE})")
