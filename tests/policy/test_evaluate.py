"""Evaluation over real claim sets (the verifiers run on the shared vectors at their dates), check by
check."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policy import REASONS, Decision, ReferenceValueSet, check_examples, evaluate, parse_policy
from policy.evaluate import (
    CLAIMS_INVALID,
    DEBUG_NOT_ALLOWED,
    POLICY_INVALID,
    REFERENCE_VALUE_BELOW_MINIMUM,
    REFERENCE_VALUE_MISMATCH,
    REFERENCE_VALUES_EXPIRED,
    REFERENCE_VALUES_MISSING,
    REFERENCE_VALUES_NOT_YET_VALID,
    REFERENCE_VALUES_REVOKED,
    RULE_ERROR,
    RULE_FALSE,
    TEE_NOT_ACCEPTED,
)

from .helpers import (
    SNP_GSG_NOW,
    SNP_TRUSTEE_NOW,
    TDX_NOW,
    TPM_NOW,
    Claims,
    policy_doc,
    reference_set,
    snp_claims,
    snp_debug_claims,
    snp_reference,
    tdx_claims,
    tdx_debug_claims,
    tdx_reference,
    tpm_claims,
    tpm_reference,
    with_claims,
)

RULES = [
    {"name": "vmpl0", "expr": '!has(claims.tee) || claims.tee != "sev-snp" || claims["snp.vmpl"] == 0'},
    {
        "name": "tdx-no-advisories",
        "expr": 'claims.tee != "tdx" || claims["tdx.advisory_ids"].all(a, !(a in ["INTEL-SA-00837"]))',
    },
    {"name": "nonce-bound", "expr": 'size(claims["report_data"]) > 0'},
]


def all_sets() -> list[ReferenceValueSet]:
    return [snp_reference(snp_claims()), tdx_reference(tdx_claims()), tpm_reference(tpm_claims())]


def sets_with(*replacements: ReferenceValueSet) -> list[ReferenceValueSet]:
    """The three loader sets, with those of the same names replaced (all named sets must exist)."""
    replaced = {s.name for s in replacements}
    return [s for s in all_sets() if s.name not in replaced] + list(replacements)


def names(decision: Decision) -> list[str]:
    return [r.rule for r in decision.results]


def failed(decision: Decision) -> list[tuple[str, str | None]]:
    return [(r.rule, r.reason) for r in decision.results if not r.passed]


def assert_consistent(decision: Decision) -> None:
    """The invariants every decision keeps (also checked by the property tests)."""
    assert decision.results
    if decision.granted:
        assert decision.reason is None
        assert all(r.passed for r in decision.results)
    else:
        first = next(r for r in decision.results if not r.passed)
        assert decision.reason == first.reason
        assert decision.reason in REASONS
    for r in decision.results:
        assert (r.reason is None) == r.passed


# --- one grant per tee --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "now", "applied"),
    [
        (snp_claims, SNP_TRUSTEE_NOW, "loader-snp"),
        (tdx_claims, TDX_NOW, "loader-tdx"),
        (tpm_claims, TPM_NOW, "loader-tpm"),
    ],
    ids=["sev-snp", "tdx", "tpm"],
)
def test_reviewed_build_is_granted_on_each_tee(claims: Any, now: datetime, applied: str) -> None:
    policy = parse_policy(policy_doc(rules=RULES))
    decision = evaluate(policy, claims(), all_sets(), now)
    assert_consistent(decision)
    assert decision.granted, failed(decision)
    assert decision.reference_values == ((applied, 1),)
    assert names(decision)[:3] == ["claims", "tee", "debug"]
    assert names(decision)[-3:] == ["rule:vmpl0", "rule:tdx-no-advisories", "rule:nonce-bound"]
    # The sets for the other tees are reported as not applying, in the policy's order.
    for s in ("loader-snp", "loader-tdx", "loader-tpm"):
        (header,) = [r for r in decision.results if r.rule == f"reference-values:{s}"]
        assert header.passed
        assert ("applies" in header.detail) == (s == applied)
        assert ("does not apply" in header.detail) == (s != applied)


def test_every_pinned_claim_has_its_own_result() -> None:
    decision = evaluate(parse_policy(policy_doc()), tdx_claims(), all_sets(), TDX_NOW)
    pinned = [r.rule for r in decision.results if r.rule.startswith("reference-values:loader-tdx:")]
    assert pinned == [
        "reference-values:loader-tdx:tdx.mrtd",
        *(f"reference-values:loader-tdx:tdx.rtmr{i}" for i in range(4)),
        "reference-values:loader-tdx:tdx.tcb_status",
        "reference-values:loader-tdx:tdx.module_svn>=",
    ]
    assert decision.granted


def test_decision_serialises_for_the_api_and_log() -> None:
    decision = evaluate(parse_policy(policy_doc(rules=RULES)), snp_claims(), all_sets(), SNP_TRUSTEE_NOW)
    data = json.loads(json.dumps(decision.to_json()))
    assert data["granted"] is True
    assert data["reason"] is None
    assert data["reference_values"] == [{"name": "loader-snp", "version": 1}]
    assert {"rule": "tee", "passed": True, "detail": "sev-snp is accepted", "reason": None} in data["results"]
    assert decision.detail is None


# --- debug TEEs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reference", "now"),
    [
        (snp_debug_claims, lambda c: snp_reference(c), SNP_GSG_NOW),
        (
            tdx_debug_claims,
            lambda c: reference_set("loader-tdx", "tdx", expected={"tdx.mrtd": [c["tdx.mrtd"]]}),
            TDX_NOW,
        ),
    ],
    ids=["gsg-milan", "trustee-tdx-quote-4"],
)
def test_authentic_debug_guests_are_denied_unless_the_policy_allows_them(
    claims: Any, reference: Any, now: datetime
) -> None:
    c: Claims = claims()
    assert c["debug"] is True  # the vectors are authentic; only their debug bit makes them untrustworthy
    sets = sets_with(reference(c))
    denied = evaluate(parse_policy(policy_doc()), c, sets, now)
    assert_consistent(denied)
    assert not denied.granted
    assert denied.reason == DEBUG_NOT_ALLOWED
    assert failed(denied) == [("debug", DEBUG_NOT_ALLOWED)]  # everything else about it matches
    assert denied.detail is not None
    assert denied.detail.startswith("debug: the TEE is debuggable")

    allowed = evaluate(parse_policy(policy_doc(allow_debug=True)), c, sets, now)
    assert allowed.granted, failed(allowed)
    assert "policy allows debug TEEs" in next(r.detail for r in allowed.results if r.rule == "debug")


@pytest.mark.parametrize("debug", [None, "false", 0, "absent"])
def test_unknown_debug_state_denies(debug: object) -> None:
    claims = with_claims(snp_claims())
    if debug == "absent":
        del claims["debug"]
    else:
        claims["debug"] = debug
    decision = evaluate(parse_policy(policy_doc(allow_debug=True)), claims, all_sets(), SNP_TRUSTEE_NOW)
    assert ("debug", CLAIMS_INVALID) in failed(decision)
    assert not decision.granted


# --- tee ----------------------------------------------------------------------------------------------------


def test_tee_not_accepted() -> None:
    policy = parse_policy(policy_doc(tees=["tdx", "tpm"]))
    decision = evaluate(policy, snp_claims(), all_sets(), SNP_TRUSTEE_NOW)
    assert decision.reason == TEE_NOT_ACCEPTED
    assert "tee 'sev-snp' is not accepted (accepted: tdx, tpm)" in decision.results[1].detail
    # Every other check still ran, for the dry run to explain.
    assert "reference-values:loader-snp:snp.measurement" in names(decision)


@pytest.mark.parametrize("tee", [None, 5, "sgx", "absent"])
def test_missing_or_unknown_tee_claim(tee: object) -> None:
    claims = with_claims(tdx_claims())
    if tee == "absent":
        del claims["tee"]
    else:
        claims["tee"] = tee
    decision = evaluate(parse_policy(policy_doc()), claims, all_sets(), TDX_NOW)
    assert decision.reason == TEE_NOT_ACCEPTED
    assert ("reference-values", REFERENCE_VALUES_MISSING) in failed(decision)


# --- reference values ---------------------------------------------------------------------------------------


def test_wrong_measurement_is_a_mismatch_with_both_values() -> None:
    claims = with_claims(snp_claims(), snp__measurement="00" * 48)
    decision = evaluate(parse_policy(policy_doc()), claims, all_sets(), SNP_TRUSTEE_NOW)
    assert failed(decision) == [("reference-values:loader-snp:snp.measurement", REFERENCE_VALUE_MISMATCH)]
    detail = next(r.detail for r in decision.results if not r.passed)
    assert "got '" + "00" * 48 in detail
    assert str(snp_claims()["snp.measurement"]) in detail


def test_one_of_several_expected_values_matches() -> None:
    c = snp_claims()
    s = reference_set(
        "loader-snp", "sev-snp", expected={"snp.measurement": ["11" * 48, c["snp.measurement"], "22" * 48]}
    )
    assert evaluate(parse_policy(policy_doc()), c, sets_with(s), SNP_TRUSTEE_NOW).granted


def test_wrong_pcr_is_a_mismatch() -> None:
    claims = with_claims(tpm_claims(), **{"tpm.pcrs.sha256.7": "ff" * 32})
    decision = evaluate(parse_policy(policy_doc()), claims, all_sets(), TPM_NOW)
    assert failed(decision) == [("reference-values:loader-tpm:tpm.pcrs.sha256.7", REFERENCE_VALUE_MISMATCH)]


def test_absent_pinned_claim_is_a_mismatch() -> None:
    claims = with_claims(tdx_claims())
    del claims["tdx.rtmr3"]
    decision = evaluate(parse_policy(policy_doc()), claims, all_sets(), TDX_NOW)
    assert failed(decision) == [("reference-values:loader-tdx:tdx.rtmr3", REFERENCE_VALUE_MISMATCH)]
    assert "the claim is absent" in next(r.detail for r in decision.results if not r.passed)


def test_tdx_tcb_status_outside_the_allowed_statuses() -> None:
    for status in ("OutOfDate", None):  # None: the verifier had no collateral, so no TCB verdict
        claims = with_claims(tdx_claims(), tdx__tcb_status=status)
        decision = evaluate(parse_policy(policy_doc()), claims, all_sets(), TDX_NOW)
        assert failed(decision) == [("reference-values:loader-tdx:tdx.tcb_status", REFERENCE_VALUE_MISMATCH)]


def test_types_must_match_exactly() -> None:
    s = reference_set("loader-snp", "sev-snp", expected={"snp.vmpl": [0], "snp.policy_smt": [True]})
    for change in ({"snp__vmpl": False}, {"snp__vmpl": "0"}, {"snp__policy_smt": 1}):
        decision = evaluate(
            parse_policy(policy_doc()), with_claims(snp_claims(), **change), [s], SNP_TRUSTEE_NOW
        )
        assert decision.reason == REFERENCE_VALUE_MISMATCH, change


def test_tcb_below_minimum() -> None:
    c = snp_claims()
    claims = with_claims(c, snp__reported_tcb__snp=7)
    decision = evaluate(parse_policy(policy_doc()), claims, all_sets(), SNP_TRUSTEE_NOW)
    assert failed(decision) == [
        ("reference-values:loader-snp:snp.reported_tcb.snp>=", REFERENCE_VALUE_BELOW_MINIMUM)
    ]
    assert "got 7; expected at least 8" in next(r.detail for r in decision.results if not r.passed)
    at_minimum = evaluate(
        parse_policy(policy_doc()), with_claims(c, snp__reported_tcb__snp=8), all_sets(), SNP_TRUSTEE_NOW
    )
    assert at_minimum.granted
    above = evaluate(
        parse_policy(policy_doc()), with_claims(c, snp__reported_tcb__snp=200), all_sets(), SNP_TRUSTEE_NOW
    )
    assert above.granted


@pytest.mark.parametrize("value", [None, True, "9", "absent"])
def test_minimum_needs_an_integer_claim(value: object) -> None:
    claims = with_claims(snp_claims())
    if value == "absent":
        del claims["snp.reported_tcb.snp"]
    else:
        claims["snp.reported_tcb.snp"] = value
    decision = evaluate(parse_policy(policy_doc()), claims, all_sets(), SNP_TRUSTEE_NOW)
    assert failed(decision) == [
        ("reference-values:loader-snp:snp.reported_tcb.snp>=", REFERENCE_VALUE_BELOW_MINIMUM)
    ]


def test_named_set_that_does_not_exist() -> None:
    sets = [s for s in all_sets() if s.name != "loader-tdx"]
    decision = evaluate(parse_policy(policy_doc()), tdx_claims(), sets, TDX_NOW)
    assert failed(decision) == [
        ("reference-values:loader-tdx", REFERENCE_VALUES_MISSING),
        ("reference-values", REFERENCE_VALUES_MISSING),
    ]
    # Fail closed: a named set that does not exist denies every tee, not only its own (nobody can tell
    # which tee a set that does not exist was meant for).
    assert (
        evaluate(parse_policy(policy_doc()), snp_claims(), sets, SNP_TRUSTEE_NOW).reason
        == REFERENCE_VALUES_MISSING
    )


def test_no_named_set_applies_to_the_claims_tee() -> None:
    # The policy accepts tpm but only names SNP values: a TPM quote would be matched against nothing.
    policy = parse_policy(policy_doc(tees=["tpm", "sev-snp"], reference_values=["loader-snp"]))
    decision = evaluate(policy, tpm_claims(), all_sets(), TPM_NOW)
    assert failed(decision) == [("reference-values", REFERENCE_VALUES_MISSING)]
    assert "none of the named sets (loader-snp) is for tee 'tpm'" in decision.results[-1].detail


def test_revoked_set_denies() -> None:
    sets = sets_with(snp_reference(snp_claims(), revoked=True))
    decision = evaluate(parse_policy(policy_doc()), snp_claims(), sets, SNP_TRUSTEE_NOW)
    assert ("reference-values:loader-snp", REFERENCE_VALUES_REVOKED) in failed(decision)
    assert decision.reference_values == (("loader-snp", 1),)  # recorded: the log says which set denied


def test_newest_supplied_version_is_the_current_one() -> None:
    c = snp_claims()
    old = reference_set("loader-snp", "sev-snp", expected={"snp.measurement": ["00" * 48]}, version=1)
    new = snp_reference(c, version=2)
    decision = evaluate(parse_policy(policy_doc()), c, sets_with(new, old), SNP_TRUSTEE_NOW)
    assert decision.granted
    assert decision.reference_values == (("loader-snp", 2),)
    assert (
        evaluate(parse_policy(policy_doc()), c, sets_with(old), SNP_TRUSTEE_NOW).reason
        == REFERENCE_VALUE_MISMATCH
    )
    # A revoked newest version is not skipped in favour of an older one: the service chooses what is
    # current; the evaluator never resurrects a version the service did not hand it as current.
    revoked_new = snp_reference(c, version=3, revoked=True)
    decision = evaluate(parse_policy(policy_doc()), c, sets_with(new, revoked_new), SNP_TRUSTEE_NOW)
    assert decision.reason == REFERENCE_VALUES_REVOKED


def test_validity_window_boundaries() -> None:
    c = snp_claims()
    start, end = "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"
    sets = sets_with(snp_reference(c, not_before=start, not_after=end))
    policy = parse_policy(policy_doc())

    def reason(now: datetime) -> str | None:
        return evaluate(policy, c, sets, now).reason

    t0, t1 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
    assert reason(t0 - timedelta(microseconds=1)) == REFERENCE_VALUES_NOT_YET_VALID
    assert reason(t0) is None
    assert reason(t1 - timedelta(microseconds=1)) is None
    assert reason(t1) == REFERENCE_VALUES_EXPIRED
    expired = evaluate(policy, c, sets, t1 + timedelta(days=1))
    assert "expired at 2025-01-01T00:00:00+00:00" in expired.results[3].detail


# --- CEL rules ----------------------------------------------------------------------------------------------


def test_false_rule_denies() -> None:
    rules = [{"name": "guest-svn", "expr": 'claims["snp.guest_svn"] >= 5'}]
    decision = evaluate(parse_policy(policy_doc(rules=rules)), snp_claims(), all_sets(), SNP_TRUSTEE_NOW)
    assert failed(decision) == [("rule:guest-svn", RULE_FALSE)]
    assert decision.detail == 'rule:guest-svn: claims["snp.guest_svn"] >= 5 is false'


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ('claims["snp.no_such_claim"] == 1', "Key not found"),
        ('claims["snp.measurement"] > 1', "No matching overloads"),
        ('claims["snp.guest_svn"] / 0 == 1', "divide by zero"),
        ('claims["snp.measurement"]', "not a boolean"),
        ("claims.debug", ""),  # false here: an error-free non-true value is a plain false
    ],
)
def test_rule_errors_are_failed_rules_not_exceptions(expr: str, fragment: str) -> None:
    rules = [{"name": "r", "expr": expr}]
    decision = evaluate(parse_policy(policy_doc(rules=rules)), snp_claims(), all_sets(), SNP_TRUSTEE_NOW)
    assert_consistent(decision)
    assert not decision.granted
    (result,) = [r for r in decision.results if r.rule == "rule:r"]
    assert result.reason == (RULE_ERROR if fragment else RULE_FALSE)
    assert fragment in result.detail


def test_rules_see_now_as_a_timestamp() -> None:
    rules = [{"name": "vcek-valid", "expr": 'now < timestamp(claims["snp.signing_cert_not_after"])'}]
    policy = parse_policy(policy_doc(rules=rules))
    assert evaluate(policy, snp_claims(), all_sets(), SNP_TRUSTEE_NOW).granted
    late = datetime(2031, 1, 1, tzinfo=UTC)
    assert evaluate(policy, snp_claims(), all_sets(), late).results[-1].reason == RULE_FALSE


def test_first_failure_gives_the_reason_and_all_checks_are_reported() -> None:
    rules = [{"name": "never", "expr": "false"}]
    claims = with_claims(snp_debug_claims(), snp__measurement="00" * 48)
    policy = parse_policy(policy_doc(tees=["tdx"], rules=rules))
    decision = evaluate(policy, claims, all_sets(), SNP_GSG_NOW)
    assert_consistent(decision)
    assert decision.reason == TEE_NOT_ACCEPTED
    assert [reason for _, reason in failed(decision)] == [
        TEE_NOT_ACCEPTED,
        DEBUG_NOT_ALLOWED,
        REFERENCE_VALUE_MISMATCH,
        REFERENCE_VALUE_BELOW_MINIMUM,  # gsg-milan's microcode 68 < the trustee build's 115
        REFERENCE_VALUE_BELOW_MINIMUM,
        RULE_FALSE,
    ]


# --- malformed inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        None,
        {},
        {"version": 1, "tees": []},
        {"version": 1, "tees": ["tdx"]},
        [],
        "not json",
        {"version": 1, "tees": ["tdx"], "rules": [{"name": "r", "expr": "("}]},
    ],
    ids=["none", "empty", "empty-tees", "checks-nothing", "list", "text", "bad-rule"],
)
def test_missing_empty_or_malformed_policy_denies(document: Any) -> None:
    decision = evaluate(document, tdx_claims(), all_sets(), TDX_NOW)
    assert_consistent(decision)
    assert not decision.granted
    assert decision.reason == POLICY_INVALID
    assert [r.rule for r in decision.results] == ["policy"]


def test_raw_valid_document_is_parsed_and_evaluated() -> None:
    assert evaluate(policy_doc(), tdx_claims(), all_sets(), TDX_NOW).granted


@pytest.mark.parametrize(
    ("claims", "fragment"),
    [
        (None, "NoneType, not an object"),
        (["tee", "tdx"], "list, not an object"),
        ({"tee": "tdx", "x": 1.5}, "claim 'x' is a float"),
        ({"tee": "tdx", "x": "a" * 1025}, "limit 1024"),
        ({"tee": "tdx", "x": ["a"] * 257}, "257 items"),
        ({"tee": "tdx", "x": [1]}, "list holding a int"),
        ({"tee": "tdx", "x": 1 << 64}, "outside 64 bits"),
        ({"tee": "tdx", 3: "x"}, "not a non-empty string"),
        ({f"k{i}": 1 for i in range(513)}, "513 claims"),
    ],
)
def test_invalid_claims_deny(claims: Any, fragment: str) -> None:
    policy = parse_policy(policy_doc(rules=RULES))
    decision = evaluate(policy, claims, all_sets(), TDX_NOW)
    assert_consistent(decision)
    assert decision.reason == CLAIMS_INVALID
    assert fragment in decision.results[0].detail
    # The CEL rules do not run on claims outside the limits their cost bound assumes.
    for r in decision.results:
        if r.rule.startswith("rule:"):
            assert r.reason == RULE_ERROR
            assert r.detail.startswith("not evaluated")


def test_naive_now_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(parse_policy(policy_doc()), tdx_claims(), all_sets(), datetime(2025, 1, 1))


def test_junk_in_reference_sets_is_ignored_not_fatal() -> None:
    junk: list[Any] = ["loader-tdx", None, 3]
    decision = evaluate(parse_policy(policy_doc()), tdx_claims(), [*junk, *all_sets()], TDX_NOW)
    assert decision.granted


# --- examples -----------------------------------------------------------------------------------------------


def example_policy(grant: list[Any], deny: list[Any], **members: Any) -> Any:
    return parse_policy(policy_doc(examples={"grant": grant, "deny": deny}, **members))


def test_examples_that_behave_as_declared() -> None:
    good = [dict(snp_claims()), dict(tdx_claims()), dict(tpm_claims())]
    bad = [dict(snp_debug_claims()), with_claims(tdx_claims(), tdx__tcb_status="OutOfDate"), {"tee": "tpm"}]
    policy = example_policy(good, bad)
    assert check_examples(policy, all_sets(), TDX_NOW) == ()


def test_examples_that_do_not() -> None:
    policy = example_policy([dict(snp_debug_claims())], [dict(tdx_claims())])
    failures = check_examples(policy, all_sets(), TDX_NOW)
    assert [(f.expected, f.index) for f in failures] == [("grant", 0), ("deny", 0)]
    assert failures[0].message.startswith(
        "examples.grant[0] is denied (debug-not-allowed: debug: the TEE is debuggable"
    )
    assert failures[1].message == "examples.deny[0] is granted"
    assert failures[0].decision.reason == DEBUG_NOT_ALLOWED


def test_examples_are_checked_against_the_current_reference_values() -> None:
    # The same policy activates with today's values and is refused once the set no longer matches.
    policy = example_policy([dict(tdx_claims())], [])
    assert check_examples(policy, all_sets(), TDX_NOW) == ()
    rotated = sets_with(tdx_reference(with_claims(tdx_claims(), tdx__mrtd="11" * 48), version=2))
    (failure,) = check_examples(policy, rotated, TDX_NOW)
    assert failure.decision.reason == REFERENCE_VALUE_MISMATCH


def test_one_set_name_with_versions_for_several_tees() -> None:
    # The service keeps the newest unrevoked version per (name, tee); each tee's claims meet their own.
    snp = snp_reference(snp_claims(), name="loader", version=4)
    tdx = tdx_reference(tdx_claims(), name="loader", version=7)
    policy = parse_policy(policy_doc(tees=["sev-snp", "tdx"], reference_values=["loader"]))
    on_snp = evaluate(policy, snp_claims(), [snp, tdx], SNP_TRUSTEE_NOW)
    on_tdx = evaluate(policy, tdx_claims(), [tdx, snp], TDX_NOW)
    assert on_snp.granted, failed(on_snp)
    assert on_tdx.granted, failed(on_tdx)
    assert on_snp.reference_values == (("loader", 4),)
    assert on_tdx.reference_values == (("loader", 7),)
    on_tpm = evaluate(
        parse_policy(policy_doc(reference_values=["loader"])), tpm_claims(), [snp, tdx], TPM_NOW
    )
    assert failed(on_tpm) == [("reference-values", REFERENCE_VALUES_MISSING)]
    assert "set 'loader' is for sev-snp, tdx, not 'tpm': it does not apply" in on_tpm.results[3].detail
