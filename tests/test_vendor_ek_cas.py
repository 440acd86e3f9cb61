"""The TPM manufacturers' EK CAs ship with the package, with their provenance, and one command pins them
as a tenant's ek-ca anchors (keyserver/evidence/tpm/ek_cas/PROVENANCE.md; docs/tpm.md)."""

from __future__ import annotations

from importlib import resources

import pytest

from clients.sdk import KeyserverClient
from keyserver.cli import main as cli_main
from keyserver.cli_tpm import pin_vendor_cas
from keyserver.evidence.tpm.vendor_cas import vendor_ek_cas, vendor_of
from tests.conftest import VECTORS, Service
from tests.test_tenancy import make_tenant

NUVOTON = {"NTC1", "NTC2", "NUVO_0100", "NUVO_1110", "NUVO_1111", "NUVO_2110", "NUVO_2111"}


def test_the_shipped_cas_are_the_vectors_with_their_provenance() -> None:
    shipped = {ca.name: ca.pem for ca in vendor_ek_cas()}
    vectors = {p.stem: p.read_bytes() for p in (VECTORS / "roots" / "tpm-vendor-ek-cas").glob("*.pem")}
    assert shipped == vectors
    assert len(shipped) == 45
    provenance = (resources.files("keyserver.evidence.tpm") / "ek_cas" / "PROVENANCE.md").read_text()
    assert "9b1f6e6a917f86c792bac680ea7d36312d5914a5" in provenance


def test_each_usable_ca_is_a_ca_and_the_unusable_say_why() -> None:
    cas = vendor_ek_cas()
    assert {ca.name for ca in cas if not ca.usable} == NUVOTON
    assert all("DER" in (ca.unusable or "") for ca in cas if ca.name in NUVOTON)
    assert {ca.vendor for ca in cas} == {
        "infineon", "stmicro", "nuvoton", "intel", "globalsign", "nationz", "alibaba",
    }  # fmt: skip
    assert {ca.name for ca in vendor_ek_cas(frozenset({"intel"}))} == {"INTEL_I", "INTEL_RT"}
    with pytest.raises(ValueError, match="no vendor"):
        vendor_of("ACME_RT")


async def test_one_command_pins_them_and_a_second_run_adds_nothing(service: Service) -> None:
    acme = await make_tenant(service, "acme")
    async with KeyserverClient(http=service.client, token=acme.admin, tenant="acme") as admin:
        first = await pin_vendor_cas(admin, None)
        usable = sorted(ca.name for ca in vendor_ek_cas() if ca.usable)
        assert sorted(first["added"]) == usable
        assert set(first["skipped"]) == NUVOTON
        anchors = await admin.admin.list_anchors()
        assert len(anchors) == len(usable)
        assert {a.kind for a in anchors} == {"ek-ca"}
        again = await pin_vendor_cas(admin, None)
        assert (again["added"], sorted(again["already"])) == ([], usable)
        assert len(await admin.admin.list_anchors()) == len(usable)


def test_the_command_wants_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KEYSERVER_TOKEN", raising=False)
    assert cli_main(["tpm", "pin-vendor-cas", "--url", "http://127.0.0.1:9", "--tenant", "acme"]) == 2
    assert "KEYSERVER_TOKEN" in capsys.readouterr().err
