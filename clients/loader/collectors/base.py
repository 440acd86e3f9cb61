"""What every evidence collector is: the binding in, the evidence dict the keyserver accepts out."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from clients.loader.collectors.errors import BindingInvalid
from keyserver.binding import BINDING_BYTES


@runtime_checkable
class Collector(Protocol):
    """``tee`` is the evidence's ``tee`` member; ``collect`` puts ``binding`` (the 64 bytes of
    :func:`keyserver.binding.binding`) into the hardware evidence and returns the evidence object of a
    release request (docs/loader-evidence.md)."""

    tee: str

    def collect(self, binding: bytes) -> dict[str, Any]: ...


def require_binding(binding: bytes) -> bytes:
    """The binding as immutable bytes, or :class:`BindingInvalid` (anything else is a caller bug that
    would put the wrong bytes into signed hardware evidence)."""
    if not isinstance(binding, bytes | bytearray | memoryview):
        raise BindingInvalid(f"the binding must be bytes, not {type(binding).__name__}")
    value = bytes(binding)
    if len(value) != BINDING_BYTES:
        raise BindingInvalid(
            f"the binding is {len(value)} bytes; keyserver.binding.binding(nonce, jwk) gives {BINDING_BYTES}"
        )
    return value
