"""Signing accelerator programs: the CI signer's side.

The accelerator (:mod:`clients.accelerator.program`) only parses and verifies signed programs; the
signing lives here so that the loader's measured image holds no signing code. The CI pipeline, the demo
and the tests sign with these.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from audit.entry import EntryError, canonical_bytes
from clients.accelerator.errors import PROGRAM_MALFORMED, ProgramRejected
from clients.accelerator.program import NAME_RE, _program_bytes, parse_program
from clients.accelerator.signatures import SignerPrivateKey, _hash_for, algorithm_of


def sign(private_key: SignerPrivateKey, message: bytes) -> bytes:
    """A signature over ``message``: Ed25519, or DER-encoded ECDSA with the key's algorithm's hash."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    return private_key.sign(message, ec.ECDSA(_hash_for(algorithm_of(private_key))))


def sign_program(
    program: Mapping[str, Any], signer_name: str, private_key: SignerPrivateKey
) -> dict[str, Any]:
    """The signed envelope for ``program``. The program is checked first, so that a CI pipeline learns
    at build time — with the same ``ProgramRejected`` the accelerator would raise — that it is invalid."""
    if not NAME_RE.match(signer_name):
        raise ValueError(f"signer name {signer_name!r} is not valid: 1-100 of a-z 0-9 . _ - ")
    message = _program_bytes(program)
    parse_program(json.loads(message))
    return {
        "alg": algorithm_of(private_key),
        "program": json.loads(message),
        "signature": base64.b64encode(sign(private_key, message)).decode("ascii"),
        "signer": signer_name,
    }


def encode_signed_program(signed: Mapping[str, Any]) -> bytes:
    """The wire form of a signed program: its canonical bytes."""
    try:
        return canonical_bytes(dict(signed))
    except EntryError as exc:
        raise ProgramRejected(PROGRAM_MALFORMED, f"the signed program is not canonical JSON: {exc}") from None
