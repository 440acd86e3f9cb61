"""The claim set: the contract between verifiers and policies (DESIGN.md, "Claims").

Claims are one flat mapping from a dotted name (``snp.measurement``, ``tpm.pcrs.sha256.7``) to a JSON
scalar or a list of strings. Byte strings are lowercase hex. Verifiers produce them; nothing else does.
"""

from __future__ import annotations

from typing import TypeAlias

ClaimValue: TypeAlias = str | int | bool | list[str] | None
Claims: TypeAlias = dict[str, ClaimValue]

TEE_TPM = "tpm"
TEE_SEV_SNP = "sev-snp"
TEE_TDX = "tdx"
TEE_AZURE_SNP_VTPM = "azure-snp-vtpm"
TEE_AZURE_TDX_VTPM = "azure-tdx-vtpm"
TEE_AWS_NITRO = "aws-nitro"
# A GPU report never stands alone: it rides along with a VM's evidence (docs/nvidia-gpu.md). It is a tee
# for reference-value sets, which pin GPU claims for every GPU of a composite release.
TEE_NVIDIA_GPU = "nvidia-gpu"
TEES = (TEE_TPM, TEE_SEV_SNP, TEE_TDX, TEE_AZURE_SNP_VTPM, TEE_AZURE_TDX_VTPM, TEE_AWS_NITRO, TEE_NVIDIA_GPU)
