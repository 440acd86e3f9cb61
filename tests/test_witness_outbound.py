"""The operator's bound on where a tenant's witnesses may be (keyserver/witness/outbound.py): a tenant
admin must not be able to aim the keyserver at internal addresses (server-side request forgery)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from audit.cosignature import cosigner_vkey
from keyserver.config import Settings
from keyserver.errors import ConfigurationError
from keyserver.witness.outbound import OutboundRefused, WitnessOutbound
from tests.conftest import Service, bearer
from tests.test_tenancy import make_tenant

DEFAULT = WitnessOutbound()

INTERNAL = [
    "https://169.254.169.254/latest/meta-data",  # cloud metadata
    "https://127.0.0.1:8443",
    "https://127.1",  # another spelling of loopback: urlsplit keeps it, ip_address refuses it? see below
    "https://10.0.0.2",
    "https://192.168.1.1:8443/w",
    "https://172.16.5.4",
    "https://100.64.0.1",  # shared address space
    "https://0.0.0.0",
    "https://[::1]:8443",
    "https://[fd00::1]",
    "https://[fe80::1]",
    "https://[::ffff:127.0.0.1]",  # IPv4-mapped loopback
    "https://[::ffff:169.254.169.254]",
    "https://localhost:8443",
    "https://LOCALHOST.",
    "https://w.localhost",
    "http://witness.example.org",  # not https
    "ftp://witness.example.org",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_default_refuses_internal_and_plain_http(url: str) -> None:
    if url == "https://127.1":
        # Not an address literal to ipaddress, so a name: refused when it resolves (to 127.0.0.1).
        DEFAULT.check_url(url)
        return
    with pytest.raises(OutboundRefused):
        DEFAULT.check_url(url)


@pytest.mark.parametrize(
    "url", ["https://witness.example.org/", "https://8.8.8.8:443", "https://[2001:4860::8888]"]
)
def test_default_allows_public_https(url: str) -> None:
    DEFAULT.check_url(url)


@pytest.mark.parametrize("url", ["https://localhost.localdomain", "https://vm", "https://127.1"])
async def test_default_refuses_names_that_resolve_internally(url: str) -> None:
    with pytest.raises(OutboundRefused, match="resolve"):
        await DEFAULT.check_resolved(url)


async def test_default_refuses_names_that_do_not_resolve() -> None:
    with pytest.raises(OutboundRefused, match="does not resolve"):
        await DEFAULT.check_resolved("https://no-such-host.invalid")


async def test_prefixes_are_exclusive_and_allow_what_the_operator_names() -> None:
    outbound = WitnessOutbound.parse("http://127.0.0.1:, https://witness.example.org/")
    outbound.check_url("http://127.0.0.1:9000")
    await outbound.check_resolved("http://127.0.0.1:9000/w")  # no resolution: the operator vouches
    outbound.check_url("https://witness.example.org/a")
    for url in ("https://witness.example.org.evil.example/", "https://8.8.8.8", "http://127.0.0.2:1"):
        with pytest.raises(OutboundRefused, match="KEYSERVER_WITNESS_URL_PREFIXES"):
            outbound.check_url(url)


@pytest.mark.parametrize("value", ["ftp://x", "127.0.0.1", "https://", "file:///etc"])
def test_bad_prefixes_stop_the_start(value: str) -> None:
    with pytest.raises(ConfigurationError):
        WitnessOutbound.parse(value)


def test_settings_read_the_prefixes() -> None:
    settings = Settings.from_env({"KEYSERVER_WITNESS_URL_PREFIXES": "http://127.0.0.1:"})
    assert settings.witness_outbound.prefixes == ("http://127.0.0.1:",)
    assert Settings.from_env({}).witness_outbound == WitnessOutbound()


@given(st.text(max_size=80))
def test_any_url_is_allowed_or_refused_with_a_reason(url: str) -> None:
    refusal: OutboundRefused | None = None
    try:
        DEFAULT.check_url(url)
    except OutboundRefused as exc:
        refusal = exc
    assert refusal is None or str(refusal)
    if refusal is None:
        assert urlsplit(url).scheme == "https"


def _witness(url: str) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate().public_key()
    return {"name": "w.example", "url": url, "vkey": cosigner_vkey("w.example", key)}


@pytest.mark.parametrize(
    "url", ["https://169.254.169.254", "http://witness.example.org", "https://localhost"]
)
async def test_the_admin_api_refuses_internal_witness_urls(service: Service, url: str) -> None:
    acme = await make_tenant(service, "acme")
    answer = await service.client.put(
        "/v1/tenants/acme/witnesses",
        json={"witnesses": [_witness(url)], "quorum": 1},
        headers=bearer(acme.admin),
    )
    assert answer.status_code == 400, answer.text
    assert "witness w.example" in answer.json()["detail"]
    shown = await service.client.get("/v1/tenants/acme/witnesses", headers=bearer(acme.admin))
    assert shown.json()["witnesses"] == []  # nothing stored
