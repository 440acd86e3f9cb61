"""``log show`` and ``log tail``: a tenant's release log, filtered, for people or as JSON.

``tail --follow`` does not take the server's word for what it prints: each new checkpoint must be signed
by the log's key (pinned with --verifier-key, or fetched once when the tail starts), must extend the one
before it (consistency proof), and each new entry must be in it (inclusion proof). Anything else stops the
tail with exit 1. ``keyserver audit verify`` checks a whole log the same way.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from audit import merkle
from audit.checkpoint import Checkpoint, CheckpointError, parse_signed_checkpoint, verify_checkpoint

if TYPE_CHECKING:
    from clients.cli.output import Printer
    from clients.sdk import KeyserverClient, LogEntry

EXIT_OK, EXIT_FAILED = 0, 1
READ_PAGE = 1000


class LogFilter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.key = args.key
        self.decision = args.decision
        self.reason = args.reason
        self.kind = args.kind
        self.since = _time(getattr(args, "since", None), "--since")
        self.until = _time(getattr(args, "until", None), "--until")

    def matches(self, entry: dict[str, Any]) -> bool:
        key = entry.get("key")
        if self.key is not None and not (isinstance(key, dict) and key.get("name") == self.key):
            return False
        if self.decision is not None and entry.get("decision") != self.decision:
            return False
        if self.reason is not None and entry.get("reason") != self.reason:
            return False
        if self.kind is not None and entry.get("kind") != self.kind:
            return False
        when = _entry_time(entry)
        if self.since is not None and (when is None or when < self.since):
            return False
        return not (self.until is not None and (when is None or when >= self.until))


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    from clients.cli.commands import UsageError

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} takes an ISO 8601 time with a zone, e.g. 2026-12-04T10:00:00Z") from None
    if value.tzinfo is None:
        raise UsageError(f"{option} needs a zone (…Z or …+01:00): {text!r}")
    return value


def _entry_time(entry: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(entry.get("time")))
    except ValueError:
        return None


def row(index: int, entry: dict[str, Any], out: Printer) -> list[Any]:
    subject = describe(entry)
    return [
        index,
        str(entry.get("time", ""))[:19].replace("T", " "),
        entry.get("kind"),
        subject,
        out.decision(entry.get("decision")),
        entry.get("reason") or "",
        who(entry),
    ]


def describe(entry: dict[str, Any]) -> str:
    """What an entry is about: a key or policy version, a limit's scope, an AK, an anchor, a set."""
    for member in ("key", "policy", "reference_values", "anchor"):
        value = entry.get(member)
        if isinstance(value, dict) and "name" in value:
            version = value.get("version")
            return f"{value['name']}@{version}" if version is not None else str(value["name"])
    token = entry.get("token")
    if isinstance(token, dict) and isinstance(token.get("role"), str):  # token-issued, token-revoked
        return f"{token['role']} {str(token.get('id', ''))[:8]}"
    for member in ("scope", "ak_name", "name", "signer", "ek_sha256"):
        value = entry.get(member)
        if isinstance(value, str):
            return value if member != "ek_sha256" else f"EK {value[:16]}"
    return ""


def who(entry: dict[str, Any]) -> str:
    """Who asked: a token (admin changes) or, for a release, the loader's ephemeral key thumbprint."""
    principal = entry.get("principal")
    if isinstance(principal, str) and principal:
        return principal[:18]
    if entry.get("issuer_role") == "host":  # a token made or revoked on the server's command line
        return "host"
    thumbprint = entry.get("requester_thumbprint")
    return f"key {thumbprint[:12]}" if isinstance(thumbprint, str) and thumbprint else ""


HEADERS = ["INDEX", "TIME (UTC)", "KIND", "SUBJECT", "DECISION", "REASON", "BY"]


def _document(index: int, entry: LogEntry) -> dict[str, Any]:
    return {"index": index, "leaf_hash": merkle.leaf_hash(entry.data).hex(), "entry": entry.entry}


async def _read(client: KeyserverClient, start: int, end: int) -> Iterable[tuple[int, LogEntry]]:
    found: list[tuple[int, LogEntry]] = []
    for first in range(start, end, READ_PAGE):
        last = min(first + READ_PAGE, end)
        found.extend(zip(range(first, last), await client.auditor.entries(first, last), strict=True))
    return found


async def show_log(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    selector = LogFilter(args)
    checkpoint, _signatures = parse_signed_checkpoint(await client.auditor.checkpoint())
    entries = [(i, e) for i, e in await _read(client, 0, checkpoint.size) if selector.matches(e.entry)]
    if args.limit > 0:
        entries = entries[-args.limit :]
    document = {"tree_size": checkpoint.size, "entries": [_document(i, e) for i, e in entries]}
    human = out.table(HEADERS, [row(i, e.entry, out) for i, e in entries])
    out.emit(document, f"{human}\n({len(entries)} of {checkpoint.size} entries)")
    return EXIT_OK


async def tail_log(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    selector = LogFilter(args)
    vkey = args.verifier_key or (await client.auditor.log_key()).verifier_key
    try:
        head = verify_checkpoint(await client.auditor.checkpoint(), vkey)
        start = max(0, head.size - max(args.lines, 0)) if args.lines else head.size
        await _print_new(client, selector, out, head, start)
        while args.follow:
            await asyncio.sleep(args.interval)
            newer = verify_checkpoint(await client.auditor.checkpoint(), vkey)
            if newer.size < head.size:
                raise merkle.ProofError(f"the log shrank from {head.size} to {newer.size} entries")
            if newer.size == head.size:
                if newer.root_hash != head.root_hash:
                    raise merkle.ProofError(f"two different roots for tree size {head.size}")
                continue
            proof = await client.auditor.consistency_proof(head.size, newer.size)
            merkle.verify_consistency(head.size, newer.size, head.root_hash, newer.root_hash, proof.proof)
            await _print_new(client, selector, out, newer, head.size, verify=True)
            head = newer
    except (CheckpointError, merkle.ProofError) as exc:
        print(f"keyserver: the log does not verify: {exc}", flush=True, file=__import__("sys").stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _print_new(
    client: KeyserverClient,
    selector: LogFilter,
    out: Printer,
    head: Checkpoint,
    start: int,
    *,
    verify: bool = False,
) -> None:
    if start >= head.size:
        return
    for index, entry in await _read(client, start, head.size):
        if verify:
            proof = await client.auditor.inclusion_proof(index, head.size)
            merkle.verify_inclusion(
                merkle.leaf_hash(entry.data), index, head.size, proof.audit_path, head.root_hash
            )
        if not selector.matches(entry.entry):
            continue
        if out.as_json:  # one JSON document per line: a stream a script can read as it comes
            import json

            out.stream.write(json.dumps(_document(index, entry), sort_keys=True) + "\n")
            out.stream.flush()
        else:
            out.emit(None, "  ".join(str(c) for c in row(index, entry.entry, out)))
