"""The GPU's device certificate chain: PEM leaf first (``G?100 A01 GSP FMC LF`` ← ``GSP BROM`` ← Provisioner
ICA ← ``NVIDIA G?100 Identity`` ← ``NVIDIA Device Identity CA``), verified to a pinned root at ``now``.

Rules (each failure a typed ``EvidenceError``):

* 1 to :data:`MAX_CHAIN_CERTS` PEM certificates, at most :data:`MAX_CHAIN_INPUT` bytes; if the last one is
  byte-for-byte a pinned root it is dropped (NVIDIA ships it), and at least the leaf must remain.
* Every certificate is issued and signed by the next (``verify_directly_issued_by``: issuer name and
  signature), and the topmost by a pinned root; the issuers are CAs (basicConstraints cA, keyCertSign when
  keyUsage is present). A chain ending anywhere else is ``gpu-chain-untrusted``.
* Every certificate, the root included, is valid at ``now`` (inclusive bounds, as the other verifiers).
* The leaf has an ECDSA P-384 key and carries the DICE TcbInfo extension (``2.23.133.5.4.1`` on Hopper,
  ``2.23.133.5.4.1.1`` on Blackwell) with a SHA-384 FWID: the firmware the leaf key was derived for.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from keyserver.errors import EvidenceError
from keyserver.evidence.tdx.der import (
    TAG_OCTET_STRING,
    TAG_OID,
    TAG_SEQUENCE,
    DerError,
    DerReader,
    decode_oid,
)
from keyserver.evidence.x509errors import X509_DECODE_ERRORS

MAX_CHAIN_INPUT = 64 * 1024
MAX_CHAIN_CERTS = 8
TCB_INFO_OIDS = ("2.23.133.5.4.1", "2.23.133.5.4.1.1")  # DICE TcbInfo (Hopper), its Blackwell variant
SHA384_OID = "2.16.840.1.101.3.4.2.2"
_MAX_DER_DEPTH = 6
# An X.509 version byte other than v1/v3 raises InvalidVersion, which is not a ValueError (found by flips).
DECODE_ERRORS: tuple[type[Exception], ...] = (*X509_DECODE_ERRORS, x509.InvalidVersion)


@dataclass(frozen=True)
class TrustedRoot:
    cert: x509.Certificate
    der: bytes
    sha256: str


@dataclass(frozen=True)
class VerifiedChain:
    certs: tuple[x509.Certificate, ...]  # leaf first, the pinned root not included
    root: TrustedRoot
    leaf_key: ec.EllipticCurvePublicKey
    fwid: bytes  # from the leaf's TcbInfo


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trusted_root(pem_or_der: bytes) -> TrustedRoot:
    """A pinned root from PEM or DER (self-signed; not checked for time here, that is done at ``now``)."""
    cert = (
        x509.load_pem_x509_certificate(pem_or_der)
        if pem_or_der.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(pem_or_der)
    )
    der = cert.public_bytes(Encoding.DER)
    return TrustedRoot(cert, der, hashlib.sha256(der).hexdigest())


@cache
def nvidia_device_root() -> TrustedRoot:
    """NVIDIA Device Identity CA (package data; SHA-256 102bf659…b48, see docs/nvidia-gpu.md)."""
    data = resources.files(__package__).joinpath("roots/nvidia_device_identity_ca.pem").read_bytes()
    return trusted_root(data)


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def describe(cert: x509.Certificate) -> str:
    return repr(common_name(cert.subject) or cert.subject.rfc4514_string())


def load_chain(pem: bytes) -> list[x509.Certificate]:
    if len(pem) > MAX_CHAIN_INPUT:
        raise EvidenceError(
            "gpu-certificate-malformed", f"the GPU certificate chain is over {MAX_CHAIN_INPUT} bytes"
        )
    if pem.count(b"-----BEGIN CERTIFICATE-----") > MAX_CHAIN_CERTS:
        raise EvidenceError(
            "gpu-certificate-malformed",
            f"the GPU certificate chain has more than {MAX_CHAIN_CERTS} certificates",
        )
    try:
        certs = x509.load_pem_x509_certificates(pem)
        for cert in certs:  # decode everything now, so that hostile DER fails here with a reason
            _ = (
                cert.subject,
                cert.issuer,
                cert.extensions,
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
            )
            cert.public_key()
    except DECODE_ERRORS as exc:
        raise EvidenceError(
            "gpu-certificate-malformed", f"cannot parse the GPU certificate chain (PEM, leaf first): {exc}"
        ) from None
    return certs


def _fwids(data: bytes, depth: int, out: list[bytes]) -> None:
    """Collect every ``SEQUENCE { OID sha384, OCTET STRING (48) }`` inside ``data``, in order."""
    if depth > _MAX_DER_DEPTH:
        return
    reader = DerReader(data)
    while not reader.at_end():
        tlv = reader.read()
        if tlv.tag & 0x20 == 0:  # primitive
            continue
        if tlv.tag == TAG_SEQUENCE:
            inner = DerReader(tlv.value)
            try:
                first = inner.read()
                second = inner.read() if not inner.at_end() else None
                if (
                    first.tag == TAG_OID
                    and second is not None
                    and second.tag == TAG_OCTET_STRING
                    and inner.at_end()
                    and decode_oid(first.value) == SHA384_OID
                ):
                    if len(second.value) != 48:
                        raise DerError("a SHA-384 FWID is not 48 bytes")
                    out.append(second.value)
                    continue
            except DerError:
                pass
        _fwids(tlv.value, depth + 1, out)


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The first SHA-384 FWID of the leaf's DICE TcbInfo extension."""
    for ext in leaf.extensions:
        if ext.oid.dotted_string in TCB_INFO_OIDS:
            raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
            found: list[bytes] = []
            try:
                _fwids(raw, 0, found)
            except DerError as exc:
                raise EvidenceError(
                    "gpu-certificate-malformed", f"the leaf's DICE TcbInfo extension is not valid DER: {exc}"
                ) from None
            if not found:
                raise EvidenceError(
                    "gpu-fwid-missing", "the leaf's DICE TcbInfo extension holds no SHA-384 FWID"
                )
            return found[0]
    raise EvidenceError(
        "gpu-fwid-missing",
        f"the first certificate ({describe(leaf)}) has no DICE TcbInfo extension: it is not the GSP FMC leaf "
        "that signs GPU reports (the chain must start with the leaf, e.g. 'GH100 A01 GSP FMC LF')",
    )


def _check_window(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise EvidenceError(
            "gpu-certificate-not-yet-valid",
            f"the GPU chain's certificate {describe(cert)} is valid from {_iso(cert.not_valid_before_utc)}; "
            f"the verification time {_iso(now)} is before that",
        )
    if now > cert.not_valid_after_utc:
        raise EvidenceError(
            "gpu-certificate-expired",
            f"the GPU chain's certificate {describe(cert)} expired at {_iso(cert.not_valid_after_utc)} "
            f"(verification time {_iso(now)})",
        )


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, *DECODE_ERRORS):  # type: ignore[misc]
        return False
    return True


def _check_ca(cert: x509.Certificate) -> None:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise EvidenceError(
            "gpu-chain-invalid", f"{describe(cert)} issues a certificate in the GPU chain but is not a CA"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise EvidenceError("gpu-chain-invalid", f"{describe(cert)} may not sign certificates (keyUsage)")


def verify_chain(pem: bytes, roots: Sequence[TrustedRoot], now: datetime) -> VerifiedChain:
    certs = load_chain(pem)
    if not certs:
        raise EvidenceError("gpu-chain-incomplete", "the GPU certificate chain holds no certificate")
    pinned = {root.der: root for root in roots}
    shipped_root = pinned.get(certs[-1].public_bytes(Encoding.DER))
    if shipped_root is not None:
        certs = certs[:-1]
    if not certs:
        raise EvidenceError(
            "gpu-chain-incomplete", "the GPU certificate chain holds only the root, not the device's leaf"
        )
    for child, issuer in itertools.pairwise(certs):
        if not _issued_by(child, issuer):
            raise EvidenceError(
                "gpu-chain-invalid",
                f"the GPU chain's {describe(child)} is not issued and signed by the next certificate, "
                f"{describe(issuer)}: a certificate is missing, out of order or altered",
            )
        _check_ca(issuer)
    top = certs[-1]
    candidates = [shipped_root] if shipped_root is not None else list(roots)
    root = next((r for r in candidates if _issued_by(top, r.cert)), None)
    if root is None:
        raise EvidenceError(
            "gpu-chain-untrusted",
            f"the GPU chain ends at {describe(top)}, issued by {top.issuer.rfc4514_string()!r}, which is not "
            "signed by a pinned root (NVIDIA Device Identity CA): not a genuine NVIDIA device identity",
        )
    for cert in (*certs, root.cert):
        _check_window(cert, now)
    leaf = certs[0]
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EvidenceError("gpu-certificate-malformed", "the GPU leaf key is not an ECDSA P-384 key")
    return VerifiedChain(tuple(certs), root, key, leaf_fwid(leaf))


def ueid(leaf: x509.Certificate) -> str | None:
    """NVIDIA's ``ueid`` claim: the leaf subject's serialNumber (hex) in decimal."""
    attrs = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if not attrs:
        return None
    value = attrs[0].value
    text = value if isinstance(value, str) else value.decode("ascii", "replace")
    try:
        return str(int(text, 16))
    except ValueError:
        return None
