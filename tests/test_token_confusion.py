"""Tokens where they do not belong, over HTTP, on both databases.

Four kinds of token cross this API: bearer tokens (``ks1.…``), attestation results (EAR JWTs, JWS), the
release's JWE, and log checkpoints (signed notes). Each one presented where another goes must be
refused — a 401 where a bearer token goes, a logged denial where an attestation result goes — and so
must attestation results that are signed by the tenant's own key but are expired, not yet valid, or
carry a header the verifier does not know (``zip``, ``alg: none``, ``HS256`` keyed with the published
key). tests/test_attestation_token.py and tests/test_jwe.py test the same parsers as functions; here
the whole path is exercised: routing, the release transaction, the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from keyserver.attestation import TOKEN_LIFETIME, AttestationIssuer, _context
from keyserver.attestation_token import DEFAULT_MAX_SKEW
from keyserver.backends.software import SoftwareBackend
from keyserver.binding import jwk_thumbprint
from keyserver.config import Settings
from keyserver.db.models import AttestationKey, Tenant
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from tests.conftest import Service, bearer
from tests.world import World, b64url, populate

ATTESTATION_RESULT = "attestation-result"


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def compact(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())


@pytest.fixture
async def acme(service: Service) -> World:
    return await populate(service, "acme", 1)


class TenantSigner:
    """The tenant's own attestation-result key, taken from the store with the KEK, as only someone holding
    the keyserver's data directory could: tokens it signs are authentic, so what refuses them below is
    the verifier's checks, not a bad signature."""

    def __init__(self, issuer: AttestationIssuer, tenant: Tenant, private: Any, kid: str) -> None:
        self.issuer, self.tenant, self.private, self.kid = issuer, tenant, private, kid

    @classmethod
    async def load(cls, db: Database, settings: Settings, world: World) -> TenantSigner:
        backend = SoftwareBackend.from_file(settings.effective_kek_file, create=False)
        issuer = AttestationIssuer(backend, settings.log_origin)
        tenant_id = uuid.UUID(world.tenant_id)
        async with db.transaction(Scope.for_tenant(tenant_id)) as session:
            tenant = await session.get(Tenant, tenant_id)
            row = (
                await session.execute(select(AttestationKey).where(AttestationKey.tenant_id == tenant_id))
            ).scalar_one()
        assert tenant is not None
        private = await issuer._keys.get(
            tenant_id, row.public_key, row.wrapped_private_key, _context(tenant_id)
        )
        return cls(issuer, tenant, private, row.kid)

    async def issue(self, db: Database, world: World, claims: dict[str, Any], *, shift: timedelta) -> str:
        async with db.transaction(Scope.for_tenant(self.tenant.id)) as session:
            return await self.issuer.issue(
                session, self.tenant, claims, jwk_thumbprint(world.loader.jwk), utcnow() + shift
            )

    def sign(self, header: dict[str, Any], payload: dict[str, Any]) -> str:
        signing_input = compact(header, payload)
        return signing_input + "." + b64url(self.private.sign(signing_input.encode()))


async def released_with(world: World, token: str) -> Any:
    return await world.loader.release(
        world.imported_key, evidence={"tee": ATTESTATION_RESULT, "token": token}
    )


def claims_of(token: str) -> dict[str, Any]:
    _, payload = parts(token)
    (submod,) = payload["submods"].values()
    return dict(submod["ear.keyserver.claims"])


async def test_each_token_where_another_goes_is_refused(service: Service, acme: World) -> None:
    granted = acme.granted
    jwe = granted["jwe"]
    checkpoint = granted["receipt"]["checkpoint"]
    auditor = bearer(acme.tenant.auditor)

    # Where a bearer token goes: an attestation result, a JWE, a checkpoint's signature, a token of the
    # right shape with the JWT's signature in place of its secret.
    signature = checkpoint.strip().split("\n")[-1].split(" ")[-1]
    prefix, tenant, token_id, _secret = acme.tenant.admin.split(".")
    for wrong in (
        acme.attestation_token,
        jwe,
        signature,
        f"{prefix}.{tenant}.{token_id}.{acme.attestation_token.split('.')[2]}",
    ):
        for path in ("/v1/whoami", "/v1/tenants/acme/keys", "/v1/tenants/acme/log/checkpoint"):
            response = await service.client.get(path, headers={"Authorization": f"Bearer {wrong}"})
            assert response.status_code == 401, (path, wrong[:40], response.text)
            assert response.json()["type"] == "urn:keyserver:problem:unauthenticated"

    # Where an attestation result goes: a bearer token, a JWE, a checkpoint, a JWT with a JWE's header.
    for wrong in (
        acme.tenant.admin,
        jwe,
        checkpoint,
        jwe.split(".")[0] + "." + acme.attestation_token.split(".", 1)[1],
    ):
        before = (await service.client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text
        response = await released_with(acme, wrong)
        assert response.status_code == 403, response.text
        denial = response.json()
        assert denial["reason"].startswith("attestation-result-"), denial
        assert denial["log_index"] == int(before.split("\n")[1])  # the denial is logged
        assert "jwe" not in denial

    # The real attestation result still works where it belongs (the refusals above were not luck).
    assert (await released_with(acme, acme.attestation_token)).status_code == 200


async def test_authentic_results_out_of_time_or_shape_are_denied(
    service: Service, db: Database, settings: Settings, acme: World
) -> None:
    signer = await TenantSigner.load(db, settings, acme)
    claims = claims_of(acme.attestation_token)

    # Positive control: a token this signer makes now is accepted; what follows fails only on what changed.
    fresh = await signer.issue(db, acme, claims, shift=timedelta(0))
    assert (await released_with(acme, fresh)).status_code == 200

    skew = DEFAULT_MAX_SKEW
    for shift, reason in (
        (-(TOKEN_LIFETIME + skew + timedelta(seconds=30)), "attestation-result-expired"),
        (-timedelta(days=400), "attestation-result-expired"),
        (skew + timedelta(seconds=30), "attestation-result-not-yet-valid"),
        (timedelta(days=400), "attestation-result-not-yet-valid"),
    ):
        token = await signer.issue(db, acme, claims, shift=shift)
        response = await released_with(acme, token)
        assert response.status_code == 403, (shift, response.text)
        assert response.json()["reason"] == reason, shift

    header, payload = parts(fresh)
    public_jwk = (await service.client.get("/v1/tenants/acme/attest/jwks")).json()["keys"][0]
    hs256 = {**header, "alg": "HS256"}
    mac = hmac.new(b64url_decode(public_jwk["x"]), compact(hs256, payload).encode(), hashlib.sha256).digest()
    invalid, tenant, key = (
        "attestation-result-invalid",
        "attestation-result-wrong-tenant",
        "attestation-result-key-mismatch",
    )
    forged = [
        (signer.sign({**header, "zip": "DEF"}, payload), invalid),  # JWS has no zip: an unknown member
        (signer.sign({**header, "alg": "EdDSA"}, payload), invalid),  # the same signature, polymorphic name
        (signer.sign({**header, "crit": ["exp"]}, payload), invalid),
        (compact({**header, "alg": "none"}, payload) + ".", invalid),
        (compact({**header, "alg": "none"}, payload) + "." + fresh.split(".")[2], invalid),
        (compact(hs256, payload) + "." + b64url(mac), invalid),  # HMAC keyed with the published key
        (signer.sign(header, {**payload, "aud": "globex"}), tenant),
        (signer.sign(header, {**payload, "cnf": {"jkt": b64url(bytes(32))}}), key),
    ]
    for token, reason in forged:
        response = await released_with(acme, token)
        assert response.status_code == 403, (token[:60], response.text)
        assert response.json()["reason"] == reason, (token[:60], response.json())


async def test_the_release_jwe_carries_no_zip_and_only_the_expected_header(acme: World) -> None:
    header = json.loads(b64url_decode(acme.granted["jwe"].split(".")[0]))
    assert "zip" not in header
    assert set(header) <= {"alg", "enc", "kid", "epk", "cty", "typ"}, header
    assert (header["alg"], header["enc"]) == ("ECDH-ES+A256KW", "A256GCM")
