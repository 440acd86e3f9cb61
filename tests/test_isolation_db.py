"""Tenant isolation inside the database: PostgreSQL row-level security catches a forgotten filter.

These tests deliberately run unfiltered queries, as a buggy handler would, and show that the database
itself answers only with the scope's own rows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from keyserver.bootstrap import initialise
from keyserver.config import Settings
from keyserver.db.models import ApiToken, Tenant
from keyserver.db.session import NO_SCOPE, Database, Scope
from keyserver.errors import ConfigurationError
from keyserver.tenancy import Role, create_tenant, issue_token
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(Settings(database_url=postgres_url))
    await initialise(database, announce=lambda _token: None)
    yield database
    await database.dispose()


async def _two_tenants(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    async with db.transaction(Scope.for_operator()) as session:
        a = await create_tenant(session, "tenant-a")
        b = await create_tenant(session, "tenant-b")
        for tenant in (a, b):
            await issue_token(session, tenant_id=tenant.id, role=Role.TENANT_ADMIN)
            await issue_token(session, tenant_id=tenant.id, role=Role.AUDITOR)
    return a.id, b.id


async def test_unfiltered_query_sees_only_the_scope_tenant(pg: Database) -> None:
    a, b = await _two_tenants(pg)
    async with pg.transaction(Scope.for_tenant(a)) as session:
        tokens = (await session.execute(select(ApiToken))).scalars().all()
        tenants = (await session.execute(select(Tenant))).scalars().all()
    assert len(tokens) == 2
    assert {t.tenant_id for t in tokens} == {a}
    assert [t.id for t in tenants] == [a]
    # Even a raw SQL count is filtered.
    async with pg.transaction(Scope.for_tenant(b)) as session:
        count = (await session.execute(text("SELECT count(*) FROM api_tokens"))).scalar_one()
    assert count == 2


async def test_no_scope_sees_nothing(pg: Database) -> None:
    await _two_tenants(pg)
    async with pg.transaction(NO_SCOPE) as session:
        assert (await session.execute(select(func.count()).select_from(ApiToken))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(Tenant))).scalar_one() == 0


async def test_scope_is_reapplied_on_every_transaction_of_a_session(pg: Database) -> None:
    a, _ = await _two_tenants(pg)
    async with pg.session(Scope.for_tenant(a)) as session:
        for _ in range(3):  # each commit ends a transaction; the next one must be scoped again
            count = (await session.execute(text("SELECT count(*) FROM api_tokens"))).scalar_one()
            assert count == 2
            await session.commit()


async def test_tenant_scope_cannot_write_into_another_tenant(pg: Database) -> None:
    a, b = await _two_tenants(pg)
    with pytest.raises(DBAPIError, match="row-level security"):
        async with pg.transaction(Scope.for_tenant(a)) as session:
            await issue_token(session, tenant_id=b, role=Role.TENANT_ADMIN)
    with pytest.raises(DBAPIError, match="row-level security"):
        async with pg.transaction(Scope.for_tenant(a)) as session:
            await create_tenant(session, "sneaky")
    # Updating another tenant's rows silently matches nothing.
    async with pg.transaction(Scope.for_tenant(a)) as session:
        result = await session.execute(text("UPDATE api_tokens SET description = 'pwned'"))
        assert result.rowcount == 2  # type: ignore[attr-defined]
    async with pg.transaction(Scope.for_tenant(b)) as session:
        descriptions = (await session.execute(select(ApiToken.description))).scalars().all()
    assert "pwned" not in descriptions


async def test_operator_tokens_are_invisible_to_tenants(pg: Database) -> None:
    a, _ = await _two_tenants(pg)
    async with pg.transaction(Scope.for_tenant(a)) as session:
        roles = (await session.execute(select(ApiToken.role))).scalars().all()
    assert Role.OPERATOR.value not in roles


async def test_service_refuses_a_role_that_bypasses_rls(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database_name = postgres_url.rsplit("/", 1)[1]
    admin_url = postgres_server.url(database_name, postgres_server.admin_user, postgres_server.admin_password)
    db = Database(Settings(database_url=admin_url))
    try:
        with pytest.raises(ConfigurationError, match="BYPASSRLS"):
            await initialise(db, announce=lambda _token: None)
    finally:
        await db.dispose()
    knowingly = Database(Settings(database_url=admin_url, allow_rls_bypass=True))
    try:
        await knowingly.check_isolation_enforced()
    finally:
        await knowingly.dispose()
