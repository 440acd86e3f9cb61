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


async def tpm_entries(service: Service, tenant: TenantFixture) -> list[dict[str, Any]]:
    """The tenant's log entries about TPM trust, in order."""
    entries = await logged(service, tenant.name, bearer(tenant.auditor))
    return [e for e in entries if str(e["kind"]).startswith("tpm-")]


async def pin(service: Service, tenant: TenantFixture, tpm: SoftTpm, description: str = "") -> str:
    spki = tpm.ek.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pinned = await service.client.post(
        f"/v1/tenants/{tenant.name}/tpm/pinned-eks",
        json={"ek_public": b64(spki), "description": description},
        headers=bearer(tenant.admin),
    )
    assert pinned.status_code == 201, pinned.text
    return str(pinned.json()["sha256"])


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


async def test_pinned_eks_are_listed_and_removed(service: Service, acme: TenantFixture) -> None:
    first = SoftTpm(ec_key("secp256r1", 13), ec_key("secp256r1", 14))
    second = SoftTpm(ec_key("secp256r1", 15), ec_key("secp256r1", 16))
    rack4, rack5 = await pin(service, acme, first, "rack 4"), await pin(service, acme, second, "rack 5")
    url = "/v1/tenants/acme/tpm/pinned-eks"
    listed = await service.client.get(url, headers=bearer(acme.auditor))
    assert listed.status_code == 200, listed.text
    assert [(p["sha256"], p["description"]) for p in listed.json()] == [(rack4, "rack 4"), (rack5, "rack 5")]
    assert all(p["created_at"] for p in listed.json())
    # Removing is the admin's; an auditor reads only.
    assert (await service.client.delete(f"{url}/{rack4}", headers=bearer(acme.auditor))).status_code == 403
    assert (await service.client.delete(f"{url}/{rack4}")).status_code == 401
    removed = await service.client.delete(f"{url}/{rack4}", headers=bearer(acme.admin))
    assert removed.status_code == 204, removed.text
    assert [p["sha256"] for p in (await service.client.get(url, headers=bearer(acme.admin))).json()] == [
        rack5
    ]
    # Gone, unknown, or another tenant's: the same 404.
    again = await service.client.delete(f"{url}/{rack4}", headers=bearer(acme.admin))
    assert again.status_code == 404
    assert again.json()["type"] == "urn:keyserver:problem:not-found"
    assert (await service.client.delete(f"{url}/{'0' * 64}", headers=bearer(acme.admin))).status_code == 404
    globex = await service.client.delete(
        f"/v1/tenants/globex/tpm/pinned-eks/{rack5}", headers=bearer(acme.admin)
    )
    assert globex.status_code == 404
    # The removed EK enrols nothing any more; the other still does.
    unpinned = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments", json={"ek_public": first.ek_public, "ak_public": first.ak_public}
    )
    assert unpinned.status_code == 403
    assert unpinned.json()["reason"] == "ek-untrusted"
    still = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments", json={"ek_public": second.ek_public, "ak_public": second.ak_public}
    )
    assert still.status_code == 201, still.text
    # Logged, with who did it; the failed removals are not.
    entries = await tpm_entries(service, acme)
    assert [e["kind"] for e in entries] == ["tpm-ek-pinned", "tpm-ek-pinned", "tpm-ek-unpinned"]
    assert entries[2]["ek_sha256"] == rack4
    assert entries[2]["description"] == "rack 4"
    assert entries[2]["principal"].startswith("token:")


async def test_removing_a_pin_refuses_its_enrolments_in_flight_and_keeps_its_aks(
    service: Service, acme: TenantFixture
) -> None:
    """The pin stops the EK enrolling; AKs it enrolled stay, as a removed anchor's do (docs/tpm.md)."""
    tpm = SoftTpm(ec_key("secp256r1", 13), ec_key("secp256r1", 14))
    fingerprint = await pin(service, acme, tpm, "rack 4")
    body = {"ek_public": tpm.ek_public, "ak_public": tpm.ak_public}
    enrolled = (await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)).json()
    url = f"/v1/tenants/acme/tpm/enrolments/{enrolled['enrolment_id']}/activate"
    assert (await service.client.post(url, json={"secret": tpm.activate(enrolled)})).status_code == 201
    # A second AK of the same TPM: begun under the pin, to be activated after its removal.
    later = SoftTpm(ec_key("secp256r1", 13), ec_key("secp256r1", 17))
    body = {"ek_public": later.ek_public, "ak_public": later.ak_public}
    pending = (await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)).json()
    removed = await service.client.delete(
        f"/v1/tenants/acme/tpm/pinned-eks/{fingerprint}", headers=bearer(acme.admin)
    )
    assert removed.status_code == 204
    url = f"/v1/tenants/acme/tpm/enrolments/{pending['enrolment_id']}/activate"
    refused = await service.client.post(url, json={"secret": later.activate(pending)})
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "ek-untrusted"
    # A wrong secret is still told only that it is wrong.
    wrong = await service.client.post(url, json={"secret": b64(bytes(32))})
    assert wrong.json()["reason"] == "credential-mismatch"
    aks = (await service.client.get("/v1/tenants/acme/tpm/aks", headers=bearer(acme.admin))).json()
    assert [(a["ak_name"], a["ek_sha256"], a["revoked_at"]) for a in aks] == [
        (tpm.ak.name().hex(), fingerprint, None)
    ]
    assert [e["kind"] for e in await tpm_entries(service, acme)] == [
        "tpm-ek-pinned",
        "tpm-ak-enrolled",
        "tpm-ek-unpinned",
    ]
    # Pinned again (within the enrolment's five minutes), the EK is trusted again, and so is its proof.
    await pin(service, acme, tpm, "rack 4, back")
    assert (await service.client.post(url, json={"secret": later.activate(pending)})).status_code == 201


async def test_removing_the_anchor_refuses_the_enrolments_begun_under_it(
    service: Service, acme: TenantFixture
) -> None:
    await trust_test_ek_ca(service, acme)
    tpm = SoftTpm(rsa_key(2048, 7), ec_key("secp256r1", 8))
    body = {"ek_public": tpm.ek_public, "ak_public": tpm.ak_public, "ek_certificate": tpm.ek_certificate}
    pending = (await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)).json()
    anchors = (await service.client.get("/v1/tenants/acme/tpm/anchors", headers=bearer(acme.admin))).json()
    for anchor in anchors:
        removed = await service.client.delete(
            f"/v1/tenants/acme/tpm/anchors/{anchor['id']}", headers=bearer(acme.admin)
        )
        assert removed.status_code == 204
    url = f"/v1/tenants/acme/tpm/enrolments/{pending['enrolment_id']}/activate"
    refused = await service.client.post(url, json={"secret": tpm.activate(pending)})
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "ek-untrusted"
    assert (await service.client.get("/v1/tenants/acme/tpm/aks", headers=bearer(acme.admin))).json() == []
    # The same certificate under the same CA, trusted again: activated.
    await trust_test_ek_ca(service, acme)
    assert (await service.client.post(url, json={"secret": tpm.activate(pending)})).status_code == 201


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
