"""A tenant with one of everything the API manages, made over HTTP as its users would make it.

Tokens of every role, TPM trust anchors, a pinned EK, an enrolled AK and a pending enrolment, a CI
signer, reference values (by hand and from a signed bundle), an active policy, a generated and an
imported key, an unused challenge, an attestation-result token, and a release log holding a granted and
a denied release. The "loader" is a software TPM (tests/tpm/helpers.py): its quotes are verified by the
real verifier, so releases here are real releases.

Used by the tests that try to reach a tenant's things from elsewhere (tests/test_isolation_walk.py) and
that look for its secrets where they must not be (tests/test_secrets.py).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc.jwk import ECKey

from audit.entry import canonical_bytes
from keyserver.binding import binding, report_data_for
from keyserver.evidence.tpm import structures as st
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, make_tenant
from tests.test_tpm_enrolment import SoftTpm, pem
from tests.tpm.helpers import ec_key, ek_ca, make_attest, make_pcrs, rsa_key, sign

PCR = 10


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Loader:
    """The confidential VM's side: an ephemeral key and a (software) TPM whose AK the tenant enrolled."""

    def __init__(self, service: Service, tenant: str, tpm: SoftTpm, ak_private: ec.EllipticCurvePrivateKey):
        self.service, self.tenant, self.tpm, self.ak_private = service, tenant, tpm, ak_private
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk: dict[str, Any] = ECKey.import_key(self.private.public_key()).as_dict(private=False)
        self.pcrs = make_pcrs({"sha256": [PCR]}, salt=b"reviewed loader build 1")

    @property
    def pcr_hex(self) -> str:
        return self.pcrs["sha256"][PCR].hex()

    async def challenge(self, tenant: str | None = None) -> dict[str, Any]:
        response = await self.service.client.post(f"/v1/tenants/{tenant or self.tenant}/challenges")
        assert response.status_code == 201, response.text
        return dict(response.json())

    def evidence(self, nonce_b64url: str, jwk: dict[str, Any] | None = None) -> dict[str, Any]:
        nonce = base64.urlsafe_b64decode(nonce_b64url + "==")
        qualifying = report_data_for("tpm", binding(nonce, jwk or self.jwk))
        attest = make_attest(self.pcrs, extra_data=qualifying, qualified_signer=self.tpm.ak.name())
        signature = sign(self.ak_private, attest, st.ALG_ECDSA, st.ALG_SHA256)
        return {
            "tee": "tpm",
            "ak_name": self.tpm.ak.name().hex(),
            "quote": b64(attest),
            "signature": b64(signature),
            "pcrs": {"sha256": {str(PCR): self.pcr_hex}},
        }

    async def release(self, key: str, *, tenant: str | None = None, **overrides: Any) -> Any:
        tenant = tenant or self.tenant
        challenge = overrides.pop("challenge", None) or await self.challenge(tenant)
        body = {
            "challenge": challenge["id"],
            "evidence": overrides.pop("evidence", None) or self.evidence(challenge["nonce"]),
            "ephemeral_key": overrides.pop("ephemeral_key", None) or self.jwk,
            **overrides,
        }
        return await self.service.client.post(f"/v1/tenants/{tenant}/keys/{key}/release", json=body)

    async def attest(self) -> str:
        challenge = await self.challenge()
        response = await self.service.client.post(
            f"/v1/tenants/{self.tenant}/attest",
            json={
                "challenge": challenge["id"],
                "evidence": self.evidence(challenge["nonce"]),
                "ephemeral_key": self.jwk,
            },
        )
        assert response.status_code == 200, response.text
        return str(response.json()["token"])


@dataclass
class World:
    """One populated tenant. Every name is prefixed with the tenant's, so no two tenants share one."""

    tenant: TenantFixture
    tenant_id: str
    token_ids: dict[str, str]  # role -> token id
    anchor_id: str
    pinned_ek: str  # the pinned EK's SHA-256 (hex)
    ak_name: str
    enrolment_id: str  # begun, never activated
    signer: str
    signer_key: ed25519.Ed25519PrivateKey
    reference_values: str
    policy: str
    key: str  # generated in the backend
    imported_key: str
    imported_material: bytes
    challenge_id: str  # issued, never used
    loader: Loader
    attestation_token: str
    granted: dict[str, Any] = field(default_factory=dict)  # the granted release's response body
    denied: dict[str, Any] = field(default_factory=dict)  # the denied release's problem document

    @property
    def name(self) -> str:
        return self.tenant.name


async def _ok(response: Any, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def populate(service: Service, name: str, seed: int, material: bytes | None = None) -> World:
    """Create tenant ``name`` and one of everything in it. ``seed`` keeps its TPM keys apart from other
    tenants' (each seed is its own cached key pair)."""
    client = service.client
    tenant = await make_tenant(service, name)
    admin = bearer(tenant.admin)
    base = f"/v1/tenants/{name}"
    tenant_id = (await _ok(await client.get(base, headers=admin), 200))["id"]
    token_ids = {
        role: (await _ok(await client.get("/v1/whoami", headers=bearer(token)), 200))["token_id"]
        for role, token in (
            ("tenant-admin", tenant.admin),
            ("auditor", tenant.auditor),
            ("ci-signer", tenant.ci_signer),
        )
    }

    # TPM: trust the test EK CA, pin an EK, enrol an AK, leave a second enrolment pending.
    anchor_id = ""
    for label, cert in (("test root", ek_ca().root), ("test issuer", ek_ca().issuer)):
        added = await _ok(
            await client.post(
                f"{base}/tpm/anchors",
                json={"kind": "ek-ca", "name": f"{name} {label}", "certificate": pem(cert)},
                headers=admin,
            )
        )
        anchor_id = anchor_id or added["id"]
    ak_private = ec_key("secp256r1", 100 + seed)
    tpm = SoftTpm(rsa_key(2048, 100 + seed), ak_private)
    pinned = SoftTpm(ec_key("secp256r1", 200 + seed), ec_key("secp256r1", 300 + seed))
    pinned_ek = (
        await _ok(
            await client.post(
                f"{base}/tpm/pinned-eks",
                json={"ek_public": pinned.ek_public, "description": f"{name} pinned"},
                headers=admin,
            )
        )
    )["sha256"]
    enrolment = {"ek_public": tpm.ek_public, "ak_public": tpm.ak_public, "ek_certificate": tpm.ek_certificate}
    started = await _ok(await client.post(f"{base}/tpm/enrolments", json=enrolment))
    await _ok(
        await client.post(
            f"{base}/tpm/enrolments/{started['enrolment_id']}/activate",
            json={"secret": tpm.activate(started)},
        )
    )
    pending = await _ok(
        await client.post(
            f"{base}/tpm/enrolments", json={"ek_public": pinned.ek_public, "ak_public": pinned.ak_public}
        )
    )
    loader = Loader(service, name, tpm, ak_private)

    # Reference values: a CI-signed bundle for the loader, and a set by hand.
    signer_key = ed25519.Ed25519PrivateKey.generate()
    signer_pem = (
        signer_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    )
    signer = f"{name}-ci"
    await _ok(
        await client.post(
            f"{base}/ci-signers", json={"name": signer, "public_key": signer_pem}, headers=admin
        )
    )
    reference_values = f"{name}-loader"
    bundle = {
        "v": 1,
        "tenant": name,
        "name": reference_values,
        "tee": "tpm",
        "values": {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [loader.pcr_hex]}},
    }
    await _ok(
        await client.post(
            f"{base}/reference-values/bundles",
            json={
                "signer": signer,
                "bundle": bundle,
                "signature": b64(signer_key.sign(canonical_bytes(bundle))),
            },
            headers=bearer(tenant.ci_signer),
        )
    )
    await _ok(
        await client.post(
            f"{base}/reference-values",
            json={
                "name": f"{name}-by-hand",
                "tee": "tpm",
                "values": {"version": 1, "expected": {"tpm.pcrs.sha256.7": ["00" * 32]}},
            },
            headers=admin,
        )
    )

    # A policy, active; a generated key and an imported one under it.
    policy = f"{name}-prod"
    document = {
        "version": 1,
        "tees": ["tpm"],
        "reference_values": [reference_values],
        "rules": [{"name": "fresh-boot", "expr": "claims['tpm.reset_count'] >= 0"}],
    }
    await _ok(
        await client.post(f"{base}/policies", json={"name": policy, "document": document}, headers=admin)
    )
    await _ok(await client.post(f"{base}/policies/{policy}/1/activate", headers=admin), 200)
    key, imported_key = f"{name}-weights", f"{name}-own"
    await _ok(await client.post(f"{base}/keys", json={"name": key, "policy": policy}, headers=admin))
    own = material if material is not None else bytes((seed + i) % 256 for i in range(32))
    await _ok(
        await client.post(
            f"{base}/keys", json={"name": imported_key, "policy": policy, "material": b64(own)}, headers=admin
        )
    )

    # The release log gets a granted release and a denied one; an attestation result; a spare challenge.
    granted = await _ok(await loader.release(imported_key), 200)
    other_jwk = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    challenge = await loader.challenge()
    denied = await _ok(
        await loader.release(
            key,
            challenge=challenge,
            evidence=loader.evidence(challenge["nonce"], jwk=other_jwk),  # bound to another key
        ),
        403,
    )
    attestation_token = await loader.attest()
    spare = await loader.challenge()
    return World(
        tenant=tenant,
        tenant_id=tenant_id,
        token_ids=token_ids,
        anchor_id=anchor_id,
        pinned_ek=pinned_ek,
        ak_name=tpm.ak.name().hex(),
        enrolment_id=pending["enrolment_id"],
        signer=signer,
        signer_key=signer_key,
        reference_values=reference_values,
        policy=policy,
        key=key,
        imported_key=imported_key,
        imported_material=own,
        challenge_id=spare["id"],
        loader=loader,
        attestation_token=attestation_token,
        granted=granted,
        denied=denied,
    )


def new_uuid() -> str:
    return str(uuid.uuid4())
