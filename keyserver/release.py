"""The release protocol (DESIGN.md): verify → check the binding → appraise → commit the log entry →
release the key wrapped to the ephemeral key, with a receipt.

Every request that reaches a tenant's key ends in exactly one log entry, granted or denied, appended in
the same transaction that would release the key; the wrapped key is handed back only after that
transaction has committed. If anything fails after the decision (the backend, the commit), nothing is
released.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver import evaluation
from keyserver.appraisal import (
    Appraisal,
    Prepared,
    appraisal_of,
    evaluation_request,
    policy_missing,
    prepare,
)
from keyserver.attestation import ATTESTATION_RESULT, AttestationIssuer
from keyserver.backends.base import BackendError, KeyBackend
from keyserver.binding import jwk_thumbprint, jwk_thumbprint_b64url
from keyserver.challenges import consume_challenge
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.ephemeral_key import EphemeralPublicKey, parse_ephemeral_jwk
from keyserver.errors import EvidenceError, KeyserverError
from keyserver.evidence.dispatch import (
    KNOWN_TEES,
    VerifiedEvidence,
    check_evidence_binding,
    verify_evidence,
)
from keyserver.faults import FaultHook, ReleaseStep
from keyserver.jwe import (
    ReleasedKeyMetadata,
    cek_release_payload,
    jwe_protected_header_for_rsa_oaep,
    wrap_for_parsed_recipient,
)
from keyserver.keys import ReleasableKey, wrapping_context
from keyserver.ratelimits import KeyLimitRead, ReleaseBudgetExhausted, ReleaseLimiter
from keyserver.reference_values import check_name
from keyserver.release_reads import first_reads
from keyserver.releaselog import records
from keyserver.releaselog.group_commit import BatchLimits, GroupCommitter
from keyserver.releaselog.store import ReleaseLog
from keyserver.tpm_enrolment import EnrolledAk
from policy.evaluate import Decision

KEY_RELEASE = records.KEY_RELEASE
log = logging.getLogger("keyserver.release")


@dataclass(frozen=True)
class ReleaseRequest:
    key_name: str
    key_version: int | None
    challenge_id: uuid.UUID
    evidence: Mapping[str, Any]
    ephemeral_jwk: Mapping[str, Any]


@dataclass(frozen=True)
class Receipt:
    log_index: int
    tree_size: int
    checkpoint: str
    inclusion_proof: list[bytes]
    entry: bytes  # the entry's canonical bytes, so the loader can check inclusion without an auditor token


@dataclass(frozen=True)
class Outcome:
    granted: bool
    reason: str | None
    detail: str
    receipt: Receipt
    jwe: str | None = None
    kid: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    unavailable: bool = False  # the decision was "deny" only because a backing service failed
    retry_after: int | None = None  # the decision was "deny" because the key's release budget is spent


# Placeholder until the batch commits; every Outcome that leaves the service carries the real receipt.
_PENDING_RECEIPT = Receipt(-1, 0, "", [], b"")


def digest(value: Any) -> str:
    """SHA-256 over sorted-key compact JSON: what the log records instead of evidence and claims."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class WitnessStage(Protocol):
    """What the release needs of the cosigning stage (keyserver/witness/cosigning.py)."""

    async def config(self, tenant: Tenant) -> Any:
        """The tenant's witness configuration, or None when it has no witnesses."""
        ...

    async def apply(self, tenant: Tenant, outcome: Outcome, config: Any) -> Outcome:
        """``outcome`` once its entry committed: cosigned, or as the configuration's failure mode says."""
        ...


class ReleaseService:
    def __init__(
        self,
        db: Database,
        log: ReleaseLog,
        backend: KeyBackend,
        attestation: AttestationIssuer,
        limiter: ReleaseLimiter,
        batching: BatchLimits | None = None,
    ) -> None:
        self.db, self.log, self.backend, self.attestation = db, log, backend, attestation
        self.limiter = limiter
        # The fault-injection seam (keyserver/faults.py): None in production, set by tests only.
        self.faults: FaultHook | None = None
        # The witnesses' cosigning stage (keyserver/witness/cosigning.py): after the commit, it puts a
        # cosigned checkpoint in the receipt, or applies the tenant's failure mode. None: no witnesses.
        self.witnessing: WitnessStage | None = None
        # Releases for one tenant share a transaction and a checkpoint (group commit).
        self.group = GroupCommitter(db, log, batching or BatchLimits(), self._step, self._evaluate_all)

    async def _step(self, step: ReleaseStep, session: AsyncSession | None) -> None:
        if self.faults is not None:
            await self.faults(step, session)

    async def attest(
        self,
        tenant: Tenant,
        challenge_id: uuid.UUID,
        evidence: Mapping[str, Any],
        ephemeral_jwk: Mapping[str, Any],
        now: datetime | None = None,
    ) -> str:
        """Verify evidence exactly as a release would — verifier, binding to this challenge and ephemeral
        key, no debug TEE — and answer with an attestation-result token bound to the ephemeral key (no
        policy, no key, no log entry: those come with the release that presents it).

        The challenge is used by any request that reaches verification, refused or not, so that each
        probe (e.g. "is this AK enrolled?") costs a challenge, and challenges are budgeted."""
        now = now or utcnow()
        await self.limiter.admit_attempt(tenant, now)
        refusal: KeyserverError | None = None
        async with self.db.transaction(Scope.for_tenant(tenant.id)) as session:
            nonce = await consume_challenge(session, tenant.id, challenge_id, now)
            try:
                _public, jwk = parse_ephemeral_jwk(ephemeral_jwk)
                verified = await verify_evidence(
                    session, tenant.id, evidence, nonce=nonce, ephemeral_jwk=jwk, now=now
                )
                check_evidence_binding(verified, nonce, jwk)
                if verified.claims.get("debug") is not False:
                    # A release's policy may allow debug TEEs; a token has no policy to ask, so it is
                    # never issued for one (a debug TEE's memory is open to the host).
                    raise EvidenceError(
                        "debug-tee",
                        "the TEE is debuggable (or does not say it is not); attestation results are only"
                        " issued for non-debug TEEs. Release directly under a policy with allow_debug.",
                    )
                token = await self.attestation.issue(
                    session, tenant, verified.claims, jwk_thumbprint(jwk), now
                )
            except KeyserverError as exc:
                refusal = exc  # leave the block normally: the used challenge commits
        if refusal is not None:
            log.info(
                "attestation refused",
                extra={"fields": {"tenant": tenant.name, "reason": getattr(refusal, "reason", refusal.code)}},
            )
            raise refusal
        return token

    async def _verify(
        self,
        session: AsyncSession,
        tenant: Tenant,
        evidence: Mapping[str, Any],
        nonce: bytes,
        jwk: Mapping[str, Any],
        now: datetime,
        enrolled_ak: EnrolledAk | None = None,
    ) -> VerifiedEvidence:
        if evidence.get("tee") == ATTESTATION_RESULT:
            token = evidence.get("token")
            if set(evidence) != {"tee", "token"} or not isinstance(token, str):
                raise EvidenceError("evidence-malformed", "an attestation result is {tee, token}")
            claims = await self.attestation.verify(session, tenant, token, jwk_thumbprint(jwk), now)
            # Bound at /attest (its report_data to that challenge and this key); cnf.jkt binds it here.
            return VerifiedEvidence(str(claims.get("tee")), claims, None, binding_checked=True)
        return await verify_evidence(
            session, tenant.id, evidence, nonce=nonce, ephemeral_jwk=jwk, now=now, enrolled_ak=enrolled_ak
        )

    async def release(self, tenant: Tenant, request: ReleaseRequest, now: datetime | None = None) -> Outcome:
        now = now or utcnow()
        await self._step(ReleaseStep.START, None)
        # Before anything else, and not logged: see keyserver/ratelimits.py.
        await self.limiter.admit_attempt(tenant, now)
        # A name outside the key-name grammar names no key; refusing it here keeps the caller's text out
        # of the log (a 400 like any malformed request: nothing to audit, the challenge is not used).
        check_name(request.key_name, "key name")
        # The tenant's witnesses, read before the release commits: once its entry is committed, nothing
        # but the witnesses' own round may stand between the entry and the key. (Read after the commit, a
        # database that failed meanwhile turned a logged grant into a 503: tests/test_faults_postgres.py.)
        witnesses = None if self.witnessing is None else await self.witnessing.config(tenant)
        committed = await self.group.submit(tenant, _ReleaseDecision(self, tenant, request, now))
        decision = committed.value
        receipt = Receipt(
            committed.index,
            committed.appended.size,
            committed.appended.checkpoint,
            committed.proof,
            committed.entry,
        )
        outcome = replace(decision, receipt=receipt)
        # After the commit: the witnesses' quorum on a checkpoint covering the entry (when configured).
        if self.witnessing is None or witnesses is None:
            return outcome
        return await self.witnessing.apply(tenant, outcome, witnesses)

    async def _evaluate_all(self, tenant: Tenant, requests: list[Any]) -> list[Any]:
        """A batch's shared step: its members' policy evaluations, one exchange (keyserver/evaluation.py)."""
        return await evaluation.pool().evaluate_all(tenant.id, requests)

    async def _wrap(self, tenant: Tenant, key: ReleasableKey, public: EphemeralPublicKey) -> tuple[str, bool]:
        """The JWE for the loader, and whether the key stayed inside the backend to make it.

        For an RSA ephemeral key a backend that can (PKCS#11) re-wraps the key inside the token and the
        cleartext never enters this process (docs/key-backends.md); otherwise the key is unwrapped here
        and wrapped to the ephemeral key with ECDH-ES+A256KW or RSA-OAEP-256.
        """
        assert key.version.wrapped is not None
        context = wrapping_context(tenant.id, key.key.name, key.version.version)
        kid = f"{key.key.name}/{key.version.version}"
        metadata = ReleasedKeyMetadata(tenant=tenant.name, name=key.key.name, version=key.version.version)
        if isinstance(public, RSAPublicKey):
            parts = await self.backend.rewrap_for_recipient(
                key.version.wrapped,
                context,
                public,
                jwe_protected_header_for_rsa_oaep(kid),
                cek_release_payload(kid=kid, metadata=metadata),
            )
            if parts is not None:
                return parts.compact(), True
        material = await self.backend.unwrap_to_memory(key.version.wrapped, context)
        # ``public`` is the key parse_ephemeral_jwk accepted (and the evidence is bound to): wrapped to as is.
        return wrap_for_parsed_recipient(material, public, kid=kid, metadata=metadata), False


@dataclass(frozen=True)
class _Refusal:
    reason: str | None
    detail: str
    unavailable: bool = False
    retry_after: int | None = None


_REFUSALS = (ReleaseBudgetExhausted, EvidenceError, BackendError, KeyserverError)


def _refusal_of(exc: KeyserverError | BackendError) -> _Refusal:
    if isinstance(exc, ReleaseBudgetExhausted):
        return _Refusal(exc.reason, exc.message, retry_after=exc.retry_after)
    if isinstance(exc, EvidenceError):
        return _Refusal(exc.reason, exc.message)
    if isinstance(exc, BackendError):
        return _Refusal("backend-unavailable", exc.message, unavailable=True)
    return _Refusal(exc.code, exc.message)


@dataclass(frozen=True)
class _Ready:
    """What a release's first stage found besides the key (``_ReleaseDecision.key``): the loader's key to
    wrap it to, the policy's inputs (None: the key's policy has no active version) and the key's limit as
    the first statement read it."""

    public: EphemeralPublicKey
    prepared: Prepared | None
    key_limit: KeyLimitRead


class _ReleaseDecision:
    """One release decided inside its batch's transaction (keyserver/releaselog/group_commit.py): the log
    entry to append and the outcome to answer with once that entry has committed. In two stages around
    the batch's policy evaluations, which run for all of its members at once: :meth:`prepare` up to the
    evaluation's input, :meth:`finish` from its decision on."""

    def __init__(
        self, service: ReleaseService, tenant: Tenant, request: ReleaseRequest, now: datetime
    ) -> None:
        self.service, self.tenant, self.request, self.now = service, tenant, request, now
        self.evidence_digest = digest(request.evidence)
        self._begin()

    def _begin(self) -> None:
        """A fresh decision: a batch decided again (group_commit) asks each member anew."""
        request = self.request
        self.entry: dict[str, Any] = {
            "key": {"name": request.key_name, "version": request.key_version},
            # What the request asked for (None = the newest live version): the request body is not
            # covered by the evidence, so a loader checks that nobody on the path pinned an old one.
            "requested_version": request.key_version,
            "challenge": str(request.challenge_id),
            # Only a known value or "unknown": nothing an unauthenticated caller writes is copied into
            # the tenant's permanent log (the evidence digest below identifies what was sent).
            "tee": logged_tee(request.evidence.get("tee")),
            "digests": {"evidence": self.evidence_digest, "claims": None, "collateral": None},
            "policy": None,
            "reference_values": [],
            "requester_thumbprint": None,
        }
        self.refusal: _Refusal | None = None
        self.ready: _Ready | None = None  # what the first stage found, for the second
        self.key: ReleasableKey | None = None  # the key the request names, once read
        self.appraisal: Appraisal | None = None

    async def prepare(self, session: AsyncSession) -> evaluation.Request | None:
        """Challenge consumed, evidence verified and bound, key and policy read: the evaluation's input,
        or None once refused."""
        self._begin()
        service, tenant, request, now, entry = self.service, self.tenant, self.request, self.now, self.entry
        try:
            # The challenge consumed, the AK and the key read: one statement (keyserver/release_reads.py),
            # each interpreted where it was read on its own before.
            first = await first_reads(
                session,
                tenant,
                request.challenge_id,
                now,
                request.evidence,
                request.key_name,
                request.key_version,
            )
            nonce = first.nonce
            await service._step(ReleaseStep.CHALLENGE_CONSUMED, session)
            public, jwk = parse_ephemeral_jwk(request.ephemeral_jwk)
            entry["requester_thumbprint"] = jwk_thumbprint_b64url(jwk)
            verified = await service._verify(session, tenant, request.evidence, nonce, jwk, now, first.ak)
            _record_evidence(entry, verified)
            check_evidence_binding(verified, nonce, jwk)
            await service._step(ReleaseStep.EVIDENCE_VERIFIED, session)
            inputs = first.inputs.get()
            self.key = key = inputs.key
            entry["key"] = {"name": key.key.name, "version": key.version.version}
            await service._step(ReleaseStep.KEY_FOUND, session)
            if inputs.policy is None:  # nothing to evaluate: a denial, made in the second stage
                self.ready = _Ready(public, None, first.key_limit)
                return None
            # The reference sets as read ahead by the first statement, if they are the policy's.
            prepared = await prepare(session, tenant.id, inputs.policy, first.sets_ahead)
            self.ready = _Ready(public, prepared, first.key_limit)
            return evaluation_request(prepared, verified.claims, now)
        except _REFUSALS as exc:
            self.refusal = _refusal_of(exc)
            return None

    async def finish(
        self, session: AsyncSession, decision: Decision | None
    ) -> tuple[dict[str, Any], Outcome]:
        """The policy's decision (None: none was asked for) taken, the grant counted, the key wrapped."""
        service, tenant, now, entry = self.service, self.tenant, self.now, self.entry
        granted, jwe, ready, key = False, None, self.ready, self.key
        if self.refusal is None and ready is not None and key is not None:
            if ready.prepared is None:
                appraisal = policy_missing(key.key.policy_name)
            elif decision is None:  # a bug of the batch's: this member raises, as for any bug
                raise RuntimeError("the batch gave no policy decision for a release that asked for one")
            else:
                appraisal = appraisal_of(ready.prepared, decision)
            self.appraisal = appraisal
            try:
                entry["policy"] = appraisal.policy_ref
                entry["reference_values"] = appraisal.reference_value_refs
                if not appraisal.granted:
                    raise EvidenceError(appraisal.reason or "policy-denied", appraisal.detail)
                await service.limiter.take_grant(
                    session, tenant, key.key.name, now, limit_read=ready.key_limit
                )
                await service._step(ReleaseStep.APPRAISED, session)
                jwe, entry["wrapped_in_backend"] = await service._wrap(tenant, key, ready.public)
                # The exact JWE that leaves: anyone with the (public) ephemeral key can make *a* JWE for
                # it, so the loader accepts only the one whose digest is in the signed log.
                entry["jwe_sha256"] = hashlib.sha256(jwe.encode()).hexdigest()
                await service._step(ReleaseStep.KEY_WRAPPED, session)
                granted = True
            except _REFUSALS as exc:
                self.refusal = _refusal_of(exc)
        refusal = self.refusal or _Refusal(None, "granted")
        entry["decision"] = "granted" if granted else "denied"
        entry["reason"] = refusal.reason
        outcome = Outcome(
            granted=granted,
            reason=refusal.reason,
            detail=refusal.detail,
            receipt=_PENDING_RECEIPT,
            jwe=jwe if granted else None,
            kid=None if key is None else f"{key.key.name}/{key.version.version}",
            results=[] if self.appraisal is None else self.appraisal.results,
            unavailable=refusal.unavailable,
            retry_after=refusal.retry_after,
        )
        return records.record(KEY_RELEASE, principal=None, now=now, **entry), outcome


def logged_tee(value: object) -> str | None:
    """What the log records of a request's ``tee``: a known value, ``unknown`` or None (absent)."""
    if value is None:
        return None
    return value if isinstance(value, str) and value in KNOWN_TEES else "unknown"


def _record_evidence(entry: dict[str, Any], verified: VerifiedEvidence) -> None:
    entry["tee"] = logged_tee(verified.tee)
    entry["digests"]["claims"] = digest(verified.claims)
    if verified.collateral is not None:
        entry["digests"]["collateral"] = hashlib.sha256(verified.collateral).hexdigest()
