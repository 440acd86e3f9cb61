"""The witness (C2SP tlog-witness): wire format, every refusal with its status, compare-and-swap on both
databases under concurrent diverging requests, and real witness processes asked over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import Checkpoint, parse_vkey, sign_checkpoint, vkey_for
from audit.cosignature import CosignaturePolicy, CosignerKey, parse_cosigner_vkey, require_quorum
from audit.merkle import MemoryNodeStore
from keyserver.witness.client import ProofSource, WitnessClient, WitnessEndpoint
from keyserver.witness.protocol import (
    MAX_PROOF_LINES,
    SIZE_CONTENT_TYPE,
    AddCheckpoint,
    WitnessRefusal,
    format_add_checkpoint,
    parse_add_checkpoint,
)
from keyserver.witness.service import WitnessConfig, WitnessService
from keyserver.witness.store import WitnessStore
from tests.fixtures._proc import start_server, stop_process

ORIGIN = "keyserver.example/acme"
KEYSERVER = str(Path(sys.executable).parent / "keyserver")


class Log:
    """A log as a keyserver keeps it: entries, Merkle nodes, a signing key; it can also fork."""

    def __init__(self, key: Ed25519PrivateKey | None = None, entries: Sequence[bytes] = ()) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.tree = MemoryNodeStore()
        self.entries = list(entries)
        self.tree.extend(self.entries)

    @property
    def vkey(self) -> str:
        return vkey_for(ORIGIN, self.key.public_key())

    def grow(self, n: int, tag: bytes = b"entry") -> str:
        new = [tag + str(self.tree.size + i).encode() for i in range(n)]
        self.entries += new
        self.tree.extend(new)
        return self.checkpoint()

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        return sign_checkpoint(Checkpoint(ORIGIN, size, self.tree.root(size)), ORIGIN, self.key)

    def request(self, old: int, note: str, size: int | None = None) -> bytes:
        size = self.tree.size if size is None else size
        proof = self.tree.consistency_proof(old, size) if 0 < old < size else []
        return format_add_checkpoint(old, proof, note)

    def fork(self, shared: int = 0) -> Log:
        """Another history under the same key, sharing only the first ``shared`` entries."""
        return Log(self.key, self.entries[:shared])


# --- the wire format ----------------------------------------------------------------------------------


@given(
    old=st.integers(0, 2**64 - 1),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_LINES),
)
def test_request_round_trip(old: int, proof: list[bytes]) -> None:
    note = Log().grow(1)
    assert parse_add_checkpoint(format_add_checkpoint(old, proof, note)) == AddCheckpoint(
        old, tuple(proof), note
    )


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_are_a_400(body: bytes) -> None:
    with contextlib.suppress(WitnessRefusal):
        parse_add_checkpoint(body)
        return
    with pytest.raises(WitnessRefusal) as refused:
        parse_add_checkpoint(body)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"old 01\n\nx", "leading zeroes"),
        (b"old -1\n\nx", "decimal"),
        (b"old 18446744073709551616\n\nx", "64 bits"),
        (b"new 1\n\nx", "must start with"),
        (b"old 1\nAAAA\n\nx", "32-byte"),
        (b"old 1\n" + b"A" * 42 + b"B=\n\nx", "canonical"),
        (b"old 1\n" + b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n" * 64 + b"\nx", "63"),
        (b"old 1\nx", "empty line"),
        (b"old 1\n\n\xff", "UTF-8"),
        (b"old 1\n\n" + b"x" * 70_000, "larger"),
    ],
)
def test_malformed_requests_are_refused_with_400(body: bytes, reason: str) -> None:
    with pytest.raises(WitnessRefusal, match=reason) as refused:
        parse_add_checkpoint(body)
    assert refused.value.status == 400


# --- the witness service over a real database -----------------------------------------------------------


@dataclass
class Witness:
    service: WitnessService
    log: Log

    async def add(self, body: bytes) -> tuple[int, str, str]:
        answer = await self.service.add_checkpoint(body)
        return answer.status, answer.content_type, answer.body.decode()


def make_service(url: str, logs: dict[str, list[str]], name: str = "witness.example/w1") -> WitnessService:
    config = WitnessConfig(
        name=name,
        key_file=Path("/unused"),
        database_url=url,
        logs={origin: tuple(parse_vkey(v) for v in vkeys) for origin, vkeys in logs.items()},
    )
    return WitnessService(config, Ed25519PrivateKey.generate(), WitnessStore.from_url(url))


@pytest.fixture(params=["sqlite", "postgres"])
def witness_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'witness.sqlite3'}"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


@pytest.fixture
async def witness(witness_db: str) -> AsyncIterator[Witness]:
    log = Log()
    service = make_service(witness_db, {ORIGIN: [log.vkey]})
    await service.store.create_schema()
    yield Witness(service, log)
    await service.store.close()


def cosigned(witness: Witness, text: str, note: str) -> int:
    policy = CosignaturePolicy((witness.service.cosigner,), 1)
    return len(require_quorum(note + text, policy, __import__("datetime").datetime.now().astimezone()))


async def test_first_checkpoint_then_growth_with_proofs(witness: Witness) -> None:
    log = witness.log
    note = log.grow(3)
    status, _, text = await witness.add(log.request(0, note))
    assert status == 200
    assert cosigned(witness, text, note) == 1
    for step in (1, 4, 9):
        note = log.grow(step)
        status, _, text = await witness.add(log.request(log.tree.size - step, note))
        assert status == 200, text
        assert cosigned(witness, text, note) == 1
    # The same checkpoint again is fine (old size = its size, same root, empty proof).
    status, _, _ = await witness.add(log.request(log.tree.size, note))
    assert status == 200


async def test_wrong_old_size_is_409_with_the_latest_size(witness: Witness) -> None:
    log = witness.log
    await witness.add(log.request(0, log.grow(5)))
    note = log.grow(2)
    status, content_type, text = await witness.add(log.request(0, note))
    assert (status, content_type.split(";")[0], text) == (409, SIZE_CONTENT_TYPE, "5\n")
    status, _, text = await witness.add(log.request(3, note))
    assert (status, text) == (409, "5\n")


async def test_a_fork_at_the_same_size_is_refused_and_kept_as_evidence(witness: Witness) -> None:
    log = witness.log
    await witness.add(log.request(0, log.grow(4)))
    fork = log.fork()
    forked = fork.grow(4, tag=b"other")
    status, _, text = await witness.add(fork.request(4, forked, 4))
    assert (status, text) == (409, "4\n")
    evidence = await witness.service.store.refusals(ORIGIN)
    assert [e.note for e in evidence] == [forked]


async def test_a_forked_history_that_grows_is_refused_with_422(witness: Witness) -> None:
    log = witness.log
    await witness.add(log.request(0, log.grow(4)))
    fork = log.fork()
    fork.grow(9, tag=b"other")
    # The fork's proof from size 4 leads to *its* size-4 root, not the one the witness cosigned.
    status, _, text = await witness.add(fork.request(4, fork.checkpoint()))
    assert status == 422
    assert "consistency proof" in text


async def test_a_rollback_is_refused(witness: Witness) -> None:
    log = witness.log
    await witness.add(log.request(0, log.grow(8)))
    older = log.checkpoint(5)
    status, _, text = await witness.add(log.request(5, older, 5))
    assert (status, text) == (409, "8\n")
    status, _, _ = await witness.add(log.request(8, older, 5))
    assert status == 400  # old size larger than the checkpoint's


async def test_unknown_origin_bad_signature_and_bad_proof(witness: Witness) -> None:
    log = witness.log
    stranger = Log()
    other_origin = sign_checkpoint(
        Checkpoint("other.example/log", 1, bytes(32)), "other.example/log", stranger.key
    )
    assert (await witness.add(format_add_checkpoint(0, [], other_origin)))[0] == 404
    impostor = Log()  # signs our origin with another key
    assert (await witness.add(impostor.request(0, impostor.grow(2))))[0] == 403
    note = log.grow(3)
    tampered = note.replace(note.split("\n")[2], "A" * 43 + "=")  # root changed after signing
    assert (await witness.add(log.request(0, tampered)))[0] == 403
    await witness.add(log.request(0, note))
    log.grow(3)
    body = bytearray(log.request(3, log.checkpoint()))
    body[6] ^= 1  # a flipped bit in the first proof hash
    assert (await witness.add(bytes(body)))[0] in (400, 422)
    proof = log.tree.consistency_proof(3, 6)
    proof[0] = bytes(32)
    assert (await witness.add(format_add_checkpoint(3, proof, log.checkpoint())))[0] == 422
    assert (await witness.add(format_add_checkpoint(0, [bytes(32)], log.checkpoint())))[0] == 409


async def test_first_checkpoint_must_come_with_an_empty_proof(witness_db: str) -> None:
    log = Log()
    service = make_service(witness_db, {ORIGIN: [log.vkey]})
    await service.store.create_schema()
    try:
        answer = await service.add_checkpoint(format_add_checkpoint(0, [bytes(32)], log.grow(2)))
        assert answer.status == 422
    finally:
        await service.store.close()


async def test_concurrent_diverging_checkpoints_exactly_one_is_cosigned(witness: Witness) -> None:
    """The tlog-witness race: many requests from the same old size, each to a different history."""
    log = witness.log
    await witness.add(log.request(0, log.grow(3)))
    for round_ in range(5):
        base = log.tree.size
        forks = []
        for branch in range(6):
            fork = log.fork(shared=base)
            fork.grow(2 + branch % 2, tag=f"r{round_}b{branch}".encode())
            forks.append(fork)
        answers = await asyncio.gather(*(witness.add(f.request(base, f.checkpoint())) for f in forks))
        winners = [i for i, (status, _, _) in enumerate(answers) if status == 200]
        assert len(winners) == 1, answers
        assert all(status == 409 for status, _, _ in (a for i, a in enumerate(answers) if i != winners[0]))
        log = forks[winners[0]]
        witness.log = log


# --- real witness processes over HTTP ---------------------------------------------------------------------


@dataclass
class WitnessProcess:
    name: str
    url: str
    vkey: str
    process: subprocess.Popen[bytes]


def start_witness(tmp_path: Path, name: str, log_vkeys: Sequence[str]) -> WitnessProcess:
    home = tmp_path / name.replace("/", "_")
    home.mkdir()
    keygen = subprocess.run(
        [KEYSERVER, "witness", "keygen", "--name", name, "--key-file", str(home / "witness.key")],
        capture_output=True,
        text=True,
        check=True,
    )
    logs = "".join(f'[[log]]\nvkey = "{v}"\n' for v in log_vkeys)
    (home / "witness.toml").write_text(
        f'name = "{name}"\nkey_file = "witness.key"\n'
        f'database_url = "sqlite+aiosqlite:///{home / "state.sqlite3"}"\n{logs}'
    )

    def ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    process, port = start_server(
        lambda port: [
            KEYSERVER,
            "witness",
            "serve",
            "--config",
            str(home / "witness.toml"),
            "--port",
            str(port),
        ],
        ports=1,
        what=f"witness {name}",
        log_path=home / "witness.log",
        ready=ready,
    )
    return WitnessProcess(name, f"http://127.0.0.1:{port}", keygen.stdout.strip(), process)


@pytest.fixture
def log_and_witnesses(tmp_path: Path) -> Iterator[tuple[Log, list[WitnessProcess]]]:
    log = Log()
    witnesses = [start_witness(tmp_path, f"w{i}.example/witness", [log.vkey]) for i in range(3)]
    yield log, witnesses
    for w in witnesses:
        stop_process(w.process)


def endpoints(witnesses: Sequence[WitnessProcess]) -> list[WitnessEndpoint]:
    return [WitnessEndpoint(parse_cosigner_vkey(w.vkey), w.url) for w in witnesses]


async def test_log_collects_cosignatures_from_witness_processes(
    log_and_witnesses: tuple[Log, list[WitnessProcess]],
) -> None:
    log, witnesses = log_and_witnesses
    async with httpx.AsyncClient() as http:
        description = (await http.get(witnesses[0].url + "/")).text
    assert f"vkey {witnesses[0].vkey}" in description
    assert f"log {ORIGIN}" in description

    async def proofs(old: int, new: int) -> list[bytes]:
        return log.tree.consistency_proof(old, new)

    async with httpx.AsyncClient() as http:
        client = WitnessClient(http, timeout=5)
        for grow in (3, 5, 1):
            note = log.grow(grow)
            checkpoint = Checkpoint(ORIGIN, log.tree.size, log.tree.root())
            outcome = await client.cosign_all(endpoints(witnesses), note, checkpoint, proofs)
            assert outcome.cosigned_by == 3, outcome.failures
        policy = CosignaturePolicy(
            tuple(CosignerKey.from_public_key(e.key.name, e.key.public_key) for e in endpoints(witnesses)), 3
        )
        from datetime import UTC, datetime

        assert len(require_quorum(note + "".join(outcome.lines), policy, datetime.now(UTC))) == 3

        # One witness stops: two of three still cosign, and the failure names the missing one.
        stop_process(witnesses[2].process)
        note = log.grow(2)
        outcome = await client.cosign_all(
            endpoints(witnesses), note, Checkpoint(ORIGIN, log.tree.size, log.tree.root()), proofs
        )
        assert outcome.cosigned_by == 2
        assert list(outcome.failures) == [witnesses[2].name]


async def test_split_view_is_refused_by_every_honest_witness(
    log_and_witnesses: tuple[Log, list[WitnessProcess]],
) -> None:
    log, witnesses = log_and_witnesses

    def proofs_of(tree: Log) -> ProofSource:
        async def proofs(old: int, new: int) -> list[bytes]:
            return tree.tree.consistency_proof(old, new)

        return proofs

    async with httpx.AsyncClient() as http:
        client = WitnessClient(http, timeout=5)
        note = log.grow(4)
        outcome = await client.cosign_all(
            endpoints(witnesses),
            note,
            Checkpoint(ORIGIN, 4, log.tree.root()),
            proofs_of(log),
        )
        assert outcome.cosigned_by == 3
        # The same key signs another history of the same size: a split view.
        fork = log.fork()
        forked_note = fork.grow(4, tag=b"forked")
        fresh = WitnessClient(http, timeout=5)  # a keyserver that "forgot" what it showed before
        outcome = await fresh.cosign_all(
            endpoints(witnesses),
            forked_note,
            Checkpoint(ORIGIN, 4, fork.tree.root()),
            proofs_of(fork),
        )
        assert outcome.cosigned_by == 0
        assert all("cosigned size 4" in reason for reason in outcome.failures.values()), outcome.failures
        # Rolling back to size 2 is refused too.
        outcome = await fresh.cosign_all(
            endpoints(witnesses),
            log.checkpoint(2),
            Checkpoint(ORIGIN, 2, log.tree.root(2)),
            proofs_of(log),
        )
        assert outcome.cosigned_by == 0


def test_keygen_refuses_to_overwrite_and_serve_refuses_a_readable_key(tmp_path: Path) -> None:
    key = tmp_path / "w.key"
    first = subprocess.run(
        [KEYSERVER, "witness", "keygen", "--name", "w.example/x", "--key-file", str(key)],
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0
    assert first.stdout.startswith("w.example/x+")
    again = subprocess.run(
        [KEYSERVER, "witness", "keygen", "--name", "w.example/x", "--key-file", str(key)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1
    assert "not overwriting" in again.stderr
    key.chmod(0o644)
    (tmp_path / "w.toml").write_text(
        f'name = "w.example/x"\nkey_file = "w.key"\ndatabase_url = "sqlite+aiosqlite:///{tmp_path}/s.db"\n'
        f'[[log]]\nvkey = "{Log().vkey}"\n'
    )
    refused = subprocess.run(
        [KEYSERVER, "witness", "vkey", "--config", str(tmp_path / "w.toml")], capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert "chmod 600" in refused.stderr
