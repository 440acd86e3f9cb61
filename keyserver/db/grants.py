"""Two PostgreSQL roles: the schema's owner runs migrations, the service runs as a role that owns nothing.

A role that owns the schema, a table or a function in it may run DDL: drop the append-only triggers
(or replace the function they call), ``ALTER TABLE ... NO FORCE ROW LEVEL SECURITY``, drop a policy,
then rewrite the release log. Whoever runs SQL as the service (an injection, a compromised process, a
leaked URL) would inherit all that. So the service's role is granted only the data privileges it needs
(:func:`grant_service_role`, run by ``keyserver db upgrade --service-role ROLE`` as the owner): on the
append-only log tables SELECT and INSERT only, no TRUNCATE anywhere, nothing on the schema but USAGE.
:func:`check_service_role` refuses, at start-up, a role that owns anything in the schema or could
change the log (unless KEYSERVER_ALLOW_SCHEMA_OWNER says so on purpose).
"""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keyserver.db.session import Database
from keyserver.errors import ConfigurationError

# The release log: entries and Merkle nodes are never changed once written (docs/security.md).
APPEND_ONLY_TABLES = ("log_entries", "log_nodes")
# Read by the service's start-up checks (schema revision), written by migrations only.
READ_ONLY_TABLES = ("alembic_version",)
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def privileges_for(table: str) -> str:
    """What the service may do to ``table``: never TRUNCATE, REFERENCES or TRIGGER."""
    if table in READ_ONLY_TABLES:
        return "SELECT"
    if table in APPEND_ONLY_TABLES:
        return "SELECT, INSERT"
    return "SELECT, INSERT, UPDATE, DELETE"


async def grant_service_role(engine: AsyncEngine, role: str) -> list[str]:
    """As the schema owner: give ``role`` exactly the service's privileges (and revoke any others).

    Idempotent; run after every upgrade (new tables need grants). Returns the tables granted on.
    """
    if not _ROLE_NAME.fullmatch(role):
        raise ConfigurationError(f"{role!r} is not a plain PostgreSQL role name (lower case, digits, _)")
    async with engine.begin() as conn:
        if conn.dialect.name != "postgresql":
            raise ConfigurationError("service roles are a PostgreSQL feature; SQLite has one user")
        exists = (await conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})).first()
        if exists is None:
            raise ConfigurationError(
                f"no PostgreSQL role {role!r}: create it first (CREATE ROLE {role} LOGIN PASSWORD '...')"
            )
        schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
        tables = (
            (await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}))
            .scalars()
            .all()
        )
        await conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}'))
        await conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}'))
        for table in sorted(tables):
            await conn.execute(text(f'GRANT {privileges_for(table)} ON TABLE "{schema}"."{table}" TO {role}'))
        await conn.execute(text(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}'))
        # The release path's functions (migrations/versions/0012): SECURITY INVOKER, so they run with the
        # role's own privileges and under row-level security; granted in case PUBLIC's EXECUTE was revoked.
        await conn.execute(text(f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA "{schema}" TO {role}'))
    return list(tables)


_OWNED_SQL = """
SELECT 'schema ' || n.nspname FROM pg_namespace n
 WHERE n.nspname = current_schema() AND pg_has_role(current_user, n.nspowner, 'USAGE')
UNION ALL
SELECT 'table ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND pg_has_role(current_user, c.relowner, 'USAGE')
UNION ALL
SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = current_schema() AND pg_has_role(current_user, p.proowner, 'USAGE')
UNION ALL
SELECT 'UPDATE, DELETE or TRUNCATE on ' || t FROM unnest(CAST(:log_tables AS text[])) AS t
 WHERE to_regclass(t) IS NOT NULL AND (has_table_privilege(t, 'UPDATE')
    OR has_table_privilege(t, 'DELETE') OR has_table_privilege(t, 'TRUNCATE'))
"""


async def schema_powers(db: Database) -> list[str]:
    """What the connected role owns in the schema, or may do to the log, that the service must not."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(text(_OWNED_SQL), {"log_tables": list(APPEND_ONLY_TABLES)})
        return [str(row[0]) for row in rows]


async def check_service_role(db: Database) -> None:
    """Refuse a PostgreSQL role that owns the schema (or anything in it) or may change the release log."""
    if db.dialect != "postgresql" or db.settings.allow_schema_owner:
        return
    powers = await schema_powers(db)
    if powers:
        shown = ", ".join(powers[:5]) + (f" and {len(powers) - 5} more" if len(powers) > 5 else "")
        raise ConfigurationError(
            f"the database role in KEYSERVER_DATABASE_URL owns or may change what the service must not"
            f" ({shown}): whoever runs SQL as it could disable the release log's append-only triggers and"
            " row-level security. Run migrations as the owner and the service as a role that owns"
            " nothing (`keyserver db upgrade --service-role ROLE`, see README, 'PostgreSQL'), or set"
            " KEYSERVER_ALLOW_SCHEMA_OWNER=true knowingly"
        )
