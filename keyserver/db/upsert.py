"""``INSERT … ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite alike, and a row set whether or not it
existed (:func:`set_row`)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.db.models import Base

Row = TypeVar("Row", bound=Base)


async def insert_ignore(session: AsyncSession, model: type[Base], values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(insert(model).values(**values).on_conflict_do_nothing())


async def set_row(
    session: AsyncSession, model: type[Row], key: dict[str, Any], values: dict[str, Any]
) -> Row:
    """The row of ``model`` whose primary key is ``key``, with ``values``: inserted if absent, else locked
    (``FOR UPDATE`` on PostgreSQL) and set. Two requests setting the same row at once take effect in turn;
    a read-then-insert made the second one fail on the primary key (a 500)."""
    await insert_ignore(session, model, {**key, **values})
    query = select(model).filter_by(**key).with_for_update().execution_options(populate_existing=True)
    row = (await session.execute(query)).scalar_one()
    for name, value in values.items():
        setattr(row, name, value)
    await session.flush()
    return row
