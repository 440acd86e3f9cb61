"""Azure confidential VM evidence through the vTPM (docs/evidence.md, "Azure confidential VMs").

On an Azure CVM the paravisor writes the HCL report (hardware report + runtime data naming the vTPM's AK)
into NV index ``0x01400001`` and provisions that AK at persistent handle ``0x81000003``. ``collect``
reads the report, quotes all 24 SHA-256 PCRs with the AK and the first 32 bytes of the binding as
``qualifyingData`` (docs/binding.md), and returns the evidence the keyserver's release accepts:

    {"tee": "azure-snp-vtpm", "hcl_report", "certificate"?, "tpm_quote", "tpm_signature", "pcrs": [24 hex]}
    {"tee": "azure-tdx-vtpm", "hcl_report", "td_quote", "tpm_quote", "tpm_signature", "pcrs": [24 hex]}

The VCEK (SEV-SNP) comes from Azure's THIM endpoint and the TD quote (TDX) from Azure's quote service for
the TDREPORT in the HCL report; both are network services outside the VM, so they are given to the
collector (``vcek`` bytes, ``td_quote_for`` callable) rather than fetched here.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR

from clients.loader.collectors.base import require_binding
from clients.loader.collectors.errors import (
    AzureHclReportInvalid,
    CollectorConfigInvalid,
)
from clients.loader.collectors.tpm import PcrSelection, consistent_quote
from clients.loader.collectors.tpm_esapi import open_esapi, persistent_exists, tpm_call
from keyserver.binding import report_data_for
from keyserver.errors import EvidenceError
from keyserver.evidence.azure.hcl import REPORT_TYPE_SNP, parse_hcl_report
from keyserver.evidence.claims import TEE_AZURE_SNP_VTPM, TEE_AZURE_TDX_VTPM

HCL_REPORT_NV_INDEX = 0x01400001
AZURE_AK_HANDLE = 0x81000003
ALL_PCRS = PcrSelection.parse("sha256:" + ",".join(str(i) for i in range(24)))
NV_CHUNK = 1024  # at most TPM2_MAX_NV_BUFFER_SIZE on every TPM
MAX_NV_BYTES = 16 * 1024


def read_nv(ectx: ESAPI, index: int) -> bytes:
    """The whole content of NV ``index``, read with owner authorisation in chunks."""
    with tpm_call(f"reading NV index 0x{index:08x}"):
        handle = ectx.tr_from_tpmpublic(index)
        public, _ = ectx.nv_read_public(handle)
        size = int(public.nvPublic.dataSize)
        if size > MAX_NV_BYTES:
            raise AzureHclReportInvalid(f"NV index 0x{index:08x} holds {size} bytes, more than an HCL report")
        out = bytearray()
        while len(out) < size:
            chunk = min(NV_CHUNK, size - len(out))
            out += bytes(ectx.nv_read(handle, chunk, len(out), auth_handle=ESYS_TR.OWNER))
    return bytes(out)


class AzureVtpmCollector:
    """See the module docstring. ``tee`` is ``azure-snp-vtpm`` or ``azure-tdx-vtpm``."""

    def __init__(
        self,
        tee: str,
        tcti: str,
        *,
        ak_handle: int = AZURE_AK_HANDLE,
        nv_index: int = HCL_REPORT_NV_INDEX,
        vcek: bytes | None = None,
        td_quote_for: Callable[[bytes], bytes] | None = None,
    ) -> None:
        if tee not in (TEE_AZURE_SNP_VTPM, TEE_AZURE_TDX_VTPM):
            raise CollectorConfigInvalid(
                f"the Azure collector serves azure-snp-vtpm or azure-tdx-vtpm, not {tee!r}"
            )
        if tee == TEE_AZURE_TDX_VTPM and td_quote_for is None:
            raise CollectorConfigInvalid("azure-tdx-vtpm needs td_quote_for (Azure's quote service)")
        self.tee, self.tcti, self.ak_handle, self.nv_index = tee, tcti, ak_handle, nv_index
        self.vcek, self.td_quote_for = vcek, td_quote_for

    def collect(self, binding: bytes) -> dict[str, Any]:
        qualifying = report_data_for(self.tee, require_binding(binding))
        with open_esapi(self.tcti) as ectx:
            raw = read_nv(ectx, self.nv_index)
            hcl = self._check_report(raw)
            if not persistent_exists(ectx, self.ak_handle):
                raise AzureHclReportInvalid(f"no vTPM AK at 0x{self.ak_handle:08x}: is this an Azure CVM?")
            with tpm_call(f"loading the AK at 0x{self.ak_handle:08x}"):
                ak = ectx.tr_from_tpmpublic(self.ak_handle)
            attest, signature, quoted = consistent_quote(ectx, ak, ALL_PCRS, qualifying)
            pcrs = quoted["sha256"]
        # The NV index as read, zero padding included: the verifier requires that padding to be zero.
        evidence: dict[str, Any] = {
            "tee": self.tee,
            "hcl_report": base64.b64encode(raw).decode(),
            "tpm_quote": base64.b64encode(attest).decode(),
            "tpm_signature": base64.b64encode(signature).decode(),
            "pcrs": [pcrs[i].hex() for i in range(24)],
        }
        if self.tee == TEE_AZURE_SNP_VTPM:
            if self.vcek is not None:
                evidence["certificate"] = base64.b64encode(self.vcek).decode()
        else:
            assert self.td_quote_for is not None
            evidence["td_quote"] = base64.b64encode(self.td_quote_for(hcl.hardware_report)).decode()
        return evidence

    def _check_report(self, raw: bytes) -> Any:
        try:
            hcl = parse_hcl_report(raw)
        except EvidenceError as exc:
            raise AzureHclReportInvalid(f"NV index 0x{self.nv_index:08x}: {exc.message}") from exc
        if (hcl.report_type == REPORT_TYPE_SNP) != (self.tee == TEE_AZURE_SNP_VTPM):
            raise AzureHclReportInvalid(f"the HCL report is not for {self.tee}")
        return hcl


def loader_collector(tee: str, args: argparse.Namespace, pcr_selection: str) -> AzureVtpmCollector:
    """The loader's collector for ``"tee": "azure-snp-vtpm"`` (clients/loader/parts.py); it quotes all 24
    PCRs, whatever the configuration's selection."""
    vcek = Path(args.vcek).read_bytes() if args.vcek else None
    return AzureVtpmCollector(tee, args.tcti, vcek=vcek)
