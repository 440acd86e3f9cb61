"""Appraisal: a release policy, over verified claims and the tenant's reference values, at a given time.

Pure: no I/O, no clock (``now`` is an input), no knowledge of evidence bytes ("Verify, then appraise").
Every check yields a :class:`RuleResult`, in a fixed order, whether it passes or not, so that a dry run
explains the whole decision rather than the first failure only:

1. ``policy`` — the policy is present and valid (only when it is not: a parsed :class:`Policy` is valid)
2. ``claims`` — the claims are a claim set within the limits the cost model assumes
3. ``tee`` — the claims' tee is one the policy accepts
4. ``debug`` — the TEE is not debuggable, or the policy allows debug TEEs explicitly
5. ``reference-values:<set>`` for each named set, its newest supplied version for the claims' tee —
   supplied, not revoked, inside its validity window (or, when the set has no version for this tee,
   "does not apply"); then one result per pinned claim,
   ``reference-values:<set>:<claim>`` (one of the expected values) and ``reference-values:<set>:<claim>>=``
   (at least the minimum); finally ``reference-values`` if none of the named sets applies to this tee
6. ``rule:<name>`` for each CEL rule — true, false, or an error

The decision grants only when every result passed and there was at least one reference-value or rule
check (fail closed: an error anywhere is a failed check, never an exception and never a grant). The first
failed result's ``reason`` is the decision's ``reason``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from keyserver.evidence.claims import TEE_NVIDIA_GPU
from policy.cel import Activation, run
from policy.claims import check_claims
from policy.document import Policy, PolicyError, ReferenceValueSet, parse_policy
from policy.gpu import MAX_GPU_VIEWS, gpu_count, gpu_view

# Stable reason codes (docs/policy.md); the API, the release log and the CLI carry them verbatim.
POLICY_INVALID = "policy-invalid"
CLAIMS_INVALID = "claims-invalid"
TEE_NOT_ACCEPTED = "tee-not-accepted"
DEBUG_NOT_ALLOWED = "debug-not-allowed"
REFERENCE_VALUES_MISSING = "reference-values-missing"
REFERENCE_VALUES_REVOKED = "reference-values-revoked"
REFERENCE_VALUES_EXPIRED = "reference-values-expired"
REFERENCE_VALUES_NOT_YET_VALID = "reference-values-not-yet-valid"
REFERENCE_VALUE_MISMATCH = "reference-value-mismatch"
REFERENCE_VALUE_BELOW_MINIMUM = "reference-value-below-minimum"
RULE_FALSE = "rule-false"
RULE_ERROR = "rule-error"
EVALUATION_ERROR = "evaluation-error"

REASONS = (
    POLICY_INVALID,
    CLAIMS_INVALID,
    TEE_NOT_ACCEPTED,
    DEBUG_NOT_ALLOWED,
    REFERENCE_VALUES_MISSING,
    REFERENCE_VALUES_REVOKED,
    REFERENCE_VALUES_EXPIRED,
    REFERENCE_VALUES_NOT_YET_VALID,
    REFERENCE_VALUE_MISMATCH,
    REFERENCE_VALUE_BELOW_MINIMUM,
    RULE_FALSE,
    RULE_ERROR,
    EVALUATION_ERROR,
)


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    detail: str
    reason: str | None = None  # a code from REASONS when not passed

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "detail": self.detail, "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str | None  # the first failed result's reason; None when granted
    results: tuple[RuleResult, ...]
    # (name, version) of every reference-value set that applied: what the release log records.
    reference_values: tuple[tuple[str, int], ...] = ()

    @property
    def detail(self) -> str | None:
        """The first failed result's explanation (what a denial response shows)."""
        failed = next((r for r in self.results if not r.passed), None)
        return None if failed is None else f"{failed.rule}: {failed.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "reason": self.reason,
            "results": [r.to_json() for r in self.results],
            "reference_values": [{"name": n, "version": v} for n, v in self.reference_values],
        }


def _fmt(value: object) -> str:
    """A claim value as JSON spells it (true, null), shortened: details end up in logs and responses."""
    text = (
        "null" if value is None else "true" if value is True else "false" if value is False else repr(value)
    )
    return text if len(text) <= 200 else text[:197] + "..."


def _decide(results: list[RuleResult], substantive: bool, refs: list[tuple[str, int]]) -> Decision:
    failed = next((r for r in results if not r.passed), None)
    if failed is None and not substantive:
        # A parsed policy always has a reference-value set or a rule; this guards the invariant itself.
        results.append(
            RuleResult("policy", False, "the policy checked nothing beyond the tee", POLICY_INVALID)
        )
        failed = results[-1]
    return Decision(
        granted=failed is None,
        reason=None if failed is None else failed.reason,
        results=tuple(results),
        reference_values=tuple(refs),
    )


def evaluate(
    policy: Policy | Mapping[str, Any] | None,
    claims: object,
    reference_sets: Iterable[ReferenceValueSet],
    now: datetime,
) -> Decision:
    """Appraise ``claims`` under ``policy`` (a parsed :class:`Policy`, a raw document, or ``None`` for "no
    policy") with the tenant's current reference-value sets. ``now`` must be timezone-aware (a naive time
    is a caller mistake: ``ValueError``, as in the verifiers). Nothing the policy, the claims or the
    reference values contain makes this raise."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    try:
        return _evaluate(policy, claims, list(reference_sets), now)
    except Exception as exc:  # a bug here must still be a denial, with a reason someone can report
        internal = RuleResult(
            "evaluation", False, f"internal error: {type(exc).__name__}: {exc}", EVALUATION_ERROR
        )
        return Decision(False, EVALUATION_ERROR, (internal,))


def _evaluate(
    policy: Policy | Mapping[str, Any] | None,
    claims: object,
    reference_sets: list[ReferenceValueSet],
    now: datetime,
) -> Decision:
    if policy is None:
        return _decide([RuleResult("policy", False, "no policy is attached", POLICY_INVALID)], False, [])
    if not isinstance(policy, Policy):
        try:
            policy = parse_policy(policy)
        except PolicyError as exc:
            return _decide([RuleResult("policy", False, str(exc), POLICY_INVALID)], False, [])

    results: list[RuleResult] = []
    problem = check_claims(claims)
    if not isinstance(claims, Mapping):
        results.append(RuleResult("claims", False, problem or "not a claim set", CLAIMS_INVALID))
        return _decide(results, True, [])
    if problem:
        # The other checks still run (they are plain comparisons) so that a dry run explains them; the
        # CEL rules do not, because the cost bound assumes claims within the limits.
        results.append(RuleResult("claims", False, problem, CLAIMS_INVALID))
    else:
        results.append(RuleResult("claims", True, f"{len(claims)} claims"))

    tee = claims.get("tee")
    if isinstance(tee, str) and tee in policy.tees:
        results.append(RuleResult("tee", True, f"{tee} is accepted"))
    else:
        accepted = ", ".join(policy.tees)
        results.append(
            RuleResult(
                "tee", False, f"tee {_fmt(tee)} is not accepted (accepted: {accepted})", TEE_NOT_ACCEPTED
            )
        )

    results.append(_debug(policy, claims))

    refs: list[tuple[str, int]] = []
    if policy.reference_values:
        results.extend(_reference_values(policy, claims, tee, reference_sets, now, refs))

    activation: Activation | None = None
    for rule in policy.rules:
        name = f"rule:{rule.name}"
        if problem:
            results.append(
                RuleResult(name, False, "not evaluated: the claims are not a valid claim set", RULE_ERROR)
            )
            continue
        if activation is None:
            try:
                activation = Activation(claims, now)
            except Exception as exc:  # the claims passed check_claims; still, never let this escape
                results.append(
                    RuleResult(name, False, f"the claims cannot be given to CEL: {exc}", RULE_ERROR)
                )
                continue
        outcome = run(rule.compiled, activation)
        if outcome.error is not None:
            results.append(RuleResult(name, False, f"{rule.expr} failed: {outcome.error}", RULE_ERROR))
        elif outcome.value:
            results.append(RuleResult(name, True, f"{rule.expr} is true"))
        else:
            results.append(RuleResult(name, False, f"{rule.expr} is false", RULE_FALSE))
    return _decide(results, bool(policy.reference_values or policy.rules), refs)


def _debug(policy: Policy, claims: Mapping[str, object]) -> RuleResult:
    debug = claims.get("debug")
    if debug is False:
        return RuleResult("debug", True, "the TEE is not debuggable")
    if debug is True:
        if policy.allow_debug:
            return RuleResult("debug", True, "the TEE is debuggable, and the policy allows debug TEEs")
        return RuleResult(
            "debug",
            False,
            "the TEE is debuggable (the host can read its memory); the policy does not allow debug TEEs",
            DEBUG_NOT_ALLOWED,
        )
    # Fail closed: a claim set that does not say whether the TEE is debuggable is treated as debuggable.
    return RuleResult(
        "debug", False, f"the debug claim is {_fmt(debug) if 'debug' in claims else 'absent'}", CLAIMS_INVALID
    )


def _versions_by_name(reference_sets: list[ReferenceValueSet]) -> dict[str, list[ReferenceValueSet]]:
    by_name: dict[str, list[ReferenceValueSet]] = {}
    for s in reference_sets:
        if isinstance(s, ReferenceValueSet):
            by_name.setdefault(s.name, []).append(s)
    return by_name


def _reference_values(
    policy: Policy,
    claims: Mapping[str, object],
    tee: object,
    reference_sets: list[ReferenceValueSet],
    now: datetime,
    refs: list[tuple[str, int]],
) -> list[RuleResult]:
    by_name = _versions_by_name(reference_sets)
    out: list[RuleResult] = []
    applied = 0
    for name in policy.reference_values:
        label = f"reference-values:{name}"
        versions = by_name.get(name, [])
        if not versions:
            detail = f"no current version of set {name!r} exists"
            out.append(RuleResult(label, False, detail, REFERENCE_VALUES_MISSING))
            continue
        # A set holds values per tee: what applies is the newest supplied version for the claims' tee. The
        # service supplies the current versions; a revoked one it supplies is not skipped for an older one.
        # Its nvidia-gpu version, if any, applies too, to every GPU of a composite claim set (policy/gpu.py).
        mine = [v for v in versions if v.tee == tee]
        gpu = [v for v in versions if v.tee == TEE_NVIDIA_GPU and tee != TEE_NVIDIA_GPU]
        if not mine and not gpu:
            others = ", ".join(sorted({v.tee for v in versions}))
            detail = f"set {name!r} is for {others}, not {_fmt(tee)}: it does not apply"
            out.append(RuleResult(label, True, detail))
            continue
        for group in (mine, gpu):
            if not group:
                continue
            s = max(group, key=lambda v: v.version)
            # Only the VM's own version counts as "its measurements were matched": GPU values alone
            # leave the VM unchecked.
            if group is mine:
                applied += 1
            refs.append((name, s.version))
            out.extend(_apply_set(label, name, s, claims, now))
    if applied == 0:
        names = ", ".join(policy.reference_values)
        out.append(
            RuleResult(
                "reference-values",
                False,
                f"none of the named sets ({names}) is for tee {_fmt(tee)}: there is nothing to match its "
                "measurements against",
                REFERENCE_VALUES_MISSING,
            )
        )
    return out


def _apply_set(
    label: str, name: str, s: ReferenceValueSet, claims: Mapping[str, object], now: datetime
) -> list[RuleResult]:
    ident = f"{name!r} version {s.version}" + (" (GPUs)" if s.tee == TEE_NVIDIA_GPU else "")
    v = s.values
    if s.revoked:
        return [RuleResult(label, False, f"set {ident} is revoked", REFERENCE_VALUES_REVOKED)]
    if v.not_before is not None and now < v.not_before:
        detail = f"set {ident} is valid from {v.not_before.isoformat()} (now {now.isoformat()})"
        return [RuleResult(label, False, detail, REFERENCE_VALUES_NOT_YET_VALID)]
    if v.not_after is not None and now >= v.not_after:
        detail = f"set {ident} expired at {v.not_after.isoformat()} (now {now.isoformat()})"
        return [RuleResult(label, False, detail, REFERENCE_VALUES_EXPIRED)]
    out = [RuleResult(label, True, f"set {ident} applies, is valid and not revoked")]
    if s.tee != TEE_NVIDIA_GPU:
        views: list[tuple[str, Mapping[str, object]]] = [(label, claims)]
    else:
        count = gpu_count(claims)
        if not 1 <= count <= MAX_GPU_VIEWS:
            detail = (
                f"set {ident} pins GPU firmware, but the evidence carries no GPU report"
                if count == 0
                else f"gpu.count is {count}; at most {MAX_GPU_VIEWS} GPUs are appraised"
            )
            return [*out, RuleResult(f"{label}:gpu.count", False, detail, REFERENCE_VALUE_MISMATCH)]
        views = [(f"{label}:gpu{i}", gpu_view(claims, i)) for i in range(count)]
    for where, view in views:
        for claim, expected in v.expected.items():
            out.append(_expected(where, view, claim, expected))
        for claim, minimum in v.minimums.items():
            out.append(_minimum(where, view, claim, minimum))
    return out


def _expected(
    label: str, claims: Mapping[str, object], claim: str, expected: tuple[object, ...]
) -> RuleResult:
    rule = f"{label}:{claim}"
    shown = ", ".join(_fmt(e) for e in expected[:8]) + (
        f", … ({len(expected)} values)" if len(expected) > 8 else ""
    )
    if claim not in claims:
        return RuleResult(
            rule, False, f"the claim is absent; expected one of [{shown}]", REFERENCE_VALUE_MISMATCH
        )
    actual = claims[claim]
    # Same type and value: True must not match 1, nor 1 match "1".
    if any(type(actual) is type(e) and actual == e for e in expected):
        return RuleResult(rule, True, f"{_fmt(actual)} is expected")
    return RuleResult(rule, False, f"got {_fmt(actual)}; expected one of [{shown}]", REFERENCE_VALUE_MISMATCH)


def _minimum(label: str, claims: Mapping[str, object], claim: str, minimum: int) -> RuleResult:
    rule = f"{label}:{claim}>="
    if claim not in claims:
        return RuleResult(
            rule, False, f"the claim is absent; expected at least {minimum}", REFERENCE_VALUE_BELOW_MINIMUM
        )
    actual = claims[claim]
    if isinstance(actual, bool) or not isinstance(actual, int):
        detail = f"got {_fmt(actual)}, not an integer; expected at least {minimum}"
        return RuleResult(rule, False, detail, REFERENCE_VALUE_BELOW_MINIMUM)
    if actual >= minimum:
        return RuleResult(rule, True, f"{actual} >= {minimum}")
    return RuleResult(
        rule, False, f"got {actual}; expected at least {minimum}", REFERENCE_VALUE_BELOW_MINIMUM
    )


# --- examples -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleFailure:
    expected: Literal["grant", "deny"]
    index: int
    decision: Decision

    @property
    def message(self) -> str:
        if self.expected == "grant":
            return f"examples.grant[{self.index}] is denied ({self.decision.reason}: {self.decision.detail})"
        return f"examples.deny[{self.index}] is granted"


def check_examples(
    policy: Policy, reference_sets: Iterable[ReferenceValueSet], now: datetime
) -> tuple[ExampleFailure, ...]:
    """The policy's examples that do not behave as declared, evaluated against ``reference_sets`` at
    ``now``. Activation must be refused unless this is empty."""
    sets = list(reference_sets)
    failures: list[ExampleFailure] = []
    for i, claims in enumerate(policy.examples.grant):
        decision = evaluate(policy, claims, sets, now)
        if not decision.granted:
            failures.append(ExampleFailure("grant", i, decision))
    for i, claims in enumerate(policy.examples.deny):
        decision = evaluate(policy, claims, sets, now)
        if decision.granted:
            failures.append(ExampleFailure("deny", i, decision))
    return tuple(failures)
