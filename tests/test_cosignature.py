"""C2SP tlog-cosignature (Ed25519 cosignature/v1): published vectors, an independent implementation
written here from the specification text, tampering, and the quorum a client requires."""

from __future__ import annotations

import base64
import hashlib
import struct
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import (
    Checkpoint,
    KeyFormatError,
    MalformedError,
    VerificationError,
    format_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    vkey_for,
)
from audit.cosignature import (
    CosignaturePolicy,
    CosignerKey,
    QuorumError,
    cosign_checkpoint,
    cosigner_vkey,
    parse_cosigner_vkey,
    require_quorum,
    verify_cosignatures,
)

# --- published vectors -------------------------------------------------------------------------------

# sigsum-go, pkg/checkpoint/checkpoint_test.go (TestCheckpointVerifyCosignatureByKey): a cosignature at
# time 1234 on the checkpoint "example.org/log", size 10, root 1c0e47 followed by zeroes, by the
# Ed25519 key whose seed is 17 followed by 31 zero bytes, under the name "example.org/witness".
SIGSUM_SEED = bytes([17]) + bytes(31)
SIGSUM_BODY = "example.org/log\n10\nHA5HAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
SIGSUM_LINE = (
    "\u2014 example.org/witness ys8uUAAAAAAAAATSftMzceM8zssdZ9jin9SjwIxzx9iADMf63VqirX2hafol9Rsq"
    "NqbofIz0LVRqHXI2kpEBSki5RTXFtxz1vo9+Cg==\n"
)
# The same test's other lines: another key id, another name, another signature size (all ignored or refused).
SIGSUM_OTHER_ID = (
    "\u2014 example.org/witness yX8uUAAAAAAAAATSftMzceM8zssdZ9jin9SjwIxzx9iADMf63VqirX2hafol9Rsq"
    "NqbofIz0LVRqHXI2kpEBSki5RTXFtxz1vo9+Cg==\n"
)
SIGSUM_OTHER_NAME = SIGSUM_LINE.replace("example.org/witness ", "example.org/witness-2 ")

# C2SP tlog-cosignature's own example checkpoint with a cosignature line (its key is not published,
# so only its shape is checked: it must parse, and be ignored by a client that does not trust w1).
C2SP_EXAMPLE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q"
    "1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2"
    "oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)


def sigsum_witness() -> CosignerKey:
    key = Ed25519PrivateKey.from_private_bytes(SIGSUM_SEED)
    return CosignerKey.from_public_key("example.org/witness", key.public_key())


def test_sigsum_published_cosignature_verifies() -> None:
    body, verified = verify_cosignatures(SIGSUM_BODY + "\n" + SIGSUM_LINE, [sigsum_witness()])
    assert body == SIGSUM_BODY
    assert [(v.cosigner, v.timestamp) for v in verified] == [("example.org/witness", 1234)]


def test_our_signer_reproduces_the_sigsum_line_byte_for_byte() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SIGSUM_SEED)
    assert cosign_checkpoint(SIGSUM_BODY, "example.org/witness", key, 1234) == SIGSUM_LINE


def test_sigsum_lines_for_other_ids_and_names_are_ignored() -> None:
    note = SIGSUM_BODY + "\n" + SIGSUM_OTHER_ID + SIGSUM_OTHER_NAME + SIGSUM_LINE
    _, verified = verify_cosignatures(note, [sigsum_witness()])
    assert len(verified) == 1


def test_sigsum_cosignature_with_a_changed_timestamp_is_refused() -> None:
    blob = bytearray(base64.b64decode(SIGSUM_LINE.split(" ")[2]))
    blob[11] ^= 1  # the last byte of the timestamp
    line = f"\u2014 example.org/witness {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(VerificationError, match="invalid cosignature"):
        verify_cosignatures(SIGSUM_BODY + "\n" + line, [sigsum_witness()])


def test_c2sp_example_parses_and_untrusted_cosigners_do_not_count() -> None:
    _, verified = verify_cosignatures(C2SP_EXAMPLE, [sigsum_witness()])
    assert verified == []


# --- an independent implementation, from the specification's text alone -------------------------------


def spec_key_id(name: str, raw_public_key: bytes) -> bytes:
    # "SHA-256(<name> || "\n" || 0x04 || 32-byte Ed25519 cosigner public key)[:4]"
    return hashlib.sha256(name.encode() + b"\n" + b"\x04" + raw_public_key).digest()[:4]


def spec_message(body: str, timestamp: int) -> bytes:
    # "two newline terminated lines (one header line and one timestamp line) followed by the whole note body"
    return b"cosignature/v1\n" + b"time " + str(timestamp).encode() + b"\n" + body.encode()


def spec_cosign(body: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    blob = spec_key_id(name, raw) + struct.pack(">Q", timestamp) + key.sign(spec_message(body, timestamp))
    return "\u2014 " + name + " " + base64.b64encode(blob).decode() + "\n"


def spec_verify(note: str, name: str, public_key: Ed25519PublicKey) -> list[int]:
    body, _, signatures = note.rpartition("\n\n")
    body += "\n"
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    timestamps = []
    for line in signatures.splitlines():
        _, line_name, encoded = line.split(" ")
        blob = base64.b64decode(encoded)
        if line_name != name or blob[:4] != spec_key_id(name, raw):
            continue
        (timestamp,) = struct.unpack(">Q", blob[4:12])
        public_key.verify(blob[12:], spec_message(body, timestamp))
        timestamps.append(timestamp)
    return timestamps


@given(
    origin=st.from_regex(r"[a-z]{1,12}\.example/[a-z0-9]{1,8}", fullmatch=True),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    timestamp=st.integers(0, 2**63 - 1),
    extensions=st.lists(st.from_regex(r"[A-Za-z0-9 ]{0,8}[A-Za-z0-9]", fullmatch=True), max_size=2),
)
def test_cosignatures_agree_with_the_independent_implementation(
    origin: str, size: int, root: bytes, timestamp: int, extensions: list[str]
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(origin.encode()).digest())
    body = format_checkpoint(Checkpoint(origin, size, root, tuple(extensions)))
    ours = cosign_checkpoint(body, "witness.example/w", key, timestamp)
    assert ours == spec_cosign(body, "witness.example/w", key, timestamp)
    assert spec_verify(body + "\n" + ours, "witness.example/w", key.public_key()) == [timestamp]
    witness = CosignerKey.from_public_key("witness.example/w", key.public_key())
    _, verified = verify_cosignatures(
        body + "\n" + spec_cosign(body, "witness.example/w", key, timestamp), [witness]
    )
    assert [v.timestamp for v in verified] == [timestamp]


# --- keys ---------------------------------------------------------------------------------------------


def test_vkey_round_trip_and_type_byte() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    vkey = cosigner_vkey("witness.example/w1", key)
    parsed = parse_cosigner_vkey(vkey)
    assert parsed.name == "witness.example/w1"
    assert parsed.vkey == vkey
    assert base64.b64decode(vkey.split("+", 2)[2])[0] == 0x04


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v.replace("+", "", 1),  # name and key id run together
        lambda v: v.split("+", 2)[0] + "+00000000+" + v.split("+", 2)[2],  # wrong key id
        lambda v: v[:-2] + ("A" if v[-2] != "A" else "B") + v[-1],  # another key, id no longer matches
    ],
)
def test_bad_vkeys_are_refused(mutate: object) -> None:
    vkey = cosigner_vkey("witness.example/w1", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFormatError):
        parse_cosigner_vkey(mutate(vkey))  # type: ignore[operator]


def test_a_log_vkey_is_not_a_witness_vkey() -> None:
    # The log's key type is 0x01; accepting it as a witness would let a log "cosign" its own checkpoints.
    log_vkey = vkey_for("witness.example/w1", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFormatError, match="0x04"):
        parse_cosigner_vkey(log_vkey)


def test_log_signature_is_not_a_cosignature_under_the_same_key() -> None:
    """Same key, same name, used as log key and as witness: the key ids differ (0x01 vs 0x04)."""
    key = Ed25519PrivateKey.generate()
    note = sign_checkpoint(Checkpoint("x.example/log", 3, bytes(32)), "x.example/log", key)
    witness = CosignerKey.from_public_key("x.example/log", key.public_key())
    assert verify_cosignatures(note, [witness])[1] == []


# --- tampering and quorum ------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def checkpoint_with(
    witnesses: list[tuple[str, Ed25519PrivateKey, datetime]], root: bytes = b"r"
) -> tuple[str, str]:
    log_key = Ed25519PrivateKey.generate()
    checkpoint = Checkpoint("ks.example/acme", 7, hashlib.sha256(root).digest())
    note = sign_checkpoint(checkpoint, "ks.example/acme", log_key)
    body = note.partition("\n\n")[0] + "\n"
    for name, key, when in witnesses:
        note += cosign_checkpoint(body, name, key, int(when.timestamp()))
    return note, vkey_for("ks.example/acme", log_key.public_key())


def keys(n: int) -> list[tuple[str, Ed25519PrivateKey]]:
    return [(f"w{i}.example/witness", Ed25519PrivateKey.generate()) for i in range(n)]


def policy(
    ws: list[tuple[str, Ed25519PrivateKey]], quorum: int, max_age: timedelta | None = None
) -> CosignaturePolicy:
    return CosignaturePolicy(
        tuple(CosignerKey.from_public_key(n, k.public_key()) for n, k in ws), quorum, max_age=max_age
    )


def test_two_of_three_meets_the_quorum_and_the_log_signature_still_verifies() -> None:
    ws = keys(3)
    note, log_vkey = checkpoint_with([(n, k, NOW) for n, k in ws[:2]])
    counted = require_quorum(note, policy(ws, 2), NOW)
    assert sorted(c.cosigner for c in counted) == [ws[0][0], ws[1][0]]
    assert verify_checkpoint(note, log_vkey).size == 7


def test_one_of_three_is_not_two() -> None:
    ws = keys(3)
    note, _ = checkpoint_with([(ws[0][0], ws[0][1], NOW)])
    with pytest.raises(QuorumError, match=r"1 of the required 2.*no cosignature from"):
        require_quorum(note, policy(ws, 2), NOW)


def test_the_same_witness_twice_counts_once() -> None:
    ws = keys(3)
    note, _ = checkpoint_with([(ws[0][0], ws[0][1], NOW), (ws[0][0], ws[0][1], NOW - timedelta(seconds=5))])
    with pytest.raises(QuorumError):
        require_quorum(note, policy(ws, 2), NOW)


def test_an_untrusted_witness_does_not_count() -> None:
    ws, strangers = keys(3), keys(2)
    # Strangers use trusted names but their own keys: the key ids do not match, so they are ignored.
    note, _ = checkpoint_with([(ws[0][0], strangers[0][1], NOW), (ws[1][0], strangers[1][1], NOW)])
    with pytest.raises(QuorumError, match="0 of the required 2"):
        require_quorum(note, policy(ws, 2), NOW)


def test_stale_and_future_cosignatures_do_not_count() -> None:
    ws = keys(2)
    note, _ = checkpoint_with(
        [(ws[0][0], ws[0][1], NOW - timedelta(hours=2)), (ws[1][0], ws[1][1], NOW + timedelta(hours=1))]
    )
    with pytest.raises(QuorumError, match=r"older than.*dated in the future|dated in the future.*older than"):
        require_quorum(note, policy(ws, 1, max_age=timedelta(hours=1)), NOW)
    assert require_quorum(note, policy(ws, 1, max_age=timedelta(hours=3)), NOW)


def test_cosignature_on_another_checkpoint_is_refused() -> None:
    ws = keys(1)
    note, _ = checkpoint_with([(ws[0][0], ws[0][1], NOW)])
    line = note.splitlines(keepends=True)[-1]
    other, _ = checkpoint_with([], root=b"a fork")
    with pytest.raises(VerificationError, match="invalid cosignature"):
        require_quorum(other + line, policy(ws, 1), NOW)


@pytest.mark.parametrize("position", [0, 3, 4, 11, 12, 40, 75])
def test_every_flipped_byte_of_a_cosignature_is_refused_or_ignored(position: int) -> None:
    ws = keys(1)
    note, _ = checkpoint_with([(ws[0][0], ws[0][1], NOW)])
    *head, line = note.splitlines(keepends=True)
    prefix, encoded = line.rsplit(" ", 1)
    blob = bytearray(base64.b64decode(encoded))
    blob[position] ^= 0x01
    tampered = "".join(head) + f"{prefix} {base64.b64encode(bytes(blob)).decode()}\n"
    # A changed key id makes the line someone else's (ignored); any other change fails verification.
    with pytest.raises((VerificationError, QuorumError)):
        require_quorum(tampered, policy(ws, 1), NOW)


def test_truncated_blob_is_refused() -> None:
    ws = keys(1)
    note, _ = checkpoint_with([(ws[0][0], ws[0][1], NOW)])
    *head, line = note.splitlines(keepends=True)
    prefix, encoded = line.rsplit(" ", 1)
    short = base64.b64encode(base64.b64decode(encoded)[:-1]).decode()
    with pytest.raises(VerificationError, match="bytes, not 72"):
        require_quorum("".join(head) + f"{prefix} {short}\n", policy(ws, 1), NOW)


def test_empty_or_impossible_policies_are_refused() -> None:
    ws = keys(2)
    with pytest.raises(ValueError, match="at least one"):
        CosignaturePolicy((), 1)
    with pytest.raises(ValueError, match="quorum"):
        policy(ws, 0)
    with pytest.raises(ValueError, match="quorum"):
        policy(ws, 3)


def test_timestamps_beyond_the_spec_range_are_refused_when_signing() -> None:
    with pytest.raises(MalformedError):
        cosign_checkpoint(SIGSUM_BODY, "w.example/x", Ed25519PrivateKey.generate(), 2**63)
