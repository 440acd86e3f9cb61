"""The SDK (clients/sdk) against the real in-process keyserver, on SQLite and PostgreSQL.

Every SDK call is made at least once with the server answering for real. The loader's release runs end
to end without hardware: the TPM is played in software (tests.tpm.helpers: an EK, an AK that the
keyserver enrols by credential activation, quotes signed by it), so the keyserver verifies real TPM
structures and signatures. Only the malformed-server cases use httpx.MockTransport; the unreachable and
silent servers are real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc.jwk import ECKey

from audit import merkle
from audit.checkpoint import verify_checkpoint
from audit.entry import canonical_bytes
from clients.sdk import (
    Conflict,
    EvidenceRejected,
    Forbidden,
    InvalidArgument,
    InvalidRequest,
    KeyserverClient,
    KeyserverUnreachable,
    NotFound,
    ReleaseDenied,
    Unauthenticated,
    UnexpectedResponse,
    make_bundle,
    sign_bundle,
)
from keyserver import reference_values as rv
from keyserver.binding import binding, report_data_for
from keyserver.evidence.tpm import structures as st
from keyserver.jwe import unwrap_released
from tests.conftest import VECTORS, Service
from tests.test_tenancy import TenantFixture, make_tenant
from tests.tpm.helpers import (
    activate_credential,
    ec_key,
    ek_ca,
    ek_cert,
    make_attest,
    make_pcrs,
    sign,
    soft_ak,
    soft_ek,
)

PCR = 10
PCRS = make_pcrs({"sha256": [PCR]}, salt=b"reviewed loader build 1")
PCR_HEX = PCRS["sha256"][PCR].hex()
REFERENCE = {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [PCR_HEX]}}
POLICY = {
    "version": 1,
    "tees": ["tpm"],
    "reference_values": ["loader"],
    "rules": [{"name": "fresh-boot", "expr": "claims['tpm.reset_count'] >= 0"}],
}
# Well formed, never issued: the server must not know it.
UNKNOWN_TOKEN = "ks1.operator." + "0" * 32 + "." + "A" * 43


@dataclass
class Clients:
    operator: KeyserverClient
    admin: KeyserverClient  # acme's tenant-admin
    auditor: KeyserverClient
    ci: KeyserverClient
    loader: KeyserverClient  # no token
    acme: TenantFixture = field(repr=False)  # holds tokens
    globex: TenantFixture = field(repr=False)


@pytest.fixture
async def sdk(service: Service) -> AsyncIterator[Clients]:
    acme = await make_tenant(service, "acme")
    globex = await make_tenant(service, "globex")
    async with KeyserverClient(http=service.client, token=service.operator_token) as operator:
        yield Clients(
            operator=operator,
            admin=KeyserverClient(http=service.client, token=acme.admin, tenant="acme"),
            auditor=KeyserverClient(http=service.client, token=acme.auditor, tenant="acme"),
            ci=KeyserverClient(http=service.client, token=acme.ci_signer, tenant="acme"),
            loader=KeyserverClient(http=service.client, tenant="acme"),
            acme=acme,
            globex=globex,
        )


class SoftLoader:
    """A loader whose TPM is software: an EK, an AK enrolled through the SDK, quotes over one PCR."""

    def __init__(self, which: int) -> None:
        self.ek_private = ec_key("secp256r1", 100 + which)
        self.ek = soft_ek(self.ek_private)
        self.ak = soft_ak(ec_key("secp256r1", 200 + which))
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk: dict[str, Any] = dict(ECKey.import_key(self.private.public_key()).as_dict(private=False))

    @property
    def ek_spki(self) -> bytes:
        return self.ek.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    async def enrol(self, admin: KeyserverClient) -> str:
        pinned = await admin.admin.pin_ek(self.ek_spki, description="soft TPM")
        assert (pinned.sha256, pinned.description) == (hashlib.sha256(self.ek_spki).hexdigest(), "soft TPM")
        # The TPM's side holds no token.
        tpm_side = admin.with_token(None)
        challenge = await tpm_side.admin.start_enrolment(
            st.marshal_tpm2b_public(self.ek), st.marshal_tpm2b_public(self.ak.public)
        )
        assert challenge.ak_name == self.ak.public.name().hex()
        secret = activate_credential(
            self.ek_private,
            self.ek,
            challenge.credential_blob,
            challenge.encrypted_secret,
            self.ak.public.name(),
        )
        enrolled = await tpm_side.admin.activate_enrolment(challenge.enrolment_id, secret)
        assert (enrolled.ak_name, enrolled.method) == (challenge.ak_name, "credential-activation")
        return enrolled.ak_name

    def evidence(self, nonce: bytes) -> dict[str, Any]:
        qualifying = report_data_for("tpm", binding(nonce, self.jwk))
        attest = make_attest(PCRS, extra_data=qualifying, qualified_signer=self.ak.qualified_name)
        return {
            "tee": "tpm",
            "ak_name": self.ak.public.name().hex(),
            "quote": base64.b64encode(attest).decode(),
            "signature": base64.b64encode(
                sign(self.ak.private, attest, st.ALG_ECDSA, st.ALG_SHA256)
            ).decode(),
            "pcrs": {"sha256": {str(PCR): PCR_HEX}},
        }


async def set_up_release(sdk: Clients) -> SoftLoader:
    """Enrol the soft TPM, publish its PCR as a CI-signed bundle, activate a policy, create a key."""
    loader = SoftLoader(1)
    await loader.enrol(sdk.admin)
    signer = ed25519.Ed25519PrivateKey.generate()
    await sdk.admin.admin.register_signer("ci", signer.public_key())
    await sdk.ci.ci.publish("ci", make_bundle("acme", "loader", "tpm", REFERENCE), signer)
    await sdk.admin.admin.add_policy("prod", POLICY)
    await sdk.admin.admin.activate_policy("prod", 1)
    await sdk.admin.admin.create_key("weights", "prod")
    return loader


def assert_no_secret(error: BaseException, token: str) -> None:
    secret = token.rsplit(".", 1)[1]
    for text in (str(error), repr(error), str(error.args)):
        assert secret not in text


# --- operator ----------------------------------------------------------------------------------------


async def test_operator_creates_tenants_and_their_first_admin(service: Service, sdk: Clients) -> None:
    op = sdk.operator
    me = await op.whoami()
    assert (me.role, me.tenant) == ("operator", None)
    created = await op.operator.create_tenant("initech")
    assert created.name == "initech"
    with pytest.raises(Conflict) as taken:
        await op.operator.create_tenant("initech")
    assert (taken.value.status, taken.value.code) == (409, "conflict")
    assert taken.value.request_id
    assert [t.name for t in await op.operator.list_tenants()] == ["acme", "globex", "initech"]
    assert (await op.get_tenant("initech")).id == created.id

    issued = await op.operator.issue_tenant_admin_token(
        "initech", description="bootstrap", expires_in=timedelta(days=1)
    )
    assert issued.token not in repr(issued)
    assert (issued.info.role, issued.info.tenant, issued.info.description) == (
        "tenant-admin",
        "initech",
        "bootstrap",
    )
    assert issued.info.expires_at is not None
    initech = op.with_token(issued.token).for_tenant("initech")
    assert issued.token not in repr(initech)
    assert (await initech.whoami()).tenant == "initech"
    assert (await initech.get_tenant()).name == "initech"
    assert [t.id for t in await op.operator.list_tokens("initech")] == [issued.info.id]

    revoked = await op.operator.revoke_token("initech", issued.info.id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthenticated) as refused:
        await initech.whoami()
    assert refused.value.status == 401
    assert_no_secret(refused.value, issued.token)
    # A tenant admin is not an operator.
    with pytest.raises(Forbidden):
        await sdk.admin.operator.list_tenants()


# --- tenant admin --------------------------------------------------------------------------------------


async def test_admin_issues_lists_and_revokes_tokens(sdk: Clients) -> None:
    issued = await sdk.admin.admin.issue_token("auditor", description="audit", expires_in=timedelta(days=30))
    assert issued.info.role == "auditor"
    listed = {t.id: t.role for t in await sdk.admin.admin.list_tokens()}
    assert listed[issued.info.id] == "auditor"
    assert listed[sdk.acme.admin_id] == "tenant-admin"
    reader = sdk.admin.with_token(issued.token)
    assert (await reader.whoami()).role == "auditor"
    assert (await sdk.admin.admin.revoke_token(issued.info.id)).revoked_at is not None
    with pytest.raises(Unauthenticated) as refused:
        await reader.auditor.checkpoint()
    assert_no_secret(refused.value, issued.token)
    with pytest.raises(InvalidArgument):
        await sdk.admin.admin.issue_token("auditor", expires_in=timedelta(0))
    # The server's own validation comes back as a typed 400 listing the bad field.
    with pytest.raises(InvalidRequest) as invalid:
        await sdk.admin.admin.issue_token("operator")  # type: ignore[arg-type]
    assert invalid.value.code == "invalid-request"
    assert invalid.value.errors


async def test_tpm_trust_and_enrolment(sdk: Clients) -> None:
    admin = sdk.admin.admin
    ca = ek_ca()
    root = await admin.add_anchor("ek-ca", "test root", ca.root)
    issuer = await admin.add_anchor("ek-ca", "test issuer", ca.issuer.public_bytes(Encoding.PEM).decode())
    assert {a.name for a in await sdk.auditor.admin.list_anchors()} == {"test root", "test issuer"}
    await admin.delete_anchor(root.id)
    assert [a.id for a in await admin.list_anchors()] == [issuer.id]

    loader = SoftLoader(2)
    ak_name = await loader.enrol(sdk.admin)
    pinned = await sdk.auditor.admin.list_pinned_eks()
    assert [(p.sha256, p.description) for p in pinned] == [
        (hashlib.sha256(loader.ek_spki).hexdigest(), "soft TPM")
    ]
    await admin.unpin_ek(pinned[0].sha256)
    assert await admin.list_pinned_eks() == []
    with pytest.raises(NotFound):
        await admin.unpin_ek(pinned[0].sha256)
    # The AK it enrolled stays until revoked (docs/tpm.md).
    assert [a.ak_name for a in await sdk.auditor.admin.list_aks()] == [ak_name]
    assert (await admin.revoke_ak(ak_name)).revoked_at is not None

    # A real GCE vTPM AK, certified by Google's CA (tpm-quote/gce-cos85).
    vectors = VECTORS
    for name, path in (
        ("gce root", "roots/gce/tpm_ek_root_1.cer"),
        ("gce intermediate 2", "roots/gce/tpm_ek_intermediate_2.crt"),
    ):
        assert (await admin.add_anchor("ak-ca", name, (vectors / path).read_bytes())).kind == "ak-ca"
    tpmt = (vectors / "tpm-quote/gce-cos85/extracted/common/ak_pub.tpmt_public").read_bytes()
    certificate = (vectors / "tpm-quote/gce-cos85/extracted/common/ak_cert.der").read_bytes()
    certified = await sdk.loader.admin.enrol_certified(len(tpmt).to_bytes(2, "big") + tpmt, certificate)
    assert certified.method == "ak-certificate"

    # globex trusts no EK: the TPM is refused, with the reason.
    with pytest.raises(EvidenceRejected) as untrusted:
        await sdk.loader.for_tenant("globex").admin.start_enrolment(
            st.marshal_tpm2b_public(loader.ek),
            st.marshal_tpm2b_public(loader.ak.public),
            ek_certificate=ek_cert(loader.ek.public_key()).public_bytes(Encoding.DER),
        )
    assert (untrusted.value.status, untrusted.value.reason) == (403, "ek-untrusted")


@pytest.mark.parametrize("tenant", ["globex", "nosuch"])
async def test_another_tenant_is_not_found(sdk: Clients, tenant: str) -> None:
    """A token of acme naming globex gets exactly what a nonexistent tenant gets."""
    elsewhere = sdk.admin.for_tenant(tenant)
    with pytest.raises(NotFound) as missing:
        await elsewhere.admin.list_keys()
    assert (missing.value.status, missing.value.code) == (404, "not-found")
    with pytest.raises(NotFound):
        await elsewhere.admin.create_key("weights", "prod")


async def test_reference_values_signers_policies_and_keys(sdk: Clients) -> None:
    admin = sdk.admin.admin
    signers: dict[str, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey] = {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
    }
    for name, key in signers.items():
        pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        await admin.register_signer(name, pem if name == "p256" else key.public_key())
        published = await sdk.ci.ci.publish(
            name, make_bundle("acme", f"loader-{name}", "tpm", REFERENCE), key
        )
        assert (published.name, published.version, published.source) == (
            f"loader-{name}",
            1,
            f"ci-signer:{name}",
        )
    assert [s.name for s in await sdk.auditor.admin.list_signers()] == ["ed25519", "p256", "p384"]

    # A signature made elsewhere, published by the tenant admin.
    newer = make_bundle(
        "acme", "loader-ed25519", "tpm", {"version": 1, "expected": {"tpm.pcrs.sha256.11": ["ab" * 32]}}
    )
    second = await admin.publish_bundle("ed25519", newer, sign_bundle(newer, signers["ed25519"]))
    assert second.version == 2
    # A bundle signed for another tenant does not replay here.
    with pytest.raises(Forbidden):
        await sdk.ci.ci.publish(
            "ed25519", make_bundle("globex", "loader", "tpm", REFERENCE), signers["ed25519"]
        )
    assert (await admin.revoke_signer("p384")).revoked_at is not None
    with pytest.raises(Forbidden):
        await sdk.ci.ci.publish("p384", make_bundle("acme", "x", "tpm", REFERENCE), signers["p384"])

    manual = await admin.add_reference_values("loader", "tpm", REFERENCE)
    assert (manual.version, manual.values) == (1, REFERENCE)
    assert (await admin.revoke_reference_values("loader", 1)).revoked_at is not None
    widened = {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [PCR_HEX, "cd" * 32]}}
    assert (await admin.add_reference_values("loader", "tpm", widened)).version == 2
    sets = {(r.name, r.version): r for r in await sdk.ci.ci.list_reference_values()}
    assert sets[("loader", 1)].revoked_at is not None
    assert sets[("loader", 2)].revoked_at is None
    assert len(await sdk.auditor.admin.list_reference_values()) == len(sets) == 6

    added = await admin.add_policy("prod", POLICY)
    assert (added.version, added.active) == (1, False)
    assert (await admin.activate_policy("prod", 1)).active is True
    assert [(p.name, p.version, p.active) for p in await sdk.auditor.admin.list_policies()] == [
        ("prod", 1, True)
    ]
    claims = {"tee": "tpm", "debug": False, f"tpm.pcrs.sha256.{PCR}": PCR_HEX, "tpm.reset_count": 0}
    granted = await sdk.auditor.admin.dry_run("prod", claims)
    assert (granted.granted, granted.reason) == (True, None)
    assert granted.policy is not None
    assert granted.reference_values == [{"name": "loader", "version": 2}]
    denied = await admin.dry_run("prod", {**claims, f"tpm.pcrs.sha256.{PCR}": "00" * 32}, version=1)
    assert (denied.granted, denied.reason) == (False, "reference-value-mismatch")
    assert any(not r["passed"] for r in denied.results)

    generated = await admin.create_key("weights", "prod")
    assert (generated.versions, generated.state) == ([1], "enabled")
    imported = await admin.create_key("mine", "prod", material=bytes(range(32)))
    assert imported.live_versions == [1]
    assert (await admin.rotate_key("weights")).versions == [1, 2]
    assert (await admin.set_key_state("weights", "disabled")).state == "disabled"
    assert (await admin.set_key_state("weights", "destroyed")).live_versions == []
    with pytest.raises(Conflict):
        await admin.set_key_state("weights", "enabled")
    with pytest.raises(InvalidArgument):
        await admin.set_key_state("mine", "lost")  # type: ignore[arg-type]
    assert {k.name: k.state for k in await sdk.auditor.admin.list_keys()} == {
        "mine": "enabled",
        "weights": "destroyed",
    }
    # An auditor reads but does not change.
    with pytest.raises(Forbidden) as forbidden:
        await sdk.auditor.admin.create_key("other", "prod")
    assert forbidden.value.code == "forbidden"


# --- loader --------------------------------------------------------------------------------------------


async def test_release_attest_and_denials(sdk: Clients) -> None:
    loader = await set_up_release(sdk)
    log_key = await sdk.auditor.auditor.log_key()

    challenge = await sdk.loader.loader.challenge()
    assert len(challenge.nonce) == 32
    granted = await sdk.loader.loader.release(
        "weights", challenge.id, loader.evidence(challenge.nonce), loader.jwk, version=1
    )
    material, metadata = unwrap_released(granted.jwe, loader.private)
    assert len(material) == 32
    assert granted.kid == f"{metadata.name}/{metadata.version}" == "weights/1"
    receipt = granted.receipt
    checkpoint = verify_checkpoint(receipt.checkpoint, log_key.verifier_key)
    assert checkpoint.size == receipt.tree_size
    (logged,) = await sdk.auditor.auditor.entries(receipt.log_index, receipt.log_index + 1)
    assert receipt.entry == logged.data
    merkle.verify_inclusion(
        merkle.leaf_hash(logged.data),
        receipt.log_index,
        receipt.tree_size,
        receipt.inclusion_proof,
        checkpoint.root_hash,
    )
    assert (logged.entry["decision"], logged.entry["key"]) == ("granted", {"name": "weights", "version": 1})

    # One verification, exchanged for a token, serves a release without asking the TPM again.
    attested = await sdk.loader.loader.challenge()
    token = await sdk.loader.loader.attest(attested.id, loader.evidence(attested.nonce), loader.jwk)
    jwks = await sdk.loader.loader.jwks()
    assert [k["kty"] for k in jwks["keys"]] == ["OKP"]
    again = await sdk.loader.loader.release(
        "weights",
        (await sdk.loader.loader.challenge()).id,
        {"tee": "attestation-result", "token": token},
        loader.jwk,
    )
    assert unwrap_released(again.jwe, loader.private)[0] == material

    # A replayed challenge: denied, logged, and the denial's receipt verifies.
    with pytest.raises(ReleaseDenied) as replayed:
        await sdk.loader.loader.release("weights", challenge.id, loader.evidence(challenge.nonce), loader.jwk)
    denial = replayed.value
    assert (denial.status, denial.code, denial.reason) == (403, "release-denied", "challenge-replayed")
    assert denial.log_index == denial.receipt.log_index
    assert "challenge-replayed" in str(denial)
    assert verify_checkpoint(denial.receipt.checkpoint, log_key.verifier_key).size == denial.receipt.tree_size
    (denied_entry,) = await sdk.auditor.auditor.entries(denial.log_index, denial.log_index + 1)
    assert denial.receipt.entry == denied_entry.data
    assert (denied_entry.entry["decision"], denied_entry.entry["reason"]) == ("denied", "challenge-replayed")
    # An unknown key is a logged denial too.
    fresh = await sdk.loader.loader.challenge()
    with pytest.raises(ReleaseDenied) as unknown:
        await sdk.loader.loader.release("nope", fresh.id, loader.evidence(fresh.nonce), loader.jwk)
    assert unknown.value.reason == "key-unknown"

    # The SDK refuses to send a private key; the challenge is not spent, so it still serves a release.
    private_jwk = dict(ECKey.import_key(loader.private).as_dict(private=True))
    unspent = await sdk.loader.loader.challenge()
    with pytest.raises(InvalidArgument, match="private"):
        await sdk.loader.loader.release("weights", unspent.id, loader.evidence(unspent.nonce), private_jwk)
    await sdk.loader.loader.release("weights", unspent.id, loader.evidence(unspent.nonce), loader.jwk)

    # Evidence bound to another challenge is rejected by attest, with the verifier's reason.
    other = await sdk.loader.loader.challenge()
    with pytest.raises(EvidenceRejected) as rejected:
        await sdk.loader.loader.attest(other.id, loader.evidence(challenge.nonce), loader.jwk)
    assert rejected.value.reason == "tpm-nonce-mismatch"


# --- auditor -------------------------------------------------------------------------------------------


async def test_auditor_reads_entries_and_proofs(sdk: Clients) -> None:
    for name in ("a", "b", "c"):
        await sdk.admin.admin.create_key(name, "prod")
    auditor = sdk.auditor.auditor
    log_key = await auditor.log_key()
    assert log_key.verifier_key.startswith(log_key.origin + "+")
    assert log_key.public_key == base64.b64decode(log_key.verifier_key.split("+", 2)[2])[1:]
    assert len(log_key.public_key) == 32
    first = verify_checkpoint(await auditor.checkpoint(), log_key.verifier_key)
    tokens = first.size - 3  # the tenant's tokens' entries (token-issued), then the three keys'
    assert tokens > 0

    entries = await auditor.entries(0, first.size)
    assert [e.entry["kind"] for e in entries] == ["token-issued"] * tokens + ["key-created"] * 3
    assert await auditor.entries(0, first.size, page_size=2) == entries
    for index, logged in enumerate(entries):
        proof = await auditor.inclusion_proof(index, first.size)
        assert proof.leaf_hash == merkle.leaf_hash(logged.data)
        merkle.verify_inclusion(proof.leaf_hash, index, first.size, proof.audit_path, first.root_hash)

    await sdk.admin.admin.rotate_key("a")
    second = verify_checkpoint(await sdk.admin.auditor.checkpoint(), log_key.verifier_key)
    consistency = await auditor.consistency_proof(first.size, second.size)
    merkle.verify_consistency(first.size, second.size, first.root_hash, second.root_hash, consistency.proof)
    with pytest.raises(NotFound):
        await auditor.entries(0, second.size + 1)
    with pytest.raises(InvalidArgument):
        await auditor.entries(2, 2)


# --- credentials, names and the client itself ------------------------------------------------------


@pytest.mark.parametrize("token", [UNKNOWN_TOKEN, "ks1.not-a-token"])
async def test_bad_tokens_are_unauthenticated_and_never_echoed(service: Service, token: str) -> None:
    client = KeyserverClient(http=service.client, token=token, tenant="acme")
    with pytest.raises(Unauthenticated) as refused:
        await client.whoami()
    assert (refused.value.status, refused.value.code) == (401, "unauthenticated")
    assert token not in str(refused.value)
    assert token not in repr(refused.value)
    assert token not in repr(client)


async def test_arguments_refused_before_any_request(service: Service) -> None:
    with pytest.raises(InvalidArgument) as newline:
        KeyserverClient(http=service.client, token=UNKNOWN_TOKEN + "\nX-Other: 1")
    assert UNKNOWN_TOKEN not in str(newline.value)
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(InvalidArgument):
            KeyserverClient(http=service.client, tenant=bad)
    client = KeyserverClient(http=service.client, token=UNKNOWN_TOKEN, tenant="acme")
    for call in (
        lambda: client.admin.rotate_key("a/b"),
        lambda: client.admin.rotate_key(""),
        lambda: client.admin.revoke_token("not-a-uuid"),
        lambda: client.admin.revoke_reference_values("loader", 0),
        lambda: client.loader.release("weights", "not-a-uuid", {}, {}),
        lambda: client.admin.add_reference_values("loader", "tpm", {"version": float("nan")}),
        lambda: client.loader.attest(str(uuid.uuid4()), {"tee": b"bytes are not JSON"}, {"kty": "EC"}),
        lambda: client.with_token(None).admin.list_keys(),
        lambda: KeyserverClient(http=service.client, token=UNKNOWN_TOKEN).admin.list_keys(),
    ):
        with pytest.raises(InvalidArgument):
            await call()
    for url in ("ftp://example.org", "not a url", "https://user:pw@example.org"):
        with pytest.raises(InvalidArgument):
            KeyserverClient(url)
    with pytest.raises(InvalidArgument):
        KeyserverClient()


async def test_names_are_quoted_as_one_path_segment(sdk: Clients) -> None:
    # "a b?c#d" would be a query and a fragment unquoted; quoted, it is one (unknown) key name.
    with pytest.raises(NotFound) as missing:
        await sdk.admin.admin.rotate_key("a b?c#d")
    assert "a b?c#d" in missing.value.detail


async def test_a_borrowed_http_client_is_left_open(service: Service) -> None:
    async with KeyserverClient(http=service.client, token=service.operator_token) as borrowed:
        assert await borrowed.operator.list_tenants() == []
    assert not service.client.is_closed
    assert (await service.client.get("/healthz")).status_code == 200
    async with KeyserverClient("http://127.0.0.1:9", timeout=1.0) as owned:
        pool = owned.http
    assert pool.is_closed


def sign_verifies(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
    bundle = make_bundle("acme", "loader", "tpm", REFERENCE)
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    rv.verify_bundle_signature(rv.load_signer_key(der), canonical_bytes(bundle), sign_bundle(bundle, key))


@pytest.mark.parametrize(
    "make_key",
    [
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
    ],
    ids=["ed25519", "p256", "p384"],
)
def test_sign_bundle_matches_the_servers_check(
    make_key: Callable[[], ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey],
) -> None:
    sign_verifies(make_key())


def test_sign_bundle_refuses_what_the_server_would() -> None:
    bundle = make_bundle("acme", "loader", "tpm", REFERENCE)
    with pytest.raises(InvalidArgument):
        sign_bundle(bundle, ec.generate_private_key(ec.SECP521R1()))
    with pytest.raises(InvalidArgument):
        sign_bundle({**bundle, "extra": 1}, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(InvalidArgument):
        sign_bundle(make_bundle("acme", "loader", "tpm", {"x": 1.5}), ed25519.Ed25519PrivateKey.generate())


# --- servers that do not answer as the API documents -------------------------------------------------


async def test_unreachable_keyserver() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused.
    async with KeyserverClient(f"http://127.0.0.1:{port}", token=UNKNOWN_TOKEN, tenant="acme") as client:
        with pytest.raises(KeyserverUnreachable) as unreachable:
            await client.whoami()
    assert not unreachable.value.timed_out
    assert_no_secret(unreachable.value, UNKNOWN_TOKEN)
    assert unreachable.value.__cause__ is None


async def test_silent_keyserver_times_out() -> None:
    connected = asyncio.Event()

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with KeyserverClient(f"http://127.0.0.1:{port}", timeout=0.2) as client:
            with pytest.raises(KeyserverUnreachable) as silent:
                await client.for_tenant("acme").loader.challenge()
        assert silent.value.timed_out
        assert connected.is_set()
    finally:
        server.close()
        await server.wait_closed()


def mock_client(response: httpx.Response) -> KeyserverClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda _request: response), base_url="http://ks")
    return KeyserverClient(http=http, token=UNKNOWN_TOKEN, tenant="acme")


def problem(status: int, **members: Any) -> httpx.Response:
    body = {"type": "urn:keyserver:problem:x", "title": "T", "status": status, "detail": "d", **members}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


RECEIPT = {"log_index": 1, "tree_size": 2, "checkpoint": "c", "inclusion_proof": ["00" * 32]}
ENTRY = b'{"kind":"x"}'


@pytest.mark.parametrize(
    ("response", "call", "says"),
    [
        (httpx.Response(200, html="<h1>hi</h1>"), "whoami", "content type 'text/html'"),
        (httpx.Response(200, json={"role": "auditor", "tenant": None}), "whoami", "'token_id' is missing"),
        (
            httpx.Response(200, json={"token_id": 1, "role": "r", "tenant": None}),
            "whoami",
            "should be a string",
        ),
        (
            httpx.Response(
                200,
                content=b'{"token_id":"a","token_id":"b","role":"r","tenant":null}',
                headers={"content-type": "application/json"},
            ),
            "whoami",
            "duplicate member",
        ),
        (httpx.Response(200, json=[1]), "whoami", "expected a JSON object"),
        (httpx.Response(502, html="<h1>Bad gateway</h1>"), "whoami", "not a problem document"),
        (httpx.Response(302, headers={"location": "http://elsewhere/"}), "whoami", "302"),
        (
            httpx.Response(404, content=b"{", headers={"content-type": "application/problem+json"}),
            "whoami",
            "not JSON",
        ),
        (problem(404, title=None), "whoami", "'title' should be a string"),
        (
            problem(403, type="urn:keyserver:problem:release-denied", reason="x", log_index=1),
            "release",
            "'receipt' is missing",
        ),
        (
            problem(
                403, type="urn:keyserver:problem:release-denied", reason="x", log_index=2, receipt=RECEIPT
            ),
            "release",
            "log_index and receipt.log_index differ",
        ),
        (
            httpx.Response(201, json={"id": "i", "nonce": "AAAA", "expires_at": "2030-01-01T00:00:00Z"}),
            "challenge",
            "not 32",
        ),
        (
            httpx.Response(
                201, json={"id": "i", "nonce": "A" * 43 + "!", "expires_at": "2030-01-01T00:00:00Z"}
            ),
            "challenge",
            "base64url",
        ),
        (
            httpx.Response(
                200,
                json={
                    "start": 0,
                    "end": 1,
                    "entries": [
                        {"index": 0, "data": base64.b64encode(ENTRY).decode(), "entry": {"kind": "y"}}
                    ],
                },
            ),
            "entries",
            "does not match its canonical bytes",
        ),
        (
            httpx.Response(
                200,
                json={
                    "start": 0,
                    "end": 1,
                    "entries": [
                        {"index": 5, "data": base64.b64encode(ENTRY).decode(), "entry": {"kind": "x"}}
                    ],
                },
            ),
            "entries",
            "got indices",
        ),
        (httpx.Response(200, json={"token": "t"}), "checkpoint", "expected text/plain"),
        (httpx.Response(200, json={"origin": "o"}), "jwks", "'keys' is missing"),
        (
            httpx.Response(
                200, json={"origin": "o", "verifier_key": "o+00000000+AQ==", "public_key": "AQ=="}
            ),
            "log_key",
            "not a note verifier key",
        ),
    ],
)
async def test_unexpected_responses_fail_closed(response: httpx.Response, call: str, says: str) -> None:
    client = mock_client(response)
    calls = {
        "whoami": client.whoami,
        "release": lambda: client.loader.release(
            "weights", "6f1c4b8e-0000-4000-8000-000000000000", {"tee": "tpm"}, {"kty": "EC"}
        ),
        "challenge": client.loader.challenge,
        "entries": lambda: client.auditor.entries(0, 1),
        "checkpoint": client.auditor.checkpoint,
        "jwks": client.loader.jwks,
        "log_key": client.auditor.log_key,
    }
    with pytest.raises(UnexpectedResponse) as unexpected:
        await calls[call]()
    assert says in str(unexpected.value)
    assert unexpected.value.status == response.status_code


async def test_a_token_echoed_by_a_server_is_redacted() -> None:
    client = mock_client(problem(401, detail=f"token {UNKNOWN_TOKEN} is unknown"))
    with pytest.raises(Unauthenticated) as refused:
        await client.whoami()
    assert_no_secret(refused.value, UNKNOWN_TOKEN)
    assert "<redacted>" in str(refused.value)


async def test_a_granted_receipt_may_lack_its_entry() -> None:
    """Older keyservers send no ``entry``; the SDK leaves it None for the loader to refuse or fetch."""
    body = {"jwe": "a.b.c.d.e", "kid": "weights/1", "receipt": RECEIPT}
    client = mock_client(httpx.Response(200, json=body))
    granted = await client.loader.release(
        "weights", "6f1c4b8e-0000-4000-8000-000000000000", {}, {"kty": "EC"}
    )
    assert granted.receipt.entry is None
    assert granted.receipt.inclusion_proof == [bytes(32)]
