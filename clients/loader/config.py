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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from audit.entry import canonical_bytes
from clients.loader.quorum import KeyserverTrust, QuorumTrust
from clients.loader.release import LogTrust
from clients.loader.safeguards import SafeguardConfig, SafeguardConfigError, parse_safeguards
from clients.loader.witnesses import WitnessTrustError, parse_witness_trust
from keyserver.strict_json import loads_object
from threshold import KeyCommitment, ThresholdError

CONFIG_DOMAIN = b"keyserver-loader-config-v1\x00"

CONFIG_VERSION = 1
MAX_CONFIG_BYTES = 64 * 1024
_COMMON = frozenset({"v", "program_signers", "pcr_selection"})
_SINGLE = frozenset({"tenant", "key", "log"})  # one keyserver (and optionally "witnesses")
_THRESHOLD = frozenset({"k", "commitment", "keyservers"})  # "threshold": k of n keyservers
_KEYSERVER = frozenset({"name", "tenant", "key", "log"})  # one of them (and optionally "witnesses")
MAX_KEYSERVERS = 16
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
ProgramSignerKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class ConfigError(Exception):
    """The loader configuration is unusable; the loader does not start."""


@dataclass(frozen=True)
class LoaderConfig:
    """``source`` is the one keyserver the key comes from, or the k of n keyservers its shares come from."""

    source: KeyserverTrust | QuorumTrust
    program_signers: Mapping[str, ProgramSignerKey]
    pcr_selection: str
    canonical: bytes  # what is measured
    # What every request must pass (clients/loader/safeguards.py); None: no classifier, no budget.
    safeguards: SafeguardConfig | None = None

    @property
    def single(self) -> KeyserverTrust:
        if not isinstance(self.source, KeyserverTrust):
            raise ConfigError("this loader is configured for k of n keyservers, not one")
        return self.source

    @property
    def tenant(self) -> str:
        return self.single.tenant

    @property
    def key(self) -> str:
        return self.single.key

    @property
    def log(self) -> LogTrust:
        return self.single.log

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> LoaderConfig:
        mode = _THRESHOLD_MEMBER if "threshold" in document else _SINGLE
        allowed = _COMMON | mode | {"safeguards"} | (set() if "threshold" in document else {"witnesses"})
        unknown, missing = set(document) - allowed, (_COMMON | mode) - set(document)
        if unknown or missing:
            raise ConfigError(
                f"loader configuration members differ: unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        if document["v"] != CONFIG_VERSION:
            raise ConfigError(f"loader configuration version {document['v']!r} is not {CONFIG_VERSION}")
        if not isinstance(document["pcr_selection"], str) or not document["pcr_selection"]:
            raise ConfigError("loader configuration 'pcr_selection' must be a non-empty string")
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
        source = (
            _threshold(document["threshold"])
            if "threshold" in document
            else _keyserver(dict(document), "keyserver", "loader configuration")
        )
        try:
            safeguards = parse_safeguards(document["safeguards"]) if "safeguards" in document else None
        except SafeguardConfigError as exc:
            raise ConfigError(f"loader configuration: {exc}") from None
        return cls(
            source=source,
            program_signers=keys,
            pcr_selection=document["pcr_selection"],
            canonical=canonical_bytes(dict(document)),
            safeguards=safeguards,
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


_THRESHOLD_MEMBER = frozenset({"threshold"})


def _keyserver(member: Mapping[str, Any], name: str, where: str) -> KeyserverTrust:
    """One keyserver's trust: its tenant, key, pinned log and (optionally) witnesses."""
    for field in ("tenant", "key"):
        if not isinstance(member[field], str) or not member[field]:
            raise ConfigError(f"{where}: {field!r} must be a non-empty string")
    log = member["log"]
    if not isinstance(log, dict) or set(log) != {"verifier_key", "origin"}:
        raise ConfigError(f'{where}: "log" is {{"verifier_key", "origin"}}')
    if not all(isinstance(log[m], str) and log[m] for m in ("verifier_key", "origin")):
        raise ConfigError(f'{where}: "log" members are non-empty strings')
    # Optional: without it, receipts need no cosignatures (clients/loader/witnesses.py).
    try:
        cosignatures = None if "witnesses" not in member else parse_witness_trust(member["witnesses"])
    except WitnessTrustError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    trust = LogTrust(verifier_key=log["verifier_key"], origin=log["origin"], cosignatures=cosignatures)
    return KeyserverTrust(name=name, tenant=member["tenant"], key=member["key"], log=trust)


def _threshold(member: object) -> QuorumTrust:
    """``"threshold": {"k", "commitment", "keyservers": [{"name", "tenant", "key", "log", …}]}``."""
    if not isinstance(member, dict) or set(member) != _THRESHOLD:
        raise ConfigError(f'"threshold" is {{{", ".join(sorted(_THRESHOLD))}}}')
    try:
        commitment = KeyCommitment.from_json(member["commitment"])
    except ThresholdError as exc:
        raise ConfigError(f"threshold: the owner's commitment is unusable: {exc.message}") from None
    identity = commitment.identity
    listed = member["keyservers"]
    if not isinstance(listed, list) or not 2 <= len(listed) <= MAX_KEYSERVERS:
        raise ConfigError(f'"threshold.keyservers" lists 2 to {MAX_KEYSERVERS} keyservers')
    keyservers = []
    for position, item in enumerate(listed):
        where = f"threshold keyserver #{position}"
        allowed = _KEYSERVER | {"witnesses"}
        if not isinstance(item, dict) or not _KEYSERVER <= set(item) <= allowed:
            raise ConfigError(f'{where}: is {{"name", "tenant", "key", "log"[, "witnesses"]}}')
        name = item["name"]
        if not isinstance(name, str) or not _LABEL.fullmatch(name):
            raise ConfigError(f"{where}: name is 1-64 of A-Z a-z 0-9 . _ -")
        keyservers.append(_keyserver(item, name, f"threshold keyserver {name}"))
    k = member["k"]
    if type(k) is not int or k != identity.k or len(keyservers) != identity.n:
        raise ConfigError(
            f"threshold: k={k!r} of {len(keyservers)} keyservers, but the commitment is for"
            f" {identity.k} of {identity.n}"
        )
    # n distinct operators: one keyserver listed twice (by name, origin or log key) would count twice.
    for label, values in (
        ("names", [t.name for t in keyservers]),
        ("log origins", [t.log.origin for t in keyservers]),
        ("log keys", [t.log.verifier_key for t in keyservers]),
    ):
        if len(set(values)) != len(values):
            raise ConfigError(f"threshold: the keyservers' {label} must differ (each is another operator)")
    return QuorumTrust(k=k, keyservers=tuple(keyservers), commitment=commitment)


def config_document(
    *,
    tenant: str,
    key: str,
    log_verifier_key: str,
    log_origin: str,
    program_signers: Mapping[str, str],
    pcr_selection: str = "sha256:10",
    witnesses: Mapping[str, Any] | None = None,
    safeguards: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A configuration document (what a build pipeline writes into the loader image)."""
    extra = {} if witnesses is None else {"witnesses": dict(witnesses)}
    if safeguards is not None:
        extra["safeguards"] = dict(safeguards)
    return {
        **extra,
        "v": CONFIG_VERSION,
        "tenant": tenant,
        "key": key,
        "log": {"verifier_key": log_verifier_key, "origin": log_origin},
        "program_signers": dict(program_signers),
        "pcr_selection": pcr_selection,
    }


def threshold_config_document(
    *,
    commitment: Mapping[str, Any],
    keyservers: Sequence[Mapping[str, Any]],
    program_signers: Mapping[str, str],
    pcr_selection: str = "sha256:10",
) -> dict[str, Any]:
    """A k-of-n configuration: ``keyservers`` are ``{"name", "tenant", "key", "log"[, "witnesses"]}``;
    k is the commitment's."""
    return {
        "v": CONFIG_VERSION,
        "threshold": {
            "k": commitment["k"],
            "commitment": dict(commitment),
            "keyservers": [dict(item) for item in keyservers],
        },
        "program_signers": dict(program_signers),
        "pcr_selection": pcr_selection,
    }


def write_config(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def config_digest(canonical_config: bytes) -> bytes:
    """What the loader extends for the configuration it parsed (its canonical bytes); here rather than in
    ``measure`` so that the loader does not carry the code that computes its image."""
    return hashlib.sha256(CONFIG_DOMAIN + canonical_config).digest()
