"""What the keyserver answers, as frozen dataclasses (one per response body of docs/api.md).

Byte strings arrive decoded (base64, base64url or hex on the wire, as each route documents); times are
timezone-aware datetimes. Each ``parse`` reads a :class:`~clients.sdk.wire.Fields` and raises
``UnexpectedResponse`` for anything the API does not promise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.checkpoint import KeyFormatError, parse_vkey
from audit.entry import EntryError, decode_entry
from clients.sdk.wire import Fields

NONCE_BYTES = 32  # docs/release-protocol.md: the challenge nonce is 32 bytes


@dataclass(frozen=True)
class WhoAmI:
    token_id: str
    role: str
    tenant: str | None  # None for the operator

    @classmethod
    def parse(cls, f: Fields) -> WhoAmI:
        return cls(f.string("token_id"), f.string("role"), f.optional_string("tenant"))


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: datetime

    @classmethod
    def parse(cls, f: Fields) -> Tenant:
        return cls(f.string("id"), f.string("name"), f.timestamp("created_at"))


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret."""

    id: str
    tenant: str | None
    role: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def parse(cls, f: Fields) -> TokenInfo:
        return cls(
            f.string("id"),
            f.optional_string("tenant"),
            f.string("role"),
            f.string("description"),
            f.timestamp("created_at"),
            f.optional_timestamp("expires_at"),
            f.optional_timestamp("revoked_at"),
        )


@dataclass(frozen=True)
class IssuedToken:
    """A new token. ``token`` is the credential itself, shown this once; it is kept out of ``repr``."""

    token: str = field(repr=False)
    info: TokenInfo

    @classmethod
    def parse(cls, f: Fields) -> IssuedToken:
        return cls(f.string("token"), TokenInfo.parse(f.fields("info")))


@dataclass(frozen=True)
class TrustAnchor:
    id: str
    kind: str  # "ek-ca" or "ak-ca"
    name: str
    sha256: str
    created_at: datetime

    @classmethod
    def parse(cls, f: Fields) -> TrustAnchor:
        return cls(
            f.string("id"), f.string("kind"), f.string("name"), f.string("sha256"), f.timestamp("created_at")
        )


@dataclass(frozen=True)
class PinnedEk:
    sha256: str
    description: str
    created_at: datetime

    @classmethod
    def parse(cls, f: Fields) -> PinnedEk:
        return cls(f.string("sha256"), f.string("description"), f.timestamp("created_at"))


@dataclass(frozen=True)
class AttestationKey:
    """An enrolled TPM attestation key (AK)."""

    ak_name: str  # hex TPM Name
    method: str  # "credential-activation" or "ak-certificate"
    ek_sha256: str | None
    enrolled_at: datetime
    revoked_at: datetime | None

    @classmethod
    def parse(cls, f: Fields) -> AttestationKey:
        return cls(
            f.string("ak_name"),
            f.string("method"),
            f.optional_string("ek_sha256"),
            f.timestamp("enrolled_at"),
            f.optional_timestamp("revoked_at"),
        )


@dataclass(frozen=True)
class EnrolmentChallenge:
    """The credential the TPM must open with TPM2_ActivateCredential (TPM2B-encoded, as the TPM takes)."""

    enrolment_id: str
    ak_name: str
    credential_blob: bytes  # TPM2B_ID_OBJECT
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET
    expires_at: datetime

    @classmethod
    def parse(cls, f: Fields) -> EnrolmentChallenge:
        return cls(
            f.string("enrolment_id"),
            f.string("ak_name"),
            f.base64("credential_blob"),
            f.base64("encrypted_secret"),
            f.timestamp("expires_at"),
        )


@dataclass(frozen=True)
class CiSigner:
    name: str
    sha256: str  # of the public key's SubjectPublicKeyInfo DER
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def parse(cls, f: Fields) -> CiSigner:
        return cls(
            f.string("name"),
            f.string("sha256"),
            f.timestamp("created_at"),
            f.optional_timestamp("revoked_at"),
        )


@dataclass(frozen=True)
class ReferenceValues:
    name: str
    version: int
    tee: str
    sha256: str
    source: str  # "token:<id>" (by hand) or "ci-signer:<name>"
    created_at: datetime
    revoked_at: datetime | None
    values: dict[str, Any]

    @classmethod
    def parse(cls, f: Fields) -> ReferenceValues:
        return cls(
            f.string("name"),
            f.integer("version"),
            f.string("tee"),
            f.string("sha256"),
            f.string("source"),
            f.timestamp("created_at"),
            f.optional_timestamp("revoked_at"),
            f.mapping("values"),
        )


@dataclass(frozen=True)
class Policy:
    name: str
    version: int
    sha256: str
    active: bool
    created_at: datetime
    document: dict[str, Any]

    @classmethod
    def parse(cls, f: Fields) -> Policy:
        return cls(
            f.string("name"),
            f.integer("version"),
            f.string("sha256"),
            f.boolean("active"),
            f.timestamp("created_at"),
            f.mapping("document"),
        )


@dataclass(frozen=True)
class DryRun:
    """A policy's decision on claims, check by check (``results``)."""

    granted: bool
    reason: str | None
    detail: str
    policy: dict[str, Any] | None
    reference_values: list[dict[str, Any]]
    results: list[dict[str, Any]]
    # A dry run on evidence: the claims it verified to (None if it did not verify), and whether it did.
    claims: dict[str, Any] | None = None
    evidence_verified: bool | None = None

    @classmethod
    def parse(cls, f: Fields) -> DryRun:
        verified = f.raw.get("evidence_verified")
        if verified is not None and not isinstance(verified, bool):
            raise f.error("evidence_verified must be a boolean or null")
        return cls(
            f.boolean("granted"),
            f.optional_string("reason"),
            f.string("detail"),
            f.optional_mapping("policy"),
            f.mappings("reference_values"),
            f.mappings("results"),
            f.optional_mapping("claims") if "claims" in f.raw else None,
            verified,
        )


@dataclass(frozen=True)
class Key:
    name: str
    policy: str
    state: str  # "enabled", "disabled" or "destroyed"
    backend: str
    versions: list[int]
    live_versions: list[int]  # versions whose material still exists

    @classmethod
    def parse(cls, f: Fields) -> Key:
        return cls(
            f.string("name"),
            f.string("policy"),
            f.string("state"),
            f.string("backend"),
            f.integers("versions"),
            f.integers("live_versions"),
        )


@dataclass(frozen=True)
class Challenge:
    """A single-use nonce for one release or attestation; ``nonce`` is the bytes the binding takes."""

    id: str
    nonce: bytes
    expires_at: datetime

    @classmethod
    def parse(cls, f: Fields) -> Challenge:
        nonce = f.base64url("nonce")
        if len(nonce) != NONCE_BYTES:
            raise f.error(f"the nonce is {len(nonce)} bytes, not {NONCE_BYTES}")
        return cls(f.string("id"), nonce, f.timestamp("expires_at"))


@dataclass(frozen=True)
class Receipt:
    """Where a release decision is in the tenant's log: verify it with ``clients.loader.receipt``."""

    log_index: int
    tree_size: int
    checkpoint: str  # signed note
    inclusion_proof: list[bytes]  # RFC 9162 audit path
    entry: bytes | None  # the entry's canonical bytes, when the server sends them

    @classmethod
    def parse(cls, f: Fields) -> Receipt:
        entry = f.base64("entry") if f.raw.get("entry") is not None else None
        return cls(
            f.integer("log_index"),
            f.integer("tree_size"),
            f.string("checkpoint"),
            f.hex_list("inclusion_proof"),
            entry,
        )


@dataclass(frozen=True)
class ReleaseGranted:
    jwe: str  # compact JWE, wrapped to the ephemeral key
    kid: str  # "<key name>/<version>"
    receipt: Receipt

    @classmethod
    def parse(cls, f: Fields) -> ReleaseGranted:
        return cls(f.string("jwe"), f.string("kid"), Receipt.parse(f.fields("receipt")))


@dataclass(frozen=True)
class LogKey:
    origin: str
    verifier_key: str  # the note verifier key (<origin>+<key id>+<base64 key>): pin it out of band
    public_key: bytes  # raw Ed25519, 32 bytes, taken from verifier_key

    @classmethod
    def parse(cls, f: Fields) -> LogKey:
        origin, vkey = f.string("origin"), f.string("verifier_key")
        f.string("public_key")
        # The verifier key is what auditors pin and checkpoints are verified with; the raw key is read
        # from it (its key id checked) rather than from the server's separate copy.
        try:
            verifier = parse_vkey(vkey)
        except KeyFormatError as exc:
            raise f.error(f"the verifier key is not a note verifier key: {exc}") from None
        if verifier.name != origin:
            raise f.error(f"the verifier key names {verifier.name!r}, not the log's origin {origin!r}")
        raw = verifier.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(origin, vkey, raw)


class LogEntry(NamedTuple):
    """One log entry: the canonical bytes its leaf hash covers, and what they say."""

    data: bytes
    entry: dict[str, Any]

    @classmethod
    def parse(cls, f: Fields) -> LogEntry:
        data = f.base64("data")
        try:
            decoded = decode_entry(data)
        except EntryError as exc:
            raise f.error(f"the entry bytes are not a canonical entry: {exc}") from None
        # The decoded copy is a convenience; the bytes are what the log hashes. They must agree.
        if decoded != f.mapping("entry"):
            raise f.error("the decoded entry does not match its canonical bytes")
        return cls(data, decoded)


@dataclass(frozen=True)
class InclusionProof:
    index: int
    tree_size: int
    leaf_hash: bytes
    audit_path: list[bytes]

    @classmethod
    def parse(cls, f: Fields) -> InclusionProof:
        return cls(
            f.integer("index"), f.integer("tree_size"), f.hex_bytes("leaf_hash"), f.hex_list("audit_path")
        )


@dataclass(frozen=True)
class ConsistencyProof:
    first: int
    second: int
    proof: list[bytes]

    @classmethod
    def parse(cls, f: Fields) -> ConsistencyProof:
        return cls(f.integer("first"), f.integer("second"), f.hex_list("proof"))
