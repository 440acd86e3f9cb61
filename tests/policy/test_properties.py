"""Properties: evaluation never raises and never grants past a failed check, whatever the claims, the
(valid) policy, the reference values or the time; parsing fails only with PolicyError; compiling any text
fails only with CelCompileError."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy import REASONS, Decision, PolicyError, ReferenceValueSet, check_examples, evaluate, parse_policy
from policy.cel import CelCompileError, compile_rule
from tests.fuzzing import fuzz_settings

from .helpers import reference_set, snp_claims, tdx_claims, tpm_claims

pytestmark = pytest.mark.fuzz

SET_NAMES = ["loader-snp", "loader-tdx", "loader-tpm", "extra"]
TEES = ["tpm", "sev-snp", "tdx"]
REAL_NAMES = sorted(set(snp_claims()) | set(tdx_claims()) | set(tpm_claims()))

# Valid rules, some true, some false, some failing at run time on some claims.
RULES = [
    "true",
    "false",
    'claims.tee == "tdx"',
    'claims["snp.reported_tcb.snp"] >= 8',
    'claims["tdx.advisory_ids"].all(a, a.startsWith("INTEL-SA-"))',
    "has(claims.debug) && claims.debug == false",
    '"tpm.pcrs.sha256.7" in claims && claims["tpm.pcrs.sha256.7"].size() == 64',
    'claims["report_data"].matches("^[0-9a-f]*$")',
    'now > timestamp("2020-01-01T00:00:00Z")',
    'claims.exists(k, k.startsWith("snp."))',
    'claims["missing"] == 1 || claims.tee == "tpm"',
    'int(claims["snp.measurement"]) > 0',
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.sampled_from(["", "tdx", "sev-snp", "tpm", "UpToDate", "OutOfDate", "Milan", "00" * 48, "ab" * 32]),
    st.text(max_size=40),
)
claim_values = st.one_of(scalars, st.lists(st.text(max_size=20), max_size=5))
# Now and then something outside the claim format (floats, huge strings, nested lists, bad names).
odd_values = st.one_of(
    st.floats(allow_nan=True),
    st.just("x" * 2000),
    st.lists(st.integers(), min_size=1, max_size=3),
    st.just(1 << 70),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def claim_sets(draw: st.DrawFn) -> Any:
    base = draw(st.sampled_from([{}, dict(snp_claims()), dict(tdx_claims()), dict(tpm_claims())]))
    names = st.one_of(st.sampled_from(REAL_NAMES), st.text(min_size=1, max_size=30))
    changes = draw(st.dictionaries(names, claim_values, max_size=8))
    base.update(changes)
    if draw(st.integers(0, 9)) == 0:
        base[draw(names)] = draw(odd_values)
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(st.none(), st.lists(st.integers(), max_size=3), st.text(max_size=5)))
    for name in draw(st.lists(st.sampled_from(REAL_NAMES), max_size=3)):
        base.pop(name, None)
    return base


@st.composite
def policies(draw: st.DrawFn) -> Any:
    tees = draw(st.lists(st.sampled_from(TEES), min_size=1, max_size=3, unique=True))
    refs = draw(st.lists(st.sampled_from(SET_NAMES), max_size=4, unique=True))
    rule_sources = draw(st.lists(st.sampled_from(RULES), min_size=0 if refs else 1, max_size=4))
    rules = [{"name": f"r{i}", "expr": src} for i, src in enumerate(rule_sources)]
    doc: dict[str, Any] = {"version": 1, "tees": tees, "allow_debug": draw(st.booleans())}
    # Optional members are sometimes given empty, sometimes left out: both mean "none".
    keep_empty_refs, keep_empty_rules = draw(st.booleans()), draw(st.booleans())
    if refs or keep_empty_refs:
        doc["reference_values"] = refs
    if rules or keep_empty_rules:
        doc["rules"] = rules
    return parse_policy(doc)


@st.composite
def reference_sets(draw: st.DrawFn) -> list[ReferenceValueSet]:
    out = []
    for name in draw(st.lists(st.sampled_from(SET_NAMES), max_size=5)):
        tee = draw(st.sampled_from(TEES))
        prefix = {"tpm": "tpm.", "sev-snp": "snp.", "tdx": "tdx."}[tee]
        pinned = [n for n in REAL_NAMES if n.startswith(prefix)]
        expected: dict[str, list[Any]] = {}
        source = draw(st.sampled_from([snp_claims(), tdx_claims(), tpm_claims()]))
        for claim in draw(st.lists(st.sampled_from(pinned), max_size=3, unique=True)):
            value = source.get(claim)
            if isinstance(value, str | int) and not isinstance(value, bool) and claim not in LIST_CLAIMS:
                expected[claim] = [value]
        minimums = {}
        for claim in draw(st.lists(st.sampled_from(INT_CLAIMS.get(tee, ["x"])), max_size=2, unique=True)):
            minimums[claim] = draw(st.integers(0, 300))
        if not expected and not minimums:
            minimums[f"{prefix}anything"] = 0
        start = draw(st.sampled_from([None, "2020-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]))
        end = draw(st.sampled_from([None, "2026-01-01T00:00:00Z", "2030-01-01T00:00:00Z"]))
        with contextlib.suppress(PolicyError):  # one tee's value under another tee's claim name: skip
            out.append(
                reference_set(
                    name,
                    tee,
                    expected=expected,
                    minimums=minimums,
                    version=draw(st.integers(1, 3)),
                    revoked=draw(st.integers(0, 4)) == 0,
                    not_before=start,
                    not_after=end,
                )
            )
    return out


LIST_CLAIMS = {"tdx.advisory_ids", "tpm.efi_apps"}
INT_CLAIMS = {
    "sev-snp": ["snp.reported_tcb.snp", "snp.guest_svn", "snp.reported_tcb.microcode"],
    "tdx": ["tdx.module_svn", "tdx.qe_svn"],
    "tpm": ["tpm.reset_count"],
}
times = st.datetimes(
    min_value=datetime(2019, 1, 1), max_value=datetime(2032, 1, 1), timezones=st.just(UTC)
) | st.sampled_from(
    [datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)]
)


def check_invariants(decision: Decision) -> None:
    assert decision.results, "a decision always says why"
    if decision.granted:
        assert decision.reason is None
        assert all(r.passed for r in decision.results)
        assert any(r.rule.startswith(("reference-values:", "rule:")) for r in decision.results)
    else:
        first = next(r for r in decision.results if not r.passed)
        assert decision.reason == first.reason
        assert decision.reason in REASONS
    for r in decision.results:
        assert r.passed == (r.reason is None)
        assert r.reason is None or r.reason in REASONS


SLOW = fuzz_settings(300)


@SLOW
@given(policy=policies(), claims=claim_sets(), sets=reference_sets(), now=times)
def test_evaluation_never_raises_and_never_grants_past_a_failure(
    policy: Any, claims: Any, sets: list[ReferenceValueSet], now: datetime
) -> None:
    decision = evaluate(policy, claims, sets, now)
    check_invariants(decision)
    # Each failure kind denies on its own: the decision cannot be granted if any named check failed.
    if any(not r.passed for r in decision.results):
        assert not decision.granted
    # Debug TEEs grant only under allow_debug.
    if decision.granted and isinstance(claims, dict):
        assert claims.get("debug") is False or policy.allow_debug
        assert claims.get("tee") in policy.tees


@SLOW
@given(policy=policies(), sets=reference_sets(), now=times, grant=st.lists(claim_sets(), max_size=2))
def test_examples_never_raise(
    policy: Any, sets: list[ReferenceValueSet], now: datetime, grant: list[Any]
) -> None:
    for failure in check_examples(policy, sets, now):
        assert failure.expected in ("grant", "deny")
        check_invariants(failure.decision)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
near_policies = st.fixed_dictionaries(
    {
        "version": st.sampled_from([1, 1, 2, "1"]),
        "tees": st.lists(st.sampled_from([*TEES, "sgx"]), max_size=3),
    },
    optional={
        "allow_debug": json_values,
        "reference_values": st.lists(st.sampled_from([*SET_NAMES, "Bad Name", 3]), max_size=3),
        "rules": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["a", "b", "B!"]), "expr": st.sampled_from([*RULES, "(", "1"])}
            ),
            max_size=3,
        ),
        "examples": json_values,
        "other": json_values,
    },
)


@SLOW
@given(document=st.one_of(json_values, near_policies), claims=claim_sets(), now=times)
def test_raw_documents_parse_or_fail_with_policy_error_and_never_grant_when_invalid(
    document: Any, claims: Any, now: datetime
) -> None:
    try:
        parse_policy(document)
        valid = True
    except PolicyError:
        valid = False
    decision = evaluate(document, claims, [], now)
    check_invariants(decision)
    if not valid:
        assert not decision.granted
        assert decision.reason == "policy-invalid"


cel_alphabet = st.sampled_from(
    [*"()[]{}.,:?!<>=&|+-*/%\"' _0123456789abcdefxyz", "claims", "now", ".all(", ".map(", "has(", "in "]
)


@fuzz_settings(500)
@given(source=st.lists(cel_alphabet, max_size=40).map("".join) | st.text(max_size=60))
def test_compiling_any_text_fails_only_with_cel_compile_error(source: str) -> None:
    try:
        rule = compile_rule(source)
    except CelCompileError:
        return
    assert rule.cost >= 1
