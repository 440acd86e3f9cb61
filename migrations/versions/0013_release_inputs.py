"""What a release reads of its tenant's configuration, in one round trip on PostgreSQL
(docs/performance.md): the key, its live version and the key's active policy; and the key's grant
counted against its budget in one more.

Four statements became one call, inside the release's own transaction (the batch's: its scope is already
set, so row-level security applies to each statement here as to the service's own; SECURITY INVOKER, the
default). The statements and their order are the ones keyserver/keys.py and keyserver/appraisal.py ran:
the key locked FOR SHARE, then its live version read, then the policy head locked FOR SHARE, then the
policy version it names. Each runs with its own snapshot (a VOLATILE function in READ COMMITTED), so a
row read after a lock was waited for is as fresh as when the statements were sent one by one: one query
joining them would read the version with the snapshot taken before the key's lock was granted, and could
return a version a concurrent destroy had just committed. The policy is not read for a key that will
not be released (unknown, not enabled, no live version). SQLite runs the same reads one by one.

``keyserver_take_limited`` is keyserver/ratelimits.py's ``take_grant``: the scope's stored limit (or the
default given), then 0012's ``keyserver_take``, in the caller's transaction (no scope of its own, no
commit setting: a grant's count commits with its log entry). 0012's ``keyserver_admit_attempt`` had the
same limit lookup for the tenant's scope; it is redefined here as its scope and commit setting around a
call of this one, so the lookup exists once (the downgrade restores 0012's definition).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

import importlib

from alembic import op

from migrations import rls

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None

RELEASE_INPUTS = """
CREATE FUNCTION keyserver_release_inputs(
    p_tenant uuid, p_key text, p_version bigint,
    OUT key_found boolean, OUT policy_name keys.policy_name%TYPE, OUT state keys.state%TYPE,
    OUT backend keys.backend%TYPE, OUT key_created_at keys.created_at%TYPE,
    OUT version key_versions.version%TYPE, OUT wrapped key_versions.wrapped%TYPE,
    OUT version_created_at key_versions.created_at%TYPE, OUT destroyed_at key_versions.destroyed_at%TYPE,
    OUT policy_version policy_heads.active_version%TYPE, OUT document policies.document%TYPE,
    OUT sha256 policies.sha256%TYPE, OUT policy_created_at policies.created_at%TYPE,
    OUT created_by policies.created_by%TYPE)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT k.policy_name, k.state, k.backend, k.created_at
      INTO policy_name, state, backend, key_created_at
      FROM keys k WHERE k.tenant_id = p_tenant AND k.name = p_key FOR SHARE;
    key_found := FOUND;
    IF NOT key_found OR state <> 'enabled' THEN
        RETURN;
    END IF;
    SELECT v.version, v.wrapped, v.created_at, v.destroyed_at
      INTO version, wrapped, version_created_at, destroyed_at
      FROM key_versions v
     WHERE v.tenant_id = p_tenant AND v.key_name = p_key AND v.wrapped IS NOT NULL
       AND (p_version IS NULL OR v.version = p_version)
     ORDER BY v.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT h.active_version INTO policy_version
      FROM policy_heads h WHERE h.tenant_id = p_tenant AND h.name = policy_name FOR SHARE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT p.document, p.sha256, p.created_at, p.created_by
      INTO document, sha256, policy_created_at, created_by
      FROM policies p WHERE p.tenant_id = p_tenant AND p.name = policy_name AND p.version = policy_version;
END $$
"""

TAKE_LIMITED = """
CREATE FUNCTION keyserver_take_limited(p_tenant uuid, p_scope text, p_default_max bigint,
                                       p_default_window bigint, p_now double precision,
                                       OUT max_releases bigint, OUT window_seconds bigint,
                                       OUT retry_after bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT l.max_releases, l.window_seconds INTO max_releases, window_seconds
      FROM release_limits l WHERE l.tenant_id = p_tenant AND l.scope = p_scope;
    IF NOT FOUND THEN
        max_releases := p_default_max;
        window_seconds := p_default_window;
    END IF;
    IF max_releases IS NULL THEN
        window_seconds := NULL;
        RETURN;
    END IF;
    retry_after := keyserver_take(p_tenant, p_scope, max_releases, window_seconds, p_now);
END $$
"""

# 0012's attempt (keyserver/ratelimits.py, ``ReleaseLimiter.admit_attempt``), same signature and effect:
# the tenant's scope for its own transaction, which skips its WAL flush, then the tenant's limit taken.
ADMIT_ATTEMPT = """
CREATE OR REPLACE FUNCTION keyserver_admit_attempt(p_tenant uuid, p_default_max bigint,
                                                   p_default_window bigint, p_now double precision,
                                                   OUT max_releases bigint, OUT window_seconds bigint,
                                                   OUT retry_after bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- The scope of this one tenant for the rest of the transaction, as keyserver/db/session.py sets it.
    PERFORM set_config('keyserver.tenant_id', p_tenant::text, true),
            set_config('keyserver.operator', 'off', true),
            set_config('keyserver.lookup', 'off', true);
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT t.max_releases, t.window_seconds, t.retry_after INTO max_releases, window_seconds, retry_after
      FROM keyserver_take_limited(p_tenant, 'tenant', p_default_max, p_default_window, p_now) AS t;
END $$
"""


def upgrade() -> None:
    if rls.is_postgresql():
        op.execute(RELEASE_INPUTS)
        op.execute(TAKE_LIMITED)
        op.execute(ADMIT_ATTEMPT)


def downgrade() -> None:
    if rls.is_postgresql():
        # The module's name starts with a digit: imported by name, as Alembic loads it.
        previous = importlib.import_module("migrations.versions.0012_one_round_trip_counters")
        op.execute(previous.ADMIT_ATTEMPT.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
        op.execute("DROP FUNCTION keyserver_take_limited(uuid, text, bigint, bigint, double precision)")
        op.execute("DROP FUNCTION keyserver_release_inputs(uuid, text, bigint)")
