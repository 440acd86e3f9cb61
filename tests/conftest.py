"""Shared fixtures. The heavy ones (PostgreSQL, swtpm, SoftHSM2, OpenBao) live in tests/fixtures/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keyserver.app import create_app
from keyserver.config import Settings
from keyserver.db.session import Database
from tests.fuzzing import FUZZ_PROFILE
from tests.fuzzing import scale as fuzz_scale

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.server",
    "tests.fixtures.swtpm",
    "tests.fixtures.softhsm",
    "tests.fixtures.openbao",
    "tests.fixtures.browser",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
# Real evidence and roots the tests run on: the repository's own copy (tests/vectors/MANIFEST.md says
# where each came from; SHA256SUMS is checked by tests/test_vectors_self_contained.py).
VECTORS = REPO_ROOT / "tests" / "vectors"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs twice: on the embedded SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'keyserver.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@dataclass
class Service:
    """A running app and the operator credential it printed at first start."""

    app: Litestar
    client: AsyncTestClient[Litestar]
    announced: list[str] = field(default_factory=list)

    @property
    def operator_token(self) -> str:
        assert len(self.announced) == 1, "the operator credential must be announced exactly once"
        return self.announced[0]


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    announced: list[str] = []
    app = create_app(settings, announce=announced.append)
    async with AsyncTestClient(app=app) as client:
        yield Service(app=app, client=client, announced=announced)


@pytest.fixture
async def db(settings: Settings, service: Service) -> AsyncIterator[Database]:
    """Direct access to the service's store, from the test's own event loop (the test client runs
    the app on another loop, whose connections cannot be shared)."""
    database = Database(settings)
    yield database
    await database.dispose()


@pytest.fixture
async def migrated_db(settings: Settings) -> AsyncIterator[Database]:
    """The store alone, initialised (schema at head, operator credential made), without the app."""
    from keyserver.bootstrap import initialise

    database = Database(settings)
    await initialise(database, announce=lambda _token: None)
    yield database
    await database.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Hypothesis: these machines are shared and noisy. Timing-based health checks and deadlines would make
# the suite flaky without making it stronger; the number of examples is what matters. In CI (CI=true) the
# examples are derandomized (the same every run) and nothing is saved between runs. `make fuzz` selects
# the "fuzz" profile: much larger budgets (tests/fuzzing.py), random, failures kept in .hypothesis/.
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
hypothesis_settings.register_profile(
    "keyserver",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
    derandomize=_IN_CI,
    **({"database": None} if _IN_CI else {}),
)
hypothesis_settings.register_profile(
    FUZZ_PROFILE,
    hypothesis_settings.get_profile("keyserver"),
    max_examples=100 * fuzz_scale(),
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "keyserver"))
