"""``keyserver evidence verify --tee nvidia-gpu``: the GPU verifier over files, as the CLI reads them."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from keyserver.evidence.claims import Claims

from .certs import MAX_CHAIN_INPUT
from .revocation import MAX_OCSP_RESPONSE, OcspResponses
from .rim import MAX_RIM_BYTES, compare_with_rims, reference_values_from_rims, verify_rim
from .spdm import MAX_REPORT_BYTES
from .verify import verify_gpu_report

_HEX = re.compile(rb"[0-9a-fA-F\s]+")


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def decode_report(data: bytes) -> bytes:
    """Raw bytes, ASCII hex (NVIDIA's sample files) or base64 (NVIDIA's JSON ``evidence``)."""
    stripped = data.strip()
    if stripped[:2] == bytes([0x11, 0xE0]):
        return data
    if _HEX.fullmatch(stripped) and len(b"".join(stripped.split())) % 2 == 0:
        return bytes.fromhex(b"".join(stripped.split()).decode("ascii"))
    try:
        return base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the GPU report is neither raw SPDM bytes, hex nor base64") from None


def verify_gpu_files(
    report_path: Path,
    certs_path: Path,
    nonce_hex: str,
    now: datetime,
    *,
    ocsp_paths: Sequence[Path] = (),
    rim_paths: Sequence[Path] = (),
    rim_time: datetime | None = None,
) -> Claims:
    """The GPU's claims; with RIMs, also ``gpu.rim_versions``, ``gpu.rim_match`` and
    ``gpu.rim_mismatched_indices`` (RIM indices, i.e. SPDM block - 1, as NVIDIA reports them)."""
    try:
        nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        raise ValueError("--nonce must be hex") from None
    report = decode_report(_read(report_path, 4 * MAX_REPORT_BYTES))
    chain = _read(certs_path, MAX_CHAIN_INPUT)
    revocation = OcspResponses([_read(p, MAX_OCSP_RESPONSE) for p in ocsp_paths]) if ocsp_paths else None
    claims = verify_gpu_report(report, chain, expected_nonce=nonce, now=now, revocation=revocation)
    if rim_paths:
        rims = [verify_rim(_read(p, MAX_RIM_BYTES), now=rim_time or now) for p in rim_paths]
        measurements = claims["gpu.measurements"]
        assert isinstance(measurements, list)
        result = compare_with_rims(measurements, rims, nvdec0_disabled=claims["gpu.nvdec0_disabled"] is True)
        claims["gpu.rim_versions"] = [rim.version for rim in rims]
        claims["gpu.rim_match"] = result.all_match
        claims["gpu.rim_mismatched_indices"] = [str(i) for i in result.mismatched]
    return claims


def rim_reference_values(rim_paths: Sequence[Path], now: datetime) -> dict[str, Any]:
    return reference_values_from_rims([verify_rim(_read(p, MAX_RIM_BYTES), now=now) for p in rim_paths])
