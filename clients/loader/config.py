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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from audit.entry import canonical_bytes
from clients.loader.parts import SAFEGUARDS, THRESHOLD, WITNESSES, PartsError, load_part, parts_of
from clients.loader.release import KeyserverTrust, LogTrust
from keyserver.strict_json import loads_object

if TYPE_CHECKING:  # types only: these are parts, loaded when the configuration asks (parts.py)
    from clients.loader.quorum import QuorumTrust
    from clients.loader.safeguards import SafeguardConfig

CONFIG_DOMAIN = b"keyserver-loader-config-v1\x00"

# 2: the TEE (and the GPUs) are measured configuration, no longer run-time arguments: they decide which
# collector, and so which code, the loader runs.
CONFIG_VERSION = 2
MAX_CONFIG_BYTES = 64 * 1024
_COMMON = frozenset({"v", "tee", "program_signers", "pcr_selection"})
_OPTIONAL = frozenset({"gpus", "safeguards"})
_SINGLE = frozenset({"tenant", "key", "log"})  # one keyserver (and optionally "witnesses")
ProgramSignerKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class ConfigError(Exception):
    """The loader configuration is unusable; the loader does not start."""


@dataclass(frozen=True)
class LoaderConfig:
    """``source`` is the one keyserver the key comes from, or the k of n keyservers its shares come from."""

    source: KeyserverTrust | QuorumTrust
    tee: str  # whose collector runs (clients/loader/parts.py)
    program_signers: Mapping[str, ProgramSignerKey]
    pcr_selection: str
    canonical: bytes  # what is measured
    parts: tuple[str, ...]  # the modules of the parts it selects: with the core, the loader's image
    gpus: bool = False  # add every NVIDIA CC GPU's report to the TEE's evidence
    # What every request must pass (clients/loader/safeguards.py); None: no classifier, no budget.
    safeguards: SafeguardConfig | None = None

    @property
    def quorum(self) -> QuorumTrust | None:
        """The k of n keyservers, or None for one keyserver."""
        return None if isinstance(self.source, KeyserverTrust) else self.source

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
        allowed = _COMMON | _OPTIONAL | mode | (set() if "threshold" in document else {"witnesses"})
        unknown, missing = set(document) - allowed, (_COMMON | mode) - set(document)
        if document.get("v") != CONFIG_VERSION:
            raise ConfigError(
                f"loader configuration version {document.get('v')!r} is not {CONFIG_VERSION}"
                + (' (version 2 names its "tee": add it, and set "v": 2)' if document.get("v") == 1 else "")
            )
        if unknown or missing:
            raise ConfigError(
                f"loader configuration members differ: unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        try:
            parts = parts_of(document)
        except PartsError as exc:
            raise ConfigError(f"loader configuration: {exc}") from None
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
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"program signer {name!r}: not a PEM public key ({exc})") from None
            if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
                raise ConfigError(f"program signer {name!r}: Ed25519 or ECDSA keys only")
            keys[name] = key
        source = (
            load_part(THRESHOLD).parse_threshold(document["threshold"], parse_keyserver)
            if "threshold" in document
            else parse_keyserver(dict(document), "keyserver", "loader configuration")
        )
        safeguards = (
            _parse_member(
                SAFEGUARDS,
                "parse_safeguards",
                "SafeguardConfigError",
                document["safeguards"],
                "loader configuration",
            )
            if "safeguards" in document
            else None
        )
        return cls(
            source=source,
            tee=document["tee"],
            program_signers=keys,
            pcr_selection=document["pcr_selection"],
            canonical=canonical_bytes(dict(document)),
            parts=parts,
            gpus=document.get("gpus") is True,
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


def _parse_member(part_module: str, parser: str, error: str, member: object, where: str) -> Any:
    """A member only a part understands, parsed by its ``parser``; its ``error`` says what is wrong."""
    part = load_part(part_module)
    try:
        return getattr(part, parser)(member)
    except getattr(part, error) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_keyserver(member: Mapping[str, Any], name: str, where: str) -> KeyserverTrust:
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
    cosignatures = (
        _parse_member(WITNESSES, "parse_witness_trust", "WitnessTrustError", member["witnesses"], where)
        if "witnesses" in member
        else None
    )
    trust = LogTrust(verifier_key=log["verifier_key"], origin=log["origin"], cosignatures=cosignatures)
    return KeyserverTrust(name=name, tenant=member["tenant"], key=member["key"], log=trust)


def config_document(
    *,
    tee: str = "tpm",
    gpus: bool = False,
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
    extra: dict[str, Any] = {} if witnesses is None else {"witnesses": dict(witnesses)}
    if safeguards is not None:
        extra["safeguards"] = dict(safeguards)
    if gpus:
        extra["gpus"] = True
    return {
        **extra,
        "v": CONFIG_VERSION,
        "tee": tee,
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
    tee: str = "tpm",
) -> dict[str, Any]:
    """A k-of-n configuration: ``keyservers`` are ``{"name", "tenant", "key", "log"[, "witnesses"]}``;
    k is the commitment's."""
    return {
        "v": CONFIG_VERSION,
        "tee": tee,
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
