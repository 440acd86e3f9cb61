"""The release path's caches (docs/performance.md) are bounded and can never answer for other input.

Each cache is keyed by the complete input of a pure computation (the exact bytes parsed, or their digest
checked against those bytes); these tests give them different inputs that share what a careless key would
share — the same tenant name in two databases, the same digest slot, the same document for another tee —
and check every answer is the one for the input actually given.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from audit import merkle
from audit.entry import canonical_bytes
from keyserver import appraisal
from keyserver.backends.software import SoftwareBackend
from keyserver.bootstrap import initialise
from keyserver.cache import BoundedCache
from keyserver.config import Settings
from keyserver.db.session import Database, Scope
from keyserver.errors import InvalidRequest, NotFound
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import create_tenant, lookup_tenant
from keyserver.tpm_enrolment import _parsed_ak
from policy.document import PolicyError
from tests.tpm.helpers import ec_key, rsa_key, soft_ak


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bounded_cache_evicts_the_least_recently_used() -> None:
    cache: BoundedCache[int, str] = BoundedCache(3)
    for i in range(3):
        cache.put(i, str(i))
    assert cache.get(0) == "0"  # 0 is now the most recently used
    cache.put(3, "3")
    assert len(cache) == 3
    assert cache.get(1) is None
    assert [cache.get(i) for i in (0, 2, 3)] == ["0", "2", "3"]
    with pytest.raises(ValueError, match="at least 1"):
        BoundedCache(0)


def test_bounded_cache_entries_expire() -> None:
    clock = FakeClock()
    cache: BoundedCache[str, int] = BoundedCache(10, ttl_s=60, clock=clock)
    cache.put("a", 1)
    clock.now = 59.9
    assert cache.get("a") == 1
    clock.now = 60.0
    assert cache.get("a") is None
    assert len(cache) == 0


def test_bounded_cache_does_not_store_failures() -> None:
    cache: BoundedCache[str, int] = BoundedCache(10)

    def fail() -> int:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("k", fail)
    assert cache.get("k") is None
    assert cache.get_or_compute("k", lambda: 7) == 7
    assert cache.get_or_compute("k", fail) == 7


def _policy(rule: str, tees: list[str] | None = None) -> bytes:
    return canonical_bytes({"version": 1, "tees": tees or ["tpm"], "rules": [{"name": "r", "expr": rule}]})


def test_policy_cache_answers_only_for_the_same_bytes() -> None:
    a, b = _policy("claims['tpm.reset_count'] >= 0"), _policy("claims['tpm.reset_count'] >= 5")
    first, second = appraisal.stored_policy(a), appraisal.stored_policy(b)
    assert first.rules[0].expr != second.rules[0].expr
    assert appraisal.stored_policy(a) is first  # a hit: parsed and compiled once
    # Poison b's slot with a's parse, as a digest collision would: the bytes check refuses the hit.
    appraisal._policies.put(hashlib.sha256(b).digest(), (a, first))
    assert appraisal.stored_policy(b).rules[0].expr == "claims['tpm.reset_count'] >= 5"


def test_a_policy_that_does_not_parse_is_refused_every_time() -> None:
    bad = _policy("claims['tpm.reset_count'] >=")
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            appraisal.stored_policy(bad)


def test_reference_value_cache_is_keyed_by_tee_and_bytes() -> None:
    document = canonical_bytes({"version": 1, "expected": {"tpm.pcrs.sha256.8": ["00" * 32]}})
    parsed = appraisal.stored_reference_values("tpm", document)
    assert dict(parsed.expected) == {"tpm.pcrs.sha256.8": ("00" * 32,)}
    # The same bytes for another tee are parsed for that tee (and refused: tpm claims in an SNP set).
    with pytest.raises(PolicyError):
        appraisal.stored_reference_values("sev-snp", document)
    other = canonical_bytes({"version": 1, "expected": {"tpm.pcrs.sha256.8": ["11" * 32]}})
    appraisal._reference_values.put(("tpm", hashlib.sha256(other).digest()), (document, parsed))
    assert dict(appraisal.stored_reference_values("tpm", other).expected) == {
        "tpm.pcrs.sha256.8": ("11" * 32,)
    }


def test_parsed_ak_cache_is_keyed_by_the_exact_public_area() -> None:
    from keyserver.evidence.tpm import structures as st

    blobs = [st.marshal_tpm2b_public(soft_ak(key).public) for key in (ec_key(which=41), rsa_key(which=41))]
    parsed = [_parsed_ak(blob) for blob in blobs]
    assert parsed[0].name != parsed[1].name
    assert [_parsed_ak(blob) for blob in blobs] == parsed
    for blob, ak in zip(blobs, parsed, strict=True):
        assert ak.public is not None
        assert st.marshal_tpm2b_public(ak.public) == blob


async def _database(path: Path) -> Database:
    db = Database(Settings(data_dir=path))
    await initialise(db, announce=lambda _token: None)
    return db


async def test_tenant_lookup_cache_is_per_database(tmp_path: Path) -> None:
    one, two = await _database(tmp_path / "one"), await _database(tmp_path / "two")
    try:
        ids = []
        for db in (one, two):
            async with db.transaction(Scope.for_operator()) as session:
                ids.append((await create_tenant(session, "acme")).id)
        assert ids[0] != ids[1]
        for _ in range(2):  # the second round is served from the caches
            assert (await lookup_tenant(one, "acme")).id == ids[0]
            assert (await lookup_tenant(two, "acme")).id == ids[1]
        with pytest.raises(NotFound):
            await lookup_tenant(one, "globex")
        async with one.transaction(Scope.for_operator()) as session:
            await create_tenant(session, "globex")
        assert (await lookup_tenant(one, "globex")).name == "globex"  # a miss was not remembered
    finally:
        await one.dispose()
        await two.dispose()


async def test_inclusion_proof_of_appended_equals_the_stored_proof(migrated_db: Database) -> None:
    log = ReleaseLog(LogSigner(SoftwareBackend.from_file(migrated_db.settings.effective_kek_file), "t"))
    async with migrated_db.transaction(Scope.for_operator()) as session:
        tenant = await create_tenant(session, f"t{uuid.uuid4().hex[:8]}")
    batches: list[list[dict[str, Any]]] = [[{"n": i}] for i in range(9)] + [[{"n": 9}, {"n": 10}, {"n": 11}]]
    for batch in batches:
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            appended = await log.append(session, tenant, batch)
            for index in range(appended.first_index, appended.size):
                fast = await log.inclusion_proof_of_appended(session, tenant, appended, index)
                stored = await log.inclusion_proof(session, tenant, index, appended.size)
                assert fast == stored
                leaf = merkle.leaf_hash(canonical_bytes(batch[index - appended.first_index]))
                merkle.verify_inclusion(leaf, index, appended.size, fast, appended.root_hash)
            with pytest.raises(ValueError, match="not appended"):
                await log.inclusion_proof_of_appended(session, tenant, appended, appended.size)
