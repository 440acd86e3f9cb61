"""The NVIDIA GPU verifier: SPDM report + device certificate chain + expected nonce + time in, claims or
``EvidenceError`` out.

Pure (DESIGN.md "Verify, then appraise"): no network, no NVML, no clock. Checks, in order:

1. Structure of the report (:func:`~.spdm.parse_gpu_report`): SPDM 1.1 GET_MEASUREMENTS/MEASUREMENTS,
   lengths that add up, bytes after the signature ignored (at most 64).
2. The request's nonce equals ``expected_nonce`` (constant time) — ``gpu-nonce-mismatch``. In a release
   the expected nonce is derived from the challenge binding (docs/binding.md, "GPU reports").
3. The certificate chain to a pinned root at ``now`` (:mod:`.certs`).
4. ECDSA P-384 / SHA-384 over ``request || response-without-signature`` with the leaf key (SPDM 1.1: no
   1.2 signing prefix) — ``gpu-signature-invalid``.
5. FWID: when the report's opaque data carries one (drivers from 550 on), it equals the leaf's TcbInfo
   FWID — ``gpu-fwid-mismatch``. Older drivers (535, 545) emit none: the leaf's FWID is still required.
6. Revocation, when a checker is supplied (:mod:`.revocation`: NVIDIA publishes device-certificate status
   by OCSP only). Without one, the claim ``gpu.revocation`` says ``not-checked``.
7. Measurements: blocks numbered 1..N without gaps, every value a 48-byte SHA-384 digest.

What the report does **not** say: whether the GPU is in confidential-computing mode. CC mode and
"CC dev tools" are GPU settings read through NVML (``nvmlSystemGetConfComputeGpusReadyState``,
``nvmlDeviceGetConfComputeSettings``), outside the signed evidence; a CC-capable GPU produces the same
kind of report with CC off. See docs/nvidia-gpu.md for what the keyserver can and cannot attest about it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_NVIDIA_GPU, Claims

from .certs import TrustedRoot, common_name, nvidia_device_root, ueid, verify_chain
from .revocation import RevocationCheck
from .spdm import TLV_NVDEC0_STATUS, GpuReport, parse_gpu_report

MEASUREMENT_BYTES = 48
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16
)
_ARCHITECTURES = {"GH": "hopper", "GB": "blackwell"}


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC)); naive datetimes are ambiguous")
    return now.astimezone(UTC)


def _check_signature(report: GpuReport, key: ec.EllipticCurvePublicKey) -> None:
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    if not (0 < r < _P384_ORDER and 0 < s < _P384_ORDER):
        raise EvidenceError("gpu-signature-invalid", "the GPU report's signature is not a P-384 (r, s) pair")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError(
            "gpu-signature-invalid",
            "the GPU report's signature does not verify under the leaf certificate's key: the report was "
            "altered, or the certificate chain belongs to another GPU",
        ) from None


def architecture(chip_cn: str) -> str:
    arch = _ARCHITECTURES.get(chip_cn[:2])
    if arch is None:
        raise EvidenceError(
            "gpu-unknown-architecture",
            f"the GPU leaf certificate is for {chip_cn!r}; keyserver knows Hopper (GH…) and Blackwell (GB…)",
        )
    return arch


def _measurements(report: GpuReport) -> list[str]:
    values: list[str] = []
    for position, block in enumerate(report.blocks, start=1):
        if block.index != position:
            raise EvidenceError(
                "gpu-report-malformed",
                f"the GPU report's measurement blocks skip from {position - 1} to {block.index}",
            )
        if len(block.value) != MEASUREMENT_BYTES:
            raise EvidenceError(
                "gpu-report-malformed",
                f"measurement block {block.index} is {len(block.value)} bytes, not a SHA-384 digest",
            )
        values.append(block.value.hex())
    return values


def verify_gpu_report(
    report_bytes: bytes,
    chain_pem: bytes,
    *,
    expected_nonce: bytes,
    now: datetime,
    roots: Sequence[TrustedRoot] | None = None,
    revocation: RevocationCheck | None = None,
) -> Claims:
    """Verify one GPU report. ``roots`` defaults to the pinned NVIDIA Device Identity CA."""
    now = _utc(now)
    report = parse_gpu_report(report_bytes)
    if not hmac.compare_digest(report.nonce, bytes(expected_nonce)):
        raise EvidenceError(
            "gpu-nonce-mismatch",
            f"the GPU report answers nonce {report.nonce.hex()}, not the expected "
            f"{bytes(expected_nonce).hex()} (in a release it is derived from the binding: docs/binding.md)",
        )
    chain = verify_chain(chain_pem, roots if roots is not None else (nvidia_device_root(),), now)
    _check_signature(report, chain.leaf_key)
    if report.fwid is not None and not hmac.compare_digest(report.fwid, chain.fwid):
        raise EvidenceError(
            "gpu-fwid-mismatch",
            f"the GPU report's FWID {report.fwid.hex()} differs from its leaf certificate's "
            f"{chain.fwid.hex()}: the report does not come from the firmware the leaf was issued to",
        )
    revocation_status = "not-checked"
    if revocation is not None:
        revocation(chain.certs, chain.root, now)
        revocation_status = "good"
    measurements = _measurements(report)
    leaf = chain.certs[0]
    chip_cn = common_name(leaf.subject)
    hwmodel = common_name(chain.certs[1].subject) if len(chain.certs) > 1 else chip_cn
    nvdec = report.opaque.get(TLV_NVDEC0_STATUS)
    return {
        "tee": TEE_NVIDIA_GPU,
        "gpu.arch": architecture(chip_cn),
        "gpu.hwmodel": hwmodel,
        "gpu.ueid": ueid(leaf),
        "gpu.spdm_version": "1.1",
        "gpu.nonce": report.nonce.hex(),
        "gpu.driver_version": report.driver_version,
        "gpu.vbios_version": report.vbios_version,
        "gpu.project": report.opaque_text(17),
        "gpu.project_sku": report.opaque_text(18),
        "gpu.chip_sku": report.opaque_text(15),
        "gpu.fwid": chain.fwid.hex(),
        "gpu.report_fwid_present": report.fwid is not None,
        "gpu.nvdec0_disabled": nvdec == b"\x55",
        "gpu.measurements": measurements,
        "gpu.measurements_sha384": hashlib.sha384(b"".join(b.value for b in report.blocks)).hexdigest(),
        "gpu.leaf_sha256": hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest(),
        "gpu.root_sha256": chain.root.sha256,
        "gpu.revocation": revocation_status,
        "gpu.cc_mode_attested": False,
    }
