"""Release policies: documents, their CEL rules, reference values, and the pure evaluator (docs/policy.md).

Verify, then appraise: nothing here reads evidence bytes, does I/O or looks at the clock.
"""

from policy.cel import MAX_COST, MAX_EXPRESSION_CHARS, MAX_ITERATIONS
from policy.document import (
    Examples,
    Policy,
    PolicyError,
    ReferenceValues,
    ReferenceValueSet,
    Rule,
    load_json,
    parse_policy,
    parse_reference_set,
    parse_reference_values,
    validate_reference_document,
)
from policy.evaluate import REASONS, Decision, ExampleFailure, RuleResult, check_examples, evaluate

__all__ = [
    "MAX_COST",
    "MAX_EXPRESSION_CHARS",
    "MAX_ITERATIONS",
    "REASONS",
    "Decision",
    "ExampleFailure",
    "Examples",
    "Policy",
    "PolicyError",
    "ReferenceValueSet",
    "ReferenceValues",
    "Rule",
    "RuleResult",
    "check_examples",
    "evaluate",
    "load_json",
    "parse_policy",
    "parse_reference_set",
    "parse_reference_values",
    "validate_reference_document",
]
