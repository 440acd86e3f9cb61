"""k-of-n keys with the SDK: split a data key and import each share into its own keyserver.

Each share becomes an ordinary imported key of a tenant of a different keyserver, released under that
keyserver's own policy; the loader combines k releases (docs/threshold.md)::

    shares, commitment = split_key(key, name="weights", version=1, k=2, n=3)
    await import_shares([ks_a.admin, ks_b.admin, ks_c.admin], shares, key_name="weights", policy="prod")
    # publish commitment.to_json() with the model; keep no copy of the key or the shares.
"""

from __future__ import annotations

from collections.abc import Sequence

from clients.sdk.admin import AdminApi
from clients.sdk.errors import InvalidArgument
from clients.sdk.models import Key
from threshold import KeyCommitment, KeyIdentity, Share, split

__all__ = ["import_shares", "split_key"]


def split_key(
    key: bytes | bytearray, *, name: str, version: int, k: int, n: int
) -> tuple[list[Share], KeyCommitment]:
    """n shares of ``key`` (any k recover it) bound to ``name``/``version``, and the commitment."""
    return split(key, KeyIdentity(name, version, k, n))


async def import_shares(
    admins: Sequence[AdminApi], shares: Sequence[Share], *, key_name: str, policy: str
) -> list[Key]:
    """Import share i into ``admins[i]`` (a tenant admin of the i-th keyserver) as key ``key_name``.

    One share per keyserver: giving two shares to one keyserver would let it release k of them alone.
    """
    if len(admins) != len(shares):
        raise InvalidArgument(f"{len(shares)} shares need {len(shares)} keyservers, {len(admins)} given")
    if len({id(admin) for admin in admins}) != len(admins):
        raise InvalidArgument("each share goes to a different keyserver")
    return [
        await admin.create_key(key_name, policy, material=share.to_bytes())
        for admin, share in zip(admins, shares, strict=True)
    ]
