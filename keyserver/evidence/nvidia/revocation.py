"""Revocation of GPU device certificates: NVIDIA publishes it by OCSP only (``http://ocsp.ndis.nvidia.com``,
named in the intermediates' AIA), with no CRL for the device certificates and nothing offline.

The verifier takes a :class:`RevocationCheck` hook: ``(chain, root, now) -> None`` that raises
``EvidenceError`` for a revoked certificate or an unknown status. :class:`OcspResponses` is the pure
implementation: it is handed DER OCSP responses already fetched (by the loader, a sidecar, or a fetcher at
the service's edge — the verifier itself never opens a socket) and checks, for every certificate NVIDIA
issues in the chain (BROM, Provisioner ICA, Identity: the leaf is issued by the device's own BROM key, so
NVIDIA's responder cannot know it):

* a response exists, is ``SUCCESSFUL``, and names the certificate (serial, issuer name and key hashes);
* it is signed by the certificate's issuer, or by a responder certificate that issuer signed and marked
  ``id-kp-OCSPSigning`` (RFC 6960 §4.2.2.2);
* ``thisUpdate <= now <= nextUpdate`` (a response without nextUpdate is refused: it cannot be stale-checked);
* the status is ``GOOD`` (``REVOKED`` → ``gpu-certificate-revoked``; ``UNKNOWN`` or anything missing →
  ``gpu-revocation-unknown``: fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from keyserver.errors import EvidenceError

from .certs import DECODE_ERRORS, TrustedRoot, describe

MAX_OCSP_RESPONSE = 16 * 1024


class RevocationCheck(Protocol):
    def __call__(self, chain: Sequence[x509.Certificate], root: TrustedRoot, now: datetime) -> None: ...


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _signed_by(response: ocsp.OCSPResponse, key: object) -> bool:
    if not isinstance(key, ec.EllipticCurvePublicKey) or response.signature_hash_algorithm is None:
        return False
    try:
        key.verify(
            response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm)
        )
    except InvalidSignature:
        return False
    return True


def _responder_ok(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> bool:
    if _signed_by(response, issuer.public_key()):
        return True
    for delegate in response.certificates:
        try:
            delegate.verify_directly_issued_by(issuer)
            eku = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if (
            ExtendedKeyUsageOID.OCSP_SIGNING in eku
            and delegate.not_valid_before_utc <= now <= delegate.not_valid_after_utc
            and _signed_by(response, delegate.public_key())
        ):
            return True
    return False


class OcspResponses:
    """A :class:`RevocationCheck` over pre-fetched DER OCSP responses."""

    def __init__(self, responses: Iterable[bytes]) -> None:
        self._responses: list[ocsp.OCSPResponse] = []
        for raw in responses:
            if len(raw) > MAX_OCSP_RESPONSE:
                raise EvidenceError(
                    "gpu-revocation-unknown", f"an OCSP response is over {MAX_OCSP_RESPONSE} bytes"
                )
            try:
                response = ocsp.load_der_ocsp_response(bytes(raw))
                if response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                    # Decode every field used later now, so that hostile bytes fail here with a reason
                    # (an unknown hash OID, several SingleResponses — one certificate per response here).
                    _ = (
                        response.serial_number,
                        response.issuer_key_hash,
                        response.issuer_name_hash,
                        response.hash_algorithm,
                        response.this_update_utc,
                        response.next_update_utc,
                        response.certificate_status,
                        response.revocation_time_utc,
                        response.signature_hash_algorithm,
                        response.signature,
                        response.tbs_response_bytes,
                        response.certificates,
                    )
            except DECODE_ERRORS as exc:
                raise EvidenceError(
                    "gpu-revocation-unknown", f"cannot parse an OCSP response: {exc}"
                ) from None
            self._responses.append(response)

    def _find(self, cert: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPResponse | None:
        for response in self._responses:
            if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                continue
            if response.serial_number != cert.serial_number:
                continue
            algorithm = response.hash_algorithm
            request = (
                ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
            )  # the CertID the responder must have answered for
            if (
                request.issuer_key_hash == response.issuer_key_hash
                and request.issuer_name_hash == response.issuer_name_hash
            ):
                return response
        return None

    def __call__(self, chain: Sequence[x509.Certificate], root: TrustedRoot, now: datetime) -> None:
        issuers = [*chain[1:], root.cert]
        for cert, issuer in list(zip(chain, issuers, strict=True))[1:]:
            response = self._find(cert, issuer)
            if response is None:
                raise EvidenceError(
                    "gpu-revocation-unknown",
                    f"no OCSP response names {describe(cert)} (serial {cert.serial_number:x}); NVIDIA's "
                    "device-certificate status is published by OCSP only, fetch it from the AIA responder",
                )
            if not _responder_ok(response, issuer, now):
                raise EvidenceError(
                    "gpu-revocation-unknown",
                    f"the OCSP response for {describe(cert)} is not signed by its issuer {describe(issuer)} "
                    "or an OCSP responder that issuer authorised",
                )
            next_update = response.next_update_utc
            if now < response.this_update_utc or next_update is None or now > next_update:
                shown = "none" if next_update is None else _iso(next_update)
                raise EvidenceError(
                    "gpu-revocation-unknown",
                    f"the OCSP response for {describe(cert)} is not current at {_iso(now)} (thisUpdate "
                    f"{_iso(response.this_update_utc)}, nextUpdate {shown}); fetch a fresh one",
                )
            status = response.certificate_status
            if status is ocsp.OCSPCertStatus.REVOKED:
                when = response.revocation_time_utc
                raise EvidenceError(
                    "gpu-certificate-revoked",
                    f"NVIDIA revoked {describe(cert)} (serial {cert.serial_number:x})"
                    + (f" at {_iso(when)}" if when is not None else ""),
                )
            if status is not ocsp.OCSPCertStatus.GOOD:
                raise EvidenceError(
                    "gpu-revocation-unknown", f"the OCSP responder does not know {describe(cert)}"
                )
