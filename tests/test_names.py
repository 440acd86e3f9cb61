"""Names are checked whole: Python's `$` also matches before a trailing newline, so "abc\n" passed."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from keyserver.cli import parse_duration
from keyserver.errors import InvalidRequest
from keyserver.reference_values import check_name
from keyserver.tenancy import validate_tenant_name
from policy.document import PolicyError, parse_policy

CHECKS: dict[str, tuple[Callable[[str], object], type[Exception]]] = {
    "reference-value set": (lambda name: check_name(name, "set"), InvalidRequest),
    "tenant": (validate_tenant_name, InvalidRequest),
    "duration": (parse_duration, argparse.ArgumentTypeError),
    "policy reference set": (
        lambda name: parse_policy({"version": 1, "tees": ["tpm"], "reference_values": [name], "rules": []}),
        PolicyError,
    ),
}
VALID = {
    "reference-value set": "loader",
    "tenant": "acme",
    "duration": "30d",
    "policy reference set": "loader",
}


@pytest.mark.parametrize("what", sorted(CHECKS))
def test_a_trailing_newline_is_not_part_of_a_valid_name(what: str) -> None:
    check, error = CHECKS[what]
    check(VALID[what])
    for suffix in ("\n", "\r\n", "\n\n", " "):
        with pytest.raises(error):
            check(VALID[what] + suffix)
