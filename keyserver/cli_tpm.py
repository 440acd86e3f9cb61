"""``keyserver tpm pin-vendor-cas``: trust the TPM manufacturers' EK CAs shipped with the package.

Adds each shipped certificate (keyserver/evidence/tpm/ek_cas/, PROVENANCE.md there) as an ``ek-ca``
anchor of one tenant, through the tenant admin's API, so every addition is a release-log entry like any
other anchor. Idempotent: a certificate that is already an anchor is reported, not added twice. A
certificate the keyserver cannot use (see PROVENANCE.md) is skipped with its reason. Exits 0 when every
usable certificate is an anchor afterwards, 1 when the keyserver refused one, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from clients.sdk import Conflict, KeyserverClient, KeyserverClientError
from keyserver.evidence.tpm.vendor_cas import VENDORS, vendor_ek_cas

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def add_tpm_commands(commands: Any) -> None:
    tpm = commands.add_parser("tpm", help="TPM trust for a tenant, through a keyserver's API")
    sub = tpm.add_subparsers(dest="tpm_command", required=True)
    pin = sub.add_parser("pin-vendor-cas", help="add the shipped TPM manufacturers' EK CAs as ek-ca anchors")
    pin.add_argument("--url", required=True, help="the keyserver, e.g. https://keys.example.com")
    pin.add_argument("--tenant", required=True)
    pin.add_argument("--token", help="a tenant-admin token (default: $KEYSERVER_TOKEN)")
    pin.add_argument(
        "--vendor",
        action="append",
        choices=sorted(set(VENDORS.values())),
        help="only this vendor's CAs (repeatable; default: all)",
    )
    pin.add_argument("--json", action="store_true", help="print one JSON document")


async def pin_vendor_cas(client: KeyserverClient, vendors: frozenset[str] | None) -> dict[str, Any]:
    """Add the shipped usable CAs as ``ek-ca`` anchors; what was added, already there, or skipped."""
    outcome: dict[str, Any] = {"added": [], "already": [], "skipped": {}}
    for ca in vendor_ek_cas(vendors):
        if ca.unusable is not None:
            outcome["skipped"][ca.name] = ca.unusable
            continue
        try:
            await client.admin.add_anchor("ek-ca", f"{ca.vendor}: {ca.name}", ca.pem)
        except Conflict:
            outcome["already"].append(ca.name)
            continue
        outcome["added"].append(ca.name)
    return outcome


def run_tpm(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("KEYSERVER_TOKEN")
    if not token:
        print("keyserver: give a tenant-admin token with --token or KEYSERVER_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    vendors = frozenset(args.vendor) if args.vendor else None

    async def run() -> dict[str, Any]:
        async with KeyserverClient(args.url, token=token, tenant=args.tenant) as client:
            return await pin_vendor_cas(client, vendors)

    try:
        outcome = asyncio.run(run())
    except KeyserverClientError as exc:
        print(f"keyserver: the keyserver refused an anchor: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(outcome, sort_keys=True))
    else:
        print(f"added {len(outcome['added'])} ek-ca anchors, {len(outcome['already'])} were already anchors")
        for name, reason in sorted(outcome["skipped"].items()):
            print(f"skipped {name}: {reason}")
    return EXIT_OK
