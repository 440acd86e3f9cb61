"""The group-commit settings: read from the environment, bad values refused at start-up."""

from __future__ import annotations

import pytest

from keyserver.config import Settings
from keyserver.errors import ConfigurationError
from keyserver.releaselog.group_commit import BatchLimits


def test_defaults_and_environment() -> None:
    default = Settings.from_env({})
    assert (default.release_batch_max, default.release_batch_wait_ms) == (64, 0.0)
    assert default.release_batches_in_flight == 4
    set_ = Settings.from_env(
        {
            "KEYSERVER_RELEASE_BATCH_MAX": "8",
            "KEYSERVER_RELEASE_BATCH_WAIT_MS": "2.5",
            "KEYSERVER_RELEASE_BATCHES_IN_FLIGHT": "2",
        }
    )
    assert (set_.release_batch_max, set_.release_batch_wait_ms) == (8, 2.5)
    assert set_.release_batches_in_flight == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KEYSERVER_RELEASE_BATCH_MAX", "0"),
        ("KEYSERVER_RELEASE_BATCH_MAX", "-3"),
        ("KEYSERVER_RELEASE_BATCH_MAX", "many"),
        ("KEYSERVER_RELEASE_BATCH_WAIT_MS", "-1"),
        ("KEYSERVER_RELEASE_BATCH_WAIT_MS", "1000.5"),
        ("KEYSERVER_RELEASE_BATCH_WAIT_MS", "soon"),
        ("KEYSERVER_RELEASE_BATCHES_IN_FLIGHT", "0"),
        ("KEYSERVER_RELEASE_BATCHES_IN_FLIGHT", "65"),
    ],
)
def test_bad_values_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_limits_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        BatchLimits(max_batch=0)
    with pytest.raises(ValueError, match="between 0 and 1 s"):
        BatchLimits(max_wait_s=2)
    with pytest.raises(ValueError, match="in flight"):
        BatchLimits(in_flight=0)
