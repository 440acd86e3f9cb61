"""Hostile input aimed by hand where a generator would rarely go, on SQLite and PostgreSQL.

Every string a request carries — each string in each route's body, each path parameter — replaced with
text a database or a parser may choke on (NUL, a lone UTF-16 surrogate, control and bidi characters,
very long text); bodies over the size limit, with and without a Content-Length; JSON nested deeper than
any parser's stack; evidence with huge base64 fields. The promise: a 4xx problem document, never a 5xx,
and nothing stored that could not be read back. The routes and their valid bodies are the isolation
walk's (tests/test_isolation_walk.py), so a new route is covered here too.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyserver.api.middleware import MAX_JSON_CONTAINERS, MAX_JSON_VALUES
from keyserver.config import Settings
from tests.conftest import Service, bearer
from tests.fixtures.server import ServerProcess
from tests.test_isolation_walk import FIXED_PARAMS, ROUTES, Resolver, Walk, path_refs
from tests.world import World, populate

PROBLEM = "application/problem+json"
HOSTILE_TEXT = [
    "a\x00b",  # PostgreSQL text cannot hold NUL
    "\ud800",  # a lone surrogate: not encodable as UTF-8
    "\x1b[31m\r\n\t",  # terminal escapes, line breaks
    "\u202egnp.exe",  # right-to-left override
    "x" * 20_000,
    "' OR 1=1 --",
    "../../../../etc/passwd",
]


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The paths to every string in a JSON value (object keys included, as ``(..., KEY, name)``)."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, KEY, key)
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, (*path, i))


KEY = object()


def replaced(value: Any, path: tuple[Any, ...], new: str) -> Any:
    if not path:
        return new
    if path[0] is KEY:
        return {(new if k == path[1] else k): v for k, v in value.items()}
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def encoded(body: Any) -> bytes:
    # ensure_ascii: a lone surrogate travels as the escape "\ud800", as any JSON client would send it.
    return json.dumps(body, ensure_ascii=True).encode()


def check(response: httpx.Response, where: object) -> None:
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"] == PROBLEM, (where, response.headers)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """A smaller body limit than the default, so that bodies over it stay cheap to send."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url, max_request_bytes=256 * 1024)


@pytest.fixture
async def acme(service: Service) -> World:
    return await populate(service, "acme", 1)


async def test_hostile_text_in_every_field_and_path_parameter(service: Service, acme: World) -> None:
    walk = Walk(service, acme, acme, service.app.state.settings.log_origin)
    tried = 0
    for (method, template), route in sorted(ROUTES.items()):
        if route.kind == "global" and template != "/v1/tenants":
            continue
        headers = {"content-type": "application/json"}
        if route.kind == "tenant":
            headers |= bearer(acme.tenant.admin)
        elif route.kind == "global":
            headers |= bearer(service.operator_token)
        resolver = Resolver(walk, acme.name, None, None)
        params = {"tenant": acme.name, **FIXED_PARAMS}
        for param, ref in path_refs(template):
            params[param] = str(await resolver.value(ref))
        body = await route.body(resolver) if route.body else None

        def url(values: dict[str, str], template: str = template) -> str:
            path = template
            for name, value in values.items():
                path = path.replace(
                    "{" + name + "}", urllib.parse.quote(value, safe="", errors="surrogatepass")
                )
            return path

        variants: list[tuple[str, Any]] = []
        for name in params:
            if "{" + name + "}" in template and name not in FIXED_PARAMS:
                variants += [(url({**params, name: text}), body) for text in HOSTILE_TEXT]
        for leaf in leaves(body):
            variants += [(url(params), replaced(body, leaf, text)) for text in HOSTILE_TEXT]
        for target, content in variants:
            response = await service.client.request(
                method,
                target,
                content=None if content is None else encoded(content),
                params=route.query or None,
                headers=headers,
            )
            tried += 1
            check(response, (method, template, target[:120], str(content)[:200]))
    assert tried > 500


# --- NUL, and what is not NUL -----------------------------------------------------------------------


async def test_nul_is_refused_alike_on_both_databases_and_an_escaped_backslash_is_not_nul(
    service: Service, acme: World
) -> None:
    admin = {**bearer(acme.tenant.admin), "content-type": "application/json"}
    nul = await service.client.post(
        "/v1/tenants/acme/tokens", content=b'{"role": "auditor", "description": "a\\u0000b"}', headers=admin
    )
    assert nul.status_code == 400, nul.text
    assert nul.json()["type"] == "urn:keyserver:problem:invalid-request"
    assert "NUL" in nul.json()["detail"]
    # A backslash followed by "u0000" is text: accepted, and read back as sent.
    text = "C:\\u0000\\\\u0000"
    kept = await service.client.post(
        "/v1/tenants/acme/tokens", content=encoded({"role": "auditor", "description": text}), headers=admin
    )
    assert kept.status_code == 201, kept.text
    assert kept.json()["info"]["description"] == text
    listed = await service.client.get("/v1/tenants/acme/tokens", headers=admin)
    assert text in [t["description"] for t in listed.json()]
    # In a path: refused before any lookup, on routes with and without a token.
    for method, path, headers in (
        ("POST", "/v1/tenants/acme/keys/a%00b/rotate", admin),
        ("POST", "/v1/tenants/ac%00me/challenges", {}),
        ("DELETE", "/v1/tenants/acme/tpm/aks/00%00", admin),
    ):
        response = await service.client.request(method, path, headers=headers)
        assert response.status_code == 400, (path, response.text)


# --- numbers beyond what the store holds --------------------------------------------------------------


async def test_versions_and_indexes_beyond_64_bits_are_400_and_the_largest_is_404(
    service: Service, acme: World
) -> None:
    admin = bearer(acme.tenant.admin)
    largest = 2**53 - 1  # what a release-log entry can carry (I-JSON)
    for version in (largest + 1, 2**63, 2**64 + 5, 10**30):
        for path in (
            f"/v1/tenants/acme/policies/{acme.policy}/{version}/activate",
            f"/v1/tenants/acme/reference-values/{acme.reference_values}/{version}/revoke",
        ):
            response = await service.client.post(path, headers=admin)
            assert response.status_code == 400, (path, response.text)
        dry_run = await service.client.post(
            f"/v1/tenants/acme/policies/{acme.policy}/dry-run",
            json={"claims": {"tee": "tpm"}, "version": version},
            headers=admin,
        )
        assert dry_run.status_code == 400, dry_run.text
        challenge = await acme.loader.challenge()
        release = await acme.loader.release(acme.imported_key, challenge=challenge, version=version)
        assert release.status_code == 400, release.text
        if version >= 2**63:
            entries = await service.client.get(
                "/v1/tenants/acme/log/entries", params={"start": version, "end": version}, headers=admin
            )
            assert entries.status_code == 400, entries.text
    for path in (
        f"/v1/tenants/acme/policies/{acme.policy}/{largest}/activate",
        f"/v1/tenants/acme/reference-values/{acme.reference_values}/{largest}/revoke",
    ):
        response = await service.client.post(path, headers=admin)
        assert response.status_code == 404, (path, response.text)
    release = await acme.loader.release(acme.imported_key, version=largest)
    assert release.status_code == 403, release.text
    assert release.json()["reason"] == "key-version-unavailable"  # denied, and logged like any denial
    assert release.json()["log_index"] >= 0


# --- deep JSON ----------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_json_nested_too_deep_is_400_wherever_a_document_goes(service: Service, acme: World) -> None:
    admin = {**bearer(acme.tenant.admin), "content-type": "application/json"}
    unused = await acme.loader.challenge()
    challenge = unused["id"]
    templates = [
        (
            "/v1/tenants/acme/keys/acme-own/release",
            '{"challenge":"CH","evidence":{"tee":"tpm","x":DEEP},"ephemeral_key":{}}',
        ),
        (
            "/v1/tenants/acme/keys/acme-own/release",
            '{"challenge":"CH","evidence":{},"ephemeral_key":{"x":DEEP}}',
        ),
        (
            "/v1/tenants/acme/attest",
            '{"challenge":"CH","evidence":{"x":DEEP},"ephemeral_key":{}}',
        ),
        ("/v1/tenants/acme/policies/acme-prod/dry-run", '{"claims":{"x":DEEP}}'),
        ("/v1/tenants/acme/policies", '{"name":"deep","document":{"version":1,"x":DEEP}}'),
        ("/v1/tenants/acme/reference-values", '{"name":"deep","tee":"tpm","values":{"x":DEEP}}'),
        (
            "/v1/tenants/acme/reference-values/bundles",
            '{"signer":"s","bundle":{"x":DEEP},"signature":"AA=="}',
        ),
    ]
    for depth in (65, 1_000, 100_000):
        for path, template in templates:
            body = template.replace("CH", challenge).replace("DEEP", nested(depth)).encode()
            response = await service.client.post(path, content=body, headers=admin)
            assert response.status_code == 400, (path, depth, response.text[:300])
            # So deep a document also holds more arrays than any request: refused on that count first.
            expected = "nested deeper" if depth <= MAX_JSON_CONTAINERS else "arrays and objects"
            assert expected in response.json()["detail"]
    # At the limit a document is read, and the route says what it thinks of it.
    dry_run = await service.client.post(
        "/v1/tenants/acme/policies/acme-prod/dry-run",
        content=b'{"claims":{"x":%s}}' % nested(62).encode(),
        headers=admin,
    )
    assert dry_run.status_code == 200, dry_run.text
    assert dry_run.json()["granted"] is False
    # The challenge those releases named was never consumed: none of them reached the release.
    fine = await acme.loader.release(acme.imported_key, challenge=unused)
    assert fine.status_code == 200, fine.text


async def test_a_body_with_more_values_than_any_request_is_400_before_it_is_decoded(
    service: Service, acme: World
) -> None:
    """Found by review: 1 MB of empty arrays cost ~0.6 s of a worker's CPU before any authentication.
    Counted on the bytes now; the challenge named is not used."""
    unused = await acme.loader.challenge()
    filler = {
        "arrays and objects": "[" + ",".join(["[]"] * (MAX_JSON_CONTAINERS + 1)) + "]",
        "values": "[" + ",".join(["0"] * MAX_JSON_VALUES) + "]",
    }
    for reason, value in filler.items():
        for path, headers in (
            ("/v1/tenants/acme/keys/acme-own/release", {}),
            ("/v1/tenants/nosuch/challenges", {}),
            ("/v1/tenants", bearer(acme.tenant.admin)),
        ):
            evidence = '{"tee":"tpm","x":' + value + "}"
            body = '{"challenge":"' + unused["id"] + '","evidence":' + evidence + ',"ephemeral_key":{}}'
            response = await service.client.post(
                path, content=body.encode(), headers={**headers, "content-type": "application/json"}
            )
            assert response.status_code == 400, (path, response.text[:300])
            assert reason in response.json()["detail"]
    fine = await acme.loader.release(acme.imported_key, challenge=unused)
    assert fine.status_code == 200, fine.text


async def test_a_member_named_twice_is_400_wherever_it_is(service: Service, acme: World) -> None:
    """The routes decode with msgspec (the last of a duplicated member wins); a proxy or a reviewer's tool
    may read the first. Refused before any route sees the body: the challenge named is not used."""
    unused = await acme.loader.challenge()
    admin = {**bearer(acme.tenant.admin), "content-type": "application/json"}
    bodies = [
        (
            "/v1/tenants/acme/keys/acme-own/release",
            '{"challenge":"C","challenge":"C","evidence":{},"ephemeral_key":{}}',
        ),
        (
            "/v1/tenants/acme/keys/acme-own/release",
            '{"challenge":"C","evidence":{"tee":"tpm","tee":"sev-snp"},"ephemeral_key":{}}',
        ),
        (
            "/v1/tenants/acme/policies",
            '{"name":"p2","document":{"version":1,"tees":["tpm"],"rules":[],"rules":[]}}',
        ),
        ("/v1/tenants/acme/policies/acme-prod/dry-run", '{"claims":{"x":NaN}}'),
    ]
    for path, body in bodies:
        response = await service.client.post(
            path, content=body.replace("C", unused["id"]).encode(), headers=admin
        )
        assert response.status_code == 400, (path, response.text[:300])
        assert "refused" in response.json()["detail"]
    fine = await acme.loader.release(acme.imported_key, challenge=unused)
    assert fine.status_code == 200, fine.text


async def test_a_body_that_is_not_utf8_is_400_not_500(service: Service, acme: World) -> None:
    """Found by review: a non-UTF-8 byte inside a JSON string was a 500 on every JSON route."""
    challenge = (await acme.loader.challenge())["id"]
    for path, headers in (
        ("/v1/tenants/acme/keys/acme-own/release", {}),
        ("/v1/tenants/acme/attest", {}),
        ("/v1/tenants/acme/tpm/enrolments", {}),
        ("/v1/tenants/nosuch/tpm/enrolments", {}),
        ("/v1/tenants", bearer(acme.tenant.admin)),
        ("/v1/tenants/acme/keys", {}),
    ):
        body = b'{"challenge":"' + challenge.encode() + b'\xff","x":"\xff"}'
        response = await service.client.post(
            path, content=body, headers={**headers, "content-type": "application/json"}
        )
        assert response.status_code in (400, 401), (path, response.status_code, response.text[:300])
        assert response.headers["content-type"].startswith(PROBLEM)


# --- bodies over the limit ----------------------------------------------------------------------------


async def test_oversized_bodies_are_413_on_every_route_with_and_without_a_length(
    service: Service, acme: World
) -> None:
    limit = service.app.state.settings.max_request_bytes
    walk = Walk(service, acme, acme, service.app.state.settings.log_origin)
    head = (
        await service.client.get("/v1/tenants/acme/log/checkpoint", headers=bearer(acme.tenant.admin))
    ).text
    posted = 0
    for (method, template), route in sorted(ROUTES.items()):
        if method not in ("POST", "DELETE"):
            continue
        resolver = Resolver(walk, acme.name, None, None)
        path = template.replace("{tenant}", acme.name)
        for name, value in FIXED_PARAMS.items():
            path = path.replace("{" + name + "}", value)
        for param, ref in path_refs(template):
            path = path.replace("{" + param + "}", str(await resolver.value(ref)))
        token = service.operator_token if route.kind == "global" else acme.tenant.admin
        body = b'{"padding": "' + b"A" * limit + b'"}'
        response = await service.client.request(
            method, path, content=body, headers={**bearer(token), "content-type": "application/json"}
        )
        assert response.status_code == 413, (method, template, response.status_code, response.text[:200])
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["type"] == "urn:keyserver:problem:payload-too-large"
        posted += 1
    assert posted >= 24
    # Nothing reached a handler: the log did not move.
    after = (
        await service.client.get("/v1/tenants/acme/log/checkpoint", headers=bearer(acme.tenant.admin))
    ).text
    assert after == head


def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(keyserver_process: ServerProcess) -> None:
    """Over real HTTP (uvicorn): no Content-Length to refuse up front, so the limit applies as it streams."""
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"padding": "'
        for _ in range(64):  # 4 MiB, four times the default limit
            sent += 65536
            yield b"A" * 65536
        yield b'"}'

    for path in ("/v1/tenants/nosuch/keys/weights/release", "/v1/tenants", "/v1/tenants/nosuch/attest"):
        sent = 0
        try:
            response = httpx.post(
                keyserver_process.url + path,
                content=chunks(),
                headers={"content-type": "application/json"},
                timeout=30,
            )
        except httpx.TransportError:
            # The server may close the connection once it has answered; it must not have read it all.
            assert sent < 4 * 1024 * 1024, path
            continue
        assert response.status_code == 413, (path, response.text[:200])
        assert response.json()["type"] == "urn:keyserver:problem:payload-too-large"


# --- huge fields in evidence --------------------------------------------------------------------------


async def test_huge_base64_evidence_fields_are_denied_and_logged(service: Service, acme: World) -> None:
    limit = service.app.state.settings.max_request_bytes
    huge = base64.b64encode(os.urandom(limit * 3 // 4 - 4096)).decode()  # just under the body limit
    evidences = [
        {"tee": "tpm", "ak_name": acme.ak_name, "quote": huge, "signature": "AAAA", "pcrs": {}},
        {"tee": "tpm", "ak_name": acme.ak_name, "quote": "AAAA", "signature": huge, "pcrs": {}},
        {
            "tee": "tpm",
            "ak_name": acme.ak_name,
            "quote": "AAAA",
            "signature": "AAAA",
            "pcrs": {},
            "event_log": huge,
        },
        {"tee": "tpm", "ak_name": huge[:100_000], "quote": "AAAA", "signature": "AAAA", "pcrs": {}},
        {"tee": "sev-snp", "report": huge},
        {"tee": "sev-snp", "report": "AAAA", "certificate": huge},
        {"tee": "tdx", "quote": huge},
        {"tee": "attestation-result", "token": huge},
    ]
    auditor = bearer(acme.tenant.auditor)
    for evidence in evidences:
        before = int(
            (await service.client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text.split("\n")[1]
        )
        challenge = await acme.loader.challenge()
        response = await acme.loader.release(acme.imported_key, challenge=challenge, evidence=evidence)
        assert response.status_code == 403, (str(evidence)[:100], response.text[:300])
        denial = response.json()
        assert denial["type"] == "urn:keyserver:problem:release-denied"
        assert denial["log_index"] == before  # the denial is the log's next entry
        attested = await service.client.post(
            "/v1/tenants/acme/attest",
            json={
                "challenge": (await acme.loader.challenge())["id"],
                "evidence": evidence,
                "ephemeral_key": acme.loader.jwk,
            },
        )
        assert attested.status_code in (400, 403), attested.text[:300]
        assert huge not in response.text  # not echoed back
        assert huge not in attested.text
