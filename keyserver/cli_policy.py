"""``keyserver policy dry-run``: what a policy decides on a set of claims, check by check, offline.

The claims may be the output of ``keyserver evidence verify --json`` (its ``claims`` member is used) or
a bare claims object. Reference-value sets are files in the self-contained form
``{"name", "tee", "version", "values": {…}, "revoked"?}`` (docs/policy.md). Exit 0 when the policy
grants, 1 when it denies, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from keyserver.evidence.timeparse import parse_now
from policy.document import PolicyError, load_json, parse_policy, parse_reference_set
from policy.evaluate import evaluate

EXIT_GRANTED, EXIT_DENIED, EXIT_USAGE = 0, 1, 2


def add_policy_commands(commands: Any) -> None:
    policy = commands.add_parser("policy", help="release policies, offline")
    sub = policy.add_subparsers(dest="policy_command", required=True)
    dry = sub.add_parser("dry-run", help="say, check by check, what a policy decides on claims")
    dry.add_argument("--policy", type=Path, required=True, help="the policy document (JSON)")
    dry.add_argument(
        "--claims", type=Path, required=True, help="claims JSON, or `evidence verify --json` output"
    )
    dry.add_argument(
        "--reference-values", type=Path, action="append", default=[], help="a set file (repeatable)"
    )
    dry.add_argument("--now", help="evaluation time, ISO 8601 with a zone (default: now)")
    dry.add_argument("--json", action="store_true", help="print one JSON document")


def run_policy(args: argparse.Namespace) -> int:
    try:
        policy = parse_policy(args.policy.read_text())
        claims_doc = load_json(args.claims.read_text())
        claims = claims_doc.get("claims", claims_doc) if isinstance(claims_doc, dict) else claims_doc
        sets = [parse_reference_set(path.read_text()) for path in args.reference_values]
        now = parse_now(args.now)
    except (OSError, ValueError) as exc:  # PolicyError is a ValueError
        kind = "invalid document" if isinstance(exc, PolicyError) else "usage"
        print(f"keyserver policy: {kind}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    decision = evaluate(policy, claims, sets, now)
    if args.json:
        print(json.dumps(decision.to_json(), indent=2))
    else:
        for result in decision.results:
            print(f"{'pass' if result.passed else 'FAIL'}  {result.rule}: {result.detail}")
        print("granted" if decision.granted else f"denied ({decision.reason})")
    return EXIT_GRANTED if decision.granted else EXIT_DENIED
