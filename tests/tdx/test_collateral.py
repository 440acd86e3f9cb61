"""Real Intel collateral: formats, exact-bytes signatures, freshness, and Intel's TCB-level rule on the
MANIFEST §3 quote/collateral pairs."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from keyserver.errors import EvidenceError
from keyserver.evidence.tdx import (
    evaluate_tcb,
    intel_sgx_root_ca,
    load_collateral,
    parse_quote,
    verify_pck_chain,
    verify_tdx_files,
    verify_tdx_quote,
)
from keyserver.evidence.tdx.collateral import (
    MAX_ADVISORY_IDS,
    MAX_COLLATERAL_JSON,
    MAX_FREE_STRING,
    MAX_MODULE_IDENTITIES,
    MAX_TCB_LEVELS,
    _verify_tcb_signing_chain,
    parse_crl,
    parse_dcap_qvl_collateral,
    parse_pcs_qe_identity,
    parse_pcs_tcb_info,
    raw_members,
    verify_p256_signature,
)
from keyserver.evidence.tdx.tcb import match_tcb_level

from .helpers import (
    AZURE,
    DCAP_QVL,
    DCAP_QVL_NOW,
    DCAP_QVL_OUTDATED,
    GCP,
    GO_TDX_GUEST_COLLATERAL,
    GO_TDX_GUEST_NOW,
    SPR,
    TCB_CHAIN_2018,
    TCB_CHAIN_2025,
    TRUSTEE_4,
    TRUSTEE_6,
    VECTORS,
    ZKDCAP_COLLATERAL,
    ZKDCAP_NOW,
    collateral_dir,
    utc,
    vec,
)

DCAP_QVL_COLLATERAL = VECTORS / "tdx/dcap-qvl/tdx_quote_collateral.json"


def _reason(exc: pytest.ExceptionInfo[EvidenceError]) -> str:
    return exc.value.reason


# ------------------------------------------------------------------------------------------ verdicts


def test_spr_e4_with_go_tdx_guest_collateral_has_no_matching_tcb_level(tmp_path: Path) -> None:
    # go-tdx-guest TestNegativeRawQuoteVerifyWithCollateral: "no matching TCB level found".
    coll = load_collateral(collateral_dir(tmp_path, GO_TDX_GUEST_COLLATERAL))
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(SPR), now=utc(GO_TDX_GUEST_NOW), collateral=coll)
    assert _reason(exc) == "tcb-level-not-found"
    assert "50806f000000" in exc.value.message


def test_spr_e4_collateral_itself_verifies_at_its_date(tmp_path: Path) -> None:
    # TestObtainAndVerifyCollateral: signatures, validity and CRLs are fine at 2023-07-01; only the TCB walk
    # fails. The same collateral appraises trustee's quote 4 (same FMSPC) as UpToDate.
    coll = load_collateral(collateral_dir(tmp_path, GO_TDX_GUEST_COLLATERAL))
    claims = verify_tdx_quote(vec(TRUSTEE_4), now=utc(GO_TDX_GUEST_NOW), collateral=coll)
    assert claims["tdx.tcb_status"] == "UpToDate"
    assert claims["tdx.advisory_ids"] == []
    assert claims["tdx.qe_tcb_status"] == "UpToDate"
    assert claims["tdx.module_tcb_status"] is None  # TEE_TCB_SVN[1] == 0: no module identity applies
    assert claims["debug"] is True  # authentic, up to date, and a debug TD: the policy must deny
    assert claims["tdx.tcb_evaluation_data_number"] == 15


def test_dcap_qvl_quote_is_up_to_date_then_stale_one_second_later() -> None:
    coll = load_collateral(DCAP_QVL_COLLATERAL)
    claims = verify_tdx_quote(vec(DCAP_QVL), now=utc(DCAP_QVL_NOW), collateral=coll)
    assert claims["tdx.tcb_status"] == "UpToDate"
    assert claims["tdx.advisory_ids"] == []
    assert claims["tdx.tcb_date"] == "2024-03-13T00:00:00Z"
    assert claims["tdx.module_tcb_status"] == "UpToDate"
    assert coll.next_update == utc("2025-07-19T10:00:35Z")
    for later in (utc(DCAP_QVL_NOW) + timedelta(seconds=1), utc("2025-08-01T00:00:00Z")):
        with pytest.raises(EvidenceError) as exc:
            verify_tdx_quote(vec(DCAP_QVL), now=later, collateral=coll)
        assert _reason(exc) == "collateral-expired"


def test_dcap_qvl_collateral_before_its_issue_date_is_not_yet_valid() -> None:
    coll = load_collateral(DCAP_QVL_COLLATERAL)
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(DCAP_QVL), now=utc("2025-06-19T10:32:26Z"), collateral=coll)
    assert _reason(exc) == "collateral-not-yet-valid"
    verify_tdx_quote(vec(DCAP_QVL), now=utc("2025-06-19T10:32:27Z"), collateral=coll)


def test_gcp_quote_is_up_to_date_by_intels_rule(tmp_path: Path) -> None:
    """TEE_TCB_SVN = 04 01 07: module major 1, so bytes 0-1 are judged by the TDX_01 module identity and the
    platform levels are compared from index 2. Comparing all 16 (dcap-qvl) would skip the 2024-03-13 level
    (its tdxtcbcomponents[0] = 5 > 4) and report OutOfDate."""
    coll = load_collateral(collateral_dir(tmp_path, ZKDCAP_COLLATERAL))
    claims = verify_tdx_quote(vec(GCP), now=utc(ZKDCAP_NOW), collateral=coll)
    assert claims["tdx.tcb_status"] == "UpToDate"
    assert claims["tdx.tcb_date"] == "2024-03-13T00:00:00Z"
    assert claims["tdx.advisory_ids"] == []
    assert claims["tdx.module_tcb_status"] == "UpToDate"
    assert claims["tdx.qe_tcb_status"] == "UpToDate"
    # The rule that would have been wrong:
    tcb_info = coll.tcb_info.tcb_info
    tee = bytes.fromhex(str(claims["tdx.tee_tcb_svn"]))
    compare_all = [
        lvl
        for lvl in tcb_info.tcb_levels
        if all(tee[i] >= lvl.tdx_components[i] for i in range(16))
        and all(
            a >= b
            for a, b in zip((7, 7, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0), lvl.sgx_components, strict=True)
        )
    ]
    assert compare_all[0].tcb_status == "OutOfDate"


def test_azure_td_quote_is_out_of_date_with_advisories(tmp_path: Path) -> None:
    coll = load_collateral(collateral_dir(tmp_path, ZKDCAP_COLLATERAL))
    claims = verify_tdx_quote(vec(AZURE), now=utc(ZKDCAP_NOW), collateral=coll)
    assert claims["tdx.tcb_status"] == "OutOfDate"
    assert claims["tdx.advisory_ids"] == ["INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"]
    assert claims["tdx.platform_tcb_status"] == "OutOfDate"
    assert claims["tdx.tcb_date"] == "2023-08-09T00:00:00Z"
    assert claims["tdx.module_tcb_status"] == "OutOfDate"  # TDX_01, module SVN 2
    assert claims["tdx.qe_tcb_status"] == "UpToDate"


def test_trustee_quote_6_with_trustee_tcb_info_is_out_of_date() -> None:
    """No CRLs exist for this window, so full verification is impossible (verify_tdx_quote requires both
    CRLs); the TCB appraisal itself is checked directly, after checking the JSON signatures."""
    now = utc("2025-11-01T00:00:00Z")
    tcb = parse_pcs_tcb_info(vec("tdx/trustee/tcbInfo.json"))
    qe = parse_pcs_qe_identity(vec("tdx/trustee/enclaveIdentity.json"))
    for signed in (tcb, qe):
        signing_chain = tuple(x509.load_pem_x509_certificates(TCB_CHAIN_2025.read_bytes()))
        key = _verify_tcb_signing_chain(signing_chain, "chain", root=intel_sgx_root_ca(), now=now)
        assert verify_p256_signature(key, signed.signature, signed.raw)
    quote = parse_quote(vec(TRUSTEE_6))
    chain = verify_pck_chain(quote.pck_chain_pem, root=intel_sgx_root_ca(), now=now)
    result = evaluate_tcb(
        tcb.tcb_info, qe.qe_identity, body=quote.body, qe_report=quote.qe_report, pck=chain.extensions
    )
    assert result.status == "OutOfDate"  # PCESVN 11 < 13 of the UpToDate level
    assert result.platform_level.tcb_date == utc("2018-01-04T00:00:00Z")
    assert result.module_identity_id == "TDX_03"
    assert result.module_level is not None
    assert result.module_level.tcb_status == "UpToDate"
    assert result.qe_level.tcb_status == "UpToDate"


def test_dcap_qvl_outdated_fixture_no_level_by_sgx_components() -> None:
    """The v5 outdated fixture is refused for its version; its collateral would not match either (PCK SGX
    component 8 = 3 below every level's 5)."""
    coll = load_collateral(VECTORS / "tdx/dcap-qvl/tdx_quote_outdated_collateral.json")
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(DCAP_QVL_OUTDATED), now=utc("2026-03-20T10:41:14Z"), collateral=coll)
    assert _reason(exc) == "unsupported-version"


# ----------------------------------------------------------------------------- signatures over raw bytes


@pytest.mark.parametrize(
    ("rel", "chain", "date_key"),
    [
        ("tdx/go-tdx-guest/sample_tcbInfo_response", TCB_CHAIN_2018, "tcbInfo"),
        ("tdx/go-tdx-guest/sample_qeIdentity_response", TCB_CHAIN_2018, "enclaveIdentity"),
        ("tdx/go-tdx-guest/sample_tcbinfo_response_v5", TCB_CHAIN_2025, "tcbInfo"),
        ("tdx/zkdcap/tcbinfov3_00806f050000.json", TCB_CHAIN_2018, "tcbInfo"),
        ("tdx/zkdcap/qeidentityv2_tdx.json", TCB_CHAIN_2018, "enclaveIdentity"),
        ("tdx/trustee/tcbInfo.json", TCB_CHAIN_2025, "tcbInfo"),
        ("tdx/trustee/enclaveIdentity.json", TCB_CHAIN_2025, "enclaveIdentity"),
    ],
)
def test_every_pcs_json_vector_signature_verifies_over_the_served_bytes(
    rel: str, chain: Path, date_key: str
) -> None:
    body = vec(rel)
    signed = parse_pcs_tcb_info(body) if date_key == "tcbInfo" else parse_pcs_qe_identity(body)
    issued = utc(json.loads(body)[date_key]["issueDate"])
    key = _verify_tcb_signing_chain(
        tuple(x509.load_pem_x509_certificates(chain.read_bytes())),
        "chain",
        root=intel_sgx_root_ca(),
        now=issued,
    )
    assert verify_p256_signature(key, signed.signature, signed.raw)
    # The raw bytes are a substring of the body, not a re-serialisation.
    assert signed.raw in body
    reserialised = json.dumps(json.loads(signed.raw)).encode()
    assert not verify_p256_signature(key, signed.signature, reserialised)


def test_raw_members_keeps_exact_text() -> None:
    text = '{ "a" : {"x": 1.0,  "y":[1, 2]} , "b":"s" }'
    members = raw_members(text, "t")
    assert members["a"][1] == '{"x": 1.0,  "y":[1, 2]}'
    assert members["b"] == ("s", '"s"')
    for bad in ('{"a":1,"a":2}', '{"a":1} x', '{"a" 1}', "[1]", '{"a":NaN}'):
        with pytest.raises(EvidenceError) as exc:
            raw_members(bad, "t")
        assert _reason(exc) == "collateral-malformed"


def _pcs_dir(tmp_path: Path, files: tuple[str, ...], edit: dict[str, bytes] | None = None) -> Path:
    directory = collateral_dir(tmp_path, files)
    for name, data in (edit or {}).items():
        (directory / name).write_bytes(data)
    return directory


def test_tampered_tcb_info_is_rejected(tmp_path: Path) -> None:
    body = vec("tdx/zkdcap/tcbinfov3_00806f050000.json")
    # Same meaning, different bytes (a space inside the signed value): the signature no longer covers it.
    spaced = body.replace(b'"tcbType":0', b'"tcbType": 0', 1)
    # A real edit: downgrade what UpToDate requires.
    edited = body.replace(b'{"svn":7,"category":"BIOS"', b'{"svn":1,"category":"BIOS"', 1)
    for i, variant in enumerate((spaced, edited)):
        assert variant != body
        directory = _pcs_dir(
            tmp_path / f"variant{i}", ZKDCAP_COLLATERAL, {"tcbinfov3_00806f050000.json": variant}
        )
        coll = load_collateral(directory)
        with pytest.raises(EvidenceError) as exc:
            verify_tdx_quote(vec(GCP), now=utc(ZKDCAP_NOW), collateral=coll)
        assert _reason(exc) == "collateral-signature-invalid"


def test_tampered_signatures_are_rejected(tmp_path: Path) -> None:
    for name in ("tcbinfov3_00806f050000.json", "qeidentityv2_tdx.json"):
        body = json.loads(vec(f"tdx/zkdcap/{name}"))
        sig = body["signature"]
        text = vec(f"tdx/zkdcap/{name}").replace(
            sig.encode(), (("1" if sig[0] != "1" else "2") + sig[1:]).encode()
        )
        coll = load_collateral(_pcs_dir(tmp_path / name, ZKDCAP_COLLATERAL, {name: text}))
        with pytest.raises(EvidenceError) as exc:
            verify_tdx_quote(vec(GCP), now=utc(ZKDCAP_NOW), collateral=coll)
        assert _reason(exc) == "collateral-signature-invalid"


def test_dcap_qvl_tampered_signature_and_value() -> None:
    doc = json.loads(DCAP_QVL_COLLATERAL.read_bytes())
    now = utc(DCAP_QVL_NOW)
    bad_sig = dict(doc, qe_identity_signature="00" * 64)
    bad_value = dict(doc, tcb_info=doc["tcb_info"].replace('"tcbType":0', '"tcbType": 0'))
    for variant in (bad_sig, bad_value):
        coll = parse_dcap_qvl_collateral(json.dumps(variant).encode())
        with pytest.raises(EvidenceError) as exc:
            verify_tdx_quote(vec(DCAP_QVL), now=now, collateral=coll)
        assert _reason(exc) == "collateral-signature-invalid"


def test_expired_tcb_signing_certificate_is_rejected() -> None:
    """dcap-qvl's 2025 collateral with the TCB signing certificate that expired on 2025-05-21 (same key)."""
    doc = json.loads(DCAP_QVL_COLLATERAL.read_bytes())
    old_chain = TCB_CHAIN_2018.read_text()
    coll = parse_dcap_qvl_collateral(json.dumps(dict(doc, tcb_info_issuer_chain=old_chain)).encode())
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(DCAP_QVL), now=utc(DCAP_QVL_NOW), collateral=coll)
    assert _reason(exc) == "certificate-expired"
    assert "TCB signing" in exc.value.message


def test_wrong_issuer_chain_is_rejected() -> None:
    doc = json.loads(DCAP_QVL_COLLATERAL.read_bytes())
    coll = parse_dcap_qvl_collateral(
        json.dumps(dict(doc, tcb_info_issuer_chain=doc["pck_crl_issuer_chain"])).encode()
    )
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(DCAP_QVL), now=utc(DCAP_QVL_NOW), collateral=coll)
    assert _reason(exc) == "collateral-chain-invalid"


def test_crls_are_checked(tmp_path: Path) -> None:
    doc = json.loads(DCAP_QVL_COLLATERAL.read_bytes())
    now = utc(DCAP_QVL_NOW)
    # Root CRL in the PCK CRL slot and vice versa: wrong issuer.
    swapped = dict(doc, pck_crl=doc["root_ca_crl"], root_ca_crl=doc["pck_crl"])
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(
            vec(DCAP_QVL), now=now, collateral=parse_dcap_qvl_collateral(json.dumps(swapped).encode())
        )
    assert _reason(exc) == "crl-invalid"
    # A corrupted signature on the PCK CRL (last byte of the DER signature).
    der = bytearray(bytes.fromhex(doc["pck_crl"]))
    der[-1] ^= 0x01
    broken = dict(doc, pck_crl=der.hex())
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(
            vec(DCAP_QVL), now=now, collateral=parse_dcap_qvl_collateral(json.dumps(broken).encode())
        )
    assert _reason(exc) == "crl-invalid"
    # An old (stale) PCK CRL with otherwise current collateral.
    old = dict(doc, pck_crl=vec("tdx/zkdcap/pck_platform_crl.der").hex())
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(
            vec(DCAP_QVL), now=now, collateral=parse_dcap_qvl_collateral(json.dumps(old).encode())
        )
    assert _reason(exc) == "collateral-expired"


def test_real_pck_crl_parses_and_does_not_list_the_quote_leaf() -> None:
    crl = parse_crl(vec("tdx/go-tdx-guest/pckcrl"), "pckcrl")
    assert len(list(crl)) == 44
    quote = parse_quote(vec(SPR))
    chain = verify_pck_chain(quote.pck_chain_pem, root=intel_sgx_root_ca(), now=utc(GO_TDX_GUEST_NOW))
    assert crl.get_revoked_certificate_by_serial_number(chain.leaf.serial_number) is None
    assert crl.is_signature_valid(chain.intermediate.public_key())  # type: ignore[arg-type]
    # PEM and hex encodings of the same CRL load to the same thing.
    from cryptography.hazmat.primitives.serialization import Encoding

    assert parse_crl(crl.public_bytes(Encoding.PEM), "pem") == crl
    assert parse_crl(vec("tdx/go-tdx-guest/pckcrl").hex().encode(), "hex") == crl
    root_crl = parse_crl(vec("tdx/go-tdx-guest/rootcrl.der"), "root")
    assert root_crl.is_signature_valid(intel_sgx_root_ca().public_key())  # type: ignore[arg-type]


def test_collateral_for_another_fmspc_is_a_mismatch(tmp_path: Path) -> None:
    # zkdcap collateral (FMSPC 00806f050000) with trustee's quote 4 (FMSPC 50806f000000), both valid then.
    coll = load_collateral(collateral_dir(tmp_path, ZKDCAP_COLLATERAL))
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(TRUSTEE_4), now=utc(ZKDCAP_NOW), collateral=coll)
    assert _reason(exc) == "collateral-mismatch"
    assert "FMSPC" in exc.value.message


def test_stale_go_tdx_guest_collateral(tmp_path: Path) -> None:
    coll = load_collateral(collateral_dir(tmp_path, GO_TDX_GUEST_COLLATERAL))
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(TRUSTEE_4), now=utc("2023-07-20T00:00:00Z"), collateral=coll)
    assert _reason(exc) == "collateral-expired"


# ------------------------------------------------------------------------------------------- loading


def test_directory_loading_is_by_content(tmp_path: Path) -> None:
    directory = collateral_dir(tmp_path, GO_TDX_GUEST_COLLATERAL)
    for i, path in enumerate(sorted(directory.iterdir())):
        path.rename(directory / f"piece-{i}")
    (directory / ".hidden").write_text("ignored")
    coll = load_collateral(directory)
    assert coll.pck_crl_issuer_chain is not None
    assert coll.tcb_info.tcb_info.fmspc.hex() == "50806f000000"


def test_directory_missing_crls_is_incomplete(tmp_path: Path) -> None:
    directory = collateral_dir(tmp_path, ZKDCAP_COLLATERAL[:2] + ZKDCAP_COLLATERAL[4:])
    with pytest.raises(EvidenceError) as exc:
        load_collateral(directory)
    assert _reason(exc) == "collateral-incomplete"
    assert "pck crl" in exc.value.message
    assert "root ca crl" in exc.value.message


def test_directory_with_two_tcb_infos_or_junk_is_rejected(tmp_path: Path) -> None:
    two = collateral_dir(tmp_path, (*GO_TDX_GUEST_COLLATERAL, "tdx/go-tdx-guest/sample_tcbinfo_response_v5"))
    with pytest.raises(EvidenceError) as exc:
        load_collateral(two)
    assert _reason(exc) == "collateral-malformed"
    assert "two tcb info" in exc.value.message
    junk = collateral_dir(tmp_path, ZKDCAP_COLLATERAL, "junk")
    (junk / "README").write_text("hello")
    with pytest.raises(EvidenceError) as exc:
        load_collateral(junk)
    assert _reason(exc) == "collateral-malformed"
    quote_inside = collateral_dir(tmp_path, (*ZKDCAP_COLLATERAL, GCP), "with-quote")
    with pytest.raises(EvidenceError):
        load_collateral(quote_inside)


def test_a_single_pcs_file_is_not_collateral(tmp_path: Path) -> None:
    target = tmp_path / "crl.der"
    shutil.copy(VECTORS / "tdx/zkdcap/pck_platform_crl.der", target)
    with pytest.raises(EvidenceError) as exc:
        load_collateral(target)
    assert _reason(exc) == "collateral-malformed"
    with pytest.raises(EvidenceError) as exc:
        load_collateral(VECTORS / "tdx/zkdcap/tcbinfov3_00806f050000.json")
    assert _reason(exc) == "collateral-malformed"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.pop("pck_crl"),
        lambda d: d.update(extra="x"),
        lambda d: d.update(tcb_info_signature="zz" * 64),
        lambda d: d.update(pck_crl="00"),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"id":"TDX"', '"id":"SGX"')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"version":3', '"version":2')),
        lambda d: d.update(qe_identity=d["qe_identity"].replace('"id":"TD_QE"', '"id":"QE"')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"tcbType":0', '"tcbType":0,"future":1')),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"tcbStatus":"UpToDate"', '"tcbStatus":"Fine"', 1)),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"pcesvn":11', '"pcesvn":true', 1)),
        lambda d: d.update(
            tcb_info=d["tcb_info"].replace('"issueDate":"2025-06-19T10:16:03Z"', '"issueDate":"19/06/2025"')
        ),
        lambda d: d.update(tcb_info=d["tcb_info"].replace('"fmspc":"B0C06F000000"', '"fmspc":"B0C06F"')),
        lambda d: d.update(tcb_info_issuer_chain="not pem"),
    ],
)
def test_malformed_dcap_qvl_collateral_is_rejected(edit: object) -> None:
    doc = json.loads(DCAP_QVL_COLLATERAL.read_bytes())
    edit(doc)  # type: ignore[operator]
    with pytest.raises(EvidenceError) as exc:
        parse_dcap_qvl_collateral(json.dumps(doc).encode())
    assert _reason(exc) in ("collateral-malformed", "collateral-mismatch")


def test_verify_tdx_files_with_hex_quote_and_both_collateral_forms(tmp_path: Path) -> None:
    hex_quote = tmp_path / "quote.hex"
    data = vec(DCAP_QVL).hex()
    hex_quote.write_text("\n".join(data[i : i + 60] for i in range(0, len(data), 60)) + "\n")
    claims = verify_tdx_files(hex_quote, DCAP_QVL_COLLATERAL, utc(DCAP_QVL_NOW))
    assert claims["tdx.tcb_status"] == "UpToDate"
    directory = collateral_dir(tmp_path, ZKDCAP_COLLATERAL)
    claims = verify_tdx_files(VECTORS / GCP, directory, utc(ZKDCAP_NOW))
    assert claims["tdx.tcb_status"] == "UpToDate"
    assert verify_tdx_files(VECTORS / GCP, None, utc(ZKDCAP_NOW))["tdx.tcb_status"] is None
    with pytest.raises(FileNotFoundError):
        verify_tdx_files(tmp_path / "missing", None, utc(ZKDCAP_NOW))


def test_match_tcb_level_order_is_intels_not_the_json_order(tmp_path: Path) -> None:
    """Reversing tcbLevels in the (unsigned, parsed) model does not change the match: QVL order is used."""
    coll = load_collateral(collateral_dir(tmp_path, ZKDCAP_COLLATERAL))
    quote = parse_quote(vec(GCP))
    chain = verify_pck_chain(quote.pck_chain_pem, root=intel_sgx_root_ca(), now=utc(ZKDCAP_NOW))
    body = vec("tdx/zkdcap/tcbinfov3_00806f050000.json")
    doc = json.loads(body)
    doc["tcbInfo"]["tcbLevels"].reverse()
    reversed_info = parse_pcs_tcb_info(json.dumps(doc).encode()).tcb_info
    level = match_tcb_level(reversed_info, chain.extensions, quote.body.tee_tcb_svn)
    assert level == match_tcb_level(coll.tcb_info.tcb_info, chain.extensions, quote.body.tee_tcb_svn)
    assert level.tcb_date == utc("2024-03-13T00:00:00Z")


def test_deeply_nested_json_is_malformed_not_a_crash(tmp_path: Path) -> None:
    bomb = b'{"tcbInfo":' + b"[" * 100_000 + b"]" * 100_000 + b',"signature":""}'
    for parse in (parse_pcs_tcb_info, parse_dcap_qvl_collateral):
        with pytest.raises(EvidenceError) as exc:
            parse(bomb)
        assert _reason(exc) == "collateral-malformed"
    directory = collateral_dir(tmp_path, ZKDCAP_COLLATERAL)
    (directory / "bomb.json").write_bytes(bomb)
    with pytest.raises(EvidenceError) as exc:
        load_collateral(directory)
    assert _reason(exc) == "collateral-malformed"


# ------------------------------------------------------------------------------------------- bounds


def _dcap_doc() -> dict[str, str]:
    doc: dict[str, str] = json.loads(DCAP_QVL_COLLATERAL.read_bytes())
    return doc


def _with_tcb_info(edit: object) -> bytes:
    doc = _dcap_doc()
    tcb_info = json.loads(doc["tcb_info"])
    edit(tcb_info)  # type: ignore[operator]
    return json.dumps({**doc, "tcb_info": json.dumps(tcb_info)}, sort_keys=True).encode()


def _malformed_message(data: bytes) -> str:
    with pytest.raises(EvidenceError) as exc:
        parse_dcap_qvl_collateral(data)
    assert _reason(exc) == "collateral-malformed"
    assert len(exc.value.message) < 300  # never echoes the oversize input
    return exc.value.message


def test_every_real_collateral_is_within_the_bounds_by_a_wide_margin() -> None:
    """The bounds' reference: Intel's real collateral (every vector) against each bound."""
    documents = [
        vec("tdx/dcap-qvl/tdx_quote_collateral.json"),
        vec("tdx/dcap-qvl/tdx_quote_outdated_collateral.json"),
    ]
    assert max(len(d) for d in documents) * 10 < MAX_COLLATERAL_JSON
    tcb_infos = [json.loads(json.loads(d)["tcb_info"]) for d in documents]
    for rel in (
        "tdx/zkdcap/tcbinfov3_00806f050000.json",
        "tdx/trustee/tcbInfo.json",
        "tdx/go-tdx-guest/sample_tcbInfo_response",
        "tdx/go-tdx-guest/sample_tcbinfo_response_v5",
    ):
        assert len(vec(rel)) * 10 < MAX_COLLATERAL_JSON
        tcb_infos.append(json.loads(vec(rel))["tcbInfo"])
    levels = [lvl for info in tcb_infos for lvl in info["tcbLevels"]]
    module_levels = [
        m for info in tcb_infos for ident in info.get("tdxModuleIdentities", []) for m in ident["tcbLevels"]
    ]
    assert max(len(info["tcbLevels"]) for info in tcb_infos) * 10 < MAX_TCB_LEVELS
    assert max(len(info.get("tdxModuleIdentities", [])) for info in tcb_infos) * 5 < MAX_MODULE_IDENTITIES
    advisories = [lvl.get("advisoryIDs", []) for lvl in levels + module_levels]
    assert max(len(a) for a in advisories) * 5 < MAX_ADVISORY_IDS
    strings = [a for ids in advisories for a in ids] + [
        c[key]
        for lvl in levels
        for part in lvl["tcb"].values()
        if isinstance(part, list)
        for c in part
        for key in ("category", "type")
        if key in c
    ]
    assert max(len(text) for text in strings) * 4 < MAX_FREE_STRING


def test_the_reviews_padded_advisory_list_is_refused_by_size() -> None:
    """The review's document (advisoryIDs padded with 125,000 two-character strings) is refused before
    it is decoded: it is larger than any real collateral may be."""

    def pad(tcb_info: dict[str, object]) -> None:
        tcb_info["tcbLevels"][-1].setdefault("advisoryIDs", []).extend(["AB"] * 125_000)  # type: ignore[index]

    message = _malformed_message(_with_tcb_info(pad))
    assert f"at most {MAX_COLLATERAL_JSON} are accepted" in message


def test_oversize_collateral_is_refused() -> None:
    doc = _dcap_doc()
    base = json.dumps(doc, sort_keys=True).encode()
    room = MAX_COLLATERAL_JSON - len(base) - len(b', "pck_certificate_chain": ""')
    fits = json.dumps({**doc, "pck_certificate_chain": " " * room}, sort_keys=True).encode()
    assert len(fits) == MAX_COLLATERAL_JSON
    assert parse_dcap_qvl_collateral(fits).tcb_info.raw == doc["tcb_info"].encode()
    over = json.dumps({**doc, "pck_certificate_chain": " " * (room + 1)}, sort_keys=True).encode()
    assert "dcap-qvl collateral: 262145 bytes; at most 262144" in _malformed_message(over)
    for parse, rel in (
        (parse_pcs_tcb_info, "tdx/zkdcap/tcbinfov3_00806f050000.json"),
        (parse_pcs_qe_identity, "tdx/zkdcap/qeidentityv2_tdx.json"),
    ):
        body = vec(rel)
        padded = body + b" " * (MAX_COLLATERAL_JSON - len(body))
        parse(padded)
        with pytest.raises(EvidenceError) as exc:
            parse(padded + b" ")
        assert _reason(exc) == "collateral-malformed"
        assert f"at most {MAX_COLLATERAL_JSON} are accepted" in exc.value.message
    with pytest.raises(EvidenceError) as exc:
        parse_dcap_qvl_collateral(json.dumps({**doc, "pck_certificate_chain": 1}).encode())
    assert "pck_certificate_chain: expected a string" in exc.value.message


@pytest.mark.parametrize(
    ("edit", "where", "bound"),
    [
        (
            lambda t: t["tcbLevels"][-1].update(
                advisoryIDs=[f"INTEL-SA-{i:05}" for i in range(MAX_ADVISORY_IDS + 1)]
            ),
            "tcbInfo.tcbLevels[1].advisoryIDs",
            f"a list of {MAX_ADVISORY_IDS + 1} items; at most {MAX_ADVISORY_IDS}",
        ),
        (
            lambda t: t["tdxModuleIdentities"][1]["tcbLevels"][0].update(
                advisoryIDs=["INTEL-SA-00001"] * (MAX_ADVISORY_IDS + 1)
            ),
            "tcbInfo.tdxModuleIdentities[1].tcbLevels[0].advisoryIDs",
            f"at most {MAX_ADVISORY_IDS}",
        ),
        (
            lambda t: t["tcbLevels"][-1].update(advisoryIDs=["INTEL-SA-" + "0" * MAX_FREE_STRING]),
            "tcbInfo.tcbLevels[1].advisoryIDs[0]",
            f"a string of {MAX_FREE_STRING + 9} characters; at most {MAX_FREE_STRING}",
        ),
        (
            lambda t: t["tcbLevels"][0]["tcb"]["sgxtcbcomponents"][0].update(
                category="x" * (MAX_FREE_STRING + 1)
            ),
            "tcbInfo.tcbLevels[0].tcb.sgxtcbcomponents[0].category",
            f"at most {MAX_FREE_STRING}",
        ),
        (
            lambda t: t["tcbLevels"][0]["tcb"]["tdxtcbcomponents"][2].update(
                type="x" * (MAX_FREE_STRING + 1)
            ),
            "tcbInfo.tcbLevels[0].tcb.tdxtcbcomponents[2].type",
            f"at most {MAX_FREE_STRING}",
        ),
        (
            lambda t: t.update(tcbLevels=t["tcbLevels"] * (MAX_TCB_LEVELS // 2 + 1)),
            "tcbInfo.tcbLevels",
            f"a list of {MAX_TCB_LEVELS + 2} items; at most {MAX_TCB_LEVELS}",
        ),
        (
            lambda t: t["tdxModuleIdentities"][1].update(
                tcbLevels=t["tdxModuleIdentities"][1]["tcbLevels"] * (MAX_TCB_LEVELS // 2 + 1)
            ),
            "tcbInfo.tdxModuleIdentities[1].tcbLevels",
            f"at most {MAX_TCB_LEVELS}",
        ),
        (
            lambda t: t.update(
                tdxModuleIdentities=[
                    {**t["tdxModuleIdentities"][0], "id": f"TDX_{i:02X}"}
                    for i in range(MAX_MODULE_IDENTITIES + 1)
                ]
            ),
            "tcbInfo.tdxModuleIdentities",
            f"a list of {MAX_MODULE_IDENTITIES + 1} items; at most {MAX_MODULE_IDENTITIES}",
        ),
    ],
)
def test_oversize_lists_and_strings_are_refused(edit: object, where: str, bound: str) -> None:
    message = _malformed_message(_with_tcb_info(edit))
    assert message.startswith(f"{where}: ")
    assert bound in message


def test_an_oversize_qe_identity_level_list_is_refused() -> None:
    doc = _dcap_doc()
    qe = json.loads(doc["qe_identity"])
    qe["tcbLevels"] = qe["tcbLevels"] * (MAX_TCB_LEVELS + 1)
    message = _malformed_message(json.dumps({**doc, "qe_identity": json.dumps(qe)}).encode())
    assert message.startswith("enclaveIdentity.tcbLevels: ")
    assert f"at most {MAX_TCB_LEVELS}" in message


def test_collateral_at_each_bound_still_parses() -> None:
    """Exactly at each bound is accepted (only beyond it is refused)."""

    def advisories(t: dict[str, Any]) -> None:
        t["tcbLevels"][-1]["advisoryIDs"] = ["A" * MAX_FREE_STRING] * MAX_ADVISORY_IDS
        t["tcbLevels"][0]["tcb"]["sgxtcbcomponents"][0]["category"] = "c" * MAX_FREE_STRING

    def levels(t: dict[str, Any]) -> None:
        t["tcbLevels"] = (t["tcbLevels"] * MAX_TCB_LEVELS)[:MAX_TCB_LEVELS]

    for edit in (advisories, levels):
        data = _with_tcb_info(edit)
        assert len(data) <= MAX_COLLATERAL_JSON
        info = parse_dcap_qvl_collateral(data).tcb_info.tcb_info
        if edit is levels:
            assert len(info.tcb_levels) == MAX_TCB_LEVELS
        else:
            assert max(len(level.advisory_ids) for level in info.tcb_levels) == MAX_ADVISORY_IDS


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t["tcbLevels"][0].update(tcbStatus="UpToDate" * 10_000),
        lambda t: t["tcbLevels"][0].update(tcbDate="2025" * 10_000),
        lambda t: t.update({"x" * 50_000: 1}),
        lambda t: t.update(id="TDX" * 10_000),
        lambda t: t.update(fmspc="00" * 20_000),
        lambda t: t["tcbLevels"][0]["tcb"].update(pcesvn=["x" * 1000] * 50),
        lambda t: t["tdxModuleIdentities"][0].update(id="TDX_" * 10_000),
    ],
)
def test_a_refusal_never_echoes_a_large_value(edit: object) -> None:
    with pytest.raises(EvidenceError) as exc:
        parse_dcap_qvl_collateral(_with_tcb_info(edit))
    assert _reason(exc) in ("collateral-malformed", "collateral-mismatch")
    assert len(exc.value.message) < 300
