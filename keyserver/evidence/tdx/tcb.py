"""TCB appraisal of a verified TDX quote against (verified) collateral, following Intel's QVL.

This is still *verification* in the DESIGN.md sense: it reports Intel's verdict on the platform as claims
(``tdx.tcb_status``, ``tdx.advisory_ids``); whether an ``OutOfDate`` platform may receive a key is the
release policy's decision. Only ``Revoked`` and "no TCB level matches" are errors here, as in Intel's QVL.

Steps (Intel QVL ``QuoteVerifier::verify`` and ``Checks/TcbLevelCheck.cpp``, ``Checks/TdxModuleCheck.cpp``;
PCS API v4 "TDX TCB Info" and "Enclave Identity" verification instructions):

1. FMSPC and PCE-ID of the PCK certificate equal those of the TCB info (4.1.2.4.10).
2. TDX module identity (4.1.2.4.11): with TEE_TCB_SVN[1] (module major version) > 0 the expected
   MRSIGNERSEAM / SEAM attributes come from ``tdxModuleIdentities[id == "TDX_%02X" % major]`` (missing →
   ``tdx-module-mismatch``), otherwise from ``tdxModule``. MRSIGNERSEAM must be equal; SEAMATTRIBUTES must
   equal the expected attributes under the mask (PCS API) and, as Intel's QVL requires, be zero.
3. QE identity (4.1.2.4.14-15): MRSIGNER and ISVPRODID equal; MISCSELECT and ATTRIBUTES equal under their
   masks; QE ISVSVN selects the first identity level (ISVSVN descending) with ``isvsvn <= QE ISVSVN``.
4. Platform TCB level (4.1.2.4.17, **Intel's rule**): walking the levels in QVL order, the first level
   whose 16 SGX components are all <= the PCK certificate's and whose PCESVN <= the PCK's, *and* whose
   TDX components are all <= TEE_TCB_SVN -- compared **from index 2 when TEE_TCB_SVN[1] > 0** (bytes 0-1
   are then the module's minor SVN and major version, judged by the module identity instead), from index 0
   otherwise. (dcap-qvl compares all 16; that disagrees with Intel on e.g. the GCP and Azure quotes.)
5. TDX module TCB (4.1.2.4.17.4.1): when TEE_TCB_SVN[1] > 0, the first level of the module identity with
   ``isvsvn <= TEE_TCB_SVN[0]``.
6. Convergence: module ``OutOfDate`` turns UpToDate/SWHardeningNeeded into OutOfDate and the
   Configuration* statuses into OutOfDateConfigurationNeeded; module ``Revoked`` → Revoked. Then the QE
   status is folded in the same way (``convergeTcbStatusWithQeTcbStatus``).

Advisory IDs are the union of those of the matched platform level, module level and QE level.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keyserver.errors import EvidenceError

from .collateral import IdentityTcbLevel, QeIdentity, TcbInfo, TcbLevel, TdxModule
from .pck import PckExtensions
from .quote import EnclaveReport, TdReportBody

NOT_FOUND = "tcb-level-not-found"


@dataclass(frozen=True)
class TcbEvaluation:
    status: str  # the converged status (what ``tdx.tcb_status`` reports)
    advisory_ids: tuple[str, ...]
    platform_level: TcbLevel
    module_identity_id: str | None  # None when TEE_TCB_SVN[1] == 0 (no module identity applies)
    module_level: IdentityTcbLevel | None
    qe_level: IdentityTcbLevel
    tcb_evaluation_data_number: int

    @property
    def tcb_date(self) -> datetime:
        return self.platform_level.tcb_date


def _masked_equal(a: bytes, b: bytes, mask: bytes) -> bool:
    return len(a) == len(b) == len(mask) and all(
        (x & m) == (y & m) for x, y, m in zip(a, b, mask, strict=True)
    )


def module_id_for(tee_tcb_svn: bytes) -> str:
    return f"TDX_{tee_tcb_svn[1]:02X}"


def check_tdx_module(tcb_info: TcbInfo, body: TdReportBody) -> tuple[str | None, TdxModule]:
    """Step 2: check MRSIGNERSEAM/SEAMATTRIBUTES; return (identity id or None, the expected module)."""
    identity_id: str | None = None
    expected = tcb_info.tdx_module
    if body.tee_tcb_svn[1] > 0:
        identity_id = module_id_for(body.tee_tcb_svn)
        found = [ident for ident in tcb_info.tdx_module_identities if ident.id == identity_id]
        if not found:
            raise EvidenceError(
                "tdx-module-mismatch",
                f"the TD runs TDX module major version {body.tee_tcb_svn[1]} but the TCB info has no "
                f"tdxModuleIdentities entry {identity_id}: fetch current TCB info for this FMSPC",
            )
        expected = found[0].module
    if body.mrsignerseam != expected.mrsigner:
        raise EvidenceError(
            "tdx-module-mismatch",
            f"MRSIGNERSEAM {body.mrsignerseam.hex()} is not the TDX module signer in the TCB info "
            f"({expected.mrsigner.hex()}): the TDX module is not Intel's",
        )
    if not _masked_equal(body.seam_attributes, expected.attributes, expected.attributes_mask) or any(
        body.seam_attributes
    ):
        raise EvidenceError(
            "tdx-module-mismatch",
            f"SEAMATTRIBUTES {body.seam_attributes.hex()} do not match the TCB info "
            f"({expected.attributes.hex()} under mask {expected.attributes_mask.hex()}) or are not zero",
        )
    return identity_id, expected


def check_qe_identity(identity: QeIdentity, report: EnclaveReport) -> IdentityTcbLevel:
    """Step 3: the QE report against the TD_QE identity; return the matched QE TCB level."""
    reason = "qe-identity-mismatch"
    if report.mrsigner != identity.mrsigner:
        raise EvidenceError(
            reason,
            f"the QE's MRSIGNER {report.mrsigner.hex()} is not Intel's TD_QE signer "
            f"{identity.mrsigner.hex()}",
        )
    if report.isv_prod_id != identity.isv_prod_id:
        raise EvidenceError(
            reason, f"the QE's ISVPRODID {report.isv_prod_id} is not the TD_QE's ({identity.isv_prod_id})"
        )
    if (report.miscselect & identity.miscselect_mask) != (identity.miscselect & identity.miscselect_mask):
        raise EvidenceError(
            reason, f"the QE's MISCSELECT {report.miscselect:08x} does not match the TD_QE identity"
        )
    if not _masked_equal(report.attributes, identity.attributes, identity.attributes_mask):
        raise EvidenceError(
            reason,
            f"the QE's ATTRIBUTES {report.attributes.hex()} do not match the TD_QE identity "
            "(e.g. a debug QE)",
        )
    for level in identity.tcb_levels:
        if report.isv_svn >= level.isvsvn:
            return level
    raise EvidenceError(
        NOT_FOUND, f"the QE's ISVSVN {report.isv_svn} is below every TCB level of the TD_QE identity"
    )


def tdx_components_start(tee_tcb_svn: bytes) -> int:
    """Intel QVL ``isTdxTcbHigherOrEqual``: skip bytes 0-1 when the module major version is non-zero."""
    return 2 if tee_tcb_svn[1] > 0 else 0


def match_tcb_level(tcb_info: TcbInfo, pck: PckExtensions, tee_tcb_svn: bytes) -> TcbLevel:
    """Step 4 (Intel's rule, see module docstring)."""
    start = tdx_components_start(tee_tcb_svn)
    sgx_matched = False
    for level in tcb_info.tcb_levels:
        sgx_ok = all(
            own >= required
            for own, required in zip(pck.tcb.sgx_components, level.sgx_components, strict=True)
        )
        if not sgx_ok or pck.tcb.pce_svn < level.pce_svn:
            continue
        sgx_matched = True
        if all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16)):
            return level
    what = "TDX TCB SVNs (TEE_TCB_SVN)" if sgx_matched else "SGX TCB SVNs / PCESVN of the PCK certificate"
    raise EvidenceError(
        NOT_FOUND,
        f"no TCB level of the TCB info (FMSPC {tcb_info.fmspc.hex()}, evaluation data number "
        f"{tcb_info.tcb_evaluation_data_number}) matches the platform: its {what} are below every level "
        f"(PCK SGX SVNs {list(pck.tcb.sgx_components)}, PCESVN {pck.tcb.pce_svn}, TEE_TCB_SVN "
        f"{tee_tcb_svn.hex()}). The platform's TCB is not supported; update its firmware/TDX module.",
    )


def _converge(status: str, other: str) -> str:
    """QVL ``convergeTcbStatusWithTdxModuleStatus`` / ``convergeTcbStatusWithQeTcbStatus``."""
    if other == "OutOfDate":
        if status in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    if other == "Revoked":
        return "Revoked"
    return status


def evaluate_tcb(
    tcb_info: TcbInfo,
    qe_identity: QeIdentity,
    *,
    body: TdReportBody,
    qe_report: EnclaveReport,
    pck: PckExtensions,
) -> TcbEvaluation:
    """Steps 1-6 (see module docstring). Raises on mismatches, "no level" and a Revoked result."""
    if pck.fmspc != tcb_info.fmspc:
        raise EvidenceError(
            "collateral-mismatch",
            f"the TCB info is for FMSPC {tcb_info.fmspc.hex()} but the PCK certificate's FMSPC is "
            f"{pck.fmspc.hex()}: fetch the TCB info for this platform's FMSPC",
        )
    if pck.pce_id != tcb_info.pce_id:
        raise EvidenceError(
            "collateral-mismatch",
            f"the TCB info is for PCE-ID {tcb_info.pce_id.hex()} "
            f"but the PCK certificate's is {pck.pce_id.hex()}",
        )
    identity_id, _ = check_tdx_module(tcb_info, body)
    qe_level = check_qe_identity(qe_identity, qe_report)
    platform_level = match_tcb_level(tcb_info, pck, body.tee_tcb_svn)
    module_level: IdentityTcbLevel | None = None
    if identity_id is not None:
        identity = next(i for i in tcb_info.tdx_module_identities if i.id == identity_id)
        module_svn = body.tee_tcb_svn[0]
        module_level = next((lv for lv in identity.tcb_levels if module_svn >= lv.isvsvn), None)
        if module_level is None:
            raise EvidenceError(
                NOT_FOUND,
                f"the TDX module SVN {module_svn} (TEE_TCB_SVN[0]) is below every TCB level of {identity_id}",
            )
    status = platform_level.tcb_status
    if module_level is not None:
        status = _converge(status, module_level.tcb_status)
    status = _converge(status, qe_level.tcb_status)
    advisories: list[str] = []
    for level_ids in (
        platform_level.advisory_ids,
        module_level.advisory_ids if module_level else (),
        qe_level.advisory_ids,
    ):
        advisories.extend(a for a in level_ids if a not in advisories)
    if status == "Revoked":
        raise EvidenceError(
            "tcb-revoked",
            f"Intel reports this platform's TCB as Revoked (platform level {platform_level.tcb_date.date()} "
            f"{platform_level.tcb_status}, module {module_level.tcb_status if module_level else 'n/a'}, QE "
            f"{qe_level.tcb_status}; advisories {', '.join(advisories) or 'none'}); it must not be trusted",
        )
    return TcbEvaluation(
        status=status,
        advisory_ids=tuple(sorted(advisories)),
        platform_level=platform_level,
        module_identity_id=identity_id,
        module_level=module_level,
        qe_level=qe_level,
        tcb_evaluation_data_number=tcb_info.tcb_evaluation_data_number,
    )
