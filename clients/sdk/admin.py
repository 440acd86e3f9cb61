"""A tenant admin's calls: tokens, TPM trust and enrolment, CI signers, reference values, policies, keys.

Auditor tokens may call the ``list_*`` methods (and ``dry_run``); ci-signer tokens
``list_reference_values`` and ``publish_bundle``. The three enrolment calls take no token: the TPM
proves itself (docs/tpm.md), so they work on a client built without one.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from clients.sdk.bundles import bundle_bytes
from clients.sdk.errors import InvalidArgument
from clients.sdk.models import (
    AttestationKey,
    CiSigner,
    DryRun,
    EnrolmentChallenge,
    IssuedToken,
    Key,
    PinnedEk,
    Policy,
    ReferenceValues,
    TokenInfo,
    TrustAnchor,
)
from clients.sdk.operator import token_request
from clients.sdk.routes import TenantRoutes, positive, uuid_text
from clients.sdk.transport import segment

TenantRole = Literal["tenant-admin", "ci-signer", "auditor"]
AnchorKind = Literal["ek-ca", "ak-ca"]
KeyState = Literal["enabled", "disabled", "destroyed"]
KEY_STATES = ("enabled", "disabled", "destroyed")
SignerPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def b64(data: bytes) -> str:
    if not isinstance(data, bytes | bytearray):
        raise InvalidArgument(f"expected bytes, got {type(data).__name__}")
    return base64.b64encode(data).decode()


def certificate_text(certificate: str | bytes | x509.Certificate) -> str:
    """The anchor route takes PEM text or base64 DER."""
    if isinstance(certificate, x509.Certificate):
        return certificate.public_bytes(Encoding.PEM).decode()
    if isinstance(certificate, str):
        return certificate
    if certificate.lstrip().startswith(b"-----BEGIN"):
        return certificate.decode("ascii", errors="strict")
    return b64(certificate)


def signer_pem(public_key: str | bytes | SignerPublicKey) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    text = public_key.decode("ascii", errors="replace") if isinstance(public_key, bytes) else public_key
    if "-----BEGIN PUBLIC KEY-----" not in text:
        raise InvalidArgument(
            "a CI signer's public key is PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----)"
        )
    return text


class AdminApi(TenantRoutes):
    # --- tokens ------------------------------------------------------------------------------------

    async def issue_token(
        self, role: TenantRole, *, description: str = "", expires_in: timedelta | None = None
    ) -> IssuedToken:
        reply = await self._transport.call(
            "POST", self._path("tokens"), body=token_request(role, description, expires_in)
        )
        return IssuedToken.parse(reply.fields())

    async def list_tokens(self) -> list[TokenInfo]:
        return [TokenInfo.parse(f) for f in (await self._transport.call("GET", self._path("tokens"))).items()]

    async def revoke_token(self, token_id: str | uuid.UUID) -> TokenInfo:
        path = self._path("tokens", uuid_text(token_id, "token id"))
        return TokenInfo.parse((await self._transport.call("DELETE", path)).fields())

    # --- TPM trust ---------------------------------------------------------------------------------

    async def add_anchor(
        self, kind: AnchorKind, name: str, certificate: str | bytes | x509.Certificate
    ) -> TrustAnchor:
        """Trust a CA for EK certificates (``ek-ca``) or AK certificates (``ak-ca``)."""
        body = {"kind": kind, "name": name, "certificate": certificate_text(certificate)}
        reply = await self._transport.call("POST", self._path("tpm", "anchors"), body=body)
        return TrustAnchor.parse(reply.fields())

    async def list_anchors(self) -> list[TrustAnchor]:
        reply = await self._transport.call("GET", self._path("tpm", "anchors"))
        return [TrustAnchor.parse(f) for f in reply.items()]

    async def delete_anchor(self, anchor_id: str | uuid.UUID) -> None:
        path = self._path("tpm", "anchors", uuid_text(anchor_id, "anchor id"))
        (await self._transport.call("DELETE", path)).nothing()

    async def pin_ek(self, ek_public: bytes, *, description: str = "") -> PinnedEk:
        """Vouch for one EK directly (TPM2B_PUBLIC or SubjectPublicKeyInfo DER)."""
        body = {"ek_public": b64(ek_public), "description": description}
        return PinnedEk.parse(
            (await self._transport.call("POST", self._path("tpm", "pinned-eks"), body=body)).fields()
        )

    async def list_pinned_eks(self) -> list[PinnedEk]:
        reply = await self._transport.call("GET", self._path("tpm", "pinned-eks"))
        return [PinnedEk.parse(f) for f in reply.items()]

    async def unpin_ek(self, sha256: str) -> None:
        """Stop vouching for the EK of this SHA-256 (as ``pin_ek`` answered it). It enrols no AK from now
        on; AKs it already enrolled stay trusted until revoked (``revoke_ak``; ``list_aks`` names their
        EK)."""
        path = self._path("tpm", "pinned-eks", segment(sha256, "EK SHA-256"))
        (await self._transport.call("DELETE", path)).nothing()

    async def list_aks(self) -> list[AttestationKey]:
        reply = await self._transport.call("GET", self._path("tpm", "aks"))
        return [AttestationKey.parse(f) for f in reply.items()]

    async def revoke_ak(self, ak_name: str) -> AttestationKey:
        path = self._path("tpm", "aks", segment(ak_name, "AK name"))
        return AttestationKey.parse((await self._transport.call("DELETE", path)).fields())

    # --- TPM enrolment (no token) ------------------------------------------------------------------

    async def start_enrolment(
        self,
        ek_public: bytes,
        ak_public: bytes,
        *,
        ek_certificate: bytes | None = None,
        ek_intermediates: Sequence[bytes] = (),
    ) -> EnrolmentChallenge:
        """Begin enrolling an AK (TPM2B_PUBLICs; certificates DER): the TPM opens the credential next."""
        body: dict[str, Any] = {
            "ek_public": b64(ek_public),
            "ak_public": b64(ak_public),
            "ek_intermediates": [b64(c) for c in ek_intermediates],
        }
        if ek_certificate is not None:
            body["ek_certificate"] = b64(ek_certificate)
        reply = await self._transport.call(
            "POST", self._path("tpm", "enrolments"), body=body, authenticated=False
        )
        return EnrolmentChallenge.parse(reply.fields())

    async def activate_enrolment(self, enrolment_id: str | uuid.UUID, secret: bytes) -> AttestationKey:
        """Finish with what TPM2_ActivateCredential returned."""
        path = self._path("tpm", "enrolments", uuid_text(enrolment_id, "enrolment id"), "activate")
        reply = await self._transport.call("POST", path, body={"secret": b64(secret)}, authenticated=False)
        return AttestationKey.parse(reply.fields())

    async def enrol_certified(
        self, ak_public: bytes, ak_certificate: bytes, *, intermediates: Sequence[bytes] = ()
    ) -> AttestationKey:
        """Enrol an AK by its certificate (cloud vTPMs), chained to an ``ak-ca`` anchor."""
        body = {
            "ak_public": b64(ak_public),
            "ak_certificate": b64(ak_certificate),
            "intermediates": [b64(c) for c in intermediates],
        }
        reply = await self._transport.call(
            "POST", self._path("tpm", "enrolments", "certified"), body=body, authenticated=False
        )
        return AttestationKey.parse(reply.fields())

    # --- CI signers --------------------------------------------------------------------------------

    async def register_signer(self, name: str, public_key: str | bytes | SignerPublicKey) -> CiSigner:
        """Register a CI signer's Ed25519 or ECDSA P-256/P-384 public key (PEM, or a key object)."""
        body = {"name": name, "public_key": signer_pem(public_key)}
        return CiSigner.parse(
            (await self._transport.call("POST", self._path("ci-signers"), body=body)).fields()
        )

    async def list_signers(self) -> list[CiSigner]:
        return [
            CiSigner.parse(f) for f in (await self._transport.call("GET", self._path("ci-signers"))).items()
        ]

    async def revoke_signer(self, name: str) -> CiSigner:
        path = self._path("ci-signers", segment(name, "signer name"), "revoke")
        return CiSigner.parse((await self._transport.call("POST", path)).fields())

    # --- reference values --------------------------------------------------------------------------

    async def add_reference_values(self, name: str, tee: str, values: Mapping[str, Any]) -> ReferenceValues:
        """Add the next version of a set by hand (the same content again returns its version)."""
        body = {"name": name, "tee": tee, "values": dict(values)}
        reply = await self._transport.call("POST", self._path("reference-values"), body=body)
        return ReferenceValues.parse(reply.fields())

    async def list_reference_values(self) -> list[ReferenceValues]:
        reply = await self._transport.call("GET", self._path("reference-values"))
        return [ReferenceValues.parse(f) for f in reply.items()]

    async def revoke_reference_values(self, name: str, version: int) -> ReferenceValues:
        path = self._path(
            "reference-values", segment(name, "set name"), str(positive(version, "version")), "revoke"
        )
        return ReferenceValues.parse((await self._transport.call("POST", path)).fields())

    async def publish_bundle(
        self, signer: str, bundle: Mapping[str, Any], signature: bytes
    ) -> ReferenceValues:
        """Publish a signed bundle (see :func:`clients.sdk.bundles.sign_bundle`)."""
        bundle_bytes(bundle)  # refuse here what the server could not verify
        body = {"signer": signer, "bundle": dict(bundle), "signature": b64(signature)}
        reply = await self._transport.call("POST", self._path("reference-values", "bundles"), body=body)
        return ReferenceValues.parse(reply.fields())

    # --- policies ----------------------------------------------------------------------------------

    async def add_policy(self, name: str, document: Mapping[str, Any]) -> Policy:
        """Add a version; it takes effect only when activated."""
        body = {"name": name, "document": dict(document)}
        return Policy.parse((await self._transport.call("POST", self._path("policies"), body=body)).fields())

    async def list_policies(self) -> list[Policy]:
        return [Policy.parse(f) for f in (await self._transport.call("GET", self._path("policies"))).items()]

    async def activate_policy(self, name: str, version: int) -> Policy:
        """Activate a version (refused unless the policy's examples behave as declared)."""
        path = self._path(
            "policies", segment(name, "policy name"), str(positive(version, "version")), "activate"
        )
        return Policy.parse((await self._transport.call("POST", path)).fields())

    async def dry_run(self, name: str, claims: Mapping[str, Any], *, version: int | None = None) -> DryRun:
        """What the policy (the active version unless ``version``) decides on ``claims``, check by check."""
        body: dict[str, Any] = {"claims": dict(claims)}
        if version is not None:
            body["version"] = positive(version, "version")
        path = self._path("policies", segment(name, "policy name"), "dry-run")
        return DryRun.parse((await self._transport.call("POST", path, body=body)).fields())

    async def dry_run_evidence(
        self,
        name: str,
        evidence: Mapping[str, Any],
        *,
        nonce: bytes,
        ephemeral_key: Mapping[str, Any],
        version: int | None = None,
    ) -> DryRun:
        """What the policy decides on raw ``evidence``, which the server verifies first against the
        ``nonce`` and public ``ephemeral_key`` it was made for (freshness is not checked: nothing is
        released). Evidence that does not verify comes back as ``granted=False`` with its reason."""
        body: dict[str, Any] = {
            "evidence": dict(evidence),
            "nonce": base64.urlsafe_b64encode(nonce).rstrip(b"=").decode(),
            "ephemeral_key": dict(ephemeral_key),
        }
        if version is not None:
            body["version"] = positive(version, "version")
        path = self._path("policies", segment(name, "policy name"), "dry-run")
        return DryRun.parse((await self._transport.call("POST", path, body=body)).fields())

    # --- release limits ----------------------------------------------------------------------------

    async def release_limits(self) -> dict[str, Any]:
        """The limits in force: ``{"tenant": …, "keys": […], "key_default": …}`` (docs/api.md)."""
        return (await self._transport.call("GET", self._path("release-limits"))).fields().raw

    async def set_release_limit(
        self, key: str | None, max_releases: int | None, window_seconds: int
    ) -> dict[str, Any]:
        """Limit a key's granted releases (``key``) or the tenant's attempts (``key=None``) per window;
        ``max_releases=None`` lifts the limit for that scope."""
        if max_releases is not None:
            positive(max_releases, "max_releases")
        body = {"max_releases": max_releases, "window_seconds": positive(window_seconds, "window_seconds")}
        path = self._limit_path(key)
        return (await self._transport.call("PUT", path, body=body)).fields().raw

    async def remove_release_limit(self, key: str | None) -> dict[str, Any]:
        """Back to the keyserver's default for that scope."""
        return (await self._transport.call("DELETE", self._limit_path(key))).fields().raw

    def _limit_path(self, key: str | None) -> str:
        if key is None:
            return self._path("release-limits", "tenant")
        return self._path("release-limits", "keys", segment(key, "key name"))

    # --- witnesses ---------------------------------------------------------------------------------

    async def witnesses(self) -> dict[str, Any]:
        """The tenant's witnesses, quorum and failure mode (docs/release-log.md, "Witnesses")."""
        return (await self._transport.call("GET", self._path("witnesses"))).fields().raw

    async def set_witnesses(
        self, witnesses: list[dict[str, str]], quorum: int, failure_mode: str = "refuse"
    ) -> dict[str, Any]:
        """Ask these witnesses (each ``{"name", "url", "vkey"}``) to cosign every checkpoint; a release
        needs ``quorum`` cosignatures, else ``failure_mode`` (``refuse`` or ``release-weak``) applies."""
        body = {"witnesses": witnesses, "quorum": positive(quorum, "quorum"), "failure_mode": failure_mode}
        return (await self._transport.call("PUT", self._path("witnesses"), body=body)).fields().raw

    async def remove_witnesses(self) -> dict[str, Any]:
        return (await self._transport.call("DELETE", self._path("witnesses"))).fields().raw

    # --- keys --------------------------------------------------------------------------------------

    async def create_key(self, name: str, policy: str, *, material: bytes | None = None) -> Key:
        """Create a key under ``policy``: generated in the key backend, or ``material`` imported."""
        body: dict[str, Any] = {"name": name, "policy": policy}
        if material is not None:
            body["material"] = b64(material)
        return Key.parse((await self._transport.call("POST", self._path("keys"), body=body)).fields())

    async def list_keys(self) -> list[Key]:
        return [Key.parse(f) for f in (await self._transport.call("GET", self._path("keys"))).items()]

    async def rotate_key(self, name: str) -> Key:
        """Add a version; older versions stay releasable until destroyed."""
        path = self._path("keys", segment(name, "key name"), "rotate")
        return Key.parse((await self._transport.call("POST", path)).fields())

    async def set_key_state(self, name: str, state: KeyState) -> Key:
        if state not in KEY_STATES:
            raise InvalidArgument(f"a key's state is one of {', '.join(KEY_STATES)}, not {state!r}")
        path = self._path("keys", segment(name, "key name"), "state")
        return Key.parse((await self._transport.call("POST", path, body={"state": state})).fields())
