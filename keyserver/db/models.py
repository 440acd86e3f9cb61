"""The relational model. Every tenant-owned table has a ``tenant_id`` column: the application filters
on it in every query, and on PostgreSQL row-level security filters on it again (see migrations)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from keyserver.db.types import UTCDateTime, utcnow

# Explicit constraint names, so that migrations are identical on PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def tenant_key() -> Mapped[uuid.UUID]:
    """The leading primary-key column of every tenant-owned table (row-level security filters on it)."""
    return mapped_column(Uuid, ForeignKey("tenants.id", ondelete="RESTRICT"), primary_key=True)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer credential. Only a SHA-256 of the token is stored: the token carries 256 random bits,
    so a slow password hash would add nothing but latency."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        # Operator tokens belong to no tenant; every other role belongs to exactly one.
        CheckConstraint("(role = 'operator') = (tenant_id IS NULL)", name="operator_has_no_tenant"),
        CheckConstraint("role IN ('operator', 'tenant-admin', 'ci-signer', 'auditor')", name="known_role"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    role: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)


# --- the release log (audit/): one append-only RFC 9162 Merkle tree per tenant ---------------------


class LogHead(Base):
    """The tree's current size, root and signed checkpoint. The one mutable log row: appends lock it
    (``SELECT … FOR UPDATE``) so that a tenant's appends are serialised and indices are gap-free."""

    __tablename__ = "log_heads"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    checkpoint: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LogEntry(Base):
    """An entry's canonical bytes (audit.entry) at its index. Append-only: the database refuses
    UPDATE and DELETE (triggers, see migration 0002)."""

    __tablename__ = "log_entries"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LogNode(Base):
    """The hash of a perfect subtree ``(level, idx)`` (audit.merkle). Written once, never changed."""

    __tablename__ = "log_nodes"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class LogKey(Base):
    """The tenant log's Ed25519 checkpoint-signing key; the private half wrapped by the key backend."""

    __tablename__ = "log_keys"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    origin: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    wrapped_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    backend: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- TPM attestation keys: what a tenant trusts, and the AKs enrolled under it --------------------------


class TpmTrustAnchor(Base):
    """A CA certificate the tenant trusts for EK certificates (``ek-ca``) or AK certificates (``ak-ca``)."""

    __tablename__ = "tpm_trust_anchors"
    __table_args__ = (
        CheckConstraint("kind IN ('ek-ca', 'ak-ca')", name="known_kind"),
        # One certificate is one anchor of a kind (migration 0014).
        Index("uq_tpm_trust_anchors_certificate", "tenant_id", "kind", "fingerprint", unique=True),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # DER
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the DER, hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TpmPinnedEk(Base):
    """An EK public key the tenant admin vouches for directly (no certificate needed)."""

    __tablename__ = "tpm_pinned_eks"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the SPKI DER, hex
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TpmEnrolment(Base):
    """A credential-activation challenge: the AK becomes trusted only when the TPM holding the EK
    returns the secret (TPM2_ActivateCredential), once, before ``expires_at``."""

    __tablename__ = "tpm_enrolments"
    # Expired enrolments are purged per tenant by age, as challenges are (migration 0016).
    __table_args__ = (Index("ix_tpm_enrolments_tenant_id_expires_at", "tenant_id", "expires_at"),)

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)  # TPM2B_PUBLIC
    ak_name: Mapped[str] = mapped_column(String(140))  # hex
    ek_fingerprint: Mapped[str] = mapped_column(String(64))
    ek_trust: Mapped[str] = mapped_column(String(32))  # "certificate" or "pinned"
    # "certificate": the SHA-256 fingerprints (hex, space-separated) of the tenant's ek-ca anchors in the
    # EK certificate's verified chain; activation requires one of them to be an anchor still (0015).
    ek_anchors: Mapped[str | None] = mapped_column(Text)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TpmAk(Base):
    """An attestation key the tenant trusts: enrolled by credential activation or by an AK certificate."""

    __tablename__ = "tpm_aks"
    __table_args__ = (
        CheckConstraint("method IN ('credential-activation', 'ak-certificate')", name="known_method"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    ak_name: Mapped[str] = mapped_column(String(140), primary_key=True)  # hex TPM Name
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)  # TPM2B_PUBLIC
    method: Mapped[str] = mapped_column(String(32))
    ek_fingerprint: Mapped[str | None] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- reference values, policies, keys and challenges (the release protocol) ---------------------------


class CiSigner(Base):
    """A build pipeline's signing key, registered by the tenant admin: it may publish reference values."""

    __tablename__ = "ci_signers"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # SubjectPublicKeyInfo DER (Ed25519 or ECDSA)
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the SPKI DER, hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReferenceValueSet(Base):
    """One immutable version of a named set of expected measurements (policy/document.py's format)."""

    __tablename__ = "reference_values"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tee: Mapped[str] = mapped_column(String(16))
    document: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON (audit.entry)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(120))  # "token:<id>" or "ci-signer:<name>"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Policy(Base):
    """One immutable version of a named release policy (policy/document.py's format)."""

    __tablename__ = "policies"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    document: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120))


class PolicyHead(Base):
    """Which version of a policy is active. Changing it is an explicit, logged activation."""

    __tablename__ = "policy_heads"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    active_version: Mapped[int] = mapped_column(BigInteger)
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Key(Base):
    """A named, versioned key, released under a named policy."""

    __tablename__ = "keys"
    __table_args__ = (CheckConstraint("state IN ('enabled', 'disabled', 'destroyed')", name="known_state"),)

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))
    backend: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KeyVersion(Base):
    """The key material of one version, only ever stored wrapped by the backend."""

    __tablename__ = "key_versions"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    key_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)  # None once destroyed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Challenge(Base):
    """A single-use nonce with a short lifetime (release protocol, step 1)."""

    __tablename__ = "challenges"
    # Expired challenges are purged per tenant by age.
    __table_args__ = (Index("ix_challenges_tenant_id_expires_at", "tenant_id", "expires_at"),)

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AttestationKey(Base):
    """The tenant's Ed25519 key for signing attestation-result tokens (EAR); private half wrapped."""

    __tablename__ = "attestation_keys"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    kid: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    wrapped_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    backend: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- release limits (docs/security.md, "Rate limits") ---------------------------------------------------


class ReleaseLimit(Base):
    """A limit the tenant admin set: ``scope`` is ``tenant`` (release and attestation attempts of the
    whole tenant) or ``key/<name>`` (grants of one key); ``max_releases`` None means unlimited."""

    __tablename__ = "release_limits"
    __table_args__ = (
        CheckConstraint("max_releases IS NULL OR max_releases >= 1", name="positive_max"),
        CheckConstraint("window_seconds >= 1 AND window_seconds <= 2592000", name="window_range"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    scope: Mapped[str] = mapped_column(String(110), primary_key=True)
    max_releases: Mapped[int | None] = mapped_column(BigInteger)
    window_seconds: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(120))


class ReleaseCounter(Base):
    """How much of a limit one fixed window has used (``window_start``: Unix seconds, a multiple of
    ``window_seconds``). Shared by every worker and replica: an atomic upsert counts."""

    __tablename__ = "release_counters"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    scope: Mapped[str] = mapped_column(String(110), primary_key=True)
    window_seconds: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


# --- the key-encryption key's identity (keyserver/kek_identity.py) ----------------------------------------


class KekCheck(Base):
    """One row, written once: a random check value wrapped by the backend's KEK at first use. A backend
    that cannot unwrap it (kek.bin replaced or re-created, another HSM key or Vault transit key) holds
    another KEK, under which no stored key opens."""

    __tablename__ = "kek_check"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    backend: Mapped[str] = mapped_column(String(32))
    wrapped_check: Mapped[bytes] = mapped_column(LargeBinary)
    check_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- the witnesses a tenant's log asks to cosign (keyserver/witness/tenant_config.py) ----------------------


class TenantWitnesses(Base):
    """A tenant's witnesses, quorum and failure mode, as one canonical JSON document (one row per tenant;
    no row: the log is not witnessed)."""

    __tablename__ = "tenant_witnesses"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    document: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON (audit.entry)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(120))


class LogCosignedHead(Base):
    """The largest checkpoint of a tenant's log that reached its witness quorum: the log's signed note
    with the cosignature lines, as receipts carry it and auditors check it."""

    __tablename__ = "log_cosigned_heads"

    tenant_id: Mapped[uuid.UUID] = tenant_key()
    size: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
