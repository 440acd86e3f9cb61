"""Liveness, readiness, OpenAPI, metrics, request ids and problem responses."""

from __future__ import annotations

import pytest

from tests.conftest import Service, bearer
from tests.fixtures.postgres import PostgresServer

PROBLEM = "application/problem+json"


async def test_healthz_and_readyz(service: Service) -> None:
    assert (await service.client.get("/healthz")).json() == {"status": "ok"}
    ready = await service.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_openapi_is_served_and_lists_the_routes(service: Service) -> None:
    response = await service.client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/healthz", "/readyz", "/v1/tenants", "/v1/tenants/{tenant}/tokens", "/v1/whoami"):
        assert path in paths
    assert "BearerToken" in response.json()["components"]["securitySchemes"]


async def test_metrics_count_requests_by_route_template(service: Service) -> None:
    await service.client.get("/healthz")
    await service.client.get("/v1/tenants/some-tenant", headers=bearer(service.operator_token))
    text = (await service.client.get("/metrics")).text
    assert 'keyserver_requests_total{app_name="keyserver",method="GET",path="/healthz"' in text
    # Route templates, not raw paths: tenant names never become label values.
    assert "some-tenant" not in text


async def test_request_id_is_generated_echoed_and_sanitised(service: Service) -> None:
    generated = (await service.client.get("/healthz")).headers["x-request-id"]
    assert len(generated) == 32
    echoed = await service.client.get("/healthz", headers={"X-Request-Id": "abc-123.def_4"})
    assert echoed.headers["x-request-id"] == "abc-123.def_4"
    forged = await service.client.get("/healthz", headers={"X-Request-Id": 'x"\n{"level":"error"}'})
    assert forged.headers["x-request-id"] != 'x"\n{"level":"error"}'
    assert len(forged.headers["x-request-id"]) == 32


async def test_unknown_route_is_a_problem_document(service: Service) -> None:
    response = await service.client.get("/no/such/route")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "urn:keyserver:problem:not-found"
    assert body["status"] == 404
    assert body["request_id"] == response.headers["x-request-id"]


async def test_wrong_method_is_a_problem_document(service: Service) -> None:
    response = await service.client.delete("/healthz")
    assert response.status_code == 405
    assert response.json()["type"] == "urn:keyserver:problem:method-not-allowed"


async def test_oversized_body_is_refused_before_parsing(service: Service) -> None:
    limit = service.app.state.settings.max_request_bytes
    response = await service.client.post(
        "/v1/tenants",
        content=b'{"name":"' + b"a" * limit + b'"}',
        headers={**bearer(service.operator_token), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:keyserver:problem:payload-too-large"


async def test_malformed_json_and_unknown_fields_are_refused(service: Service) -> None:
    headers = {**bearer(service.operator_token), "content-type": "application/json"}
    broken = await service.client.post("/v1/tenants", content=b'{"name": ', headers=headers)
    assert broken.status_code == 400
    assert broken.json()["type"] == "urn:keyserver:problem:invalid-request"
    unknown = await service.client.post("/v1/tenants", json={"name": "acme", "admin": True}, headers=headers)
    assert unknown.status_code == 400
    assert "admin" in str(unknown.json()["errors"])


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_readyz_reports_a_lost_database_and_healthz_does_not(
    service: Service, postgres_server: PostgresServer, database_url: str
) -> None:
    # Losing the database is simulated on PostgreSQL: drop it under the running service.
    name = database_url.rsplit("/", 1)[1]
    postgres_server.admin(f'DROP DATABASE "{name}" WITH (FORCE)')
    response = await service.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["type"] == "urn:keyserver:problem:unavailable"
    assert (await service.client.get("/healthz")).status_code == 200
