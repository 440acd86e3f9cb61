"""API tokens: format, generation and hashing (pure functions).

A token reads ``ks1.<tenant>.<token id>.<secret>``: ``<tenant>`` is the tenant's id (32 hex digits) or
``operator``, ``<token id>`` is the token's row id (32 hex digits) and ``<secret>`` is 32 random bytes,
base64url. The tenant is in the clear so that the lookup itself can run inside that tenant's
row-level-security scope; the id makes the lookup an index hit. Only SHA-256 of the whole token is
stored, and compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass

from keyserver.errors import Unauthenticated

PREFIX = "ks1"
OPERATOR_MARK = "operator"
_TOKEN_RE = re.compile(r"ks1\.(operator|[0-9a-f]{32})\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class ParsedToken:
    tenant_id: uuid.UUID | None  # None: an operator token
    token_id: uuid.UUID
    raw: str

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None


def new_token(tenant_id: uuid.UUID | None, token_id: uuid.UUID) -> str:
    tenant_part = OPERATOR_MARK if tenant_id is None else tenant_id.hex
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{PREFIX}.{tenant_part}.{token_id.hex}.{secret}"


def parse_token(raw: str) -> ParsedToken:
    match = _TOKEN_RE.fullmatch(raw)
    if match is None:
        raise Unauthenticated(
            "the bearer token is malformed; expected a keyserver token (ks1.…) as issued by"
            " `keyserver token create`"
        )
    tenant_part, token_id, _secret = match.groups()
    tenant_id = None if tenant_part == OPERATOR_MARK else uuid.UUID(hex=tenant_part)
    return ParsedToken(tenant_id=tenant_id, token_id=uuid.UUID(hex=token_id), raw=raw)


def hash_token(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def token_matches(raw: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_token(raw), stored_hash)
