"""Composite evidence: a VM's evidence (TPM, SEV-SNP, TDX, …) with the reports of the GPUs it drives.

Wire format (docs/nvidia-gpu.md): the VM's evidence object gains ``"gpus": [{"report": base64 of the raw
SPDM request || response, "certificates": base64 of the PEM chain, leaf first}, …]`` (1 to
:data:`MAX_GPUS`), each optionally with ``"ocsp": [base64 DER OCSP response, …]``: NVIDIA's answers for
the device chain, fetched by the loader (which is online) and checked here offline (:mod:`.revocation`).

Every GPU report must answer the nonce derived from the release's binding (``report_data_for(
"nvidia-gpu", binding)`` = its first 32 bytes, docs/binding.md), so each report is as fresh and as bound
to the ephemeral key as the VM's own evidence: a report from another challenge, another key or another
machine's loader does not verify. The same GPU (same leaf certificate or UEID) may appear only once, so
that a policy counting GPUs counts devices.

The claims of GPU *i* (in request order) are the GPU verifier's ``gpu.*`` claims renamed ``gpu.<i>.*``,
plus ``gpu.count``. They join the VM's claims in one claim set: one appraisal, one log entry.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keyserver.binding import binding, report_data_for
from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_NVIDIA_GPU, Claims

from .certs import TrustedRoot, nvidia_device_root, trusted_root
from .revocation import OcspResponses
from .spdm import MAX_GPUS as MAX_GPUS
from .verify import verify_gpu_report

MAX_GPU_FIELD = 96 * 1024  # base64 of a 64 KiB report or chain
GPU_FIELDS = frozenset({"report", "certificates"})
MAX_STAPLED_OCSP = 4
# Extra device roots for a test deployment (a PEM file): a synthetic GPU issued by a test CA can then take
# part in a release (tests, `keyserver demo`). Production leaves it unset: only NVIDIA's root is pinned.
TEST_ROOTS_ENV = "KEYSERVER_NVIDIA_GPU_TEST_ROOTS"


@cache
def _roots_from(path: str) -> tuple[TrustedRoot, ...]:
    pem = Path(path).read_bytes()
    return tuple(
        trusted_root(cert.public_bytes(Encoding.DER)) for cert in x509.load_pem_x509_certificates(pem)
    )


def gpu_roots() -> tuple[TrustedRoot, ...]:
    extra = os.environ.get(TEST_ROOTS_ENV)
    return (nvidia_device_root(), *(_roots_from(extra) if extra else ()))


def _field(item: Mapping[str, Any], name: str, index: int) -> bytes:
    value = item.get(name)
    if not isinstance(value, str) or len(value) > MAX_GPU_FIELD:
        raise EvidenceError("evidence-malformed", f"gpus[{index}].{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError("evidence-malformed", f"gpus[{index}].{name} is not valid base64") from None


def _stapled_ocsp(item: Mapping[str, Any], index: int) -> OcspResponses | None:
    """OCSP responses the loader fetched from NVIDIA and sent along (stapled): checked offline."""
    if "ocsp" not in item:
        return None
    stapled = item["ocsp"]
    if not isinstance(stapled, list) or not 1 <= len(stapled) <= MAX_STAPLED_OCSP:
        raise EvidenceError(
            "evidence-malformed",
            f"gpus[{index}].ocsp is a list of 1 to {MAX_STAPLED_OCSP} DER OCSP responses",
        )
    responses = [_field({"ocsp": value}, "ocsp", index) for value in stapled]
    try:
        return OcspResponses(responses)
    except EvidenceError as exc:
        raise EvidenceError(exc.reason, f"GPU {index}: {exc.message}") from None


def gpu_claims(
    gpus: object,
    *,
    nonce: bytes,
    ephemeral_jwk: Mapping[str, Any],
    now: datetime,
    roots: Sequence[TrustedRoot] | None = None,
) -> Claims:
    """Verify every GPU report against the nonce the binding derives; ``gpu.count`` + ``gpu.<i>.*``."""
    if not isinstance(gpus, list) or not 1 <= len(gpus) <= MAX_GPUS:
        raise EvidenceError("evidence-malformed", f"evidence 'gpus' is a list of 1 to {MAX_GPUS} GPU reports")
    expected = report_data_for(TEE_NVIDIA_GPU, binding(nonce, ephemeral_jwk))
    pinned = tuple(roots) if roots is not None else gpu_roots()
    claims: Claims = {"gpu.count": len(gpus)}
    seen: dict[str, int] = {}
    for index, item in enumerate(gpus):
        if not isinstance(item, dict) or not GPU_FIELDS <= set(item) <= GPU_FIELDS | {"ocsp"}:
            raise EvidenceError(
                "evidence-malformed",
                f"gpus[{index}] is an object with 'report', 'certificates' and optionally 'ocsp'",
            )
        report, chain = _field(item, "report", index), _field(item, "certificates", index)
        revocation = _stapled_ocsp(item, index)
        try:
            one = verify_gpu_report(
                report, chain, expected_nonce=expected, now=now, roots=pinned, revocation=revocation
            )
        except EvidenceError as exc:
            raise EvidenceError(exc.reason, f"GPU {index}: {exc.message}") from None
        for identity in (str(one["gpu.leaf_sha256"]), f"ueid:{one['gpu.ueid']}"):
            if identity in seen and identity != "ueid:None":
                raise EvidenceError(
                    "gpu-duplicate",
                    f"GPU {index} is the same device as GPU {seen[identity]}: each GPU reports once",
                )
            seen[identity] = index
        for name, value in one.items():
            if name.startswith("gpu."):
                claims[f"gpu.{index}.{name[4:]}"] = value
    return claims
