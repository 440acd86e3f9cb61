"""The loader's TPM collector and AK provisioning against a real TPM (swtpm), and its evidence against the
real keyserver: the AK is enrolled over HTTP by credential activation, the collected quote (with an event
log) releases a key, a quote bound to anything else is refused, and nothing stays loaded in the TPM.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as hs
from joserfc.jwk import ECKey
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR

from clients.loader.collectors import Collector
from clients.loader.collectors.errors import (
    BindingInvalid,
    CollectorConfigInvalid,
    EventLogUnreadable,
    TpmAkHandleOccupied,
    TpmAkInvalid,
    TpmEkMissing,
    TpmError,
    TpmQuoteInconsistent,
)
from clients.loader.collectors.tpm import (
    DEFAULT_AK_HANDLE,
    PcrSelection,
    TpmCollector,
    check_quote,
    extend_pcr,
)
from clients.loader.collectors.tpm_ak import activate_credential, enrolment_material, provision_ak
from keyserver.binding import binding, report_data_for
from keyserver.evidence.tpm import eventlog as el
from keyserver.evidence.tpm import structures as st
from keyserver.evidence.tpm.credential import make_credential
from keyserver.evidence.tpm.quote import AkPublic
from keyserver.jwe import unwrap_released
from tests.conftest import Service, bearer
from tests.fixtures.swtpm import EK_HANDLE_ECC_P384, SwtpmInstance, loaded_handles
from tests.test_tenancy import TenantFixture, make_tenant

pytestmark = pytest.mark.swtpm

PCR = 10
SELECTION = f"sha256:{PCR}"
# A second persistent handle, for the tests that need a key other than the loader's AK.
OTHER_HANDLE = 0x81010021
NOTHING_LOADED: dict[str, list[int]] = {"transient": [], "loaded_sessions": [], "saved_sessions": []}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The collector is under test, not the store: the embedded SQLite is enough here."""
    return f"sqlite+aiosqlite:///{tmp_path / 'keyserver.sqlite3'}"


def evict(ectx: ESAPI, handle: int) -> None:
    if int(handle) in _persistent(ectx):
        ectx.evict_control(ESYS_TR.OWNER, ectx.tr_from_tpmpublic(handle), handle)


def _persistent(ectx: ESAPI) -> list[int]:
    from tpm2_pytss.constants import TPM2_CAP

    _, data = ectx.get_capability(TPM2_CAP.HANDLES, 0x81000000, 64)
    handles = data.data.handles
    return [int(handles[i]) for i in range(handles.count)]


@pytest.fixture
def clean_handles(tpm_esapi: ESAPI) -> Iterator[ESAPI]:
    """The AK handles empty before and after the test (the swtpm is shared by the whole session)."""
    for handle in (DEFAULT_AK_HANDLE, OTHER_HANDLE):
        evict(tpm_esapi, handle)
    yield tpm_esapi
    for handle in (DEFAULT_AK_HANDLE, OTHER_HANDLE):
        evict(tpm_esapi, handle)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fresh_jwk() -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, dict(ECKey.import_key(private.public_key()).as_dict(private=False))


# --- provisioning ---------------------------------------------------------------------------------------


def test_provision_creates_once_then_reuses(swtpm: SwtpmInstance, clean_handles: ESAPI) -> None:
    first = provision_ak(swtpm.tcti)
    second = provision_ak(swtpm.tcti)
    assert (first.created, second.created) == (True, False)
    assert (second.handle, second.public, second.name) == (first.handle, first.public, first.name)
    # The keyserver reads the same Name from the TPM2B_PUBLIC the loader will send for enrolment.
    assert AkPublic.from_tpm2b_public(first.public).name == first.name
    ak = st.parse_tpm2b_public(first.public)
    assert isinstance(ak.parameters, st.EccParms)
    assert (ak.parameters.scheme.scheme, ak.parameters.scheme.hash_alg) == (st.ALG_ECDSA, st.ALG_SHA256)
    assert st.ATTR_RESTRICTED & ak.object_attributes
    assert loaded_handles(clean_handles) == NOTHING_LOADED


def test_a_foreign_key_at_the_handle_is_refused_and_kept(swtpm: SwtpmInstance, clean_handles: ESAPI) -> None:
    # An AK of the right shape, but under the other EK (P-384): not the loader's AK under the RSA EK.
    foreign = provision_ak(swtpm.tcti, OTHER_HANDLE, ek_handle=EK_HANDLE_ECC_P384)
    with pytest.raises(TpmAkHandleOccupied, match="not a child of this EK"):
        provision_ak(swtpm.tcti, OTHER_HANDLE)
    with pytest.raises(TpmAkInvalid, match="not a child of this EK"):
        enrolment_material(swtpm.tcti, OTHER_HANDLE)
    # Never evicted on the caller's behalf.
    assert provision_ak(swtpm.tcti, OTHER_HANDLE, ek_handle=EK_HANDLE_ECC_P384).public == foreign.public
    assert loaded_handles(clean_handles) == NOTHING_LOADED


def test_ek_from_the_template_is_the_persistent_ek(swtpm: SwtpmInstance, clean_handles: ESAPI) -> None:
    provision_ak(swtpm.tcti)
    persisted = enrolment_material(swtpm.tcti)
    derived = enrolment_material(swtpm.tcti, ek_handle=None)
    assert derived == persisted
    assert persisted.ek_certificate is not None
    with pytest.raises(TpmEkMissing, match="0x81010099"):
        enrolment_material(swtpm.tcti, ek_handle=0x81010099)
    assert enrolment_material(swtpm.tcti, ek_certificate_index=0x01C0FFF0).ek_certificate is None
    assert loaded_handles(clean_handles) == NOTHING_LOADED


def test_activate_credential_only_for_this_ak(swtpm: SwtpmInstance, clean_handles: ESAPI) -> None:
    ak = provision_ak(swtpm.tcti)
    ek = st.parse_tpm2b_public(enrolment_material(swtpm.tcti).ek_public)
    secret = os.urandom(32)
    made = make_credential(ek, secret, ak.name)
    blob, encrypted = st.tpm2b(made.id_object), st.tpm2b(made.secret)
    assert activate_credential(swtpm.tcti, ak.handle, blob, encrypted) == secret
    other = make_credential(ek, secret, st.u16(st.ALG_SHA256) + hashlib.sha256(b"another key").digest())
    with pytest.raises(TpmError, match="ActivateCredential"):
        activate_credential(swtpm.tcti, ak.handle, st.tpm2b(other.id_object), st.tpm2b(other.secret))
    with pytest.raises(ValueError, match="not a TPM2B"):
        activate_credential(swtpm.tcti, ak.handle, blob[2:], encrypted)
    assert loaded_handles(clean_handles) == NOTHING_LOADED


# --- collecting -----------------------------------------------------------------------------------------


def test_collect_quotes_the_binding_and_leaves_nothing_loaded(
    swtpm: SwtpmInstance, clean_handles: ESAPI
) -> None:
    ak = provision_ak(swtpm.tcti)
    collector = TpmCollector(swtpm.tcti, ak.handle, "sha1:9+sha256:9,10")
    assert isinstance(collector, Collector)
    bound = binding(os.urandom(32), fresh_jwk()[1])
    evidence = collector.collect(bound)
    assert set(evidence) == {"tee", "ak_name", "quote", "signature", "pcrs"}
    assert evidence["ak_name"] == ak.name.hex()
    attest = st.parse_attest(base64.b64decode(evidence["quote"]))
    assert attest.extra_data == report_data_for("tpm", bound) == bound[:32]
    assert evidence["pcrs"].keys() == {"sha1", "sha256"}
    assert evidence["pcrs"]["sha256"].keys() == {"9", "10"}
    assert loaded_handles(clean_handles) == NOTHING_LOADED


def test_the_quote_consistency_check_sees_a_changed_pcr(swtpm: SwtpmInstance, clean_handles: ESAPI) -> None:
    """The loader checks its TPM's quote with tpm2-pytss's unmarshalling (not the keyserver's parser, which
    is not in its image): a changed PCR is a retry; another nonce, another selection, a quote cut short or
    with bytes after it are refused."""
    provision_ak(swtpm.tcti)
    bound = binding(os.urandom(32), fresh_jwk()[1])
    evidence = TpmCollector(swtpm.tcti).collect(bound)
    attest, signature = base64.b64decode(evidence["quote"]), base64.b64decode(evidence["signature"])
    qualifying, selection = bound[:32], PcrSelection.parse(SELECTION)
    pcrs = {"sha256": {PCR: bytes.fromhex(evidence["pcrs"]["sha256"][str(PCR)])}}
    assert check_quote(attest, signature, qualifying, selection, pcrs)
    extended = {"sha256": {PCR: hashlib.sha256(pcrs["sha256"][PCR] + bytes(32)).digest()}}
    assert not check_quote(attest, signature, qualifying, selection, extended)
    # What the keyserver's own parser reads from the same bytes agrees.
    parsed = st.parse_attest(attest)
    assert parsed.extra_data == qualifying
    assert isinstance(parsed.attested, st.QuoteInfo)
    with pytest.raises(TpmQuoteInconsistent, match="qualifying data"):
        check_quote(attest, signature, bytes(32), selection, pcrs)
    with pytest.raises(TpmQuoteInconsistent, match="not the selection"):
        check_quote(attest, signature, qualifying, PcrSelection.parse("sha256:9,10"), pcrs)
    with pytest.raises(TpmQuoteInconsistent, match="after its TPMS_ATTEST"):
        check_quote(attest + b"\x00", signature, qualifying, selection, pcrs)
    with pytest.raises(TpmQuoteInconsistent, match="does not parse"):
        check_quote(attest[:-5], signature, qualifying, selection, pcrs)
    with pytest.raises(TpmQuoteInconsistent, match="TPMT_SIGNATURE"):
        check_quote(attest, signature[:3], qualifying, selection, pcrs)


def test_collect_refuses_what_it_cannot_use(
    swtpm: SwtpmInstance, clean_handles: ESAPI, tmp_path: Path
) -> None:
    with pytest.raises(TpmAkInvalid, match="provision"):
        TpmCollector(swtpm.tcti).collect(bytes(64))
    provision_ak(swtpm.tcti)
    with pytest.raises(BindingInvalid, match="32 bytes"):
        TpmCollector(swtpm.tcti).collect(bytes(32))
    with pytest.raises(EventLogUnreadable, match=r"absent\.bin"):
        TpmCollector(swtpm.tcti, event_log=tmp_path / "absent.bin").collect(bytes(64))
    with pytest.raises(ValueError, match="not a persistent handle"):
        TpmCollector(swtpm.tcti, 0x80000001)
    assert loaded_handles(clean_handles) == NOTHING_LOADED


@pytest.mark.parametrize(
    "selection",
    ["", "sha256", "sha256:", "sha256:24", "sha256:1,1", "md5:1", "sha256:1+sha256:2", "sha256:1 "],
)
def test_malformed_pcr_selections(selection: str) -> None:
    with pytest.raises(CollectorConfigInvalid):
        PcrSelection.parse(selection)


@given(hs.text(alphabet="sha0123456789:,+ x", max_size=40))
def test_pcr_selection_parser_round_trips_or_refuses(text: str) -> None:
    try:
        parsed = PcrSelection.parse(text)
    except CollectorConfigInvalid:
        return
    assert PcrSelection.parse(str(parsed)) == parsed
    assert all(0 <= i < 24 for _, indices in parsed.banks for i in indices)


def test_extend_pcr_extends_the_sha256_bank(swtpm: SwtpmInstance, clean_handles: ESAPI) -> None:
    provision_ak(swtpm.tcti)
    collector = TpmCollector(swtpm.tcti, pcr_selection="sha256:11")
    before = bytes.fromhex(collector.collect(bytes(64))["pcrs"]["sha256"]["11"])
    digest = hashlib.sha256(b"a loader image").digest()
    extend_pcr(swtpm.tcti, 11, digest)
    after = bytes.fromhex(collector.collect(bytes(64))["pcrs"]["sha256"]["11"])
    assert after == hashlib.sha256(before + digest).digest()
    with pytest.raises(ValueError, match="32 bytes"):
        extend_pcr(swtpm.tcti, 11, digest[:20])
    with pytest.raises(ValueError, match=r"0\.\.23"):
        extend_pcr(swtpm.tcti, 24, digest)


# --- the real keyserver accepts it ----------------------------------------------------------------------


def loader_event_log(pcr: int, data: bytes) -> bytes:
    """A crypto-agile TCG event log (SHA-256 only): one EV_IPL event extending ``pcr`` by SHA-256(data)."""
    spec = (
        el.SPEC_ID_EVENT03 + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1) + struct.pack("<HH", st.ALG_SHA256, 32)
    )
    spec += b"\x00"
    header = struct.pack("<II20sI", 0, el.EV_NO_ACTION, bytes(20), len(spec)) + spec
    event = struct.pack("<III", pcr, el.EV_IPL, 1) + struct.pack("<H", st.ALG_SHA256)
    event += hashlib.sha256(data).digest() + struct.pack("<I", len(data)) + data
    return header + event


async def enrol(service: Service, tenant: TenantFixture, swtpm: SwtpmInstance, ak_handle: int) -> str:
    """Credential activation over HTTP with the collector module's own enrolment functions."""
    for path in swtpm.ek_ca_certs:
        added = await service.client.post(
            "/v1/tenants/acme/tpm/anchors",
            json={"kind": "ek-ca", "name": path.name, "certificate": path.read_text()},
            headers=bearer(tenant.admin),
        )
        assert added.status_code == 201, added.text
    material = enrolment_material(swtpm.tcti, ak_handle)
    started = await service.client.post("/v1/tenants/acme/tpm/enrolments", json=material.request_body())
    assert started.status_code == 201, started.text
    challenge = started.json()
    assert challenge["ak_name"] == material.ak_name.hex()
    secret = activate_credential(
        swtpm.tcti,
        ak_handle,
        base64.b64decode(challenge["credential_blob"]),
        base64.b64decode(challenge["encrypted_secret"]),
    )
    activated = await service.client.post(
        f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate", json={"secret": b64(secret)}
    )
    assert activated.status_code == 201, activated.text
    return str(challenge["ak_name"])


async def key_under_pcr_policy(service: Service, tenant: TenantFixture, pcr_value: bytes) -> None:
    admin = bearer(tenant.admin)
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            "/v1/tenants/acme/reference-values",
            {
                "name": "loader",
                "tee": "tpm",
                "values": {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [pcr_value.hex()]}},
            },
        ),
        (
            "/v1/tenants/acme/policies",
            {
                "name": "prod",
                "document": {
                    "version": 1,
                    "tees": ["tpm"],
                    "reference_values": ["loader"],
                    "rules": [{"name": "fresh-boot", "expr": "claims['tpm.reset_count'] >= 0"}],
                },
            },
        ),
        ("/v1/tenants/acme/policies/prod/1/activate", {}),
        ("/v1/tenants/acme/keys", {"name": "weights", "policy": "prod"}),
    ]
    for path, body in steps:
        response = await service.client.post(path, json=body, headers=admin)
        assert response.status_code in (200, 201), response.text


async def challenge(service: Service) -> tuple[str, bytes]:
    response = await service.client.post("/v1/tenants/acme/challenges")
    assert response.status_code == 201, response.text
    return response.json()["id"], base64.urlsafe_b64decode(response.json()["nonce"] + "==")


def token_claims(token: str) -> dict[str, Any]:
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    claims: dict[str, Any] = payload["submods"]["tpm"]["ear.keyserver.claims"]
    return claims


async def test_collected_evidence_is_accepted_by_the_keyserver(
    service: Service, swtpm: SwtpmInstance, clean_handles: ESAPI, tmp_path: Path
) -> None:
    # A fresh boot: PCR 10 at its reset value, then the boot chain measures the loader image into it
    # and logs the measurement.
    swtpm.restart()
    image = b"keyserver loader image, reviewed build 1"
    extend_pcr(swtpm.tcti, PCR, hashlib.sha256(image).digest())
    log_path = tmp_path / "binary_bios_measurements"
    log_path.write_bytes(loader_event_log(PCR, image))

    ak = provision_ak(swtpm.tcti)
    acme = await make_tenant(service, "acme")
    assert await enrol(service, acme, swtpm, ak.handle) == ak.name.hex()
    expected_pcr = hashlib.sha256(bytes(32) + hashlib.sha256(image).digest()).digest()
    await key_under_pcr_policy(service, acme, expected_pcr)
    collector = TpmCollector(swtpm.tcti, ak.handle, SELECTION, event_log=log_path)
    private, jwk = fresh_jwk()

    # Verified by the keyserver's own verifier, event log replayed against the quoted PCR.
    challenge_id, nonce = await challenge(service)
    attested = await service.client.post(
        "/v1/tenants/acme/attest",
        json={
            "challenge": challenge_id,
            "evidence": collector.collect(binding(nonce, jwk)),
            "ephemeral_key": jwk,
        },
    )
    assert attested.status_code == 200, attested.text
    claims = token_claims(attested.json()["token"])
    assert claims[f"tpm.pcrs.sha256.{PCR}"] == expected_pcr.hex()
    assert claims["tpm.ak_name"] == ak.name.hex()
    assert claims["report_data"] == binding(nonce, jwk)[:32].hex()
    assert claims["tpm.eventlog.digest_mismatches"] == []

    # And it releases the key, wrapped to the ephemeral key whose thumbprint is in the binding.
    challenge_id, nonce = await challenge(service)
    evidence = collector.collect(binding(nonce, jwk))
    released = await service.client.post(
        "/v1/tenants/acme/keys/weights/release",
        json={"challenge": challenge_id, "evidence": evidence, "ephemeral_key": jwk},
    )
    assert released.status_code == 200, released.text
    material, metadata = unwrap_released(released.json()["jwe"], private)
    assert (len(material), metadata.name) == (32, "weights")

    # Evidence bound to another key, or to another challenge, is refused.
    _, other_jwk = fresh_jwk()
    for bound_to in (binding(nonce, other_jwk), binding(os.urandom(32), jwk)):
        challenge_id, _ = await challenge(service)
        refused = await service.client.post(
            "/v1/tenants/acme/keys/weights/release",
            json={"challenge": challenge_id, "evidence": collector.collect(bound_to), "ephemeral_key": jwk},
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["reason"] == "tpm-nonce-mismatch"
    assert loaded_handles(clean_handles) == NOTHING_LOADED
