"""A challenge's transaction does not wait for its WAL flush (PostgreSQL), as the attempt's does (0012).

``keyserver_issue_challenge`` is 0012's, with ``synchronous_commit`` turned off for its own transaction
(set_config local to it: the caller's setting is back when the statement's implicit transaction ends).
What that risks, and why it is safe (docs/release-log.md, "What is durable"):

- a crash (or a failover to a standby) can lose a challenge that was answered: the loader's release is
  then refused ``challenge-unknown`` and it asks for a new one — a retry, never a grant;
- it cannot lose a challenge's *use*: the release that consumes one commits durably, and its commit
  flushes the WAL up to its own commit record, which follows the challenge's insert;
- the challenge budget's counter, counted in the same transaction, can lose a few counts in a crash.

Measured: docs/performance.md, "Seventh pass".

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import importlib

from alembic import op

from migrations import rls

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None

# The one line this revision adds to 0012's function, right after the scope it sets.
_SCOPE = """            set_config('keyserver.lookup', 'off', true);
"""
_NO_FLUSH_WAIT = """    PERFORM set_config('synchronous_commit', 'off', true);
"""


def _previous() -> str:
    # The module's name starts with a digit: imported by name, as Alembic loads it.
    return str(importlib.import_module("migrations.versions.0012_one_round_trip_counters").ISSUE_CHALLENGE)


def issue_challenge() -> str:
    previous = _previous()
    if previous.count(_SCOPE) != 1:
        raise RuntimeError("0012's keyserver_issue_challenge is not the one this revision amends")
    return previous.replace(_SCOPE, _SCOPE + _NO_FLUSH_WAIT, 1).replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
    )


def upgrade() -> None:
    if rls.is_postgresql():
        op.execute(issue_challenge())


def downgrade() -> None:
    if rls.is_postgresql():
        op.execute(_previous().replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
