"""Row-level security helpers for migrations (PostgreSQL only; no-ops on SQLite).

The transaction's scope is set by ``keyserver.db.session`` with ``set_config(..., true)``:
``keyserver.tenant_id`` (a UUID, or empty) and ``keyserver.operator`` (``on``/``off``).
``FORCE ROW LEVEL SECURITY`` makes the policies apply to the table owner too, which is the role the
service connects as; only superusers and BYPASSRLS roles escape, and the service refuses those.
"""

from __future__ import annotations

from alembic import op

SCOPE_FUNCTIONS = (
    """CREATE FUNCTION keyserver_tenant() RETURNS uuid LANGUAGE sql STABLE AS
       $$ SELECT NULLIF(current_setting('keyserver.tenant_id', true), '')::uuid $$""",
    """CREATE FUNCTION keyserver_is_operator() RETURNS boolean LANGUAGE sql STABLE AS
       $$ SELECT coalesce(current_setting('keyserver.operator', true), '') = 'on' $$""",
)


def is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def create_scope_functions() -> None:
    if is_postgresql():
        for statement in SCOPE_FUNCTIONS:
            op.execute(statement)


def drop_scope_functions() -> None:
    if is_postgresql():
        op.execute("DROP FUNCTION keyserver_tenant()")
        op.execute("DROP FUNCTION keyserver_is_operator()")


def enable_rls(table: str, using: str, with_check: str | None = None) -> None:
    """Turn on (and force) row-level security on ``table`` with one policy for every command."""
    if not is_postgresql():
        return
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY {table}_scope ON {table} USING ({using}) WITH CHECK ({with_check or using})")


def enable_tenant_rls(table: str) -> None:
    """The usual case: rows of the transaction's tenant only, for reading and writing alike."""
    enable_rls(table, "tenant_id = keyserver_tenant()")


def disable_rls(table: str) -> None:
    if not is_postgresql():
        return
    op.execute(f"DROP POLICY IF EXISTS {table}_scope ON {table}")
    op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")


# --- append-only tables ----------------------------------------------------------------------------
#
# PostgreSQL: a statement-level trigger refuses every UPDATE, DELETE and TRUNCATE, even one that would
# touch no row. SQLite: row-level triggers refuse UPDATE and DELETE; SQLite has no TRUNCATE (its
# DELETE-all is caught by the trigger, which also disables the truncate optimisation). Neither stops
# someone who can run DDL as the owner (DROP TRIGGER) or, on SQLite, who can write the file: the
# signed checkpoints and the auditors' consistency checks are what detect that.

_PG_APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION keyserver_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$
"""


def make_append_only(table: str) -> None:
    if is_postgresql():
        op.execute(_PG_APPEND_ONLY_FUNCTION)
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION keyserver_refuse_change()"
        )
        return
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: {action} refused'); END"
        )


def drop_append_only(table: str) -> None:
    if is_postgresql():
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        return
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")


def drop_append_only_function() -> None:
    if is_postgresql():
        op.execute("DROP FUNCTION IF EXISTS keyserver_refuse_change()")
