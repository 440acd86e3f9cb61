"""Measure the Python CEL implementations that could evaluate release-policy rules (issue 6).

Not a test (pytest does not collect ``bench_*.py``). Each candidate installs its own top-level package and
two of them both install ``cel``, so run this once per candidate, each in its own virtualenv::

    python -m venv /tmp/cb-X && /tmp/cb-X/bin/pip install --only-binary=:all: X
    /tmp/cb-X/bin/python tests/policy/bench_cel.py            # X = cel-python, common-expression-language,
                                                              #     cel-expr-python, python-cel

It prints one JSON document: which conformance probes behave as the CEL spec says, what a pathological
expression does (time, and whether anything stops it), compile time, and microseconds per evaluation over
a realistic claim set (compile once, evaluate 10^4 times). The claim sets are the real verifier output for
the gsg-milan SEV-SNP vector and a TDX claim set shaped like the verifier's, so the numbers are for the
data the keyserver actually feeds its policies.
"""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- realistic claims -------------------------------------------------------------------------------------

SNP_CLAIMS: dict[str, Any] = {
    "tee": "sev-snp",
    "report_data": "0102030405" + "00" * 59,
    "debug": True,
    "snp.version": 2,
    "snp.guest_svn": 0,
    "snp.policy": 720896,
    "snp.policy_abi_major": 0,
    "snp.policy_abi_minor": 0,
    "snp.policy_smt": True,
    "snp.policy_migrate_ma": False,
    "snp.policy_single_socket": False,
    "snp.policy_cxl_allow": False,
    "snp.policy_mem_aes_256_xts": False,
    "snp.policy_rapl_dis": False,
    "snp.policy_ciphertext_hiding": False,
    "snp.policy_page_swap_disable": False,
    "snp.family_id": "00" * 16,
    "snp.image_id": "00" * 16,
    "snp.vmpl": 0,
    "snp.signature_algo": 1,
    "snp.platform_info": 1,
    "snp.signer_info": 0,
    "snp.author_key_en": False,
    "snp.mask_chip_key": False,
    "snp.signing_key": "vcek",
    "snp.measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01",
    "snp.host_data": "00" * 32,
    "snp.id_key_digest": "00" * 48,
    "snp.author_key_digest": "00" * 48,
    "snp.report_id": "8edc638e1857c555d21f6b11bda3c8b1b5a09dba4852b4c8ee7aa2f16f22cc0a",
    "snp.report_id_ma": "ff" * 32,
    "snp.chip_id": "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
    "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
    "snp.chip_id_masked": False,
    "snp.cpuid": None,
    "snp.product": "Milan",
    "snp.product_name": "Milan-B0",
    "snp.csp_id": None,
    "snp.current_version": "1.49.3",
    "snp.current_major": 1,
    "snp.current_minor": 49,
    "snp.current_build": 3,
    "snp.committed_version": "1.49.3",
    "snp.committed_major": 1,
    "snp.committed_minor": 49,
    "snp.committed_build": 3,
    "snp.signing_cert_sha256": "0d057f9b6e29a69eda9c0154b259567d291c1c08d73a11e9d31ace07c435b6d8",
    "snp.signing_cert_not_before": "2022-09-24T00:55:28Z",
    "snp.signing_cert_not_after": "2029-09-24T00:55:28Z",
    **{f"snp.platform_{n}": n == "smt_en" for n in ("smt_en", "tsme_en", "ecc_en", "rapl_dis")},
    **{
        f"snp.{which}_tcb.{part}": value
        for which in ("reported", "current", "committed", "launch")
        for part, value in (("bootloader", 2), ("tee", 0), ("snp", 5), ("microcode", 68))
    },
}

TDX_CLAIMS: dict[str, Any] = {
    "tee": "tdx",
    "report_data": "ab" * 64,
    "debug": False,
    "tdx.quote_version": 4,
    "tdx.mrtd": "02" * 48,
    **{f"tdx.rtmr{i}": f"{i:02x}" * 48 for i in range(4)},
    "tdx.mrseam": "5b" * 48,
    "tdx.mrsignerseam": "00" * 48,
    "tdx.mrconfigid": "00" * 48,
    "tdx.mrowner": "00" * 48,
    "tdx.mrownerconfig": "00" * 48,
    "tdx.td_attributes": "0000001000000000",
    "tdx.xfam": "e718060000000000",
    "tdx.tee_tcb_svn": "03000500000000000000000000000000",
    "tdx.module_svn": 3,
    "tdx.fmspc": "00806f050000",
    "tdx.tcb_status": "OutOfDate",
    "tdx.advisory_ids": [f"INTEL-SA-{n:05d}" for n in (828, 837, 960, 982, 986, 1036, 1079, 1099)],
    "tdx.tcb_date": "2023-08-09T00:00:00Z",
}

MEASUREMENTS = [SNP_CLAIMS["snp.measurement"][:-2] + f"{i:02x}" for i in range(16)] + [
    SNP_CLAIMS["snp.measurement"]
]

# Rules a tenant would write: thresholds, a one-of over measurements, string and macro use.
WORKLOAD: dict[str, tuple[str, dict[str, Any]]] = {
    "tcb-threshold": (
        'claims["snp.reported_tcb.snp"] >= 5 && claims["snp.reported_tcb.microcode"] >= 68'
        ' && claims["snp.vmpl"] == 0 && claims["snp.signing_key"] == "vcek"',
        SNP_CLAIMS,
    ),
    "measurement-in-17": (
        'claims["snp.measurement"] in [' + ", ".join(f'"{m}"' for m in MEASUREMENTS) + "]",
        SNP_CLAIMS,
    ),
    "tdx-status-and-advisories": (
        'claims["tdx.tcb_status"] in ["UpToDate", "OutOfDate"] && claims["tdx.advisory_ids"].all(a,'
        ' a.startsWith("INTEL-SA-") && !(a in ["INTEL-SA-00615", "INTEL-SA-00657"]))'
        ' && claims["tdx.mrtd"].matches("^[0-9a-f]{96}$")',
        TDX_CLAIMS,
    ),
}

# (name, expression, variables, expected): expected is a bool/int/str value, or "error" when the spec says
# the evaluation (or compilation) fails.
PROBES: list[tuple[str, str, dict[str, Any], object]] = [
    ("arith", "1 + 2 * 3 == 7", {}, True),
    ("int-overflow-is-error", "9223372036854775807 + 1 > 0", {}, "error"),
    ("div-by-zero-is-error", "1 / 0 == 0", {}, "error"),
    ("uint-literal", "1u + 2u == 3u", {}, True),
    ("int-plus-uint-is-error", "1 + 1u == 2", {}, "error"),
    # Claims are dynamically typed (map(string, dyn)), so these are the runtime semantics a rule meets.
    ("int-uint-equality-dyn", "m.one == 1u", {"m": {"one": 1}}, True),
    ("int-uint-ordering-dyn", "m.one < 2u", {"m": {"one": 1}}, True),
    (
        "string-fns",
        '"abcdef".startsWith("ab") && "abcdef".endsWith("ef") && "abcdef".contains("cd")',
        {},
        True,
    ),
    ("matches-re2", '"INTEL-SA-00837".matches("^INTEL-SA-[0-9]{5}$")', {}, True),
    ("size", 'size("abc") == 3 && [1, 2].size() == 2 && size({"a": 1}) == 1', {}, True),
    ("in-list", "2 in [1, 2, 3]", {}, True),
    ("in-map", '"k" in {"k": 1}', {}, True),
    ("has-present", "has(m.a)", {"m": {"a": 1}}, True),
    ("has-absent", "has(m.b)", {"m": {"a": 1}}, False),
    ("all", "[1, 2, 3].all(x, x > 0)", {}, True),
    ("exists", "[1, 2, 3].exists(x, x == 2)", {}, True),
    ("exists_one", "[1, 2, 3].exists_one(x, x > 2)", {}, True),
    ("map-filter", "[1, 2, 3].map(x, x * 2).filter(y, y > 2) == [4, 6]", {}, True),
    ("missing-key-is-error", 'm["zz"] == 1', {"m": {"a": 1}}, "error"),
    ("or-absorbs-error", 'm["zz"] == 1 || true', {"m": {"a": 1}}, True),
    ("and-absorbs-error", 'false && m["zz"] == 1', {"m": {"a": 1}}, False),
    ("ternary", "true ? 1 : 2", {}, 1),
    ("conversions", 'int("42") == 42 && string(42) == "42" && uint(3) == 3u', {}, True),
    ("type-fn", "type(1) == int && type(1u) == uint", {}, True),
    ("null-compare", "m.n == null", {"m": {"n": None}}, True),
    ("bool-not-int-dyn", "m.t == 1", {"m": {"t": True}}, False),
    ("string-index-not-allowed", '"abc"[0] == "a"', {}, "error"),
    ("timestamp", 'timestamp("2023-01-01T00:00:00Z") < timestamp("2024-01-01T00:00:00Z")', {}, True),
    ("big-input-int", "m.big > 1", {"m": {"big": 2**64 - 1}}, True),
    ("no-host-attribute", "m.__class__ == 1", {"m": {"a": 1}}, "error"),
]

ITERATIONS = 10_000
PATHOLOGICAL = "[" + ",".join(str(i) for i in range(100)) + "]"
# 100^3 = 10^6 comprehension steps from a 400-character expression: a cost limit must stop this.
PATHOLOGICAL_EXPR = f"{PATHOLOGICAL}.all(a, {PATHOLOGICAL}.all(b, {PATHOLOGICAL}.all(c, a + b + c >= 0)))"
DEEP_EXPR = "(" * 2000 + "1" + ")" * 2000 + " == 1"
CHAIN_EXPR = " + ".join(["1"] * 2000) + " == 2000"


# --- adapters: compile(src) -> program; run(program, variables) -> value, raising on a CEL error ------------


@dataclass(frozen=True)
class Adapter:
    """``prepare`` turns Python variables into the library's activation (done once per release request);
    ``run`` evaluates a compiled program against a prepared activation (done once per rule)."""

    name: str
    version: str
    compile: Callable[[str], Any]
    prepare: Callable[[dict[str, Any]], Any]
    run: Callable[[Any, Any], Any]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def celpy_adapter() -> Adapter:
    celpy = importlib.import_module("celpy")
    celtypes = importlib.import_module("celpy.celtypes")
    env = celpy.Environment()

    def compile_(src: str) -> Any:
        return env.program(env.compile(src))

    def prepare(variables: dict[str, Any]) -> Any:
        return {k: celpy.json_to_cel(v) for k, v in variables.items()}

    def run(program: Any, activation: Any) -> Any:
        result = program.evaluate(activation)
        if isinstance(result, celpy.CELEvalError):
            raise RuntimeError(str(result))
        # celpy answers with its own int/str subclasses; compare as the plain Python values they stand for.
        for cel_type, plain in (
            (celtypes.BoolType, bool),
            (celtypes.StringType, str),
            (celtypes.IntType, int),
        ):
            if isinstance(result, cel_type):
                return plain(result)
        return result

    return Adapter("cel-python (celpy)", _version("cel-python"), compile_, prepare, run)


def cel_rust_hardbyte_adapter() -> Adapter:
    cel = importlib.import_module("cel")

    def run(program: Any, context: Any) -> Any:
        return program.execute(context)

    return Adapter(
        "common-expression-language", _version("common-expression-language"), cel.compile, cel.Context, run
    )


def cel_rust_python_cel_adapter() -> Adapter:
    cel = importlib.import_module("cel")

    def run(program: Any, context: Any) -> Any:
        return program.execute(context)

    return Adapter("python-cel", _version("python-cel"), cel.Program, cel.Context, run)


def cel_cpp_adapter() -> Adapter:
    cel = importlib.import_module("cel_expr_python.cel")
    dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    env = cel.NewEnv(variables={"claims": dyn_map, "m": dyn_map})

    def run(program: Any, activation: Any) -> Any:
        value = program.eval(activation)
        if value.type() == cel.Type.ERROR:
            raise RuntimeError(str(value.value()))
        return value.plain_value()

    return Adapter("cel-expr-python (cel-cpp)", _version("cel-expr-python"), env.compile, env.Activation, run)


def pick_adapter() -> Adapter:
    for dist, make in (
        ("cel-python", celpy_adapter),
        ("common-expression-language", cel_rust_hardbyte_adapter),
        ("python-cel", cel_rust_python_cel_adapter),
        ("cel-expr-python", cel_cpp_adapter),
    ):
        try:
            _version(dist)
        except Exception:  # noqa: S112 - not installed in this virtualenv: try the next candidate
            continue
        return make()
    raise SystemExit("no CEL candidate is installed in this interpreter")


# --- measurements -------------------------------------------------------------------------------------------


def outcome(adapter: Adapter, src: str, variables: dict[str, Any]) -> object:
    try:
        program = adapter.compile(src)
    except BaseException as exc:  # a Rust panic surfaces as a BaseException: that is a finding too
        if isinstance(exc, KeyboardInterrupt):
            raise
        kind = "compile" if isinstance(exc, Exception) else "compile PANIC (BaseException)"
        return ("error", f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    try:
        return adapter.run(program, adapter.prepare(variables))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        kind = "eval" if isinstance(exc, Exception) else "eval PANIC (BaseException)"
        return (
            "error",
            f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}",
        )


def probe(adapter: Adapter) -> dict[str, Any]:
    passed, failed, panics = [], {}, []
    for name, src, variables, expected in PROBES:
        got = outcome(adapter, src, variables)
        is_error = isinstance(got, tuple) and got[0] == "error"
        ok = (
            is_error
            if expected == "error"
            else (not is_error and got == expected and type(got) is type(expected))
        )
        if isinstance(got, tuple) and "PANIC" in str(got[1]):
            panics.append(name)
        if ok:
            passed.append(name)
        else:
            failed[name] = repr(got)[:160]
    return {"passed": len(passed), "of": len(PROBES), "failed": failed, "panics": panics}


def time_workload(adapter: Adapter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (src, claims) in WORKLOAD.items():
        t0 = time.perf_counter()
        program = adapter.compile(src)
        compile_us = (time.perf_counter() - t0) * 1e6
        variables = {"claims": claims}
        prepared = adapter.prepare(variables)
        assert adapter.run(program, prepared) in (True, False)
        fresh, reused = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            for _ in range(ITERATIONS // 10):
                adapter.run(program, adapter.prepare(variables))
            fresh.append((time.perf_counter() - t0) / (ITERATIONS // 10) * 1e6)
            t0 = time.perf_counter()
            for _ in range(ITERATIONS // 10):
                adapter.run(program, prepared)
            reused.append((time.perf_counter() - t0) / (ITERATIONS // 10) * 1e6)
        out[name] = {
            "compile_us": round(compile_us, 1),
            # claims converted on every evaluation (what one rule costs alone)
            "eval_us_with_conversion": round(statistics.median(fresh), 2),
            # claims converted once per request and shared by the policy's rules
            "eval_us_prepared": round(statistics.median(reused), 2),
        }
    return out


def pathological_in_subprocess(src: str, timeout: float) -> dict[str, Any]:
    """Run one expression in a child interpreter, so a native crash or a runaway evaluation is observed
    rather than suffered."""
    here = str(Path(__file__).parent)
    code = (
        f"import json, sys, time; sys.path.insert(0, {here!r}); import bench_cel as b; a = b.pick_adapter();"
        f"t = time.perf_counter(); r = b.outcome(a, {src!r}, {{}}); "
        "print(json.dumps({'result': repr(r)[:200], 'seconds': round(time.perf_counter() - t, 3)}))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"result": f"still running after {timeout} s (killed)"}
    if done.returncode != 0:
        return {"result": f"child died: exit {done.returncode}", "stderr": done.stderr.strip()[-200:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    adapter = pick_adapter()
    report = {
        "candidate": adapter.name,
        "version": adapter.version,
        "python": sys.version.split()[0],
        "conformance_probes": probe(adapter),
        "workload": time_workload(adapter),
        "pathological_10e6_steps": pathological_in_subprocess(PATHOLOGICAL_EXPR, 120),
        "nesting_2000_parens": pathological_in_subprocess(DEEP_EXPR, 60),
        "chain_2000_plus": pathological_in_subprocess(CHAIN_EXPR, 60),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
