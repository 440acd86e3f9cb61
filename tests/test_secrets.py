"""No secret in logs, errors or the database in clear (DESIGN.md, "Principles"), on both databases.

A realistic session — tenants and tokens of every role issued, a token revoked, a key generated and one
imported, a key rotated, releases granted and denied, a key backend failure, malformed and unauthorised
requests — runs with the service's logs captured. Then its logs, every error body it sent, every
response body, and a dump of the whole database (SQLite: ``iterdump``; PostgreSQL: ``pg_dump``) are
searched for every secret of the session, in every spelling it could take: the key material released
and imported, the software backend's KEK, the tenants' Ed25519 signing keys (checkpoints, attestation
results), and every API token and its secret part — raw, hex, base64 and base64url.

The scanner is proved able to find what it looks for: the same dumps, after a secret is planted through
each channel (a log line, an error that echoes its input, a stored description), must show it.
"""

from __future__ import annotations

import base64
import logging
import secrets
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import select, update

from keyserver.attestation import _context as attestation_context
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import AttestationKey, KeyVersion, LogKey
from keyserver.db.session import Database, Scope
from keyserver.jwe import unwrap_released
from keyserver.logs import JsonFormatter
from keyserver.releaselog.signing import _wrapping_context as log_context
from tests.conftest import Service, bearer
from tests.fixtures.postgres import PostgresServer, _pg_bin
from tests.world import World, b64, populate


def spellings(secret: bytes) -> dict[str, bytes]:
    """Every way a byte string could turn up in text or in a dump (bytea and BLOBs dump as hex)."""
    return {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": base64.b64encode(secret).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
    }


@dataclass
class Scanner:
    needles: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def add(self, name: str, secret: bytes) -> None:
        assert len(secret) >= 16, name  # shorter strings could match by chance
        for form, needle in spellings(secret).items():
            self.needles[(name, form)] = needle

    def add_text(self, name: str, secret: str) -> None:
        """A secret that is text (an API token) is spelled as itself."""
        assert len(secret) >= 16, name
        self.needles[(name, "text")] = secret.encode()

    def findings(self, haystacks: dict[str, bytes]) -> list[tuple[str, str, str]]:
        return [
            (where, name, form)
            for where, haystack in haystacks.items()
            for (name, form), needle in self.needles.items()
            if needle in haystack
        ]


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Collect(level=logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # everything the service could say, not only what INFO shows
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)


def dump_database(database_url: str, settings: Settings, postgres: PostgresServer | None) -> bytes:
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        with sqlite3.connect(path) as conn:
            return "\n".join(conn.iterdump()).encode()
    assert postgres is not None
    name = database_url.rsplit("/", 1)[1]
    dumped = subprocess.run(
        [
            str(_pg_bin() / "pg_dump"),
            "--no-owner",
            "-h",
            postgres.host,
            "-p",
            str(postgres.port),
            "-U",
            postgres.admin_user,
            name,
        ],
        capture_output=True,
        check=True,
        env={"PGPASSWORD": postgres.admin_password or ""},
    )
    assert b"COPY public.key_versions" in dumped.stdout  # the dump really holds the data
    return dumped.stdout


async def unwrapped_signing_keys(db: Database, backend: SoftwareBackend, world: World) -> dict[str, bytes]:
    tenant_id = uuid.UUID(world.tenant_id)
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        log_key = (await session.execute(select(LogKey).where(LogKey.tenant_id == tenant_id))).scalar_one()
        query = select(AttestationKey).where(AttestationKey.tenant_id == tenant_id)
        attestation_key = (await session.execute(query)).scalar_one()
    return {
        f"{world.name} checkpoint key": await backend.unwrap(
            log_key.wrapped_private_key, log_context(tenant_id)
        ),
        f"{world.name} attestation key": await backend.unwrap(
            attestation_key.wrapped_private_key, attestation_context(tenant_id)
        ),
    }


async def test_no_secret_in_logs_errors_or_the_database(
    service: Service,
    db: Database,
    settings: Settings,
    database_url: str,
    request: pytest.FixtureRequest,
    captured_logs: list[str],
) -> None:
    responses: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        responses.append(response)

    service.client.event_hooks["response"].append(keep)
    client = service.client

    # --- the session ---
    imported = secrets.token_bytes(32)
    acme = await populate(service, "acme", 1, material=imported)
    globex = await populate(service, "globex", 2)
    admin = bearer(acme.tenant.admin)
    extra = await client.post("/v1/tenants/acme/tokens", json={"role": "auditor"}, headers=admin)
    revoked_token = extra.json()["token"]
    await client.delete(f"/v1/tenants/acme/tokens/{extra.json()['info']['id']}", headers=admin)
    assert (await client.get("/v1/whoami", headers=bearer(revoked_token))).status_code == 401

    released = {}
    for world in (acme, globex):
        granted = await world.loader.release(world.key)  # the generated key, version 1
        assert granted.status_code == 200, granted.text
        released[f"{world.name} generated key v1"] = unwrap_released(
            granted.json()["jwe"], world.loader.private
        )[0]
        released[f"{world.name} imported key"] = unwrap_released(world.granted["jwe"], world.loader.private)[
            0
        ]
    assert released["acme imported key"] == imported

    # A rotation whose new version the backend cannot unwrap: a key-backend error, logged.
    assert (await client.post(f"/v1/tenants/acme/keys/{acme.key}/rotate", headers=admin)).status_code == 200
    async with db.transaction(Scope.for_tenant(uuid.UUID(acme.tenant_id))) as session:
        row = await session.get(KeyVersion, (uuid.UUID(acme.tenant_id), acme.key, 2))
        assert row is not None
        assert row.wrapped is not None
        await session.execute(
            update(KeyVersion)
            .where(
                KeyVersion.tenant_id == row.tenant_id,
                KeyVersion.key_name == acme.key,
                KeyVersion.version == 2,
            )
            .values(wrapped=row.wrapped[:-1] + bytes([row.wrapped[-1] ^ 1]))
        )
    failed = await acme.loader.release(acme.key)
    assert failed.status_code == 503, failed.text
    assert failed.json()["reason"] == "backend-unavailable"

    # Errors of every kind, some carrying secrets where they do not belong.
    await client.get("/v1/tenants/globex/keys", headers=admin)  # another tenant: 404
    await client.post("/v1/tenants", json={"name": "x"}, headers=admin)  # a role that may not: 403
    await client.get("/v1/whoami", headers={"Authorization": f"Bearer {acme.tenant.admin}x"})  # 401
    await client.post("/v1/tenants/acme/keys", content=b'{"name": ', headers=admin)  # malformed: 400
    await client.post(  # material that is not base64
        "/v1/tenants/acme/keys", json={"name": "bad", "policy": acme.policy, "material": "%%%"}, headers=admin
    )
    await client.post(  # a duplicate import of the same material: 409
        "/v1/tenants/acme/keys",
        json={"name": acme.imported_key, "policy": acme.policy, "material": b64(imported)},
        headers=admin,
    )
    await acme.loader.release(acme.imported_key, ephemeral_key={**acme.loader.jwk, "d": b64(imported)})

    # --- what must not appear ---
    backend = SoftwareBackend.from_file(settings.effective_kek_file, create=False)
    scanner = Scanner()
    scanner.add("KEK", settings.effective_kek_file.read_bytes())
    for name, material in released.items():
        scanner.add(name, material)
    for world in (acme, globex):
        for name, private in (await unwrapped_signing_keys(db, backend, world)).items():
            scanner.add(name, private)
    tokens = {
        "operator token": service.operator_token,
        "revoked token": revoked_token,
        **{
            f"{w.name} {role}": getattr(w.tenant, role)
            for w in (acme, globex)
            for role in ("admin", "auditor", "ci_signer")
        },
    }
    for name, token in tokens.items():
        scanner.add_text(name, token)
        scanner.add_text(f"{name} (secret part)", token.rsplit(".", 1)[1])

    postgres = request.getfixturevalue("postgres_server") if database_url.startswith("postgresql") else None
    issued_here = {r for r in responses if r.request.url.path.endswith("/tokens") and r.status_code == 201}
    haystacks = {
        "logs": "\n".join(captured_logs).encode(),
        "error bodies": b"\n".join(r.content for r in responses if r.status_code >= 400),
        # Success bodies, but for the one response that hands a new token out, once, by design.
        "other bodies": b"\n".join(
            r.content for r in responses if r.status_code < 400 and r not in issued_here
        ),
        "database": dump_database(database_url, settings, postgres),
    }
    assert len(captured_logs) > 100
    assert sum(r.status_code >= 400 for r in responses) >= 8
    assert scanner.findings(haystacks) == []

    # --- positive control: the same channels, each with a secret planted in it ---
    kek = settings.effective_kek_file.read_bytes()
    logging.getLogger("keyserver.test").warning("planted %s", base64.urlsafe_b64encode(kek).decode())
    echo = await client.get(f"/v1/tenants/{imported.hex()}", headers=admin)  # 404 echoes the name
    assert echo.status_code == 404
    stored = await client.post(
        "/v1/tenants/acme/tokens",
        json={"role": "auditor", "description": tokens["globex admin"][:200]},
        headers=admin,
    )
    assert stored.status_code == 201
    haystacks = {
        "logs": "\n".join(captured_logs).encode(),
        "error bodies": b"\n".join(r.content for r in responses if r.status_code >= 400),
        "database": dump_database(database_url, settings, postgres),
    }
    found = set(scanner.findings(haystacks))
    assert ("logs", "KEK", "base64url") in found
    assert ("error bodies", "acme imported key", "hex") in found
    assert ("database", "globex admin", "text") in found
    assert ("database", "globex admin (secret part)", "text") in found
