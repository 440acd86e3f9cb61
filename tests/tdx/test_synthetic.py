"""A throw-away Intel-shaped PKI (tests/tdx/helpers.py) exercises what real vectors cannot: revoked PCK and
CA certificates, every TCB-status convergence rule, module/QE identity mismatches and look-alike roots.
The verifier is the production code path; only the trust anchor (``root=``) differs."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.tdx import verify_tdx_quote

from .helpers import (
    NOW,
    SGX,
    Pki,
    der_oid,
    make_collateral,
    make_crl,
    make_pki,
    make_quote,
    pad16,
    pem,
    qe_identity_obj,
    sgx_extension,
    tcb_info_obj,
    tcb_level,
    tlv,
)


@functools.cache
def pki() -> Pki:
    return make_pki()


def _verify(quote: bytes, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("root", pki().root)
    return dict(verify_tdx_quote(quote, **kwargs))


def _reject(quote: bytes, reason: str, **kwargs: Any) -> EvidenceError:
    with pytest.raises(EvidenceError) as exc:
        _verify(quote, **kwargs)
    assert exc.value.reason == reason, exc.value.message
    return exc.value


def test_synthetic_quote_verifies_with_its_own_root_only() -> None:
    quote = make_quote(pki())
    claims = _verify(quote, collateral=make_collateral(pki()))
    assert claims["tdx.tcb_status"] == "UpToDate"
    assert claims["report_data"] == bytes(range(64)).hex()
    assert claims["tdx.ppid"] == bytes(range(16)).hex()
    # Against the real Intel root, the look-alike "Intel SGX Root CA" is refused.
    err = _reject(quote, "untrusted-root", root=None)
    assert "does not carry the trusted Intel SGX Root CA key" in err.message


def test_chain_whose_root_differs_from_the_trusted_one_is_rejected() -> None:
    other = make_pki()
    # Leaf and intermediate from pki(), root certificate from another PKI with the same name.
    quote = make_quote(pki(), chain=pem(pki().pck, pki().ca, other.root))
    _reject(quote, "untrusted-root")


def test_intermediate_not_signed_by_trusted_root_is_rejected() -> None:
    other = make_pki()
    quote = make_quote(pki(), chain=pem(pki().pck, other.ca, pki().root))
    _reject(quote, "pck-chain-invalid")


@pytest.mark.parametrize("count", [1, 2, 4])
def test_chain_must_have_three_certificates(count: int) -> None:
    certs = [pki().pck, pki().ca, pki().root, pki().root][:count]
    _reject(make_quote(pki(), chain=pem(*certs)), "pck-chain-malformed")


def test_chain_roles_are_checked() -> None:
    wrong_leaf = make_pki(leaf_cn="Intel SGX Something Else")
    _reject(make_quote(wrong_leaf), "pck-chain-invalid", root=wrong_leaf.root)
    wrong_ca = make_pki(ca_cn="Intel SGX TCB Signing")
    _reject(make_quote(wrong_ca), "pck-chain-invalid", root=wrong_ca.root)
    processor = make_pki(ca_cn="Intel SGX PCK Processor CA")
    assert _verify(make_quote(processor), root=processor.root)["tdx.pck_ca"] == "processor"


# ---------------------------------------------------------------------------------------- revocation


def test_revoked_pck_certificate_is_rejected() -> None:
    p = pki()
    crl = make_crl(p.ca, p.ca_key, revoked=[12345, p.pck.serial_number])
    err = _reject(make_quote(p), "certificate-revoked", collateral=make_collateral(p, pck_crl=crl))
    assert "PCK certificate" in err.message
    # Other serials on the CRL do not matter.
    fine = make_crl(p.ca, p.ca_key, revoked=[12345])
    assert _verify(make_quote(p), collateral=make_collateral(p, pck_crl=fine))["tdx.tcb_status"] == "UpToDate"


def test_revoked_pck_ca_is_rejected() -> None:
    p = pki()
    crl = make_crl(p.root, p.root_key, revoked=[p.ca.serial_number])
    err = _reject(make_quote(p), "certificate-revoked", collateral=make_collateral(p, root_crl=crl))
    assert "PCK CA" in err.message


def test_revoked_tcb_signing_certificate_is_rejected() -> None:
    p = pki()
    crl = make_crl(p.root, p.root_key, revoked=[p.tcb.serial_number])
    _reject(make_quote(p), "certificate-revoked", collateral=make_collateral(p, root_crl=crl))


def test_crl_signed_by_someone_else_is_rejected() -> None:
    p = pki()
    other = make_pki()
    forged = make_crl(p.ca, other.ca_key)  # right issuer name, wrong key
    _reject(make_quote(p), "crl-invalid", collateral=make_collateral(p, pck_crl=forged))
    forged_root = make_crl(p.root, other.root_key)
    _reject(make_quote(p), "crl-invalid", collateral=make_collateral(p, root_crl=forged_root))


def test_stale_and_future_crls_are_rejected() -> None:
    p = pki()
    stale = make_crl(
        p.ca, p.ca_key, this_update=NOW - timedelta(days=40), next_update=NOW - timedelta(days=10)
    )
    _reject(make_quote(p), "collateral-expired", collateral=make_collateral(p, pck_crl=stale))
    future = make_crl(
        p.root, p.root_key, this_update=NOW + timedelta(days=1), next_update=NOW + timedelta(days=30)
    )
    _reject(make_quote(p), "collateral-not-yet-valid", collateral=make_collateral(p, root_crl=future))


def test_pck_crl_issuer_chain_must_match_the_quote() -> None:
    p = pki()
    good = make_collateral(p, pck_crl_chain=pem(p.ca, p.root))
    assert _verify(make_quote(p), collateral=good)["tdx.tcb_status"] == "UpToDate"
    other = make_pki()
    bad = make_collateral(p, pck_crl_chain=pem(other.ca, other.root))
    _reject(make_quote(p), "collateral-chain-invalid", collateral=bad)


def test_tcb_signing_chain_by_another_root_is_rejected() -> None:
    p = pki()
    other = make_pki()
    coll = make_collateral(p, tcb_chain=pem(other.tcb, other.root))
    _reject(make_quote(p), "collateral-chain-invalid", collateral=coll)


# ------------------------------------------------------------------------------------- TCB evaluation


def _status(quote: bytes, **coll: Any) -> dict[str, Any]:
    return _verify(quote, collateral=make_collateral(pki(), **coll))


def test_intel_rule_skips_module_bytes_when_major_version_is_set() -> None:
    # TEE_TCB_SVN 04 01 07: module SVN 4 < 5 required by tdxtcbcomponents[0] of the UpToDate level, but with
    # major version 1 Intel compares from index 2 and leaves bytes 0-1 to the module identity.
    claims = _status(make_quote(pki(), tee_tcb_svn=bytes.fromhex("04010700000000000000000000000000")))
    assert claims["tdx.tcb_status"] == "UpToDate"
    assert claims["tdx.tcb_date"] == "2024-03-13T00:00:00Z"
    # With major version 0, all 16 are compared: 04 00 07 is below 05 00 07, lands on the OutOfDate level.
    claims = _status(make_quote(pki(), tee_tcb_svn=bytes.fromhex("04000700000000000000000000000000")))
    assert claims["tdx.tcb_status"] == "OutOfDate"
    assert claims["tdx.advisory_ids"] == ["INTEL-SA-00960"]
    assert claims["tdx.module_tcb_status"] is None


def test_module_out_of_date_downgrades_and_adds_advisories() -> None:
    claims = _status(make_quote(pki(), tee_tcb_svn=bytes.fromhex("03010700000000000000000000000000")))
    assert claims["tdx.platform_tcb_status"] == "UpToDate"
    assert claims["tdx.module_tcb_status"] == "OutOfDate"
    assert claims["tdx.tcb_status"] == "OutOfDate"
    assert claims["tdx.advisory_ids"] == ["INTEL-SA-01"]


def test_module_svn_below_every_level_is_not_found() -> None:
    _reject(
        make_quote(pki(), tee_tcb_svn=bytes.fromhex("01010700000000000000000000000000")),
        "tcb-level-not-found",
        collateral=make_collateral(pki()),
    )


def test_unknown_module_major_version_is_a_module_mismatch() -> None:
    _reject(
        make_quote(pki(), tee_tcb_svn=bytes.fromhex("04020700000000000000000000000000")),
        "tdx-module-mismatch",
        collateral=make_collateral(pki()),
    )


def test_mrsignerseam_and_seam_attributes_are_checked() -> None:
    coll = make_collateral(pki())
    _reject(make_quote(pki(), mrsignerseam=b"\x01" * 48), "tdx-module-mismatch", collateral=coll)
    _reject(make_quote(pki(), seam_attributes=b"\x01" + bytes(7)), "tdx-module-mismatch", collateral=coll)


@pytest.mark.parametrize(
    ("platform", "module_status", "qe_status", "expected"),
    [
        ("UpToDate", "UpToDate", "UpToDate", "UpToDate"),
        ("SWHardeningNeeded", "UpToDate", "UpToDate", "SWHardeningNeeded"),
        ("ConfigurationNeeded", "UpToDate", "UpToDate", "ConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "UpToDate", "UpToDate", "ConfigurationAndSWHardeningNeeded"),
        ("OutOfDateConfigurationNeeded", "UpToDate", "UpToDate", "OutOfDateConfigurationNeeded"),
        ("SWHardeningNeeded", "OutOfDate", "UpToDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "UpToDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "UpToDate", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("UpToDate", "UpToDate", "OutOfDate", "OutOfDate"),
        ("UpToDate", "Revoked", "UpToDate", None),
        ("UpToDate", "UpToDate", "Revoked", None),
        ("Revoked", "UpToDate", "UpToDate", None),
    ],
)
def test_status_convergence(platform: str, module_status: str, qe_status: str, expected: str | None) -> None:
    levels = [
        tcb_level(
            pad16([7, 7, 2, 2, 3, 1, 0, 3]),
            11,
            pad16([5, 0, 7]),
            platform,
            "2024-03-13T00:00:00Z",
            ["INTEL-SA-P"],
        )
    ]
    module_levels = [{"tcb": {"isvsvn": 4}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": module_status}]
    qe_levels = [
        {
            "tcb": {"isvsvn": 4},
            "tcbDate": "2024-03-13T00:00:00Z",
            "tcbStatus": qe_status,
            "advisoryIDs": ["INTEL-SA-Q"],
        }
    ]
    coll = make_collateral(
        pki(),
        tcb_info=tcb_info_obj(levels=levels, module_levels=module_levels),
        qe_identity=qe_identity_obj(levels=qe_levels),
    )
    quote = make_quote(pki())
    if expected is None:
        err = _reject(quote, "tcb-revoked", collateral=coll)
        assert "Revoked" in err.message
        return
    claims = _verify(quote, collateral=coll)
    assert claims["tdx.tcb_status"] == expected
    assert claims["tdx.advisory_ids"] == ["INTEL-SA-P", "INTEL-SA-Q"]


def test_qe_identity_checks() -> None:
    coll = make_collateral(pki())
    _reject(make_quote(pki(), qe_mrsigner=b"\x42" * 32), "qe-identity-mismatch", collateral=coll)
    _reject(make_quote(pki(), qe_isv_svn=3), "tcb-level-not-found", collateral=coll)
    newer_qe = make_quote(pki(), qe_isv_svn=9)
    assert _verify(newer_qe, collateral=coll)["tdx.qe_tcb_status"] == "UpToDate"


def test_sgx_components_and_pcesvn_select_the_level() -> None:
    low_pce = make_pki(sgx_ext=sgx_extension(pce_svn=10))
    coll = make_collateral(low_pce)
    err = _reject(make_quote(low_pce), "tcb-level-not-found", root=low_pce.root, collateral=coll)
    assert "SGX TCB SVNs" in err.message
    older = make_pki(sgx_ext=sgx_extension(components=(6, 6, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)))
    claims = _verify(make_quote(older), root=older.root, collateral=make_collateral(older))
    assert claims["tdx.tcb_status"] == "OutOfDate"


def test_tdx_components_below_every_level() -> None:
    err = _reject(
        make_quote(pki(), tee_tcb_svn=bytes.fromhex("04010500000000000000000000000000")),
        "tcb-level-not-found",
        collateral=make_collateral(pki()),
    )
    assert "TEE_TCB_SVN" in err.message


def test_collateral_for_another_platform() -> None:
    _reject(
        make_quote(pki()),
        "collateral-mismatch",
        collateral=make_collateral(pki(), tcb_info=tcb_info_obj(fmspc="00906ED50000")),
    )


def test_tcb_info_and_qe_identity_freshness() -> None:
    stale = tcb_info_obj(issue=NOW - timedelta(days=40), next_update=NOW - timedelta(seconds=1))
    _reject(make_quote(pki()), "collateral-expired", collateral=make_collateral(pki(), tcb_info=stale))
    at_next_update = qe_identity_obj(next_update=NOW)
    _reject(
        make_quote(pki()), "collateral-expired", collateral=make_collateral(pki(), qe_identity=at_next_update)
    )
    future = qe_identity_obj(issue=NOW + timedelta(seconds=1))
    _reject(
        make_quote(pki()), "collateral-not-yet-valid", collateral=make_collateral(pki(), qe_identity=future)
    )


# --------------------------------------------------------------------------------- SGX extension DER


@pytest.mark.parametrize(
    "ext",
    [
        sgx_extension(components=(1,) * 15),  # 15 components
        sgx_extension(fmspc=b"\x00" * 5),
        sgx_extension(ppid=b"\x00" * 15),
        sgx_extension(sgx_type=7),
        sgx_extension(extra=[tlv(0x30, der_oid(f"{SGX}.99") + tlv(0x04, b"x"))]),
        sgx_extension(extra=[tlv(0x30, der_oid(f"{SGX}.4") + tlv(0x04, b"\x00" * 6))]),  # FMSPC twice
        tlv(0x30, b""),
        b"\x30\x80\x00\x00",  # indefinite length
        sgx_extension() + b"\x00",
    ],
)
def test_bad_sgx_extensions_are_rejected(ext: bytes) -> None:
    bad = make_pki(sgx_ext=ext)
    _reject(make_quote(bad), "pck-extensions-invalid", root=bad.root)


def test_optional_sgx_extension_fields_are_accepted() -> None:
    config = tlv(
        0x30,
        der_oid(f"{SGX}.7")
        + tlv(0x30, b"".join(tlv(0x30, der_oid(f"{SGX}.7.{i}") + tlv(0x01, b"\xff")) for i in (1, 2, 3))),
    )
    instance = tlv(0x30, der_oid(f"{SGX}.6") + tlv(0x04, b"\x11" * 16))
    good = make_pki(sgx_ext=sgx_extension(extra=[instance, config], sgx_type=0))
    claims = _verify(make_quote(good), root=good.root)
    assert claims["tdx.sgx_type"] == "standard"


def test_pck_validity_window_synthetic() -> None:
    p = make_pki(pck_not_before=NOW + timedelta(days=1))
    _reject(make_quote(p), "certificate-not-yet-valid", root=p.root)
