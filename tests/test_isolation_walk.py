"""Tenant isolation, route by route: every route of the app, called by tenant alpha's tokens (every role,
and none) against tenant beta's things, on SQLite (the application's filters alone) and on PostgreSQL
(row-level security behind them).

The routes come from the app's own route table, so a route added later is walked automatically, and a
route missing from ``ROUTES`` below (which says what kind of route it is and what a valid body looks
like) fails the test until someone decides how it must behave.

What "isolated" means here (README, "Roles and tokens"; docs/api.md, "not-found"):

* a tenant route naming beta, called with an alpha token, answers exactly what it answers for a tenant
  that does not exist (status, problem type, and detail up to the name itself), and never 2xx;
* a route on alpha's own path that names one of beta's things (a token, an anchor, a pinned EK, an AK, an
  enrolment, a key, a policy, a reference-value set, a CI signer, a challenge, an attestation result)
  answers exactly what it answers for a thing that does not exist, and never 2xx — with or without a token;
* no answer to alpha carries beta's tenant id;
* afterwards beta's state, as beta's admin reads it through every list route, is what it was; and on
  PostgreSQL every tenant table has row-level security forced and an unfiltered query in alpha's scope
  sees no row of beta's in any table.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from litestar.routes import HTTPRoute
from sqlalchemy import select, text

from audit.cosignature import cosigner_vkey
from audit.entry import canonical_bytes
from keyserver.attestation_token import issue_attestation_result
from keyserver.binding import jwk_thumbprint
from keyserver.db.models import Base, LogHead
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.witness.tenant_config import record_cosigned
from tests.conftest import Service, bearer
from tests.test_tpm_enrolment import pem
from tests.world import World, b64, populate

Kind = Literal["global", "tenant", "loader"]
ROLES = ("tenant-admin", "auditor", "ci-signer", None)
# Path parameters that name a tenant's thing, by the collection segment before them.
NAME_REFS = {
    "keys": "key",
    "policies": "policy",
    "reference-values": "reference_values",
    "ci-signers": "signer",
}
PARAM_REFS = {
    "token_id": "token_id",
    "anchor_id": "anchor_id",
    "ak_name": "ak_name",
    "enrolment_id": "enrolment_id",
    "fingerprint": "pinned_ek",
}
FIXED_PARAMS = {"version": "1", "path": "openapi.json", "file": "explorer.js"}
DROPPED = {"request_id", "instance", "log_index", "receipt"}


class Resolver:
    """The values one request is made of. The reference being probed resolves in ``target`` (beta, or
    None: something that does not exist); every other one in ``home`` (alpha's own, valid)."""

    def __init__(self, walk: Walk, path_tenant: str, probe: str | None, target: World | None) -> None:
        self.walk, self.path_tenant, self.probe, self.target = walk, path_tenant, probe, target
        self.used: dict[str, str] = {}

    def world(self, ref: str) -> World | None:
        return self.target if self.probe in (ref, "*") else self.walk.alpha

    async def value(self, ref: str) -> Any:
        world = self.world(ref)
        value = await (self.walk.existing(world, ref) if world else self.walk.missing(ref))
        if ref == self.probe or self.probe == "*":
            key = value["id"] if isinstance(value, dict) else str(value)
            self.used[key] = f"<{ref}>"
            if ref == "attestation_token":  # its key id is the caller's to see, echoed in the detail
                self.used[json.loads(b64url_decode(value.split(".")[0]))["kid"]] = "<kid>"
        return value


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


Body = Callable[[Resolver], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    kind: Kind
    body: Body | None = None
    query: dict[str, int] = field(default_factory=dict)
    refs: tuple[str, ...] = ()  # references carried in the body (path references are found in the path)


async def _none(_r: Resolver) -> None:
    return None


def _const(value: Any) -> Body:
    async def body(_r: Resolver) -> Any:
        return value

    return body


async def _new_tenant(r: Resolver) -> dict[str, Any]:
    return {"name": await r.value("tenant")}


async def _bundle(r: Resolver) -> dict[str, Any]:
    signer = await r.value("signer")
    bundle = {
        "v": 1,
        "tenant": r.path_tenant,
        "name": "walk-bundle",
        "tee": "tpm",
        "values": {"version": 1, "expected": {"tpm.pcrs.sha256.9": ["11" * 32]}},
    }
    key = r.walk.signer_key(r.world("signer"))
    return {"signer": signer, "bundle": bundle, "signature": b64(key.sign(canonical_bytes(bundle)))}


async def _release(r: Resolver) -> dict[str, Any]:
    challenge = await r.value("challenge")
    token = await r.value("attestation_token")
    return {
        "challenge": challenge["id"],
        "evidence": {"tee": "attestation-result", "token": token},
        "ephemeral_key": r.walk.alpha.loader.jwk,
    }


async def _attest(r: Resolver) -> dict[str, Any]:
    challenge = await r.value("challenge")
    loader = r.walk.alpha.loader
    return {
        "challenge": challenge["id"],
        "evidence": loader.evidence(challenge["nonce"]),
        "ephemeral_key": loader.jwk,
    }


SIGNER_PEM = (
    ed25519.Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
).decode()
POLICY = {"version": 1, "tees": ["tpm"], "rules": [{"name": "r", "expr": "claims['tpm.reset_count'] >= 0"}]}
RV = {"version": 1, "expected": {"tpm.pcrs.sha256.8": ["22" * 32]}}
ENROLMENT = {"ek_public": "AAAA", "ak_public": "AAAA"}
_WITNESS_KEY = ed25519.Ed25519PrivateKey.generate().public_key()
WITNESSES = {
    "witnesses": [
        {"name": "w.example", "url": "https://w.example", "vkey": cosigner_vkey("w.example", _WITNESS_KEY)}
    ],
    "quorum": 1,
    "failure_mode": "release-weak",
}


def _ca(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )


WALK_CA = _ca("isolation walk CA")
T = "/v1/tenants/{tenant}"

ROUTES: dict[tuple[str, str], Route] = {
    # Not about one tenant: answer alike whoever asks, and never with another tenant's data.
    ("GET", "/healthz"): Route("global"),
    ("GET", "/readyz"): Route("global"),
    ("GET", "/metrics"): Route("global"),
    ("GET", "/schema"): Route("global"),
    ("GET", "/schema/openapi.json"): Route("global"),
    ("GET", "/schema/{path}"): Route("global"),
    ("GET", "/v1/whoami"): Route("global"),
    # The log explorer's static page and assets (issue 20): the same bytes for every tenant and caller.
    ("GET", "/explorer/{tenant}"): Route("global"),
    ("GET", "/explorer/static/{file}"): Route("global"),
    ("GET", "/v1/tenants"): Route("global"),
    # A tenant token must not learn, by a 409, that a tenant of that name exists.
    ("POST", "/v1/tenants"): Route("global", _new_tenant, refs=("tenant",)),
    # A tenant's own routes: a token of that tenant.
    ("GET", T): Route("tenant"),
    ("GET", T + "/tokens"): Route("tenant"),
    ("POST", T + "/tokens"): Route("tenant", _const({"role": "auditor", "description": "walk"})),
    ("DELETE", T + "/tokens/{token_id}"): Route("tenant"),
    ("GET", T + "/log/checkpoint"): Route("tenant"),
    ("GET", T + "/log/key"): Route("tenant"),
    ("GET", T + "/log/entries"): Route("tenant", query={"start": 0, "end": 1}),
    ("GET", T + "/log/proofs/inclusion"): Route("tenant", query={"index": 0, "tree_size": 1}),
    ("GET", T + "/log/proofs/consistency"): Route("tenant", query={"first": 1, "second": 2}),
    ("GET", T + "/tpm/anchors"): Route("tenant"),
    ("POST", T + "/tpm/anchors"): Route(
        "tenant", _const({"kind": "ek-ca", "name": "walk", "certificate": pem(WALK_CA)})
    ),
    ("DELETE", T + "/tpm/anchors/{anchor_id}"): Route("tenant"),
    ("POST", T + "/tpm/pinned-eks"): Route(
        "tenant", _const({"ek_public": b64(bytes(range(64))), "description": "walk"})
    ),
    ("GET", T + "/tpm/pinned-eks"): Route("tenant"),
    ("DELETE", T + "/tpm/pinned-eks/{fingerprint}"): Route("tenant"),
    ("GET", T + "/tpm/aks"): Route("tenant"),
    ("DELETE", T + "/tpm/aks/{ak_name}"): Route("tenant"),
    ("GET", T + "/keys"): Route("tenant"),
    ("POST", T + "/keys"): Route(
        "tenant", _const({"name": "walk-key", "policy": "walk", "material": b64(bytes(range(32)))})
    ),
    ("POST", T + "/keys/{name}/rotate"): Route("tenant"),
    ("POST", T + "/keys/{name}/state"): Route("tenant", _const({"state": "disabled"})),
    ("GET", T + "/policies"): Route("tenant"),
    ("POST", T + "/policies"): Route("tenant", _const({"name": "walk-policy", "document": POLICY})),
    ("POST", T + "/policies/{name}/{version}/activate"): Route("tenant"),
    ("POST", T + "/policies/{name}/dry-run"): Route("tenant", _const({"claims": {"tee": "tpm"}})),
    ("GET", T + "/reference-values"): Route("tenant"),
    ("POST", T + "/reference-values"): Route(
        "tenant", _const({"name": "walk-rv", "tee": "tpm", "values": RV})
    ),
    ("POST", T + "/reference-values/bundles"): Route("tenant", _bundle, refs=("signer",)),
    ("POST", T + "/reference-values/{name}/{version}/revoke"): Route("tenant"),
    ("GET", T + "/ci-signers"): Route("tenant"),
    ("POST", T + "/ci-signers"): Route("tenant", _const({"name": "walk-ci", "public_key": SIGNER_PEM})),
    ("POST", T + "/ci-signers/{name}/revoke"): Route("tenant"),
    ("GET", T + "/release-limits"): Route("tenant"),
    ("PUT", T + "/release-limits/tenant"): Route(
        "tenant", _const({"max_releases": 100, "window_seconds": 60})
    ),
    ("DELETE", T + "/release-limits/tenant"): Route("tenant"),
    ("PUT", T + "/release-limits/keys/{name}"): Route(
        "tenant", _const({"max_releases": 100, "window_seconds": 60})
    ),
    ("DELETE", T + "/release-limits/keys/{name}"): Route("tenant"),
    ("GET", T + "/log/checkpoint/cosigned"): Route("tenant"),
    ("GET", T + "/witnesses"): Route("tenant"),
    ("PUT", T + "/witnesses"): Route("tenant", _const(WITNESSES)),
    ("DELETE", T + "/witnesses"): Route("tenant"),
    # No token: the loader and the TPM prove themselves. The tenant is named in the path on purpose;
    # another tenant's things named on a tenant's path must look like nothing.
    ("POST", T + "/challenges"): Route("loader"),
    ("POST", T + "/keys/{name}/release"): Route("loader", _release, refs=("challenge", "attestation_token")),
    ("POST", T + "/attest"): Route("loader", _attest, refs=("challenge",)),
    ("GET", T + "/attest/jwks"): Route("loader"),
    ("POST", T + "/tpm/enrolments"): Route("loader", _const(ENROLMENT)),
    ("POST", T + "/tpm/enrolments/{enrolment_id}/activate"): Route(
        "loader", _const({"secret": b64(bytes(32))})
    ),
    ("POST", T + "/tpm/enrolments/certified"): Route(
        "loader", _const({"ak_public": "AAAA", "ak_certificate": "AAAA"})
    ),
}


def app_routes(service: Service) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves, from its route table."""
    found: set[tuple[str, str]] = set()
    for route in service.app.routes:
        assert isinstance(route, HTTPRoute), route
        template = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods - {"OPTIONS", "HEAD"}:
            found.add((str(method), template))
    return found


def path_refs(template: str) -> list[tuple[str, str]]:
    """(parameter, reference) for each path parameter that names a tenant's thing."""
    refs = []
    segments = template.split("/")
    for i, segment in enumerate(segments):
        match = re.fullmatch(r"\{(\w+)\}", segment)
        if not match or match[1] in FIXED_PARAMS or match[1] == "tenant":
            continue
        param = match[1]
        ref = NAME_REFS[segments[i - 1]] if param == "name" else PARAM_REFS[param]
        refs.append((param, ref))
    return refs


def normalise(response: httpx.Response, used: dict[str, str]) -> dict[str, Any]:
    """What a caller can tell apart: status, media type, and the body less request-specific members,
    with the names the request itself carried replaced by placeholders."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in DROPPED}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str):
            for raw, placeholder in sorted(used.items(), key=lambda kv: -len(kv[0])):
                value = value.replace(raw, placeholder)
        return value

    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return {
        "status": response.status_code,
        "type": response.headers.get("content-type"),
        "body": scrub(body),
    }


class Walk:
    def __init__(self, service: Service, alpha: World, beta: World, origin: str) -> None:
        self.service, self.alpha, self.beta, self.origin = service, alpha, beta, origin
        self.requests = 0

    def token(self, role: str | None) -> dict[str, str]:
        if role is None:
            return {}
        tokens = {"tenant-admin": self.alpha.tenant.admin, "auditor": self.alpha.tenant.auditor}
        return bearer(tokens.get(role, self.alpha.tenant.ci_signer))

    def signer_key(self, world: World | None) -> ed25519.Ed25519PrivateKey:
        return world.signer_key if world else ed25519.Ed25519PrivateKey.generate()

    async def existing(self, world: World, ref: str) -> Any:
        if ref == "challenge":
            if world is self.alpha:  # alpha's own: a fresh one each time (single use)
                return await world.loader.challenge()
            return {"id": world.challenge_id, "nonce": "A" * 43}
        if ref == "token_id":
            return world.token_ids["tenant-admin"]
        if ref == "tenant":
            return world.name
        return getattr(world, ref)

    async def missing(self, ref: str) -> Any:
        if ref == "challenge":
            return {"id": str(uuid.uuid4()), "nonce": "A" * 43}
        if ref in ("token_id", "anchor_id", "enrolment_id"):
            return str(uuid.uuid4())
        if ref == "ak_name":
            return "000b" + uuid.uuid4().hex * 2
        if ref == "pinned_ek":  # a SHA-256 no EK here has
            return uuid.uuid4().hex * 2
        if ref == "attestation_token":
            # Well formed and bound to alpha's loader key, from a key this keyserver never had.
            return issue_attestation_result(
                {"tee": "tpm"},
                tenant=self.alpha.name,
                ephemeral_jwk_thumbprint=jwk_thumbprint(self.alpha.loader.jwk),
                signing_key=ed25519.Ed25519PrivateKey.generate(),
                kid=uuid.uuid4().hex[:16],
                issuer=self.origin,
                now=utcnow(),
                lifetime=timedelta(minutes=5),
            )
        return f"nosuch-{ref.replace('_', '-')}"

    async def call(
        self, method: str, template: str, route: Route, role: str | None, resolver: Resolver
    ) -> httpx.Response:
        path = template.replace("{tenant}", resolver.path_tenant)
        for name, value in FIXED_PARAMS.items():
            path = path.replace("{" + name + "}", value)
        for param, ref in path_refs(template):
            path = path.replace("{" + param + "}", str(await resolver.value(ref)))
        body = await (route.body or _none)(resolver)
        self.requests += 1
        return await self.service.client.request(
            method, path, json=body, params=route.query or None, headers=self.token(role)
        )

    async def pair(
        self,
        method: str,
        template: str,
        route: Route,
        role: str | None,
        theirs: Resolver,
        nothing: Resolver,
    ) -> None:
        """The same request twice: naming beta's things, then naming nothing that exists."""
        got = await self.call(method, template, route, role, theirs)
        expected = await self.call(method, template, route, role, nothing)
        where = (method, template, role, theirs.probe)
        assert not 200 <= got.status_code < 300, (where, got.status_code, got.text)
        assert self.beta.tenant_id not in got.text, (where, got.text)
        for resolver in (theirs, nothing):
            if resolver.path_tenant:
                resolver.used[resolver.path_tenant] = "<tenant>"
        assert normalise(got, theirs.used) == normalise(expected, nothing.used), where

    async def walk(self, method: str, template: str, route: Route) -> None:
        refs = [ref for _param, ref in path_refs(template)] + list(route.refs)
        alpha, beta = self.alpha.name, self.beta.name
        if route.kind == "global":
            for role in ROLES:
                if refs:
                    theirs, nothing = Resolver(self, "", "*", self.beta), Resolver(self, "", "*", None)
                    await self.pair(method, template, route, role, theirs, nothing)
                    continue
                response = await self.call(method, template, route, role, Resolver(self, "", None, None))
                assert self.beta.tenant_id not in response.text, (method, template, role)
                assert f'"{beta}"' not in response.text, (method, template, role)
            return
        if route.kind == "tenant":
            for role in ROLES:
                # Beta's path and beta's things, against a tenant that does not exist.
                theirs, nothing = (
                    Resolver(self, beta, "*", self.beta),
                    Resolver(self, "nosuch-tenant", "*", self.beta),
                )
                await self.pair(method, template, route, role, theirs, nothing)
                # Alpha's own path naming one of beta's things, against a thing that does not exist.
                for ref in refs:
                    theirs, nothing = Resolver(self, alpha, ref, self.beta), Resolver(self, alpha, ref, None)
                    await self.pair(method, template, route, role, theirs, nothing)
            return
        # Loader routes: the path may name any tenant; a tenant that does not exist is a 404.
        nowhere = await self.call(method, template, route, None, Resolver(self, "nosuch-tenant", "*", None))
        assert nowhere.status_code == 404, (method, template, nowhere.text)
        assert nowhere.json()["type"] == "urn:keyserver:problem:not-found"
        for ref in refs:
            theirs, nothing = Resolver(self, alpha, ref, self.beta), Resolver(self, alpha, ref, None)
            await self.pair(method, template, route, None, theirs, nothing)


async def snapshot(service: Service, world: World) -> dict[str, Any]:
    """Everything the tenant's admin can list, and its log head."""
    seen: dict[str, Any] = {}
    for method, template in sorted(app_routes(service)):
        route = ROUTES.get((method, template))
        if method != "GET" or route is None or route.kind != "tenant" or path_refs(template):
            continue
        path = template.replace("{tenant}", world.name)
        query = route.query or None
        response = await service.client.get(path, params=query, headers=bearer(world.tenant.admin))
        assert response.status_code == 200, (path, response.text)
        seen[path] = response.text
    return seen


async def test_every_route_keeps_tenants_apart(service: Service, db: Database) -> None:
    served = app_routes(service)
    unlisted = served - ROUTES.keys()
    assert not unlisted, f"routes with no isolation rule in ROUTES (add them): {sorted(unlisted)}"
    stale = ROUTES.keys() - served
    assert not stale, f"ROUTES lists routes the app no longer serves: {sorted(stale)}"

    alpha = await populate(service, "alpha", 1)
    beta = await populate(service, "beta", 2)
    # Each log's latest cosigned checkpoint (as the cosigning stage keeps it; here its head, unsigned by
    # witnesses: the walk is about who may read it).
    for world in (alpha, beta):
        await _record_cosigned_head(db, uuid.UUID(world.tenant_id))
    before = await snapshot(service, beta)
    walk = Walk(service, alpha, beta, service.app.state.settings.log_origin)
    for (method, template), route in sorted(ROUTES.items()):
        await walk.walk(method, template, route)
    assert walk.requests > 300  # the walk really walked
    assert await snapshot(service, beta) == before

    # Beta still works: its loader still gets its key.
    again = await beta.loader.release(beta.imported_key)
    assert again.status_code == 200, again.text

    if db.dialect == "postgresql":
        await _database_keeps_tenants_apart(db, uuid.UUID(alpha.tenant_id), uuid.UUID(beta.tenant_id))


async def _record_cosigned_head(db: Database, tenant_id: uuid.UUID) -> None:
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        head = (await session.execute(select(LogHead).where(LogHead.tenant_id == tenant_id))).scalar_one()
        await record_cosigned(session, tenant_id, head.size, head.checkpoint)


async def _database_keeps_tenants_apart(db: Database, alpha: uuid.UUID, beta: uuid.UUID) -> None:
    """Every table has row-level security, forced; an unfiltered read in alpha's scope sees only alpha."""
    async with db.transaction(Scope.for_operator()) as session:
        rows = await session.execute(
            text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
                " WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
                " AND relname <> 'alembic_version'"
            )
        )
        flags = {row.relname: (row.relrowsecurity, row.relforcerowsecurity) for row in rows}
    assert set(flags) == set(Base.metadata.tables), "the walk must know every table"
    assert all(enabled and forced for enabled, forced in flags.values()), flags
    tenant_tables = [t for t in Base.metadata.sorted_tables if "tenant_id" in t.columns]
    assert len(tenant_tables) >= 15
    for scope, own, other in ((alpha, alpha, beta), (beta, beta, alpha)):
        async with db.transaction(Scope.for_tenant(scope)) as session:
            for table in tenant_tables:
                owners = set((await session.execute(select(table.c.tenant_id))).scalars())
                assert other not in owners, (table.name, scope)
                assert owners <= {own, None}, (table.name, owners)
    # Sanity: the tables were not empty to begin with (operator scope sees the registry only, so count
    # each tenant's rows in its own scope).
    async with db.transaction(Scope.for_tenant(beta)) as session:
        populated = [
            t.name for t in tenant_tables if (await session.execute(select(t.c.tenant_id).limit(1))).first()
        ]
    assert {"keys", "key_versions", "log_entries", "tpm_aks", "ci_signers", "challenges"} <= set(populated)
