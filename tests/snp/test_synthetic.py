"""Paths no real vector reaches, exercised with a throw-away AMD-shaped PKI (own ARK pinned explicitly):
Turin (FMC, 8-byte hwID), TCB and chip-id mismatches under a *valid* signature, masked chip id,
MASK_CHIP_KEY, unsigned reports, VLEK, CRLs, certificate defects, the chain cache, root configuration."""

from __future__ import annotations

import hashlib
import warnings
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from keyserver.errors import ConfigurationError, EvidenceError
from keyserver.evidence.snp import (
    AMD_ARK_SHA256,
    ChainCache,
    ProductRoots,
    SnpProduct,
    SnpRoots,
    default_snp_roots,
    verify_snp_report,
)

from .helpers import (
    AMD,
    LEAF_NOT_AFTER,
    LEAF_NOT_BEFORE,
    PKI_NOW,
    build_report,
    der_int,
    fake_pki,
    tcb_bytes,
)

MILAN, GENOA, TURIN = SnpProduct.MILAN, SnpProduct.GENOA, SnpProduct.TURIN
CHIP = bytes(range(64))


def _vcek(product: SnpProduct = MILAN, **kw: Any) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    pki = fake_pki(product)
    if "hwid" not in kw and not kw.get("vlek"):
        kw["hwid"] = CHIP[:8] if product is TURIN else CHIP
    if "tcb" not in kw:
        kw["tcb"] = (3, 0, 8, 115, 1 if product is TURIN else None)
    return pki.leaf(**kw)


def _tcb(product: SnpProduct, fmc: int | None = 1) -> bytes:
    return tcb_bytes(product, 3, 0, 8, 115, fmc if product is TURIN else None)


def _verify(
    report: bytes, cert: bytes, product: SnpProduct = MILAN, now: datetime = PKI_NOW, **kw: Any
) -> dict[str, Any]:
    roots = kw.pop("roots", None) or fake_pki(product).roots()
    return verify_snp_report(
        report, vcek_or_vlek=cert, product=kw.pop("hint", None), now=now, roots=roots, **kw
    )


def _reject(report: bytes, cert: bytes, product: SnpProduct = MILAN, **kw: Any) -> EvidenceError:
    with pytest.raises(EvidenceError) as exc:
        _verify(report, cert, product, **kw)
    return exc.value


@pytest.mark.parametrize("product", [MILAN, GENOA, TURIN])
def test_synthetic_v3_report_verifies(product: SnpProduct) -> None:
    key, cert = _vcek(product)
    report = build_report(key, product=product, tcb=_tcb(product))
    claims = _verify(report, cert, product)
    assert claims["snp.product"] == product.value
    assert claims["snp.version"] == 3
    assert claims["snp.guest_svn"] == 7
    assert claims["snp.measurement"] == "aa" * 48
    assert claims["snp.host_data"] == "bb" * 32
    assert claims["snp.id_key_digest"] == "cc" * 48
    assert claims["snp.author_key_digest"] == "dd" * 48
    assert claims["snp.report_id"] == "ee" * 32
    assert claims["snp.report_id_ma"] == "ff" * 32
    assert claims["report_data"] == "42" * 64
    assert claims["debug"] is False
    assert claims["snp.family_id"] == "01" * 16
    assert claims["snp.image_id"] == "02" * 16
    assert claims["snp.current_version"] == "1.55.29"
    assert claims["snp.committed_version"] == "1.55.29"
    assert claims["snp.platform_info"] == 0x25
    assert claims["snp.platform_smt_en"] is True
    assert claims["snp.platform_tsme_en"] is False
    assert claims["snp.platform_alias_check_complete"] is True
    assert claims["snp.policy_smt"] is True
    assert claims["snp.policy_migrate_ma"] is False
    assert claims["snp.policy_abi_major"] == 0
    assert claims["snp.policy_abi_minor"] == 0
    for prefix in ("reported_tcb", "current_tcb", "committed_tcb", "launch_tcb"):
        assert claims[f"snp.{prefix}.bootloader"] == 3
        assert claims[f"snp.{prefix}.microcode"] == 115
        assert (f"snp.{prefix}.fmc" in claims) is (product is TURIN)
    if product is TURIN:
        assert claims["snp.reported_tcb.fmc"] == 1


def test_synthetic_v2_takes_product_from_issuer() -> None:
    key, cert = _vcek(MILAN)
    claims = _verify(build_report(key, version=2), cert)
    assert claims["snp.cpuid"] is None
    assert claims["snp.product"] == "Milan"


def test_v3_with_zero_cpuid_falls_back_to_certificate() -> None:
    key, cert = _vcek(MILAN)
    assert _verify(build_report(key, cpuid=(0, 0, 0)), cert)["snp.product"] == "Milan"


def test_genoa_bergamo_model() -> None:
    key, cert = _vcek(GENOA)
    assert (
        _verify(build_report(key, product=GENOA, cpuid=(0x19, 0xA0, 0x02)), cert, GENOA)["snp.cpuid"]
        == "19a002"
    )


@pytest.mark.parametrize("product", [MILAN, TURIN])
def test_hwid_octet_string_encoding(product: SnpProduct) -> None:
    key, cert = _vcek(product, hwid_wrapped=True)
    assert _verify(build_report(key, product=product, tcb=_tcb(product)), cert, product)["tee"] == "sev-snp"


# --- bindings under a valid signature ----------------------------------------------------------------


TCB_FIELDS = [(p, f) for p in (MILAN, TURIN) for f in ("bootloader", "tee", "snp", "microcode", "fmc")]


@pytest.mark.parametrize(
    ("product", "field"),
    [(p, f) for p, f in TCB_FIELDS if f != "fmc" or p is TURIN],
    ids=[f"{p.value}-{f}" for p, f in TCB_FIELDS if f != "fmc" or p is TURIN],
)
def test_tcb_mismatch(product: SnpProduct, field: str) -> None:
    values = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115, "fmc": 1}
    values[field] += 1
    tcb = tcb_bytes(
        product, values["bootloader"], values["tee"], values["snp"], values["microcode"], values["fmc"]
    )
    key, cert = _vcek(product)
    err = _reject(build_report(key, product=product, tcb=tcb), cert, product)
    assert err.reason == "tcb-mismatch"


@pytest.mark.parametrize("product", [MILAN, TURIN])
def test_chip_id_mismatch(product: SnpProduct) -> None:
    key, cert = _vcek(product)
    other_chip = bytes([0xFF]) + CHIP[1:]
    err = _reject(build_report(key, product=product, tcb=_tcb(product), chip_id=other_chip), cert, product)
    assert err.reason == "chip-id-mismatch"


def test_turin_chip_id_compares_first_eight_bytes() -> None:
    key, cert = _vcek(TURIN)
    chip = CHIP[:8] + b"\0" * 56
    assert (
        _verify(build_report(key, product=TURIN, tcb=_tcb(TURIN), chip_id=chip), cert, TURIN)["tee"]
        == "sev-snp"
    )


def test_masked_chip_id_with_vcek() -> None:
    key, cert = _vcek(MILAN)
    claims = _verify(build_report(key, chip_id=bytes(64)), cert)
    assert claims["snp.chip_id_masked"] is True
    assert claims["snp.chip_id"] == "00" * 64


def test_mask_chip_key_with_vcek_is_unsigned() -> None:
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key, signer_info=0b10), cert).reason == "report-unsigned"


def test_signing_key_none() -> None:
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key, signer_info=7 << 2), cert).reason == "report-unsigned"


@pytest.mark.parametrize("signer_info", [1 << 2, 1 << 2 | 0b10, 1 << 2 | 0b11])
def test_vlek(signer_info: int) -> None:
    key, cert = _vcek(MILAN, vlek=True)
    claims = _verify(build_report(key, signer_info=signer_info, chip_id=bytes(64)), cert)
    assert claims["snp.signing_key"] == "vlek"
    assert claims["snp.csp_id"] == "CN=test-csp.example"
    assert claims["snp.author_key_en"] is bool(signer_info & 1)


def test_vlek_report_with_chip_id_is_accepted_without_hwid() -> None:
    key, cert = _vcek(MILAN, vlek=True)
    assert _verify(build_report(key, signer_info=1 << 2), cert)["snp.chip_id"] == CHIP.hex()


def test_reserved_tcb_bytes_in_signed_report() -> None:
    key, cert = _vcek(MILAN)
    bad = bytes([3, 0, 0, 0, 1, 0, 8, 115])
    assert _reject(build_report(key, tcb=bad), cert).reason == "report-reserved-field"
    report = build_report(key, patch={0x3A: 1})  # CURRENT_TCB byte 2 (reserved on Milan)
    assert _reject(report, cert).reason == "report-reserved-field"


def test_unknown_cpuid() -> None:
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key, cpuid=(0x17, 0x31, 0)), cert).reason == "unknown-product"


def test_cpuid_disagrees_with_certificate() -> None:
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key, product=GENOA), cert).reason == "product-mismatch"


def test_caller_product_disagrees_with_cpuid() -> None:
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key), cert, hint="Genoa").reason == "product-mismatch"


# --- report signature ----------------------------------------------------------------------------


def test_signature_defects() -> None:
    key, cert = _vcek(MILAN)
    assert _reject(build_report(None), cert).reason == "signature-invalid"  # all-zero R/S
    assert _reject(build_report(key, sig_patch={0x2A0 + 48: 1}), cert).reason == "signature-invalid"
    assert _reject(build_report(key, sig_patch={0x2E8 + 71: 1}), cert).reason == "signature-invalid"
    other, _ = _vcek(MILAN)
    assert _reject(build_report(other), cert).reason == "signature-invalid"


# --- certificate defects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"omit": (AMD + ".3.1",)}, "certificate-malformed"),
        ({"omit": (AMD + ".3.8",)}, "certificate-malformed"),
        ({"omit": (AMD + ".2",)}, "certificate-malformed"),
        ({"omit": (AMD + ".4",)}, "certificate-malformed"),
        ({"hwid": CHIP[:63]}, "certificate-malformed"),
        ({"extra_ext": ((AMD + ".3.4", der_int(1)),)}, "certificate-malformed"),
        ({"tcb": (300, 0, 8, 115, None)}, "certificate-malformed"),
        ({"product_name": "Genoa-B0"}, "product-mismatch"),
        ({"not_before": PKI_NOW + timedelta(days=1)}, "certificate-not-yet-valid"),
        ({"not_after": PKI_NOW - timedelta(days=1)}, "certificate-expired"),
        ({"key": ec.generate_private_key(ec.SECP256R1())}, "certificate-malformed"),
    ],
    ids=[
        "no-blSPL",
        "no-ucodeSPL",
        "no-productName",
        "no-hwID",
        "short-hwID",
        "reserved-spl",
        "spl-out-of-range",
        "productName-other-product",
        "not-yet-valid",
        "expired",
        "p256-key",
    ],
)
def test_vcek_defects(kwargs: dict[str, Any], reason: str) -> None:
    key, cert = _vcek(MILAN, **kwargs)
    report = build_report(key if isinstance(key.curve, ec.SECP384R1) else None)
    assert _reject(report, cert).reason == reason


def test_turin_vcek_without_fmc() -> None:
    key, cert = _vcek(TURIN, omit=(AMD + ".3.9",))
    assert (
        _reject(build_report(key, product=TURIN, tcb=_tcb(TURIN)), cert, TURIN).reason
        == "certificate-malformed"
    )


def test_vcek_signed_by_wrong_key() -> None:
    pki = fake_pki(MILAN)
    key, cert = _vcek(MILAN, signer=pki.ark_key)  # names the ASK as issuer, signed by the ARK
    assert _reject(build_report(key), cert).reason == "chain-invalid"
    key, cert = _vcek(MILAN, signer=fake_pki(GENOA).ask_key)
    assert _reject(build_report(key), cert).reason == "chain-invalid"


def test_vcek_from_another_pki_with_same_names() -> None:
    """Same names as the trusted chain but issued by a different (untrusted) ASK."""
    key, cert = fake_pki(MILAN).leaf(hwid=CHIP, signer=fake_pki(TURIN).ask_key)
    assert _reject(build_report(key), cert).reason == "chain-invalid"


def test_intermediate_and_root_expiry() -> None:
    far = datetime(2050, 1, 1, tzinfo=PKI_NOW.tzinfo)
    key, cert = _vcek(MILAN, not_after=datetime(2060, 1, 1, tzinfo=PKI_NOW.tzinfo))
    err = _reject(build_report(key), cert, now=far)
    assert err.reason == "certificate-expired"
    assert "ASK" in err.message


def test_certificate_unparseable_when_cryptography_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a future cryptography refuses serial-0 certificates, we fail closed with a clear reason."""
    key, cert = _vcek(MILAN)
    report = build_report(key)
    roots = fake_pki(MILAN).roots()
    original = x509.load_der_x509_certificate

    def refuse(data: bytes) -> Any:
        if data == cert:
            raise ValueError("error parsing asn1 value: serial number must be positive")
        return original(data)

    monkeypatch.setattr("keyserver.evidence.snp.certs.x509.load_der_x509_certificate", refuse)
    err = _reject(report, cert, roots=roots)
    assert err.reason == "certificate-unparseable"
    assert "serial number 0" in err.message


# --- CRL -------------------------------------------------------------------------------------------


def test_crl_not_revoking() -> None:
    pki = fake_pki(MILAN)
    key, cert = _vcek(MILAN)
    assert _verify(build_report(key), cert, crl=pki.crl((999,)))["tee"] == "sev-snp"


def test_crl_revokes_ask() -> None:
    pki = fake_pki(MILAN)
    key, cert = _vcek(MILAN)
    err = _reject(build_report(key), cert, crl=pki.crl((pki.ask.serial_number,)))
    assert err.reason == "certificate-revoked"
    assert "ASK" in err.message


def test_crl_revokes_asvk_for_vlek() -> None:
    pki = fake_pki(MILAN)
    key, cert = _vcek(MILAN, vlek=True)
    report = build_report(key, signer_info=1 << 2)
    assert _verify(report, cert, crl=pki.crl((pki.ask.serial_number,)))["snp.signing_key"] == "vlek"
    assert _reject(report, cert, crl=pki.crl((pki.asvk.serial_number,))).reason == "certificate-revoked"


@pytest.mark.parametrize(
    ("crl_kwargs", "reason"),
    [
        ({"signer": "ask"}, "crl-invalid"),
        ({"pss": False}, "crl-invalid"),
        ({"issuer": "ask"}, "crl-invalid"),
        (
            {"next_update": PKI_NOW - timedelta(days=1), "last_update": PKI_NOW - timedelta(days=30)},
            "crl-expired",
        ),
        ({"last_update": PKI_NOW + timedelta(days=1)}, "crl-not-yet-valid"),
    ],
    ids=["signed-by-ask", "pkcs1v15", "issuer-not-ark", "expired", "not-yet-valid"],
)
def test_crl_defects(crl_kwargs: dict[str, Any], reason: str) -> None:
    pki = fake_pki(MILAN)
    if crl_kwargs.get("signer") == "ask":
        crl_kwargs["signer"] = pki.ask_key
    if crl_kwargs.get("issuer") == "ask":
        crl_kwargs["issuer"] = pki.ask.subject
        crl_kwargs["signer"] = pki.ask_key
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key), cert, crl=pki.crl(**crl_kwargs)).reason == reason


@pytest.mark.parametrize("crl", [b"", b"junk", b"\x30\x00"])
def test_crl_garbage(crl: bytes) -> None:
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key), cert, crl=crl).reason == "crl-invalid"


def test_crl_outer_algorithm_must_match_inner() -> None:
    """(cryptography already refuses such a CRL at parse time; the verifier checks it as well.)"""
    pki = fake_pki(MILAN)
    crl = bytearray(pki.crl())
    # the outer signatureAlgorithm's salt length (last INTEGER before the signature BIT STRING) 48 -> 49
    idx = crl.rindex(b"\xa2\x03\x02\x01\x30")
    crl[idx + 4] = 0x31
    key, cert = _vcek(MILAN)
    assert _reject(build_report(key), cert, crl=bytes(crl)).reason == "crl-invalid"


# --- chain cache -------------------------------------------------------------------------------------


def test_cache_hit_still_checks_everything_time_dependent() -> None:
    cache = ChainCache()
    key, cert = _vcek(MILAN)
    report = build_report(key)
    _verify(report, cert, chain_cache=cache)
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    _verify(report, cert, chain_cache=cache)
    assert cache.hits == 1
    assert _reject(report, cert, now=LEAF_NOT_AFTER + timedelta(seconds=1), chain_cache=cache).reason == (
        "certificate-expired"
    )
    assert _reject(report, cert, now=LEAF_NOT_BEFORE - timedelta(seconds=1), chain_cache=cache).reason == (
        "certificate-not-yet-valid"
    )
    pki = fake_pki(MILAN)
    assert _reject(report, cert, chain_cache=cache, crl=pki.crl((pki.ask.serial_number,))).reason == (
        "certificate-revoked"
    )
    other, _ = _vcek(MILAN)
    assert _reject(build_report(other), cert, chain_cache=cache).reason == "signature-invalid"
    assert (
        _reject(build_report(key, chip_id=CHIP[::-1]), cert, chain_cache=cache).reason == "chip-id-mismatch"
    )


def test_cache_entry_bound_to_the_roots() -> None:
    """A chain verified under one ASK is not reused when the configured ASK differs."""
    cache = ChainCache()
    key, cert = _vcek(MILAN)
    report = build_report(key)
    _verify(report, cert, chain_cache=cache)
    pki = fake_pki(MILAN)
    # roots whose "ASK" is the ASVK: same ARK, different intermediate -> re-verification -> rejected
    swapped = pki.roots(ask_der=pki.asvk_der)
    assert _reject(report, cert, roots=swapped, chain_cache=cache).reason == "chain-invalid"
    # and AMD's real roots do not know this PKI at all
    err = _reject(report, cert, roots=default_snp_roots(), chain_cache=cache)
    assert err.reason == "chain-invalid"


def test_cache_kind_separation_and_failures_not_cached() -> None:
    cache = ChainCache()
    key, cert = _vcek(MILAN)
    _verify(build_report(key), cert, chain_cache=cache)
    # the same certificate presented for a VLEK-signed report is not taken from the VCEK entry
    assert (
        _reject(build_report(key, signer_info=1 << 2), cert, chain_cache=cache).reason
        == "signing-key-mismatch"
    )
    bad_key, bad_cert = _vcek(MILAN, signer=fake_pki(MILAN).ark_key)
    with pytest.raises(EvidenceError):
        _verify(build_report(bad_key), bad_cert, chain_cache=cache)
    assert len(cache) == 1


def test_cache_is_bounded() -> None:
    cache = ChainCache(max_entries=2)
    for _ in range(3):
        key, cert = _vcek(MILAN)
        _verify(build_report(key), cert, chain_cache=cache)
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="at least 1"):
        ChainCache(max_entries=0)


# --- roots configuration -------------------------------------------------------------------------


def test_default_roots_are_amd_and_pinned() -> None:
    roots = default_snp_roots()
    for product in SnpProduct:
        pr = roots.get(product)
        assert pr is not None
        assert pr.ask is not None
        assert pr.asvk is not None
        assert pr.ark.sha256 == AMD_ARK_SHA256[product]
        assert hashlib.sha256(pr.ark.der).hexdigest() == AMD_ARK_SHA256[product]
        assert pr.ask.cert.subject.rfc4514_string().startswith(f"CN=SEV-{product.value},")
        assert pr.asvk.cert.subject.rfc4514_string().startswith(f"CN=SEV-VLEK-{product.value},")
        assert pr.ark.cert.subject.rfc4514_string().startswith(f"CN=ARK-{product.value},")


def test_unpinned_ark_refused() -> None:
    pki = fake_pki(MILAN)
    with pytest.raises(ConfigurationError, match="not a pinned AMD root"):
        ProductRoots.build(MILAN, ark_der=pki.ark_der, ask_der=pki.ask_der)
    with pytest.raises(ConfigurationError, match="not a pinned"):
        ProductRoots.build(MILAN, ark_der=pki.ark_der, ark_sha256_pins=["00" * 32])


def test_intermediate_not_from_ark_refused() -> None:
    pki, other = fake_pki(MILAN), fake_pki(GENOA)
    pin = [hashlib.sha256(pki.ark_der).hexdigest()]
    with pytest.raises(ConfigurationError, match="not issued and signed"):
        ProductRoots.build(MILAN, ark_der=pki.ark_der, ask_der=other.ask_der, ark_sha256_pins=pin)


def test_non_self_signed_ark_refused() -> None:
    pki = fake_pki(MILAN)
    ask_pin = [hashlib.sha256(pki.ask_der).hexdigest()]
    with pytest.raises(ConfigurationError, match="not self-signed"):
        ProductRoots.build(MILAN, ark_der=pki.ask_der, ark_sha256_pins=ask_pin)


def test_duplicate_products_refused() -> None:
    pr = default_snp_roots().get(MILAN)
    assert pr is not None
    with pytest.raises(ConfigurationError, match="more than once"):
        SnpRoots(products=(pr, pr))


def test_no_warnings_escape() -> None:
    key, cert = _vcek(MILAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _verify(build_report(key), cert)
