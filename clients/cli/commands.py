"""The remote CLI's commands: each reads its files, makes SDK calls, and prints for people or JSON."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from clients.cli.logview import show_log, tail_log
from clients.cli.output import Printer
from clients.sdk import KeyserverClient, make_bundle
from clients.sdk.bundles import SignerPrivateKey

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_INPUT_FILE_BYTES = 8 * 1024 * 1024


class UsageError(Exception):
    """A file or argument the CLI cannot use; exit 2 with this message."""


def read_bytes(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_INPUT_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT_FILE_BYTES:
        raise UsageError(f"{what} {path} is larger than {MAX_INPUT_FILE_BYTES} bytes")
    return data


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        document = json.loads(read_bytes(path, what))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what} {path} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{what} {path} must hold a JSON object")
    return document


def pem_or_der(data: bytes) -> bytes:
    """DER bytes from a file holding DER or one PEM block."""
    if data.lstrip().startswith(b"-----BEGIN"):
        lines = [
            line for line in data.decode("ascii", "replace").splitlines() if line and "-----" not in line
        ]
        try:
            return base64.b64decode("".join(lines), validate=True)
        except (binascii.Error, ValueError):
            raise UsageError("the PEM block is not valid base64") from None
    return data


Handler = Callable[[argparse.Namespace, KeyserverClient, Printer], Awaitable[int]]


async def run_command(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    key = (
        args.command
        if args.command in ("whoami",)
        else f"{args.command} {getattr(args, 'area', '')} {args.action}"
    )
    handler = _HANDLERS[" ".join(key.split())]
    return await handler(args, client, out)


# --- whoami and tokens --------------------------------------------------------------------------------


async def whoami(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    me = await client.whoami()
    out.emit(me, f"token {me.token_id}\nrole  {me.role}\ntenant {me.tenant or '(operator)'}")
    return EXIT_OK


async def token_create(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    expires = timedelta(seconds=args.expires_in) if args.expires_in else None
    issued = await client.admin.issue_token(args.role, description=args.description, expires_in=expires)
    out.emit(
        {"token": issued.token, "info": issued.info},
        f"{issued.token}\n(token id {issued.info.id}, role {issued.info.role}; shown once: store it in a "
        "file with mode 600)",
    )
    return EXIT_OK


async def token_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    tokens = await client.admin.list_tokens()
    rows = [
        [t.id, t.role, "revoked" if t.revoked_at else "active", t.expires_at, t.description] for t in tokens
    ]
    out.emit(tokens, out.table(["ID", "ROLE", "STATE", "EXPIRES", "DESCRIPTION"], rows))
    return EXIT_OK


async def token_revoke(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    token = await client.admin.revoke_token(args.token_id)
    out.emit(token, f"revoked token {token.id}")
    return EXIT_OK


# --- keys -----------------------------------------------------------------------------------------------


def _key_table(out: Printer, keys: list[Any]) -> str:
    rows = [[k.name, k.policy, k.state, k.backend, k.versions, k.live_versions] for k in keys]
    return out.table(["NAME", "POLICY", "STATE", "BACKEND", "VERSIONS", "LIVE"], rows)


async def key_create(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    material = read_bytes(args.material, "key material") if getattr(args, "material", None) else None
    key = await client.admin.create_key(args.name, args.policy, material=material)
    out.emit(key, f"created key {key.name} (version {key.versions[-1]}) under policy {key.policy}")
    return EXIT_OK


async def key_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    keys = await client.admin.list_keys()
    out.emit(keys, _key_table(out, keys))
    return EXIT_OK


async def key_rotate(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    key = await client.admin.rotate_key(args.name)
    out.emit(key, f"rotated {key.name}: versions {', '.join(map(str, key.versions))}")
    return EXIT_OK


async def key_disable(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    key = await client.admin.set_key_state(args.name, "disabled" if args.action == "disable" else "enabled")
    out.emit(key, f"key {key.name} is {key.state}")
    return EXIT_OK


# --- policies ----------------------------------------------------------------------------------------


async def policy_add(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    document = read_json(args.file, "the policy")
    policy = await client.admin.add_policy(args.name, document)
    if args.activate:
        policy = await client.admin.activate_policy(policy.name, policy.version)
    state = "active" if policy.active else f"not active yet: `policy activate {policy.name} {policy.version}`"
    out.emit(policy, f"added policy {policy.name} version {policy.version} ({state})")
    return EXIT_OK


async def policy_activate(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    policy = await client.admin.activate_policy(args.name, args.version)
    out.emit(policy, f"policy {policy.name} version {policy.version} is active (its examples passed)")
    return EXIT_OK


async def policy_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    policies = await client.admin.list_policies()
    rows = [[p.name, p.version, "active" if p.active else "", p.sha256[:16], p.created_at] for p in policies]
    out.emit(policies, out.table(["NAME", "VERSION", "ACTIVE", "SHA256", "CREATED"], rows))
    return EXIT_OK


async def policy_dry_run(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    if args.evidence is not None:
        recorded = read_json(args.evidence, "the evidence file")
        missing = {"evidence", "nonce", "ephemeral_key"} - set(recorded)
        if missing:
            raise UsageError(
                f"the evidence file needs {', '.join(sorted(missing))}: it is "
                '{"evidence": {…}, "nonce": "<base64url>", "ephemeral_key": {<public JWK>}}'
            )
        try:
            nonce = base64.urlsafe_b64decode(str(recorded["nonce"]) + "==")
        except (binascii.Error, ValueError):
            raise UsageError("the evidence file's nonce is not base64url") from None
        result = await client.admin.dry_run_evidence(
            args.name,
            recorded["evidence"],
            nonce=nonce,
            ephemeral_key=recorded["ephemeral_key"],
            version=args.version,
        )
    else:
        claims = read_json(args.claims, "the claims")
        result = await client.admin.dry_run(args.name, claims.get("claims", claims), version=args.version)
    lines = []
    if result.evidence_verified is not None:
        verdict = "verified" if result.evidence_verified else out.paint("NOT verified", "red")
        lines.append(f"evidence {verdict}" + ("" if result.evidence_verified else f": {result.detail}"))
    for check in result.results:
        mark = out.paint("pass", "green") if check.get("passed") else out.paint("FAIL", "red")
        lines.append(f"{mark}  {check.get('rule', check.get('name', '?'))}: {check.get('detail', '')}")
    verdict = "granted" if result.granted else f"denied ({result.reason})"
    lines.append(out.decision("granted") if result.granted else out.paint(verdict, "red"))
    if result.policy:
        lines.append(f"policy {result.policy.get('name')} version {result.policy.get('version')}")
    out.emit(result, "\n".join(lines))
    return EXIT_OK if result.granted else EXIT_FAILED


# --- reference values and signers ------------------------------------------------------------------


def _signing_key(path: Path, passphrase_env: str | None) -> SignerPrivateKey:
    password = None
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise UsageError(f"--key-pass-env names {passphrase_env}, which is not set")
        password = value.encode()
    try:
        key = load_pem_private_key(read_bytes(path, "the signing key"), password=password)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot load the signing key {path}: {exc}") from None
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise UsageError("a CI signing key is Ed25519 or ECDSA P-256/P-384")
    return key


async def refs_publish(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    given = read_json(args.bundle, "the bundle")
    tenant = client.tenant or ""
    if given.get("tenant", tenant) != tenant:
        raise UsageError(f"the bundle names tenant {given.get('tenant')!r}, but this is tenant {tenant!r}")
    missing = {"name", "tee", "values"} - set(given)
    if missing:
        raise UsageError(f"the bundle needs {', '.join(sorted(missing))} ({{name, tee, values}})")
    bundle = make_bundle(tenant, given["name"], given["tee"], given["values"])
    if args.signing_key is not None:
        published = await client.ci.publish(
            args.signer, bundle, _signing_key(args.signing_key, args.key_pass_env)
        )
    else:
        raw = read_bytes(args.signature, "the signature")
        try:
            signature = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            signature = raw
        published = await client.ci.publish_bundle(args.signer, bundle, signature)
    out.emit(
        published,
        f"published {published.name} version {published.version} ({published.tee}, {published.source})",
    )
    return EXIT_OK


async def refs_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    sets = await client.ci.list_reference_values()
    rows = [
        [r.name, r.version, r.tee, "revoked" if r.revoked_at else "", r.source, r.created_at] for r in sets
    ]
    out.emit(sets, out.table(["NAME", "VERSION", "TEE", "REVOKED", "SOURCE", "CREATED"], rows))
    return EXIT_OK


async def refs_revoke(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    revoked = await client.admin.revoke_reference_values(args.name, args.version)
    out.emit(revoked, f"revoked {revoked.name} version {revoked.version}")
    return EXIT_OK


async def signer_register(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    pem = read_bytes(args.public_key, "the public key").decode("ascii", "replace")
    signer = await client.admin.register_signer(args.name, pem)
    out.emit(signer, f"registered CI signer {signer.name} (key sha256 {signer.sha256[:16]}…)")
    return EXIT_OK


async def signer_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    signers = await client.admin.list_signers()
    rows = [[s.name, s.sha256[:16], s.created_at, s.revoked_at] for s in signers]
    out.emit(signers, out.table(["NAME", "KEY SHA256", "CREATED", "REVOKED"], rows))
    return EXIT_OK


async def signer_revoke(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    signer = await client.admin.revoke_signer(args.name)
    out.emit(signer, f"revoked CI signer {signer.name}")
    return EXIT_OK


# --- TPM trust ----------------------------------------------------------------------------------------


async def anchor_add(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    certificate = read_bytes(args.certificate, "the certificate")
    anchor = await client.admin.add_anchor(args.kind, args.name, certificate)
    out.emit(anchor, f"trusting {anchor.kind} {anchor.name} ({anchor.id})")
    return EXIT_OK


async def anchor_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    anchors = await client.admin.list_anchors()
    rows = [[a.id, a.kind, a.name, a.sha256[:16], a.created_at] for a in anchors]
    out.emit(anchors, out.table(["ID", "KIND", "NAME", "SHA256", "CREATED"], rows))
    return EXIT_OK


async def anchor_remove(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    await client.admin.delete_anchor(args.anchor_id)
    out.emit({"removed": args.anchor_id}, f"removed anchor {args.anchor_id}")
    return EXIT_OK


async def ek_pin(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    ek = pem_or_der(read_bytes(args.ek_public, "the EK public key"))
    pinned = await client.admin.pin_ek(ek, description=args.description)
    out.emit(pinned, f"pinned EK sha256 {pinned.sha256}")
    return EXIT_OK


async def ek_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    pinned = await client.admin.list_pinned_eks()
    rows = [[p.sha256, p.description, p.created_at] for p in pinned]
    out.emit(pinned, out.table(["SHA256", "DESCRIPTION", "PINNED"], rows))
    return EXIT_OK


async def ek_unpin(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    await client.admin.unpin_ek(args.sha256)
    # Removing the pin stops new enrolments only: say which AKs of this EK are trusted still, so that a
    # retired or compromised TPM is not taken for gone while its AKs can still release keys.
    still = [
        a.ak_name
        for a in await client.admin.list_aks()
        if a.ek_sha256 == args.sha256 and a.revoked_at is None
    ]
    text = f"unpinned EK sha256 {args.sha256}"
    if still:
        text += (
            f"; {len(still)} AK(s) it enrolled are trusted until revoked (tpm ak revoke NAME): "
            + ", ".join(still)
        )
    out.emit({"unpinned": args.sha256, "aks_still_trusted": still}, text)
    return EXIT_OK


async def ak_list(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    aks = await client.admin.list_aks()
    out.emit(aks, out.table(["AK NAME", "METHOD"], [[a.ak_name, a.method] for a in aks]))
    return EXIT_OK


async def ak_revoke(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    ak = await client.admin.revoke_ak(args.ak_name)
    out.emit(ak, f"revoked AK {ak.ak_name}")
    return EXIT_OK


# --- limits -------------------------------------------------------------------------------------------


def _limit_line(limit: dict[str, Any]) -> list[Any]:
    budget = (
        "unlimited"
        if limit.get("max_releases") is None
        else f"{limit['max_releases']} per {limit['window_seconds']}s"
    )
    return [limit.get("scope"), limit.get("counts"), budget, limit.get("source")]


async def limits_show(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    limits = await client.admin.release_limits()
    rows = [
        _limit_line(limits["tenant"]),
        *(_limit_line(k) for k in limits["keys"]),
        _limit_line(limits["key_default"]),
    ]
    out.emit(limits, out.table(["SCOPE", "COUNTS", "LIMIT", "SOURCE"], rows))
    return EXIT_OK


async def limits_set(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    key = None if args.tenant_wide else args.key
    if args.action == "set":
        limit = await client.admin.set_release_limit(
            key, None if args.unlimited else args.max_releases, args.window
        )
    else:
        limit = await client.admin.remove_release_limit(key)
    out.emit(limit, out.table(["SCOPE", "COUNTS", "LIMIT", "SOURCE"], [_limit_line(limit)]))
    return EXIT_OK


# --- witnesses ----------------------------------------------------------------------------------------


def _witness_rows(config: dict[str, Any], out: Printer) -> str:
    rows = [[w.get("name"), w.get("url"), w.get("vkey")] for w in config.get("witnesses", [])]
    table = out.table(["NAME", "URL", "VKEY"], rows)
    if not rows:
        return "no witnesses: receipts carry no cosignatures"
    if config.get("quorum") is None:
        return table
    return f"{table}\nquorum {config['quorum']} of {len(rows)}, failure mode {config.get('failure_mode')}"


async def witnesses_cmd(args: argparse.Namespace, client: KeyserverClient, out: Printer) -> int:
    if args.action == "show":
        config = await client.admin.witnesses()
    elif args.action == "set":
        witnesses = [{"name": n, "url": u, "vkey": v} for n, u, v in args.witness]
        config = await client.admin.set_witnesses(witnesses, args.quorum, args.failure_mode)
    else:
        config = await client.admin.remove_witnesses()
    out.emit(config, _witness_rows(config, out))
    return EXIT_OK


_HANDLERS: dict[str, Handler] = {
    "whoami": whoami,
    "token create": token_create,
    "token list": token_list,
    "token revoke": token_revoke,
    "key create": key_create,
    "key import": key_create,
    "key list": key_list,
    "key rotate": key_rotate,
    "key disable": key_disable,
    "key enable": key_disable,
    "policy add": policy_add,
    "policy activate": policy_activate,
    "policy list": policy_list,
    "policy dry-run": policy_dry_run,
    "refs publish": refs_publish,
    "refs list": refs_list,
    "refs revoke": refs_revoke,
    "signer register": signer_register,
    "signer list": signer_list,
    "signer revoke": signer_revoke,
    "tpm anchor add": anchor_add,
    "tpm anchor list": anchor_list,
    "tpm anchor remove": anchor_remove,
    "tpm ek pin": ek_pin,
    "tpm ek list": ek_list,
    "tpm ek unpin": ek_unpin,
    "tpm ak list": ak_list,
    "tpm ak revoke": ak_revoke,
    "limits show": limits_show,
    "limits set": limits_set,
    "limits reset": limits_set,
    "witnesses show": witnesses_cmd,
    "witnesses set": witnesses_cmd,
    "witnesses remove": witnesses_cmd,
    "log show": show_log,
    "log tail": tail_log,
}
