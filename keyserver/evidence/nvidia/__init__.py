"""NVIDIA GPU attestation (Hopper, Blackwell): SPDM measurement reports signed by a per-device key that
chains to NVIDIA's Device Identity CA, and NVIDIA's reference integrity manifests (docs/nvidia-gpu.md)."""

from __future__ import annotations

from keyserver.evidence.claims import TEE_NVIDIA_GPU

from .certs import TrustedRoot, nvidia_device_root, trusted_root
from .revocation import OcspResponses, RevocationCheck
from .spdm import GpuReport, parse_gpu_report
from .verify import verify_gpu_report

__all__ = [
    "TEE_NVIDIA_GPU",
    "GpuReport",
    "OcspResponses",
    "RevocationCheck",
    "TrustedRoot",
    "nvidia_device_root",
    "parse_gpu_report",
    "trusted_root",
    "verify_gpu_report",
]
