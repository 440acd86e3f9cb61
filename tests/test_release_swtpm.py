"""The release protocol end to end over HTTP with a real TPM (swtpm), on both databases.

A tenant enrols the swtpm's AK, publishes the loader's PCR as reference values (a CI-signed bundle),
activates a policy, creates a key; the "loader" asks for a challenge, binds it to its ephemeral key in
the quote, and gets the key as a JWE with a receipt whose inclusion proof verifies. Then every way to
get it wrong is denied with its reason, and every decision is in the log.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc.jwk import ECKey
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA
from tpm2_pytss.utils import NVReadEK

from audit import merkle
from audit.checkpoint import verify_checkpoint
from audit.entry import canonical_bytes
from keyserver.binding import binding, report_data_for
from keyserver.evidence.tpm import structures as st
from keyserver.jwe import unwrap_released
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, make_tenant
from tests.tpm.test_swtpm import EK_CERT_NV, EK_RSA, TpmAk, ek_auth, read_ek, read_pcrs, tpm_ak

pytestmark = pytest.mark.swtpm
PCR = 10
SELECTION = f"sha256:{PCR}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def extend(ectx: ESAPI, measurement: bytes) -> None:
    digest = TPMT_HA(hashAlg=st.ALG_SHA256, digest=TPMU_HA(sha256=hashlib.sha256(measurement).digest()))
    ectx.pcr_extend(ESYS_TR.PCR10, TPML_DIGEST_VALUES([digest]))


async def enrol(service: Service, tenant: TenantFixture, swtpm: Any, ectx: ESAPI, ak: TpmAk) -> None:
    for path in swtpm.ek_ca_certs:
        response = await service.client.post(
            "/v1/tenants/acme/tpm/anchors",
            json={"kind": "ek-ca", "name": path.name, "certificate": path.read_text()},
            headers=bearer(tenant.admin),
        )
        assert response.status_code == 201, response.text
    _, ek_public = read_ek(ectx, EK_RSA)
    started = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments",
        json={
            "ek_public": b64(st.marshal_tpm2b_public(ek_public)),
            "ak_public": b64(ak.public),
            "ek_certificate": b64(bytes(NVReadEK(ectx)(EK_CERT_NV[EK_RSA]))),
        },
    )
    challenge = started.json()
    ek, _ = read_ek(ectx, EK_RSA)
    with ek_auth(ectx, EK_RSA) as auth:
        secret = ectx.activate_credential(
            ak.handle,
            ek,
            TPM2B_ID_OBJECT(credential=base64.b64decode(challenge["credential_blob"])[2:]),
            TPM2B_ENCRYPTED_SECRET(secret=base64.b64decode(challenge["encrypted_secret"])[2:]),
            session1=ESYS_TR.PASSWORD,
            session2=auth,
        )
    activated = await service.client.post(
        f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate",
        json={"secret": b64(bytes(secret))},
    )
    assert activated.status_code == 201, activated.text


class Loader:
    """What runs in the confidential VM: an ephemeral key, a challenge, a bound quote."""

    def __init__(self, service: Service, ectx: ESAPI, ak: TpmAk) -> None:
        self.service, self.ectx, self.ak = service, ectx, ak
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = ECKey.import_key(self.private.public_key()).as_dict(private=False)

    async def challenge(self) -> dict[str, Any]:
        response = await self.service.client.post("/v1/tenants/acme/challenges")
        assert response.status_code == 201, response.text
        return dict(response.json())

    def evidence(self, nonce: bytes, jwk: dict[str, Any] | None = None) -> dict[str, Any]:
        qualifying = report_data_for("tpm", binding(nonce, jwk or self.jwk))
        attest, signature = self.ectx.quote(self.ak.handle, SELECTION, qualifying)
        pcrs = read_pcrs(self.ectx, SELECTION)
        return {
            "tee": "tpm",
            "ak_name": self.ak.verifier_ak().name.hex(),  # type: ignore[union-attr]
            "quote": b64(bytes(attest)),
            "signature": b64(bytes(signature.marshal())),
            "pcrs": {bank: {str(i): v.hex() for i, v in values.items()} for bank, values in pcrs.items()},
        }

    async def release(self, key: str = "weights", **overrides: Any) -> Any:
        challenge = overrides.pop("challenge", None) or await self.challenge()
        nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
        body = {
            "challenge": challenge["id"],
            "evidence": overrides.pop("evidence", None) or self.evidence(nonce),
            "ephemeral_key": overrides.pop("ephemeral_key", None) or self.jwk,
            **overrides,
        }
        return await self.service.client.post(f"/v1/tenants/acme/keys/{key}/release", json=body)


@contextmanager
def loader_ak(ectx: ESAPI) -> Iterator[TpmAk]:
    with tpm_ak(ectx, "ecc", EK_RSA) as ak:
        yield ak


async def setup_tenant(service: Service, swtpm: Any, ectx: ESAPI, ak: TpmAk) -> TenantFixture:
    acme = await make_tenant(service, "acme")
    admin = bearer(acme.admin)
    await enrol(service, acme, swtpm, ectx, ak)
    swtpm_pcr = read_pcrs(ectx, SELECTION)["sha256"][PCR].hex()
    # The build pipeline publishes what the reviewed loader measures to, signed.
    signer = ed25519.Ed25519PrivateKey.generate()
    pem = signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    assert (
        await service.client.post(
            "/v1/tenants/acme/ci-signers", json={"name": "ci", "public_key": pem}, headers=admin
        )
    ).status_code == 201
    bundle = {
        "v": 1,
        "tenant": "acme",
        "name": "loader",
        "tee": "tpm",
        "values": {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [swtpm_pcr]}},
    }
    published = await service.client.post(
        "/v1/tenants/acme/reference-values/bundles",
        json={"signer": "ci", "bundle": bundle, "signature": b64(signer.sign(canonical_bytes(bundle)))},
        headers=bearer(acme.ci_signer),
    )
    assert published.status_code == 201, published.text
    policy = {
        "version": 1,
        "tees": ["tpm"],
        "reference_values": ["loader"],
        "rules": [{"name": "fresh-boot", "expr": "claims['tpm.reset_count'] >= 0"}],
    }
    added = await service.client.post(
        "/v1/tenants/acme/policies", json={"name": "prod", "document": policy}, headers=admin
    )
    assert added.status_code == 201, added.text
    activated = await service.client.post("/v1/tenants/acme/policies/prod/1/activate", headers=admin)
    assert activated.status_code == 200, activated.text
    created = await service.client.post(
        "/v1/tenants/acme/keys", json={"name": "weights", "policy": "prod"}, headers=admin
    )
    assert created.status_code == 201, created.text
    return acme


async def log_entry(service: Service, tenant: TenantFixture, index: int) -> tuple[bytes, dict[str, Any]]:
    page = await service.client.get(
        "/v1/tenants/acme/log/entries",
        params={"start": index, "end": index + 1},
        headers=bearer(tenant.auditor),
    )
    item = page.json()["entries"][0]
    return base64.b64decode(item["data"]), item["entry"]


async def test_release_granted_and_every_wrong_way_denied(
    service: Service, swtpm: Any, tpm_esapi: ESAPI
) -> None:
    ectx = tpm_esapi
    extend(ectx, b"reviewed loader build 1")
    with loader_ak(ectx) as ak:
        acme = await setup_tenant(service, swtpm, ectx, ak)
        loader = Loader(service, ectx, ak)
        vkey = (await service.client.get("/v1/tenants/acme/log/key", headers=bearer(acme.auditor))).json()[
            "verifier_key"
        ]

        # Granted: the key, wrapped to the ephemeral key, with a receipt that verifies.
        granted = await loader.release()
        assert granted.status_code == 200, granted.text
        body = granted.json()
        material, metadata = unwrap_released(body["jwe"], loader.private)
        assert len(material) == 32
        assert (metadata.name, metadata.version, metadata.tenant) == ("weights", 1, "acme")
        receipt = body["receipt"]
        checkpoint = verify_checkpoint(receipt["checkpoint"], vkey)
        data, entry = await log_entry(service, acme, receipt["log_index"])
        assert base64.b64decode(receipt["entry"]) == data  # the receipt carries the logged entry itself
        merkle.verify_inclusion(
            merkle.leaf_hash(data),
            receipt["log_index"],
            receipt["tree_size"],
            [bytes.fromhex(h) for h in receipt["inclusion_proof"]],
            checkpoint.root_hash,
        )
        assert entry["decision"] == "granted"
        assert entry["key"] == {"name": "weights", "version": 1}
        assert entry["policy"]["name"] == "prod"
        assert entry["reference_values"] == [{"name": "loader", "version": 1}]
        # Only the holder of the ephemeral key can open it.
        with pytest.raises(Exception, match=r"(?i)decrypt|invalid|tag|key"):
            unwrap_released(body["jwe"], ec.generate_private_key(ec.SECP256R1()))
        # Another release of the same key gives the same key material.
        again = await loader.release()
        assert unwrap_released(again.json()["jwe"], loader.private)[0] == material

        async def denied(response: Any, reason: str) -> dict[str, Any]:
            assert response.status_code == 403, response.text
            problem = response.json()
            assert problem["reason"] == reason, problem
            _, logged = await log_entry(service, acme, problem["log_index"])
            assert (logged["decision"], logged["reason"]) == ("denied", reason)
            return dict(problem)

        # A replayed challenge.
        used = await loader.challenge()
        nonce = base64.urlsafe_b64decode(used["nonce"] + "==")
        assert (await loader.release(challenge=used, evidence=loader.evidence(nonce))).status_code == 200
        await denied(
            await loader.release(challenge=used, evidence=loader.evidence(nonce)), "challenge-replayed"
        )
        # Evidence bound to another challenge (an old quote replayed).
        fresh = await loader.challenge()
        await denied(
            await loader.release(challenge=fresh, evidence=loader.evidence(nonce)), "tpm-nonce-mismatch"
        )
        # Evidence bound to another ephemeral key: the quote names key A, the request asks for key B.
        other = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
        fresh = await loader.challenge()
        fresh_nonce = base64.urlsafe_b64decode(fresh["nonce"] + "==")
        await denied(
            await loader.release(challenge=fresh, evidence=loader.evidence(fresh_nonce), ephemeral_key=other),
            "tpm-nonce-mismatch",
        )
        # A private key sent as the ephemeral key is refused before anything else.
        private_jwk = ECKey.import_key(loader.private).as_dict(private=True)
        await denied(await loader.release(ephemeral_key=private_jwk), "ephemeral-key-invalid")
        # The loader measured something else: its PCR no longer matches the reference values.
        extend(ectx, b"a modified loader")
        await denied(await loader.release(), "reference-value-mismatch")
        # A disabled key.
        admin = bearer(acme.admin)
        await service.client.post(
            "/v1/tenants/acme/keys/weights/state", json={"state": "disabled"}, headers=admin
        )
        await denied(await loader.release(), "key-disabled")
        # An unknown key.
        await denied(await loader.release(key="nope"), "key-unknown")


async def test_dry_run_explains_each_check(service: Service, swtpm: Any, tpm_esapi: ESAPI) -> None:
    extend(tpm_esapi, b"reviewed loader build 1")
    with loader_ak(tpm_esapi) as ak:
        acme = await setup_tenant(service, swtpm, tpm_esapi, ak)
    claims = {"tee": "tpm", "debug": False, f"tpm.pcrs.sha256.{PCR}": "00" * 32, "tpm.reset_count": 0}
    response = await service.client.post(
        "/v1/tenants/acme/policies/prod/dry-run", json={"claims": claims}, headers=bearer(acme.auditor)
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["granted"] is False
    assert result["reason"] == "reference-value-mismatch"
    assert any(not r["passed"] for r in result["results"])
    assert any(r["passed"] for r in result["results"])


async def test_attestation_result_serves_several_releases(
    service: Service, swtpm: Any, tpm_esapi: ESAPI
) -> None:
    extend(tpm_esapi, b"reviewed loader build 1")
    with loader_ak(tpm_esapi) as ak:
        acme = await setup_tenant(service, swtpm, tpm_esapi, ak)
        loader = Loader(service, tpm_esapi, ak)
        challenge = await loader.challenge()
        nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
        attested = await service.client.post(
            "/v1/tenants/acme/attest",
            json={
                "challenge": challenge["id"],
                "evidence": loader.evidence(nonce),
                "ephemeral_key": loader.jwk,
            },
        )
        assert attested.status_code == 200, attested.text
    token = attested.json()["token"]
    jwks = (await service.client.get("/v1/tenants/acme/attest/jwks")).json()
    assert [k["kty"] for k in jwks["keys"]] == ["OKP"]
    # Two releases from one verification; the TPM is not asked again.
    materials = []
    for _ in range(2):
        response = await loader.release(evidence={"tee": "attestation-result", "token": token})
        assert response.status_code == 200, response.text
        materials.append(unwrap_released(response.json()["jwe"], loader.private)[0])
        _, entry = await log_entry(service, acme, response.json()["receipt"]["log_index"])
        assert (entry["decision"], entry["tee"]) == ("granted", "tpm")
    assert materials[0] == materials[1]
    # The token is bound to the loader's ephemeral key: another key cannot use it.
    other = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    stolen = await loader.release(evidence={"tee": "attestation-result", "token": token}, ephemeral_key=other)
    assert stolen.status_code == 403
    assert stolen.json()["reason"] == "attestation-result-key-mismatch"
    # A tampered token is refused.
    header, payload, signature = token.split(".")
    forged = ".".join([header, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"), signature])
    refused = await loader.release(evidence={"tee": "attestation-result", "token": forged})
    assert refused.status_code == 403


async def test_a_release_reads_its_reference_sets_ahead_once_it_knows_them(
    service: Service, swtpm: Any, tpm_esapi: ESAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release's first statement reads the sets its key's policy named last time
    (keyserver/release_reads.py): after the first release of a key, no release reads them on its own —
    and a policy that names other sets is read for as before."""
    from keyserver import appraisal

    asked: list[tuple[str, ...]] = []
    own_read = appraisal.reference_sets

    async def counted(session: Any, tenant_id: Any, names: tuple[str, ...]) -> Any:
        asked.append(names)
        return await own_read(session, tenant_id, names)

    monkeypatch.setattr(appraisal, "reference_sets", counted)
    extend(tpm_esapi, b"reviewed loader build 1")
    with loader_ak(tpm_esapi) as ak:
        acme = await setup_tenant(service, swtpm, tpm_esapi, ak)
        loader = Loader(service, tpm_esapi, ak)
        asked.clear()  # what the policy's activation read (its examples)
        for _ in range(3):
            assert (await loader.release()).status_code == 200
        assert asked == [("loader",)]  # the first release only
        # The key's policy now names no sets: read for once more, then known too.
        admin = bearer(acme.admin)
        document = {"version": 1, "tees": ["tpm"], "rules": [{"name": "any", "expr": "true"}]}
        added = await service.client.post(
            "/v1/tenants/acme/policies", json={"name": "prod", "document": document}, headers=admin
        )
        assert added.status_code in (200, 201), added.text
        version = added.json()["version"]
        activated = await service.client.post(
            f"/v1/tenants/acme/policies/prod/{version}/activate", headers=admin
        )
        assert activated.status_code == 200, activated.text
        asked.clear()
        for _ in range(2):
            released = await loader.release()
            assert released.status_code == 200, released.text
        _, entry = await log_entry(service, acme, released.json()["receipt"]["log_index"])
        assert entry["reference_values"] == []
        assert asked == [()]
