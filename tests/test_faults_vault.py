"""The vault backend (a real OpenBao) failing at each step of a release: sealed, stopped (connections
refused) and hung (connections accepted, never answered: the backend's timeout), each until healed.
OpenBao is reached through a TCP proxy whose link the tests cut. SQLite store, real swtpm quotes; the
promises checked after each case are in tests/fault_rig.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import hvac
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.config import Settings
from keyserver.faults import ReleaseStep
from tests.fault_rig import ALL_STEPS, BEFORE_WRAP, Expect, Fault, Rig, bites, running_rig
from tests.fixtures.openbao import OpenBaoServer
from tests.fixtures.swtpm import SwtpmInstance
from tests.fixtures.tcpproxy import TcpProxy

pytestmark = [pytest.mark.openbao, pytest.mark.swtpm, pytest.mark.asyncio(loop_scope="module")]

# The backend's per-request timeout: a hung Vault costs a release this long (readiness twice).
VAULT_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def proxy(openbao: OpenBaoServer) -> Iterator[TcpProxy]:
    port = urlsplit(openbao.addr).port
    assert port is not None
    running = TcpProxy(port)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def mount(openbao: OpenBaoServer) -> Iterator[str]:
    client = hvac.Client(url=openbao.addr, token=openbao.root_token, timeout=10)
    name = f"transit-faults-{uuid.uuid4().hex[:8]}"
    client.sys.enable_secrets_engine("transit", path=name)
    try:
        yield name
    finally:
        if openbao.is_sealed():
            openbao.unseal()
        client.sys.disable_secrets_engine(name)
        client.adapter.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(
    openbao: OpenBaoServer,
    proxy: TcpProxy,
    mount: str,
    swtpm: SwtpmInstance,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("faults-vault")
    settings = Settings(
        data_dir=root / "data",
        database_url=f"sqlite+aiosqlite:///{root / 'ks.sqlite3'}",
        key_backend="vault",
        vault_addr=proxy.url,
        vault_token=openbao.root_token,
        vault_transit_mount=mount,
        vault_timeout_s=VAULT_TIMEOUT_S,
    )
    async with running_rig(settings, swtpm) as running:
        yield running


def sealed(openbao: OpenBaoServer) -> Fault:
    async def inject(_session: AsyncSession | None) -> None:
        openbao.seal()

    async def heal() -> None:
        if openbao.is_sealed():
            openbao.unseal()

    return Fault("sealed", inject, bites(BEFORE_WRAP, Expect.BACKEND_DENIAL), heal, persistent=True)


def link(proxy: TcpProxy, mode: str) -> Fault:
    async def inject(_session: AsyncSession | None) -> None:
        proxy.set_mode(mode)

    async def heal() -> None:
        proxy.set_mode("pass")

    return Fault(mode, inject, bites(BEFORE_WRAP, Expect.BACKEND_DENIAL), heal, persistent=True)


# A hung Vault costs its timeout per call: four steps (before, at and after the wrap) are enough there.
HANG_STEPS = (ReleaseStep.START, ReleaseStep.APPRAISED, ReleaseStep.KEY_WRAPPED, ReleaseStep.COMMITTED)
CASES = [
    *(("sealed", step) for step in ALL_STEPS),
    *(("down", step) for step in ALL_STEPS),
    *(("hang", step) for step in HANG_STEPS),
]


@pytest.mark.parametrize(("kind", "step"), CASES, ids=[f"{k}@{s}" for k, s in CASES])
async def test_release_under_a_vault_fault(
    rig: Rig, openbao: OpenBaoServer, proxy: TcpProxy, kind: str, step: ReleaseStep
) -> None:
    await rig.run(sealed(openbao) if kind == "sealed" else link(proxy, kind), step)
