"""Certificate handling for SEV-SNP: decoding DER/PEM input, AMD's VCEK/VLEK extensions, RSA-PSS checks.

References: *Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification*
(AMD pub. 57230), §"VCEK Certificate" / "VLEK Certificate" (X.509 v3, RSASSA-PSS SHA-384 signature by
the ASK/ASVK, ECDSA P-384 subject key) and the table of AMD extensions (OID arc 1.3.6.1.4.1.3704.1):

===========================  ==========================================================
``.1``  structVersion        INTEGER
``.2``  productName          IA5String, e.g. ``Milan-B0`` (VCEK) or ``Milan`` (VLEK)
``.3.1`` blSPL               INTEGER, boot loader security patch level
``.3.2`` teeSPL              INTEGER
``.3.3`` snpSPL              INTEGER
``.3.4``-``.3.7`` spl_4..7   INTEGER, reserved (zero)
``.3.8`` ucodeSPL            INTEGER
``.3.9`` fmcSPL              INTEGER, Turin (Zen 5) only
``.4``  hwID                 the CHIP_ID: 64 bytes (Milan, Genoa) or 8 bytes (Turin), VCEK only
``.5``  cspId                IA5String, VLEK only: the cloud provider the VLEK was issued to
===========================  ==========================================================

The hwID extension exists in two encodings in the wild: the raw bytes as the extension value (older
KDS) and the bytes wrapped in a DER OCTET STRING (``04 40 ...``, newer KDS). Both are accepted; any other
shape is rejected.

Serial number 0: every VCEK/VLEK has serial number 0, which RFC 5280 forbids. ``cryptography`` parses it
with a ``CryptographyDeprecationWarning`` and announces that a future version will refuse it. We load
certificates inside ``warnings.catch_warnings`` (serialised by a lock), drop exactly that warning, treat
any *other* warning raised while parsing as a malformed certificate, and never read the leaf's serial
number afterwards. If a future ``cryptography`` refuses the certificate the verifier fails closed with
reason ``certificate-unparseable`` and a message that says why. (``catch_warnings`` swaps the process-wide
filter list; the lock serialises our uses, but another thread's warnings emitted during those few
microseconds could be captured instead of displayed - an accepted, logging-only side effect.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from keyserver.errors import EvidenceError

from .report import SnpProduct

AMD_OID_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(AMD_OID_ARC + ".1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(AMD_OID_ARC + ".2")
OID_BL_SPL = x509.ObjectIdentifier(AMD_OID_ARC + ".3.1")
OID_TEE_SPL = x509.ObjectIdentifier(AMD_OID_ARC + ".3.2")
OID_SNP_SPL = x509.ObjectIdentifier(AMD_OID_ARC + ".3.3")
OID_RESERVED_SPLS = tuple(x509.ObjectIdentifier(f"{AMD_OID_ARC}.3.{i}") for i in (4, 5, 6, 7))
OID_UCODE_SPL = x509.ObjectIdentifier(AMD_OID_ARC + ".3.8")
OID_FMC_SPL = x509.ObjectIdentifier(AMD_OID_ARC + ".3.9")
OID_HWID = x509.ObjectIdentifier(AMD_OID_ARC + ".4")
OID_CSP_ID = x509.ObjectIdentifier(AMD_OID_ARC + ".5")

# RSASSA-PSS parameters AMD uses for ARK, ASK, ASVK, VCEK, VLEK and the CRL (57230: "RSASSA-PSS,
# SHA-384, MGF1 with SHA-384, salt length 48"). The salt length is enforced exactly.
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_SERIAL_WARNING = "Parsed a serial number which wasn't positive"
# warnings.catch_warnings() swaps the process-wide filter list; serialise our own uses of it.
_WARNINGS_LOCK = threading.Lock()

MAX_CERT_INPUT = 256 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_der_certificate(der: bytes, what: str) -> x509.Certificate:
    """Parse one DER certificate **eagerly** and fail closed.

    ``cryptography`` parses many fields lazily, so a malformed certificate can otherwise raise (or warn)
    long after loading. Every field the verifier uses is touched here; any exception, and any warning other
    than AMD's serial-number-0 one, makes the certificate ``certificate-unparseable``. The unsigned
    envelope must also be canonical (see :func:`signature_algorithms_consistent`)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cert = x509.load_der_x509_certificate(der)
            _ = (cert.version, cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
            _ = (cert.signature_algorithm_oid, cert.signature_hash_algorithm, cert.signature)
            _ = (cert.tbs_certificate_bytes, cert.public_key(), list(cert.extensions))
        except Exception as exc:  # hostile input: any parse failure is a rejection
            hint = ""
            if "serial" in str(exc).lower():
                hint = (
                    " (AMD VCEK/VLEK certificates carry serial number 0, which this version of the "
                    "'cryptography' library refuses; use a version that still parses them)"
                )
            raise EvidenceError(
                "certificate-unparseable", f"cannot parse the {what} certificate: {exc}{hint}"
            ) from exc
    for warning in caught:
        text = str(warning.message)
        if issubclass(warning.category, CryptographyDeprecationWarning) and _SERIAL_WARNING in text:
            continue
        raise EvidenceError("certificate-unparseable", f"the {what} certificate is malformed: {text}")
    if not signature_algorithms_consistent(der, crl=False):
        raise EvidenceError(
            "certificate-unparseable",
            f"the {what} certificate is not canonical DER outside its signed part (outer signatureAlgorithm "
            "differs from tbsCertificate's, or a malformed signatureValue)",
        )
    return cert


def _tlv(data: bytes, offset: int, end: int) -> tuple[int, int, int]:
    """(tag, content_start, content_end) of the DER TLV at ``offset``; ValueError when malformed."""
    if offset + 2 > end:
        raise ValueError("truncated DER")
    tag = data[offset]
    first = data[offset + 1]
    start = offset + 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 4 or start + n > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + n], "big")
        start += n
    else:
        length = first
    if start + length > end:
        raise ValueError("DER length beyond the enclosing value")
    return tag, start, start + length


def signature_algorithms_consistent(der: bytes, *, crl: bool) -> bool:
    """True when the parts of a Certificate / CertificateList that the signature does not cover are
    canonical: the outer signatureAlgorithm is byte-identical to the ``signature`` AlgorithmIdentifier
    inside tbsCertificate / tbsCertList (RFC 5280 §4.1.1.2 / §5.1.1.2), and signatureValue is a BIT STRING
    with zero unused bits that ends the structure. ``cryptography`` tolerates a non-zero unused-bits count
    and (for certificates) a differing outer algorithm; either would let the same signed content travel
    under different bytes."""
    try:
        tag, start, end = _tlv(der, 0, len(der))
        if tag != 0x30 or end != len(der):
            return False
        tbs_tag, tbs_start, tbs_end = _tlv(der, start, end)
        if tbs_tag != 0x30:
            return False
        alg_tag, _, outer_end = _tlv(der, tbs_end, end)
        if alg_tag != 0x30:
            return False
        sig_tag, sig_start, sig_end = _tlv(der, outer_end, end)
        if sig_tag != 0x03 or sig_end != end or sig_start >= sig_end or der[sig_start] != 0:
            return False
        outer = der[tbs_end:outer_end]
        pos = tbs_start
        tag, _, nxt = _tlv(der, pos, tbs_end)
        if crl:
            if tag == 0x02:  # version INTEGER OPTIONAL
                pos = nxt
        else:
            if tag == 0xA0:  # [0] EXPLICIT version
                pos = nxt
                tag, _, nxt = _tlv(der, pos, tbs_end)
            if tag != 0x02:  # serialNumber
                return False
            pos = nxt
        tag, _, inner_end = _tlv(der, pos, tbs_end)
        return tag == 0x30 and der[pos:inner_end] == outer
    except (ValueError, IndexError):
        return False


def split_certificates(data: bytes, what: str) -> list[bytes]:
    """Decode certificate input: one DER certificate, or PEM text with one or more CERTIFICATE blocks
    (e.g. Azure THIM's ``vcek.pem`` bundle: VCEK, ASK, ARK). Returns the DER blobs in order.

    Strict: a PEM input must contain nothing but CERTIFICATE blocks and whitespace."""
    if not data:
        raise EvidenceError("certificate-missing", f"the {what} certificate input is empty")
    if len(data) > MAX_CERT_INPUT:
        raise EvidenceError(
            "certificate-malformed", f"the {what} certificate input is too large ({len(data)} B)"
        )
    if data.lstrip().startswith(b"-----BEGIN"):
        blocks = _PEM_CERT_RE.findall(data)
        rest = _PEM_CERT_RE.sub(b"", data)
        if not blocks or rest.strip():
            raise EvidenceError(
                "certificate-malformed",
                f"the {what} PEM input must contain only '-----BEGIN CERTIFICATE-----' blocks",
            )
        ders: list[bytes] = []
        for block in blocks:
            try:
                ders.append(base64.b64decode(b"".join(block.split()), validate=True))
            except (binascii.Error, ValueError) as exc:
                raise EvidenceError(
                    "certificate-malformed", f"a {what} PEM block is not valid base64"
                ) from exc
        return ders
    if data[:1] != b"\x30":
        raise EvidenceError(
            "certificate-malformed", f"the {what} certificate is neither DER (starts with 0x30) nor PEM"
        )
    return [bytes(data)]


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def verify_amd_pss_signature(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    """True when ``cert`` declares RSASSA-PSS/SHA-384 and its signature verifies under ``issuer``'s
    RSA key with MGF1-SHA-384 and a 48-byte salt."""
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return False
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
        return False
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, AMD_PSS, hashes.SHA384())
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def verify_amd_pss_crl_signature(issuer: x509.Certificate, crl: x509.CertificateRevocationList) -> bool:
    if crl.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return False
    if not isinstance(crl.signature_hash_algorithm, hashes.SHA384):
        return False
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes, AMD_PSS, hashes.SHA384())
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


# --- minimal DER readers for the AMD extension values --------------------------------------------------


def _der_tlv(value: bytes, tag: int, what: str) -> bytes:
    """Return the contents of a single DER TLV with short- or long-form length; nothing may follow."""
    if len(value) < 2 or value[0] != tag:
        raise ValueError(f"{what}: expected DER tag 0x{tag:02x}")
    length = value[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 2 or len(value) < 2 + n:
            raise ValueError(f"{what}: unsupported DER length")
        length = int.from_bytes(value[2 : 2 + n], "big")
        offset = 2 + n
        if length < 0x80 or (n == 2 and length < 0x100):
            raise ValueError(f"{what}: non-minimal DER length")
    if len(value) != offset + length:
        raise ValueError(f"{what}: DER length does not match the extension size")
    return value[offset:]


def der_small_uint(value: bytes, what: str) -> int:
    """A DER INTEGER in 0..255 (SPL values are bytes)."""
    content = _der_tlv(value, 0x02, what)
    if not content or len(content) > 2:
        raise ValueError(f"{what}: INTEGER out of range")
    if content[0] & 0x80:
        raise ValueError(f"{what}: negative INTEGER")
    if len(content) == 2 and (content[0] != 0 or not content[1] & 0x80):
        raise ValueError(f"{what}: non-minimal or out-of-range INTEGER")
    number = int.from_bytes(content, "big")
    if number > 0xFF:
        raise ValueError(f"{what}: INTEGER {number} does not fit a TCB byte")
    return number


def der_ia5string(value: bytes, what: str) -> str:
    content = _der_tlv(value, 0x16, what)
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: not IA5 (ASCII)") from exc
    if not text.isprintable():
        raise ValueError(f"{what}: contains control characters")
    return text


def decode_hwid(value: bytes, expected_len: int) -> bytes:
    """The hwID extension in either encoding: raw ``expected_len`` bytes, or an OCTET STRING around them."""
    if len(value) == expected_len:
        return bytes(value)
    if len(value) == expected_len + 2 and value[0] == 0x04 and value[1] == expected_len:
        return bytes(value[2:])
    raise ValueError(
        f"hwID extension is {len(value)} bytes; expected {expected_len} raw bytes or an OCTET STRING of them"
    )


@dataclass(frozen=True)
class AmdExtensions:
    """The AMD extensions of a VCEK/VLEK, decoded."""

    struct_version: int | None
    product_name: str
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    hwid: bytes | None
    csp_id: str | None


def _raw_extension_values(cert: x509.Certificate) -> dict[str, bytes]:
    values: dict[str, bytes] = {}
    for ext in cert.extensions:
        if ext.oid.dotted_string.startswith(AMD_OID_ARC + "."):
            if not isinstance(ext.value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
                raise ValueError(f"unexpected parsed type for AMD extension {ext.oid.dotted_string}")
            values[ext.oid.dotted_string] = ext.value.value
    return values


def parse_amd_extensions(cert: x509.Certificate, product: SnpProduct, *, is_vcek: bool) -> AmdExtensions:
    """Decode the AMD extensions; raise ``EvidenceError('certificate-malformed')`` when a required one is
    missing or malformed. Required: productName, bl/tee/snp/ucode SPL (+ fmc SPL on Turin), and on a
    VCEK the hwID (64 bytes; 8 on Turin). Reserved spl_4..spl_7, when present, must be zero."""
    role = "VCEK" if is_vcek else "VLEK"
    try:
        raw = _raw_extension_values(cert)
    except ValueError as exc:
        raise EvidenceError("certificate-malformed", f"the {role} extensions cannot be read: {exc}") from exc

    def required(oid: x509.ObjectIdentifier, name: str) -> bytes:
        value = raw.get(oid.dotted_string)
        if value is None:
            raise EvidenceError(
                "certificate-malformed",
                f"the {role} certificate lacks the AMD {name} extension ({oid.dotted_string}); "
                "it is not a certificate issued by AMD's KDS for this product",
            )
        return value

    try:
        product_name = der_ia5string(required(OID_PRODUCT_NAME, "productName"), "productName")
        bootloader = der_small_uint(required(OID_BL_SPL, "blSPL"), "blSPL")
        tee = der_small_uint(required(OID_TEE_SPL, "teeSPL"), "teeSPL")
        snp = der_small_uint(required(OID_SNP_SPL, "snpSPL"), "snpSPL")
        microcode = der_small_uint(required(OID_UCODE_SPL, "ucodeSPL"), "ucodeSPL")
        fmc = (
            der_small_uint(required(OID_FMC_SPL, "fmcSPL"), "fmcSPL") if product is SnpProduct.TURIN else None
        )
        for oid in OID_RESERVED_SPLS:
            value = raw.get(oid.dotted_string)
            if value is not None and der_small_uint(value, oid.dotted_string) != 0:
                raise EvidenceError(
                    "certificate-malformed",
                    f"the {role} certificate's reserved TCB extension {oid.dotted_string} is not zero",
                )
        version_raw = raw.get(OID_STRUCT_VERSION.dotted_string)
        struct_version = der_small_uint(version_raw, "structVersion") if version_raw is not None else None
        hwid: bytes | None = None
        if is_vcek:
            hwid_len = 8 if product is SnpProduct.TURIN else 64
            hwid = decode_hwid(required(OID_HWID, "hwID"), hwid_len)
        csp_raw = raw.get(OID_CSP_ID.dotted_string)
        csp_id = der_ia5string(csp_raw, "cspId") if csp_raw is not None else None
    except ValueError as exc:
        raise EvidenceError(
            "certificate-malformed", f"the {role} certificate has a malformed AMD extension: {exc}"
        ) from exc
    return AmdExtensions(
        struct_version=struct_version,
        product_name=product_name,
        bootloader=bootloader,
        tee=tee,
        snp=snp,
        microcode=microcode,
        fmc=fmc,
        hwid=hwid,
        csp_id=csp_id,
    )
