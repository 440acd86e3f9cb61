"""Safeguards the loader enforces on every request (docs/safeguards.md): a safety classifier's signature
to run inference, and an egress budget. Both come from the loader's measured configuration, so a
keyserver's policy can require them (``loader.*`` claims, keyserver/evidence/tpm/loader_config.py).

Configuration (member ``"safeguards"``, every part optional)::

    {"classifier_keys": {"<name>": "<PEM Ed25519 public key>"},
     "egress": {"bytes_per_hour": N, "tokens_per_hour": N, "lifetime_bytes": N},
     "model_bound_programs": true}

**Classifier gate.** With classifier keys configured, a request runs only with
``"classifier": {"key": name, "expires": unix seconds, "nonce": base64url(16 bytes), "signature":
base64url}``, an Ed25519 signature over :func:`classifier_message` — the request's digest (program and
inputs), the program's digest, the model's digest, the expiry and the nonce, domain-separated. Missing,
unknown key, bad signature, expired (or further ahead than :data:`MAX_VALIDITY_S`), replayed nonce:
refused before any instruction runs, each with its reason, and counted.

**Egress budget.** The bytes (of the outputs' JSON) and tokens (characters of text outputs: the model is
character-level) leaving per sliding hour and over the loaded model's lifetime. A request whose outputs
would pass a budget is refused whole — the outputs are dropped, never truncated — and so is any request
once a budget is spent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from audit.entry import canonical_bytes
from clients.loader.service import RequestRefused

CLASSIFIER_DOMAIN = b"keyserver-classifier-signature-v1\x00"
NONCE_BYTES = 16
MAX_VALIDITY_S = 600  # a signature may be valid this long at most: bounds the replay memory
MAX_CLASSIFIER_KEYS = 16
WINDOW_S = 3600.0
_EGRESS = frozenset({"bytes_per_hour", "tokens_per_hour", "lifetime_bytes"})
_MEMBERS = frozenset({"classifier_keys", "egress", "model_bound_programs"})
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_SIGNED = frozenset({"key", "expires", "nonce", "signature"})


class SafeguardConfigError(ValueError):
    """The configuration's safeguards member is unusable."""


class SafeguardRefused(RequestRefused):
    """The safeguards refuse the request; ``reason`` is stable, the message says why."""


@dataclass(frozen=True)
class SafeguardConfig:
    classifier_keys: Mapping[str, ed25519.Ed25519PublicKey] = field(default_factory=dict)
    bytes_per_hour: int | None = None
    tokens_per_hour: int | None = None
    lifetime_bytes: int | None = None
    model_bound_programs: bool = False


def parse_safeguards(member: object) -> SafeguardConfig:
    if not isinstance(member, dict) or not member or not set(member) <= _MEMBERS:
        raise SafeguardConfigError(f'"safeguards" is an object of {", ".join(sorted(_MEMBERS))}')
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    listed = member.get("classifier_keys", {})
    if not isinstance(listed, dict) or ("classifier_keys" in member and not listed):
        raise SafeguardConfigError('"safeguards.classifier_keys" names 1 or more keys (name → PEM)')
    if len(listed) > MAX_CLASSIFIER_KEYS:
        raise SafeguardConfigError(f"at most {MAX_CLASSIFIER_KEYS} classifier keys")
    for name, pem in listed.items():
        if not _NAME.fullmatch(name) or not isinstance(pem, str):
            raise SafeguardConfigError(f"classifier key {name[:64]!r}: a name (a-z 0-9 . _ -) and a PEM key")
        try:
            key = load_pem_public_key(pem.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SafeguardConfigError(f"classifier key {name!r}: not a PEM public key ({exc})") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SafeguardConfigError(f"classifier key {name!r}: Ed25519 keys only")
        keys[name] = key
    egress = member.get("egress", {})
    if not isinstance(egress, dict) or not set(egress) <= _EGRESS or ("egress" in member and not egress):
        raise SafeguardConfigError(f'"safeguards.egress" sets some of {", ".join(sorted(_EGRESS))}')
    for name, value in egress.items():
        if type(value) is not int or not 1 <= value < 2**53:
            raise SafeguardConfigError(f'"safeguards.egress.{name}" is a positive integer')
    bound = member.get("model_bound_programs", False)
    if not isinstance(bound, bool):
        raise SafeguardConfigError('"safeguards.model_bound_programs" is true or false')
    return SafeguardConfig(
        keys, egress.get("bytes_per_hour"), egress.get("tokens_per_hour"), egress.get("lifetime_bytes"), bound
    )


def request_digest(program: Mapping[str, Any], inputs: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(canonical_bytes({"program": dict(program), "inputs": dict(inputs)})).digest()


def program_digest(program: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(canonical_bytes(dict(program))).digest()


def classifier_message(
    program: Mapping[str, Any], inputs: Mapping[str, Any], model_sha256: bytes, expires: int, nonce: bytes
) -> bytes:
    """What a classifier signs: this request, on this program, over this model, until ``expires``, once."""
    return (
        CLASSIFIER_DOMAIN
        + request_digest(program, inputs)
        + program_digest(program)
        + model_sha256
        + struct.pack(">Q", expires)
        + nonce
    )


def _b64url(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > 200 or not _B64URL.fullmatch(value):
        raise SafeguardRefused("classifier-signature-malformed", f"the {what} is base64url text")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise SafeguardRefused("classifier-signature-malformed", f"the {what} is base64url text") from None


class Safeguards:
    """The gate and the budget for one loaded model; thread-safe (requests run concurrently)."""

    def __init__(
        self, config: SafeguardConfig, model_sha256: bytes, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config, self.model_sha256, self._clock = config, model_sha256, clock
        self._lock = threading.Lock()
        self._seen: dict[bytes, int] = {}  # nonce -> expiry
        self._window: deque[tuple[float, int, int]] = deque()
        self._lifetime_bytes = 0
        self._lifetime_tokens = 0
        self.refusals: dict[str, int] = {}

    def refuse(self, reason: str, message: str) -> SafeguardRefused:
        with self._lock:
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return SafeguardRefused(reason, message)

    def admit(self, program: Mapping[str, Any], inputs: Mapping[str, Any], signed: object) -> None:
        """Before anything runs: the classifier's signature (when required) and a budget not yet spent."""
        if self.config.classifier_keys:
            self._check_signature(program, inputs, signed)
        elif signed is not None:
            raise self.refuse("request-malformed", "this loader requires no classifier signature")
        with self._lock:
            self._expire()
            spent = self._spent_reason()
        if spent is not None:
            raise self.refuse("egress-budget-exceeded", spent)

    def _check_signature(self, program: Mapping[str, Any], inputs: Mapping[str, Any], signed: object) -> None:
        if signed is None:
            raise self.refuse(
                "classifier-signature-missing", "this loader runs only classifier-approved requests"
            )
        if not isinstance(signed, dict) or set(signed) != _SIGNED:
            raise self.refuse(
                "classifier-signature-malformed", f"a classifier signature is {sorted(_SIGNED)}"
            )
        key = self.config.classifier_keys.get(signed["key"]) if isinstance(signed["key"], str) else None
        if key is None:
            raise self.refuse(
                "classifier-key-unknown", "the request is signed by a key this loader does not trust"
            )
        expires = signed["expires"]
        try:
            nonce, signature = _b64url(signed["nonce"], "nonce"), _b64url(signed["signature"], "signature")
        except SafeguardRefused as exc:
            raise self.refuse(exc.reason, str(exc)) from None
        if type(expires) is not int or not 0 <= expires < 2**63 or len(nonce) != NONCE_BYTES:
            raise self.refuse("classifier-signature-malformed", "expires is unix seconds; the nonce 16 bytes")
        message = classifier_message(program, inputs, self.model_sha256, expires, nonce)
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise self.refuse(
                "classifier-signature-invalid",
                "the classifier's signature is not over this request, program and model",
            ) from None
        now = self._clock()
        if expires <= now:
            raise self.refuse("classifier-signature-expired", f"the signature expired at {expires}")
        if expires > now + MAX_VALIDITY_S:
            raise self.refuse(
                "classifier-signature-expired", f"a signature is valid {MAX_VALIDITY_S} s at most"
            )
        with self._lock:
            for old in [n for n, until in self._seen.items() if until <= now]:
                del self._seen[old]
            replayed = nonce in self._seen
            if not replayed:
                self._seen[nonce] = expires
        if replayed:
            raise self.refuse("classifier-signature-replayed", "this classifier signature was already used")

    def _expire(self) -> None:
        horizon = self._clock() - WINDOW_S
        while self._window and self._window[0][0] <= horizon:
            self._window.popleft()

    def _window_totals(self) -> tuple[int, int]:
        return sum(b for _, b, _ in self._window), sum(t for _, _, t in self._window)

    def _spent_reason(self, extra_bytes: int = 0, extra_tokens: int = 0) -> str | None:
        window_bytes, window_tokens = self._window_totals()
        c = self.config
        checks = (
            (c.bytes_per_hour, window_bytes + extra_bytes, "bytes in the last hour"),
            (c.tokens_per_hour, window_tokens + extra_tokens, "tokens in the last hour"),
            (c.lifetime_bytes, self._lifetime_bytes + extra_bytes, "bytes over the model's lifetime"),
        )
        for limit, would_be, what in checks:
            if limit is not None and (
                would_be > limit or (extra_bytes == extra_tokens == 0 and would_be >= limit)
            ):
                return f"the egress budget of {limit} {what} is spent (this answer would make {would_be})"
        return None

    def release(self, outputs: Mapping[str, Any]) -> None:
        """Count what leaves; refuse (before it leaves) an answer that would pass a budget."""
        size = len(json.dumps(outputs, separators=(",", ":"), sort_keys=True).encode())
        tokens = sum(len(v) for v in outputs.values() if isinstance(v, str))
        with self._lock:
            self._expire()
            spent = self._spent_reason(size, tokens)
            if spent is None:
                self._window.append((self._clock(), size, tokens))
                self._lifetime_bytes += size
                self._lifetime_tokens += tokens
        if spent is not None:
            raise self.refuse("egress-budget-exceeded", spent)

    def report(self) -> dict[str, Any]:
        with self._lock:
            self._expire()
            window_bytes, window_tokens = self._window_totals()
            c = self.config
            return {
                "classifier_keys": sorted(c.classifier_keys),
                "refusals": dict(self.refusals),
                "egress": {
                    "window_seconds": int(WINDOW_S),
                    "window_bytes": window_bytes,
                    "window_tokens": window_tokens,
                    "lifetime_bytes": self._lifetime_bytes,
                    "lifetime_tokens": self._lifetime_tokens,
                    "budget": {
                        "bytes_per_hour": c.bytes_per_hour,
                        "tokens_per_hour": c.tokens_per_hour,
                        "lifetime_bytes": c.lifetime_bytes,
                    },
                },
            }
