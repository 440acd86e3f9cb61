"""The keyserver's cosigning stage (keyserver/witness/cosigning.py) on both databases, against three real
witness processes and one that accepts connections and never answers: concurrent releases share rounds
(one in flight per tenant), every receipt gets a checkpoint covering its entry with the quorum and an
inclusion proof against that very checkpoint, and a round ends when the quorum is in (the silent witness
does not hold it up); without a quorum the silent witness is named once its timeout passed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.checkpoint import verify_checkpoint
from audit.cosignature import CosignaturePolicy, cosigner_vkey, parse_cosigner_vkey, require_quorum
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.release import Outcome, Receipt
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import create_tenant
from keyserver.witness.cosigning import QUORUM_UNAVAILABLE, CosigningStage, shielded_proofs
from keyserver.witness.outbound import WitnessOutbound
from keyserver.witness.tenant_config import WitnessConfig, latest_cosigned, parse_config, set_config
from tests.fixtures._proc import stop_process
from tests.test_witness import WitnessProcess, start_witness

RELEASES = 12
# The test witnesses listen on loopback, which the operator must allow (keyserver/witness/outbound.py).
LOOPBACK = WitnessOutbound.allowing(["http://127.0.0.1:"])


class CountingStage(CosigningStage):
    """The stage as the keyserver runs it, counting its rounds."""

    rounds = 0

    async def _round(self, *args: Any) -> bool:
        self.rounds += 1
        return await super()._round(*args)


@pytest.fixture
def release_log(settings: Settings) -> ReleaseLog:
    return ReleaseLog(LogSigner(SoftwareBackend.from_file(settings.effective_kek_file), "keyserver.test"))


@pytest.fixture
async def tenant(migrated_db: Database) -> Tenant:
    async with migrated_db.transaction(Scope.for_operator()) as session:
        return await create_tenant(session, f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def log_vkey(migrated_db: Database, release_log: ReleaseLog, tenant: Tenant) -> str:
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        return (await release_log.describe(session, tenant)).verifier_key


@pytest.fixture
def witnesses(tmp_path: Path, log_vkey: str) -> Iterator[list[WitnessProcess]]:
    started = [start_witness(tmp_path, f"w{i}.example/witness", [log_vkey]) for i in range(3)]
    yield started
    for w in started:
        stop_process(w.process)


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """A witness URL that accepts the connection and never answers."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


@pytest.fixture
async def stubborn() -> AsyncIterator[str]:
    """A witness URL that always answers 409 "I have size 1": each request makes the log read a
    consistency proof from 1, often still in flight when the quorum is in and the request is cancelled."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 409 Conflict\r\nContent-Type: text/x.tlog.size\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n1\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


async def configure(db: Database, log: ReleaseLog, tenant: Tenant, config: WitnessConfig) -> None:
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        await set_config(session, log, tenant, config, principal=uuid.uuid4())


async def release(db: Database, log: ReleaseLog, tenant: Tenant, n: int) -> Outcome:
    """What a release hands the stage once its transaction committed: its entry, proof and checkpoint."""
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        appended = await log.append(session, tenant, [{"v": 1, "kind": "test", "n": n}])
        index = appended.first_index
        proof = await log.inclusion_proof_of_appended(session, tenant, appended, index)
    receipt = Receipt(index, appended.size, appended.checkpoint, proof, appended.entries[0])
    return Outcome(granted=True, reason=None, detail="granted", receipt=receipt, jwe="jwe", kid="k/1")


async def test_concurrent_releases_share_rounds_and_get_cosigned_receipts(
    migrated_db: Database,
    release_log: ReleaseLog,
    tenant: Tenant,
    log_vkey: str,
    witnesses: list[WitnessProcess],
    silent: str,
    stubborn: str,
) -> None:
    quiet = cosigner_vkey("quiet.example/witness", Ed25519PrivateKey.generate().public_key())
    odd = cosigner_vkey("odd.example/witness", Ed25519PrivateKey.generate().public_key())
    listed = [{"name": w.name, "url": w.url, "vkey": w.vkey} for w in witnesses]
    listed.append({"name": "quiet.example/witness", "url": silent, "vkey": quiet})
    listed.append({"name": "odd.example/witness", "url": stubborn, "vkey": odd})
    await configure(migrated_db, release_log, tenant, parse_config({"witnesses": listed, "quorum": 3}))
    policy = CosignaturePolicy(tuple(parse_cosigner_vkey(w.vkey) for w in witnesses), 3)
    async with httpx.AsyncClient() as http:
        stage = CountingStage(
            migrated_db, release_log, http, witness_timeout_s=1, wait_s=30, outbound=LOOPBACK
        )
        first = await stage.apply(
            tenant, await release(migrated_db, release_log, tenant, 0), await stage.config(tenant)
        )
        assert stage.rounds == 1
        # The silent witness did not hold the round up: the three others made the quorum.
        assert len(require_quorum(first.receipt.checkpoint, policy, datetime.now(UTC))) == 3
        outcomes = await asyncio.gather(
            *(_release_and_apply(stage, migrated_db, release_log, tenant, n) for n in range(1, RELEASES + 1))
        )
    # Rounds are shared: fewer rounds than releases (one in flight per tenant, each covering every
    # release committed before it read the head).
    assert stage.rounds - 1 < RELEASES
    for outcome in [first, *outcomes]:
        assert outcome.granted
        receipt = outcome.receipt
        checkpoint = verify_checkpoint(receipt.checkpoint, log_vkey)
        assert checkpoint.size == receipt.tree_size > receipt.log_index
        assert len(require_quorum(receipt.checkpoint, policy, datetime.now(UTC))) == 3
        merkle.verify_inclusion(
            merkle.leaf_hash(receipt.entry),
            receipt.log_index,
            receipt.tree_size,
            receipt.inclusion_proof,
            checkpoint.root_hash,
        )
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        kept = await latest_cosigned(session, tenant.id)
    assert kept is not None
    assert kept.size == max(o.receipt.tree_size for o in outcomes)


async def _release_and_apply(
    stage: CosigningStage, db: Database, log: ReleaseLog, tenant: Tenant, n: int
) -> Outcome:
    return await stage.apply(tenant, await release(db, log, tenant, n), await stage.config(tenant))


async def test_no_quorum_refuses_a_grant_or_releases_weak(
    migrated_db: Database,
    release_log: ReleaseLog,
    tenant: Tenant,
    witnesses: list[WitnessProcess],
    silent: str,
) -> None:
    quiet = cosigner_vkey("quiet.example/witness", Ed25519PrivateKey.generate().public_key())
    listed = [
        {"name": witnesses[0].name, "url": witnesses[0].url, "vkey": witnesses[0].vkey},
        {"name": "quiet.example/witness", "url": silent, "vkey": quiet},
    ]
    async with httpx.AsyncClient() as http:
        stage = CosigningStage(
            migrated_db, release_log, http, witness_timeout_s=0.5, wait_s=1.5, outbound=LOOPBACK
        )
        await configure(migrated_db, release_log, tenant, parse_config({"witnesses": listed, "quorum": 2}))
        stage.forget(tenant.id)
        granted = await release(migrated_db, release_log, tenant, 1)
        refused = await stage.apply(tenant, granted, await stage.config(tenant))
        assert (refused.granted, refused.unavailable, refused.jwe) == (False, True, None)
        assert refused.reason == QUORUM_UNAVAILABLE
        assert "quiet.example/witness" in refused.detail
        assert refused.receipt == granted.receipt  # the logged decision, as it is
        weak = parse_config({"witnesses": listed, "quorum": 2, "failure_mode": "release-weak"})
        await configure(migrated_db, release_log, tenant, weak)
        stage.forget(tenant.id)
        granted = await release(migrated_db, release_log, tenant, 2)
        assert await stage.apply(tenant, granted, await stage.config(tenant)) == granted


async def test_a_cancelled_proof_read_still_ends_its_transaction(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    """A witness request cancelled while its consistency proof is read (the quorum came in) must not leave
    the transaction open: on SQLite every transaction holds the write lock until it ends."""
    for n in range(4):
        await release(migrated_db, release_log, tenant, n)
    inside, go_on = asyncio.Event(), asyncio.Event()
    reads: list[str] = []

    async def read(old: int, new: int) -> list[bytes]:
        reads.append("started")
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            inside.set()
            await go_on.wait()
            proof = await release_log.consistency_proof(session, tenant, old, new)
        reads.append("committed")
        return proof

    proofs = shielded_proofs(read)
    waiter: asyncio.Future[Sequence[bytes]] = asyncio.ensure_future(proofs(2, 4))
    await inside.wait()
    waiter.cancel()  # as a round cancels a witness's request once the quorum is in
    with pytest.raises(asyncio.CancelledError):
        await waiter
    go_on.set()
    # Another witness at the same size gets the same read's result; and the database takes writes again.
    assert len(await proofs(2, 4)) >= 1
    assert reads == ["started", "committed"]  # one read, run to its end although its first waiter left
    await asyncio.wait_for(release(migrated_db, release_log, tenant, 9), 30)


async def test_without_the_operators_leave_loopback_witnesses_are_never_asked(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant, witnesses: list[WitnessProcess]
) -> None:
    """A witness URL stored before the operator narrowed the bound (or written to the database directly)
    is checked again before each request: with the default bound, nothing is sent to loopback."""
    listed = [{"name": w.name, "url": w.url, "vkey": w.vkey} for w in witnesses]
    await configure(migrated_db, release_log, tenant, parse_config({"witnesses": listed, "quorum": 1}))
    async with httpx.AsyncClient() as http:
        stage = CosigningStage(
            migrated_db, release_log, http, witness_timeout_s=0.5, wait_s=1.0, outbound=WitnessOutbound()
        )
        refused = await stage.apply(
            tenant, await release(migrated_db, release_log, tenant, 1), await stage.config(tenant)
        )
    assert (refused.granted, refused.unavailable, refused.reason) == (False, True, QUORUM_UNAVAILABLE)
    for w in witnesses:
        assert w.name in refused.detail
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert await latest_cosigned(session, tenant.id) is None  # no witness was reached
