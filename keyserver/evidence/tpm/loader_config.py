"""The loader's measured configuration, sent with its TPM evidence and replayed into the quoted PCR: its
fields become ``loader.*`` claims a release policy can require (docs/safeguards.md).

The boot chain extends the loader image's digest into a PCR, and the loader extends the digest of the
configuration it parsed (``SHA-256("keyserver-loader-config-v1\\0" ‖ canonical bytes)``,
clients/loader/config.py) into the same one. The evidence member ::

    "loader_config": {"pcr": 10, "prior": ["<sha256 hex>", …], "config": "<base64 canonical JSON>"}

is an event log for that PCR: replaying ``prior`` (the boot chain's events, opaque here) and then the
configuration's digest from zero must give exactly the quoted value, or the release is refused
``loader-config-mismatch`` — a configuration that lies about itself cannot produce matching evidence.
Only then are its fields read, and only from those exact bytes (which must be canonical JSON).

Claims: ``loader.config_pcr`` (the PCR it was replayed into: the sender chooses it, so a policy relying
on ``loader.*`` claims pins it, and that PCR's value with a reference value — docs/safeguards.md),
``loader.config_sha256`` (the extended digest), ``loader.program_signers`` and
``loader.classifier_keys`` (SHA-256 of each key's DER SubjectPublicKeyInfo, lowercase hex, sorted —
``keyserver tpm`` users compute it with ``openssl pkey -pubin -outform DER | sha256sum``),
``loader.egress.bytes_per_hour``, ``loader.egress.tokens_per_hour``, ``loader.egress.lifetime_bytes``
(absent when the loader sets no such budget: a policy requiring a cap then fails, as it should),
``loader.model_bound_programs``, and ``loader.tee`` and ``loader.gpus`` (the TEE whose collector the
loader runs and whether it adds its GPUs' reports: they decide which code is in its image).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from audit.entry import EntryError, canonical_bytes
from clients.loader.config import CONFIG_DOMAIN
from keyserver.errors import EvidenceError
from keyserver.strict_json import loads_object

__all__ = ["verify_loader_config"]

MAX_CONFIG_BYTES = 64 * 1024
MAX_PRIOR_EVENTS = 16
MAX_CONFIG_PCR = 15
_MEMBERS = frozenset({"pcr", "prior", "config"})
_HEX32 = re.compile(r"[0-9a-f]{64}")
_EGRESS = ("bytes_per_hour", "tokens_per_hour", "lifetime_bytes")
MISMATCH = "loader-config-mismatch"
INVALID = "loader-config-invalid"


def verify_loader_config(member: object, quoted: Mapping[str, Mapping[int, bytes]]) -> dict[str, Any]:
    """The ``loader.*`` claims of ``member`` once it replays to the quoted SHA-256 PCR; else EvidenceError."""
    if not isinstance(member, dict) or set(member) != _MEMBERS:
        raise EvidenceError(INVALID, 'loader_config is {"pcr", "prior", "config"}')
    pcr, prior, encoded = member["pcr"], member["prior"], member["config"]
    if type(pcr) is not int or not 0 <= pcr <= MAX_CONFIG_PCR:
        # 16 and 23 can be reset by software and 17-22 are DRTM's: a replay from zero there says nothing
        # about what ran since boot. 0-15 cannot be reset, so the replay is the PCR's whole history.
        raise EvidenceError(INVALID, f"loader_config.pcr is a static PCR index (0..{MAX_CONFIG_PCR})")
    if not isinstance(prior, list) or len(prior) > MAX_PRIOR_EVENTS:
        raise EvidenceError(INVALID, f"loader_config.prior lists at most {MAX_PRIOR_EVENTS} digests")
    if not all(isinstance(d, str) and _HEX32.fullmatch(d) for d in prior):
        raise EvidenceError(INVALID, "loader_config.prior holds SHA-256 digests in lowercase hex")
    if not isinstance(encoded, str) or len(encoded) > MAX_CONFIG_BYTES * 4 // 3 + 4:
        raise EvidenceError(INVALID, f"loader_config.config is base64 of at most {MAX_CONFIG_BYTES} bytes")
    try:
        config = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError(INVALID, "loader_config.config is not base64") from None
    value = quoted.get("sha256", {}).get(pcr)
    if value is None:
        raise EvidenceError(MISMATCH, f"the quote does not cover sha256 PCR {pcr}, the configuration's")
    digest = hashlib.sha256(CONFIG_DOMAIN + config).digest()
    replayed = bytes(32)
    for event in [*(bytes.fromhex(d) for d in prior), digest]:
        replayed = hashlib.sha256(replayed + event).digest()
    if not hmac.compare_digest(replayed, value):
        raise EvidenceError(
            MISMATCH,
            f"the configuration sent, after the {len(prior)} earlier event(s), does not replay to the quoted"
            f" sha256 PCR {pcr}: it is not the configuration this loader measured",
        )
    return {**_claims(config, digest), "loader.config_pcr": pcr}


def _claims(config: bytes, digest: bytes) -> dict[str, Any]:
    try:
        document = loads_object(config)
        canonical = canonical_bytes(document) == config
    except (ValueError, EntryError):
        canonical = False
    if not canonical:
        raise EvidenceError(INVALID, "the measured configuration is not canonical JSON")
    claims: dict[str, Any] = {"loader.config_sha256": digest.hex()}
    claims["loader.program_signers"] = _fingerprints(document.get("program_signers"), "program_signers")
    safeguards = document.get("safeguards")
    safeguards = safeguards if isinstance(safeguards, dict) else {}
    claims["loader.classifier_keys"] = _fingerprints(safeguards.get("classifier_keys", {}), "classifier_keys")
    egress = safeguards.get("egress")
    for name in _EGRESS:
        limit = egress.get(name) if isinstance(egress, dict) else None
        if type(limit) is int and limit >= 0:
            claims[f"loader.egress.{name}"] = limit
    claims["loader.model_bound_programs"] = safeguards.get("model_bound_programs") is True
    if isinstance(document.get("tee"), str):  # configuration v2 (clients/loader/parts.py)
        claims["loader.tee"] = document["tee"]
    claims["loader.gpus"] = document.get("gpus") is True
    return claims


def _fingerprints(keys: object, what: str) -> list[str]:
    if not isinstance(keys, dict) or len(keys) > 64:
        raise EvidenceError(INVALID, f"the measured configuration's {what} is not a map of keys")
    prints = []
    for pem in keys.values():
        try:
            key = load_pem_public_key(str(pem).encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise EvidenceError(
                INVALID, f"the measured configuration's {what} holds a key that does not parse"
            ) from None
        prints.append(key_fingerprint(key))
    return sorted(prints)


def key_fingerprint(public_key: Any) -> str:
    """The claim form of a public key (what a policy writes to require it)."""
    return hashlib.sha256(
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()
