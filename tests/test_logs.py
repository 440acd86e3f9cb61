"""Logs are JSON lines with request ids, and never carry a bearer token."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from keyserver.logs import JsonFormatter
from tests.conftest import Service, bearer


@pytest.fixture
def json_records() -> Iterator[list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Collect()
    logging.getLogger().addHandler(handler)
    yield lines
    logging.getLogger().removeHandler(handler)


async def test_access_log_is_json_with_request_id_and_no_token(
    service: Service, json_records: list[str]
) -> None:
    token = service.operator_token
    response = await service.client.get("/v1/whoami", headers={**bearer(token), "X-Request-Id": "trace-me"})
    assert response.status_code == 200
    await service.client.get("/v1/whoami", headers=bearer(token + "tampered"))
    records = [json.loads(line) for line in json_records]
    access = [r for r in records if r["logger"] == "keyserver.access" and r["path"] == "/v1/whoami"]
    assert access[0]["request_id"] == "trace-me"
    assert access[0]["status"] == 200
    assert access[1]["status"] == 401
    secret = token.rsplit(".", 1)[1]
    assert all(secret not in line for line in json_records)
