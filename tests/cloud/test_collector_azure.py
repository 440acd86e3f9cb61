"""The loader's Azure vTPM collector against a simulated Azure vTPM: a real TPM (swtpm) whose NV index
0x01400001 holds an HCL report and whose persistent handle 0x81000003 holds an RSA AK, as the paravisor
sets them up. The collected evidence goes through the keyserver's own dispatch: a synthetic HCL report
naming this vTPM's AK verifies and binds; the real Azure HCL report (MANIFEST §6) is read back byte for
byte, and is refused at the quote, because its runtime data names Azure's AK, not this one."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey
from sqlalchemy.ext.asyncio import AsyncSession
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

from clients.loader.collectors.azure import AZURE_AK_HANDLE, HCL_REPORT_NV_INDEX, AzureVtpmCollector
from clients.loader.collectors.errors import AzureHclReportInvalid, BindingInvalid, CollectorConfigInvalid
from keyserver.binding import binding
from keyserver.errors import EvidenceError
from keyserver.evidence.dispatch import check_evidence_binding, verify_evidence
from keyserver.evidence.snp import SnpProduct
from tests.cloud.azure_synth import hcl_report, runtime_data
from tests.cloud.vectors import AZURE
from tests.fixtures.swtpm import SwtpmInstance
from tests.snp.helpers import fake_pki
from tests.tpm.test_swtpm import EK_RSA, tpm_ak

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.filterwarnings(
        "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
    ),
]


def _jwk() -> dict[str, Any]:
    return dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False))


def _write_nv(ectx: ESAPI, data: bytes) -> None:
    public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=HCL_REPORT_NV_INDEX,
            nameAlg=TPM2_ALG.SHA256,
            attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE,
            dataSize=len(data),
        )
    )
    handle = ectx.nv_define_space(b"", public)
    for offset in range(0, len(data), 512):
        ectx.nv_write(handle, data[offset : offset + 512], offset, auth_handle=ESYS_TR.OWNER)


def _clear(ectx: ESAPI) -> None:
    with contextlib.suppress(TSS2_Exception):  # absent is fine
        ectx.nv_undefine_space(ectx.tr_from_tpmpublic(HCL_REPORT_NV_INDEX))
    with contextlib.suppress(TSS2_Exception):
        ectx.evict_control(ESYS_TR.OWNER, ectx.tr_from_tpmpublic(AZURE_AK_HANDLE), AZURE_AK_HANDLE)


@pytest.fixture
def azure_vtpm(tpm_esapi: ESAPI) -> Iterator[tuple[ESAPI, rsa.RSAPublicKey]]:
    """The swtpm set up as Azure's paravisor sets up the vTPM: an RSA AK persisted at 0x81000003."""
    _clear(tpm_esapi)
    with tpm_ak(tpm_esapi, "rsa", EK_RSA) as ak:
        tpm_esapi.evict_control(ESYS_TR.OWNER, ak.handle, AZURE_AK_HANDLE)
        key = ak.verifier_ak().key
    assert isinstance(key, rsa.RSAPublicKey)
    yield tpm_esapi, key
    _clear(tpm_esapi)


async def _dispatch(
    evidence: dict[str, Any], nonce: bytes, jwk: dict[str, Any], now: datetime
) -> dict[str, Any]:
    verified = await verify_evidence(
        cast(AsyncSession, None), uuid.uuid4(), evidence, nonce=nonce, ephemeral_jwk=jwk, now=now
    )
    check_evidence_binding(verified, nonce, jwk)
    return dict(verified.claims)


async def test_collected_evidence_verifies_and_binds(
    swtpm: SwtpmInstance, azure_vtpm: tuple[ESAPI, rsa.RSAPublicKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    ectx, ak_key = azure_vtpm
    pki = fake_pki(SnpProduct.MILAN)
    monkeypatch.setattr("keyserver.evidence.snp.verify.default_snp_roots", pki.roots)
    now = datetime.now(UTC)
    vcek_key, vcek_der = pki.leaf(
        hwid=bytes(range(64)), not_before=now - timedelta(days=1), not_after=now + timedelta(days=1)
    )
    report = hcl_report(vcek_key, runtime_data(ak_key)).rstrip(b"\0")
    _write_nv(ectx, report)

    nonce, jwk = bytes(range(32)), _jwk()
    collector = AzureVtpmCollector("azure-snp-vtpm", swtpm.tcti, vcek=vcek_der)
    evidence = collector.collect(binding(nonce, jwk))
    assert set(evidence) == {"tee", "hcl_report", "certificate", "tpm_quote", "tpm_signature", "pcrs"}
    claims = await _dispatch(evidence, nonce, jwk, now)
    assert claims["tee"] == "azure-snp-vtpm"
    assert claims["report_data"] == binding(nonce, jwk)[:32].hex()
    assert claims["azure.secure_boot"] is True
    # The same evidence presented for another ephemeral key is refused at the quote's qualifyingData.
    with pytest.raises(EvidenceError) as info:
        await _dispatch(evidence, nonce, _jwk(), now)
    assert info.value.reason == "tpm-nonce-mismatch"


async def test_real_snp_report_in_the_hcl_report_is_read_back_and_refused_at_the_quote(
    swtpm: SwtpmInstance, azure_vtpm: tuple[ESAPI, rsa.RSAPublicKey]
) -> None:
    # swtpm's NV indices hold at most 2048 bytes, Azure's real HCL reports are 2346 and more: the real
    # report cannot be stored whole. Its real SEV-SNP report can, with its real runtime data cut to what
    # fits... which would no longer hash to REPORT_DATA. So the real report goes in whole, its runtime
    # data replaced by this vTPM's: everything verifies up to the REPORT_DATA check, which refuses it.
    ectx, ak_key = azure_vtpm
    vector = AZURE["snp/hcl-report"]
    real = vector.hcl_report
    synthetic = hcl_report(ec.generate_private_key(ec.SECP384R1()), runtime_data(ak_key)).rstrip(b"\0")
    report = synthetic[:0x20] + real[0x20:0x4C0] + synthetic[0x4C0:]
    _write_nv(ectx, report)
    nonce, jwk = bytes(32), _jwk()
    evidence = AzureVtpmCollector("azure-snp-vtpm", swtpm.tcti, vcek=vector.vcek).collect(binding(nonce, jwk))
    assert base64.b64decode(evidence["hcl_report"]) == report
    with pytest.raises(EvidenceError) as info:
        await _dispatch(evidence, nonce, jwk, vector.validity()[0] + timedelta(days=1))
    assert info.value.reason == "azure-report-data-mismatch"


def test_collector_refusals(swtpm: SwtpmInstance, azure_vtpm: tuple[ESAPI, rsa.RSAPublicKey]) -> None:
    ectx, _ = azure_vtpm
    with pytest.raises(CollectorConfigInvalid):
        AzureVtpmCollector("sev-snp", swtpm.tcti)
    with pytest.raises(CollectorConfigInvalid):
        AzureVtpmCollector("azure-tdx-vtpm", swtpm.tcti)
    collector = AzureVtpmCollector("azure-snp-vtpm", swtpm.tcti)
    with pytest.raises(BindingInvalid):
        collector.collect(b"short")
    _write_nv(ectx, b"not an HCL report" * 10)
    with pytest.raises(AzureHclReportInvalid):
        collector.collect(bytes(64))
    ectx.nv_undefine_space(ectx.tr_from_tpmpublic(HCL_REPORT_NV_INDEX))
    tdx = AzureVtpmCollector("azure-tdx-vtpm", swtpm.tcti, td_quote_for=lambda tdreport: b"")
    _write_nv(ectx, hcl_report(ec.generate_private_key(ec.SECP384R1()), b'{"keys":[]}').rstrip(b"\0"))
    with pytest.raises(AzureHclReportInvalid):
        tdx.collect(bytes(64))
