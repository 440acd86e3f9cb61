"""Query parameters: a route takes the ones it declares, each once, and refuses any other
(keyserver/api/middleware.py, ``screen_request``).

An unknown parameter used to be ignored: a typo (``tree_sise=``) or a parameter of another version of the
API became a silent default, while an unknown member of a JSON body is refused. Every route of the app is
walked (so a new route is covered the day it is added), with the tenant's admin token, so that the refusal
is the screen's and not authentication's."""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar.routes import HTTPRoute

from tests.conftest import Service, bearer
from tests.world import World, populate

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def world(service: Service) -> World:
    return await populate(service, "acme", 1)


def _routes(service: Service) -> list[tuple[str, str]]:
    found = []
    for route in service.app.routes:
        if isinstance(route, HTTPRoute):
            for method in route.route_handler_map:
                if method not in ("HEAD", "OPTIONS"):
                    found.append((method, route.path))
    return sorted(found)


def _filled(path: str, world: World) -> str:
    """The path with real names where the tenant has them, and a well-formed value of the parameter's
    type elsewhere (the route is reached; what it would answer without the query is not the point)."""
    values = {"tenant": world.name, "name": world.key}
    by_type = {"uuid": "00000000-0000-4000-8000-000000000000", "int": "1"}

    def value(match: re.Match[str]) -> str:
        return values.get(match.group(1)) or by_type.get(match.group(2) or "", "x")

    return re.sub(r"\{(\w+)(?::(\w+))?\}", value, path)


async def _send(service: Service, method: str, url: str, token: str) -> Any:
    return await service.client.request(method, url, headers=bearer(token))


async def test_every_route_refuses_a_query_parameter_it_does_not_declare(
    service: Service, world: World
) -> None:
    routes = _routes(service)
    assert len(routes) > 40, "the walk reaches the whole API"
    for method, path in routes:
        for query in ("not_a_parameter=1", "=x", "%C3%AF=", "index=0&tree_sise=2"):
            if "tree_size" in query and "proofs/inclusion" not in path:
                continue
            response = await _send(service, method, f"{_filled(path, world)}?{query}", world.tenant.admin)
            assert response.status_code == 400, (method, path, query, response.status_code, response.text)
            assert response.json()["type"].endswith(":invalid-request"), (method, path, query)
            assert "unknown query parameter" in response.json()["detail"], (method, path, query)


async def test_declared_parameters_are_taken_once(service: Service, world: World) -> None:
    base = f"/v1/tenants/{world.name}/log/proofs/inclusion"
    token = world.tenant.admin
    assert (await _send(service, "GET", f"{base}?index=0&tree_size=1", token)).status_code == 200
    # An empty segment is no parameter at all.
    assert (await _send(service, "GET", f"{base}?&index=0&tree_size=1&", token)).status_code == 200
    twice = await _send(service, "GET", f"{base}?index=0&tree_size=1&index=0", token)
    assert twice.status_code == 400
    assert "more than once" in twice.json()["detail"]
    entries = f"/v1/tenants/{world.name}/log/entries?start=0&end=1"
    assert (await _send(service, "GET", entries, token)).status_code == 200


async def test_the_refusal_does_not_echo_a_long_name_whole(service: Service, world: World) -> None:
    name = "n" * 5000
    response = await _send(service, "GET", f"/v1/tenants/{world.name}/keys?{name}=1", world.tenant.admin)
    assert response.status_code == 400
    assert len(response.json()["detail"]) < 200
