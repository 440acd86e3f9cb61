"""What policy code knows about claims: their shape and limits, and the format of the claims that
reference values name (DESIGN.md, "Claims").

Two uses. :func:`check_claims` is the gate in front of evaluation: claims outside :data:`CLAIM_LIMITS` are
refused (the CEL cost bound assumes them). :func:`claim_format` tells how a reference value for a claim
must look, so that a typo'd digest or a status Intel does not define is refused when the set is stored
rather than silently never matching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from keyserver.evidence.claims import (
    TEE_AWS_NITRO,
    TEE_AZURE_SNP_VTPM,
    TEE_AZURE_TDX_VTPM,
    TEE_NVIDIA_GPU,
    TEE_SEV_SNP,
    TEE_TDX,
    TEE_TPM,
    TEES,
)
from policy.cel import CLAIM_LIMITS, ClaimLimits

__all__ = ["TEES", "ClaimFormat", "Kind", "check_claims", "claim_format", "tee_prefix", "tee_prefixes"]

INT_MIN = -(1 << 63)
UINT_MAX = (1 << 64) - 1

_PREFIX = {TEE_SEV_SNP: "snp.", TEE_TDX: "tdx.", TEE_TPM: "tpm.", TEE_NVIDIA_GPU: "gpu."}
# Azure CVM evidence carries two layers (hardware report + vTPM) and the paravisor's claims; a reference
# value set for it may pin any of them.
_PREFIXES: dict[str, tuple[str, ...]] = {
    **{tee: (prefix,) for tee, prefix in _PREFIX.items()},
    TEE_AZURE_SNP_VTPM: ("snp.", "tpm.", "azure."),
    TEE_AZURE_TDX_VTPM: ("tdx.", "tpm.", "azure."),
    TEE_AWS_NITRO: ("nitro.",),
}


def tee_prefix(tee: str) -> str:
    return _PREFIXES[tee][0]


def tee_prefixes(tee: str) -> tuple[str, ...]:
    """The claim-name prefixes a reference value set for ``tee`` may pin."""
    return _PREFIXES[tee]


class Kind(Enum):
    HEX = "hex"  # lowercase hex of a fixed (or any even) number of bytes
    INT = "int"  # non-negative integer (versions, SVNs, TCB components)
    BOOL = "bool"
    ENUM = "enum"  # one of a fixed set of strings
    LIST = "list"  # a list of strings: not something a reference value can pin (write a rule)
    SCALAR = "scalar"  # a claim this module does not know: any string, integer or boolean


@dataclass(frozen=True)
class ClaimFormat:
    kind: Kind
    hex_bytes: int | None = None  # HEX: exact length in bytes; None for "any even length"
    choices: frozenset[str] = frozenset()  # ENUM


_HEX48 = ("measurement", "id_key_digest", "author_key_digest")
_HEX: dict[str, int | None] = {
    **{f"snp.{n}": 48 for n in _HEX48},
    "snp.host_data": 32,
    "snp.family_id": 16,
    "snp.image_id": 16,
    "snp.chip_id": 64,
    "snp.report_id": 32,
    "snp.report_id_ma": 32,
    "snp.signing_cert_sha256": 32,
    **{
        f"tdx.{n}": 48
        for n in (
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "mrseam",
            "mrsignerseam",
            "mrconfigid",
            "mrowner",
        )
    },
    "tdx.mrownerconfig": 48,
    "tdx.td_attributes": 8,
    "tdx.xfam": 8,
    "tdx.seam_attributes": 8,
    "tdx.tee_tcb_svn": 16,
    "tdx.fmspc": 6,
    "tdx.pce_id": 2,
    "tdx.cpu_svn": 16,
    "tdx.qe_mrenclave": 32,
    "tdx.qe_mrsigner": 32,
    "tpm.ak_name": None,
    # An nvidia-gpu set pins every GPU of a composite release (policy/gpu.py).
    "gpu.fwid": 48,
    "gpu.measurements_sha384": 48,
    "gpu.leaf_sha256": 32,
    "gpu.root_sha256": 32,
    "azure.runtime_data_sha256": 32,
    "nitro.signing_cert_sha256": 32,
    "nitro.public_key_sha256": 32,
}
GPU_MEASUREMENT_NAME = re.compile(r"^gpu\.measurement\.([1-9]|[1-5][0-9]|6[0-4])\Z")
PCR_NAME = re.compile(r"^tpm\.pcrs\.(sha1|sha256|sha384)\.([0-9]|1[0-9]|2[0-3])\Z")
_PCR_BYTES = {"sha1": 20, "sha256": 32, "sha384": 48}
NITRO_PCR_NAME = re.compile(r"^nitro\.pcrs\.([0-9]|[12][0-9]|3[01])\Z")
_INT = re.compile(
    r"^(snp\.(version|guest_svn|policy|vmpl|signature_algo|platform_info|signer_info|policy_abi_major"
    r"|policy_abi_minor|(current|committed)_(major|minor|build)"
    r"|(reported|current|committed|launch)_tcb\.(bootloader|tee|snp|microcode|fmc))"
    r"|tdx\.(quote_version|module_svn|module_major_version|pce_svn|qe_svn|tcb_evaluation_data_number)"
    r"|tpm\.(clock|reset_count|restart_count|firmware_version)"
    r"|nitro\.timestamp)$"
)
_BOOL = re.compile(
    r"^(snp\.(policy_[a-z0-9_]+|platform_[a-z0-9_]+|author_key_en|mask_chip_key|chip_id_masked)"
    r"|tpm\.(secure_boot|clock_safe)|gpu\.(nvdec0_disabled|report_fwid_present|cc_mode_attested)"
    r"|azure\.(secure_boot|tpm_enabled|tpm_persisted|console_enabled))$"
)
# Intel's TCB statuses (the TCB-level rule the TDX verifier implements; "Revoked" never reaches a policy).
TDX_TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    }
)
_ENUM: dict[str, frozenset[str]] = {
    "snp.product": frozenset({"Milan", "Genoa", "Turin"}),
    "snp.signing_key": frozenset({"vcek", "vlek"}),
    "tdx.tcb_status": TDX_TCB_STATUSES,
    "tdx.platform_tcb_status": TDX_TCB_STATUSES,
    "tdx.module_tcb_status": TDX_TCB_STATUSES,
    "tdx.qe_tcb_status": TDX_TCB_STATUSES,
    "gpu.arch": frozenset({"hopper", "blackwell"}),
    "gpu.revocation": frozenset({"good", "not-checked"}),
}
_LIST = frozenset(
    {
        "tdx.advisory_ids",
        "tpm.efi_apps",
        "tpm.eventlog.digest_mismatches",
        "gpu.measurements",
        "loader.program_signers",
        "loader.classifier_keys",
    }
)
CLAIM_NAME = re.compile(r"^(snp|tdx|tpm|gpu|azure|nitro)\.[a-z0-9_]+(\.[a-z0-9_]+)*$")


def claim_format(name: str) -> ClaimFormat:
    if name in _HEX:
        return ClaimFormat(Kind.HEX, _HEX[name])
    pcr = PCR_NAME.match(name)
    if pcr:
        return ClaimFormat(Kind.HEX, _PCR_BYTES[pcr.group(1)])
    if GPU_MEASUREMENT_NAME.fullmatch(name):
        return ClaimFormat(Kind.HEX, 48)
    if NITRO_PCR_NAME.match(name):
        return ClaimFormat(Kind.HEX, 48)  # SHA-384 (the document's digest must be SHA384)
    if _INT.fullmatch(name):
        return ClaimFormat(Kind.INT)
    if _BOOL.fullmatch(name):
        return ClaimFormat(Kind.BOOL)
    if name in _ENUM:
        return ClaimFormat(Kind.ENUM, choices=_ENUM[name])
    if name in _LIST:
        return ClaimFormat(Kind.LIST)
    return ClaimFormat(Kind.SCALAR)


def _value_problem(name: str, value: object, limits: ClaimLimits) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT_MIN <= value <= UINT_MAX else f"claim {name!r} is an integer outside 64 bits"
    if isinstance(value, str):
        if len(value) > limits.max_string_chars:
            return f"claim {name!r} is {len(value)} characters long (limit {limits.max_string_chars})"
        return None
    if isinstance(value, list):
        if len(value) > limits.max_list_items:
            return f"claim {name!r} has {len(value)} items (limit {limits.max_list_items})"
        for item in value:
            if not isinstance(item, str):
                return f"claim {name!r} is a list holding a {type(item).__name__}; claim lists hold strings"
            if len(item) > limits.max_item_chars:
                chars, limit = len(item), limits.max_item_chars
                return f"an item of claim {name!r} is {chars} characters long (limit {limit})"
        return None
    return (
        f"claim {name!r} is a {type(value).__name__}; claims are strings, integers, booleans, null or lists"
    )


def check_claims(claims: object, limits: ClaimLimits = CLAIM_LIMITS) -> str | None:
    """``None`` when ``claims`` is a claim set within the limits; otherwise what is wrong with it."""
    if not isinstance(claims, Mapping):
        return f"the claims are a {type(claims).__name__}, not an object"
    if len(claims) > limits.max_claims:
        return f"there are {len(claims)} claims (limit {limits.max_claims})"
    for name, value in claims.items():
        if not isinstance(name, str) or not name:
            return "a claim name is not a non-empty string"
        if len(name) > limits.max_name_chars:
            return f"a claim name is {len(name)} characters long (limit {limits.max_name_chars})"
        problem = _value_problem(name, value, limits)
        if problem:
            return problem
    return None
