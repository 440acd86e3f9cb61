"""AWS Nitro Enclaves evidence through the Nitro Secure Module (``/dev/nsm``).

``collect`` sends the NSM an ``Attestation`` request with the 64-byte binding as ``nonce`` (docs/binding.md)
and optional ``user_data`` / ``public_key``, checks that the document it gets back parses and carries
exactly that nonce, and returns ``{"tee": "aws-nitro", "document": b64 COSE_Sign1}``.

The NSM driver's one ioctl (``NSM_IOCTL_REQUEST``, aws-nitro-enclaves-sdk / Linux ``nsm.h``) takes two
iovecs: the CBOR request and a buffer for the CBOR response, whose length the driver updates. Tests drive
the collector through a simulated transport (a callable from request bytes to response bytes).
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import fcntl
import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import cbor2

from clients.loader.collectors.base import require_binding
from clients.loader.collectors.errors import CollectorConfigInvalid, NsmError, ReportDataMismatch
from keyserver.binding import report_data_for
from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_AWS_NITRO
from keyserver.evidence.nitro import parse_document
from keyserver.evidence.nitro.document import MAX_PUBLIC_KEY, MAX_USER_DATA

DEFAULT_NSM_DEVICE: Final = Path("/dev/nsm")
MAX_RESPONSE: Final = 0x3000  # the NSM's own response bound (NSM_RESPONSE_MAX_SIZE)


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


class _NsmMessage(ctypes.Structure):
    _fields_ = (("request", _IoVec), ("response", _IoVec))


# _IOWR(0x0A, 0, struct nsm_message): direction read|write (3) << 30 | size << 16 | type << 8 | number.
NSM_IOCTL_REQUEST: Final = (3 << 30) | (ctypes.sizeof(_NsmMessage) << 16) | (0x0A << 8)


def nsm_device(path: Path = DEFAULT_NSM_DEVICE) -> Callable[[bytes], bytes]:
    """A transport to the real NSM device at ``path``."""

    def request(payload: bytes) -> bytes:
        request_buffer = ctypes.create_string_buffer(payload, len(payload))
        response_buffer = ctypes.create_string_buffer(MAX_RESPONSE)
        message = _NsmMessage(
            _IoVec(ctypes.cast(request_buffer, ctypes.c_void_p), len(payload)),
            _IoVec(ctypes.cast(response_buffer, ctypes.c_void_p), MAX_RESPONSE),
        )
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise NsmError(f"cannot open {path}: {exc} (is this a Nitro enclave?)") from exc
        try:
            fcntl.ioctl(fd, NSM_IOCTL_REQUEST, message)
        except OSError as exc:
            raise NsmError(f"the NSM ioctl failed: {exc}") from exc
        finally:
            os.close(fd)
        return response_buffer.raw[: min(message.response.length, MAX_RESPONSE)]

    return request


class NitroCollector:
    """See the module docstring. ``transport`` defaults to the real ``/dev/nsm``."""

    tee = TEE_AWS_NITRO

    def __init__(
        self,
        transport: Callable[[bytes], bytes] | None = None,
        *,
        user_data: bytes | None = None,
        public_key: bytes | None = None,
    ) -> None:
        if user_data is not None and len(user_data) > MAX_USER_DATA:
            raise CollectorConfigInvalid(f"user_data is at most {MAX_USER_DATA} bytes")
        if public_key is not None and not 1 <= len(public_key) <= MAX_PUBLIC_KEY:
            raise CollectorConfigInvalid(f"public_key is 1 to {MAX_PUBLIC_KEY} bytes")
        self.transport = transport or nsm_device()
        self.user_data, self.public_key = user_data, public_key

    def collect(self, binding: bytes) -> dict[str, Any]:
        nonce = report_data_for(TEE_AWS_NITRO, require_binding(binding))
        request = {
            "Attestation": {"user_data": self.user_data, "nonce": nonce, "public_key": self.public_key}
        }
        response = self.transport(cbor2.dumps(request))
        document = self._document(response)
        try:
            parsed = parse_document(document)
        except EvidenceError as exc:
            raise NsmError(f"the NSM's document does not parse: {exc.message}") from exc
        if parsed.nonce is None or not hmac.compare_digest(parsed.nonce, nonce):
            raise ReportDataMismatch("the NSM's document does not carry the binding as its nonce")
        return {"tee": TEE_AWS_NITRO, "document": base64.b64encode(document).decode()}

    @staticmethod
    def _document(response: bytes) -> bytes:
        try:
            decoded = cbor2.loads(response)
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise NsmError(f"the NSM's response is not CBOR: {exc}") from exc
        if isinstance(decoded, dict) and "Error" in decoded:
            raise NsmError(f"the NSM refused the attestation request: {decoded['Error']!r}")
        inner = decoded.get("Attestation") if isinstance(decoded, dict) else None
        document = inner.get("document") if isinstance(inner, dict) else None
        if not isinstance(document, bytes):
            raise NsmError("the NSM's response holds no attestation document")
        return document


def loader_collector(tee: str, args: argparse.Namespace, pcr_selection: str) -> NitroCollector:
    """The loader's collector for ``"tee": "aws-nitro"`` (clients/loader/parts.py): the real /dev/nsm."""
    return NitroCollector()
