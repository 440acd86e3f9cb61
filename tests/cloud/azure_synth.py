"""Synthetic Azure CVM evidence: an HCL report laid out as the paravisor writes it, around a SEV-SNP
report signed by a throwaway AMD PKI (tests/snp/helpers.py) whose REPORT_DATA is the hash of runtime data
naming a real (swtpm) AK. Real Azure evidence cannot answer keyserver's challenge; this can."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyserver.evidence.azure.hcl import HEADER_SIZE, HW_REPORT_SIZE, RUNTIME_HEADER_SIZE
from tests.snp.helpers import build_report

NV_INDEX_SIZE = 2600  # what Azure's NV index holds; the report is zero-padded to it


def b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def runtime_data(ak: rsa.RSAPublicKey, **config: Any) -> bytes:
    numbers = ak.public_numbers()
    jwk = {
        "kid": "HCLAkPub",
        "key_ops": ["sign"],
        "kty": "RSA",
        "e": b64url_uint(numbers.e),
        "n": b64url_uint(numbers.n),
    }
    doc = {
        "keys": [jwk],
        "vm-configuration": {
            "console-enabled": False,
            "secure-boot": True,
            "tpm-enabled": True,
            "vmUniqueId": "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
            **config,
        },
        "user-data": "00" * 64,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def hcl_report(
    vcek_key: ec.EllipticCurvePrivateKey, runtime: bytes, *, report_data: bytes | None = None
) -> bytes:
    """An HCL report whose SNP report (signed by ``vcek_key``) binds ``runtime`` (SHA-256, hash type 1)."""
    rd = report_data if report_data is not None else hashlib.sha256(runtime).digest() + bytes(32)
    snp = build_report(vcek_key, report_data=rd)
    assert len(snp) <= HW_REPORT_SIZE
    total = HEADER_SIZE + HW_REPORT_SIZE + RUNTIME_HEADER_SIZE + len(runtime)
    header = b"HCLA" + struct.pack("<IIII", 2, total, 2, 0) + bytes(12)
    runtime_header = struct.pack("<5I", RUNTIME_HEADER_SIZE + len(runtime), 1, 2, 1, len(runtime))
    body = header + snp.ljust(HW_REPORT_SIZE, b"\0") + runtime_header + runtime
    return body.ljust(NV_INDEX_SIZE, b"\0")
