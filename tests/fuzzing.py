"""Budgets for the fuzz tests: bounded in the suite, much larger on demand.

``make fuzz`` runs the tests marked ``fuzz`` under the Hypothesis profile ``fuzz`` (tests/conftest.py);
there every budget given here is multiplied by ``KEYSERVER_FUZZ_SCALE`` (default 30), and tests without
an explicit budget get ``100 x KEYSERVER_FUZZ_SCALE`` examples. In the suite (and in CI, where examples
are derandomized) the budgets are what the tests say.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_PROFILE = "fuzz"


def scale() -> int:
    return max(1, int(os.environ.get("KEYSERVER_FUZZ_SCALE", "30")))


def fuzzing() -> bool:
    """True under ``--hypothesis-profile fuzz`` (or ``HYPOTHESIS_PROFILE=fuzz``)."""
    return settings.get_current_profile_name() == FUZZ_PROFILE


def budget(examples: int) -> int:
    return examples * scale() if fuzzing() else examples


def fuzz_settings(examples: int) -> settings:
    """A parser fuzz test's settings: ``examples`` in the suite, ``examples x scale`` under ``make fuzz``."""
    return settings(
        max_examples=budget(examples),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
