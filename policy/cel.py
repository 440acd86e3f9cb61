"""CEL for release-policy rules: compilation with hard limits, a static cost bound, and evaluation.

The engine is ``cel-expr-python`` (Google's CEL-C++ runtime; see docs/policy.md for why, measured with
tests/policy/bench_cel.py). It is sandboxed by construction: a rule sees two variables, ``claims``
(``map(string, dyn)``) and ``now`` (``timestamp``), and only CEL's standard functions and macros; no Python
function is registered, so no expression can reach a Python object.

Why a static cost bound on top of the library's own limits. CEL-C++ stops parsing at nesting depth 32 and
stops a single evaluation after 10,000 comprehension iterations, but neither bounds the *work*: comparing
values that a comprehension builds out of shared parts is exponential in the expression's length.
Measured (bench): ten chained ``.map(x, [x, x, x, x, x, x, x, x])`` compared with ``==``, 850 characters,
run 41 s; nested ``[[v, v, …]].all(w, …)`` list literals, 874 characters, run 25 s inside the iteration
budget. So, at compile time, every rule's checked AST is walked with an abstract size model
(:class:`Bound`): each value gets an upper bound on its size, its length and its items' size, assuming
claims within :data:`CLAIM_LIMITS` (evaluation refuses larger claims); each operation costs what the C++
runtime can do with operands of those sizes; a comprehension costs its range's length times its body. A
rule whose bound exceeds :data:`MAX_COST` units or :data:`MAX_ITERATIONS` iterations is refused with the
figure. ``map()`` and ``filter()`` are refused outright: their results are lists that grow with the
input, and ``all``/``exists``/``exists_one`` express every release condition we know of.

The checked AST comes out of the library as a serialized ``cel.expr.CheckedExpr`` protobuf; the few
message types it uses are decoded here (field numbers from cel-spec's ``checked.proto``/``syntax.proto``)
rather than pulling in protobuf for them.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# --- limits ---------------------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 4096
# Units of the cost model: one unit is about one primitive step of the C++ runtime (a comparison of two
# scalars, 16 characters of a string). Measured: the costliest rules accepted under this limit evaluate in
# milliseconds (tests/policy/test_cel.py::test_accepted_worst_cases_are_fast).
MAX_COST = 1_000_000
# CEL-C++ aborts an evaluation at 10,000 comprehension iterations; refusing statically at half of that
# means an accepted rule never depends on where exactly the runtime draws its line.
MAX_ITERATIONS = 5_000


@dataclass(frozen=True)
class ClaimLimits:
    """What evaluation accepts as claims (larger claims are a denial, ``claims-invalid``), and so what the
    cost model may assume. Verifier output is far below these: the longest string is a 64-byte hex
    value (128 characters), lists are advisory ids and EFI application digests (tens of items)."""

    max_claims: int = 512
    max_name_chars: int = 128
    max_string_chars: int = 1024
    max_list_items: int = 256
    max_item_chars: int = 128


CLAIM_LIMITS = ClaimLimits()

STRING_UNIT = 16  # characters per size unit


class CelCompileError(ValueError):
    """A rule that does not compile, uses something not allowed, or may cost too much."""


# --- the abstract size model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """Upper bounds on a value: ``size`` (units: 1 per scalar, per container, per 16 characters),
    ``length`` (how many items a comprehension over it may visit), ``elem`` (bound on any item or map
    value; ``None`` when unknown, which is read as "as large as the whole")."""

    size: int
    length: int
    elem: Bound | None = None
    key: Bound | None = None  # maps: bound on a key (what a comprehension over the map visits)
    map_only: bool = False  # certainly a map (not "a map or a list", as a joined claim value is)


def _scalar(size: int = 1) -> Bound:
    return Bound(size, 1, None)


def _string_units(chars: int) -> int:
    return 1 + math.ceil(chars / STRING_UNIT)


def elem_of(b: Bound) -> Bound:
    return b.elem if b.elem is not None else Bound(b.size, b.size, None)


def join(a: Bound, b: Bound) -> Bound:
    elem = None if a.elem is None and b.elem is None else join(elem_of(a), elem_of(b))
    key = None if a.key is None and b.key is None else join(a.key or elem_of(a), b.key or elem_of(b))
    return Bound(max(a.size, b.size), max(a.length, b.length), elem, key, a.map_only and b.map_only)


def _claims_bound(limits: ClaimLimits) -> Bound:
    item = _scalar(_string_units(limits.max_item_chars))
    as_list = Bound(1 + limits.max_list_items * item.size, limits.max_list_items, item)
    value = join(as_list, _scalar(_string_units(limits.max_string_chars)))
    key = _scalar(_string_units(limits.max_name_chars))
    return Bound(1 + limits.max_claims * (key.size + value.size), limits.max_claims, value, key, True)


CLAIMS_BOUND = _claims_bound(CLAIM_LIMITS)

# --- the checked AST ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Const:
    kind: str  # null, bool, int, uint, double, string, bytes
    value: object


@dataclass(frozen=True)
class Ident:
    name: str


@dataclass(frozen=True)
class Select:
    operand: Expr
    field: str
    test_only: bool


@dataclass(frozen=True)
class Call:
    function: str
    target: Expr | None
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class ListLit:
    elements: tuple[Expr, ...]


@dataclass(frozen=True)
class MapLit:
    entries: tuple[tuple[Expr, Expr], ...]


@dataclass(frozen=True)
class Comprehension:
    iter_var: str
    iter_var2: str
    iter_range: Expr
    accu_var: str
    accu_init: Expr
    loop_condition: Expr
    loop_step: Expr
    result: Expr


Expr = Const | Ident | Select | Call | ListLit | MapLit | Comprehension


class _Wire:
    """Protocol-buffer wire format, just enough to read a CheckedExpr: field number -> list of values
    (ints for varint/fixed fields, bytes for length-delimited ones)."""

    @staticmethod
    def fields(data: bytes) -> dict[int, list[int | bytes]]:
        out: dict[int, list[int | bytes]] = {}
        pos = 0
        while pos < len(data):
            key, pos = _Wire.varint(data, pos)
            number, wire_type = key >> 3, key & 7
            value: int | bytes
            if wire_type == 0:
                value, pos = _Wire.varint(data, pos)
            elif wire_type == 1:
                value, pos = struct.unpack_from("<Q", data, pos)[0], pos + 8
            elif wire_type == 2:
                length, pos = _Wire.varint(data, pos)
                if pos + length > len(data):
                    raise CelCompileError("internal: truncated checked expression")
                value, pos = data[pos : pos + length], pos + length
            elif wire_type == 5:
                value, pos = struct.unpack_from("<I", data, pos)[0], pos + 4
            else:
                raise CelCompileError(f"internal: unsupported protobuf wire type {wire_type}")
            out.setdefault(number, []).append(value)
        return out

    @staticmethod
    def varint(data: bytes, pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise CelCompileError("internal: malformed varint in checked expression")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result, pos


def _one(fields: dict[int, list[int | bytes]], number: int) -> bytes:
    values = fields.get(number)
    if not values or not isinstance(values[-1], bytes):
        raise CelCompileError(f"internal: checked expression lacks field {number}")
    return values[-1]


def _text(fields: dict[int, list[int | bytes]], number: int, default: str = "") -> str:
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    if not isinstance(value, bytes):
        raise CelCompileError(f"internal: field {number} is not a string")
    return value.decode()


def _int(fields: dict[int, list[int | bytes]], number: int) -> int:
    value = fields[number][-1]
    if not isinstance(value, int):
        raise CelCompileError(f"internal: field {number} is not an integer")
    return value


def _constant(data: bytes) -> Const:
    f = _Wire.fields(data)
    if 1 in f:
        return Const("null", None)
    if 2 in f:
        return Const("bool", bool(_int(f, 2)))
    if 3 in f:
        raw = _int(f, 3)
        return Const("int", raw - (1 << 64) if raw >= 1 << 63 else raw)
    if 4 in f:
        return Const("uint", _int(f, 4))
    if 5 in f:
        return Const("double", struct.unpack("<d", struct.pack("<Q", _int(f, 5)))[0])
    if 6 in f:
        return Const("string", _one(f, 6).decode())
    if 7 in f:
        return Const("bytes", _one(f, 7))
    raise CelCompileError(
        "durations and timestamps as literals are not supported; use duration()/timestamp()"
    )


def decode_expr(data: bytes) -> Expr:
    f = _Wire.fields(data)
    if 3 in f:
        return _constant(_one(f, 3))
    if 4 in f:
        return Ident(_text(_Wire.fields(_one(f, 4)), 1))
    if 5 in f:
        s = _Wire.fields(_one(f, 5))
        return Select(decode_expr(_one(s, 1)), _text(s, 2), bool(s.get(3, [0])[-1]))
    if 6 in f:
        c = _Wire.fields(_one(f, 6))
        target = decode_expr(_one(c, 1)) if 1 in c else None
        args = tuple(decode_expr(a) for a in c.get(3, []) if isinstance(a, bytes))
        return Call(_text(c, 2), target, args)
    if 7 in f:
        lst = _Wire.fields(_one(f, 7))
        if 2 in lst:
            raise CelCompileError("optional list elements are not supported")
        return ListLit(tuple(decode_expr(e) for e in lst.get(1, []) if isinstance(e, bytes)))
    if 8 in f:
        st = _Wire.fields(_one(f, 8))
        if _text(st, 1):
            raise CelCompileError("message construction is not supported")
        entries = []
        for raw in st.get(2, []):
            if not isinstance(raw, bytes):
                raise CelCompileError("internal: malformed map entry")
            e = _Wire.fields(raw)
            if 3 not in e or 5 in e:
                raise CelCompileError("only plain map literals are supported")
            entries.append((decode_expr(_one(e, 3)), decode_expr(_one(e, 4))))
        return MapLit(tuple(entries))
    if 9 in f:
        c = _Wire.fields(_one(f, 9))
        return Comprehension(
            iter_var=_text(c, 1),
            iter_var2=_text(c, 8),
            iter_range=decode_expr(_one(c, 2)),
            accu_var=_text(c, 3),
            accu_init=decode_expr(_one(c, 4)),
            loop_condition=decode_expr(_one(c, 5)),
            loop_step=decode_expr(_one(c, 6)),
            result=decode_expr(_one(c, 7)),
        )
    raise CelCompileError("internal: empty expression node")


def decode_checked(serialized: bytes) -> Expr:
    """``serialized`` is a ``google.protobuf.Any`` holding a ``cel.expr.CheckedExpr`` (field 4: expr)."""
    any_fields = _Wire.fields(serialized)
    if not _text(any_fields, 1).endswith("cel.expr.CheckedExpr"):
        raise CelCompileError("internal: the CEL library returned something other than a CheckedExpr")
    return decode_expr(_one(_Wire.fields(_one(any_fields, 2)), 4))


# --- the cost model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    cost: int
    iterations: int
    bound: Bound


_LOGICAL = {"_&&_", "_||_", "!_", "@not_strictly_false", "not_strictly_false"}
_COMPARISON = {"_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_"}
_ARITHMETIC = {"_-_", "_*_", "_/_", "_%_", "-_", "size"}
_SUBSTRING = {"contains", "startsWith", "endsWith"}


# Regexes. CEL-C++ compiles a ``matches()`` pattern with RE2 on every evaluation (cel-expr-python exposes
# no option to precompile), so a rule pays for the compilation each time, whatever the input: measured,
# about 1.5 µs per instruction of the compiled program, and a 4 KiB pattern such as ``((\pL*)*)*…``
# compiles to ~490,000 instructions (~0.5 s). The pattern is therefore compiled here, once, at
# policy-compile time, by the same RE2 (google-re2) under a memory cap, and priced by its compiled
# program: compiling it costs :data:`REGEX_COMPILE_UNITS` per instruction, and matching (RE2 is linear in
# the input, each input byte stepping at most the whole program) costs the input's size times the program.
MAX_REGEX_PROGRAM = 10_000  # instructions; ``[0-9a-f]{96}`` is 196, one ``\pL`` is 1,200
REGEX_MAX_MEM = 1 << 20  # bytes RE2 may use to compile a pattern here (RE2's default is 8 MiB)
REGEX_COMPILE_UNITS = 50  # cost units per program instruction, paid on every evaluation


def _re2() -> Any:
    # Imported by name, like the CEL library: google-re2 ships no typing marker.
    return importlib.import_module("re2")


@functools.lru_cache(maxsize=1024)
def regex_program_size(pattern: str) -> int:
    """The size of ``pattern``'s compiled RE2 program; :class:`CelCompileError` when RE2 refuses it, when
    it needs more than :data:`REGEX_MAX_MEM` to compile, or when it exceeds :data:`MAX_REGEX_PROGRAM`."""
    re2 = _re2()
    options = re2.Options()
    options.max_mem = REGEX_MAX_MEM
    options.log_errors = False
    try:
        size = int(re2.compile(pattern, options).programsize)
    except re2.error as exc:
        message = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise CelCompileError(f"the pattern {_short(pattern)} is refused by RE2: {message}") from None
    if size > MAX_REGEX_PROGRAM:
        raise CelCompileError(
            f"the pattern {_short(pattern)} compiles to {size:,} RE2 instructions (limit "
            f"{MAX_REGEX_PROGRAM:,}); CEL recompiles it on every evaluation, so simplify it (avoid nested "
            "repetitions and large Unicode classes)"
        )
    return size


def _short(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 40 else pattern[:37] + "...")


def _regex_cost(pattern: Expr, input_size: int) -> int:
    """What one ``matches()`` may cost: compiling the pattern, then running it over the input. A
    non-constant pattern is refused: its program, and so the cost, could not be bounded."""
    if not isinstance(pattern, Const) or pattern.kind != "string" or not isinstance(pattern.value, str):
        raise CelCompileError("matches() needs a constant string pattern")
    program = regex_program_size(pattern.value)
    return REGEX_COMPILE_UNITS * program + input_size * program


class CostModel:
    def __init__(self, variables: Mapping[str, Bound]) -> None:
        self.scopes: list[dict[str, Bound]] = [dict(variables)]

    def _lookup(self, name: str) -> Bound:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return _scalar()  # type names (int, uint, …) resolve as identifiers

    def estimate(self, e: Expr) -> Cost:
        if isinstance(e, Const):
            if isinstance(e.value, str | bytes):
                return Cost(1, 0, _scalar(_string_units(len(e.value))))
            return Cost(1, 0, _scalar())
        if isinstance(e, Ident):
            return Cost(1, 0, self._lookup(e.name))
        if isinstance(e, Select):
            inner = self.estimate(e.operand)
            bound = _scalar() if e.test_only else elem_of(inner.bound)
            return Cost(inner.cost + 1 + _string_units(len(e.field)), inner.iterations, bound)
        if isinstance(e, ListLit):
            parts = [self.estimate(x) for x in e.elements]
            elem: Bound | None = None
            for p in parts:
                elem = p.bound if elem is None else join(elem, p.bound)
            bound = Bound(1 + sum(p.bound.size for p in parts), len(parts), elem)
            return Cost(1 + sum(p.cost for p in parts), sum(p.iterations for p in parts), bound)
        if isinstance(e, MapLit):
            cost = size = 1
            iterations = 0
            mkey: Bound | None = None
            mvalue: Bound | None = None
            for k, v in e.entries:
                kc, vc = self.estimate(k), self.estimate(v)
                cost += kc.cost + vc.cost + kc.bound.size  # hashing the key
                iterations += kc.iterations + vc.iterations
                size += kc.bound.size + vc.bound.size
                mkey = kc.bound if mkey is None else join(mkey, kc.bound)
                mvalue = vc.bound if mvalue is None else join(mvalue, vc.bound)
            return Cost(cost, iterations, Bound(size, len(e.entries), mvalue, mkey, True))
        if isinstance(e, Comprehension):
            return self._comprehension(e)
        return self._call(e)

    def _comprehension(self, e: Comprehension) -> Cost:
        init = e.accu_init
        if not (isinstance(init, Const) and init.kind in ("bool", "int")):
            raise CelCompileError(
                "map() and filter() are not allowed in release policies (their results grow with the "
                "input, which defeats the cost limit); write the condition with all(), exists() or "
                "exists_one()"
            )
        rng = self.estimate(e.iter_range)
        # A comprehension visits a list's items, or a map's keys.
        b = rng.bound
        if b.map_only and b.key is not None:
            item = b.key
        elif b.key is not None:
            item = join(elem_of(b), b.key)
        else:
            item = elem_of(b)
        scope = {e.iter_var: item, e.accu_var: _scalar()}
        if e.iter_var2:
            scope[e.iter_var2] = join(item, _scalar())
        self.scopes.append(scope)
        try:
            cond = self.estimate(e.loop_condition)
            step = self.estimate(e.loop_step)
            result = self.estimate(e.result)
        finally:
            self.scopes.pop()
        n = rng.bound.length
        cost = rng.cost + 1 + n * (cond.cost + step.cost + 1) + result.cost
        iterations = rng.iterations + n * (1 + cond.iterations + step.iterations) + result.iterations
        return Cost(cost, iterations, _scalar())

    def _call(self, e: Call) -> Cost:
        operands = ([e.target] if e.target is not None else []) + list(e.args)
        parts = [self.estimate(x) for x in operands]
        base = 1 + sum(p.cost for p in parts)
        iterations = sum(p.iterations for p in parts)
        sizes = [p.bound.size for p in parts]
        fn = e.function
        if fn in _LOGICAL or fn in _ARITHMETIC:
            return Cost(base, iterations, _scalar())
        if fn == "_?_:_" and len(parts) == 3:
            return Cost(base, iterations, join(parts[1].bound, parts[2].bound))
        if fn in _COMPARISON and len(parts) == 2:
            return Cost(base + 2 * min(sizes), iterations, _scalar())
        if fn == "@in" and len(parts) == 2:
            haystack = parts[1].bound
            if haystack.map_only and haystack.key is not None:
                # A key lookup; priced as a scan of the keys, whether or not the runtime hashes.
                scan = haystack.length * (1 + haystack.key.size)
                return Cost(base + 2 * sizes[0] + scan, iterations, _scalar())
            return Cost(base + 3 * sizes[1] + 2 * sizes[0], iterations, _scalar())
        if fn == "_[_]" and len(parts) == 2:
            return Cost(base + 2 * sizes[1], iterations, elem_of(parts[0].bound))
        if fn == "_+_" and len(parts) == 2:
            a, b = parts[0].bound, parts[1].bound
            elem = None if a.elem is None and b.elem is None else join(elem_of(a), elem_of(b))
            return Cost(
                base + sizes[0] + sizes[1], iterations, Bound(a.size + b.size, a.length + b.length, elem)
            )
        if fn in _SUBSTRING and len(parts) == 2:
            return Cost(base + sizes[0] * sizes[1], iterations, _scalar())
        if fn == "matches" and len(parts) == 2:
            return Cost(base + _regex_cost(operands[1], sizes[0]), iterations, _scalar())
        if fn in ("dyn", "string", "bytes") and len(parts) == 1:
            b = parts[0].bound
            return Cost(base + sizes[0], iterations, Bound(b.size + 2, b.length, b.elem))
        # Every other standard function (conversions, timestamp accessors, duration/timestamp parsing) is
        # linear in its operands and returns a scalar no larger than they are.
        total = sum(sizes)
        return Cost(base + total, iterations, Bound(1 + total, 1 + total, None))


# --- compile and evaluate -----------------------------------------------------------------------------------


def _library() -> Any:
    # Imported by name: the package ships no typing marker, and its stub imports protobuf, which the
    # service does not need. Every use of the library is in this module.
    return importlib.import_module("cel_expr_python.cel")


class _Engine:
    def __init__(self) -> None:
        self.cel = _library()
        claims_type = self.cel.Type.Map(self.cel.Type.STRING, self.cel.Type.DYN)
        self.env = self.cel.NewEnv(variables={"claims": claims_type, "now": self.cel.Type.TIMESTAMP})


@functools.cache
def engine() -> _Engine:
    """One environment per process: building it costs milliseconds, and it is immutable once built."""
    return _Engine()


@dataclass(frozen=True)
class CompiledRule:
    source: str
    cost: int
    iterations: int
    program: Any  # the library's Expression; opaque outside this module


def compile_rule(source: str) -> CompiledRule:
    """Compile and type-check ``source``, then bound its cost; :class:`CelCompileError` says why not."""
    if not source.strip():
        raise CelCompileError("the expression is empty")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise CelCompileError(
            f"the expression is {len(source)} characters long; the limit is {MAX_EXPRESSION_CHARS}"
        )
    eng = engine()
    try:
        program = eng.env.compile(source)
    except Exception as exc:  # the library reports every parse and type error as a RuntimeError
        raise CelCompileError(_library_message(exc)) from None
    rtype = program.return_type()
    if rtype != eng.cel.Type.BOOL and rtype != eng.cel.Type.DYN:
        raise CelCompileError(
            f"a rule must be a boolean condition, and this expression is of type {rtype.name()}"
        )
    ast = decode_checked(program.serialize())
    estimate = CostModel({"claims": CLAIMS_BOUND, "now": _scalar()}).estimate(ast)
    if estimate.iterations > MAX_ITERATIONS:
        raise CelCompileError(
            f"the expression may iterate up to {estimate.iterations:,} times (limit {MAX_ITERATIONS:,}); "
            f"claim lists may hold {CLAIM_LIMITS.max_list_items} items, so avoid nesting comprehensions over "
            "claims"
        )
    if estimate.cost > MAX_COST:
        raise CelCompileError(
            f"the expression may cost up to {estimate.cost:,} units (limit {MAX_COST:,}); "
            "simplify it or split it into several rules"
        )
    return CompiledRule(source, estimate.cost, estimate.iterations, program)


def _library_message(exc: Exception) -> str:
    # The library renders absl statuses ("NOT_FOUND: Key not found in map [NOT_FOUND]"); keep the words.
    text = re.sub(r"^[A-Z_]+: ", "", str(exc).strip())
    text = re.sub(r" \[[A-Z_]+\]$", "", text)
    if "recursion" in text:
        return "the expression is nested too deeply (CEL allows 32 levels)"
    if "Iteration budget exceeded" in text:
        return "the evaluation exceeded CEL's budget of comprehension iterations"
    return text.removeprefix("ERROR: ")


class Activation:
    """The variables of one evaluation (claims converted once, shared by every rule of the policy)."""

    def __init__(self, claims: Mapping[str, object], now: datetime) -> None:
        self.library_activation: Any = engine().env.Activation({"claims": dict(claims), "now": now})


@dataclass(frozen=True)
class Outcome:
    value: bool | None  # None when the evaluation failed
    error: str | None


def run(rule: CompiledRule, activation: Activation) -> Outcome:
    """Evaluate; never raises for anything the expression or the claims do (fail closed)."""
    eng = engine()
    try:
        value = rule.program.eval(activation.library_activation)
        if value.type() == eng.cel.Type.ERROR:
            return Outcome(None, _library_message(RuntimeError(str(value.value()))))
        result = value.plain_value()
    except Exception as exc:  # iteration budget, conversion problems: a failed rule, never a crash
        return Outcome(None, _library_message(exc))
    if not isinstance(result, bool):
        return Outcome(None, f"the rule evaluated to {type(result).__name__} {result!r}, not a boolean")
    return Outcome(result, None)
