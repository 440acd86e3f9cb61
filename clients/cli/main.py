"""Entry point of the remote CLI: parse, find the target and token, run one command, map errors.

Exit status as the operator CLI's: 0 success (a dry run: granted), 1 refused or failed (a dry run:
denied), 2 usage error (bad arguments, unreadable files, no URL or token). Errors print the server's
problem detail and what to do next, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from clients.cli.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, run_command
from clients.cli.credentials import CredentialError, resolve_target
from clients.cli.output import Printer
from clients.cli.parser import build_parser, completion_script
from clients.sdk import (
    Conflict,
    Forbidden,
    InvalidArgument,
    KeyserverAPIError,
    KeyserverClient,
    KeyserverUnreachable,
    NotFound,
    Unauthenticated,
    UnexpectedResponse,
)

# What to do about each kind of refusal, after the server's own words.
_HINTS: dict[type[KeyserverAPIError], str] = {
    Unauthenticated: "the token was refused: check it is current and belongs to this keyserver "
    "(a tenant admin can list tokens with `keyserver --url … token list`)",
    Forbidden: "this token's role may not do that: `keyserver --url … whoami` shows its role",
    NotFound: "check the name (and --tenant); another tenant's resources look absent, on purpose",
    Conflict: "the current state does not allow it: list what is there first",
}


def is_remote(argv: Sequence[str]) -> bool:
    """Whether ``keyserver …`` is this CLI: its first argument is --url or --profile."""
    return bool(argv) and argv[0].split("=", 1)[0] in ("--url", "--profile")


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    out = Printer(as_json=bool(args.json), stream=stdout)
    if args.command == "completion":
        (stdout or sys.stdout).write(completion_script(args.shell))
        return EXIT_OK
    try:
        target = resolve_target(
            url=args.url, profile_name=args.profile, tenant=args.tenant, token_file=args.token_file
        )
        if target.token is None:
            raise CredentialError(
                "no token: put it in a file (--token-file, or token_file in the profile) "
                "or in KEYSERVER_TOKEN"
            )
        return asyncio.run(_run(args, target.url, target.token, target.tenant, out))
    except (CredentialError, UsageError, InvalidArgument) as exc:
        return _fail(out, "usage", str(exc), EXIT_USAGE)
    except KeyserverAPIError as exc:
        hint = next((h for kind, h in _HINTS.items() if isinstance(exc, kind)), "")
        detail = exc.detail or exc.title
        extra = f" (reason {exc.reason})" if exc.reason else ""
        return _fail(
            out,
            exc.code,
            f"{detail}{extra}" + (f"\n  {hint}" if hint else ""),
            EXIT_FAILED,
            {"status": exc.status, "reason": exc.reason, "request_id": exc.request_id, "errors": exc.errors},
        )
    except KeyserverUnreachable as exc:
        return _fail(
            out, "unreachable", f"{exc.message}\n  is the keyserver running, and is --url right?", EXIT_FAILED
        )
    except UnexpectedResponse as exc:
        return _fail(
            out,
            "unexpected-response",
            f"{exc.message}\n  is --url the keyserver itself, not a proxy or another service?",
            EXIT_FAILED,
        )
    except KeyboardInterrupt:
        return EXIT_FAILED


async def _run(
    args: argparse.Namespace, url: str, token: str | None, tenant: str | None, out: Printer
) -> int:
    async with KeyserverClient(url, token=token, tenant=tenant, timeout=args.timeout) as client:
        if tenant is None and args.command != "whoami":
            me = await client.whoami()
            if me.tenant is None:
                raise UsageError("this is an operator token: say which tenant with --tenant NAME")
            client = client.for_tenant(me.tenant)
        return await run_command(args, client, out)


def _fail(out: Printer, code: str, message: str, status: int, extra: dict[str, object] | None = None) -> int:
    if out.as_json:
        document: dict[str, object] = {"error": code, "detail": message.split("\n", 1)[0], **(extra or {})}
        out.stream.write(json.dumps(document, sort_keys=True) + "\n")
        out.stream.flush()
    print(f"keyserver: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
