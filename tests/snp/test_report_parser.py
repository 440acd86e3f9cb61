"""The ATTESTATION_REPORT parser and the input helpers: every field, sizes, versions, reserved fields,
TCB layouts, CPUID -> product, raw/hex input detection, `now` handling."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.snp import (
    REPORT_SIZE,
    Cpuid,
    SigningKey,
    SnpProduct,
    decode_report_input,
    decode_tcb,
    parse_now,
    parse_report,
    product_from_cpuid,
    verify_snp_files,
    verify_snp_report,
)

from .helpers import expected_vectors, utc, vec

GSG = "snp/gsg-milan/attestation.bin"


@pytest.mark.parametrize("name", list(expected_vectors()))
def test_every_field_matches_expected_json(name: str) -> None:
    e = expected_vectors()[name]
    raw = vec(e["report"])
    r = parse_report(raw)
    product = SnpProduct(e["product"])
    assert r.raw == raw
    assert len(r.signed_bytes) == 0x2A0
    assert r.version == e["version"]
    assert r.guest_svn == e["guest_svn"]
    assert r.policy == int(e["policy"], 16)
    assert r.vmpl == e["vmpl"]
    assert r.signature_algo == 1
    assert r.platform_info == int(e["plat_info"], 16)
    assert r.signer_info.raw == int(e["signer_info"], 16)
    assert r.signer_info.signing_key is (SigningKey.VLEK if e["signer"] == "VLEK" else SigningKey.VCEK)
    assert r.family_id.hex() == e["family_id"]
    assert r.image_id.hex() == e["image_id"]
    assert r.report_data.hex() == e["report_data"]
    assert r.measurement.hex() == e["measurement"]
    assert r.host_data.hex() == e["host_data"]
    assert r.id_key_digest.hex() == e["id_key_digest"]
    assert r.author_key_digest.hex() == e["author_key_digest"]
    assert r.report_id.hex() == e["report_id"]
    assert r.report_id_ma == b"\xff" * 32  # no migration agent
    assert r.chip_id.hex() == e["chip_id"]
    if r.version == 2:
        assert r.cpuid is None
        assert e["cpuid_fam_mod_step"] == "000000"
    else:
        assert r.cpuid is not None
        assert r.cpuid.hex() == e["cpuid_fam_mod_step"]
    for field in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        tcb = decode_tcb(getattr(r, field), product, field)
        assert {
            "bootloader": tcb.bootloader,
            "tee": tcb.tee,
            "snp": tcb.snp,
            "microcode": tcb.microcode,
        } == e[field], field
        assert tcb.fmc is None
    assert len(r.signature_r) == 72
    assert len(r.signature_s) == 72


def test_firmware_versions_and_flags() -> None:
    r = parse_report(vec(GSG))
    assert (r.current_major, r.current_minor, r.current_build) == (1, 0x31, 3)
    assert (r.committed_major, r.committed_minor, r.committed_build) == (1, 0x31, 3)
    assert r.debug is True
    assert r.policy_bit(16) is True
    assert r.policy_bit(18) is False
    assert r.signer_info.author_key_en is False
    assert r.signer_info.mask_chip_key is False
    assert r.chip_id_masked is False
    vlek = parse_report(vec("snp/trustee-milan-vlek-aws/test-vlek-report.bin"))
    assert vlek.chip_id_masked is True
    assert vlek.cpuid == Cpuid(0x19, 0x01, 0x01)


@pytest.mark.parametrize("size", [0, 1, 0x2A0, REPORT_SIZE - 1, REPORT_SIZE + 1, 2 * REPORT_SIZE, 4096])
def test_wrong_sizes(size: int) -> None:
    data = (vec(GSG) * 4)[:size]
    with pytest.raises(EvidenceError) as exc:
        parse_report(data)
    assert exc.value.reason == "report-malformed"


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, offset, value)
    return bytes(out)


def _set_u64(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<Q", out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("version", [0, 1, 4, 5, 0xFFFFFFFF])
def test_unsupported_versions(version: int) -> None:
    with pytest.raises(EvidenceError) as exc:
        parse_report(_set_u32(vec(GSG), 0, version))
    assert exc.value.reason == "report-unsupported-version"


@pytest.mark.parametrize("algo", [0, 2, 0x100])
def test_unsupported_signature_algorithm(algo: int) -> None:
    with pytest.raises(EvidenceError) as exc:
        parse_report(_set_u32(vec(GSG), 0x34, algo))
    assert exc.value.reason == "report-unsupported-signature-algorithm"


# (report, offset) of a byte in every reserved range; v2 gsg and v3 genoa
RESERVED = [
    (GSG, 0x04C),
    (GSG, 0x04F),
    (GSG, 0x188),  # v2: CPUID bytes are reserved
    (GSG, 0x18A),
    (GSG, 0x19F),
    (GSG, 0x1EB),
    (GSG, 0x1EF),
    (GSG, 0x1F8),
    (GSG, 0x29F),
    (GSG, 0x330),  # reserved tail of the signature structure
    (GSG, 0x49F),
    ("snp/trustee-e2e-genoa-from-json/report-reconstructed-from-evidence-json.bin", 0x18B),
    ("snp/trustee-e2e-genoa-from-json/report-reconstructed-from-evidence-json.bin", 0x19F),
]


@pytest.mark.parametrize(
    ("report", "offset"), RESERVED, ids=[f"{r.split('/')[1]}@{o:#x}" for r, o in RESERVED]
)
def test_reserved_bytes_must_be_zero(report: str, offset: int) -> None:
    data = bytearray(vec(report))
    assert data[offset] == 0
    data[offset] = 1
    with pytest.raises(EvidenceError) as exc:
        parse_report(bytes(data))
    assert exc.value.reason == "report-reserved-field"


@pytest.mark.parametrize("signer_info", [1 << 5, 1 << 31, 2 << 2, 3 << 2, 6 << 2])
def test_signer_info_reserved(signer_info: int) -> None:
    with pytest.raises(EvidenceError) as exc:
        parse_report(_set_u32(vec(GSG), 0x48, signer_info))
    assert exc.value.reason == "report-reserved-field"


def test_signer_info_fields() -> None:
    r = parse_report(_set_u32(vec(GSG), 0x48, 0b111 << 2 | 0b11))
    assert r.signer_info.signing_key is SigningKey.NONE
    assert r.signer_info.author_key_en
    assert r.signer_info.mask_chip_key


@pytest.mark.parametrize("policy", [0x0B0000 & ~(1 << 17), 0x30000 | (1 << 26), 0x30000 | (1 << 63)])
def test_policy_reserved_bits(policy: int) -> None:
    with pytest.raises(EvidenceError) as exc:
        parse_report(_set_u64(vec(GSG), 0x08, policy))
    assert exc.value.reason == "report-reserved-field"


def test_policy_defined_bits_accepted() -> None:
    policy = 0x30000 | sum(1 << b for b in range(18, 26))
    assert parse_report(_set_u64(vec(GSG), 0x08, policy)).policy == policy


def test_decode_tcb_layouts() -> None:
    raw = bytes([1, 2, 0, 0, 0, 0, 3, 4])
    milan = decode_tcb(raw, SnpProduct.MILAN, "t")
    assert (milan.bootloader, milan.tee, milan.snp, milan.microcode, milan.fmc) == (1, 2, 3, 4, None)
    turin = decode_tcb(bytes([9, 1, 2, 3, 0, 0, 0, 4]), SnpProduct.TURIN, "t")
    assert (turin.fmc, turin.bootloader, turin.tee, turin.snp, turin.microcode) == (9, 1, 2, 3, 4)
    with pytest.raises(EvidenceError) as exc:
        decode_tcb(bytes([1, 2, 5, 0, 0, 0, 3, 4]), SnpProduct.GENOA, "t")
    assert exc.value.reason == "report-reserved-field"
    with pytest.raises(EvidenceError) as exc:
        decode_tcb(bytes([9, 1, 2, 3, 0, 7, 0, 4]), SnpProduct.TURIN, "t")
    assert exc.value.reason == "report-reserved-field"
    # a Milan TCB read with the Turin layout has non-zero "reserved" bytes only by accident; here snp=3
    with pytest.raises(EvidenceError):
        decode_tcb(bytes([1, 2, 0, 0, 0, 0, 3, 4]), SnpProduct.TURIN, "t")


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x00, SnpProduct.MILAN),
        (0x19, 0x01, SnpProduct.MILAN),
        (0x19, 0x0F, SnpProduct.MILAN),
        (0x19, 0x10, SnpProduct.GENOA),
        (0x19, 0x11, SnpProduct.GENOA),
        (0x19, 0x1F, SnpProduct.GENOA),
        (0x19, 0xA0, SnpProduct.GENOA),
        (0x19, 0xAF, SnpProduct.GENOA),
        (0x1A, 0x02, SnpProduct.TURIN),
        (0x1A, 0x11, SnpProduct.TURIN),
        (0x19, 0x20, None),
        (0x19, 0x61, None),
        (0x1A, 0x12, None),
        (0x1A, 0x50, None),
        (0x17, 0x31, None),
        (0x00, 0x00, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: SnpProduct | None) -> None:
    if product is None:
        with pytest.raises(EvidenceError) as exc:
            product_from_cpuid(Cpuid(family, model, 0))
        assert exc.value.reason == "unknown-product"
    else:
        assert product_from_cpuid(Cpuid(family, model, 1)) is product


def test_product_names() -> None:
    assert SnpProduct.parse(" milan ") is SnpProduct.MILAN
    with pytest.raises(ValueError, match="unknown SEV-SNP product"):
        SnpProduct.parse("Rome")


# --- input helpers ---------------------------------------------------------------------------------


def test_decode_report_input_accepts_raw_and_hex() -> None:
    raw = vec(GSG)
    assert decode_report_input(raw) == raw
    assert decode_report_input(raw.hex().encode()) == raw
    assert decode_report_input(raw.hex().upper().encode()) == raw
    assert decode_report_input(raw.hex().encode() + b"\n") == raw
    wrapped = "\n".join(raw.hex()[i : i + 60] for i in range(0, 2 * REPORT_SIZE, 60)).encode()
    assert decode_report_input(wrapped) == raw
    spaced = " ".join(raw.hex()[i : i + 2] for i in range(0, 2 * REPORT_SIZE, 2)).encode()
    assert decode_report_input(b"\r\n\t" + spaced) == raw


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: b"",
        lambda raw: raw + b"\n",  # binary with a trailing newline
        lambda raw: raw[:-1],
        lambda raw: b"0x" + raw.hex().encode(),
        lambda raw: raw.hex().encode()[:-1],
        lambda raw: raw.hex().encode()[:-2],
        lambda raw: raw.hex().encode() + b"00",
        lambda raw: __import__("base64").b64encode(raw),
        lambda raw: raw.hex().encode().replace(b"a", b"g", 1),
        lambda raw: b"\n" * 5000,
        lambda raw: b"0" * 100_000,
    ],
    ids=[
        "empty",
        "binary+newline",
        "binary-truncated",
        "0x-prefix",
        "odd-hex",
        "hex-truncated",
        "hex-oversized",
        "base64",
        "non-hex",
        "only-whitespace",
        "huge",
    ],
)
def test_decode_report_input_rejects(mangle: object) -> None:
    assert callable(mangle)
    with pytest.raises(EvidenceError) as exc:
        decode_report_input(mangle(vec(GSG)))
    assert exc.value.reason == "report-malformed"


def test_verify_snp_files_rejects_oversized_file(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (128 * 1024))
    with pytest.raises(EvidenceError) as exc:
        verify_snp_files(big, None, utc("2025-01-01T00:00:00Z"))
    assert exc.value.reason == "report-malformed"
    with pytest.raises(OSError, match="No such file"):
        verify_snp_files(tmp_path / "missing.bin", None, utc("2025-01-01T00:00:00Z"))


def test_parse_now() -> None:
    assert parse_now("2025-06-01T00:00:00Z") == datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_now("2025-06-01T02:00:00+02:00") == datetime(2025, 6, 1, tzinfo=UTC)
    assert abs(parse_now(None) - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ValueError, match="no timezone"):
        parse_now("2025-06-01T00:00:00")
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_now("yesterday")


def test_naive_now_and_bad_product_are_caller_errors() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_snp_report(vec(GSG), vcek_or_vlek=None, product=None, now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="unknown SEV-SNP product"):
        verify_snp_report(
            vec(GSG), vcek_or_vlek=vec("snp/gsg-milan/vcek.testcer"), product="Naples", now=datetime.now(UTC)
        )
