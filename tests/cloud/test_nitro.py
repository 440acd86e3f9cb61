"""AWS Nitro Enclaves evidence (issue 19): the three real documents (MANIFEST §6) accepted inside their
window with their claims and refused one second outside; tampering, another signer, another root each
refused with its reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import Claims
from keyserver.evidence.nitro import parse_document
from keyserver.evidence.nitro.verify import AWS_NITRO_ROOT_SHA256, aws_nitro_root, verify_nitro_document
from tests.cloud.nitro_synth import SyntheticNitro, resign, sign
from tests.cloud.vectors import NITRO, NitroVector

ONE_SECOND = timedelta(seconds=1)


def middle(v: NitroVector) -> datetime:
    return v.not_before + (v.not_after - v.not_before) / 2


def reason(document: bytes, now: datetime, root: bytes | None = None) -> str:
    with pytest.raises(EvidenceError) as info:
        verify_nitro_document(document, now=now, root=root)
    return info.value.reason


def test_the_shipped_root_is_awss() -> None:
    import hashlib

    assert hashlib.sha256(aws_nitro_root()).hexdigest() == AWS_NITRO_ROOT_SHA256


@pytest.mark.parametrize("name", sorted(NITRO))
def test_real_document_is_accepted_with_its_claims(name: str) -> None:
    v = NITRO[name]
    claims: Claims = verify_nitro_document(v.document, now=middle(v))
    assert claims["tee"] == "aws-nitro"
    assert claims["debug"] is v.debug
    assert str(claims["nitro.pcrs.0"]).startswith(v.pcr0_prefix)
    assert all(f"nitro.pcrs.{i}" in claims for i in range(9))
    if v.module_id:
        assert claims["nitro.module_id"] == v.module_id
    doc = parse_document(v.document)
    assert claims["report_data"] == (doc.nonce or b"").hex()
    assert claims["nitro.timestamp"] == doc.timestamp_ms


def test_manifest_details() -> None:
    prod = verify_nitro_document(
        NITRO["valid-attestation-doc-bytes"].document, now=middle(NITRO["valid-attestation-doc-bytes"])
    )
    assert str(prod["nitro.pcrs.1"]).startswith("bcdf05fe")
    assert str(prod["nitro.pcrs.2"]).startswith("d8f114da")
    assert len(str(prod["nitro.nonce"])) == 2 * 256
    dbg = verify_nitro_document(
        NITRO["debug-mode-attestation-doc-bytes"].document,
        now=middle(NITRO["debug-mode-attestation-doc-bytes"]),
    )
    assert bytes.fromhex(str(dbg["nitro.user_data"])) == b"hello, world!"
    assert len(bytes.fromhex(str(dbg["nitro.public_key"]))) == 19
    ga = NITRO["valid-attestation-doc-base64"]
    assert len(str(verify_nitro_document(ga.document, now=middle(ga))["nitro.nonce"])) == 2 * 256


@pytest.mark.parametrize("name", sorted(NITRO))
def test_refused_one_second_outside_the_window_and_at_real_now(name: str) -> None:
    v = NITRO[name]
    verify_nitro_document(v.document, now=v.not_before)
    verify_nitro_document(v.document, now=v.not_after)
    for outside in (v.not_before - ONE_SECOND, v.not_after + ONE_SECOND, datetime.now(UTC)):
        assert reason(v.document, outside) == "nitro-certificate-expired"


@pytest.mark.parametrize("name", sorted(NITRO))
def test_flipped_bytes_in_each_part_are_refused(name: str) -> None:
    v = NITRO[name]
    doc = parse_document(v.document)
    now = middle(v)
    # A PCR value inside the signed payload: still valid CBOR, the signature breaks.
    pcr0 = doc.payload.index(doc.pcrs[0])
    at = v.document.index(doc.payload) + pcr0
    mutated = bytearray(v.document)
    mutated[at] ^= 1
    assert reason(bytes(mutated), now) == "nitro-signature-invalid"
    sig_at = v.document.index(doc.signature)
    mutated = bytearray(v.document)
    mutated[sig_at + 10] ^= 1
    assert reason(bytes(mutated), now) == "nitro-signature-invalid"


@pytest.mark.parametrize("name", sorted(NITRO))
def test_a_document_re_signed_by_another_key_is_refused(name: str) -> None:
    v = NITRO[name]
    other = ec.generate_private_key(ec.SECP384R1())
    assert reason(resign(v.document, other), middle(v)) == "nitro-signature-invalid"
    # ... also when the payload was edited to carry another nonce (what a forger would want).
    assert reason(resign(v.document, other, nonce=b"\x01" * 64), middle(v)) == "nitro-signature-invalid"


def test_a_chain_to_another_root_is_refused() -> None:
    synth = SyntheticNitro.create()
    document = synth.document(nonce=b"\x02" * 64)
    now = datetime.now(UTC)
    assert reason(document, now) == "nitro-root-untrusted"  # against AWS's pinned root
    claims = verify_nitro_document(document, now=now, root=synth.root_der)  # the same chain, its own root
    assert claims["report_data"] == "02" * 64
    assert claims["debug"] is False


def test_a_chain_spliced_from_another_document_is_refused() -> None:
    a, b = NITRO["valid-attestation-doc-bytes"], NITRO["debug-mode-attestation-doc-bytes"]
    key = ec.generate_private_key(ec.SECP384R1())
    other_bundle = parse_document(b.document).cabundle
    # b's intermediates with a's leaf: the leaf is not issued by them.
    spliced = resign(a.document, key, cabundle=list(other_bundle))
    assert reason(spliced, middle(a)) in ("nitro-chain-invalid", "nitro-certificate-expired")
    synth = SyntheticNitro.create()
    leaf_not_ca = synth.document(
        extra={
            "cabundle": [
                synth.root_der,
                synth.leaf.public_bytes(Encoding.DER),
            ]
        }
    )
    assert reason(leaf_not_ca, datetime.now(UTC), root=synth.root_der) == "nitro-chain-invalid"


def test_timestamp_outside_the_leaf_window_is_refused() -> None:
    synth = SyntheticNitro.create()
    late = synth.document(timestamp=datetime.now(UTC) + timedelta(days=3))
    assert reason(late, datetime.now(UTC), root=synth.root_der) == "nitro-timestamp-invalid"


def test_debug_documents_are_debug() -> None:
    synth = SyntheticNitro.create()
    zeros = {i: bytes(48) for i in range(16)}
    claims = verify_nitro_document(synth.document(pcrs=zeros), now=datetime.now(UTC), root=synth.root_der)
    assert claims["debug"] is True


@pytest.mark.parametrize(
    "payload_change",
    [
        {"digest": "SHA256"},
        {"module_id": ""},
        {"timestamp": 0},
        {"timestamp": "now"},
        {"pcrs": {}},
        {"pcrs": {32: bytes(48)}},
        {"pcrs": {0: bytes(47)}},
        {"pcrs": {True: bytes(48)}},
        {"cabundle": []},
        {"cabundle": [b""]},
        {"certificate": b"x" * 1025},
        {"nonce": b"x" * 513},
        {"user_data": "text"},
        {"public_key": b""},
    ],
)
def test_malformed_document_fields_are_refused(payload_change: dict[str, object]) -> None:
    synth = SyntheticNitro.create()
    key = ec.generate_private_key(ec.SECP384R1())
    document = resign(synth.document(), key, **payload_change)
    assert reason(document, datetime.now(UTC), root=synth.root_der) == "nitro-document-malformed"


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        b"\xff",
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""])),
        cbor2.dumps([cbor2.dumps({1: -7}), {}, cbor2.dumps({}), bytes(96)]),  # ES256
        cbor2.dumps([cbor2.dumps({1: -35}), {1: -35}, cbor2.dumps({}), bytes(96)]),
        cbor2.dumps([cbor2.dumps({1: -35}), {}, cbor2.dumps({}), bytes(95)]),
        cbor2.dumps([cbor2.dumps({1: -35}), {}, cbor2.dumps([]), bytes(96)]),
        cbor2.dumps([cbor2.dumps({1: -35}), {}, b"\xff", bytes(96)]),
        b"\x00" * (64 * 1024 + 1),
    ],
)
def test_malformed_envelopes_are_refused(envelope: bytes) -> None:
    assert reason(envelope, datetime.now(UTC)) == "nitro-document-malformed"


def test_sign_helper_matches_the_real_format() -> None:
    # The synthetic signer produces what the verifier reads from real documents (same Sig_structure).
    key = ec.generate_private_key(ec.SECP384R1())
    doc = parse_document(sign(parse_document(NITRO["valid-attestation-doc-bytes"].document).payload, key))
    assert doc.protected == cbor2.dumps({1: -35})
