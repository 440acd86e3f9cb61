"""AWS Nitro Enclaves evidence: pure verification (document bytes, pinned root, time in; claims out).

Checks, each with its reason: the COSE_Sign1 structure and document fields [``nitro-document-malformed``];
``cabundle[0]`` is the pinned AWS Nitro root, byte for byte [``nitro-root-untrusted``]; each certificate
is issued by the previous one (name, ECDSA signature, CA basic constraints) [``nitro-chain-invalid``];
every certificate is valid at ``now`` [``nitro-certificate-expired``]; the leaf's P-384 key signs the
COSE Sig_structure [``nitro-signature-invalid``]; the document's timestamp is inside the leaf's validity
[``nitro-timestamp-invalid``].

Claims: ``nitro.pcrs.<0..31>`` (hex), ``nitro.module_id``, ``nitro.timestamp`` (ms), ``nitro.user_data``,
``nitro.public_key``, ``nitro.nonce``; ``report_data`` is the nonce (where the binding goes, see
docs/binding.md); ``debug`` is true when PCR0, PCR1 and PCR2 are all zero — a debug-mode enclave, whose
memory the parent instance can read, reports zeros there.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_AWS_NITRO, Claims

from .document import NitroDocument, parse_document

AWS_NITRO_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
"""The fingerprint AWS publishes for its Nitro Enclaves root (checked when the shipped file is loaded)."""

_DEBUG_PCRS = (0, 1, 2)


@functools.cache
def aws_nitro_root() -> bytes:
    """The shipped AWS Nitro Enclaves root certificate (DER), fingerprint-pinned."""
    pem = (resources.files("keyserver.evidence.nitro") / "roots" / "aws_nitro_enclaves_root.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    if hashlib.sha256(der).hexdigest() != AWS_NITRO_ROOT_SHA256:
        raise RuntimeError("the shipped AWS Nitro root does not have AWS's published fingerprint")
    return der


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise EvidenceError("nitro-document-malformed", f"the {what} is not DER: {exc}") from None


def _verify_chain(doc: NitroDocument, root_der: bytes, now: datetime) -> x509.Certificate:
    if doc.cabundle[0] != root_der:
        raise EvidenceError(
            "nitro-root-untrusted",
            "the document's certificate chain does not start at the pinned AWS Nitro Enclaves root",
        )
    chain = [_load(der, f"cabundle[{i}]") for i, der in enumerate(doc.cabundle)]
    chain.append(_load(doc.certificate, "leaf certificate"))
    for i, cert in enumerate(chain):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise EvidenceError(
                "nitro-certificate-expired",
                f"certificate {i} ({cert.subject.rfc4514_string()}) is valid "
                f"{_iso(cert.not_valid_before_utc)} to {_iso(cert.not_valid_after_utc)}, not at {_iso(now)}",
            )
        if i == 0:
            continue
        issuer = chain[i - 1]
        try:
            constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise EvidenceError("nitro-chain-invalid", f"certificate {i - 1} is not a CA")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise EvidenceError(
                "nitro-chain-invalid", f"certificate {i} is not issued by certificate {i - 1}"
            ) from None
    return chain[-1]


def _verify_signature(doc: NitroDocument, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EvidenceError("nitro-chain-invalid", "the leaf certificate's key is not an ECDSA P-384 key")
    r, s = int.from_bytes(doc.signature[:48], "big"), int.from_bytes(doc.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), doc.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError(
            "nitro-signature-invalid",
            "the COSE_Sign1 signature does not verify with the leaf certificate: the document was altered "
            "or signed by another key",
        ) from None


def verify_nitro_document(data: bytes, *, now: datetime, root: bytes | None = None) -> Claims:
    """Verify an AWS Nitro Enclaves attestation document (raw COSE_Sign1 bytes) at ``now`` against the
    pinned AWS root (``root``: DER, for tests only) and return its claims."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    doc = parse_document(data)
    leaf = _verify_chain(doc, aws_nitro_root() if root is None else root, now)
    _verify_signature(doc, leaf)
    timestamp = datetime.fromtimestamp(doc.timestamp_ms / 1000, UTC)
    if not leaf.not_valid_before_utc <= timestamp <= leaf.not_valid_after_utc:
        raise EvidenceError(
            "nitro-timestamp-invalid", "the document's timestamp is outside its signing certificate's window"
        )
    debug = all(i in doc.pcrs and not any(doc.pcrs[i]) for i in _DEBUG_PCRS)
    claims: Claims = {
        "tee": TEE_AWS_NITRO,
        "debug": debug,
        "report_data": (doc.nonce or b"").hex(),
        "nitro.module_id": doc.module_id,
        "nitro.digest": doc.digest,
        "nitro.timestamp": doc.timestamp_ms,
        "nitro.nonce": doc.nonce.hex() if doc.nonce is not None else None,
        "nitro.user_data": doc.user_data.hex() if doc.user_data is not None else None,
        # The key itself only when it fits a claim string (1024 characters); its digest always.
        "nitro.public_key": doc.public_key.hex() if doc.public_key and len(doc.public_key) <= 512 else None,
        "nitro.public_key_sha256": hashlib.sha256(doc.public_key).hexdigest() if doc.public_key else None,
        "nitro.signing_cert_sha256": hashlib.sha256(doc.certificate).hexdigest(),
        "nitro.signing_cert_not_after": _iso(leaf.not_valid_after_utc),
    }
    for index, value in sorted(doc.pcrs.items()):
        claims[f"nitro.pcrs.{index}"] = value.hex()
    return claims
