"""Intel TDX quote v4 parser (structure only: no signature, certificate or TCB checks happen here).

Layout: *Intel TDX DCAP Quoting Library API*, appendix "Quote Format" (TD quote v4):

=======  ======  ===============================================================
offset   size    field
=======  ======  ===============================================================
0        48      Quote Header: version (u16 = 4), attestation key type (u16, 2 = ECDSA-256-with-P-256),
                 TEE type (u32, 0x81 = TDX), 2 + 2 reserved bytes, QE vendor ID (16), user data (20)
48       584     TD Quote Body (TDREPORT fields: TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES,
                 TDATTRIBUTES, XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0-3, REPORTDATA)
632      4       Quote Signature Data Length (u32)
636      n       Quote Signature Data ("ECDSA 256-bit Quote Signature Data Structure"):
                 ECDSA signature r||s (64) over header||body, ECDSA attestation public key x||y (64),
                 Certification Data: type (u16), size (u32), data
=======  ======  ===============================================================

Certification data type 6 ("QE Report Certification Data") holds the QE report (an SGX REPORT body, 384
bytes), the QE report signature (64, by the PCK key), QE authentication data (u16 size + data) and a nested
certification data whose type must be 5 ("Concatenated PCK Cert Chain", PEM: PCK leaf, intermediate CA,
root CA). All integers are little-endian.

**Sizes are authoritative.** Every size field is checked against what it contains: the signature data must
be exactly 128 + 6 + certification data size bytes, the type-6 data exactly 384 + 64 + 2 + auth size + 6 +
inner size bytes. Anything that does not add up is ``quote-malformed``.

**Trailing bytes.** Bytes after the declared signature data (``636 + length``) are not part of the quote.
Real quotes carry them: go-tdx-guest's SPR sample ends with 39 ASCII bytes, the GCP sample is zero-padded
to 8000 bytes, Intel's QGS pads to a fixed buffer (70 zeros). They are *accepted and ignored*: nothing
after the declared length is read, signed or turned into a claim; :attr:`TdxQuote.trailing_bytes` reports
how many there were (for diagnostics only). This is what go-tdx-guest and dcap-qvl do; it is safe because
every byte that contributes to the verdict is inside a length-delimited, signed or certified region.

**Versions.** Only v4 is accepted. v5 quotes (TD report body type 2/3, TDX 1.5 "TD Quote Body v1.5",
with TEE_TCB_SVN2 and MRSERVICETD) and v3 (SGX) quotes are rejected with ``unsupported-version``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from keyserver.errors import EvidenceError

QUOTE_VERSION_4 = 4
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x00000081
CERT_DATA_TYPE_PCK_CHAIN = 5
CERT_DATA_TYPE_QE_REPORT = 6
# Intel's QE vendor ID (939A7233-F79C-4CA9-940A-0DB3957F0607). Intel's QVL refuses any other vendor.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

HEADER_SIZE = 48
TD_REPORT_BODY_SIZE = 584
SIGNED_SIZE = HEADER_SIZE + TD_REPORT_BODY_SIZE  # 632: the bytes the attestation key signs
SIG_DATA_OFFSET = SIGNED_SIZE + 4  # 636
ECDSA_SIG_SIZE = 64
ECDSA_P256_KEY_SIZE = 64
ENCLAVE_REPORT_SIZE = 384
CERT_DATA_HEADER_SIZE = 6  # u16 type + u32 size
MIN_QUOTE_SIZE = SIG_DATA_OFFSET + ECDSA_SIG_SIZE + ECDSA_P256_KEY_SIZE + CERT_DATA_HEADER_SIZE
# A real PCK chain is ~3.7 KB; anything near this bound is not a quote.
MAX_CERT_DATA_SIZE = 64 * 1024

_MALFORMED = "quote-malformed"


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes  # 4 bytes at offset 8; not interpreted (see module docs)
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """TD Quote Body (v4): the TDREPORT fields the TDX module reports for the TD."""

    tee_tcb_svn: bytes  # 16: [0] TDX module SVN (minor), [1] module major version, [2..] other TCB SVNs
    mrseam: bytes  # 48
    mrsignerseam: bytes  # 48
    seam_attributes: bytes  # 8
    td_attributes: bytes  # 8, bit 0 = DEBUG
    xfam: bytes  # 8
    mrtd: bytes  # 48
    mrconfigid: bytes  # 48
    mrowner: bytes  # 48
    mrownerconfig: bytes  # 48
    rtmrs: tuple[bytes, bytes, bytes, bytes]  # 4 x 48
    report_data: bytes  # 64

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.DEBUG (bit 0 of the little-endian 64-bit field)."""
        return bool(self.td_attributes[0] & 0x01)


@dataclass(frozen=True)
class EnclaveReport:
    """An SGX REPORT body (384 bytes), here the Quoting Enclave's report."""

    raw: bytes
    cpu_svn: bytes  # 16
    miscselect: int  # u32
    attributes: bytes  # 16
    mrenclave: bytes  # 32
    mrsigner: bytes  # 32
    isv_prod_id: int
    isv_svn: int
    report_data: bytes  # 64


@dataclass(frozen=True)
class TdxQuote:
    """A parsed TDX quote v4. ``signed_data`` is header||body, the bytes the attestation key signs."""

    header: QuoteHeader
    body: TdReportBody
    signed_data: bytes
    signature_data_length: int
    signature: bytes  # r||s, 64 bytes, big-endian each
    attestation_key: bytes  # x||y, 64 bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes  # r||s by the PCK key over qe_report.raw
    qe_auth_data: bytes
    pck_chain_pem: bytes  # the type-5 certification data, as found
    trailing_bytes: int  # bytes after the declared signature data; ignored


def _u16(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<H", data, offset)[0]
    return value


def _u32(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", data, offset)[0]
    return value


def parse_enclave_report(raw: bytes) -> EnclaveReport:
    """SGX REPORT body layout (SGX developer reference, ``sgx_report_body_t``): CPUSVN 0..16,
    MISCSELECT 16..20, reserved, ATTRIBUTES 48..64, MRENCLAVE 64..96, reserved, MRSIGNER 128..160,
    reserved, ISVPRODID 256..258, ISVSVN 258..260, reserved, REPORTDATA 320..384."""
    if len(raw) != ENCLAVE_REPORT_SIZE:
        raise EvidenceError(_MALFORMED, f"the QE report is {len(raw)} bytes, expected {ENCLAVE_REPORT_SIZE}")
    return EnclaveReport(
        raw=bytes(raw),
        cpu_svn=raw[0:16],
        miscselect=_u32(raw, 16),
        attributes=raw[48:64],
        mrenclave=raw[64:96],
        mrsigner=raw[128:160],
        isv_prod_id=_u16(raw, 256),
        isv_svn=_u16(raw, 258),
        report_data=raw[320:384],
    )


def _parse_body(b: bytes) -> TdReportBody:
    # TD Quote Body v4 offsets, relative to the body start (quote offset 48).
    return TdReportBody(
        tee_tcb_svn=b[0:16],
        mrseam=b[16:64],
        mrsignerseam=b[64:112],
        seam_attributes=b[112:120],
        td_attributes=b[120:128],
        xfam=b[128:136],
        mrtd=b[136:184],
        mrconfigid=b[184:232],
        mrowner=b[232:280],
        mrownerconfig=b[280:328],
        rtmrs=(b[328:376], b[376:424], b[424:472], b[472:520]),
        report_data=b[520:584],
    )


def _check_header(data: bytes) -> QuoteHeader:
    if len(data) < 2:
        raise EvidenceError(_MALFORMED, f"the quote is {len(data)} bytes: too short to hold a version")
    version = _u16(data, 0)
    if version != QUOTE_VERSION_4:
        if version == 5:
            detail = "a v5 quote (TDX 1.5 TD quote body with TEE_TCB_SVN2/MRSERVICETD); only v4 is supported"
        elif version == 3:
            detail = "a v3 quote is an SGX enclave quote, not a TDX quote"
        else:
            detail = "not a known Intel quote version"
        raise EvidenceError(
            "unsupported-version", f"quote version {version}: {detail}. Send a TDX quote v4 (ECDSA-256)."
        )
    if len(data) < MIN_QUOTE_SIZE:
        raise EvidenceError(
            _MALFORMED, f"the quote is {len(data)} bytes; a TDX v4 quote is at least {MIN_QUOTE_SIZE}"
        )
    att_key_type = _u16(data, 2)
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise EvidenceError(
            "unsupported-attestation-key-type",
            f"attestation key type {att_key_type} is not supported; only 2 (ECDSA-256 with P-256) is",
        )
    tee_type = _u32(data, 4)
    if tee_type != TEE_TYPE_TDX:
        raise EvidenceError(
            "unsupported-tee-type",
            f"TEE type 0x{tee_type:08x} is not TDX (0x00000081); is this an SGX quote?",
        )
    qe_vendor_id = data[12:28]
    if qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise EvidenceError(
            "unsupported-qe-vendor",
            f"QE vendor ID {qe_vendor_id.hex()} is not Intel's ({INTEL_QE_VENDOR_ID.hex()}); "
            "only quotes from Intel's quoting enclave can be verified",
        )
    return QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        reserved=data[8:12],
        qe_vendor_id=qe_vendor_id,
        user_data=data[28:48],
    )


def _cert_data(region: bytes, offset: int, what: str) -> tuple[int, bytes, int]:
    """Read a Certification Data structure (u16 type, u32 size, data) at ``offset`` inside ``region``;
    return (type, data, end offset). The data must fit inside ``region``."""
    if offset + CERT_DATA_HEADER_SIZE > len(region):
        raise EvidenceError(_MALFORMED, f"the {what} header runs past the signature data")
    cd_type = _u16(region, offset)
    size = _u32(region, offset + 2)
    start = offset + CERT_DATA_HEADER_SIZE
    if size > MAX_CERT_DATA_SIZE or start + size > len(region):
        raise EvidenceError(
            _MALFORMED,
            f"the {what} declares {size} bytes but only {len(region) - start} remain in the declared "
            "signature data: the quote's size fields are inconsistent (truncated or edited quote)",
        )
    return cd_type, region[start : start + size], start + size


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a raw TDX v4 quote. Raises ``EvidenceError`` (``unsupported-version``, ``quote-malformed``,
    ``unsupported-attestation-key-type``, ``unsupported-tee-type``, ``unsupported-qe-vendor``,
    ``unsupported-certification-data``)."""
    data = bytes(data)
    header = _check_header(data)
    body = _parse_body(data[HEADER_SIZE:SIGNED_SIZE])
    sig_len = _u32(data, SIGNED_SIZE)
    end = SIG_DATA_OFFSET + sig_len
    if end > len(data):
        raise EvidenceError(
            _MALFORMED,
            f"the quote declares {sig_len} bytes of signature data but only {len(data) - SIG_DATA_OFFSET} "
            "follow: truncated quote",
        )
    sig_data = data[SIG_DATA_OFFSET:end]
    if len(sig_data) < ECDSA_SIG_SIZE + ECDSA_P256_KEY_SIZE + CERT_DATA_HEADER_SIZE:
        raise EvidenceError(_MALFORMED, f"the declared signature data ({sig_len} bytes) is too short")
    signature = sig_data[0:64]
    attestation_key = sig_data[64:128]

    outer_type, outer, outer_end = _cert_data(sig_data, 128, "certification data")
    if outer_end != len(sig_data):
        raise EvidenceError(
            _MALFORMED,
            f"the signature data length ({sig_len}) does not match its certification data "
            f"({outer_end} bytes used): the quote's size fields are inconsistent",
        )
    if outer_type != CERT_DATA_TYPE_QE_REPORT:
        raise EvidenceError(
            "unsupported-certification-data",
            f"certification data type {outer_type} is not supported; a TDX quote carries type 6 "
            "(QE report certification data)",
        )
    # QE Report Certification Data: report, its signature, QE auth data, nested certification data.
    if len(outer) < ENCLAVE_REPORT_SIZE + ECDSA_SIG_SIZE + 2:
        raise EvidenceError(_MALFORMED, "the QE report certification data is too short")
    qe_report = parse_enclave_report(outer[0:ENCLAVE_REPORT_SIZE])
    qe_report_signature = outer[ENCLAVE_REPORT_SIZE : ENCLAVE_REPORT_SIZE + ECDSA_SIG_SIZE]
    auth_off = ENCLAVE_REPORT_SIZE + ECDSA_SIG_SIZE
    auth_len = _u16(outer, auth_off)
    auth_end = auth_off + 2 + auth_len
    if auth_end > len(outer):
        raise EvidenceError(
            _MALFORMED, f"the QE authentication data ({auth_len} bytes) runs past its container"
        )
    qe_auth_data = outer[auth_off + 2 : auth_end]
    inner_type, inner, inner_end = _cert_data(outer, auth_end, "nested certification data")
    if inner_end != len(outer):
        raise EvidenceError(
            _MALFORMED,
            f"the QE report certification data is {len(outer)} bytes but its parts use {inner_end}: "
            "the quote's size fields are inconsistent",
        )
    if inner_type != CERT_DATA_TYPE_PCK_CHAIN:
        raise EvidenceError(
            "unsupported-certification-data",
            f"nested certification data type {inner_type} is not supported; only type 5 (PEM PCK "
            "certificate chain) is. Ask the platform to embed the PCK chain in the quote.",
        )
    return TdxQuote(
        header=header,
        body=body,
        signed_data=data[0:SIGNED_SIZE],
        signature_data_length=sig_len,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=inner,
        trailing_bytes=len(data) - end,
    )
