"""KEYSERVER_PUBLIC_LOGS: the operator makes some tenants' release logs readable without a token (for
the explorer and outside auditors). Only those tenants', only the log's read routes; a token that is sent
is still checked; every other tenant's log still needs an auditor or admin token. Both databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyserver.config import Settings
from keyserver.errors import ConfigurationError
from tests.conftest import Service, bearer
from tests.test_tenancy import logged, make_tenant

READS = [
    ("/log/checkpoint", {}),
    ("/log/key", {}),
    ("/log/entries", {"start": 0, "end": 1}),
    ("/log/proofs/inclusion", {"index": 0, "tree_size": 1}),
]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, public_logs=frozenset({"acme", "ghost"})
    )


async def test_public_logs_are_read_without_a_token_and_only_they(service: Service) -> None:
    acme = await make_tenant(service, "acme")
    await make_tenant(service, "umbrella")
    # One entry in acme's log, so that entries and proofs have something to show.
    added = await service.client.put(
        "/v1/tenants/acme/release-limits/tenant",
        json={"max_releases": 10, "window_seconds": 60},
        headers=bearer(acme.admin),
    )
    assert added.status_code == 200, added.text
    for route, params in READS:
        public = await service.client.get(f"/v1/tenants/acme{route}", params=params)
        assert public.status_code == 200, (route, public.text)
        private = await service.client.get(f"/v1/tenants/umbrella{route}", params=params)
        assert private.status_code == 401, (route, private.text)
        # A name listed as public that is no tenant: not found.
        absent = await service.client.get(f"/v1/tenants/ghost{route}", params=params)
        assert absent.status_code == 404, route
        # A token that is sent is checked, public log or not.
        forged = await service.client.get(
            f"/v1/tenants/acme{route}", params=params, headers=bearer("ks1.x.y.z")
        )
        assert forged.status_code == 401, route
    assert (await logged(service, "acme", {}))[0]["kind"] == "release-limit-set"
    # Only the log is public: nothing else of acme's.
    for other in ("/keys", "/policies", "/release-limits", "/reference-values"):
        assert (await service.client.get(f"/v1/tenants/acme{other}")).status_code == 401, other


def test_the_setting_takes_tenant_names_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSERVER_PUBLIC_LOGS", "acme, umbrella")
    assert Settings.from_env().public_logs == {"acme", "umbrella"}
    monkeypatch.setenv("KEYSERVER_PUBLIC_LOGS", "acme,../etc")
    with pytest.raises(ConfigurationError, match="not a tenant name"):
        Settings.from_env()
    monkeypatch.delenv("KEYSERVER_PUBLIC_LOGS")
    assert Settings.from_env().public_logs == frozenset()
