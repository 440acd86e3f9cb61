"""``keyserver audit``: the auditor's commands. They talk to a keyserver over HTTP and trust nothing it
says beyond what the pinned log key signs (audit.verifier)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit.checkpoint import CheckpointError
from audit.cosignature import CosignaturePolicy, parse_cosigner_vkey
from audit.http import HttpLogSource, LogFetchError
from audit.state import MonitorState, StateError, load_state, save_state
from audit.verifier import AuditFailure, AuditReport, LogAuditor, VerifiedHistory
from audit.witnessed import CosignatureReport, check_cosigned

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="verify a tenant's release log (auditor)")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    key = sub.add_parser("key", help="print the log's verifier key, to pin it (trust on first use)")
    _connection(key)

    verify = sub.add_parser("verify", help="fetch every entry and proof and check them")
    _connection(verify)
    _pinned_key(verify)
    verify.add_argument(
        "--from-checkpoint", type=Path, help="a checkpoint saved earlier: prove the log only grew"
    )
    verify.add_argument("--save-checkpoint", type=Path, help="write the verified checkpoint here")
    _witnesses(verify)
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    verify.add_argument(
        "--progress", action="store_true", help="show a progress bar (default: on a terminal)"
    )

    monitor = sub.add_parser("monitor", help="verify, then keep verifying and report new entries")
    _connection(monitor)
    _pinned_key(monitor)
    monitor.add_argument(
        "--state",
        type=Path,
        help="remember what was verified here (written atomically after every poll) and, on a restart,"
        " hold the log to it",
    )
    monitor.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="start without a saved state (none given, or the --state file does not exist yet): trust the"
        " history the log shows first",
    )
    monitor.add_argument(
        "--from-checkpoint",
        type=Path,
        help="a checkpoint saved earlier: the first poll proves the log only grew",
    )
    _witnesses(monitor)
    monitor.add_argument("--interval", type=float, default=10.0, help="seconds between polls (default 10)")
    monitor.add_argument("--iterations", type=int, help="stop after this many polls (default: never)")
    monitor.add_argument("--json", action="store_true", help="one JSON line per new entry")


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the keyserver, e.g. https://keys.example.com")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--token", help="an auditor token (default: $KEYSERVER_TOKEN)")


def _pinned_key(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="the log's verifier key (name+id+key), as pinned")
    key.add_argument("--key-file", type=Path, help="a file holding the verifier key")


def _witnesses(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness you trust (its cosignature/v1 verifier key; repeat): check the log's cosigned"
        " checkpoint is the history verified",
    )
    parser.add_argument("--quorum", type=int, help="cosignatures required (with --witness)")
    parser.add_argument("--max-age", type=int, metavar="SECONDS", help="refuse older cosignatures")


def _witness_policy(args: argparse.Namespace) -> CosignaturePolicy | None:
    if not args.witness:
        if args.quorum is not None or args.max_age is not None:
            raise StateError("--quorum and --max-age go with --witness")
        return None
    try:
        keys = tuple(parse_cosigner_vkey(vkey) for vkey in args.witness)
        max_age = None if args.max_age is None else timedelta(seconds=args.max_age)
        return CosignaturePolicy(keys, args.quorum if args.quorum is not None else len(keys), max_age)
    except (CheckpointError, ValueError) as exc:
        raise StateError(f"witnesses: {exc}") from None


def _check_witnesses(
    source: HttpLogSource, key: str, policy: CosignaturePolicy | None, note: str | None, report: AuditReport
) -> CosignatureReport | None:
    if policy is None or note is None:
        return None
    return check_cosigned(note, key, policy, report.checkpoint, source.consistency_proof, datetime.now(UTC))


def run_audit(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("KEYSERVER_TOKEN")
    if not token:
        print("keyserver: give an auditor token with --token or KEYSERVER_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    if args.audit_command == "monitor" and (refusal := _monitor_usage(args)):
        print(f"keyserver audit monitor: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    source = HttpLogSource(args.url, args.tenant, token)
    try:
        if args.audit_command == "key":
            print(source.verifier_key())
            return EXIT_OK
        key = args.key or args.key_file.read_text().strip()
        if args.audit_command == "verify":
            return _verify(args, source, key)
        return _monitor(args, source, key)
    except (AuditFailure, LogFetchError, StateError) as exc:
        if getattr(args, "json", False):
            failure: dict[str, Any] = {"verified": False, "error": str(exc)}
            if isinstance(exc, AuditFailure) and exc.entry_index is not None:
                failure["entry_index"] = exc.entry_index
            print(json.dumps(failure), flush=True)
        print(
            f"keyserver audit: {'FAILED' if isinstance(exc, AuditFailure) else 'error'}: {exc}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        source.close()


def _monitor_usage(args: argparse.Namespace) -> str | None:
    """Why the monitor must not start as asked, or None. A monitor that starts afresh trusts whatever
    history the log shows it then, so that happens only when asked for."""
    if args.state is None:
        if args.trust_on_first_use:
            return None
        return (
            "give --state FILE to remember what was verified across restarts (without it a restarted"
            " monitor cannot tell that the log rewrote what it already verified), or --trust-on-first-use"
            " to run without one"
        )
    if args.state.exists():
        if args.from_checkpoint is not None:
            return f"the state file {args.state} already anchors the log; drop --from-checkpoint"
        return None
    if args.trust_on_first_use or args.from_checkpoint is not None:
        return None
    return (
        f"the state file {args.state} does not exist: if this is the first run, add --trust-on-first-use"
        " (or --from-checkpoint) to start it; if it was there before, find out why it is gone"
    )


def _verify(args: argparse.Namespace, source: HttpLogSource, key: str) -> int:
    show_progress = args.progress or (sys.stderr.isatty() and not args.json)
    auditor = LogAuditor(source, key, progress=_progress_bar if show_progress else None)
    previous = args.from_checkpoint.read_text() if args.from_checkpoint else None
    policy = _witness_policy(args)
    # Before the log: the cosigned checkpoint is then no larger than the tree verified next.
    note = source.cosigned_checkpoint() if policy is not None else None
    report = auditor.verify(previous)
    if show_progress:
        sys.stderr.write("\n")
    witnessed = _check_witnesses(source, key, policy, note, report)
    if args.save_checkpoint:
        args.save_checkpoint.write_text(report.signed_checkpoint)
    if args.json:
        extra = {} if witnessed is None else {"witnesses": witnessed.as_json()}
        print(json.dumps({"verified": True, **report.as_json(), **extra}, indent=2))
    else:
        print(_summary(report))
        if witnessed is not None:
            print(witnessed.summary())
    return EXIT_OK


def _monitor(args: argparse.Namespace, source: HttpLogSource, key: str) -> int:
    state_path: Path | None = args.state
    auditor = LogAuditor(source, key, keep_leaf_hashes=state_path is not None)
    previous = args.from_checkpoint.read_text() if args.from_checkpoint else None
    saved: MonitorState | None = None
    if state_path is not None and state_path.exists():
        saved = load_state(state_path, key)
        auditor.earlier = saved.history
        previous = saved.signed_checkpoint
    # A restarted monitor verifies every entry again, but announces only those it has not announced.
    announced = 0 if saved is None else saved.history.checkpoint.size

    def announce(index: int, entry: dict[str, Any], data: bytes) -> None:
        if index < announced:
            return
        if args.json:
            # The entry's own canonical bytes, not a re-encoding of what they decoded to.
            print(f'{{"index": {index}, "entry": {data.decode()}}}', flush=True)
        else:
            summary = " ".join(
                f"{k}={entry[k]}" for k in ("kind", "decision", "reason") if isinstance(entry.get(k), str)
            )
            print(f"#{index} {summary}", flush=True)

    auditor.on_entry = announce
    policy = _witness_policy(args)
    polls = 0
    while True:
        note = source.cosigned_checkpoint() if policy is not None else None
        report = auditor.verify(previous)
        witnessed = _check_witnesses(source, key, policy, note, report)
        if witnessed is not None:
            print(witnessed.summary(), file=sys.stderr, flush=True)
        previous = None  # from now on the auditor's own last checkpoint is the reference
        if state_path is not None:
            saved = _save_if_new(state_path, saved, auditor, report, key)
        if not args.json:
            new = report.checkpoint.size - (report.previous_size or 0)
            print(f"verified size {report.checkpoint.size} ({new} new)", file=sys.stderr, flush=True)
        polls += 1
        if args.iterations is not None and polls >= args.iterations:
            return EXIT_OK
        time.sleep(args.interval)


def _save_if_new(
    path: Path, saved: MonitorState | None, auditor: LogAuditor, report: AuditReport, key: str
) -> MonitorState:
    if saved is not None and saved.signed_checkpoint == report.signed_checkpoint:
        return saved  # the file already holds this state
    if auditor.leaf_hashes is None:
        raise ValueError("a monitor with a state file keeps its leaf hashes")
    history = VerifiedHistory(report.checkpoint, bytes(auditor.leaf_hashes))
    state = MonitorState(key, report.signed_checkpoint, history)
    try:
        save_state(path, state)
    except OSError as exc:
        raise StateError(f"cannot save the state file {path}: {exc.strerror}") from None
    return state


def _summary(report: AuditReport) -> str:
    lines = [
        f"verified: {report.checkpoint.origin}, {report.checkpoint.size} entries,"
        f" root {report.checkpoint.root_hash.hex()}",
    ]
    if report.previous_size is not None:
        lines.append(f"consistent with the saved checkpoint at size {report.previous_size}")
    if report.kinds:
        lines.append("entries by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items())))
    for key, counts in sorted(report.decisions.items()):
        lines.append(f"key {key}: {counts.get('granted', 0)} granted, {counts.get('denied', 0)} denied")
    return "\n".join(lines)


def _progress_bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // total if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} entries")
    sys.stderr.flush()
