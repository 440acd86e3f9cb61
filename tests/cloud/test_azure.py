"""Azure confidential VM evidence (issue 19): every real vector (MANIFEST §6) accepted at its date with the
claims the MANIFEST states, refused one second outside its validity, and every layer's tampering refused
with that layer's reason."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime, timedelta

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.azure import parse_hcl_report
from keyserver.evidence.azure.hcl import RUNTIME_HEADER_OFFSET, VARIABLE_DATA_OFFSET
from keyserver.evidence.azure.verify import verify_azure_snp_vtpm, verify_azure_tdx_vtpm
from keyserver.evidence.claims import Claims
from tests.cloud.vectors import AZURE, AzureVector

pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)

ONE_SECOND = timedelta(seconds=1)


def verify(v: AzureVector, now: datetime | None = None, nonce: bytes | None = None) -> Claims:
    when = now if now is not None else v.validity()[0] + (v.validity()[1] - v.validity()[0]) / 2
    expected = v.nonce if nonce is None else nonce
    if v.tee == "azure-snp-vtpm":
        return verify_azure_snp_vtpm(
            v.hcl_report,
            vcek=v.vcek,
            quote=v.quote,
            signature=v.signature,
            pcrs=v.pcrs,
            expected_nonce=expected,
            now=when,
        )
    assert v.td_quote is not None
    return verify_azure_tdx_vtpm(
        v.hcl_report,
        td_quote=v.td_quote,
        quote=v.quote,
        signature=v.signature,
        pcrs=v.pcrs,
        expected_nonce=expected,
        now=when,
    )


def reason(v: AzureVector, **kw: object) -> str:
    with pytest.raises(EvidenceError) as info:
        verify(v, **kw)  # type: ignore[arg-type]
    return info.value.reason


def flip(data: bytes, offset: int, mask: int = 1) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


@pytest.mark.parametrize("name", sorted(AZURE))
def test_real_vector_is_accepted_with_its_manifest_claims(name: str) -> None:
    v = AZURE[name]
    claims = verify(v)
    assert claims["tee"] == v.tee
    assert claims["report_data"] == v.nonce.hex()  # the vTPM quote's extraData
    assert claims["debug"] is False
    if v.pcr0:
        assert claims["tpm.pcrs.sha256.0"] == v.pcr0
    assert all(f"tpm.pcrs.sha256.{i}" in claims for i in range(24))
    hcl = parse_hcl_report(v.hcl_report)
    assert claims["azure.runtime_data_sha256"] == hashlib.sha256(hcl.variable_data).hexdigest()
    assert claims["azure.secure_boot"] is True
    assert claims["azure.tpm_enabled"] is True
    assert isinstance(claims["azure.vm_id"], str)
    if v.tee == "azure-snp-vtpm":
        assert str(claims["snp.report_data"]).startswith(str(claims["azure.runtime_data_sha256"]))
        assert claims["snp.product"] in ("Milan", "Genoa")
    else:
        assert (
            claims["tdx.report_data"]
            == "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839" + "00" * 32
        )
        assert str(claims["tdx.mrtd"]).startswith("024a32b0")


def test_snp_vectors_name_their_product_and_vm() -> None:
    assert verify(AZURE["snp/evidence-genoa"])["snp.product"] == "Genoa"
    assert verify(AZURE["snp/hcl-report"])["snp.measurement"] == (
        "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315"
    )
    assert verify(AZURE["snp/hcl-report"])["azure.vm_id"] == "911b0ef8-9dba-48b0-b275-4e4df2d39252"
    v2 = verify(AZURE["snp/evidence-v2"])
    # MANIFEST: in v2 the HCL user-data is the nonce; it is exposed, never trusted for the binding.
    assert str(v2["azure.user_data"]).startswith(AZURE["snp/evidence-v2"].nonce.hex())


@pytest.mark.parametrize("name", sorted(AZURE))
def test_refused_one_second_outside_the_validity(name: str) -> None:
    v = AZURE[name]
    start, end = v.validity()
    verify(v, now=start)
    verify(v, now=end)
    for outside in (start - ONE_SECOND, end + ONE_SECOND):
        with pytest.raises(EvidenceError) as info:
            verify(v, now=outside)
        assert (
            "expired" in info.value.reason or "valid" in info.value.reason or "not-yet" in info.value.reason
        )


@pytest.mark.parametrize("name", sorted(AZURE))
def test_another_nonce_is_refused(name: str) -> None:
    assert reason(AZURE[name], nonce=b"egnellahc") == "tpm-nonce-mismatch"


# --- each layer tampered -----------------------------------------------------------------------------


def _runtime_edit(v: AzureVector, old: bytes, new: bytes) -> AzureVector:
    """Change the runtime JSON (same length, still valid JSON): it no longer hashes to REPORT_DATA."""
    assert len(old) == len(new)
    start = v.hcl_report.index(old, VARIABLE_DATA_OFFSET)
    return v.with_(hcl_report=v.hcl_report[:start] + new + v.hcl_report[start + len(old) :])


@pytest.mark.parametrize("name", sorted(AZURE))
def test_runtime_data_that_does_not_hash_to_report_data_is_refused(name: str) -> None:
    v = AZURE[name]
    assert reason(_runtime_edit(v, b'"secure-boot":true', b'"secure-boot":TRUE')) in (
        "azure-hcl-malformed",
        "azure-report-data-mismatch",
    )
    assert (
        reason(_runtime_edit(v, b'"tpm-enabled":true', b'"tpm-enabled":1234')) == "azure-report-data-mismatch"
    )


def test_runtime_data_with_another_ak_is_refused_before_the_quote() -> None:
    # Swapping HCLAkPub for the EK changes the runtime data: the hardware no longer vouches for it.
    v = AZURE["snp/hcl-report"]
    hcl = bytearray(v.hcl_report)
    i = hcl.index(b"HCLAkPub")
    j = hcl.index(b"HCLEkPub")
    hcl[i : i + 8], hcl[j : j + 8] = b"HCLEkPub", b"HCLAkPub"
    assert reason(v.with_(hcl_report=bytes(hcl))) == "azure-report-data-mismatch"


@pytest.mark.parametrize("name", ["snp/hcl-report", "snp/evidence-v0", "snp/evidence-genoa"])
def test_flipped_byte_in_the_snp_report_is_refused(name: str) -> None:
    v = AZURE[name]
    for offset in (0x20 + 0x90, 0x20 + 0x50, 0x20 + 0x2A0):  # measurement, report_data, signature
        r = reason(v.with_(hcl_report=flip(v.hcl_report, offset)))
        assert r.startswith(("report-", "signature", "snp")) or "signature" in r, r


def test_manifest_mutations_are_refused() -> None:
    v = AZURE["snp/hcl-report"]
    tcb = bytearray(v.hcl_report)
    tcb[0x1A6] = 0  # REPORTED_TCB.snp
    assert reason(v.with_(hcl_report=bytes(tcb)))
    bumped = bytearray(v.hcl_report)
    bumped[0x6E0] += 1  # inside the variable data
    assert reason(v.with_(hcl_report=bytes(bumped))) in ("azure-report-data-mismatch", "azure-hcl-malformed")
    zeroed = bytearray(v.hcl_report)
    zeroed[0x540] = 0  # inside HCLAkPub
    assert reason(v.with_(hcl_report=bytes(zeroed))) in ("azure-report-data-mismatch", "azure-hcl-malformed")
    t = AZURE["tdx/hcl-report"]
    tdx = bytearray(t.hcl_report)
    tdx[0x880] += 1
    assert reason(t.with_(hcl_report=bytes(tdx))) in ("azure-report-data-mismatch", "azure-hcl-malformed")


@pytest.mark.parametrize("name", sorted(AZURE))
def test_tpm_layer_tampering_is_refused_with_tpm_reasons(name: str) -> None:
    v = AZURE[name]
    assert reason(v.with_(signature=flip(v.signature, 0))) == "tpm-signature-invalid"
    assert reason(v.with_(quote=flip(v.quote, len(v.quote) - 1))) == "tpm-signature-invalid"
    pcrs = list(v.pcrs)
    pcrs[0] = flip(pcrs[0], 0)
    assert reason(v.with_(pcrs=tuple(pcrs))) == "tpm-pcr-digest-mismatch"
    with pytest.raises(EvidenceError) as info:
        verify(v.with_(pcrs=v.pcrs[:23]))
    assert info.value.reason == "azure-pcrs-invalid"


def test_a_quote_by_another_ak_is_refused() -> None:
    # The quote and signature of another Azure VM (another vTPM AK) with this VM's HCL report.
    this, other = AZURE["snp/evidence-v0"], AZURE["snp/evidence-v2"]
    forged = this.with_(quote=other.quote, signature=other.signature, pcrs=other.pcrs, nonce=other.nonce)
    assert reason(forged) == "tpm-signature-invalid"
    tdx = AZURE["tdx/evidence-v0"].with_(quote=this.quote, signature=this.signature, pcrs=this.pcrs)
    assert reason(tdx) == "tpm-signature-invalid"


def test_tdx_layers() -> None:
    v = AZURE["tdx/hcl-report"]
    assert v.td_quote is not None
    # A flipped byte in the TD quote body (MRTD) breaks Intel's signature.
    r = reason(v.with_(td_quote=flip(v.td_quote, 48 + 136)))
    assert "signature" in r or r.startswith("tdx"), r
    # The TDREPORT inside the HCL report must carry the quote's REPORTDATA.
    assert reason(v.with_(hcl_report=flip(v.hcl_report, 0x20 + 128 + 40))) == "azure-tdreport-mismatch"


def test_hcl_report_of_the_other_tee_is_refused() -> None:
    snp, tdx = AZURE["snp/hcl-report"], AZURE["tdx/hcl-report"]
    with pytest.raises(EvidenceError) as info:
        verify(snp.with_(hcl_report=tdx.hcl_report))
    assert info.value.reason == "azure-hcl-type-mismatch"
    with pytest.raises(EvidenceError) as info:
        verify(tdx.with_(hcl_report=snp.hcl_report))
    assert info.value.reason == "azure-hcl-type-mismatch"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d[:100],  # truncated
        lambda d: b"XCLA" + d[4:],  # not an HCL report
        lambda d: d + b"\x01",  # non-zero tail
        lambda d: d[:RUNTIME_HEADER_OFFSET] + struct.pack("<I", 7) + d[RUNTIME_HEADER_OFFSET + 4 :],  # sizes
        lambda d: (
            d[: RUNTIME_HEADER_OFFSET + 8] + struct.pack("<I", 3) + d[RUNTIME_HEADER_OFFSET + 12 :]
        ),  # type
        lambda d: (
            d[: RUNTIME_HEADER_OFFSET + 12] + struct.pack("<I", 9) + d[RUNTIME_HEADER_OFFSET + 16 :]
        ),  # hash
        lambda d: d + bytes(16 * 1024),  # oversize
    ],
)
def test_malformed_hcl_reports_are_refused(edit: object) -> None:
    v = AZURE["snp/hcl-report"]
    with pytest.raises(EvidenceError) as info:
        verify(v.with_(hcl_report=edit(v.hcl_report)))  # type: ignore[operator]
    assert info.value.reason == "azure-hcl-malformed"


def test_runtime_data_json_rules() -> None:
    from keyserver.evidence.azure.hcl import parse_runtime_data

    good = json.loads(parse_hcl_report(AZURE["snp/hcl-report"].hcl_report).variable_data)
    for bad in (
        b"[]",
        b'{"keys": {}}',
        b'{"keys": []}',
        json.dumps({**good, "keys": good["keys"] * 2}).encode(),
        b'{"keys": [], "keys": []}',
        b"\xff",
        json.dumps({**good, "user-data": 5}).encode(),
        json.dumps({**good, "vm-configuration": []}).encode(),
    ):
        with pytest.raises(EvidenceError) as info:
            parse_runtime_data(bad)
        assert info.value.reason == "azure-hcl-malformed"
