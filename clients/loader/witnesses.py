"""The witnesses a loader trusts: part of its measured configuration (clients/loader/config.py).

``"witnesses": {"vkeys": [<witness vkey>, …], "quorum": m, "max_age_seconds": s}``: the Ed25519
``cosignature/v1`` verifier keys (c2sp.org/tlog-cosignature) of the witnesses whose cosignatures count,
how many must have cosigned a receipt's checkpoint, and how old a cosignature may be. They come only
from here — built into the loader image and measured with it — never from the keyserver, which therefore
cannot choose (or forge) the witnesses that hold it to one history.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from audit.checkpoint import CheckpointError
from audit.cosignature import CosignaturePolicy, QuorumError, parse_cosigner_vkey, require_quorum
from clients.loader.receipt import ReceiptInvalid

MAX_WITNESSES = 16
MAX_AGE_SECONDS = 366 * 86400


class WitnessTrustError(ValueError):
    """The configuration's witnesses member is unusable."""


def parse_witness_trust(member: object) -> CosignaturePolicy:
    if not isinstance(member, dict) or set(member) != {"vkeys", "quorum", "max_age_seconds"}:
        raise WitnessTrustError('"witnesses" is {"vkeys", "quorum", "max_age_seconds"}')
    vkeys, quorum, max_age = member["vkeys"], member["quorum"], member["max_age_seconds"]
    if not isinstance(vkeys, list) or not 1 <= len(vkeys) <= MAX_WITNESSES:
        raise WitnessTrustError(f'"witnesses.vkeys" lists 1 to {MAX_WITNESSES} witness verifier keys')
    keys = []
    for vkey in vkeys:
        if not isinstance(vkey, str):
            raise WitnessTrustError('"witnesses.vkeys" holds strings')
        try:
            keys.append(parse_cosigner_vkey(vkey))
        except (CheckpointError, ValueError) as exc:
            raise WitnessTrustError(f"witness key {vkey[:80]!r}: {exc}") from None
    if len({k.name for k in keys}) != len(keys):
        raise WitnessTrustError("two witness keys share a name")
    if len({k.vkey.rsplit("+", 1)[1] for k in keys}) != len(keys):
        raise WitnessTrustError("two witness names share a key: one witness would count twice")
    if not _integer(quorum) or not 1 <= quorum <= len(keys):
        raise WitnessTrustError(f'"witnesses.quorum" is an integer from 1 to {len(keys)}')
    if not _integer(max_age) or not 1 <= max_age <= MAX_AGE_SECONDS:
        raise WitnessTrustError(f'"witnesses.max_age_seconds" is an integer from 1 to {MAX_AGE_SECONDS}')
    return CosignaturePolicy(tuple(keys), quorum, timedelta(seconds=max_age))


def witness_trust_document(vkeys: list[str], quorum: int, max_age_seconds: int) -> dict[str, Any]:
    return {"vkeys": list(vkeys), "quorum": quorum, "max_age_seconds": max_age_seconds}


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_cosignatures(note: str, policy: CosignaturePolicy, now: datetime) -> None:
    """The receipt check's last step when witnesses are configured (clients/loader/receipt.py): the note
    carries ``policy``'s quorum of valid, fresh cosignatures, or :class:`ReceiptInvalid`."""
    try:
        require_quorum(note, policy, now)
    except QuorumError as exc:
        raise ReceiptInvalid("receipt-cosignatures-insufficient", str(exc)) from None
    except CheckpointError as exc:
        # A line naming a trusted witness that does not verify on this checkpoint: forged, or moved from
        # another checkpoint (a cosignature on a different tree than the one the proof is against).
        raise ReceiptInvalid("receipt-cosignature-invalid", str(exc)) from None
