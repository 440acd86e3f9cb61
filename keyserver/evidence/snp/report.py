"""Parser for the AMD SEV-SNP ``ATTESTATION_REPORT`` (versions 2 and 3).

Layout: *SEV Secure Nested Paging Firmware ABI Specification* (AMD pub. 56860), §7.3 "Attestation",
table "ATTESTATION_REPORT Structure" (Table 23 in rev. 1.57). All integers are little-endian. The report
is exactly 0x4A0 (1184) bytes; the signature covers bytes 0x000..0x29F.

Reserved fields. The spec marks every reserved range "Reserved. Must be zero" (MBZ). This parser rejects
a report in which any of them is non-zero, because a non-zero reserved byte is a field we do not
understand (DESIGN.md: fail closed on an unknown field). The ranges checked are the ones go-sev-guest
also checks, plus the unsigned tail of the signature structure:

* ``0x04C..0x04F``         reserved after SIGNER_INFO
* ``0x188..0x19F`` (v2) / ``0x18B..0x19F`` (v3: 0x188..0x18A carry CPUID family/model/stepping)
* ``0x1EB`` and ``0x1EF``  reserved bytes after CURRENT_MAJOR / COMMITTED_MAJOR
* ``0x1F8..0x29F``         reserved (v5 reports put LAUNCH_MIT_VECTOR/CURRENT_MIT_VECTOR here; v5 is
  not supported, see below)
* ``0x330..0x49F``         reserved tail of the "ECDSA P-384 with SHA-384 Signature" structure
  (R at +0x00, S at +0x48, both 72 bytes little-endian, then 0x90..0x1FF MBZ)
* SIGNER_INFO bits 31:5, and SIGNING_KEY values 2..6 (reserved encodings)
* GUEST_POLICY bit 17 (reserved, must be **one**) and bits 63:26 (reserved, must be zero); spec §4.3
  "Guest Policy", table "GUEST_POLICY Fields"

Not checked on purpose: PLATFORM_INFO's undefined bits (the platform describes itself; newer firmware
adds bits such as TIO_EN, and rejecting them would reject genuine reports of newer platforms without
making anything safer - the value is exposed as a claim), VMPL's range (exposed as a claim), and the
reserved bytes inside TCB_VERSION values, whose position depends on the product (Turin differs) and are
therefore checked by :func:`decode_tcb` once the product is known.

Versions: 2 (firmware < 1.55) and 3 (adds CPUID_FAM_ID/CPUID_MOD_ID/CPUID_STEP at 0x188..0x18A) are
accepted. Anything else (1, 4, 5, ...) is rejected: a later layout may give meaning to bytes this parser
treats as reserved.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from keyserver.errors import EvidenceError

REPORT_SIZE = 0x4A0
"""Size of ATTESTATION_REPORT in bytes (1184)."""
SIGNED_LENGTH = 0x2A0
"""The signature covers bytes 0x000..0x29F of the report."""
SIGNATURE_OFFSET = 0x2A0
ECDSA_COMPONENT_SIZE = 72
"""R and S are 72-byte little-endian fields (P-384 values zero-extended)."""
P384_COMPONENT_SIZE = 48

SUPPORTED_VERSIONS = (2, 3)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

# GUEST_POLICY bits (spec §4.3, "GUEST_POLICY Fields").
POLICY_SMT_BIT = 16
POLICY_RESERVED_MUST_BE_ONE_BIT = 17
POLICY_MIGRATE_MA_BIT = 18
POLICY_DEBUG_BIT = 19
POLICY_SINGLE_SOCKET_BIT = 20
POLICY_CXL_ALLOW_BIT = 21
POLICY_MEM_AES_256_XTS_BIT = 22
POLICY_RAPL_DIS_BIT = 23
POLICY_CIPHERTEXT_HIDING_BIT = 24
POLICY_PAGE_SWAP_DISABLE_BIT = 25
POLICY_HIGHEST_DEFINED_BIT = 25

# PLATFORM_INFO bits (spec §7.3, table "PLATFORM_INFO Field").
PLATFORM_INFO_BITS = {
    "smt_en": 0,
    "tsme_en": 1,
    "ecc_en": 2,
    "rapl_dis": 3,
    "ciphertext_hiding_en": 4,
    "alias_check_complete": 5,
}


class SnpProduct(StrEnum):
    """AMD EPYC product lines with SEV-SNP, named as the AMD Key Distribution Service names them."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def parse(cls, name: str) -> SnpProduct:
        """Case-insensitive lookup; ``ValueError`` for an unknown name (a caller/usage error)."""
        for product in cls:
            if product.value.lower() == name.strip().lower():
                return product
        raise ValueError(f"unknown SEV-SNP product {name!r}; expected one of Milan, Genoa, Turin")


class SigningKey(IntEnum):
    """SIGNER_INFO.SIGNING_KEY (bits 4:2) encodings; 2..6 are reserved."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class SignerInfo:
    """The 32-bit field at 0x048 (spec: "bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY")."""

    raw: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey


@dataclass(frozen=True)
class Cpuid:
    """CPUID_FAM_ID / CPUID_MOD_ID / CPUID_STEP (v3, 0x188..0x18A): combined family and model."""

    family: int
    model: int
    stepping: int

    def hex(self) -> str:
        return bytes((self.family, self.model, self.stepping)).hex()

    @property
    def is_zero(self) -> bool:
        return self.family == 0 and self.model == 0 and self.stepping == 0


@dataclass(frozen=True)
class Tcb:
    """A decoded TCB_VERSION (spec §2.2, table "TCB_VERSION Structure").

    Milan/Genoa: byte 0 BOOT_LOADER, 1 TEE, 2..5 reserved, 6 SNP, 7 MICROCODE.
    Turin:       byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP, 4..6 reserved, 7 MICROCODE.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None


def decode_tcb(raw: bytes, product: SnpProduct, field: str) -> Tcb:
    """Decode an 8-byte TCB_VERSION for ``product``; non-zero reserved bytes are rejected."""
    if len(raw) != 8:
        raise EvidenceError("report-malformed", f"{field} must be 8 bytes, got {len(raw)}")
    if product is SnpProduct.TURIN:
        tcb = Tcb(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        reserved = raw[4:7]
    else:
        tcb = Tcb(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], fmc=None)
        reserved = raw[2:6]
    if any(reserved):
        raise EvidenceError(
            "report-reserved-field",
            f"{field} ({raw.hex()}) has non-zero reserved bytes for the {product.value} TCB_VERSION "
            "layout; the report is not one this verifier understands (is the product right?)",
        )
    return tcb


@dataclass(frozen=True)
class AttestationReport:
    """Every field of ATTESTATION_REPORT (v2/v3). Byte fields are kept as ``bytes``; TCB_VERSION fields
    are kept raw (8 bytes) because their layout depends on the product (see :func:`decode_tcb`)."""

    raw: bytes
    version: int  # 0x000
    guest_svn: int  # 0x004
    policy: int  # 0x008
    family_id: bytes  # 0x010, 16 bytes
    image_id: bytes  # 0x020, 16 bytes
    vmpl: int  # 0x030
    signature_algo: int  # 0x034
    current_tcb: bytes  # 0x038, TCB_VERSION
    platform_info: int  # 0x040
    signer_info: SignerInfo  # 0x048
    report_data: bytes  # 0x050, 64 bytes
    measurement: bytes  # 0x090, 48 bytes
    host_data: bytes  # 0x0C0, 32 bytes
    id_key_digest: bytes  # 0x0E0, 48 bytes
    author_key_digest: bytes  # 0x110, 48 bytes
    report_id: bytes  # 0x140, 32 bytes
    report_id_ma: bytes  # 0x160, 32 bytes
    reported_tcb: bytes  # 0x180, TCB_VERSION
    cpuid: Cpuid | None  # 0x188..0x18A, v3 only
    chip_id: bytes  # 0x1A0, 64 bytes
    committed_tcb: bytes  # 0x1E0, TCB_VERSION
    current_build: int  # 0x1E8
    current_minor: int  # 0x1E9
    current_major: int  # 0x1EA
    committed_build: int  # 0x1EC
    committed_minor: int  # 0x1ED
    committed_major: int  # 0x1EE
    launch_tcb: bytes  # 0x1F0, TCB_VERSION
    signature_r: bytes  # 0x2A0, 72 bytes little-endian
    signature_s: bytes  # 0x2E8, 72 bytes little-endian

    @property
    def signed_bytes(self) -> bytes:
        """Bytes 0x000..0x29F: what the AMD-SP signed."""
        return self.raw[:SIGNED_LENGTH]

    @property
    def debug(self) -> bool:
        """GUEST_POLICY bit 19 (DEBUG): the hypervisor may decrypt guest memory."""
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    def policy_bit(self, bit: int) -> bool:
        return bool(self.policy >> bit & 1)

    @property
    def chip_id_masked(self) -> bool:
        """CHIP_ID is all zero: MASK_CHIP_ID was set on the platform (or the report is VLEK-signed)."""
        return not any(self.chip_id)


def _u32(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", data, offset)[0]
    return value


def _u64(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<Q", data, offset)[0]
    return value


def _must_be_zero(data: bytes, lo: int, hi: int) -> None:
    if any(data[lo:hi]):
        raise EvidenceError(
            "report-reserved-field",
            f"reserved report bytes 0x{lo:03X}..0x{hi - 1:03X} must be zero but are {data[lo:hi].hex()}; "
            "this is not a v2/v3 SEV-SNP attestation report as specified by AMD (ABI spec 56860)",
        )


def parse_signer_info(raw: int) -> SignerInfo:
    """SIGNER_INFO (0x048): bits 31:5 MBZ; SIGNING_KEY 2..6 reserved."""
    if raw >> 5:
        raise EvidenceError(
            "report-reserved-field", f"SIGNER_INFO 0x{raw:08x} has reserved bits 31:5 set; they must be zero"
        )
    key = (raw >> 2) & 0b111
    if key not in (SigningKey.VCEK, SigningKey.VLEK, SigningKey.NONE):
        raise EvidenceError(
            "report-reserved-field",
            f"SIGNER_INFO.SIGNING_KEY is {key}, a reserved value (0 = VCEK, 1 = VLEK, 7 = none)",
        )
    return SignerInfo(
        raw=raw, author_key_en=bool(raw & 1), mask_chip_key=bool(raw & 2), signing_key=SigningKey(key)
    )


def _check_policy(policy: int) -> None:
    if not policy >> POLICY_RESERVED_MUST_BE_ONE_BIT & 1:
        raise EvidenceError(
            "report-reserved-field",
            f"GUEST_POLICY 0x{policy:x} has reserved bit 17 clear; the ABI spec requires it to be one",
        )
    if policy >> (POLICY_HIGHEST_DEFINED_BIT + 1):
        raise EvidenceError(
            "report-reserved-field",
            f"GUEST_POLICY 0x{policy:x} sets bits above {POLICY_HIGHEST_DEFINED_BIT} that this verifier does "
            "not know; refusing to interpret a guest policy it cannot fully read",
        )


def parse_report(data: bytes) -> AttestationReport:
    """Parse and structurally validate a raw 1184-byte SEV-SNP attestation report (v2 or v3).

    Raises :class:`EvidenceError` (``report-malformed``, ``report-unsupported-version``,
    ``report-reserved-field``, ``report-unsupported-signature-algorithm``) and nothing else for any input.
    This checks structure only; it does not verify the signature.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceError("report-malformed", "the attestation report must be bytes")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        what = "empty" if not data else f"{len(data)} bytes"
        raise EvidenceError(
            "report-malformed",
            f"an SEV-SNP attestation report is exactly {REPORT_SIZE} bytes, got {what}; pass the raw "
            "ATTESTATION_REPORT (the SNP_GET_REPORT guest request's report / configfs-tsm outblob), "
            "without any header or certificate table",
        )
    version = _u32(data, 0x000)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceError(
            "report-unsupported-version",
            f"attestation report version {version} is not supported; this verifier accepts versions 2 and 3",
        )
    policy = _u64(data, 0x008)
    _check_policy(policy)
    signature_algo = _u32(data, 0x034)
    if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise EvidenceError(
            "report-unsupported-signature-algorithm",
            f"SIGNATURE_ALGO is {signature_algo}; only 1 (ECDSA P-384 with SHA-384) is defined",
        )
    signer_info = parse_signer_info(_u32(data, 0x048))
    _must_be_zero(data, 0x04C, 0x050)
    if version >= 3:
        cpuid: Cpuid | None = Cpuid(family=data[0x188], model=data[0x189], stepping=data[0x18A])
        _must_be_zero(data, 0x18B, 0x1A0)
    else:
        cpuid = None
        _must_be_zero(data, 0x188, 0x1A0)
    _must_be_zero(data, 0x1EB, 0x1EC)
    _must_be_zero(data, 0x1EF, 0x1F0)
    _must_be_zero(data, 0x1F8, SIGNATURE_OFFSET)
    # Signature structure: R (72 B) then S (72 B) then reserved up to 0x200 bytes.
    sig_reserved = SIGNATURE_OFFSET + 2 * ECDSA_COMPONENT_SIZE
    _must_be_zero(data, sig_reserved, REPORT_SIZE)
    return AttestationReport(
        raw=data,
        version=version,
        guest_svn=_u32(data, 0x004),
        policy=policy,
        family_id=data[0x010:0x020],
        image_id=data[0x020:0x030],
        vmpl=_u32(data, 0x030),
        signature_algo=signature_algo,
        current_tcb=data[0x038:0x040],
        platform_info=_u64(data, 0x040),
        signer_info=signer_info,
        report_data=data[0x050:0x090],
        measurement=data[0x090:0x0C0],
        host_data=data[0x0C0:0x0E0],
        id_key_digest=data[0x0E0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid=cpuid,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_build=data[0x1E8],
        current_minor=data[0x1E9],
        current_major=data[0x1EA],
        committed_build=data[0x1EC],
        committed_minor=data[0x1ED],
        committed_major=data[0x1EE],
        launch_tcb=data[0x1F0:0x1F8],
        signature_r=data[SIGNATURE_OFFSET : SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE],
        signature_s=data[SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE : sig_reserved],
    )


def product_from_cpuid(cpuid: Cpuid) -> SnpProduct:
    """Map a v3 report's CPUID family/model to the product line whose AMD keys sign it.

    Family 0x19 (Zen 3/4): models 0x00-0x0F Milan; 0x10-0x1F Genoa; 0xA0-0xAF Bergamo/Siena, which
    AMD's KDS serves under "Genoa". Family 0x1A (Zen 5): models 0x00-0x11 Turin. Same ranges as
    virtee/sev ``Generation::identify_cpu``. Anything else is rejected (``unknown-product``).
    """
    family, model = cpuid.family, cpuid.model
    if family == 0x19:
        if model <= 0x0F:
            return SnpProduct.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return SnpProduct.GENOA
    elif family == 0x1A and model <= 0x11:
        return SnpProduct.TURIN
    raise EvidenceError(
        "unknown-product",
        f"the report's CPUID (family 0x{family:02x}, model 0x{model:02x}, stepping 0x{cpuid.stepping:x}) "
        "is not a known SEV-SNP product (Milan, Genoa, Turin)",
    )
