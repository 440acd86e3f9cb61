"""TPM wire structures: real vectors parse and re-encode byte for byte, Names match what TPMs computed,
and hostile input never raises anything but EvidenceError."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as s

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm import structures as st
from tests.fuzzing import fuzz_settings

from .helpers import GCE, GCE_QUOTES, azure_quote, ec_key, public_from_key, vec, windows_vector

pytestmark = pytest.mark.fuzz

PARSERS: dict[str, Callable[[bytes], object]] = {
    "TPMT_PUBLIC": st.parse_tpmt_public,
    "TPM2B_PUBLIC": st.parse_tpm2b_public,
    "TPMS_ATTEST": st.parse_attest,
    "TPMT_SIGNATURE": st.parse_signature,
    "TPML_PCR_SELECTION": st.parse_pcr_selection_list,
}


def _real_structures() -> list[tuple[str, str, bytes]]:
    """(id, parser name, bytes) for every TPM structure among the vectors."""
    out: list[tuple[str, str, bytes]] = []
    pub = (GCE / "common" / "ak_pub.tpmt_public").read_bytes()
    out += [("gce-ak", "TPMT_PUBLIC", pub), ("gce-ak-2b", "TPM2B_PUBLIC", st.tpm2b(pub))]
    for att in ("no-nonce", "nonce9009"):
        for q in GCE_QUOTES:
            out.append((f"gce-{att}-{q}", "TPMS_ATTEST", (GCE / att / f"{q}.attest").read_bytes()))
            out.append((f"gce-{att}-{q}-sig", "TPMT_SIGNATURE", (GCE / att / f"{q}.sig").read_bytes()))
    win = windows_vector()
    out.append(("windows-ak", "TPMT_PUBLIC", base64.b64decode(win["AK"]["Public"])))
    out.append(("windows-quote", "TPMS_ATTEST", base64.b64decode(win["Quote"]["Quote"])))
    out.append(("windows-sig", "TPMT_SIGNATURE", base64.b64decode(win["Quote"]["Signature"])))
    out.append(("windows-creation", "TPMS_ATTEST", base64.b64decode(win["AK"]["CreateAttestation"])))
    out.append(("windows-creation-sig", "TPMT_SIGNATURE", base64.b64decode(win["AK"]["CreateSignature"])))
    trustee = json.loads(vec("tpm-quote/trustee-tpm/tpm_evidence.json"))
    out.append(("trustee-quote", "TPMS_ATTEST", base64.b64decode(trustee["tpm_quote"]["message"])))
    out.append(("trustee-sig", "TPMT_SIGNATURE", base64.b64decode(trustee["tpm_quote"]["signature"])))
    for kind in ("azure-snp-vtpm", "azure-tdx-vtpm"):
        quote, _ = azure_quote(kind)
        out.append((f"{kind}-quote", "TPMS_ATTEST", bytes.fromhex(quote["message"])))
    return out


REAL = _real_structures()
REAL_IDS = [r[0] for r in REAL]


def _marshal(obj: object) -> bytes:
    if isinstance(obj, tuple):
        return st.marshal_pcr_selection_list(obj)
    if isinstance(obj, st.TpmtPublic):
        return obj.marshal()
    assert isinstance(obj, st.Attest | st.Signature)
    return obj.marshal()


@pytest.mark.parametrize(("parser", "data"), [(r[1], r[2]) for r in REAL], ids=REAL_IDS)
def test_real_structures_parse_and_reencode_exactly(parser: str, data: bytes) -> None:
    parsed = PARSERS[parser](data)
    encoded = st.marshal_tpm2b_public(parsed) if parser == "TPM2B_PUBLIC" else _marshal(parsed)  # type: ignore[arg-type]
    assert encoded == data


@pytest.mark.parametrize(("parser", "data"), [(r[1], r[2]) for r in REAL], ids=REAL_IDS)
def test_every_truncation_and_any_trailing_byte_is_rejected(parser: str, data: bytes) -> None:
    for cut in range(len(data)):
        with pytest.raises(EvidenceError):
            PARSERS[parser](data[:cut])
    for extra in (b"\x00", b"\xff", b"\x00\x00\x00\x00"):
        with pytest.raises(EvidenceError, match=r"trailing|size field"):
            PARSERS[parser](data + extra)


def test_gce_quote_fields_match_expected_json() -> None:
    expected = json.loads(vec("tpm-quote/expected.json"))["vectors"]
    for att in ("no-nonce", "nonce9009"):
        for q in GCE_QUOTES:
            fields = expected[f"gce-cos85/{att}/{q}"]["attest_fields"]
            parsed = st.parse_attest((GCE / att / f"{q}.attest").read_bytes())
            assert isinstance(parsed.attested, st.QuoteInfo)
            assert parsed.magic == int(fields["magic"], 16)
            assert parsed.type == int(fields["type"], 16)
            assert parsed.qualified_signer.hex() == fields["qualifiedSigner"]
            assert parsed.extra_data.hex() == fields["extraData"]
            assert parsed.clock_info.clock == fields["clock"]
            assert parsed.clock_info.reset_count == fields["resetCount"]
            assert parsed.clock_info.restart_count == fields["restartCount"]
            assert parsed.clock_info.safe == bool(fields["safe"])
            assert parsed.firmware_version == int(fields["firmwareVersion"], 16)
            assert parsed.attested.pcr_digest.hex() == fields["pcrDigest"]
            assert [(s.bank.name, list(s.pcrs)) for s in parsed.attested.pcr_select] == [
                (sel["hash"], sel["pcrs"]) for sel in fields["pcrSelect"]
            ]


def test_gce_ak_name_and_qualified_name() -> None:
    pub = st.parse_tpmt_public((GCE / "common" / "ak_pub.tpmt_public").read_bytes())
    assert pub.attribute_names() == [
        "fixedTPM", "fixedParent", "sensitiveDataOrigin", "userWithAuth", "restricted", "sign"
    ]  # fmt: skip
    quote = st.parse_attest((GCE / "nonce9009" / "quote1_sha256.attest").read_bytes())
    # A primary key's qualified Name hashes the hierarchy handle: this AK lives in the endorsement one.
    qn = st.qualified_name(st.hierarchy_name(st.RH_ENDORSEMENT), pub.name(), pub.name_alg)
    assert qn == quote.qualified_signer
    assert st.qualified_name(st.hierarchy_name(st.RH_OWNER), pub.name(), pub.name_alg) != qn


def test_windows_creation_attestation_names_the_ak() -> None:
    win = windows_vector()
    pub = st.parse_tpmt_public(base64.b64decode(win["AK"]["Public"]))
    creation = st.parse_attest(base64.b64decode(win["AK"]["CreateAttestation"]))
    assert isinstance(creation.attested, st.CreationInfo)
    assert creation.attested.object_name == pub.name()


@pytest.mark.parametrize("which", ["gce", "windows"])
def test_public_key_and_back_reproduces_the_tpm_public_area(which: str) -> None:
    raw = (
        (GCE / "common" / "ak_pub.tpmt_public").read_bytes()
        if which == "gce"
        else base64.b64decode(windows_vector()["AK"]["Public"])
    )
    pub = st.parse_tpmt_public(raw)
    rebuilt = public_from_key(
        pub.public_key(),
        object_attributes=pub.object_attributes,
        scheme=pub.parameters.scheme,
        auth_policy=pub.auth_policy,
    )
    assert rebuilt.raw == raw
    assert rebuilt.name() == pub.name()


@pytest.mark.parametrize("curve", ["secp256r1", "secp384r1"])
def test_ecc_public_round_trip(curve: str) -> None:
    key = ec_key(curve).public_key()
    pub = public_from_key(key)
    assert st.parse_tpmt_public(pub.raw) == pub
    converted = pub.public_key()
    assert isinstance(converted, ec.EllipticCurvePublicKey)
    assert converted.public_numbers() == key.public_numbers()


def _gce_public() -> bytearray:
    return bytearray((GCE / "common" / "ak_pub.tpmt_public").read_bytes())


def test_structure_specific_rejections() -> None:
    pub = _gce_public()
    bad = bytearray(pub)
    bad[4:8] = (0x50072 | 1 << 25).to_bytes(4, "big")  # a reserved objectAttributes bit
    with pytest.raises(EvidenceError, match="reserved bits"):
        st.parse_tpmt_public(bytes(bad))
    bad = bytearray(pub)
    bad[0:2] = (0x0025).to_bytes(2, "big")  # SYMCIPHER: not an asymmetric key
    with pytest.raises(EvidenceError, match="not an RSA"):
        st.parse_tpmt_public(bytes(bad))
    bad = bytearray(pub)
    bad[2:4] = (0x0099).to_bytes(2, "big")
    with pytest.raises(EvidenceError, match="not a known TPM hash"):
        st.parse_tpmt_public(bytes(bad))
    # authPolicy of the wrong size for SHA-256
    bad = pub[:8] + b"\x00\x04abcd" + pub[10:]
    with pytest.raises(EvidenceError, match="authPolicy"):
        st.parse_tpmt_public(bytes(bad))
    # TPM2B_PUBLIC whose size disagrees with the content
    with pytest.raises(EvidenceError, match="size field"):
        st.parse_tpm2b_public(st.u16(len(pub) + 1) + bytes(pub))

    point = public_from_key(ec_key().public_key())
    off_curve = st.EccPoint(point.unique.x, bytes(32)) if isinstance(point.unique, st.EccPoint) else None
    assert off_curve is not None
    body = point.raw[: len(point.raw) - len(point.unique.marshal())] + off_curve.marshal()  # type: ignore[union-attr]
    with pytest.raises(EvidenceError, match="not on the curve"):
        st.parse_tpmt_public(body).public_key()

    attest = bytearray((GCE / "nonce9009" / "quote1_sha256.attest").read_bytes())
    wrong_magic = b"\xff\x54\x43\x48" + bytes(attest[4:])
    with pytest.raises(EvidenceError) as err:
        st.parse_attest(wrong_magic)
    assert err.value.reason == "tpm-attest-not-tpm-generated"
    wrong_type = bytes(attest[:4]) + b"\x80\x14" + bytes(attest[6:])  # TPM_ST_ATTEST_NV
    with pytest.raises(EvidenceError) as err:
        st.parse_attest(wrong_type)
    assert err.value.reason == "tpm-attest-type-unsupported"

    hmac_sig = st.u16(st.ALG_HMAC) + st.u16(st.ALG_SHA256) + bytes(32)
    with pytest.raises(EvidenceError) as err:
        st.parse_signature(hmac_sig)
    assert err.value.reason == "tpm-signature-unsupported"

    with pytest.raises(EvidenceError, match="sizeofSelect"):
        st.parse_pcr_selection_list(st.u32(1) + st.u16(st.ALG_SHA256) + b"\x09" + bytes(9))
    with pytest.raises(EvidenceError, match="count"):
        st.parse_pcr_selection_list(st.u32(17))


def test_pcr_selection_bitmap_order() -> None:
    data = st.u32(2) + st.u16(st.ALG_SHA1) + b"\x03\x01\x00\x80" + st.u16(st.ALG_SHA256) + b"\x03\x00\x03\x00"
    sel = st.parse_pcr_selection_list(data)
    assert [(x.bank.name, x.pcrs) for x in sel] == [("sha1", (0, 23)), ("sha256", (8, 9))]
    assert st.marshal_pcr_selection_list(sel) == data


# --- property tests ------------------------------------------------------------------------------------

FUZZ = fuzz_settings(400)


@pytest.mark.parametrize("parser", sorted(PARSERS))
@FUZZ
@given(data=s.binary(max_size=600))
def test_random_bytes_only_raise_evidence_error(parser: str, data: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        PARSERS[parser](data)


@pytest.mark.parametrize(("parser", "data"), [(r[1], r[2]) for r in REAL[:6]], ids=REAL_IDS[:6])
@FUZZ
@given(edits=s.lists(s.tuples(s.integers(min_value=0), s.integers(0, 255)), min_size=1, max_size=4))
def test_byte_edits_of_valid_structures_only_raise_evidence_error(
    parser: str, data: bytes, edits: list[tuple[int, int]]
) -> None:
    mutated = bytearray(data)
    for pos, value in edits:
        mutated[pos % len(mutated)] = value
    try:
        parsed = PARSERS[parser](bytes(mutated))
    except EvidenceError:
        return
    # Whatever parses re-encodes to exactly the bytes it came from: no silent normalisation.
    encoded = st.marshal_tpm2b_public(parsed) if parser == "TPM2B_PUBLIC" else _marshal(parsed)  # type: ignore[arg-type]
    assert encoded == bytes(mutated)


HASHES = s.sampled_from([st.ALG_SHA1, st.ALG_SHA256, st.ALG_SHA384, st.ALG_SHA512])


@s.composite
def pcr_selections(draw: s.DrawFn) -> tuple[st.PcrSelection, ...]:
    out = []
    for alg in draw(s.lists(HASHES, max_size=4)):
        size = draw(s.integers(0, st.MAX_PCR_SELECT_SIZE))
        pcrs = draw(s.sets(s.integers(0, 8 * size - 1), max_size=8 * size)) if size else set()
        out.append(st.PcrSelection(alg, tuple(sorted(pcrs)), size))
    return tuple(out)


@s.composite
def attests(draw: s.DrawFn) -> st.Attest:
    alg = draw(HASHES)
    name = st.u16(alg) + draw(s.binary(min_size=st.HASH_ALGS[alg].size, max_size=st.HASH_ALGS[alg].size))
    return st.Attest(
        magic=st.TPM_GENERATED_VALUE,
        type=st.ST_ATTEST_QUOTE,
        qualified_signer=draw(s.sampled_from([b"", name, b"\x40\x00\x00\x01"])),
        extra_data=draw(s.binary(max_size=st.MAX_DATA_SIZE)),
        clock_info=st.ClockInfo(
            draw(s.integers(0, 2**64 - 1)), draw(s.integers(0, 2**32 - 1)), draw(s.integers(0, 2**32 - 1)),
            draw(s.booleans()),
        ),
        firmware_version=draw(s.integers(0, 2**64 - 1)),
        attested=st.QuoteInfo(draw(pcr_selections()), draw(s.binary(max_size=64))),
    )  # fmt: skip


@s.composite
def signatures(draw: s.DrawFn) -> st.Signature:
    sig_alg = draw(s.sampled_from([st.ALG_RSASSA, st.ALG_RSAPSS, st.ALG_ECDSA]))
    alg = draw(HASHES)
    if sig_alg == st.ALG_ECDSA:
        return st.Signature(sig_alg, alg, r=draw(s.binary(max_size=66)), s=draw(s.binary(max_size=66)))
    return st.Signature(sig_alg, alg, rsa=draw(s.binary(max_size=512)))


@s.composite
def publics(draw: s.DrawFn) -> bytes:
    name_alg = draw(HASHES)
    attrs = draw(s.integers(0, 2**32 - 1)) & st.ATTR_DEFINED_MASK
    policy = draw(s.sampled_from([b"", bytes(st.HASH_ALGS[name_alg].size)]))
    body = st.u16(0) + st.u16(name_alg) + st.u32(attrs) + st.tpm2b(policy)
    if draw(s.booleans()):
        bits = draw(s.sampled_from([1024, 2048, 3072, 4096]))
        modulus = b"\x80" + draw(s.binary(min_size=bits // 8 - 1, max_size=bits // 8 - 1))
        scheme = draw(
            s.sampled_from(
                [
                    st.Scheme(),
                    st.Scheme(st.ALG_RSASSA, st.ALG_SHA256),
                    st.Scheme(st.ALG_RSAPSS, st.ALG_SHA384),
                ]
            )
        )
        sym = draw(s.sampled_from([st.SymDef(), st.SymDef(st.ALG_AES, 128, st.ALG_CFB)]))
        params = st.RsaParms(sym, scheme, bits, draw(s.sampled_from([0, 3, 65537]))).marshal()
        return st.u16(st.ALG_RSA) + body[2:] + params + st.tpm2b(modulus)
    curve = draw(s.sampled_from(sorted(st.CURVES)))
    size = st.CURVES[curve][1]
    coords = s.binary(min_size=1, max_size=size)
    scheme = draw(s.sampled_from([st.Scheme(), st.Scheme(st.ALG_ECDSA, st.ALG_SHA384)]))
    params = st.EccParms(st.SymDef(), scheme, curve, st.Scheme()).marshal()
    return st.u16(st.ALG_ECC) + body[2:] + params + st.tpm2b(draw(coords)) + st.tpm2b(draw(coords))


@FUZZ
@given(sel=pcr_selections())
def test_pcr_selection_round_trip(sel: tuple[st.PcrSelection, ...]) -> None:
    data = st.marshal_pcr_selection_list(sel)
    assert st.parse_pcr_selection_list(data) == sel


@FUZZ
@given(att=attests())
def test_attest_round_trip(att: st.Attest) -> None:
    data = att.marshal()
    assert st.parse_attest(data) == att
    for cut in (len(data) - 1, len(data) // 2, 3):
        with pytest.raises(EvidenceError):
            st.parse_attest(data[:cut])


@FUZZ
@given(sig=signatures())
def test_signature_round_trip(sig: st.Signature) -> None:
    data = sig.marshal()
    assert st.parse_signature(data) == sig
    with pytest.raises(EvidenceError):
        st.parse_signature(data[:-1] if len(data) > 4 else data[:3])


@FUZZ
@given(raw=publics())
def test_public_round_trip(raw: bytes) -> None:
    pub = st.parse_tpmt_public(raw)
    assert pub.raw == raw
    assert pub.marshal() == raw
    assert st.parse_tpm2b_public(st.marshal_tpm2b_public(pub)) == pub
    with pytest.raises(EvidenceError):
        st.parse_tpmt_public(raw[:-1])
