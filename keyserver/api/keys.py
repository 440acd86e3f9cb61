"""A tenant's keys over HTTP (tenant-admin; auditors may list)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver import keys as keystore
from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import TOKEN_READ, TOKEN_WRITE
from keyserver.backends.base import KeyBackend
from keyserver.db.models import Key, KeyVersion
from keyserver.db.session import Database
from keyserver.errors import InvalidRequest
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role, require_role, resolve_tenant
from keyserver.tpm_enrolment import decode_b64

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    policy: Name
    material: str | None = None  # base64: the tenant's own key; omitted = generated in the backend


class KeyOut(msgspec.Struct):
    name: str
    policy: str
    state: str
    backend: str
    versions: list[int]
    live_versions: list[int]

    @classmethod
    def of(cls, key: Key, versions: list[KeyVersion]) -> KeyOut:
        return cls(
            key.name,
            key.policy_name,
            key.state,
            key.backend,
            [v.version for v in versions],
            [v.version for v in versions if v.wrapped is not None],
        )


class KeyState(msgspec.Struct, forbid_unknown_fields=True):
    state: Literal["enabled", "disabled", "destroyed"]


class KeyController(Controller):
    path = "/v1/tenants/{tenant:str}/keys"
    tags = ("keys",)
    security = SECURITY

    @post("/", summary="Create a key under a policy (tenant-admin)", responses=TOKEN_WRITE)
    async def create(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        key_backend: NamedDependency[KeyBackend],
        tenant: FromPath[str],
        data: JSONBody[KeyCreate],
    ) -> KeyOut:
        require_role(principal, Role.TENANT_ADMIN)
        material = decode_b64(data.material, "material") if data.material is not None else None
        async with db.transaction(principal.scope) as session:
            target = await resolve_tenant(session, principal, tenant)
            created = await keystore.create_key(
                session,
                release_log,
                key_backend,
                target,
                name=data.name,
                policy_name=data.policy,
                principal=principal.token_id,
                material=material,
            )
        return KeyOut.of(created.key, [created.version])

    @get("/", summary="The tenant's keys and versions", responses=TOKEN_READ)
    async def list_all(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[KeyOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            return [KeyOut.of(k, v) for k, v in await keystore.list_keys(session, target.id)]

    @post(
        "/{name:str}/rotate", status_code=200, summary="Add a version (tenant-admin)", responses=TOKEN_WRITE
    )
    async def rotate(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        key_backend: NamedDependency[KeyBackend],
        tenant: FromPath[str],
        name: FromPath[str],
    ) -> KeyOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await keystore.rotate_key(
                session, release_log, key_backend, target, name, principal=principal.token_id
            )
            found = [(k, v) for k, v in await keystore.list_keys(session, target.id) if k.name == name]
        return KeyOut.of(*found[0])

    @post(
        "/{name:str}/state",
        status_code=200,
        summary="Enable, disable or destroy a key (tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def state(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        name: FromPath[str],
        data: JSONBody[KeyState],
    ) -> KeyOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await keystore.set_state(
                session, release_log, target, name, data.state, principal=principal.token_id
            )
            found = [(k, v) for k, v in await keystore.list_keys(session, target.id) if k.name == name]
        if not found:
            raise InvalidRequest("the key vanished")
        return KeyOut.of(*found[0])
