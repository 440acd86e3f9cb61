"""The `keyserver` command line, run as a subprocess, on both databases."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

KEYSERVER = str(Path(sys.executable).parent / "keyserver")


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYSERVER, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVER_")}
    env["KEYSERVER_DATA_DIR"] = str(tmp_path / "data")
    if database_url.startswith("postgresql"):
        env["KEYSERVER_DATABASE_URL"] = database_url
    return env


def test_tenant_and_token_lifecycle(cli_env: dict[str, str]) -> None:
    first = run(["tenant", "create", "acme", "--json"], cli_env)
    assert first.returncode == 0, first.stderr
    tenant = json.loads(first.stdout)
    assert tenant["name"] == "acme"
    # The first command on an empty store prints the operator credential, once.
    assert first.stderr.count("ks1.operator.") == 1
    listed = run(["tenant", "list", "--json"], cli_env)
    assert [t["name"] for t in json.loads(listed.stdout)] == ["acme"]
    assert "ks1.operator." not in listed.stderr

    issued = run(
        ["token", "create", "--tenant", "acme", "--role", "auditor", "--expires-in", "30d", "--json"], cli_env
    )
    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)
    assert token["token"].startswith("ks1." + tenant["id"].replace("-", "") + ".")
    assert token["role"] == "auditor"
    assert token["expires_at"] is not None

    tokens = json.loads(run(["token", "list", "--tenant", "acme", "--json"], cli_env).stdout)
    assert [t["id"] for t in tokens] == [token["id"]]
    assert all("token" not in t for t in tokens), "listing never shows a secret"

    revoked = run(["token", "revoke", token["id"], "--tenant", "acme", "--json"], cli_env)
    assert json.loads(revoked.stdout)["revoked_at"] is not None

    operator = run(["token", "create", "--operator"], cli_env)
    assert operator.returncode == 0
    assert operator.stdout.startswith("ks1.operator.")
    # A tenant's token made or revoked on the server's command line is in the tenant's log too.
    logged = asyncio.run(_token_entries(cli_env, uuid.UUID(tenant["id"])))
    assert logged == [
        ("token-issued", None, "host", token["id"]),
        ("token-revoked", None, "host", token["id"]),
    ]


async def _token_entries(env: dict[str, str], tenant_id: uuid.UUID) -> list[tuple[Any, ...]]:
    from sqlalchemy import select

    from audit.entry import decode_entry
    from keyserver.config import Settings
    from keyserver.db.models import LogEntry
    from keyserver.db.session import Database, Scope

    db = Database(
        Settings(data_dir=Path(env["KEYSERVER_DATA_DIR"]), database_url=env.get("KEYSERVER_DATABASE_URL"))
    )
    try:
        async with db.transaction(Scope.for_tenant(tenant_id)) as session:
            rows = (await session.execute(select(LogEntry).order_by(LogEntry.idx))).scalars().all()
            entries = [decode_entry(bytes(row.entry)) for row in rows]
    finally:
        await db.dispose()
    return [(e["kind"], e["principal"], e["issuer_role"], e["token"]["id"]) for e in entries]


def test_human_output_by_default(cli_env: dict[str, str]) -> None:
    created = run(["tenant", "create", "globex"], cli_env)
    assert created.stdout.startswith("created tenant globex (")
    assert "globex\t" in run(["tenant", "list"], cli_env).stdout


def test_refusals_exit_1_with_the_reason(cli_env: dict[str, str]) -> None:
    assert run(["tenant", "create", "acme"], cli_env).returncode == 0
    duplicate = run(["tenant", "create", "acme"], cli_env)
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    unknown = run(["token", "create", "--tenant", "nosuch", "--role", "auditor"], cli_env)
    assert unknown.returncode == 1
    assert "no tenant named 'nosuch'" in unknown.stderr
    invalid = run(["tenant", "create", "Not Valid", "--json"], cli_env)
    assert invalid.returncode == 1
    assert json.loads(invalid.stdout)["error"] == "invalid-request"


def test_usage_errors_exit_2(cli_env: dict[str, str]) -> None:
    assert run(["tenant"], cli_env).returncode == 2
    assert run(["token", "create", "--role", "auditor"], cli_env).returncode == 2  # no --tenant/--operator
    assert run(["token", "create", "--tenant", "x", "--expires-in", "soon"], cli_env).returncode == 2
    assert run(["frobnicate"], cli_env).returncode == 2


def test_db_upgrade_and_current(cli_env: dict[str, str]) -> None:
    from keyserver.db.migrate import head_revision

    upgraded = run(["db", "upgrade"], cli_env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == head_revision()
    assert run(["db", "current"], cli_env).stdout.strip() == head_revision()
