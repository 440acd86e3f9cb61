"""AK enrolment over HTTP, per tenant: EK trust, credential activation, AK certificates, revocation.

The TPM side is done in software here (tests.tpm.helpers models TPM2_ActivateCredential), on both
databases; tests/test_tpm_enrolment_swtpm.py does the same with a real swtpm.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyserver.evidence.tpm import structures as st
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, logged, make_tenant
from tests.tpm.helpers import (
    PrivateKey,
    activate_credential,
    ec_key,
    ek_ca,
    ek_cert,
    rsa_key,
    soft_ak,
    soft_ek,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pem(cert: Any) -> str:
    return str(cert.public_bytes(Encoding.PEM).decode())


class SoftTpm:
    """An EK and an AK held in software, answering credential challenges as a TPM would."""

    def __init__(self, ek_private: PrivateKey, ak_private: PrivateKey) -> None:
        self.ek_private = ek_private
        self.ek = soft_ek(ek_private)
        self.ak = soft_ak(ak_private).public

    @property
    def ek_public(self) -> str:
        return b64(st.marshal_tpm2b_public(self.ek))

    @property
    def ak_public(self) -> str:
        return b64(st.marshal_tpm2b_public(self.ak))

    @property
    def ek_certificate(self) -> str:
        return b64(ek_cert(self.ek.public_key()).public_bytes(Encoding.DER))

    def activate(self, challenge: dict[str, Any]) -> str:
        secret = activate_credential(
            self.ek_private,
            self.ek,
            base64.b64decode(challenge["credential_blob"]),
            base64.b64decode(challenge["encrypted_secret"]),
            self.ak.name(),
        )
        return b64(secret)


@pytest.fixture
async def acme(service: Service) -> TenantFixture:
    tenant = await make_tenant(service, "acme")
    await make_tenant(service, "globex")
    return tenant


async def trust_test_ek_ca(service: Service, tenant: TenantFixture) -> None:
    for name, cert in (("test root", ek_ca().root), ("test issuer", ek_ca().issuer)):
        response = await service.client.post(
            "/v1/tenants/acme/tpm/anchors",
            json={"kind": "ek-ca", "name": name, "certificate": pem(cert)},
            headers=bearer(tenant.admin),
        )
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("ek", ["rsa", "ecc"])
async def test_enrolment_with_an_ek_certificate(service: Service, acme: TenantFixture, ek: str) -> None:
    await trust_test_ek_ca(service, acme)
    tpm = SoftTpm(rsa_key(2048, 7) if ek == "rsa" else ec_key("secp256r1", 7), ec_key("secp256r1", 8))
    started = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments",
        json={"ek_public": tpm.ek_public, "ak_public": tpm.ak_public, "ek_certificate": tpm.ek_certificate},
    )
    assert started.status_code == 201, started.text
    challenge = started.json()
    assert challenge["ak_name"] == tpm.ak.name().hex()
    activated = await service.client.post(
        f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate",
        json={"secret": tpm.activate(challenge)},
    )
    assert activated.status_code == 201, activated.text
    assert activated.json()["method"] == "credential-activation"
    aks = (await service.client.get("/v1/tenants/acme/tpm/aks", headers=bearer(acme.auditor))).json()
    assert [a["ak_name"] for a in aks] == [tpm.ak.name().hex()]
    # The enrolment is single-use.
    again = await service.client.post(
        f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate",
        json={"secret": tpm.activate(challenge)},
    )
    assert again.status_code == 409
    # Trust changes are in the release log.
    entries = await logged(service, "acme", bearer(acme.auditor))
    assert [e["kind"] for e in entries] == [
        "tpm-trust-anchor-added",
        "tpm-trust-anchor-added",
        "tpm-ak-enrolled",
    ]
    assert entries[2]["ak_name"] == tpm.ak.name().hex()


async def test_wrong_secret_or_another_tpm_is_refused(service: Service, acme: TenantFixture) -> None:
    await trust_test_ek_ca(service, acme)
    tpm = SoftTpm(rsa_key(2048, 7), ec_key("secp256r1", 9))
    challenge = (
        await service.client.post(
            "/v1/tenants/acme/tpm/enrolments",
            json={
                "ek_public": tpm.ek_public,
                "ak_public": tpm.ak_public,
                "ek_certificate": tpm.ek_certificate,
            },
        )
    ).json()
    url = f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate"
    wrong = await service.client.post(url, json={"secret": b64(bytes(32))})
    assert wrong.status_code == 403
    assert wrong.json()["reason"] == "credential-mismatch"
    # A TPM without this EK cannot even open the credential.
    impostor = SoftTpm(rsa_key(2048, 11), ec_key("secp256r1", 9))
    with pytest.raises(ValueError, match=r"integrity|Decryption"):
        impostor.activate(challenge)
    assert (await service.client.get("/v1/tenants/acme/tpm/aks", headers=bearer(acme.admin))).json() == []
    # The right secret still works (a wrong guess does not burn the enrolment; the secret is 256 bits).
    assert (await service.client.post(url, json={"secret": tpm.activate(challenge)})).status_code == 201


async def test_untrusted_eks_are_refused(service: Service, acme: TenantFixture) -> None:
    tpm = SoftTpm(rsa_key(2048, 7), ec_key("secp256r1", 8))
    body = {"ek_public": tpm.ek_public, "ak_public": tpm.ak_public, "ek_certificate": tpm.ek_certificate}
    no_anchor = await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)
    assert no_anchor.status_code == 403
    assert no_anchor.json()["reason"] == "ek-untrusted"
    await trust_test_ek_ca(service, acme)
    # A certificate for another EK does not vouch for this one.
    other = SoftTpm(rsa_key(2048, 12), ec_key("secp256r1", 8))
    mismatch = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments", json={**body, "ek_certificate": other.ek_certificate}
    )
    assert mismatch.status_code == 403
    assert mismatch.json()["reason"] == "tpm-cert-key-mismatch"
    # Without a certificate the EK must be pinned.
    unpinned = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments", json={"ek_public": tpm.ek_public, "ak_public": tpm.ak_public}
    )
    assert unpinned.status_code == 403
    assert "pin" in unpinned.json()["detail"]


async def test_pinned_ek_enrols_without_a_certificate(service: Service, acme: TenantFixture) -> None:
    tpm = SoftTpm(ec_key("secp256r1", 13), ec_key("secp256r1", 14))
    spki = tpm.ek.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pinned = await service.client.post(
        "/v1/tenants/acme/tpm/pinned-eks",
        json={"ek_public": b64(spki), "description": "rack 4"},
        headers=bearer(acme.admin),
    )
    assert pinned.status_code == 201, pinned.text
    challenge = (
        await service.client.post(
            "/v1/tenants/acme/tpm/enrolments", json={"ek_public": tpm.ek_public, "ak_public": tpm.ak_public}
        )
    ).json()
    activated = await service.client.post(
        f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate",
        json={"secret": tpm.activate(challenge)},
    )
    assert activated.status_code == 201


async def test_an_ak_that_is_not_a_restricted_signing_key_is_refused(
    service: Service, acme: TenantFixture
) -> None:
    await trust_test_ek_ca(service, acme)
    tpm = SoftTpm(rsa_key(2048, 7), ec_key("secp256r1", 8))
    loose = soft_ak(ec_key("secp256r1", 8), attributes=st.ATTR_SIGN_ENCRYPT | st.ATTR_USER_WITH_AUTH).public
    response = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments",
        json={
            "ek_public": tpm.ek_public,
            "ak_public": b64(st.marshal_tpm2b_public(loose)),
            "ek_certificate": tpm.ek_certificate,
        },
    )
    assert response.status_code == 403
    assert response.json()["reason"] == "tpm-ak-not-restricted"


async def test_enrolment_in_one_tenant_means_nothing_in_another(
    service: Service, acme: TenantFixture
) -> None:
    await trust_test_ek_ca(service, acme)
    tpm = SoftTpm(rsa_key(2048, 7), ec_key("secp256r1", 8))
    body = {"ek_public": tpm.ek_public, "ak_public": tpm.ak_public, "ek_certificate": tpm.ek_certificate}
    # globex trusts no EK CA: acme's anchors do not leak into it.
    assert (await service.client.post("/v1/tenants/globex/tpm/enrolments", json=body)).status_code == 403
    challenge = (await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)).json()
    cross = await service.client.post(
        f"/v1/tenants/globex/tpm/enrolments/{challenge['enrolment_id']}/activate",
        json={"secret": tpm.activate(challenge)},
    )
    assert cross.status_code == 404
    # acme's admin cannot manage globex's TPM settings.
    for method, path in (("GET", "/v1/tenants/globex/tpm/aks"), ("GET", "/v1/tenants/globex/tpm/anchors")):
        assert (await service.client.request(method, path, headers=bearer(acme.admin))).status_code == 404


async def test_revoked_ak_stays_revoked(service: Service, acme: TenantFixture) -> None:
    await trust_test_ek_ca(service, acme)
    tpm = SoftTpm(rsa_key(2048, 7), ec_key("secp256r1", 8))
    body = {"ek_public": tpm.ek_public, "ak_public": tpm.ak_public, "ek_certificate": tpm.ek_certificate}
    challenge = (await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)).json()
    url = f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate"
    assert (await service.client.post(url, json={"secret": tpm.activate(challenge)})).status_code == 201
    name = tpm.ak.name().hex()
    assert (
        await service.client.delete(f"/v1/tenants/acme/tpm/aks/{name}", headers=bearer(acme.auditor))
    ).status_code == 403
    revoked = await service.client.delete(f"/v1/tenants/acme/tpm/aks/{name}", headers=bearer(acme.admin))
    assert revoked.json()["revoked_at"] is not None
    challenge = (await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)).json()
    url = f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate"
    assert (await service.client.post(url, json={"secret": tpm.activate(challenge)})).status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"ek_public": "!!!", "ak_public": "AAAA"},
        {"ek_public": "AAAA", "ak_public": "AAAA"},
        {"ek_public": b64(b"\x00\x10" + bytes(16)), "ak_public": b64(b"\x00")},
        {"ek_public": "AAAA", "ak_public": "AAAA", "unexpected": 1},
        {"ak_public": "AAAA"},
    ],
)
async def test_malformed_enrolments_are_refused(
    service: Service, acme: TenantFixture, body: dict[str, Any]
) -> None:
    response = await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)
    assert response.status_code in (400, 403), response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_unknown_tenant_is_404(service: Service) -> None:
    response = await service.client.post(
        "/v1/tenants/nosuch/tpm/enrolments", json={"ek_public": "AA==", "ak_public": "AA=="}
    )
    assert response.status_code == 404


async def test_cloud_vtpm_ak_certificate(service: Service, acme: TenantFixture) -> None:
    """A real GCE vTPM AK, certified by Google's EK/AK CA (tpm-quote/gce-cos85)."""
    from tests.conftest import VECTORS

    gce = VECTORS
    for name, path in (
        ("gce root", "roots/gce/tpm_ek_root_1.cer"),
        ("gce intermediate 2", "roots/gce/tpm_ek_intermediate_2.crt"),
    ):
        added = await service.client.post(
            "/v1/tenants/acme/tpm/anchors",
            json={"kind": "ak-ca", "name": name, "certificate": b64((gce / path).read_bytes())},
            headers=bearer(acme.admin),
        )
        assert added.status_code == 201, added.text
    tpmt = (gce / "tpm-quote/gce-cos85/extracted/common/ak_pub.tpmt_public").read_bytes()
    ak_public = len(tpmt).to_bytes(2, "big") + tpmt
    certificate = (gce / "tpm-quote/gce-cos85/extracted/common/ak_cert.der").read_bytes()
    enrolled = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments/certified",
        json={"ak_public": b64(ak_public), "ak_certificate": b64(certificate)},
    )
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["method"] == "ak-certificate"
    # The certificate of another key does not certify this AK.
    other = soft_ak(ec_key("secp256r1", 8)).public
    mismatch = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments/certified",
        json={"ak_public": b64(st.marshal_tpm2b_public(other)), "ak_certificate": b64(certificate)},
    )
    assert mismatch.status_code == 403
    assert mismatch.json()["reason"] == "tpm-cert-key-mismatch"
