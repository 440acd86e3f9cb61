"""The loader's measured configuration: every trust decision the loader makes, in one file.

The configuration is part of the loader *image*: the boot chain measures it together with the loader's
code (:mod:`clients.loader.measure`), so its digest is in the PCR the keyserver's release policy checks.
Whoever changes what the loader trusts — another program signer, another log key — changes the
measurement, and the keyserver no longer releases the key to it. Things that do not decide trust
(ports, file paths, the keyserver's URL: the receipt check does not depend on who answers) are run-time
arguments and stay out of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from audit.entry import canonical_bytes
from clients.loader.release import LogTrust
from clients.loader.witnesses import WitnessTrustError, parse_witness_trust
from keyserver.strict_json import loads_object

CONFIG_DOMAIN = b"keyserver-loader-config-v1\x00"

CONFIG_VERSION = 1
MAX_CONFIG_BYTES = 64 * 1024
_MEMBERS = frozenset({"v", "tenant", "key", "log", "program_signers", "pcr_selection"})
ProgramSignerKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class ConfigError(Exception):
    """The loader configuration is unusable; the loader does not start."""


@dataclass(frozen=True)
class LoaderConfig:
    tenant: str
    key: str
    log: LogTrust
    program_signers: Mapping[str, ProgramSignerKey]
    pcr_selection: str
    canonical: bytes  # what is measured

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> LoaderConfig:
        unknown, missing = set(document) - _MEMBERS - {"witnesses"}, _MEMBERS - set(document)
        if unknown or missing:
            raise ConfigError(
                f"loader configuration members differ: unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        if document["v"] != CONFIG_VERSION:
            raise ConfigError(f"loader configuration version {document['v']!r} is not {CONFIG_VERSION}")
        for name in ("tenant", "key", "pcr_selection"):
            if not isinstance(document[name], str) or not document[name]:
                raise ConfigError(f"loader configuration {name!r} must be a non-empty string")
        log = document["log"]
        if not isinstance(log, dict) or set(log) != {"verifier_key", "origin"}:
            raise ConfigError('loader configuration "log" is {"verifier_key", "origin"}')
        if not all(isinstance(log[m], str) and log[m] for m in ("verifier_key", "origin")):
            raise ConfigError('loader configuration "log" members are non-empty strings')
        signers = document["program_signers"]
        if not isinstance(signers, dict) or not signers:
            raise ConfigError(
                "loader configuration names at least one program signer (name → PEM public key)"
            )
        keys: dict[str, ProgramSignerKey] = {}
        for name, pem in signers.items():
            if not isinstance(pem, str):
                raise ConfigError(f"program signer {name!r}: a PEM public key")
            try:
                key = load_pem_public_key(pem.encode())
            except ValueError as exc:
                raise ConfigError(f"program signer {name!r}: not a PEM public key ({exc})") from None
            if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
                raise ConfigError(f"program signer {name!r}: Ed25519 or ECDSA keys only")
            keys[name] = key
        # Optional: without it, receipts need no cosignatures (clients/loader/witnesses.py).
        try:
            cosignatures = None if "witnesses" not in document else parse_witness_trust(document["witnesses"])
        except WitnessTrustError as exc:
            raise ConfigError(f"loader configuration: {exc}") from None
        return cls(
            tenant=document["tenant"],
            key=document["key"],
            log=LogTrust(verifier_key=log["verifier_key"], origin=log["origin"], cosignatures=cosignatures),
            program_signers=keys,
            pcr_selection=document["pcr_selection"],
            canonical=canonical_bytes(dict(document)),
        )

    @classmethod
    def load(cls, path: Path) -> LoaderConfig:
        raw = path.read_bytes()
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        try:
            document = loads_object(raw)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a JSON object ({exc})") from None
        return cls.from_document(document)


def config_document(
    *,
    tenant: str,
    key: str,
    log_verifier_key: str,
    log_origin: str,
    program_signers: Mapping[str, str],
    pcr_selection: str = "sha256:10",
    witnesses: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A configuration document (what a build pipeline writes into the loader image)."""
    extra = {} if witnesses is None else {"witnesses": dict(witnesses)}
    return {
        **extra,
        "v": CONFIG_VERSION,
        "tenant": tenant,
        "key": key,
        "log": {"verifier_key": log_verifier_key, "origin": log_origin},
        "program_signers": dict(program_signers),
        "pcr_selection": pcr_selection,
    }


def write_config(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def config_digest(canonical_config: bytes) -> bytes:
    """What the loader extends for the configuration it parsed (its canonical bytes); here rather than in
    ``measure`` so that the loader does not carry the code that computes its image."""
    return hashlib.sha256(CONFIG_DOMAIN + canonical_config).digest()
