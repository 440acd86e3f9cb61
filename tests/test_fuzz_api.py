"""Hostile input, route by route: every operation in the OpenAPI document, fuzzed by schemathesis against
the in-process app, on SQLite and on PostgreSQL.

Schemathesis generates requests from the app's own OpenAPI document, both ones that follow it and ones
that break it (wrong types, missing members, values out of range, strings where numbers go, …). The
promise checked: the keyserver never answers 5xx, every answer has the media type and the shape its
document declares, input that breaks the document is refused (4xx), never accepted, and every operation
that needs a token answers 401 without one.

The tenant in the path is a real, populated one (tests/world.py) and the token is its admin's (the
operator's on the operator routes), so requests get past authentication into the handlers; names in
paths are drawn from the tenant's real keys, policies, reference values and CI signers as well as from
the generator. Budget: a few examples per operation in the suite (derandomized in CI); ``make fuzz``
multiplies it (tests/fuzzing.py).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from schemathesis import GenerationMode, checks
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi import checks as oa

from keyserver.app import create_app
from keyserver.config import Settings
from tests.conftest import Service, bearer
from tests.fixtures.postgres import PostgresServer
from tests.fuzzing import budget
from tests.world import World, populate

pytestmark = pytest.mark.fuzz


class AsyncOverSync:
    """The async test-client calls tests/world.py makes, over schemathesis's synchronous ASGI client (which
    runs the app, and its lifespan, on schemathesis's own event loop)."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session

    async def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.get(url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.post(url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.delete(url, **kwargs)


def _document() -> dict[str, Any]:
    """The app's OpenAPI document, from an app that is built but never started."""
    with tempfile.TemporaryDirectory() as scratch:
        app = create_app(Settings(data_dir=Path(scratch) / "data"), announce=lambda _token: None)
        return app.openapi_schema.to_schema()


def _operations(schema: Any) -> dict[str, Any]:
    found = {}
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise AssertionError(f"schemathesis cannot read the OpenAPI document: {result.err()}")
        found[result.ok().label] = result.ok()
    return found


SCHEMA = schemathesis.openapi.from_dict(_document())
OPERATIONS = _operations(SCHEMA)


class Target:
    def __init__(self, app: Litestar, world: World, operator: str) -> None:
        self.app, self.world, self.operator = app, world, operator


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzz_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    database_url = f"sqlite+aiosqlite:///{data_dir / 'keyserver.sqlite3'}"
    server: PostgresServer | None = None
    name = ""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        template = request.getfixturevalue("postgres_template")
        name = server.create_database(template=template)
        database_url = server.url(name)
    announced: list[str] = []
    app = create_app(
        Settings(data_dir=Path(data_dir) / "data", database_url=database_url), announce=announced.append
    )
    try:
        with asgi.get_client(
            cast(Any, app)
        ) as client:  # starts the app's lifespan, on schemathesis's event loop
            service = Service(app=app, client=cast(Any, AsyncOverSync(client)), announced=announced)
            world = asyncio.run(populate(service, "acme", 1))
        SCHEMA.app = app  # checks that replay a request (ignored_auth) send it here too
        for operation in OPERATIONS.values():
            operation.app = app
        yield Target(app, world, service.operator_token)
    finally:
        asgi.shutdown_lifespans()
        if server is not None:
            server.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Which of the tenant's names a {name} path parameter may be replaced with, by collection.
NAMES = {
    "keys": lambda w: [w.key, w.imported_key],
    "policies": lambda w: [w.policy],
    "reference-values": lambda w: [w.reference_values],
    "ci-signers": lambda w: [w.signer],
}


CHECKS = [
    checks.not_a_server_error,
    oa.status_code_conformance,
    oa.content_type_conformance,
    oa.response_schema_conformance,
    oa.negative_data_rejection,
    oa.ignored_auth,
]


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_hostile_requests_get_4xx_never_5xx(label: str, fuzz_target: Target) -> None:
    operation = OPERATIONS[label]
    world = fuzz_target.world
    token = fuzz_target.operator if operation.path == "/v1/tenants" else world.tenant.admin
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

    @settings(
        max_examples=budget(12),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=strategy, data=st.data())
    def fuzz(case: Any, data: st.DataObject) -> None:
        if "tenant" in (case.path_parameters or {}):
            case.path_parameters["tenant"] = world.name
        if "name" in (case.path_parameters or {}):
            segments = case.path.split("/")
            collection = segments[segments.index("{name}") - 1]  # keys, policies, …
            case.path_parameters["name"] = data.draw(
                st.sampled_from([*NAMES[collection](world), case.path_parameters["name"]]), label="name"
            )
        case.call_and_validate(headers=bearer(token), checks=CHECKS)

    fuzz()
