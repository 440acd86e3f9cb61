"""The loader's k-of-n release (clients/loader/quorum.py) and its configuration.

The happy path and the vetoes run end to end in the demo (three ``keyserver serve`` processes, swtpm,
the real loader process: tests/clients/test_end_to_end.py). Here, what a keyserver can do wrong with its
share: the share source is a seam (``share_of``) so each keyserver can hand back an honest share, an
altered one, one of another key or version, or a copy of another keyserver's — while an unreachable and
a silent keyserver are real sockets reached by the loader's real HTTP client, so their timeouts and
refusals are the real ones.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.checkpoint import vkey_for
from clients.loader.collectors.base import Collector
from clients.loader.config import ConfigError, LoaderConfig, threshold_config_document
from clients.loader.keyserver_api import LoaderKeyserver
from clients.loader.quorum import KeyserverTrust, QuorumRefused, QuorumTrust, SerialCollector, release_quorum
from clients.loader.release import EphemeralKey
from clients.loader.service import LoaderState, TokenCache, answer
from threshold import KeyCommitment, KeyIdentity, split

KEY = bytes(range(32))
IDENTITY = KeyIdentity("weights", 1, 2, 3)
NAMES = ("ks-a", "ks-b", "ks-c")


def _pem(key: Any) -> str:
    return str(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())


def keyserver_member(name: str) -> dict[str, Any]:
    origin = f"{name}.example/acme"
    vkey = vkey_for(origin, ed25519.Ed25519PrivateKey.generate().public_key())
    return {
        "name": name,
        "tenant": "acme",
        "key": "weights-share",
        "log": {"verifier_key": vkey, "origin": origin},
    }


def threshold_document(
    commitment: KeyCommitment, members: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return threshold_config_document(
        commitment=commitment.to_json(),
        keyservers=members if members is not None else [keyserver_member(n) for n in NAMES],
        program_signers={"ci": _pem(ed25519.Ed25519PrivateKey.generate().public_key())},
    )


@pytest.fixture
def split_key() -> tuple[list[bytes], KeyCommitment]:
    shares, commitment = split(KEY, IDENTITY)
    return [s.to_bytes() for s in shares], commitment


@pytest.fixture
def quorum(split_key: tuple[list[bytes], KeyCommitment]) -> QuorumTrust:
    config = LoaderConfig.from_document(threshold_document(split_key[1]))
    assert isinstance(config.source, QuorumTrust)
    return config.source


class NoEvidence:
    """A collector for keyservers that never get as far as asking for evidence."""

    tee = "tpm"

    def collect(self, binding: bytes) -> dict[str, Any]:
        raise AssertionError("no evidence is collected for a keyserver that gave no challenge")


def clients_for(urls: dict[str, str], timeout: float = 0.5) -> dict[str, LoaderKeyserver]:
    return {name: LoaderKeyserver(url, tenant="acme", timeout=timeout) for name, url in urls.items()}


class Handing:
    """Each keyserver hands back the share the test gives it (a copy the test can inspect afterwards)."""

    def __init__(self, shares: dict[str, bytes], last: str | None = None) -> None:
        self.shares = shares
        self.handed: dict[str, bytearray] = {}
        self.last = last  # this keyserver answers only after every other one has
        self.others_answered = threading.Barrier(len(shares) - 1) if last else None

    def __call__(
        self, trust: KeyserverTrust, client: LoaderKeyserver, collector: Collector, key: EphemeralKey
    ) -> bytearray:
        from clients.loader.quorum import _share_of

        if trust.name not in self.shares:
            return _share_of(trust, client, collector, key)  # the real path: HTTP to the keyserver
        if self.others_answered is not None:
            if trust.name == self.last:
                time.sleep(0.3)  # the others are past their barrier and answered well before this
            else:
                self.others_answered.wait(timeout=5)
        self.handed[trust.name] = bytearray(self.shares[trust.name])
        return self.handed[trust.name]


UNUSED = {name: "http://127.0.0.1:9" for name in NAMES}


def test_k_honest_shares_make_the_committed_key_and_every_share_is_wiped(
    quorum: QuorumTrust, split_key: tuple[list[bytes], KeyCommitment]
) -> None:
    handing = Handing(dict(zip(NAMES, split_key[0], strict=True)))
    outcome = release_quorum(quorum, clients_for(UNUSED), NoEvidence(), EphemeralKey(), share_of=handing)
    assert bytes(outcome.key) == KEY
    assert sum(1 for e in outcome.report.values() if e.get("used")) == 2
    assert all(e["released"] for e in outcome.report.values())
    for share in handing.handed.values():
        assert share == bytearray(len(share)), "a share outlived the combination"


@pytest.mark.parametrize("altered_answers", ["in any order", "last"])
def test_an_altered_share_is_caught_and_the_two_honest_ones_still_boot(
    quorum: QuorumTrust, split_key: tuple[list[bytes], KeyCommitment], altered_answers: str
) -> None:
    shares = list(split_key[0])
    shares[0] = shares[0][:-1] + bytes([shares[0][-1] ^ 1])
    # Last: the key is already made from ks-b and ks-c when ks-a's share arrives; it is still checked.
    last = "ks-a" if altered_answers == "last" else None
    handing = Handing(dict(zip(NAMES, shares, strict=True)), last=last)
    outcome = release_quorum(quorum, clients_for(UNUSED), NoEvidence(), EphemeralKey(), share_of=handing)
    assert bytes(outcome.key) == KEY
    assert outcome.report["ks-a"]["used"] is False
    assert outcome.report["ks-a"]["reason"] == "threshold-commitment-mismatch"
    for share in handing.handed.values():
        assert share == bytearray(len(share)), "a share outlived the boot"


def test_an_honest_late_share_is_reported_unused_and_without_blame(
    quorum: QuorumTrust, split_key: tuple[list[bytes], KeyCommitment]
) -> None:
    handing = Handing(dict(zip(NAMES, split_key[0], strict=True)), last="ks-c")
    outcome = release_quorum(quorum, clients_for(UNUSED), NoEvidence(), EphemeralKey(), share_of=handing)
    assert bytes(outcome.key) == KEY
    assert outcome.report["ks-c"] == {"released": True, "used": False}
    assert outcome.report["ks-a"]["used"] is True
    assert outcome.report["ks-b"]["used"] is True
    for share in handing.handed.values():
        assert share == bytearray(len(share)), "a share outlived the boot"


def test_shares_of_another_key_or_version_are_refused_by_name(
    quorum: QuorumTrust, split_key: tuple[list[bytes], KeyCommitment]
) -> None:
    other_version, _ = split(KEY, KeyIdentity("weights", 2, 2, 3))
    other_key, _ = split(bytes(32), KeyIdentity("other", 1, 2, 3))
    shares = {"ks-a": other_version[0].to_bytes(), "ks-b": other_key[1].to_bytes(), "ks-c": split_key[0][2]}
    with pytest.raises(QuorumRefused) as refused:
        release_quorum(quorum, clients_for(UNUSED), NoEvidence(), EphemeralKey(), share_of=Handing(shares))
    assert refused.value.report["ks-a"]["reason"] == "threshold-wrong-identity"
    assert refused.value.report["ks-b"]["reason"] == "threshold-wrong-identity"
    assert "2 must agree" in refused.value.message


def test_one_keyserver_replaying_anothers_share_does_not_count_twice(
    quorum: QuorumTrust, split_key: tuple[list[bytes], KeyCommitment]
) -> None:
    copy = {"ks-a": split_key[0][0], "ks-b": split_key[0][0]}  # ks-c silent: only a duplicate pair
    silent = _silent_server()
    with silent as url, pytest.raises(QuorumRefused) as refused:
        release_quorum(
            quorum,
            clients_for({**UNUSED, "ks-c": url}),
            NoEvidence(),
            EphemeralKey(),
            share_of=Handing(copy),
            deadline_s=5,
        )
    # ks-a and ks-b answer concurrently: whichever arrives second is the copy that does not count.
    reasons = sorted(str(refused.value.report[name].get("reason")) for name in ("ks-a", "ks-b"))
    assert reasons == ["None", "threshold-duplicate-share"]
    assert refused.value.report["ks-c"]["reason"] == "keyserver-unreachable"
    assert "timed out" in refused.value.report["ks-c"]["detail"]


def test_a_silent_and_an_unreachable_keyserver(
    quorum: QuorumTrust, split_key: tuple[list[bytes], KeyCommitment]
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with _silent_server() as url:
        # One silent keyserver: the other two suffice, and the boot does not wait for ever.
        outcome = release_quorum(
            quorum,
            clients_for({**UNUSED, "ks-c": url}),
            NoEvidence(),
            EphemeralKey(),
            share_of=Handing({"ks-a": split_key[0][0], "ks-b": split_key[0][1]}),
            deadline_s=5,
        )
        assert bytes(outcome.key) == KEY
        # Silent and unreachable: one share is not k; both refusals are named.
        with pytest.raises(QuorumRefused) as refused:
            release_quorum(
                quorum,
                clients_for({**UNUSED, "ks-b": f"http://127.0.0.1:{port}", "ks-c": url}),
                NoEvidence(),
                EphemeralKey(),
                share_of=Handing({"ks-a": split_key[0][0]}),
                deadline_s=5,
            )
    assert "1 of 3 keyservers released a share" in refused.value.message
    assert "ks-b (keyserver-unreachable)" in refused.value.message
    assert "ks-c (keyserver-unreachable)" in refused.value.message


class _silent_server:
    """A keyserver URL that accepts connections and never answers."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def __exit__(self, *_: object) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["threshold"].update(k=3), "commitment is for 2 of 3"),
        (lambda d: d["threshold"]["keyservers"].pop(), "2 of 3"),
        (lambda d: d["threshold"]["keyservers"][1].update(name="ks-a"), "names must differ"),
        (
            lambda d: d["threshold"]["keyservers"][1].update(
                log=dict(d["threshold"]["keyservers"][0]["log"])
            ),
            "must differ",
        ),
        (lambda d: d["threshold"]["keyservers"][0].update(extra=1), "threshold keyserver #0"),
        (lambda d: d["threshold"]["keyservers"][0].update(name="a b"), "name is"),
        (lambda d: d["threshold"]["commitment"].update(digest="AA"), "commitment is unusable"),
        (lambda d: d["threshold"].update(extra=1), '"threshold" is'),
        (lambda d: d.update(tenant="acme"), "unknown"),
        (lambda d: d.update(witnesses={}), "unknown"),
        (lambda d: d["threshold"].update(keyservers=[]), "2 to 16"),
    ],
)
def test_a_bad_threshold_configuration_stops_the_loader(
    split_key: tuple[list[bytes], KeyCommitment], change: Any, message: str
) -> None:
    document = threshold_document(split_key[1])
    change(document)
    with pytest.raises(ConfigError, match=message):
        LoaderConfig.from_document(document)


def test_the_threshold_configuration_is_measured_and_has_no_single_keyserver(
    split_key: tuple[list[bytes], KeyCommitment],
) -> None:
    document = threshold_document(split_key[1])
    config = LoaderConfig.from_document(document)
    assert isinstance(config.source, QuorumTrust)
    assert config.source.key_id == "weights/1"
    with pytest.raises(ConfigError, match="k of n"):
        _ = config.tenant
    other = threshold_document(split(KEY, IDENTITY)[1])  # another commitment: another measurement
    other["program_signers"] = document["program_signers"]
    other["threshold"]["keyservers"] = document["threshold"]["keyservers"]
    assert LoaderConfig.from_document(other).canonical != config.canonical


def test_the_loader_offers_every_attestation_result_for_a_quorum() -> None:
    state = LoaderState(
        tenant=None,
        key=EphemeralKey(),
        accelerator=None,  # type: ignore[arg-type]  # the attestation route does not touch it
        tokens=TokenCache(fetch=lambda: ["t1", "t2"]),
    )
    status, document = answer(state, "GET", "/v1/attestation", b"")
    assert status == 200
    assert document == {"public_key": state.key.public_jwk, "tokens": ["t1", "t2"]}


def test_evidence_is_collected_one_at_a_time() -> None:
    inside, overlaps = [0], []

    class Slow:
        tee = "tpm"

        def collect(self, binding: bytes) -> dict[str, Any]:
            inside[0] += 1
            overlaps.append(inside[0])
            threading.Event().wait(0.02)
            inside[0] -= 1
            return {}

    serial = SerialCollector(Slow())
    threads = [threading.Thread(target=serial.collect, args=(bytes(64),)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1
