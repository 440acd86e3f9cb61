"""`keyserver audit key|verify|monitor` against a real keyserver process, including one whose
database was tampered with behind its back."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Role, create_tenant, issue_token
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.server import KEYSERVER, ServerProcess, clean_env, start_server
from tests.test_audit_verifier import MemoryLog, release
from tests.test_log_entry import HOSTILE_ENTRIES


class LogWriter:
    """Appends to the server's log from the test, through the same store the service uses."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.settings = Settings(data_dir=data_dir, database_url=database_url)
        self.db = Database(self.settings)
        self.log = ReleaseLog(
            LogSigner(SoftwareBackend.from_file(self.settings.effective_kek_file), "keyserver.local")
        )

    async def tenant_with_auditor(self, name: str) -> tuple[Tenant, str]:
        async with self.db.transaction(Scope.for_operator()) as session:
            tenant = await create_tenant(session, name)
            token = await issue_token(session, tenant_id=tenant.id, role=Role.AUDITOR)
        return tenant, token.secret

    async def append(self, tenant: Tenant, entries: list[dict[str, Any]]) -> None:
        async with self.db.transaction(Scope.for_tenant(tenant.id)) as session:
            await self.log.append(session, tenant, entries)


def audit(server: ServerProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYSERVER, "audit", *args, "--url", server.url, "--tenant", "acme"],
        env=clean_env(KEYSERVER_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=120,
    )


def releases(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "v": 1,
            "kind": "key-release",
            "decision": "denied" if n % 5 == 0 else "granted",
            "key": {"name": "w"},
            "n": n,
        }
        for n in range(start, start + count)
    ]


async def test_verify_save_grow_and_verify_again(keyserver_process: ServerProcess, tmp_path: Path) -> None:
    writer = LogWriter(keyserver_process.data_dir)
    try:
        tenant, token = await writer.tenant_with_auditor("acme")
        await writer.append(tenant, releases(0, 1500))
        key = audit(keyserver_process, token, "key")
        assert key.returncode == 0, key.stderr
        vkey = key.stdout.strip()
        assert vkey.startswith("keyserver.local/acme+")

        saved = tmp_path / "checkpoint.txt"
        first = audit(
            keyserver_process, token, "verify", "--key", vkey, "--save-checkpoint", str(saved), "--json"
        )
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report["verified"] is True
        assert report["tree_size"] == 1500
        assert report["decisions_by_key"]["w"] == {"granted": 1200, "denied": 300}
        assert saved.read_text().startswith("keyserver.local/acme\n1500\n")

        await writer.append(tenant, releases(1500, 7))
        human = audit(
            keyserver_process, token, "verify", "--key", vkey, "--from-checkpoint", str(saved), "--progress"
        )
        assert human.returncode == 0, human.stderr
        assert "1507 entries" in human.stdout
        assert "consistent with the saved checkpoint at size 1500" in human.stdout
        assert "1507/1507 entries" in human.stderr  # the progress bar

        monitor = audit(
            keyserver_process,
            token,
            "monitor",
            "--key",
            vkey,
            "--trust-on-first-use",
            "--iterations",
            "2",
            "--interval",
            "0.1",
            "--json",
        )
        assert monitor.returncode == 0, monitor.stderr
        lines = [json.loads(line) for line in monitor.stdout.splitlines()]
        assert [line["index"] for line in lines] == list(range(1507))
    finally:
        await writer.db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, str | None]]:
    """A keyserver process on either database; yields it and its database URL (None: SQLite)."""
    env = clean_env(KEYSERVER_DATA_DIR=str(tmp_path / "data"))
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        env["KEYSERVER_DATABASE_URL"] = url
    server = start_server(tmp_path, env)
    yield server, url
    server.stop()


async def test_tampering_behind_the_services_back_is_detected(
    served: tuple[ServerProcess, str | None], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    server, database_url = served
    writer = LogWriter(server.data_dir, database_url)
    try:
        tenant, token = await writer.tenant_with_auditor("acme")
        await writer.append(tenant, releases(0, 20))
        vkey = audit(server, token, "key").stdout.strip()
        saved = tmp_path / "checkpoint.txt"
        assert audit(server, token, "verify", "--key", vkey, "--save-checkpoint", str(saved)).returncode == 0
    finally:
        await writer.db.dispose()

    if database_url is None:
        tamper_sqlite(server.data_dir / "keyserver.sqlite3")
    else:
        tamper_postgres(postgres_server, database_url.rsplit("/", 1)[1])

    tampered = audit(server, token, "verify", "--key", vkey, "--from-checkpoint", str(saved), "--json")
    assert tampered.returncode == 1
    assert json.loads(tampered.stdout)["verified"] is False
    assert "do not hash to the signed root" in tampered.stderr


def tamper_sqlite(path: Path) -> None:
    """An attacker with the database file: the trigger stops a plain UPDATE, so they drop it, flip a
    denial into a grant, and carry on."""
    database = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        database.execute("UPDATE log_entries SET entry = entry WHERE idx = 3")
    database.execute("DROP TRIGGER log_entries_no_update")
    (entry,) = database.execute("SELECT entry FROM log_entries WHERE idx = 5").fetchone()
    database.execute(
        "UPDATE log_entries SET entry = ? WHERE idx = 5", (entry.replace(b"denied", b"granted"),)
    )
    database.commit()
    database.close()


def tamper_postgres(server: PostgresServer, database: str) -> None:
    """A PostgreSQL superuser: the trigger refuses even them, until they switch triggers off for their
    session (session_replication_role) and flip a denial into a grant."""

    async def run() -> None:
        conn = await asyncpg.connect(
            host=server.host,
            port=server.port,
            user=server.admin_user,
            password=server.admin_password,
            database=database,
        )
        try:
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute("UPDATE log_entries SET entry = entry WHERE idx = 3")
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "UPDATE log_entries SET entry = convert_to(replace(convert_from(entry, 'UTF8'), 'denied',"
                " 'granted'), 'UTF8') WHERE idx = 5"
            )
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


async def test_a_restarted_monitor_catches_a_rewrite_of_an_entry_it_verified(
    served: tuple[ServerProcess, str | None], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """Run 1 verifies 20 entries and saves its state. Then whoever holds the database and the log key
    rewrites entry 5 (a denial becomes a grant), rebuilds the tree and re-signs it, and the log grows.
    A monitor that forgot sees a consistent log; run 2, with the same state file, names entry 5."""
    server, database_url = served
    state = tmp_path / "acme.state"
    writer = LogWriter(server.data_dir, database_url)
    try:
        tenant, token = await writer.tenant_with_auditor("acme")
        await writer.append(tenant, releases(0, 20))
        vkey = audit(server, token, "key").stdout.strip()
        first = monitor(server, token, vkey, "--state", str(state), "--trust-on-first-use")
        assert first.returncode == 0, first.stderr
        assert [json.loads(line)["index"] for line in first.stdout.splitlines()] == list(range(20))
        saved = json.loads(state.read_text())
        assert (saved["origin"], saved["tree_size"], saved["verifier_key"]) == (
            "keyserver.local/acme",
            20,
            vkey,
        )
    finally:
        await writer.db.dispose()

    if database_url is None:
        erase_log_sqlite(server.data_dir / "keyserver.sqlite3")
    else:
        erase_log_postgres(postgres_server, database_url.rsplit("/", 1)[1])
    rewriter = LogWriter(server.data_dir, database_url)
    try:
        history = releases(0, 23)
        assert history[5]["decision"] == "denied"
        history[5]["decision"] = "granted"
        await rewriter.append(tenant, history)
    finally:
        await rewriter.db.dispose()

    forgetful = monitor(server, token, vkey, "--trust-on-first-use")
    assert forgetful.returncode == 0, forgetful.stderr  # the rewritten log is consistent in itself

    before = state.read_bytes()
    second = monitor(server, token, vkey, "--state", str(state))
    assert second.returncode == 1
    verdict = json.loads(second.stdout.splitlines()[-1])
    assert verdict["verified"] is False
    assert verdict["entry_index"] == 5
    assert "FAILED: entry 5 was rewritten" in second.stderr
    assert "when the log was verified at size 20" in second.stderr
    assert len(second.stdout.splitlines()) == 1  # nothing announced: entries 0-19 were, 20-22 never verified
    assert state.read_bytes() == before  # the failure is kept: the next restart fails the same way
    assert monitor(server, token, vkey, "--state", str(state)).returncode == 1


async def test_a_restarted_monitor_announces_only_new_entries_and_refuses_a_damaged_state(
    keyserver_process: ServerProcess, tmp_path: Path
) -> None:
    writer = LogWriter(keyserver_process.data_dir)
    try:
        tenant, token = await writer.tenant_with_auditor("acme")
        await writer.append(tenant, releases(0, 4))
        vkey = audit(keyserver_process, token, "key").stdout.strip()
        state = tmp_path / "acme.state"
        first = monitor(keyserver_process, token, vkey, "--state", str(state), "--trust-on-first-use")
        assert first.returncode == 0, first.stderr
        await writer.append(tenant, releases(4, 3))
        again = monitor(keyserver_process, token, vkey, "--state", str(state))
        assert again.returncode == 0, again.stderr
        assert [json.loads(line)["index"] for line in again.stdout.splitlines()] == [4, 5, 6]
        assert json.loads(state.read_text())["tree_size"] == 7
    finally:
        await writer.db.dispose()

    state.write_bytes(state.read_bytes()[:-200])  # truncated, say by a full disk under another tool
    # --trust-on-first-use does not make a damaged state go away: only a person moving it aside does.
    damaged = monitor(keyserver_process, token, vkey, "--state", str(state), "--trust-on-first-use")
    assert damaged.returncode == 1
    assert f"error: the state file {state} is refused: it is not a JSON document" in damaged.stderr
    assert "Traceback" not in damaged.stderr


def monitor(server: ServerProcess, token: str, vkey: str, *args: str) -> subprocess.CompletedProcess[str]:
    return audit(
        server, token, "monitor", "--key", vkey, "--iterations", "1", "--interval", "0", "--json", *args
    )


def erase_log_sqlite(path: Path) -> None:
    """Whoever can write the SQLite file: drop the triggers and erase the log, to write another history."""
    database = sqlite3.connect(path)
    for table in ("log_entries", "log_nodes"):
        database.execute(f"DROP TRIGGER {table}_no_delete")
    for table in ("log_entries", "log_nodes", "log_heads"):
        database.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    database.commit()
    database.close()


def erase_log_postgres(server: PostgresServer, database: str) -> None:
    """A PostgreSQL superuser: triggers off for the session, the log erased, to write another history."""

    async def run() -> None:
        conn = await asyncpg.connect(
            host=server.host,
            port=server.port,
            user=server.admin_user,
            password=server.admin_password,
            database=database,
        )
        try:
            await conn.execute("SET session_replication_role = replica")
            for table in ("log_entries", "log_nodes", "log_heads"):
                await conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


def test_usage_errors(keyserver_process: ServerProcess) -> None:
    no_key = audit(keyserver_process, "ks1.x", "verify")
    assert no_key.returncode == 2
    bad_token = audit(keyserver_process, "ks1.nope", "key")
    assert bad_token.returncode == 1
    assert "401" in bad_token.stderr


def test_the_monitor_will_not_start_forgetful_unless_told_to(
    keyserver_process: ServerProcess, tmp_path: Path
) -> None:
    vkey = "keyserver.local/acme+00000000+AQ"  # refused before the key or the server is used
    no_state = monitor(keyserver_process, "ks1.x", vkey)
    assert no_state.returncode == 2
    assert "give --state FILE" in no_state.stderr
    assert "--trust-on-first-use" in no_state.stderr
    missing = monitor(keyserver_process, "ks1.x", vkey, "--state", str(tmp_path / "gone.state"))
    assert missing.returncode == 2
    assert "gone.state does not exist" in missing.stderr
    assert "--trust-on-first-use" in missing.stderr
    assert not (tmp_path / "gone.state").exists()
    present = tmp_path / "present.state"
    present.write_text("{}")
    both = monitor(
        keyserver_process, "ks1.x", vkey, "--state", str(present), "--from-checkpoint", str(present)
    )
    assert both.returncode == 2
    assert "drop --from-checkpoint" in both.stderr


class HostileLog(ThreadingHTTPServer):
    """A keyserver that is not one: it serves a log (real tree, real signed checkpoints) over the log's
    routes, with whatever entries or bodies the test gives it. Only a hostile server can serve these."""

    def __init__(self, log: MemoryLog, entries_body: bytes | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _HostileHandler)
        self.log, self.entries_body = log, entries_body
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _HostileHandler(BaseHTTPRequestHandler):
    server: HostileLog

    def do_GET(self) -> None:
        log = self.server.log
        route, _, query = self.path.removeprefix("/v1/tenants/acme/log").partition("?")
        params = {name: int(value) for name, value in (item.split("=") for item in query.split("&") if item)}
        if route == "/checkpoint":
            self._answer(log.checkpoint().encode(), "text/plain")
        elif route == "/key":
            self._json({"verifier_key": log.vkey})
        elif route == "/entries" and self.server.entries_body is not None:
            self._answer(self.server.entries_body, "application/json")
        elif route == "/entries":
            page = log.entries(params["start"], params["end"])
            self._json({"entries": [{"data": base64.b64encode(data).decode()} for data in page]})
        elif route == "/proofs/inclusion":
            proof = log.inclusion_proof(params["index"], params["tree_size"])
            self._json({"audit_path": [node.hex() for node in proof]})
        elif route == "/proofs/consistency":
            proof = log.consistency_proof(params["first"], params["second"])
            self._json({"proof": [node.hex() for node in proof]})
        else:
            self._answer(b"{}", "application/json", status=404)

    def _json(self, body: dict[str, Any]) -> None:
        self._answer(json.dumps(body).encode(), "application/json")

    def _answer(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def audit_hostile(server: HostileLog, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            KEYSERVER,
            "audit",
            *args,
            "--url",
            server.url,
            "--tenant",
            "acme",
            "--key",
            server.log.vkey,
            "--json",
        ],
        env=clean_env(KEYSERVER_TOKEN="ks1.any"),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "name"),
    [("verify", name) for name in sorted(HOSTILE_ENTRIES)]
    + [("monitor", name) for name in ("nested arrays 30,000 deep", "a 4,301-digit integer", "NaN")],
)
def test_a_hostile_entry_is_a_failed_audit_naming_it_never_a_traceback(command: str, name: str) -> None:
    log = MemoryLog()
    log.add(*(release(n) for n in range(3)))
    log.add_raw(HOSTILE_ENTRIES[name][0])
    server = HostileLog(log)
    try:
        extra = ["--trust-on-first-use", "--iterations", "1"] if command == "monitor" else []
        result = audit_hostile(server, command, *extra)
    finally:
        server.shutdown()
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout.splitlines()[-1])
    assert (verdict["verified"], verdict["entry_index"]) == (False, 3)
    assert "keyserver audit: FAILED: entry 3 is not a canonical log entry" in result.stderr


@pytest.mark.parametrize(
    "body",
    [
        b'{"entries":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"entries":[{"data":' + b"9" * 5000 + b"}]}",
        b'{"entries":"not a list"}',
        b'{"entries":[{"data":"not base64!"}]}',
        b"\xff\xfe",
    ],
    ids=["deep", "huge integer", "not a list", "bad base64", "not UTF-8"],
)
def test_a_hostile_entries_page_is_an_error_never_a_traceback(body: bytes) -> None:
    log = MemoryLog()
    log.add(release(0))
    server = HostileLog(log, entries_body=body)
    try:
        result = audit_hostile(server, "verify")
    finally:
        server.shutdown()
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert "keyserver audit: error:" in result.stderr
