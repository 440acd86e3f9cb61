"""NVIDIA GPU attestation (Hopper, Blackwell): SPDM measurement reports signed by a per-device key that
chains to NVIDIA's Device Identity CA, and NVIDIA's reference integrity manifests (docs/nvidia-gpu.md).

Only the report parser is re-exported here: the loader's GPU collector imports this package, so the
verifier (:mod:`.verify`, :mod:`.certs`, :mod:`.revocation`, :mod:`.composite`: the server's) is not
imported with it.
"""

from __future__ import annotations

from keyserver.evidence.claims import TEE_NVIDIA_GPU

from .spdm import MAX_GPUS, GpuReport, parse_gpu_report

__all__ = ["MAX_GPUS", "TEE_NVIDIA_GPU", "GpuReport", "parse_gpu_report"]
