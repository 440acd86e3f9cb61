"""EK and AK certificate verification against configured CA certificates.

A TPM's endorsement key certificate (TCG EK Credential Profile 2.x) is issued by the TPM vendor's CA (or,
for a vTPM, the cloud's); some clouds (GCE) also certify the AK. Such certificates are not web PKI
certificates, so they are verified in two parts:

* **The leaf**, checked here with ``cryptography``: signature by an issuer found among the given CA
  certificates, validity at ``now``, not a CA, public key equal to the TPM key it is supposed to certify,
  no critical extension this code does not understand, and, for an EK, an extendedKeyUsage (when
  present) that contains tcg-kp-EKCertificate 2.23.133.8.1.
* **The CA chain above it**, checked by ``cryptography.x509.verification`` (path building, validity at
  ``now``, basicConstraints, keyUsage keyCertSign, name chaining) with the web-PKI CA rules, except that
  a CA may carry an extendedKeyUsage: TCG CAs (Google's, swtpm's) restrict themselves to 2.23.133.8.1,
  which web-PKI rules would refuse.

What is accepted on purpose (TCG EK profile / real EK certificates):

* an empty subject with a critical subjectAltName holding a directoryName of TPM attributes
  (manufacturer 2.23.133.2.1, model 2.23.133.2.2, version 2.23.133.2.3) - decoded into the result;
* a negative or zero serial number (several vendors issued such EK certificates; RFC 5280 forbids them but
  the serial plays no part in the trust decision). ``cryptography`` still parses them with a deprecation
  warning, which is recorded in ``notes``; ``cryptography.x509.verification`` itself refuses them, which
  is why the leaf is checked here and not by the policy verifier;
* subjectDirectoryAttributes (TPM specification) and Google's instance-identity extension.

Every configured CA certificate is a trust anchor, self-signed or not (``cryptography``'s ``Store``
semantics): configuring a vendor's intermediate CA trusts exactly what it issued.

What is rejected: anything ``cryptography`` cannot parse - including BER (non-DER) encodings, which cannot
be repaired because the signature covers the original bytes; unknown critical extensions; chains that use
SHA-1 or other algorithms the web-PKI CA rules refuse. There is no revocation check: no TPM vendor CRL is
available offline (MANIFEST §7).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm.structures import TpmtPublic
from keyserver.evidence.x509errors import X509_DECODE_ERRORS

OID_TCG_KP_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")
OID_TCG_KP_AIK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.3")
OID_TPM_MANUFACTURER = x509.ObjectIdentifier("2.23.133.2.1")
OID_TPM_MODEL = x509.ObjectIdentifier("2.23.133.2.2")
OID_TPM_VERSION = x509.ObjectIdentifier("2.23.133.2.3")
OID_GCE_INSTANCE_INFO = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.1.21")

_UNDERSTOOD_CRITICAL = frozenset(
    {
        x509.oid.ExtensionOID.BASIC_CONSTRAINTS,
        x509.oid.ExtensionOID.KEY_USAGE,
        x509.oid.ExtensionOID.EXTENDED_KEY_USAGE,
        x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        x509.oid.ExtensionOID.CERTIFICATE_POLICIES,
        x509.oid.ExtensionOID.SUBJECT_DIRECTORY_ATTRIBUTES,
    }
)
"""Critical leaf extensions we process or that carry no constraint on this use. certificatePolicies
is informational for EK certificates (TCG EK profile §3.2.7) and no policy is required here."""

MAX_CHAIN_DEPTH = 6
MAX_INTERMEDIATES = 4
"""Intermediates a caller may send with a leaf (a real EK or AK chain has one to three). The chain is
built for each candidate issuer over all of them, and a crafted set (thousands of CAs with one name and
one key) made one unauthenticated enrolment cost the event loop ~90 s (found by review). With this bound
and duplicates dropped, the worst crafted set costs ~40 ms (measured: four same-name CAs), and
enrolments are budgeted like challenges."""

_SERIAL_WARNING = "serial number which wasn't positive"
_WARNINGS_LOCK = threading.Lock()
"""``warnings.catch_warnings`` mutates process-global state; serialise it."""

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class TpmCertificate:
    """A verified EK/AK certificate: the leaf, the chain up to the trusted root, and what it says."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    """Leaf first, ending with the configured root."""
    public_key: PublicKey
    tpm_manufacturer: str | None = None
    tpm_model: str | None = None
    tpm_version: str | None = None
    notes: tuple[str, ...] = field(default=())


def _reject(reason: str, what: str, detail: str) -> EvidenceError:
    return EvidenceError(reason, f"the {what} certificate {detail}")


def load_certificate(data: bytes | x509.Certificate, what: str) -> tuple[x509.Certificate, tuple[str, ...]]:
    """Parse one certificate (DER or PEM) eagerly; return it with notes about tolerated oddities."""
    if isinstance(data, x509.Certificate):
        return data, ()
    notes: list[str] = []
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
            # cryptography parses lazily: touch what the verifier uses so errors surface here.
            _ = (
                cert.issuer,
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
                cert.signature_hash_algorithm,
            )
            _ = (cert.tbs_certificate_bytes, cert.public_key(), list(cert.extensions))
        except X509_DECODE_ERRORS as exc:
            raise _reject(
                "tpm-cert-unparseable",
                what,
                f"cannot be parsed ({exc}); it must be DER (a BER encoding cannot be re-encoded without "
                "breaking its signature)",
            ) from exc
    for warning in caught:
        if issubclass(warning.category, CryptographyDeprecationWarning) and _SERIAL_WARNING in str(
            warning.message
        ):
            notes.append(f"the {what} certificate has a non-positive serial number (tolerated)")
    return cert, tuple(notes)


def load_ca_certificates(data: bytes) -> list[x509.Certificate]:
    """Load a CA bundle: one DER certificate or any number of PEM certificates."""
    if b"-----BEGIN" in data:
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise EvidenceError("tpm-cert-unparseable", f"the CA bundle cannot be parsed: {exc}") from exc
    return [load_certificate(data, "CA")[0]]


def _name_der(name_of: x509.Certificate, issuer: bool) -> bytes:
    """The subject or issuer Name, DER-encoded, for comparisons. ``cryptography`` warns (UserWarning) about
    attributes longer than X.520's upper bounds - Google's EK CA names have 79-byte CNs - when it builds a
    Name; that is harmless here and is silenced, under the lock because warning filters are global."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return (name_of.issuer if issuer else name_of.subject).public_bytes()


def is_self_issued(cert: x509.Certificate) -> bool:
    """Subject equals issuer: a root candidate."""
    return _name_der(cert, issuer=True) == _name_der(cert, issuer=False)


def _ca_policy() -> verification.ExtensionPolicy:
    return verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, None
    )


def _same_key(a: object, b: object) -> bool:
    if not isinstance(a, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) or not isinstance(
        b, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    ):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _tpm_attributes(cert: x509.Certificate) -> dict[x509.ObjectIdentifier, str]:
    """TPM manufacturer/model/version from the SAN directoryName (TCG EK Credential Profile §3.2.9)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {}
    out: dict[x509.ObjectIdentifier, str] = {}
    for name in san.get_values_for_type(x509.DirectoryName):
        for attr in name:
            if attr.oid in (OID_TPM_MANUFACTURER, OID_TPM_MODEL, OID_TPM_VERSION) and isinstance(
                attr.value, str
            ):
                out[attr.oid] = attr.value
    return out


def _check_leaf(cert: x509.Certificate, what: str, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise _reject(
            "tpm-cert-not-yet-valid", what, f"is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if now > cert.not_valid_after_utc:
        raise _reject("tpm-cert-expired", what, f"expired at {cert.not_valid_after_utc.isoformat()}")
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _UNDERSTOOD_CRITICAL:
            raise _reject(
                "tpm-cert-unsupported-extension",
                what,
                f"has a critical extension {ext.oid.dotted_string} this verifier does not understand",
            )
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise _reject("tpm-cert-invalid", what, "is a CA certificate, not an end-entity certificate")


def _verify_chain(
    cert: x509.Certificate,
    what: str,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    now: datetime,
) -> tuple[x509.Certificate, ...]:
    """Find the leaf's issuer, check its signature, then validate the issuer's chain to a root."""
    if not roots:
        raise _reject("tpm-cert-chain-invalid", what, "cannot be verified: no CA certificate is configured")
    intermediates = list({c.public_bytes(serialization.Encoding.DER): c for c in intermediates}.values())
    if len(intermediates) > MAX_INTERMEDIATES:
        raise _reject(
            "tpm-cert-chain-invalid",
            what,
            f"came with {len(intermediates)} intermediate certificates; at most {MAX_INTERMEDIATES} are"
            " accepted (send only the chain from the leaf to the CA)",
        )
    issuer_name = _name_der(cert, issuer=True)
    candidates = [c for c in (*intermediates, *roots) if _name_der(c, issuer=False) == issuer_name]
    if not candidates:
        raise _reject(
            "tpm-cert-chain-invalid",
            what,
            "was not issued by any configured CA (no CA certificate has its issuer name); configure the "
            "TPM vendor's or cloud's EK/AK CA certificates",
        )
    errors: list[str] = []
    for issuer in candidates:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            errors.append(f"signature by a candidate issuer does not verify ({exc or 'bad signature'})")
            continue
        try:
            bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            errors.append("the issuer is not a CA (basicConstraints)")
            continue
        builder = (
            verification.PolicyBuilder()
            .store(verification.Store(list(roots)))
            .time(now)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ee_policy=verification.ExtensionPolicy.permit_all(), ca_policy=_ca_policy())
        )
        try:
            verified = builder.build_client_verifier().verify(
                issuer, [c for c in intermediates if c != issuer]
            )
        except verification.VerificationError as exc:
            errors.append(f"the issuing CA does not chain to a configured root: {exc}")
            continue
        return (cert, *verified.chain)
    raise _reject("tpm-cert-chain-invalid", what, "does not verify: " + "; ".join(errors))


def _as_certs(items: Iterable[x509.Certificate | bytes], what: str) -> list[x509.Certificate]:
    return [load_certificate(i, what)[0] for i in items]


def verify_tpm_certificate(
    certificate: bytes | x509.Certificate,
    *,
    roots: Iterable[x509.Certificate | bytes],
    intermediates: Iterable[x509.Certificate | bytes] = (),
    now: datetime,
    expected_key: TpmtPublic | PublicKey | None = None,
    what: str = "TPM",
    require_eku: x509.ObjectIdentifier | None = None,
) -> TpmCertificate:
    """Verify an EK or AK certificate; see the module docstring for what is checked and tolerated."""
    cert, notes = load_certificate(certificate, what)
    root_certs = _as_certs(roots, "CA")
    inter_certs = _as_certs(intermediates, "intermediate CA")
    _check_leaf(cert, what, now)
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _reject("tpm-cert-invalid", what, "does not certify an RSA or EC key")
    if require_eku is not None:
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is not None and require_eku not in eku:
            raise _reject(
                "tpm-cert-invalid", what, f"has an extendedKeyUsage without {require_eku.dotted_string}"
            )
    chain = _verify_chain(cert, what, roots=root_certs, intermediates=inter_certs, now=now)
    if expected_key is not None:
        wanted = expected_key.public_key() if isinstance(expected_key, TpmtPublic) else expected_key
        if not _same_key(key, wanted):
            raise _reject(
                "tpm-cert-key-mismatch",
                what,
                "certifies a different public key than the TPM key presented: the key and the certificate "
                "do not belong together",
            )
    attrs = _tpm_attributes(cert)
    return TpmCertificate(
        certificate=cert,
        chain=chain,
        public_key=key,
        tpm_manufacturer=attrs.get(OID_TPM_MANUFACTURER),
        tpm_model=attrs.get(OID_TPM_MODEL),
        tpm_version=attrs.get(OID_TPM_VERSION),
        notes=notes,
    )


def verify_ek_certificate(
    certificate: bytes | x509.Certificate,
    *,
    roots: Iterable[x509.Certificate | bytes],
    intermediates: Iterable[x509.Certificate | bytes] = (),
    now: datetime,
    ek_public: TpmtPublic | PublicKey | None = None,
) -> TpmCertificate:
    """Verify an EK certificate chains to ``roots`` at ``now`` and (when given) certifies ``ek_public``."""
    return verify_tpm_certificate(
        certificate,
        roots=roots,
        intermediates=intermediates,
        now=now,
        expected_key=ek_public,
        what="EK",
        require_eku=OID_TCG_KP_EK_CERTIFICATE,
    )


def verify_ak_certificate(
    certificate: bytes | x509.Certificate,
    *,
    roots: Iterable[x509.Certificate | bytes],
    intermediates: Iterable[x509.Certificate | bytes] = (),
    now: datetime,
    ak_public: TpmtPublic | PublicKey | None = None,
) -> TpmCertificate:
    """Verify an AK certificate (e.g. GCE's) chains to ``roots`` at ``now`` and certifies ``ak_public``.
    No extendedKeyUsage is required: GCE marks its AK certificates with the EK purpose 2.23.133.8.1."""
    return verify_tpm_certificate(
        certificate, roots=roots, intermediates=intermediates, now=now, expected_key=ak_public, what="AK"
    )
