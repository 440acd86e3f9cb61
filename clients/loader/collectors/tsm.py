"""SEV-SNP and TDX evidence through the kernel's configfs-tsm report interface (:mod:`.configfs`).

One report per ``collect``: make our own entry, check the provider is the one for this TEE, note the
generation, write the 64-byte binding to ``inblob`` (and ``privlevel`` if asked), read ``outblob`` (and
``auxblob`` for SEV-SNP), and check the generation moved by exactly our writes — otherwise someone else
wrote in between and what we read may answer their input: try again with a fresh entry, a bounded
number of times. The entry is removed whatever happens. Then the report itself is checked: its size
and shape, and that its user-data field is exactly the binding.

Evidence, as the keyserver's release accepts it (keyserver/evidence/dispatch.py):

    {"tee": "sev-snp", "report": b64 1184-byte report, "certificate": b64 DER VCEK or VLEK}
    {"tee": "tdx", "quote": b64 quote}
"""

from __future__ import annotations

import argparse
import base64
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from clients.loader.collectors.base import require_binding
from clients.loader.collectors.certtable import VCEK_GUID, VLEK_GUID, parse_cert_table, single_der_value
from clients.loader.collectors.configfs import DEFAULT_TSM_ROOT, TSM_OUTBLOB_MAX, ConfigfsTsm
from clients.loader.collectors.errors import (
    CertTableMalformed,
    CollectorConfigInvalid,
    ReportDataMismatch,
    SnpCertificateMissing,
    TsmGenerationRace,
    TsmMalformed,
    TsmProviderMismatch,
    TsmReportFailed,
)
from keyserver.evidence.claims import TEE_SEV_SNP, TEE_TDX

PROVIDERS: Final[Mapping[str, str]] = {TEE_SEV_SNP: "sev_guest", TEE_TDX: "tdx_guest"}
REPORT_ATTEMPTS: Final = 3
PRIVLEVEL_MAX: Final = 3

# SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP firmware ABI 56860, Table 22).
SNP_REPORT_SIZE: Final = 1184
_SNP_VERSION_MIN: Final = 2
_SNP_SIGNER_INFO: Final = 0x48
_SNP_REPORT_DATA: Final = slice(0x50, 0x90)
_SNP_SIGNING_KEY_CERT: Final = {0: (VCEK_GUID, "VCEK"), 1: (VLEK_GUID, "VLEK")}

# TDX quote (Intel TDX DCAP Quote Generation Library, appendices 3-4): a 48-byte header, the TD report
# body (v4), or a body descriptor then the body (v5), then a 4-byte signature-data length and the data.
_TDX_HEADER: Final = 48
_TDX_TEE_TYPE: Final = 0x81
_TDX_BODY_SIZES: Final = {2: 584, 3: 648}  # v5 body type: TDX 1.0 TD report, TDX 1.5 TD report
_TDX_REPORT_DATA_IN_BODY: Final = 520  # TEE_TCB_SVN..RTMR3 precede REPORTDATA in both bodies
_REPORT_DATA_BYTES: Final = 64


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes | None


class TsmCollector:
    """SEV-SNP (``tee="sev-snp"``) or TDX (``tee="tdx"``) evidence from configfs-tsm under ``root``.

    ``privlevel``: the SEV-SNP VMPL to request (default: the kernel's, its floor). ``product``: sent with
    SEV-SNP evidence for v2 reports, which do not name their product (``Milan``/``Genoa``/``Turin``).
    ``require_certificate``: refuse SEV-SNP evidence without the signing key's certificate in ``auxblob``
    (the keyserver fetches nothing, so without it the report cannot verify).
    """

    def __init__(
        self,
        tee: str,
        *,
        root: Path = DEFAULT_TSM_ROOT,
        configfs: ConfigfsTsm | None = None,
        privlevel: int | None = None,
        product: str | None = None,
        require_certificate: bool = True,
        attempts: int = REPORT_ATTEMPTS,
    ) -> None:
        if tee not in PROVIDERS:
            raise CollectorConfigInvalid(f"configfs-tsm serves tee {' or '.join(PROVIDERS)}, not {tee!r}")
        if privlevel is not None and (tee != TEE_SEV_SNP or not 0 <= privlevel <= PRIVLEVEL_MAX):
            raise CollectorConfigInvalid(
                f"privlevel is an SEV-SNP VMPL, 0..{PRIVLEVEL_MAX}; not {privlevel!r}"
            )
        if product is not None and tee != TEE_SEV_SNP:
            raise CollectorConfigInvalid("product names an SEV-SNP processor line; TDX evidence has none")
        if attempts < 1:
            raise CollectorConfigInvalid("attempts must be at least 1")
        self.tee = tee
        self.configfs = configfs if configfs is not None else ConfigfsTsm(root)
        self.privlevel = privlevel
        self.product = product
        self.require_certificate = require_certificate
        self.attempts = attempts

    def collect(self, binding: bytes) -> dict[str, Any]:
        bound = require_binding(binding)
        report = self.generate_report(bound)
        if self.tee == TEE_SEV_SNP:
            return snp_evidence(
                report, bound, require_certificate=self.require_certificate, product=self.product
            )
        return tdx_evidence(report, bound)

    def generate_report(self, inblob: bytes) -> TsmReport:
        """A report for ``inblob`` that no other writer interfered with, or :class:`TsmGenerationRace`."""
        for _ in range(self.attempts):
            entry = self.configfs.create_entry()
            try:
                report = self._report_in(entry, inblob)
            except BaseException as original:
                try:
                    self.configfs.remove_entry(entry)
                except TsmReportFailed as cleanup:
                    original.add_note(f"and the entry could not be removed: {cleanup.message}")
                raise
            self.configfs.remove_entry(entry)
            if report is not None:
                return report
        raise TsmGenerationRace(
            f"another writer changed the configfs-tsm report entry between our write and our read "
            f"{self.attempts} times running; find the other agent using {self.configfs.root}"
        )

    def _report_in(self, entry: Path, inblob: bytes) -> TsmReport | None:
        fs = self.configfs
        provider = fs.read_text(entry, "provider")
        if provider != PROVIDERS[self.tee]:
            known = {p: t for t, p in PROVIDERS.items()}
            raise TsmProviderMismatch(
                f"the kernel's TSM provider is {provider!r}"
                + (f" (a {known[provider]} guest)" if provider in known else "")
                + f", but this collector was configured for {self.tee} ({PROVIDERS[self.tee]!r})"
            )
        if self.privlevel is not None:
            floor = fs.read_number(entry, "privlevel_floor")
            if self.privlevel < floor:
                raise CollectorConfigInvalid(
                    f"privlevel {self.privlevel} is below this guest's privlevel_floor {floor}"
                )
        start = fs.read_number(entry, "generation")
        fs.write(entry, "inblob", inblob)
        writes = 1
        if self.privlevel is not None:
            fs.write(entry, "privlevel", str(self.privlevel).encode())
            writes += 1
        outblob = fs.read(entry, "outblob", TSM_OUTBLOB_MAX)
        auxblob = fs.read(entry, "auxblob", TSM_OUTBLOB_MAX) if self.tee == TEE_SEV_SNP else None
        # Generations only grow: the count at the end being start + our writes means no one else wrote
        # at any time before it, so both blobs answer our inblob.
        if fs.read_number(entry, "generation") != start + writes:
            return None
        return TsmReport(provider, outblob, auxblob)


def _check_report_data(found: bytes, binding: bytes, what: str) -> None:
    if not hmac.compare_digest(found, binding):
        raise ReportDataMismatch(
            f"the {what} carries user data {found.hex()[:16]}..., not the binding written to inblob "
            f"({binding.hex()[:16]}...); the kernel answered another request"
        )


def snp_evidence(
    report: TsmReport, binding: bytes, *, require_certificate: bool = True, product: str | None = None
) -> dict[str, Any]:
    """The SEV-SNP evidence for a sev_guest report: the report, and the certificate of its signing key."""
    raw = report.outblob
    if len(raw) != SNP_REPORT_SIZE:
        raise TsmMalformed(
            f"the sev_guest outblob is {len(raw)} bytes; an SEV-SNP report is {SNP_REPORT_SIZE}"
        )
    (version,) = struct.unpack_from("<I", raw, 0)
    if version < _SNP_VERSION_MIN:
        raise TsmMalformed(f"the SEV-SNP report has version {version}; versions below 2 are not supported")
    _check_report_data(raw[_SNP_REPORT_DATA], binding, "SEV-SNP report's REPORT_DATA")
    signing_key = (struct.unpack_from("<I", raw, _SNP_SIGNER_INFO)[0] >> 2) & 0x7
    if signing_key not in _SNP_SIGNING_KEY_CERT:
        raise TsmMalformed(
            f"SIGNER_INFO.SIGNING_KEY is {signing_key}: the report is not signed by a VCEK (0) or VLEK (1)"
        )
    guid, key_name = _SNP_SIGNING_KEY_CERT[signing_key]
    evidence: dict[str, Any] = {"tee": TEE_SEV_SNP, "report": base64.b64encode(raw).decode()}
    certificates = parse_cert_table(report.auxblob or b"")
    certificate = certificates.get(guid)
    if certificate is None:
        if require_certificate:
            raise SnpCertificateMissing(
                f"the report is signed by the {key_name}, but auxblob carries no {key_name} certificate "
                f"(GUID {guid}; it holds {sorted(str(g) for g in certificates) or 'nothing'}). The host must "
                "supply it (e.g. snphost import / SNP_SET_EXT_CONFIG)"
            )
    elif not single_der_value(certificate):
        raise CertTableMalformed(
            f"the {key_name} entry ({len(certificate)} bytes) is not one DER certificate"
        )
    else:
        evidence["certificate"] = base64.b64encode(certificate).decode()
    if product is not None:
        evidence["product"] = product
    return evidence


def _tdx_layout(raw: bytes) -> tuple[int, int]:
    """(offset of REPORTDATA, offset of the signature-data length) for a v4 or v5 quote."""
    version, _att_key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    if tee_type != _TDX_TEE_TYPE:
        raise TsmMalformed(f"the tdx_guest outblob has TEE type 0x{tee_type:x}, not TDX (0x81)")
    if version == 4:
        return _TDX_HEADER + _TDX_REPORT_DATA_IN_BODY, _TDX_HEADER + _TDX_BODY_SIZES[2]
    if version == 5:
        body_type, body_size = struct.unpack_from("<HI", raw, _TDX_HEADER)
        if _TDX_BODY_SIZES.get(body_type) != body_size:
            raise TsmMalformed(
                f"the v5 quote's body type {body_type} with size {body_size} is not a TD report"
            )
        body = _TDX_HEADER + 6
        return body + _TDX_REPORT_DATA_IN_BODY, body + body_size
    raise TsmMalformed(f"the tdx_guest outblob is a version {version} quote, not 4 or 5")


def tdx_evidence(report: TsmReport, binding: bytes) -> dict[str, Any]:
    """The TDX evidence for a tdx_guest report: the quote as the quoting enclave made it."""
    raw = report.outblob
    if len(raw) < _TDX_HEADER + 6:
        raise TsmMalformed(f"the tdx_guest outblob is {len(raw)} bytes: too short for a TDX quote")
    report_data_at, signature_length_at = _tdx_layout(raw)
    if len(raw) < signature_length_at + 4:
        raise TsmMalformed(f"the tdx_guest outblob is {len(raw)} bytes: too short for its TD report body")
    (signature_length,) = struct.unpack_from("<I", raw, signature_length_at)
    if signature_length_at + 4 + signature_length > len(raw):
        raise TsmMalformed(
            f"the quote declares {signature_length} bytes of signature data, but only "
            f"{len(raw) - signature_length_at - 4} follow: it was truncated"
        )
    _check_report_data(
        raw[report_data_at : report_data_at + _REPORT_DATA_BYTES], binding, "TDX quote's REPORTDATA"
    )
    return {"tee": TEE_TDX, "quote": base64.b64encode(raw).decode()}


def loader_collector(tee: str, args: argparse.Namespace, pcr_selection: str) -> TsmCollector:
    """The loader's collector for ``"tee": "sev-snp"`` or ``"tdx"`` (clients/loader/parts.py); PCR
    selections are the TPM's, not used here."""
    return TsmCollector(tee, root=Path(args.tsm_root))
