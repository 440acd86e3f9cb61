"""The ``keyserver`` command: one entry point for serving, the database, tenants and tokens.

Administrative commands act on the database directly, as the operator: whoever can run them on the
server host already holds the data directory. Output is for people by default and one JSON document
with ``--json``. Exit status: 0 success, 1 refused or failed (reason on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from keyserver.bootstrap import initialise
from keyserver.cli_audit import add_audit_commands, run_audit
from keyserver.cli_evidence import add_evidence_commands, run_evidence
from keyserver.cli_policy import add_policy_commands, run_policy
from keyserver.cli_threshold import add_key_commands, run_key
from keyserver.cli_tpm import add_tpm_commands, run_tpm
from keyserver.cli_witness import add_witness_commands, run_witness
from keyserver.config import Settings
from keyserver.db import migrate
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.errors import InvalidRequest, KeyserverError, NotFound
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import (
    Role,
    create_tenant,
    issue_tenant_token,
    issue_token,
    list_tenants,
    list_tokens,
    revoke_tenant_token,
    revoke_token,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_DURATION_RE = re.compile(r"^(\d+)([smhd])\Z")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    match = _DURATION_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 12h or 30d")
    return timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyserver",
        description=__doc__.splitlines()[0],
        epilog="Against a remote keyserver: keyserver --url URL … or keyserver --profile NAME … "
        "(keyserver --url x --help; docs/cli.md)",
    )
    parser.add_argument("--data-dir", type=Path, help="state directory (env KEYSERVER_DATA_DIR)")
    parser.add_argument("--database-url", help="database URL (env KEYSERVER_DATABASE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (default uvloop: measured faster, docs/performance.md)",
    )
    serve.add_argument(
        "--http",
        choices=("httptools", "h11"),
        default="httptools",
        help="HTTP/1.1 parser (default httptools: measured faster, docs/performance.md)",
    )

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    upgrade = db.add_parser("upgrade", help="migrate the schema up (default: to the newest revision)")
    upgrade.add_argument("--revision", default="head")
    upgrade.add_argument(
        "--service-role",
        help="PostgreSQL: then grant ROLE (the one the service connects as) exactly the service's"
        " privileges; run as the schema's owner (env KEYSERVER_SERVICE_ROLE)",
    )
    downgrade = db.add_parser("downgrade", help="migrate the schema down to REVISION (base = empty)")
    downgrade.add_argument("revision")
    db.add_parser("current", help="print the schema revision")

    tenant = commands.add_parser("tenant", help="tenants").add_subparsers(
        dest="tenant_command", required=True
    )
    tenant_create = tenant.add_parser("create", help="create a tenant")
    tenant_create.add_argument("name")
    _json_flag(tenant_create)
    _json_flag(tenant.add_parser("list", help="list tenants"))

    token = commands.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", required=True
    )
    token_create = token.add_parser("create", help="issue a token (printed once)")
    _token_owner(token_create)
    token_create.add_argument("--role", choices=[r.value for r in Role if r is not Role.OPERATOR])
    token_create.add_argument("--description", default="")
    token_create.add_argument("--expires-in", type=parse_duration, help="e.g. 30d, 12h (default: never)")
    _json_flag(token_create)
    token_list = token.add_parser("list", help="list tokens (never their secrets)")
    _token_owner(token_list)
    _json_flag(token_list)
    token_revoke = token.add_parser("revoke", help="revoke a token")
    token_revoke.add_argument("token_id", type=uuid.UUID)
    _token_owner(token_revoke)
    _json_flag(token_revoke)

    add_audit_commands(commands)
    add_evidence_commands(commands)
    add_policy_commands(commands)
    add_witness_commands(commands)
    add_key_commands(commands)
    add_tpm_commands(commands)
    demo = commands.add_parser(
        "demo", help="run the confidential-inference demo end to end (needs `make demo`)"
    )
    demo.add_argument(
        "--workdir", help="keep the demo's processes' files here (default: a temporary directory)"
    )
    demo.add_argument("--json", action="store_true", help="print the outcomes as one JSON document")
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _token_owner(parser: argparse.ArgumentParser) -> None:
    owner = parser.add_mutually_exclusive_group(required=True)
    owner.add_argument("--tenant", help="the tenant's name")
    owner.add_argument("--operator", action="store_true", help="operator tokens")


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env().with_overrides(
        data_dir=args.data_dir,
        database_url=args.database_url,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )


# --- commands ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from keyserver.logs import configure_logging

    configure_logging(settings.log_level)
    # Initialise once here, before any worker starts, so the operator credential is printed once and
    # workers never race each other over migrations. A database that does not answer is no reason not to
    # start: the workers run the same checks when it does, and serve nothing before (keyserver.readiness).
    try:
        asyncio.run(_with_db(settings, lambda db: initialise(db)))
    except KeyserverError:
        raise
    except Exception as exc:  # the driver's own errors: refused, timed out, starting up
        logging.getLogger("keyserver.serve").warning(
            "the database did not answer at start; serving once it does",
            extra={"fields": {"error": type(exc).__name__}},
        )
    if args.workers > 1 and settings.effective_database_url.startswith("sqlite"):
        # Allowed (it is correct), but a release holds SQLite's one write lock from its first statement
        # to its commit: a second process only contends for it (docs/performance.md, "SQLite").
        logging.getLogger("keyserver.serve").warning(
            "more than one worker on SQLite adds lock contention, not throughput: SQLite has one writer."
            " Use --workers 1, or PostgreSQL for more",
            extra={"fields": {"workers": args.workers}},
        )
    # Workers are separate processes that build their own app from the environment.
    os.environ["KEYSERVER_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        os.environ["KEYSERVER_DATABASE_URL"] = settings.database_url
    config = uvicorn.Config(
        "keyserver.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop=args.loop,
        http=args.http,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    from keyserver.serving import run_until_stopped

    if run_until_stopped(config):
        return EXIT_OK
    print(
        "keyserver: the server stopped without being asked to (a worker failed to start? see the log above)",
        file=sys.stderr,
    )
    return EXIT_FAILED


async def _with_db(settings: Settings, action: Callable[[Database], Awaitable[Any]]) -> Any:
    db = Database(settings)
    try:
        return await action(db)
    finally:
        await db.dispose()


async def _db_command(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> int:
        if settings.is_sqlite and settings.database_url is None:
            from keyserver.bootstrap import prepare_data_dir

            prepare_data_dir(settings)
        if args.db_command == "upgrade":
            await migrate.upgrade(db.engine, args.revision)
            service_role = args.service_role or os.environ.get("KEYSERVER_SERVICE_ROLE")
            if service_role:
                from keyserver.db.grants import grant_service_role

                tables = await grant_service_role(db.engine, service_role)
                granted = f"granted {service_role} the service's privileges on {len(tables)} tables"
                print(granted, file=sys.stderr)
        elif args.db_command == "downgrade":
            await migrate.downgrade(db.engine, args.revision)
        print(await migrate.current_revision(db.engine) or "base")
        return EXIT_OK

    result: int = await _with_db(settings, run)
    return result


async def _admin_command(args: argparse.Namespace, settings: Settings) -> int:
    async def run(db: Database) -> int:
        await initialise(db)
        if args.command != "tenant":
            await _token_command(args, db)
            return EXIT_OK
        async with db.transaction(Scope.for_operator()) as session:
            if args.tenant_command == "create":
                tenant = await create_tenant(session, args.name)
                _emit(args, _tenant_doc(tenant), f"created tenant {tenant.name} ({tenant.id})")
            else:
                tenants = await list_tenants(session)
                _emit(
                    args, [_tenant_doc(t) for t in tenants], "\n".join(f"{t.name}\t{t.id}" for t in tenants)
                )
        return EXIT_OK

    result: int = await _with_db(settings, run)
    return result


async def _token_command(args: argparse.Namespace, db: Database) -> None:
    # The operator's scope for its own tokens and for reading; a tenant's token is made or revoked in the
    # tenant's scope, and logged in its log, in a transaction of its own (SQLite has one writer at a time).
    async with db.transaction(Scope.for_operator()) as session:
        tenant = await _owner(args, session)
        if args.token_command == "list":
            tokens = await list_tokens(session, None if tenant is None else tenant.id)
    tenant_name = None if tenant is None else tenant.name
    if args.token_command == "create":
        if args.operator:
            role = Role.OPERATOR
        elif args.role is None:
            raise InvalidRequest("say which role the token has: --role tenant-admin|ci-signer|auditor")
        else:
            role = Role(args.role)
        if tenant is None:
            async with db.transaction(Scope.for_operator()) as session:
                issued = await issue_token(
                    session,
                    tenant_id=None,
                    role=role,
                    description=args.description,
                    expires_in=args.expires_in,
                )
        else:  # a tenant's token is in the tenant's log, wherever it is made
            log = await _release_log(db)
            async with db.transaction(Scope.for_tenant(tenant.id)) as scoped:
                issued = await issue_tenant_token(
                    scoped,
                    log,
                    tenant,
                    None,
                    role=role,
                    description=args.description,
                    expires_in=args.expires_in,
                )
        doc = {**_token_doc(issued.token, tenant_name), "token": issued.secret}
        _emit(args, doc, f"{issued.secret}\n(token id {issued.token.id}, role {role}; shown once)")
    elif args.token_command == "list":
        lines = [
            f"{t.id}\t{t.role}\t{'revoked' if t.revoked_at else 'active'}\t{t.description}" for t in tokens
        ]
        _emit(args, [_token_doc(t, tenant_name) for t in tokens], "\n".join(lines))
    elif tenant is None:
        async with db.transaction(Scope.for_operator()) as session:
            token = await revoke_token(session, None, args.token_id)
        _emit(args, _token_doc(token, tenant_name), f"revoked {token.id}")
    else:
        log = await _release_log(db)
        async with db.transaction(Scope.for_tenant(tenant.id)) as scoped:
            token = await revoke_tenant_token(scoped, log, tenant, None, args.token_id)
        _emit(args, _token_doc(token, tenant_name), f"revoked {token.id}")


async def _release_log(db: Database) -> ReleaseLog:
    """The tenants' logs, signed with their keys under the configured backend, as the service's start
    makes it: the KEK created only if the database has none recorded, and checked against the record."""
    from keyserver.backends.factory import backend_from_settings
    from keyserver.kek_identity import check_kek_identity, kek_recorded
    from keyserver.releaselog.signing import LogSigner

    backend = backend_from_settings(db.settings, create_kek=not await kek_recorded(db))
    await check_kek_identity(db, backend)
    return ReleaseLog(LogSigner(backend, db.settings.log_origin))


async def _owner(args: argparse.Namespace, session: Any) -> Tenant | None:
    if args.operator:
        return None
    for tenant in await list_tenants(session):
        if tenant.name == args.tenant:
            return tenant
    raise NotFound(f"no tenant named {args.tenant!r}; see `keyserver tenant list`")


def _tenant_doc(tenant: Any) -> dict[str, Any]:
    return {"id": str(tenant.id), "name": tenant.name, "created_at": tenant.created_at.isoformat()}


def _token_doc(token: Any, tenant_name: str | None) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": str(token.id),
        "tenant": tenant_name,
        "role": token.role,
        "description": token.description,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
    }


def _emit(args: argparse.Namespace, document: Any, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2))
    elif human:
        print(human)


def main(argv: Sequence[str] | None = None) -> int:
    from clients.cli.main import is_remote

    arguments = list(sys.argv[1:] if argv is None else argv)
    if is_remote(arguments):  # `keyserver --url …` / `--profile …`: the remote CLI (docs/cli.md)
        from clients.cli.main import main as remote_main

        return remote_main(arguments)
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    if args.command == "audit":  # a client of some keyserver: no local settings involved
        return run_audit(args)
    if args.command == "witness":  # a witness of other keyservers' logs: its own key, config, database
        return run_witness(args)
    if args.command == "key":  # offline: the model owner's key in, shares and commitment out
        return run_key(args)
    if args.command == "tpm":  # a tenant admin's client of some keyserver
        return run_tpm(args)
    if args.command == "evidence":  # offline: files in, claims out
        return run_evidence(args)
    if args.command == "policy":  # offline: policy + claims in, decision out
        return run_policy(args)
    if args.command == "demo":  # the client shims and a keyserver of its own, in a temporary directory
        try:
            from clients.demo.run import main as run_demo
        except ImportError as exc:  # numpy and tpm2-pytss are the loader's, not the service's
            print(f"keyserver demo needs the loader's packages ({exc.name}): `make demo`", file=sys.stderr)
            return 1
        return run_demo(
            (["--workdir", args.workdir] if args.workdir else []) + (["--json"] if args.json else [])
        )
    try:
        settings = settings_from(args)
        if args.command == "serve":
            return cmd_serve(args, settings)
        if args.command == "db":
            return asyncio.run(_db_command(args, settings))
        return asyncio.run(_admin_command(args, settings))
    except KeyserverError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.code, "detail": exc.message}))
        print(f"keyserver: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
