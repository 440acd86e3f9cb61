"""Migrations run up and down cleanly on both databases, and leave the schema the models describe."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, insert, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from keyserver.db import migrate
from keyserver.db.models import Base, Tenant, TpmTrustAnchor
from tests.conftest import REPO_ROOT


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


def alembic(url: str, *args: str, succeeds: bool = True) -> str:
    """The ``alembic`` command line, from the repository root, as a developer would run it."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "KEYSERVER_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode == 0) == succeeds, result.stderr
    return result.stdout + result.stderr


async def schema_differences(url: str) -> list[object]:
    engine = create_async_engine(url)

    def compare(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_with_the_alembic_cli(empty_database_url: str) -> None:
    alembic(empty_database_url, "upgrade", "head")
    assert await schema_differences(empty_database_url) == []
    alembic(empty_database_url, "downgrade", "base")
    assert "(head)" not in alembic(empty_database_url, "current")
    alembic(empty_database_url, "upgrade", "head")
    assert f"{migrate.head_revision()} (head)" in alembic(empty_database_url, "current")
    assert await schema_differences(empty_database_url) == []


def test_every_revision_upgrades_from_the_previous_one() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = list(scripts.walk_revisions("base", "heads"))
    assert len(scripts.get_heads()) == 1, "migrations must form one line, not branches"
    bases = [r for r in revisions if r.down_revision is None]
    assert len(bases) == 1


async def test_a_downgrade_of_0013_gives_the_attempt_function_its_own_lookup_back(
    empty_database_url: str,
) -> None:
    """0013 redefines 0012's keyserver_admit_attempt as a call of keyserver_take_limited, and its downgrade
    drops that function: the attempt must still answer afterwards (0012's own definition restored)."""
    if not empty_database_url.startswith("postgresql"):
        pytest.skip("the functions are PostgreSQL's")
    alembic(empty_database_url, "upgrade", "head")
    alembic(empty_database_url, "downgrade", "0012")
    attempt = text("SELECT * FROM keyserver_admit_attempt(gen_random_uuid(), NULL, NULL, 0)")
    engine = create_async_engine(empty_database_url)
    try:
        async with engine.begin() as connection:
            assert tuple((await connection.execute(attempt)).one()) == (None, None, None)
    finally:
        await engine.dispose()
    alembic(empty_database_url, "upgrade", "head")
    assert await schema_differences(empty_database_url) == []


async def test_0014_stops_on_a_certificate_stored_twice_as_an_anchor_and_names_both(
    empty_database_url: str,
) -> None:
    """Before 0014 two concurrent adds could store one certificate twice. The upgrade does not drop either
    (the log's "added" entry would lose its "removed"): it stops, naming the tenant and both anchors, and
    goes through once a tenant admin has removed one."""
    alembic(empty_database_url, "upgrade", "0013")
    tenant, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    engine = create_async_engine(empty_database_url)
    scope = text(
        "SELECT set_config('keyserver.operator', 'on', true), set_config('keyserver.tenant_id', :t, true)"
    )

    async def scoped(connection: Any) -> None:
        if empty_database_url.startswith("postgresql"):
            await connection.execute(scope, {"t": str(tenant)})

    try:
        async with engine.begin() as connection:
            await scoped(connection)
            await connection.execute(insert(Tenant).values(id=tenant, name="acme", created_at=now))
            for anchor_id in (first, second):
                await connection.execute(
                    insert(TpmTrustAnchor).values(
                        tenant_id=tenant,
                        id=anchor_id,
                        kind="ek-ca",
                        name="root",
                        certificate=b"the same DER",
                        fingerprint="ab" * 32,
                        created_at=now,
                    )
                )
        refused = alembic(empty_database_url, "upgrade", "head", succeeds=False)
        assert "DuplicateAnchors" in refused
        for named in (tenant, first, second):
            assert str(named) in refused
        assert "0013" in alembic(empty_database_url, "current")
        async with engine.begin() as connection:
            await scoped(connection)
            await connection.execute(delete(TpmTrustAnchor).where(TpmTrustAnchor.id == second))
    finally:
        await engine.dispose()
    alembic(empty_database_url, "upgrade", "head")
    assert await schema_differences(empty_database_url) == []
