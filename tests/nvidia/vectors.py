"""The real NVIDIA GPU vectors (tests/vectors/nvidia, MANIFEST.md §9) as (report, chain, expected)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from tests.conftest import VECTORS

NV = VECTORS / "nvidia"


@dataclass(frozen=True)
class GpuVector:
    id: str
    report: bytes
    chain: bytes
    expected: dict[str, Any]

    @property
    def nonce(self) -> bytes:
        return bytes.fromhex(self.expected["nonce"])

    @property
    def not_before(self) -> datetime:
        return iso(self.expected["chain_window"][0])


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@cache
def expected_json() -> dict[str, Any]:
    return json.loads((NV / "expected.json").read_text())  # type: ignore[no-any-return]


@cache
def all_vectors() -> tuple[GpuVector, ...]:
    out = []
    for v in expected_json()["vectors"]:
        files = v["files"]
        if "report" in files:
            report = bytes.fromhex((NV / files["report"]).read_text().strip())
            chain = (NV / files["cert_chain"]).read_bytes()
        else:
            element = json.loads((NV / files["json"]).read_text())[files["element"]]
            report = base64.b64decode(element["evidence"])
            chain = base64.b64decode(element["certificate"])
        out.append(GpuVector(v["id"], report, chain, v))
    return tuple(out)


def genuine() -> list[GpuVector]:
    return [v for v in all_vectors() if v.expected["collector"]["verified"]]


def by_id(name: str) -> GpuVector:
    return next(v for v in all_vectors() if v.id == name)
