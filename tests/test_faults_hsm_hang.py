"""A PKCS#11 call that never returns (a partitioned network HSM, a wedged module), on a real SoftHSM2
token (issue 21 item 2).

The hang is made inside the backend's own worker thread, under the module lock, where a stuck C call
would be: the KEK object the backend derives from is swapped for one whose ``derive_key`` blocks until
the test lets it go. Everything else is the real backend: its deadline, its circuit breaker, the release
flow's logged denial, ``/readyz``. The promises: the release is answered 503 ``backend-unavailable``
within the configured bound and nothing is released; while the call stays stuck every backend call fails
at once (no queue forms behind it) and ``/readyz`` answers 503 within its own deadline; when the call
returns the circuit closes and releases are granted again."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.backends.base import BackendError
from keyserver.backends.pkcs11 import Pkcs11Backend
from keyserver.config import Settings
from keyserver.faults import ReleaseStep
from tests.fault_rig import KEY, PROBLEM, Expect, Rig, running_rig
from tests.fixtures.softhsm import SoftHsmToken
from tests.fixtures.swtpm import SwtpmInstance

pytestmark = [pytest.mark.softhsm, pytest.mark.swtpm, pytest.mark.asyncio(loop_scope="module")]

CALL_TIMEOUT_S = 1.0
READYZ_TIMEOUT_S = 1.0
# Room for a loaded machine around each deadline: this measures that a deadline holds, not a speed.
SLACK_S = 2.0
HANG_LIMIT_S = 120.0  # the stuck call gives up on its own eventually, should the test fail midway


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(
    softhsm_token: SoftHsmToken, swtpm: SwtpmInstance, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("faults-hsm-hang")
    settings = Settings(
        data_dir=root / "data",
        database_url=f"sqlite+aiosqlite:///{root / 'ks.sqlite3'}",
        key_backend="pkcs11",
        pkcs11_module=Path(softhsm_token.module_path),
        pkcs11_token_label=softhsm_token.label,
        pkcs11_pin=softhsm_token.user_pin,
        pkcs11_kek_label=f"kek-{uuid.uuid4().hex[:8]}",
        backend_timeout_s=CALL_TIMEOUT_S,
        readyz_timeout_s=READYZ_TIMEOUT_S,
    )
    async with running_rig(settings, swtpm) as running:
        yield running


class HangingKek:
    """The backend's KEK object, except that deriving from it blocks (inside the backend's thread, under
    the module lock) until ``gate`` opens: a C call into the module that does not return."""

    def __init__(self, real: Any, gate: threading.Event) -> None:
        self._real = real
        self._gate = gate
        self.entered = threading.Event()

    def derive_key(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self._gate.wait(HANG_LIMIT_S)
        return self._real.derive_key(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_a_hung_hsm_call_is_bounded_and_the_circuit_opens(rig: Rig) -> None:
    backend: Pkcs11Backend = rig.service.app.state.key_backend
    gate = threading.Event()
    hanging: list[HangingKek] = []

    async def hang(_session: AsyncSession | None) -> None:
        real = backend._kek
        assert real is not None, "the backend has no KEK object to hang"
        hanging.append(HangingKek(real, gate))
        backend._kek = hanging[0]  # type: ignore[assignment]

    fired: list[ReleaseStep] = []

    async def hook(reached: ReleaseStep, session: AsyncSession | None) -> None:
        if reached is ReleaseStep.APPRAISED and not fired:
            fired.append(reached)
            await hang(session)

    challenge = await rig.loader.challenge()
    real_kek = backend._kek
    rig.release_service.faults = hook
    try:
        started = time.monotonic()
        response = await rig.loader.release(KEY, challenge=challenge)
        release_s = time.monotonic() - started
        rig.release_service.faults = None
        assert fired == [ReleaseStep.APPRAISED]
        assert hanging[0].entered.is_set(), "the backend call never reached the hanging step"

        # Answered 503 within the bound, as a logged denial, with nothing released.
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["reason"] == "backend-unavailable"
        assert "jwe" not in response.json()
        assert release_s < CALL_TIMEOUT_S + SLACK_S, release_s

        # The call is still stuck: the circuit is open, so a call fails at once instead of queueing.
        started = time.monotonic()
        with pytest.raises(BackendError, match="circuit open"):
            await backend.health()
        assert time.monotonic() - started < SLACK_S

        # /readyz answers (503) within its deadline.
        started = time.monotonic()
        ready = await rig.service.client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.headers["content-type"] == PROBLEM
        assert time.monotonic() - started < READYZ_TIMEOUT_S + SLACK_S
    finally:
        rig.release_service.faults = None
        gate.set()  # the stuck call returns: the circuit closes
        backend._kek = real_kek

    await rig.wait_ready("after the hung call returned")
    await rig.check("hung HSM call", Expect.BACKEND_DENIAL, challenge["id"], response)
    await rig.release_cleanly("after the hung call returned")


async def test_calls_queued_behind_a_stuck_call_give_up_at_their_deadline(rig: Rig) -> None:
    # Two calls race in before the circuit opens: the one queued on the module lock behind the stuck
    # one waits no longer than its own deadline.
    backend: Pkcs11Backend = rig.service.app.state.key_backend
    await backend.health()
    real_kek = backend._kek
    gate = threading.Event()
    backend._kek = HangingKek(real_kek, gate)  # type: ignore[assignment]
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            backend.wrap(b"k" * 32, b"ctx"), backend.wrap(b"k" * 32, b"ctx"), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, BackendError) for r in results), results
        assert elapsed < CALL_TIMEOUT_S + SLACK_S, elapsed
    finally:
        gate.set()
        backend._kek = real_kek
    deadline = time.monotonic() + 30
    while True:
        try:
            await backend.health()
            break
        except BackendError:
            assert time.monotonic() < deadline, "the circuit did not close after the stuck call returned"
            await asyncio.sleep(0.05)
