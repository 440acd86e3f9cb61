"""A tenant's witness configuration over the admin API (both databases): strict validation of every
member, roles, the change logged; and the loader's own witness trust in its measured configuration."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import vkey_for
from audit.cosignature import cosigner_vkey
from clients.loader.config import ConfigError, LoaderConfig, config_document
from clients.loader.witnesses import witness_trust_document
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, make_tenant

PATH = "/v1/tenants/acme/witnesses"


def witness(name: str, url: str | None = None) -> dict[str, str]:
    key = Ed25519PrivateKey.generate().public_key()
    return {"name": name, "url": url or f"https://{name}", "vkey": cosigner_vkey(name, key)}


@pytest.fixture
async def acme(service: Service) -> TenantFixture:
    return await make_tenant(service, "acme")


async def test_set_show_and_remove_are_logged(service: Service, acme: TenantFixture) -> None:
    admin, auditor = bearer(acme.admin), bearer(acme.auditor)
    unset = await service.client.get(PATH, headers=admin)
    assert unset.json() == {"witnesses": [], "quorum": None, "failure_mode": None}
    listed = [witness("w1.example"), witness("w2.example", "https://w2.example:8443/")]
    body: dict[str, Any] = {"witnesses": listed, "quorum": 2}
    answer = await service.client.put(PATH, json=body, headers=admin)
    assert answer.status_code == 200, answer.text
    shown = (await service.client.get(PATH, headers=auditor)).json()
    assert shown["failure_mode"] == "refuse"  # the safe default
    assert shown["quorum"] == 2
    assert [w["url"] for w in shown["witnesses"]] == ["https://w1.example", "https://w2.example:8443"]
    # An auditor reads but does not set.
    assert (await service.client.put(PATH, json=body, headers=auditor)).status_code == 403
    removed = await service.client.delete(PATH, headers=admin)
    assert removed.status_code == 200, removed.text
    assert (await service.client.get(PATH, headers=admin)).json()["witnesses"] == []
    assert (await service.client.delete(PATH, headers=admin)).status_code == 404
    size = int((await service.client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text.split()[1])
    page = await service.client.get(
        "/v1/tenants/acme/log/entries", params={"start": 0, "end": size}, headers=auditor
    )
    kinds = [e["entry"]["kind"] for e in page.json()["entries"]]
    assert kinds[-2:] == ["witnesses-set", "witnesses-removed"]
    logged = page.json()["entries"][-2]["entry"]
    assert logged["quorum"] == 2
    assert logged["witnesses"][0]["vkey"] == listed[0]["vkey"]
    # Nothing cosigned yet.
    cosigned = await service.client.get("/v1/tenants/acme/log/checkpoint/cosigned", headers=auditor)
    assert cosigned.status_code == 404


def _bad_documents() -> list[tuple[str, Any]]:
    ok = witness("w1.example")
    log_key = vkey_for("w1.example", Ed25519PrivateKey.generate().public_key())  # a 0x01 note key
    return [
        ("ftp scheme", {"witnesses": [{**ok, "url": "ftp://w1.example"}], "quorum": 1}),
        ("no scheme", {"witnesses": [{**ok, "url": "w1.example"}], "quorum": 1}),
        ("credentials", {"witnesses": [{**ok, "url": "https://u:p@w1.example"}], "quorum": 1}),
        ("query", {"witnesses": [{**ok, "url": "https://w1.example/?x=1"}], "quorum": 1}),
        ("space", {"witnesses": [{**ok, "url": "https://w1.example/a b"}], "quorum": 1}),
        ("bad port", {"witnesses": [{**ok, "url": "https://w1.example:99999"}], "quorum": 1}),
        ("log key", {"witnesses": [{**ok, "vkey": log_key}], "quorum": 1}),
        ("garbage key", {"witnesses": [{**ok, "vkey": "w1.example+00000000+AAAA"}], "quorum": 1}),
        ("name mismatch", {"witnesses": [{**ok, "name": "w9.example"}], "quorum": 1}),
        ("duplicate names", {"witnesses": [ok, ok], "quorum": 1}),
        ("quorum zero", {"witnesses": [ok], "quorum": 0}),
        ("quorum above n", {"witnesses": [ok], "quorum": 2}),
        ("quorum bool", {"witnesses": [ok], "quorum": True}),
        ("quorum string", {"witnesses": [ok], "quorum": "1"}),
        ("no witnesses", {"witnesses": [], "quorum": 1}),
        ("unknown mode", {"witnesses": [ok], "quorum": 1, "failure_mode": "open"}),
        ("unknown member", {"witnesses": [ok], "quorum": 1, "trust": "me"}),
        ("extra witness member", {"witnesses": [{**ok, "weight": 2}], "quorum": 1}),
        ("no quorum", {"witnesses": [ok]}),
        ("too many", {"witnesses": [witness(f"w{i}.example") for i in range(17)], "quorum": 1}),
    ]


@pytest.mark.parametrize(("why", "document"), _bad_documents(), ids=[b[0] for b in _bad_documents()])
async def test_bad_configurations_are_refused(
    service: Service, acme: TenantFixture, why: str, document: Any
) -> None:
    answer = await service.client.put(PATH, json=document, headers=bearer(acme.admin))
    assert answer.status_code == 400, (why, answer.text)
    assert (await service.client.get(PATH, headers=bearer(acme.admin))).json()["witnesses"] == []


def test_the_same_key_under_two_names_is_refused() -> None:
    from keyserver.errors import InvalidRequest
    from keyserver.witness.tenant_config import parse_config

    key = Ed25519PrivateKey.generate().public_key()
    twice = [
        {"name": n, "url": f"https://{n}", "vkey": cosigner_vkey(n, key)} for n in ("a.example", "b.example")
    ]
    with pytest.raises(InvalidRequest, match="share a key"):
        parse_config({"witnesses": twice, "quorum": 2})


# --- the loader's own trust ----------------------------------------------------------------------------


def loader_document(witnesses: Any) -> dict[str, Any]:
    signer = Ed25519PrivateKey.generate().public_key()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = signer.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    log = vkey_for("keyserver.local/acme", Ed25519PrivateKey.generate().public_key())
    return config_document(
        tenant="acme",
        key="weights",
        log_verifier_key=log,
        log_origin="keyserver.local/acme",
        program_signers={"ci": pem},
        witnesses=witnesses,
    )


def test_loader_configuration_pins_witnesses() -> None:
    vkeys = [witness(f"w{i}.example")["vkey"] for i in range(3)]
    config = LoaderConfig.from_document(loader_document(witness_trust_document(vkeys, 2, 600)))
    assert config.log.cosignatures is not None
    assert config.log.cosignatures.quorum == 2
    assert [k.vkey for k in config.log.cosignatures.cosigners] == vkeys
    # The witnesses are part of what is measured: another set is another configuration digest.
    other = LoaderConfig.from_document(loader_document(witness_trust_document(vkeys[:2], 2, 600)))
    assert other.canonical != config.canonical
    assert LoaderConfig.from_document(loader_document(None)).log.cosignatures is None


@pytest.mark.parametrize(
    "member",
    [
        {"vkeys": [], "quorum": 1, "max_age_seconds": 60},
        {"vkeys": ["nope"], "quorum": 1, "max_age_seconds": 60},
        {"vkeys": ["A"], "quorum": 1},
        {"quorum": 1, "max_age_seconds": 60, "vkeys": None},
        "all of them",
    ],
)
def test_loader_refuses_bad_witness_trust(member: Any) -> None:
    document = {**loader_document(None), "witnesses": member}
    with pytest.raises(ConfigError):
        LoaderConfig.from_document(document)


@pytest.mark.parametrize(("quorum", "max_age"), [(0, 60), (3, 60), (True, 60), (1, 0), (1, -5), (1, 10**9)])
def test_loader_refuses_bad_quorum_or_age(quorum: Any, max_age: Any) -> None:
    vkeys = [witness(f"w{i}.example")["vkey"] for i in range(2)]
    with pytest.raises(ConfigError):
        LoaderConfig.from_document(loader_document(witness_trust_document(vkeys, quorum, max_age)))


def test_loader_refuses_a_log_key_as_a_witness_key_and_duplicates() -> None:
    log_key = vkey_for("w.example", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ConfigError, match="0x04"):
        LoaderConfig.from_document(loader_document(witness_trust_document([log_key], 1, 60)))
    one = witness("w.example")["vkey"]
    with pytest.raises(ConfigError, match="share a name"):
        LoaderConfig.from_document(loader_document(witness_trust_document([one, one], 1, 60)))
    key = Ed25519PrivateKey.generate().public_key()
    same = [cosigner_vkey("a.example", key), cosigner_vkey("b.example", key)]
    with pytest.raises(ConfigError, match="share a key"):
        LoaderConfig.from_document(loader_document(witness_trust_document(same, 1, 60)))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 20) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_members = st.fixed_dictionaries(
    {},
    optional={
        "witnesses": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["w1.example", "w2.example", "", "a b"]) | st.text(max_size=8),
                    "url": st.sampled_from(["https://w", "http://w:1/", "ftp://w", "https://u@w"]) | _json,
                    "vkey": st.just(witness("w1.example")["vkey"]) | _json,
                },
            )
            | _json,
            max_size=3,
        )
        | _json,
        "quorum": st.integers(-1, 4) | _json,
        "failure_mode": st.sampled_from(["refuse", "release-weak", "x"]) | _json,
    },
)


@given(document=_members | st.dictionaries(st.text(max_size=12), _json, max_size=4))
def test_any_document_is_a_configuration_or_invalid_request(document: dict[str, Any]) -> None:
    from keyserver.errors import InvalidRequest
    from keyserver.witness.tenant_config import parse_config

    try:
        config = parse_config(document)
    except InvalidRequest:
        return
    # Accepted: what is stored round-trips and keeps every rule.
    assert parse_config(config.document()) == config
    assert 1 <= config.quorum <= len(config.witnesses)
    assert all(w.url.startswith(("http://", "https://")) for w in config.witnesses)
