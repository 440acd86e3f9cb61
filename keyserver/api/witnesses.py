"""A tenant's witnesses over HTTP (tenant-admin sets; auditors read): keyserver/witness/tenant_config.py has
the rules, docs/release-log.md the trust model."""

from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import TOKEN_READ, TOKEN_WRITE
from keyserver.config import Settings
from keyserver.db.session import Database
from keyserver.errors import InvalidRequest
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role
from keyserver.witness.cosigning import CosigningStage
from keyserver.witness.outbound import OutboundRefused
from keyserver.witness.tenant_config import load_config, parse_config, remove_config, set_config


def _forget(state: State, tenant_id: Any) -> None:
    stage: CosigningStage | None = getattr(state, "cosigning", None)
    if stage is not None:
        stage.forget(tenant_id)


class WitnessConfigController(Controller):
    path = "/v1/tenants/{tenant:str}/witnesses"
    tags = ("witnesses",)
    security = SECURITY

    @get("/", summary="The witnesses, quorum and failure mode (tenant-admin, auditor)", responses=TOKEN_READ)
    async def show(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> dict[str, Any]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            config = await load_config(session, target.id)
        if config is None:
            # Not witnessed: receipts carry no cosignatures.
            return {"witnesses": [], "quorum": None, "failure_mode": None}
        return config.document()

    @put(
        "/",
        summary="Set the witnesses, the quorum m and the failure mode (tenant-admin; logged)",
        responses=TOKEN_WRITE,
    )
    async def set(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        state: State,
        tenant: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        config = parse_config(data)
        settings: Settings = state.settings
        for witness in config.witnesses:
            try:
                settings.witness_outbound.check_url(witness.url)
            except OutboundRefused as exc:
                raise InvalidRequest(f"witness {witness.name}: {exc}") from None
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await set_config(session, release_log, target, config, principal=principal.token_id)
        _forget(state, target.id)
        return config.document()

    @delete("/", status_code=200, summary="Stop witnessing (tenant-admin; logged)", responses=TOKEN_WRITE)
    async def remove(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        state: State,
        tenant: FromPath[str],
    ) -> dict[str, Any]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await remove_config(session, release_log, target, principal=principal.token_id)
        _forget(state, target.id)
        return {"witnesses": [], "removed": True}
