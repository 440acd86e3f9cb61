"""Policy and reference-value documents: what parses, and every way a document is refused."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from policy import (
    PolicyError,
    parse_policy,
    parse_reference_set,
    parse_reference_values,
    validate_reference_document,
)
from policy.document import MAX_EXAMPLES, MAX_RULES, load_json

from .helpers import policy_doc

MEASUREMENT = "ab" * 48

FULL_POLICY: dict[str, Any] = {
    "version": 1,
    "tees": ["sev-snp", "tdx"],
    "allow_debug": False,
    "reference_values": ["loader-snp", "loader-tdx"],
    "rules": [
        {"name": "vmpl0", "expr": 'claims["snp.vmpl"] == 0', "description": "the loader runs at VMPL 0"},
        {"name": "no-advisories", "expr": 'claims["tdx.advisory_ids"].all(a, a.startsWith("INTEL-SA-"))'},
    ],
    "examples": {"grant": [{"tee": "tdx", "debug": False}], "deny": [{"tee": "tpm", "debug": False}]},
}

FULL_REFERENCE: dict[str, Any] = {
    "version": 1,
    "expected": {
        "snp.measurement": [MEASUREMENT.upper()],
        "snp.product": ["Milan"],
        "snp.policy_smt": [True],
    },
    "minimums": {"snp.reported_tcb.snp": 8, "snp.guest_svn": 1},
    "not_before": "2025-01-01T00:00:00Z",
    "not_after": "2026-01-01T00:00:00+01:00",
}


def test_full_policy_parses() -> None:
    p = parse_policy(FULL_POLICY)
    assert p.version == 1
    assert p.tees == ("sev-snp", "tdx")
    assert p.allow_debug is False
    assert p.reference_values == ("loader-snp", "loader-tdx")
    assert [r.name for r in p.rules] == ["vmpl0", "no-advisories"]
    assert p.rules[0].description == "the loader runs at VMPL 0"
    assert p.rules[1].compiled.iterations == 256  # one pass over a claim list of at most 256 items
    assert p.examples.grant[0]["tee"] == "tdx"
    assert len(p.examples.deny) == 1


def test_minimal_policies_parse_with_defaults() -> None:
    p = parse_policy({"version": 1, "tees": ["tpm"], "reference_values": ["x"]})
    assert p.allow_debug is False  # debug TEEs are denied unless a policy says otherwise
    assert p.rules == ()
    assert p.examples.grant == ()
    assert p.examples.deny == ()
    q = parse_policy({"version": 1, "tees": ["tpm"], "rules": [{"name": "r", "expr": "true"}]})
    assert q.reference_values == ()


def test_policy_from_json_text() -> None:
    text = '{"version": 1, "tees": ["tdx"], "allow_debug": true, "reference_values": ["a"]}'
    assert parse_policy(text).allow_debug is True
    assert parse_policy(text.encode()).tees == ("tdx",)


def _mutated(path: list[str | int], value: Any, *, delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(FULL_POLICY)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


BAD_POLICIES: list[tuple[str, Any, str, str]] = [
    # (case, document, path, message fragment)
    ("not an object", ["tees"], "", "must be a JSON object, not an array"),
    ("null", None, "", "must be a JSON object, not null"),
    ("empty object", {}, "", "missing member(s) tees, version"),
    ("unknown member", _mutated(["tee"], ["tdx"]), "", "unknown member(s) tee"),
    ("no version", _mutated(["version"], None, delete=True), "", "missing member(s) version"),
    ("version 2", _mutated(["version"], 2), "version", "format version 2 is not supported; use 1"),
    ("version as string", _mutated(["version"], "1"), "version", "is not supported"),
    ("version true", _mutated(["version"], True), "version", "is not supported"),
    ("no tees", _mutated(["tees"], None, delete=True), "", "missing member(s) tees"),
    ("empty tees", _mutated(["tees"], []), "tees", "must not be empty"),
    ("tees not a list", _mutated(["tees"], "tdx"), "tees", "must be an array, not a string"),
    ("unknown tee", _mutated(["tees"], ["sgx"]), "tees[0]", "'sgx' is not a tee"),
    ("tee twice", _mutated(["tees"], ["tdx", "tdx"]), "tees[1]", "listed twice"),
    ("tee not a string", _mutated(["tees"], [1]), "tees[0]", "is not a tee"),
    ("allow_debug string", _mutated(["allow_debug"], "false"), "allow_debug", "must be true or false"),
    ("allow_debug int", _mutated(["allow_debug"], 0), "allow_debug", "must be true or false"),
    ("reference_values object", _mutated(["reference_values"], {}), "reference_values", "must be an array"),
    (
        "bad set name",
        _mutated(["reference_values"], ["Loader"]),
        "reference_values[0]",
        "not a reference-value",
    ),
    ("set named twice", _mutated(["reference_values"], ["a", "a"]), "reference_values[1]", "named twice"),
    ("set name not a string", _mutated(["reference_values"], [3]), "reference_values[0]", "must be a string"),
    (
        "empty policy",
        {"version": 1, "tees": ["tdx"], "reference_values": [], "rules": []},
        "",
        "checks nothing but the tee type",
    ),
    ("empty policy, no members", {"version": 1, "tees": ["tdx"]}, "", "checks nothing but the tee type"),
    ("rules object", _mutated(["rules"], {"a": "true"}), "rules", "must be an array"),
    ("rule not object", _mutated(["rules", 0], "true"), "rules[0]", "must be a JSON object"),
    (
        "rule without expr",
        _mutated(["rules", 0, "expr"], None, delete=True),
        "rules[0]",
        "missing member(s) expr",
    ),
    (
        "rule without name",
        _mutated(["rules", 0, "name"], None, delete=True),
        "rules[0]",
        "missing member(s) name",
    ),
    ("rule unknown member", _mutated(["rules", 0, "when"], "x"), "rules[0]", "unknown member(s) when"),
    ("rule bad name", _mutated(["rules", 0, "name"], "No Spaces"), "rules[0].name", "is not a rule name"),
    ("rule name not str", _mutated(["rules", 0, "name"], 7), "rules[0].name", "must be a string"),
    (
        "duplicate rule",
        _mutated(["rules", 1, "name"], "vmpl0"),
        "rules[1].name",
        "two rules are named 'vmpl0'",
    ),
    ("expr not str", _mutated(["rules", 0, "expr"], True), "rules[0].expr", "must be a string"),
    ("empty expr", _mutated(["rules", 0, "expr"], "  "), "rules[0].expr", "the expression is empty"),
    ("syntax error", _mutated(["rules", 0, "expr"], 'claims["a"] =='), "rules[0].expr", "Syntax error"),
    (
        "unknown variable",
        _mutated(["rules", 0, "expr"], "tee == 'tdx'"),
        "rules[0].expr",
        "undeclared reference",
    ),
    (
        "unknown function",
        _mutated(["rules", 0, "expr"], "exec('x')"),
        "rules[0].expr",
        "undeclared reference",
    ),
    ("not boolean", _mutated(["rules", 0, "expr"], "1 + 2"), "rules[0].expr", "must be a boolean condition"),
    (
        "too long",
        _mutated(["rules", 0, "expr"], " || ".join(["true"] * 1100)),
        "rules[0].expr",
        "characters long; the limit is 4096",
    ),
    (
        "too deep",
        _mutated(["rules", 0, "expr"], "(" * 40 + "true" + ")" * 40),
        "rules[0].expr",
        "nested too deeply",
    ),
    ("map", _mutated(["rules", 0, "expr"], "[1].map(x, x) == [1]"), "rules[0].expr", "map() and filter()"),
    (
        "filter",
        _mutated(["rules", 0, "expr"], "size([1].filter(x, x > 0)) == 1"),
        "rules[0].expr",
        "map() and",
    ),
    (
        "costly",
        _mutated(["rules", 0, "expr"], 'claims["a"].contains(claims["b"])'),
        "rules[0].expr",
        "may cost up to",
    ),
    (
        "nested iteration",
        _mutated(["rules", 0, "expr"], 'claims["a"].all(x, claims["b"].exists(y, x == y))'),
        "rules[0].expr",
        "may iterate up to",
    ),
    (
        "dynamic regex",
        _mutated(["rules", 0, "expr"], 'claims["a"].matches(claims["b"])'),
        "rules[0].expr",
        "constant string pattern",
    ),
    (
        "description not str",
        _mutated(["rules", 0, "description"], 1),
        "rules[0].description",
        "must be a string",
    ),
    (
        "description long",
        _mutated(["rules", 0, "description"], "x" * 1001),
        "rules[0].description",
        "longer than",
    ),
    (
        "too many rules",
        _mutated(["rules"], [{"name": f"r{i}", "expr": "true"} for i in range(MAX_RULES + 1)]),
        "rules",
        "at most 64",
    ),
    ("examples list", _mutated(["examples"], []), "examples", "must be a JSON object"),
    ("examples unknown", _mutated(["examples", "maybe"], []), "examples", "unknown member(s) maybe"),
    ("grant not list", _mutated(["examples", "grant"], {}), "examples.grant", "must be an array"),
    (
        "example not object",
        _mutated(["examples", "grant"], [["tee"]]),
        "examples.grant[0]",
        "is not a claim set",
    ),
    (
        "example bad value",
        _mutated(["examples", "deny"], [{"x": 1.5}]),
        "examples.deny[0]",
        "is not a claim set",
    ),
    ("example huge", _mutated(["examples", "deny"], [{"x": "a" * 5000}]), "examples.deny[0]", "limit 1024"),
    (
        "too many examples",
        _mutated(["examples", "deny"], [{}] * (MAX_EXAMPLES + 1)),
        "examples.deny",
        "at most 32",
    ),
]


@pytest.mark.parametrize(
    ("case", "document", "path", "fragment"), BAD_POLICIES, ids=[c[0] for c in BAD_POLICIES]
)
def test_bad_policies_are_refused_with_a_located_reason(
    case: str, document: Any, path: str, fragment: str
) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(document)
    assert exc.value.path == path, str(exc.value)
    assert fragment in exc.value.message, str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert str(exc.value).startswith(f"{path}: " if path else exc.value.message)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ('{"version": 1, "version": 1, "tees": ["tdx"]}', "duplicate member 'version'"),
        ('{"version": NaN}', "NaN is not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ],
)
def test_bad_json_text(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        parse_policy(text)
    with pytest.raises(PolicyError, match=fragment):
        load_json(text)


def test_rule_error_names_the_rule_and_shows_where() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(
            policy_doc(rules=[{"name": "tcb", "expr": 'claims["snp.reported_tcb.snp"] >= 8 && "8" > 1'}])
        )
    assert exc.value.path == "rules[0].expr"
    assert "rule 'tcb' cannot be used" in exc.value.message
    assert "no matching overload" in exc.value.message


# --- reference values ---------------------------------------------------------------------------------------


def test_full_reference_values_parse() -> None:
    v = parse_reference_values("sev-snp", FULL_REFERENCE)
    assert v.expected["snp.measurement"] == (MEASUREMENT,)  # hex normalised to lowercase, as claims carry it
    assert v.expected["snp.product"] == ("Milan",)
    assert v.expected["snp.policy_smt"] == (True,)
    assert dict(v.minimums) == {"snp.reported_tcb.snp": 8, "snp.guest_svn": 1}
    assert v.not_before == datetime(2025, 1, 1, tzinfo=UTC)
    assert v.not_after == datetime(2025, 12, 31, 23, tzinfo=UTC)
    validate_reference_document("sev-snp", FULL_REFERENCE)


@pytest.mark.parametrize(
    ("tee", "values"),
    [
        (
            "tdx",
            {"expected": {"tdx.mrtd": ["00" * 48], "tdx.rtmr3": ["11" * 48], "tdx.tcb_status": ["UpToDate"]}},
        ),
        ("tdx", {"minimums": {"tdx.module_svn": 3, "tdx.tcb_evaluation_data_number": 17}}),
        ("tpm", {"expected": {"tpm.pcrs.sha256.7": ["aa" * 32], "tpm.pcrs.sha384.23": ["bb" * 48]}}),
        ("tpm", {"expected": {"tpm.pcrs.sha1.0": ["cc" * 20], "tpm.secure_boot": [True]}}),
        ("tpm", {"expected": {"tpm.ak_name": ["000b" + "dd" * 32]}}),
        ("sev-snp", {"expected": {"snp.future_claim": ["x", 3, False]}}),  # unknown claims: any scalar
        ("sev-snp", {"minimums": {"snp.future_counter": 2}}),
    ],
)
def test_reference_values_for_each_tee(tee: str, values: dict[str, Any]) -> None:
    parse_reference_values(tee, {"version": 1, **values})


BAD_REFERENCES: list[tuple[str, str, Any, str, str]] = [
    ("unknown tee", "sgx", {"version": 1}, "tee", "'sgx' is not a tee"),
    ("not object", "sev-snp", [], "", "must be a JSON object"),
    ("no version", "sev-snp", {"expected": {"snp.vmpl": [0]}}, "", "missing member(s) version"),
    ("version 2", "sev-snp", {"version": 2, "expected": {"snp.vmpl": [0]}}, "version", "not supported"),
    ("unknown member", "sev-snp", {"version": 1, "values": {}}, "", "unknown member(s) values"),
    ("pins nothing", "sev-snp", {"version": 1}, "", "must pin something"),
    (
        "pins nothing, empty",
        "sev-snp",
        {"version": 1, "expected": {}, "minimums": {}},
        "",
        "must pin something",
    ),
    ("expected list", "sev-snp", {"version": 1, "expected": []}, "expected", "must be a JSON object"),
    (
        "other tee's claim",
        "sev-snp",
        {"version": 1, "expected": {"tdx.mrtd": ["00" * 48]}},
        "expected.tdx.mrtd",
        "not a sev-snp claim",
    ),
    (
        "bad claim name",
        "tdx",
        {"version": 1, "expected": {"tdx.MRTD": ["00" * 48]}},
        "expected.tdx.MRTD",
        "not a tdx claim",
    ),
    (
        "generic claim",
        "tdx",
        {"version": 1, "expected": {"debug": [False]}},
        "expected.debug",
        "not a tdx claim",
    ),
    (
        "values not list",
        "tdx",
        {"version": 1, "expected": {"tdx.mrtd": "00" * 48}},
        "expected.tdx.mrtd",
        "must be an array",
    ),
    (
        "no values",
        "tdx",
        {"version": 1, "expected": {"tdx.mrtd": []}},
        "expected.tdx.mrtd",
        "must not be empty",
    ),
    (
        "short hex",
        "tdx",
        {"version": 1, "expected": {"tdx.mrtd": ["00" * 47]}},
        "expected.tdx.mrtd[0]",
        "48 bytes",
    ),
    (
        "not hex",
        "tdx",
        {"version": 1, "expected": {"tdx.mrtd": ["zz" * 48]}},
        "expected.tdx.mrtd[0]",
        "not hex",
    ),
    (
        "0x hex",
        "tdx",
        {"version": 1, "expected": {"tdx.mrtd": ["0x" + "00" * 47]}},
        "expected.tdx.mrtd[0]",
        "not hex",
    ),
    (
        "hex int",
        "tdx",
        {"version": 1, "expected": {"tdx.mrtd": [0]}},
        "expected.tdx.mrtd[0]",
        "must be a string",
    ),
    (
        "duplicate value",
        "tdx",
        {"version": 1, "expected": {"tdx.mrtd": ["AA" * 48, "aa" * 48]}},
        "expected.tdx.mrtd[1]",
        "twice",
    ),
    (
        "pcr index",
        "tpm",
        {"version": 1, "expected": {"tpm.pcrs.sha256.24": ["aa" * 32]}},
        "expected.tpm.pcrs.sha256.24",
        "not a PCR",
    ),
    (
        "pcr bank",
        "tpm",
        {"version": 1, "expected": {"tpm.pcrs.sm3.1": ["aa" * 32]}},
        "expected.tpm.pcrs.sm3.1",
        "not a PCR",
    ),
    (
        "pcr size",
        "tpm",
        {"version": 1, "expected": {"tpm.pcrs.sha256.7": ["aa" * 20]}},
        "expected.tpm.pcrs.sha256.7[0]",
        "32 bytes",
    ),
    (
        "odd ak name",
        "tpm",
        {"version": 1, "expected": {"tpm.ak_name": ["abc"]}},
        "expected.tpm.ak_name[0]",
        "even number",
    ),
    (
        "bad status",
        "tdx",
        {"version": 1, "expected": {"tdx.tcb_status": ["Fine"]}},
        "expected.tdx.tcb_status[0]",
        "is not one of",
    ),
    (
        "bad product",
        "sev-snp",
        {"version": 1, "expected": {"snp.product": ["milan"]}},
        "expected.snp.product[0]",
        "is not one of",
    ),
    (
        "int as string",
        "sev-snp",
        {"version": 1, "expected": {"snp.vmpl": ["0"]}},
        "expected.snp.vmpl[0]",
        "must be an integer",
    ),
    (
        "bool as int",
        "sev-snp",
        {"version": 1, "expected": {"snp.vmpl": [True]}},
        "expected.snp.vmpl[0]",
        "must be an integer",
    ),
    (
        "negative",
        "sev-snp",
        {"version": 1, "expected": {"snp.vmpl": [-1]}},
        "expected.snp.vmpl[0]",
        "between 0 and",
    ),
    (
        "bool claim",
        "sev-snp",
        {"version": 1, "expected": {"snp.policy_smt": [1]}},
        "expected.snp.policy_smt[0]",
        "true or false",
    ),
    (
        "list claim",
        "tdx",
        {"version": 1, "expected": {"tdx.advisory_ids": [[]]}},
        "expected.tdx.advisory_ids",
        "list-valued",
    ),
    (
        "null value",
        "sev-snp",
        {"version": 1, "expected": {"snp.future": [None]}},
        "expected.snp.future[0]",
        "must be an integer",
    ),
    (
        "float value",
        "sev-snp",
        {"version": 1, "expected": {"snp.future": [1.5]}},
        "expected.snp.future[0]",
        "must be an integer",
    ),
    (
        "minimum of hex",
        "sev-snp",
        {"version": 1, "minimums": {"snp.measurement": 1}},
        "minimums.snp.measurement",
        "hex claim",
    ),
    (
        "minimum of enum",
        "tdx",
        {"version": 1, "minimums": {"tdx.tcb_status": 1}},
        "minimums.tdx.tcb_status",
        "enum claim",
    ),
    (
        "minimum string",
        "sev-snp",
        {"version": 1, "minimums": {"snp.guest_svn": "1"}},
        "minimums.snp.guest_svn",
        "must be an integer",
    ),
    (
        "minimum huge",
        "sev-snp",
        {"version": 1, "minimums": {"snp.guest_svn": 1 << 64}},
        "minimums.snp.guest_svn",
        "between 0 and",
    ),
    ("minimums list", "sev-snp", {"version": 1, "minimums": [1]}, "minimums", "must be a JSON object"),
    (
        "naive time",
        "sev-snp",
        {"version": 1, "minimums": {"snp.vmpl": 0}, "not_after": "2026-01-01T00:00:00"},
        "not_after",
        "no time zone",
    ),
    (
        "bad time",
        "sev-snp",
        {"version": 1, "minimums": {"snp.vmpl": 0}, "not_before": "yesterday"},
        "not_before",
        "not an RFC 3339",
    ),
    (
        "time number",
        "sev-snp",
        {"version": 1, "minimums": {"snp.vmpl": 0}, "not_before": 0},
        "not_before",
        "must be a string",
    ),
    (
        "empty window",
        "sev-snp",
        {
            "version": 1,
            "minimums": {"snp.vmpl": 0},
            "not_before": "2026-01-01T00:00:00Z",
            "not_after": "2026-01-01T00:00:00Z",
        },
        "not_after",
        "later than not_before",
    ),
]


@pytest.mark.parametrize(
    ("case", "tee", "document", "path", "fragment"), BAD_REFERENCES, ids=[c[0] for c in BAD_REFERENCES]
)
def test_bad_reference_values_are_refused(
    case: str, tee: str, document: Any, path: str, fragment: str
) -> None:
    with pytest.raises(PolicyError) as exc:
        validate_reference_document(tee, document)
    if path:
        assert exc.value.path == path, str(exc.value)
    assert fragment in exc.value.message, str(exc.value)


def test_self_contained_reference_set() -> None:
    s = parse_reference_set({"name": "loader", "tee": "sev-snp", "version": 3, "values": FULL_REFERENCE})
    assert (s.name, s.tee, s.version, s.revoked) == ("loader", "sev-snp", 3, False)
    assert s.values.minimums["snp.reported_tcb.snp"] == 8
    text = (
        '{"name": "l", "tee": "tdx", "version": 1, "revoked": true, '
        '"values": {"version": 1, "minimums": {"tdx.qe_svn": 1}}}'
    )
    assert parse_reference_set(text).revoked is True


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        ({"name": "l", "tee": "tdx", "version": 1}, "", "missing member(s) values"),
        ({"name": "L", "tee": "tdx", "version": 1, "values": {}}, "name", "not a reference-value set name"),
        ({"name": "l", "tee": "tdx", "version": 0, "values": {}}, "version", "1 or more"),
        ({"name": "l", "tee": "tdx", "version": "1", "values": {}}, "version", "must be an integer"),
        (
            {"name": "l", "tee": "tdx", "version": 1, "revoked": "no", "values": {}},
            "revoked",
            "true or false",
        ),
        ({"name": "l", "tee": "x", "version": 1, "values": {"version": 1}}, "tee", "is not a tee"),
        ({"name": "l", "tee": 5, "version": 1, "values": {}}, "tee", "must be a string"),
        ({"name": "l", "tee": "tdx", "version": 1, "values": {"version": 1}}, "values", "must pin something"),
        (
            {
                "name": "l",
                "tee": "tdx",
                "version": 1,
                "values": {"version": 1, "expected": {"tdx.mrtd": ["0"]}},
            },
            "values.expected.tdx.mrtd[0]",
            "not hex",
        ),
    ],
)
def test_bad_self_contained_sets(document: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_reference_set(document)
    assert exc.value.path == path, str(exc.value)
    assert fragment in exc.value.message
