"""The PKCS#11 backend (SoftHSM2, real) failing at each step of a release: the backend's session closed
under it, and the token removed (its directory moved away) and later restored. SQLite store, real swtpm
quotes; the promises checked after each case are in tests/fault_rig.py."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.backends.pkcs11 import Pkcs11Backend
from keyserver.config import Settings
from keyserver.faults import ReleaseStep
from tests.fault_rig import ALL_STEPS, BEFORE_WRAP, Expect, Fault, Rig, bites, running_rig
from tests.fixtures.softhsm import SoftHsmToken
from tests.fixtures.swtpm import SwtpmInstance

pytestmark = [pytest.mark.softhsm, pytest.mark.swtpm, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(
    softhsm_token: SoftHsmToken, swtpm: SwtpmInstance, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("faults-hsm")
    settings = Settings(
        data_dir=root / "data",
        database_url=f"sqlite+aiosqlite:///{root / 'ks.sqlite3'}",
        key_backend="pkcs11",
        pkcs11_module=Path(softhsm_token.module_path),
        pkcs11_token_label=softhsm_token.label,
        pkcs11_pin=softhsm_token.user_pin,
        pkcs11_kek_label=f"kek-{uuid.uuid4().hex[:8]}",
    )
    async with running_rig(settings, swtpm) as running:
        yield running


def session_closed(rig: Rig) -> Fault:
    """The backend's HSM session is closed (and the token logged out) under it."""

    async def inject(_session: AsyncSession | None) -> None:
        backend: Pkcs11Backend = rig.service.app.state.key_backend

        def close() -> None:
            with backend._lock:  # the module lock: no call into the HSM is under way meanwhile
                hsm_session = backend._session
                assert hsm_session is not None, "the backend has no session to close"
                hsm_session.close()

        await asyncio.to_thread(close)

    # The backend notices at its next call, opens a new session and logs in again: nothing fails.
    return Fault("session-closed", inject, bites((), Expect.GRANTED))


def token_removed(token: SoftHsmToken) -> Fault:
    """The token disappears (its directory moved out of SoftHSM's token directory) until healed."""
    tokens = token.conf_path.parent / "tokens"
    away = token.conf_path.parent / "removed-token"

    def present() -> Path:
        (directory,) = [p for p in tokens.iterdir() if p.is_dir()]
        return directory

    moved: list[Path] = []

    async def inject(_session: AsyncSession | None) -> None:
        directory = present()
        os.rename(directory, away)
        moved.append(directory)

    async def heal() -> None:
        if moved:
            os.rename(away, moved.pop())

    # Before the wrap, the wrap fails: a logged denial. After it, the key is wrapped already.
    return Fault("token-removed", inject, bites(BEFORE_WRAP, Expect.BACKEND_DENIAL), heal, persistent=True)


CASES = [(kind, step) for kind in ("session-closed", "token-removed") for step in ALL_STEPS]


@pytest.mark.parametrize(("kind", "step"), CASES, ids=[f"{k}@{s}" for k, s in CASES])
async def test_release_under_an_hsm_fault(
    rig: Rig, softhsm_token: SoftHsmToken, kind: str, step: ReleaseStep
) -> None:
    fault = session_closed(rig) if kind == "session-closed" else token_removed(softhsm_token)
    await rig.run(fault, step)
