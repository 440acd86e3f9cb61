"""The challenge and the release attempt, each in one round trip on PostgreSQL (docs/performance.md).

Issuing a challenge (count it against the tenant's challenge budget, purge expired ones, insert it) and
admitting a release attempt (read the tenant's limit, count the attempt) were each a transaction of their
own: BEGIN, the scope's ``set_config``, two or three statements, COMMIT — five or six round trips, each
costing the server more CPU than the statement's work. Each is now one call of a function below, run as
its own (implicit) transaction.

The functions are SECURITY INVOKER (the default): they run as the service's role, so row-level security
applies to every statement in them exactly as to the service's own; each sets the transaction's scope
first (``set_config(..., true)``, as keyserver/db/session.py does), to the one tenant it was given, and
never the operator's. SQLite keeps the same steps in Python (keyserver/ratelimits.py,
keyserver/challenges.py); the tests run both.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

from migrations import rls

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

# keyserver/ratelimits.py, ``take``: count one against (max, window) in the current fixed window; NULL if
# it fits, else the seconds until the window ends. A new window deletes the scope's older counters.
TAKE = """
CREATE FUNCTION keyserver_take(p_tenant uuid, p_scope text, p_max bigint, p_window bigint,
                               p_now double precision) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_start bigint := floor(p_now)::bigint / p_window * p_window;
    v_count bigint;
BEGIN
    INSERT INTO release_counters AS c (tenant_id, scope, window_seconds, window_start, count)
    VALUES (p_tenant, p_scope, p_window, v_start, 1)
    ON CONFLICT (tenant_id, scope, window_seconds, window_start)
    DO UPDATE SET count = c.count + 1 WHERE c.count < p_max
    RETURNING c.count INTO v_count;
    IF v_count IS NULL THEN
        RETURN greatest(1, ceil(v_start + p_window - p_now))::bigint;
    END IF;
    IF v_count = 1 THEN
        DELETE FROM release_counters
         WHERE tenant_id = p_tenant AND scope = p_scope AND window_start < v_start;
    END IF;
    RETURN NULL;
END $$
"""

# keyserver/ratelimits.py, ``ReleaseLimiter.admit_attempt``: the tenant's stored limit or the default
# given; counted without waiting for the WAL flush (a lost counter costs nothing but a few attempts).
# Returns the budget applied (NULLs: none) and the retry-after (NULL: admitted).
ADMIT_ATTEMPT = """
CREATE FUNCTION keyserver_admit_attempt(p_tenant uuid, p_default_max bigint, p_default_window bigint,
                                        p_now double precision,
                                        OUT max_releases bigint, OUT window_seconds bigint,
                                        OUT retry_after bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- The scope of this one tenant for the rest of the transaction, as keyserver/db/session.py sets it.
    PERFORM set_config('keyserver.tenant_id', p_tenant::text, true),
            set_config('keyserver.operator', 'off', true),
            set_config('keyserver.lookup', 'off', true);
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT l.max_releases, l.window_seconds INTO max_releases, window_seconds
      FROM release_limits l WHERE l.tenant_id = p_tenant AND l.scope = 'tenant';
    IF NOT FOUND THEN
        max_releases := p_default_max;
        window_seconds := p_default_window;
    END IF;
    IF max_releases IS NULL THEN
        window_seconds := NULL;
        RETURN;
    END IF;
    retry_after := keyserver_take(p_tenant, 'tenant', max_releases, window_seconds, p_now);
END $$
"""

# keyserver/challenges.py, ``issue_challenge`` with keyserver/ratelimits.py's challenge budget: counted
# (unless no budget is given), the tenant's long-expired challenges purged (when asked), the challenge
# inserted. Returns NULL when issued, else the retry-after (nothing written).
ISSUE_CHALLENGE = """
CREATE FUNCTION keyserver_issue_challenge(p_tenant uuid, p_id uuid, p_nonce bytea,
                                          p_created timestamptz, p_expires timestamptz,
                                          p_max bigint, p_window bigint, p_now double precision,
                                          p_purge_before timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_retry bigint;
BEGIN
    -- The scope of this one tenant for the rest of the transaction, as keyserver/db/session.py sets it.
    PERFORM set_config('keyserver.tenant_id', p_tenant::text, true),
            set_config('keyserver.operator', 'off', true),
            set_config('keyserver.lookup', 'off', true);
    IF p_max IS NOT NULL THEN
        v_retry := keyserver_take(p_tenant, 'challenges', p_max, p_window, p_now);
        IF v_retry IS NOT NULL THEN
            RETURN v_retry;
        END IF;
    END IF;
    IF p_purge_before IS NOT NULL THEN
        DELETE FROM challenges WHERE tenant_id = p_tenant AND expires_at < p_purge_before;
    END IF;
    INSERT INTO challenges (tenant_id, id, nonce, created_at, expires_at)
    VALUES (p_tenant, p_id, p_nonce, p_created, p_expires);
    RETURN NULL;
END $$
"""

DROPS = (
    "DROP FUNCTION keyserver_issue_challenge(uuid, uuid, bytea, timestamptz, timestamptz, bigint, bigint,"
    " double precision, timestamptz)",
    "DROP FUNCTION keyserver_admit_attempt(uuid, bigint, bigint, double precision)",
    "DROP FUNCTION keyserver_take(uuid, text, bigint, bigint, double precision)",
)


def upgrade() -> None:
    if rls.is_postgresql():
        for statement in (TAKE, ADMIT_ATTEMPT, ISSUE_CHALLENGE):
            op.execute(statement)


def downgrade() -> None:
    if rls.is_postgresql():
        for statement in DROPS:
            op.execute(statement)
