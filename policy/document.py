"""Release-policy and reference-value documents: their JSON formats and strict parsing (docs/policy.md).

Strict means: every member is known and of the right type, nothing is silently defaulted except what the
format documents as optional, and every problem is a :class:`PolicyError` whose message names the member
(``rules[2].expr``) and says what to do. A document that parses can be evaluated: its CEL rules compiled,
type-checked and cost-bounded, its reference values in the format of the claims they pin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from keyserver.evidence.claims import TEE_NVIDIA_GPU
from keyserver.strict_json import loads_strict
from policy.cel import CelCompileError, CompiledRule, compile_rule
from policy.claims import (
    CLAIM_NAME,
    NITRO_PCR_NAME,
    PCR_NAME,
    TEES,
    UINT_MAX,
    ClaimFormat,
    Kind,
    check_claims,
    claim_format,
    tee_prefixes,
)
from policy.gpu import GPU_SET_FORBIDDEN

POLICY_FORMAT_VERSION = 1
REFERENCE_VALUES_FORMAT_VERSION = 1

# Same alphabet as the service's names (keyserver.reference_values.NAME_RE), so a policy can name any set.
SET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}\Z")
RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
MAX_RULES = 64
MAX_REFERENCE_SETS = 32
MAX_EXAMPLES = 32  # per kind
MAX_REFERENCE_CLAIMS = 256
MAX_EXPECTED_VALUES = 256
MAX_DESCRIPTION_CHARS = 1000

ScalarValue = str | int | bool


class PolicyError(ValueError):
    """A policy or reference-value document that cannot be used, with where and why."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path


# --- the parsed documents -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    expr: str
    description: str
    compiled: CompiledRule = field(compare=False, repr=False)


@dataclass(frozen=True)
class Examples:
    grant: tuple[Mapping[str, object], ...] = ()
    deny: tuple[Mapping[str, object], ...] = ()


@dataclass(frozen=True)
class Policy:
    version: int
    tees: tuple[str, ...]
    allow_debug: bool
    reference_values: tuple[str, ...]
    rules: tuple[Rule, ...]
    examples: Examples


@dataclass(frozen=True)
class ReferenceValues:
    """The content of one version of a reference-value set (what the service stores as its document)."""

    expected: Mapping[str, tuple[ScalarValue, ...]]  # claim -> the claim must equal one of these
    minimums: Mapping[str, int]  # claim -> the claim must be an integer >= this
    not_before: datetime | None = None
    not_after: datetime | None = None


@dataclass(frozen=True)
class ReferenceValueSet:
    """One version of a named set, as evaluation needs it: the service supplies name, tee, version and
    revocation from its records; ``values`` is the parsed document."""

    name: str
    tee: str
    version: int
    values: ReferenceValues
    revoked: bool = False


# --- JSON helpers -------------------------------------------------------------------------------------------


def load_json(text: str | bytes) -> Any:
    """Parse JSON text, refusing duplicate members (which of two ``"tees"`` would win is not something a
    policy should leave to a parser) and non-finite numbers."""

    try:
        return loads_strict(text.encode() if isinstance(text, str) else text)
    except ValueError as exc:
        raise PolicyError(f"not valid JSON: {exc}") from None


def _object(value: object, path: str, *, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"must be a JSON object, not {_json_type(value)}", path)
    keys = set(value)
    unknown = sorted(str(k) for k in keys - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise PolicyError(f"unknown member(s) {', '.join(unknown)}; the members are {allowed}", path)
    missing = sorted(required - keys)
    if missing:
        raise PolicyError(f"missing member(s) {', '.join(missing)}", path)
    return value


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"must be a JSON object, not {_json_type(value)}", path)
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _list(value: object, path: str, *, max_items: int, non_empty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(f"must be an array, not {_json_type(value)}", path)
    if non_empty and not value:
        raise PolicyError("must not be empty", path)
    if len(value) > max_items:
        raise PolicyError(f"has {len(value)} items; at most {max_items} are allowed", path)
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"must be a string, not {_json_type(value)}", path)
    return value


def _uint(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"must be an integer, not {_json_type(value)}", path)
    if not 0 <= value <= UINT_MAX:
        raise PolicyError("must be between 0 and 2^64-1", path)
    return value


def _version(doc: Mapping[str, Any], supported: int) -> int:
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version != supported:
        raise PolicyError(f"format version {version!r} is not supported; use {supported}", "version")
    return version


def _timestamp(value: object, path: str) -> datetime:
    text = _str(value, path)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise PolicyError(
            f"{text!r} is not an RFC 3339 timestamp (e.g. 2026-01-31T00:00:00Z)", path
        ) from None
    if parsed.tzinfo is None:
        raise PolicyError(f"{text!r} has no time zone; end it with Z or an offset", path)
    return parsed


# --- policies -----------------------------------------------------------------------------------------------


def parse_policy(document: object) -> Policy:
    """A release-policy document (a parsed JSON object, or JSON text) as a :class:`Policy`."""
    if isinstance(document, str | bytes):
        document = load_json(document)
    doc = _object(
        document,
        "",
        required={"version", "tees"},
        optional={"allow_debug", "reference_values", "rules", "examples"},
    )
    version = _version(doc, POLICY_FORMAT_VERSION)
    tees = _tees(doc["tees"])
    allow_debug = doc.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyError(f"must be true or false, not {_json_type(allow_debug)}", "allow_debug")
    ref_names = _reference_names(doc.get("reference_values", []))
    rules = _rules(doc.get("rules", []))
    if not ref_names and not rules:
        raise PolicyError(
            "the policy checks nothing but the tee type; name the reference values the claims must match "
            "(reference_values) or add rules"
        )
    examples = _examples(doc.get("examples", {}))
    return Policy(version, tees, allow_debug, ref_names, rules, examples)


def _tees(value: object) -> tuple[str, ...]:
    items = _list(value, "tees", max_items=len(TEES), non_empty=True)
    seen: list[str] = []
    for i, tee in enumerate(items):
        if tee not in TEES:
            raise PolicyError(f"{tee!r} is not a tee; use {', '.join(TEES)}", f"tees[{i}]")
        if tee in seen:
            raise PolicyError(f"{tee!r} is listed twice", f"tees[{i}]")
        seen.append(tee)
    return tuple(seen)


def _reference_names(value: object) -> tuple[str, ...]:
    items = _list(value, "reference_values", max_items=MAX_REFERENCE_SETS)
    seen: list[str] = []
    for i, name in enumerate(items):
        path = f"reference_values[{i}]"
        if not SET_NAME.match(_str(name, path)):
            raise PolicyError(
                f"{name!r} is not a reference-value set name (1-100 of a-z 0-9 . _ -, starting with a letter "
                "or digit)",
                path,
            )
        if name in seen:
            raise PolicyError(f"{name!r} is named twice", path)
        seen.append(name)
    return tuple(seen)


def _rules(value: object) -> tuple[Rule, ...]:
    items = _list(value, "rules", max_items=MAX_RULES)
    rules: list[Rule] = []
    for i, item in enumerate(items):
        path = f"rules[{i}]"
        doc = _object(item, path, required={"name", "expr"}, optional={"description"})
        name = _str(doc["name"], f"{path}.name")
        if not RULE_NAME.match(name):
            raise PolicyError(
                f"{name!r} is not a rule name (1-64 of a-z 0-9 . _ -, starting with a letter or digit)",
                f"{path}.name",
            )
        if any(r.name == name for r in rules):
            raise PolicyError(f"two rules are named {name!r}; rule names must be unique", f"{path}.name")
        description = _str(doc.get("description", ""), f"{path}.description")
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise PolicyError(f"is longer than {MAX_DESCRIPTION_CHARS} characters", f"{path}.description")
        expr = _str(doc["expr"], f"{path}.expr")
        try:
            compiled = compile_rule(expr)
        except CelCompileError as exc:
            raise PolicyError(f"rule {name!r} cannot be used: {exc}", f"{path}.expr") from None
        rules.append(Rule(name, expr, description, compiled))
    return tuple(rules)


def _examples(value: object) -> Examples:
    doc = _object(value, "examples", required=set(), optional={"grant", "deny"})
    out: dict[str, tuple[Mapping[str, object], ...]] = {}
    for kind in ("grant", "deny"):
        sets = _list(doc.get(kind, []), f"examples.{kind}", max_items=MAX_EXAMPLES)
        checked = []
        for i, claims in enumerate(sets):
            problem = check_claims(claims)
            if problem or not isinstance(claims, Mapping):
                raise PolicyError(f"is not a claim set: {problem}", f"examples.{kind}[{i}]")
            checked.append(MappingProxyType(dict(claims)))
        out[kind] = tuple(checked)
    return Examples(grant=out["grant"], deny=out["deny"])


# --- reference values ---------------------------------------------------------------------------------------


def parse_reference_values(tee: str, document: object) -> ReferenceValues:
    """The document of one reference-value set version for ``tee`` (JSON object or text)."""
    if tee not in TEES:
        raise PolicyError(f"{tee!r} is not a tee; use {', '.join(TEES)}", "tee")
    if isinstance(document, str | bytes):
        document = load_json(document)
    doc = _object(
        document, "", required={"version"}, optional={"expected", "minimums", "not_before", "not_after"}
    )
    _version(doc, REFERENCE_VALUES_FORMAT_VERSION)
    expected = _expected(tee, doc.get("expected", {}))
    minimums = _minimums(tee, doc.get("minimums", {}))
    if not expected and not minimums:
        raise PolicyError("a reference-value set must pin something: give expected values or minimums")
    not_before = _timestamp(doc["not_before"], "not_before") if "not_before" in doc else None
    not_after = _timestamp(doc["not_after"], "not_after") if "not_after" in doc else None
    if not_before is not None and not_after is not None and not_before >= not_after:
        raise PolicyError("must be later than not_before", "not_after")
    return ReferenceValues(MappingProxyType(expected), MappingProxyType(minimums), not_before, not_after)


def validate_reference_document(tee: str, document: dict[str, Any]) -> None:
    """The service's check before it stores a reference-value document; raises :class:`PolicyError`."""
    parse_reference_values(tee, document)


def parse_reference_set(document: object) -> ReferenceValueSet:
    """A self-contained set (files, the dry-run CLI, tests):
    ``{"name", "tee", "version", "values": {…}, "revoked"?}``."""
    if isinstance(document, str | bytes):
        document = load_json(document)
    doc = _object(document, "", required={"name", "tee", "version", "values"}, optional={"revoked"})
    name = _str(doc["name"], "name")
    if not SET_NAME.match(name):
        raise PolicyError(f"{name!r} is not a reference-value set name", "name")
    tee = _str(doc["tee"], "tee")
    version = _uint(doc["version"], "version")
    if version < 1:
        raise PolicyError("must be 1 or more", "version")
    revoked = doc.get("revoked", False)
    if not isinstance(revoked, bool):
        raise PolicyError(f"must be true or false, not {_json_type(revoked)}", "revoked")
    try:
        values = parse_reference_values(tee, doc["values"])
    except PolicyError as exc:
        if exc.path == "tee":
            raise
        raise PolicyError(exc.message, f"values.{exc.path}" if exc.path else "values") from None
    return ReferenceValueSet(name, tee, version, values, revoked)


def _claim_name(tee: str, name: object, path: str) -> str:
    text = _str(name, path)
    prefixes = tee_prefixes(tee)
    if not CLAIM_NAME.fullmatch(text) or not text.startswith(prefixes):
        named = " or ".join(f"{p}…" for p in prefixes)
        raise PolicyError(
            f"{text!r} is not a {tee} claim name (a {tee} set pins claims named {named}; see DESIGN.md, "
            "Claims)",
            path,
        )
    if tee == TEE_NVIDIA_GPU and GPU_SET_FORBIDDEN.match(text):
        raise PolicyError(
            f"{text!r} cannot be pinned by an nvidia-gpu set, which applies to every GPU: pin gpu.<claim> or "
            "gpu.measurement.<1-64>, and write a rule for one GPU or for the count",
            path,
        )
    if text.startswith("tpm.pcrs.") and not PCR_NAME.match(text):
        raise PolicyError(f"{text!r} is not a PCR claim; PCRs are tpm.pcrs.<sha1|sha256|sha384>.<0-23>", path)
    if text.startswith("nitro.pcrs.") and not NITRO_PCR_NAME.match(text):
        raise PolicyError(f"{text!r} is not a Nitro PCR claim; they are nitro.pcrs.<0-31>", path)
    return text


def _expected_value(fmt: ClaimFormat, value: object, path: str) -> ScalarValue:
    if fmt.kind is Kind.HEX:
        text = _str(value, path)
        n = fmt.hex_bytes
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text) or (n is not None and len(text) != 2 * n):
            size = f"{n} bytes ({2 * n} hex digits)" if n is not None else "an even number of hex digits"
            raise PolicyError(f"{text!r} is not hex of {size}", path)
        return text.lower()  # claims carry lowercase hex
    if fmt.kind is Kind.INT:
        return _uint(value, path)
    if fmt.kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise PolicyError(f"must be true or false, not {_json_type(value)}", path)
        return value
    if fmt.kind is Kind.ENUM:
        if value not in fmt.choices:
            raise PolicyError(f"{value!r} is not one of {', '.join(sorted(fmt.choices))}", path)
        return _str(value, path)
    if fmt.kind is Kind.LIST:
        raise PolicyError(
            "is a list-valued claim; a reference value cannot pin it, write a rule instead", path
        )
    if isinstance(value, bool | str):
        return value
    return _uint(value, path)


def _expected(tee: str, value: object) -> dict[str, tuple[ScalarValue, ...]]:
    doc = _mapping(value, "expected")
    if len(doc) > MAX_REFERENCE_CLAIMS:
        raise PolicyError(f"names {len(doc)} claims; at most {MAX_REFERENCE_CLAIMS} are allowed", "expected")
    out: dict[str, tuple[ScalarValue, ...]] = {}
    for name, values in doc.items():
        path = f"expected.{name}"
        claim = _claim_name(tee, name, path)
        fmt = claim_format(claim)
        if fmt.kind is Kind.LIST:
            raise PolicyError(
                "is a list-valued claim; a reference value cannot pin it, write a rule instead", path
            )
        items = _list(values, path, max_items=MAX_EXPECTED_VALUES, non_empty=True)
        parsed: list[ScalarValue] = []
        for i, item in enumerate(items):
            v = _expected_value(fmt, item, f"{path}[{i}]")
            if any(type(p) is type(v) and p == v for p in parsed):
                raise PolicyError(f"{item!r} is listed twice", f"{path}[{i}]")
            parsed.append(v)
        out[claim] = tuple(parsed)
    return out


def _minimums(tee: str, value: object) -> dict[str, int]:
    doc = _mapping(value, "minimums")
    if len(doc) > MAX_REFERENCE_CLAIMS:
        raise PolicyError(f"names {len(doc)} claims; at most {MAX_REFERENCE_CLAIMS} are allowed", "minimums")
    out: dict[str, int] = {}
    for name, minimum in doc.items():
        path = f"minimums.{name}"
        claim = _claim_name(tee, name, path)
        kind = claim_format(claim).kind
        if kind not in (Kind.INT, Kind.SCALAR):
            raise PolicyError(
                f"is a {kind.value} claim; minimums apply to integer claims (SVNs, TCB levels)", path
            )
        out[claim] = _uint(minimum, path)
    return out
