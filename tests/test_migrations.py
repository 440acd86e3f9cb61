"""Migrations run up and down cleanly on both databases, and leave the schema the models describe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from keyserver.db import migrate
from keyserver.db.models import Base
from tests.conftest import REPO_ROOT


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


def alembic(url: str, *args: str) -> str:
    """The ``alembic`` command line, from the repository root, as a developer would run it."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "KEYSERVER_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
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
