"""Which witnesses a tenant's log asks to cosign its checkpoints, and what a release does without them.

A tenant admin sets, as one document: the witnesses (each a name, a submission URL and the witness's
Ed25519 ``cosignature/v1`` verifier key, c2sp.org/tlog-cosignature), the quorum ``m`` of cosignatures a
release's checkpoint needs, and the failure mode when fewer than ``m`` answer in time:

- ``refuse`` (the default): the release answers 503 ``unavailable`` and the wrapped key is not returned.
  The decision entry is already committed to the log (it is committed before anyone is asked), so the log
  holds a granted entry whose key never left; a retry is a new release with a new challenge.
- ``release-weak``: the key is released with the receipt as it is (fewer than ``m`` cosignatures); a
  loader that requires the quorum refuses it, a loader that does not accepts it.

What the keyserver is configured with decides only whom it *asks*; which witnesses a loader *trusts* is
in the loader's own measured configuration and never comes from here. Every change is a log entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from audit.checkpoint import CheckpointError
from audit.cosignature import CosignerKey, parse_cosigner_vkey
from audit.entry import canonical_bytes, decode_entry
from keyserver.db.models import LogCosignedHead, Tenant, TenantWitnesses
from keyserver.db.types import utcnow
from keyserver.db.upsert import insert_ignore, set_row
from keyserver.errors import InvalidRequest, NotFound
from keyserver.releaselog import records
from keyserver.releaselog.store import ReleaseLog

__all__ = [
    "FAILURE_MODES",
    "MAX_WITNESSES",
    "REFUSE",
    "RELEASE_WEAK",
    "TenantWitness",
    "WitnessConfig",
    "latest_cosigned",
    "load_config",
    "parse_config",
    "record_cosigned",
    "remove_config",
    "set_config",
]

REFUSE = "refuse"
RELEASE_WEAK = "release-weak"
FAILURE_MODES = (REFUSE, RELEASE_WEAK)
MAX_WITNESSES = 16  # each is asked on every round; the spec asks verifiers to take at least 16 signatures
_MAX_URL_CHARS = 2048
_MEMBERS = {"witnesses", "quorum", "failure_mode"}
WITNESSES_SET = "witnesses-set"
WITNESSES_REMOVED = "witnesses-removed"


@dataclass(frozen=True)
class TenantWitness:
    name: str
    url: str
    key: CosignerKey

    @property
    def vkey(self) -> str:
        return self.key.vkey


@dataclass(frozen=True)
class WitnessConfig:
    witnesses: tuple[TenantWitness, ...]
    quorum: int
    failure_mode: str = REFUSE

    def document(self) -> dict[str, Any]:
        """The canonical form stored, logged and answered (vkeys re-derived, so each has one spelling)."""
        return {
            "witnesses": [{"name": w.name, "url": w.url, "vkey": w.vkey} for w in self.witnesses],
            "quorum": self.quorum,
            "failure_mode": self.failure_mode,
        }


def _check_url(name: str, url: object) -> str:
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        raise InvalidRequest(f"witness {name}: url must be a string of 1 to {_MAX_URL_CHARS} characters")
    if any(char <= " " or char == "\x7f" for char in url):
        raise InvalidRequest(f"witness {name}: url holds a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"witness {name}: url does not parse ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"witness {name}: url must be http:// or https://, not {parts.scheme or 'none'}")
    if not parts.hostname:
        raise InvalidRequest(f"witness {name}: url has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"witness {name}: url must not carry credentials")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise InvalidRequest(f"witness {name}: url is a submission prefix, without query or fragment")
    if port == 0:
        raise InvalidRequest(f"witness {name}: url has port 0")
    return url.rstrip("/")


def _witness(item: object, index: int) -> TenantWitness:
    if not isinstance(item, dict) or set(item) != {"name", "url", "vkey"}:
        raise InvalidRequest(f"witness {index}: must be exactly {{name, url, vkey}}")
    name, url, vkey = item["name"], item["url"], item["vkey"]
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"witness {index}: name must be a non-empty string")
    if not isinstance(vkey, str) or len(vkey) > 1024:
        raise InvalidRequest(f"witness {name}: vkey must be a string")
    try:
        key = parse_cosigner_vkey(vkey)
    except (CheckpointError, ValueError) as exc:
        raise InvalidRequest(
            f"witness {name}: vkey is not an Ed25519 cosignature/v1 verifier key: {exc}"
        ) from None
    if key.name != name:
        # The name is part of what a cosignature signs (its key id); two spellings would be two witnesses.
        raise InvalidRequest(f"witness {name}: its vkey is for the name {key.name!r}")
    return TenantWitness(name, _check_url(name, url), key)


def parse_config(document: Mapping[str, Any]) -> WitnessConfig:
    """The configuration in ``document``, or :class:`InvalidRequest` naming what is wrong."""
    unknown, missing = set(document) - _MEMBERS, {"witnesses", "quorum"} - set(document)
    if unknown or missing:
        raise InvalidRequest(f"witness configuration: unknown {sorted(unknown)}, missing {sorted(missing)}")
    items = document["witnesses"]
    if not isinstance(items, list) or not items:
        raise InvalidRequest(
            "witnesses must be a non-empty list (remove the configuration to stop witnessing)"
        )
    if len(items) > MAX_WITNESSES:
        raise InvalidRequest(f"at most {MAX_WITNESSES} witnesses")
    witnesses = tuple(_witness(item, i) for i, item in enumerate(items))
    names = [w.name for w in witnesses]
    if len(set(names)) != len(names):
        raise InvalidRequest("witness names must be unique")
    raw_keys = [w.key.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw) for w in witnesses]
    if len(set(raw_keys)) != len(raw_keys):
        raise InvalidRequest("two witnesses share a key: they are one witness, and would count twice")
    quorum = document["quorum"]
    if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= len(witnesses):
        raise InvalidRequest(f"quorum must be an integer between 1 and {len(witnesses)} (the witnesses)")
    mode = document.get("failure_mode", REFUSE)
    if mode not in FAILURE_MODES:
        raise InvalidRequest(f"failure_mode must be one of {', '.join(FAILURE_MODES)}")
    return WitnessConfig(witnesses, quorum, mode)


async def load_config(session: AsyncSession, tenant_id: uuid.UUID) -> WitnessConfig | None:
    row = await session.get(TenantWitnesses, tenant_id)
    return None if row is None else parse_config(decode_entry(row.document))


async def set_config(
    session: AsyncSession,
    release_log: ReleaseLog,
    tenant: Tenant,
    config: WitnessConfig,
    *,
    principal: uuid.UUID,
) -> None:
    """Store ``config`` for ``tenant`` (replacing any). Logged, with the whole document."""
    document = config.document()
    values = {
        "document": canonical_bytes(document),
        "updated_at": utcnow(),
        "updated_by": f"token:{principal}",
    }
    await set_row(session, TenantWitnesses, {"tenant_id": tenant.id}, values)
    await release_log.append(
        session, tenant, [records.record(WITNESSES_SET, principal=f"token:{principal}", **document)]
    )


async def remove_config(
    session: AsyncSession, release_log: ReleaseLog, tenant: Tenant, *, principal: uuid.UUID
) -> None:
    """Stop witnessing the tenant's log. Logged."""
    row = await session.get(TenantWitnesses, tenant.id)
    if row is None:
        raise NotFound("this tenant has no witnesses configured")
    await session.delete(row)
    await session.flush()
    await release_log.append(
        session, tenant, [records.record(WITNESSES_REMOVED, principal=f"token:{principal}")]
    )


async def record_cosigned(session: AsyncSession, tenant_id: uuid.UUID, size: int, note: str) -> None:
    """Keep ``note`` as the tenant's latest cosigned checkpoint unless a larger one is kept already (several
    processes cosign one log: whichever is larger stays, whatever order they finish in)."""
    now = utcnow()
    await insert_ignore(
        session, LogCosignedHead, {"tenant_id": tenant_id, "size": size, "note": note, "updated_at": now}
    )
    await session.execute(
        update(LogCosignedHead)
        .where(LogCosignedHead.tenant_id == tenant_id, LogCosignedHead.size < size)
        .values(size=size, note=note, updated_at=now)
    )


async def latest_cosigned(session: AsyncSession, tenant_id: uuid.UUID) -> LogCosignedHead | None:
    return await session.get(LogCosignedHead, tenant_id)
