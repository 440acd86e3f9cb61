"""The key-encryption key's identity (issue 21 item 6): recorded in the database at first use; a KEK that
is missing or replaced stops the start and fails ``/readyz``; never silently re-created. Software backend
(kek.bin), PKCS#11 (a real SoftHSM2 token) and Vault (a real OpenBao server)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import hvac
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass, Session
from sqlalchemy import text

from keyserver.app import create_app
from keyserver.backends.base import BackendError
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import KekCheck
from keyserver.db.session import Database, Scope
from keyserver.errors import ConfigurationError
from keyserver.kek_identity import KekMismatch, check_kek_identity
from tests.fixtures.openbao import OpenBaoServer
from tests.fixtures.softhsm import SoftHsmToken

PROBLEM = "application/problem+json"


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Litestar, AsyncTestClient[Litestar]]]:
    app = create_app(settings, announce=lambda _token: None)
    async with AsyncTestClient(app=app) as client:
        yield app, client


async def start_and_stop(settings: Settings) -> None:
    async with running(settings) as (_app, client):
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text


async def refusal(settings: Settings) -> BaseException:
    """What stopped the start (the lifespan's error, out of the test client's exception group)."""
    try:
        await start_and_stop(settings)
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return exc
    raise AssertionError("the service started")


def assert_refused(exc: BaseException, kind: type[BaseException], fragment: str) -> None:
    assert isinstance(exc, kind), repr(exc)
    assert fragment in str(exc), str(exc)


async def recorded(settings: Settings) -> KekCheck | None:
    db = Database(settings)
    try:
        async with db.transaction(Scope.for_operator()) as session:
            return await session.get(KekCheck, 1)
    finally:
        await db.dispose()


# --- software ---------------------------------------------------------------------------------------------


async def test_software_kek_recorded_at_first_start_and_checked_after(settings: Settings) -> None:
    await start_and_stop(settings)
    row = await recorded(settings)
    assert row is not None
    assert row.backend == "software"
    await start_and_stop(settings)  # the same kek.bin: starts again, the record unchanged
    again = await recorded(settings)
    assert again is not None
    assert (again.wrapped_check, again.check_sha256) == (row.wrapped_check, row.check_sha256)


class _SecondWorkerFirst(SoftwareBackend):
    """Two workers starting on a fresh database at once: while this one makes its KEK check (after it
    read that none is recorded, before its insert), the other records its own and commits."""

    def __init__(self, kek: bytes, other: Database) -> None:
        super().__init__(kek)
        self.kek, self.other, self.raced = kek, other, False

    async def wrap(self, plaintext: bytes, context: bytes) -> bytes:
        if not self.raced:
            self.raced = True
            await check_kek_identity(self.other, SoftwareBackend(self.kek))
        return await super().wrap(plaintext, context)


async def test_two_workers_recording_the_kek_at_once_both_start(
    settings: Settings, migrated_db: Database
) -> None:
    """The loser of the race reads the winner's record and checks its KEK against it, in the same
    transaction (its failed insert was inside a savepoint); it used to fail with PendingRollbackError
    and answer 503 until its next readiness attempt. PostgreSQL: on SQLite every transaction takes the
    write lock first (BEGIN IMMEDIATE), so the second worker waits for the first and reads its record."""
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only: SQLite's transactions cannot interleave so")
    kek = secrets.token_bytes(32)
    other = Database(settings)
    try:
        racing = _SecondWorkerFirst(kek, other)
        await check_kek_identity(migrated_db, racing)
        assert racing.raced
        assert await recorded(settings) is not None
        await check_kek_identity(migrated_db, SoftwareBackend(kek))  # and every start after
        with pytest.raises(KekMismatch):
            await check_kek_identity(migrated_db, SoftwareBackend(secrets.token_bytes(32)))
    finally:
        await other.dispose()


async def test_software_kek_missing_refuses_to_start_and_is_not_recreated(settings: Settings) -> None:
    await start_and_stop(settings)
    kek = settings.effective_kek_file
    kek.unlink()
    assert_refused(await refusal(settings), ConfigurationError, "does not exist")
    assert not kek.exists(), "a missing KEK was created afresh"


async def test_software_kek_replaced_refuses_to_start(settings: Settings) -> None:
    await start_and_stop(settings)
    kek = settings.effective_kek_file
    kek.write_bytes(secrets.token_bytes(32))
    assert_refused(await refusal(settings), KekMismatch, "KEK file")


async def test_replica_with_another_kek_file_refuses_to_start(settings: Settings, tmp_path: Path) -> None:
    await start_and_stop(settings)
    other = replace(settings, kek_file=tmp_path / "other-kek.bin")
    SoftwareBackend.from_file(other.effective_kek_file)  # a KEK of its own, made before it starts
    assert_refused(await refusal(other), KekMismatch, "")


async def test_readyz_fails_when_the_backend_holds_another_kek(settings: Settings) -> None:
    async with running(settings) as (app, client):
        assert (await client.get("/readyz")).status_code == 200
        app.state.key_backend = SoftwareBackend(secrets.token_bytes(32))
        ready = await client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.headers["content-type"] == PROBLEM
        assert "key-encryption key" in ready.json()["detail"]


async def test_a_changed_backend_kind_is_a_mismatch(settings: Settings) -> None:
    await start_and_stop(settings)
    db = Database(settings)
    try:

        class Renamed(SoftwareBackend):
            name = "vault"

        with pytest.raises(KekMismatch, match="KEYSERVER_KEY_BACKEND=software"):
            await check_kek_identity(db, Renamed.from_file(settings.effective_kek_file))
    finally:
        await db.dispose()


async def test_the_record_cannot_be_rewritten(settings: Settings) -> None:
    # Append-only: replacing the record would be replacing the KEK without anyone noticing.
    await start_and_stop(settings)
    db = Database(settings)
    try:
        with pytest.raises(Exception, match="append-only"):
            async with db.transaction(Scope.for_operator()) as session:
                await session.execute(text("UPDATE kek_check SET backend = 'x'"))
        with pytest.raises(Exception, match="append-only"):
            async with db.transaction(Scope.for_operator()) as session:
                await session.execute(text("DELETE FROM kek_check"))
    finally:
        await db.dispose()


# --- PKCS#11 (SoftHSM2) -----------------------------------------------------------------------------------


def _hsm_settings(settings: Settings, token: SoftHsmToken) -> Settings:
    return replace(
        settings,
        key_backend="pkcs11",
        pkcs11_module=Path(token.module_path),
        pkcs11_token_label=token.label,
        pkcs11_pin=token.user_pin,
        pkcs11_kek_label=f"kek-{uuid.uuid4().hex[:8]}",
    )


def _delete_kek(session: Session, label: str) -> None:
    for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}):
        key.destroy()


@pytest.mark.softhsm
async def test_pkcs11_kek_missing_refuses_to_start(
    settings: Settings, softhsm_token: SoftHsmToken, pkcs11_session: Session
) -> None:
    hsm = _hsm_settings(settings, softhsm_token)
    await start_and_stop(hsm)
    _delete_kek(pkcs11_session, hsm.pkcs11_kek_label)
    assert_refused(await refusal(hsm), BackendError, "no key labelled")
    assert not list(pkcs11_session.get_objects({Attribute.LABEL: hsm.pkcs11_kek_label})), "re-created"


@pytest.mark.softhsm
async def test_pkcs11_kek_replaced_refuses_to_start(
    settings: Settings, softhsm_token: SoftHsmToken, pkcs11_session: Session
) -> None:
    hsm = _hsm_settings(settings, softhsm_token)
    await start_and_stop(hsm)
    _delete_kek(pkcs11_session, hsm.pkcs11_kek_label)
    pkcs11_session.generate_key(
        KeyType.AES,
        256,
        label=hsm.pkcs11_kek_label,
        store=True,
        capabilities=MechanismFlag.DERIVE,
        template={Attribute.TOKEN: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
    )
    assert_refused(await refusal(hsm), KekMismatch, "KEYSERVER_PKCS11_KEK_LABEL")


# --- Vault (OpenBao) ----------------------------------------------------------------------------------------


def _vault_settings(settings: Settings, openbao: OpenBaoServer, mount: str) -> Settings:
    return replace(
        settings,
        key_backend="vault",
        vault_addr=openbao.addr,
        vault_token=openbao.root_token,
        vault_transit_mount=mount,
        vault_key_name="keyserver",
    )


def _delete_transit_key(client: hvac.Client, mount: str) -> None:
    client.secrets.transit.update_key_configuration("keyserver", deletion_allowed=True, mount_point=mount)
    client.secrets.transit.delete_key("keyserver", mount_point=mount)


@pytest.mark.openbao
async def test_vault_key_missing_refuses_to_start(
    settings: Settings, openbao: OpenBaoServer, openbao_client: hvac.Client, transit_mount: str
) -> None:
    vault = _vault_settings(settings, openbao, transit_mount)
    await start_and_stop(vault)
    _delete_transit_key(openbao_client, transit_mount)
    assert_refused(await refusal(vault), BackendError, "has no transit key")
    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao_client.secrets.transit.read_key("keyserver", mount_point=transit_mount)


@pytest.mark.openbao
async def test_vault_key_replaced_refuses_to_start(
    settings: Settings, openbao: OpenBaoServer, openbao_client: hvac.Client, transit_mount: str
) -> None:
    vault = _vault_settings(settings, openbao, transit_mount)
    await start_and_stop(vault)
    _delete_transit_key(openbao_client, transit_mount)
    openbao_client.secrets.transit.create_key(
        "keyserver", derived=True, exportable=False, key_type="aes256-gcm96", mount_point=transit_mount
    )
    assert_refused(await refusal(vault), KekMismatch, "KEYSERVER_VAULT_KEY_NAME")
