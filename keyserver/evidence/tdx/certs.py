"""X.509 helpers for the Intel SGX/TDX PKI: the pinned root, strict PEM splitting, validity, issuance.

Intel's PKI (*Intel SGX PCK Certificate and Certificate Revocation List Profile Specification*, §1.2
"Certificate Hierarchy"): the self-signed **Intel SGX Root CA** issues the **Intel SGX PCK Platform CA**
and **Intel SGX PCK Processor CA** (which issue PCK certificates and the PCK CRLs) and the **Intel SGX TCB
Signing** certificate (which signs TCB info and QE identity collateral). Every certificate and CRL is
signed with ECDSA P-256 / SHA-256.

The shipped root (``roots/intel_sgx_root_ca.pem``, Intel's public certificate, also served at
``https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.pem``) is
pinned by the SHA-256 of its DER encoding. A caller may pass another root deliberately (a test PKI);
whatever root is used, certificates in evidence or collateral are anchored to it **by public key**: a
chain's root must carry the same SubjectPublicKeyInfo and be validly self-signed, so a re-issued Intel root
with the same key still works while a look-alike root (same name, other key) does not.
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from keyserver.errors import ConfigurationError, EvidenceError
from keyserver.evidence.x509errors import X509_DECODE_ERRORS

# SHA-256 of the DER of the Intel SGX Root CA (valid 2018-05-21..2049-12-31).
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
INTEL_SGX_ROOT_CA_CN = "Intel SGX Root CA"
PCK_PLATFORM_CA_CN = "Intel SGX PCK Platform CA"
PCK_PROCESSOR_CA_CN = "Intel SGX PCK Processor CA"
PCK_CA_CNS = (PCK_PLATFORM_CA_CN, PCK_PROCESSOR_CA_CN)
TCB_SIGNING_CN = "Intel SGX TCB Signing"
PCK_LEAF_CN_PHRASE = "SGX PCK Certificate"

_PEM_BLOCK_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----"
)
_WS = b" \t\r\n"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return bc.ca


def split_pem_certificates(data: bytes, *, what: str, reason: str) -> list[x509.Certificate]:
    """Strictly parse concatenated PEM certificates: only PEM blocks separated by whitespace, optionally
    followed by one NUL terminator (Intel's quote generation appends one). Anything else is ``reason``."""
    body = data[:-1] if data.endswith(b"\x00") else data
    certs: list[x509.Certificate] = []
    pos = 0
    while True:
        while pos < len(body) and body[pos] in _WS:
            pos += 1
        if pos == len(body):
            break
        match = _PEM_BLOCK_RE.match(body, pos)
        if match is None:
            raise EvidenceError(reason, f"the {what} is not a sequence of PEM certificates (at byte {pos})")
        try:
            # Intel never issues a non-positive serial number; ``cryptography`` only warns about one
            # (AMD's VCEKs need that leniency, Intel's PCK chain does not): make it a rejection.
            with warnings.catch_warnings():
                warnings.simplefilter("error", CryptographyDeprecationWarning)
                certs.append(touch_certificate(x509.load_pem_x509_certificate(match.group(0))))
        except _CERT_LOAD_ERRORS as exc:
            raise EvidenceError(
                reason, f"certificate {len(certs) + 1} of the {what} does not parse: {exc}"
            ) from exc
        pos = match.end()
    if not certs:
        raise EvidenceError(reason, f"the {what} holds no certificate")
    return certs


_CERT_LOAD_ERRORS: tuple[type[Exception], ...] = (*X509_DECODE_ERRORS, CryptographyDeprecationWarning)


def touch_certificate(cert: x509.Certificate) -> x509.Certificate:
    """Force the lazily decoded parts (names, key, extensions) to decode now, so that a malformed field
    is a parse error here and not a ``ValueError`` from a later property access."""
    _ = (cert.subject, cert.issuer, cert.extensions, cert.signature_algorithm_oid, cert.serial_number)
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
    cert.public_key()
    return cert


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    """``notBefore <= now <= notAfter`` (inclusive, RFC 5280 §4.1.2.5)."""
    if now < cert.not_valid_before_utc:
        raise EvidenceError(
            "certificate-not-yet-valid",
            f"the {what} is not valid before {cert.not_valid_before_utc.isoformat()} (now is "
            f"{now.isoformat()}); check the verifier's clock or the --now you passed",
        )
    if now > cert.not_valid_after_utc:
        raise EvidenceError(
            "certificate-expired",
            f"the {what} expired at {cert.not_valid_after_utc.isoformat()} (now is {now.isoformat()}); "
            "the platform needs a current certificate",
        )


def _is_p256_ecdsa_sha256(cert: x509.Certificate) -> bool:
    return cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256


def verify_issued_by(child: x509.Certificate, issuer: x509.Certificate, what: str, reason: str) -> None:
    """``child`` names ``issuer`` as its issuer and carries a valid ECDSA-SHA256 signature by its key."""
    if not _is_p256_ecdsa_sha256(child):
        raise EvidenceError(
            reason, f"the {what} is not signed with ECDSA/SHA-256 as Intel's profile requires"
        )
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        detail = "signature does not verify" if isinstance(exc, InvalidSignature) else str(exc)
        raise EvidenceError(reason, f"the {what} is not validly issued by its parent: {detail}") from exc


def anchor_root(
    embedded: x509.Certificate, trusted: x509.Certificate, what: str, reason: str = "untrusted-root"
) -> None:
    """``embedded`` (the last certificate of a chain) is the trusted root: same public key, self-issued,
    validly self-signed, a CA."""
    if spki(embedded) != spki(trusted):
        raise EvidenceError(
            reason,
            f"the root of the {what} ({embedded.subject.rfc4514_string()}) does not carry the trusted "
            f"Intel SGX Root CA key (SHA-256 of the trusted root: {sha256_hex(der(trusted))})",
        )
    verify_issued_by(embedded, embedded, f"root certificate of the {what}", reason)
    if not is_ca(embedded):
        raise EvidenceError(reason, f"the root of the {what} is not a CA certificate")


def _validate_root(cert: x509.Certificate) -> None:
    if cert.issuer != cert.subject:
        raise ConfigurationError("the TDX trust root is not self-issued")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigurationError(f"the TDX trust root is not validly self-signed: {exc}") from exc
    if not is_ca(cert):
        raise ConfigurationError("the TDX trust root is not a CA certificate")
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise ConfigurationError("the TDX trust root does not have an EC key")


def load_root(pem_or_der: bytes, *, sha256_pins: frozenset[str] | None = None) -> x509.Certificate:
    """Load and validate a trust root. With ``sha256_pins``, its DER SHA-256 must be one of them.
    Problems are :class:`ConfigurationError` (an operator problem, not bad evidence)."""
    try:
        cert = (
            x509.load_pem_x509_certificate(pem_or_der)
            if pem_or_der.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(pem_or_der)
        )
        touch_certificate(cert)
    except X509_DECODE_ERRORS as exc:
        raise ConfigurationError(f"the TDX trust root does not parse: {exc}") from exc
    if sha256_pins is not None and sha256_hex(der(cert)) not in sha256_pins:
        raise ConfigurationError(
            f"the TDX trust root (SHA-256 {sha256_hex(der(cert))}) is not pinned; "
            f"expected one of {sorted(sha256_pins)}"
        )
    _validate_root(cert)
    return cert


@functools.cache
def intel_sgx_root_ca() -> x509.Certificate:
    """The Intel SGX Root CA shipped with the package, checked against its pinned fingerprint."""
    data = (resources.files("keyserver.evidence.tdx") / "roots" / "intel_sgx_root_ca.pem").read_bytes()
    return load_root(data, sha256_pins=frozenset({INTEL_SGX_ROOT_CA_SHA256}))
