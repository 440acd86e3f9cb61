"""First start and every start: the data directory, the schema, the operator credential."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.config import Settings
from keyserver.db import migrate
from keyserver.db.grants import check_service_role
from keyserver.db.session import Database, Scope
from keyserver.errors import ConfigurationError
from keyserver.readiness import StartupCheck
from keyserver.tenancy import IssuedToken, Role, has_operator_token, issue_token

log = logging.getLogger("keyserver.bootstrap")

Announce = Callable[[str], None]

# pg_advisory_xact_lock's key for making the first operator credential: any fixed 64-bit number no other
# lock of this database uses (the keyserver takes no other advisory lock).
OPERATOR_BOOTSTRAP_LOCK = 0x6B65_7973_6F70_0001  # "keysop", 1


def print_operator_token(token: str) -> None:
    """Shown once, on the terminal that started the service; it is stored only as a hash."""
    sys.stderr.write(
        "\n"
        "==================================================================================\n"
        " keyserver initialised. The operator credential (shown once, stored only hashed):\n\n"
        f"   {token}\n\n"
        " Keep it secret. Lost it? On this host: `keyserver token create --operator`.\n"
        "==================================================================================\n\n"
    )
    sys.stderr.flush()


def prepare_data_dir(settings: Settings) -> None:
    # The data directory holds the database and key material: owner-only from the first moment.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(settings.data_dir, 0o700)


async def initialise(db: Database, announce: Announce = print_operator_token) -> None:
    """Make the store ready to serve. Idempotent; safe to run in every worker.

    On SQLite (and where KEYSERVER_AUTO_MIGRATE is true) the schema is upgraded here; otherwise a
    schema behind this version's migrations stops the start with what to run.
    """
    settings = db.settings
    if settings.is_sqlite and settings.database_url is None:
        prepare_data_dir(settings)
    for _name, check in database_checks(db, announce):
        await check()


def database_checks(
    db: Database, announce: Announce = print_operator_token
) -> list[tuple[str, StartupCheck]]:
    """The start-up checks that need the database, in order (see keyserver.readiness)."""
    return [
        ("database role", db.check_isolation_enforced),
        ("service role owns nothing", lambda: check_service_role(db)),
        ("schema and operator credential", lambda: _schema_and_operator(db, announce)),
    ]


async def _schema_and_operator(db: Database, announce: Announce) -> None:
    settings = db.settings
    if settings.should_auto_migrate:
        await migrate.upgrade(db.engine)
    current, head = await migrate.current_revision(db.engine), migrate.head_revision()
    if current != head:
        raise ConfigurationError(
            f"the database schema is at revision {current or 'none'} but this keyserver needs {head}:"
            " run `keyserver db upgrade` first"
        )
    async with db.transaction(Scope.for_operator()) as session:
        issued = await first_operator_token(session, db.dialect)
    if issued is None:
        return
    log.info("created the operator credential", extra={"fields": {"token_id": str(issued.token.id)}})
    announce(issued.secret)


async def first_operator_token(session: AsyncSession, dialect: str) -> IssuedToken | None:
    """The operator credential, made in ``session`` (operator scope) if the store has none yet; None if
    it has one.

    Every worker and replica runs this at start, often at the same moment (the database came up):
    without the lock each could see no operator token and make one, leaving several never-expiring
    operator credentials printed to several logs. The lock is held to the commit; a start that waited
    for it then checks with a statement of its own, which sees the token (READ COMMITTED). SQLite's
    transactions take the write lock first and need none."""
    if dialect == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": OPERATOR_BOOTSTRAP_LOCK})
    if await has_operator_token(session):
        return None
    return await issue_token(
        session, tenant_id=None, role=Role.OPERATOR, description="created at first start"
    )
