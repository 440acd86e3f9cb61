"""Where this keyserver may send a tenant's checkpoints: the operator's bound on the witness URLs a tenant
admin configures.

A tenant admin names its witnesses' URLs, and the keyserver then makes requests to them. Without a bound
that is a server-side request forgery: an admin could aim the keyserver at the cloud metadata address,
at the database or at anything else only the keyserver's network can reach. The operator therefore
decides, with ``KEYSERVER_WITNESS_URL_PREFIXES``:

- set (comma-separated URL prefixes such as ``https://witness.example.org/``): a witness URL must start
  with one of them, and that is all — the operator vouches for what the prefixes reach, loopback
  included (tests and the demo allow ``http://127.0.0.1:``);
- unset (the default): a witness URL must be ``https``, its host must not be ``localhost`` or an
  address literal outside the global unicast range, and, checked again before every request, every
  address its name resolves to must be global. A name that resolves to a public address when checked and
  to an internal one an instant later (DNS rebinding) is not caught by this; deployments that must rule
  that out too set the prefixes or filter the keyserver's outbound traffic (docs/release-log.md).

The check runs when the configuration is set (400, nothing stored) and before each request (a witness
whose URL is no longer allowed counts as not answering, with that reason).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from keyserver.errors import ConfigurationError

__all__ = ["OutboundRefused", "WitnessOutbound"]

_MAX_PREFIXES = 64


class OutboundRefused(Exception):
    """This keyserver's operator does not let it send checkpoints to that URL; the message says why."""


def _address_is_global(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class WitnessOutbound:
    """The operator's bound. ``prefixes`` empty: public https hosts only (see the module docstring)."""

    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str | None) -> WitnessOutbound:
        if value is None or not value.strip():
            return cls()
        prefixes = tuple(part.strip() for part in value.split(",") if part.strip())
        if len(prefixes) > _MAX_PREFIXES:
            raise ConfigurationError(f"KEYSERVER_WITNESS_URL_PREFIXES: at most {_MAX_PREFIXES} prefixes")
        for prefix in prefixes:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigurationError(
                    f"KEYSERVER_WITNESS_URL_PREFIXES: {prefix!r} is not an http(s) URL prefix with a host"
                )
        return cls(prefixes)

    @classmethod
    def allowing(cls, prefixes: Iterable[str]) -> WitnessOutbound:
        return cls(tuple(prefixes))

    def check_url(self, url: str) -> None:
        """:class:`OutboundRefused` unless ``url`` is allowed as written (no name resolution)."""
        if self.prefixes:
            if not any(url.startswith(prefix) for prefix in self.prefixes):
                raise OutboundRefused(
                    "this keyserver sends checkpoints only to witness URLs its operator allows"
                    " (KEYSERVER_WITNESS_URL_PREFIXES)"
                )
            return
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".").lower()
            _ = parts.port
        except ValueError as exc:
            raise OutboundRefused(f"the witness URL does not parse ({exc})") from None
        if parts.scheme != "https":
            raise OutboundRefused("a witness URL must be https:// (the operator allows no other prefix)")
        if not host or host == "localhost" or host.endswith(".localhost"):
            raise OutboundRefused("a witness URL must name a public host, not localhost")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return  # a name: its addresses are checked before each request (check_resolved)
        if not _address_is_global(host):
            raise OutboundRefused(f"a witness URL must not name a non-public address ({host})")

    async def check_resolved(self, url: str) -> None:
        """:meth:`check_url`, and without prefixes also every address the URL's host resolves to."""
        self.check_url(url)
        if self.prefixes:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or 443, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise OutboundRefused(f"the witness host {host!r} does not resolve ({exc})") from None
        private = sorted({str(info[4][0]) for info in infos if not _address_is_global(str(info[4][0]))})
        if private or not infos:
            raise OutboundRefused(
                f"the witness host {host!r} resolves to a non-public address ({', '.join(private)})"
            )
