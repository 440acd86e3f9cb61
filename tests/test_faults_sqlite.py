"""SQLite failing at each step of a release: a statement fails with the driver's OperationalError
(as a full disk or an I/O error would), injected through a SQLAlchemy event hook. Software backend, real
swtpm quotes; the promises checked after each case are in tests/fault_rig.py. (Stopping and crashing a
database server, killing connections and timeouts are PostgreSQL's: tests/test_faults_postgres.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from keyserver.config import Settings
from keyserver.faults import ReleaseStep
from tests.fault_rig import ALL_STEPS, Rig, injected_error, running_rig
from tests.fixtures.swtpm import SwtpmInstance

pytestmark = [pytest.mark.swtpm, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(swtpm: SwtpmInstance, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("faults-sqlite")
    settings = Settings(data_dir=root / "data", database_url=f"sqlite+aiosqlite:///{root / 'ks.sqlite3'}")
    async with running_rig(settings, swtpm) as running:
        yield running


@pytest.mark.parametrize("step", ALL_STEPS, ids=[str(s) for s in ALL_STEPS])
async def test_release_under_a_failing_statement(rig: Rig, step: ReleaseStep) -> None:
    await rig.run(injected_error(rig), step)
