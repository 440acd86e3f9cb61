"""GPU reports for composite evidence: the VM's evidence (any collector) plus one SPDM measurement report
per NVIDIA confidential-computing GPU, obtained through NVML, all bound to the same challenge and
ephemeral key (docs/nvidia-gpu.md, docs/binding.md "GPU reports").

For each ``collect(binding)``:

1. CC mode, which the signed report does **not** carry: NVML must say the system's CC feature is on and
   CC dev tools off (``nvmlSystemGetConfComputeState``) — otherwise :class:`GpuNotConfidential`. This is
   the loader's own check inside the attested VM: the keyserver trusts it exactly as far as it trusts the
   measured loader, which is why it is enforced here and documented as such.
2. The GPU nonce is ``report_data_for("nvidia-gpu", binding)`` (the binding's first 32 bytes).
3. Per GPU: ``nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)`` and
   ``nvmlDeviceGetConfComputeGpuCertificate(handle)``; the report must parse and echo that nonce (a
   recorded or stale report is refused here rather than at the keyserver).
4. The evidence: the VM collector's object with ``"gpus": [{"report", "certificates"}, …]``.

NVML is reached through :class:`Nvml` so that tests drive the collector with a simulation fed with the
real vectors; :class:`PynvmlNvml` is the real binding (``nvidia-ml-py``, imported when used: no GPU, no
import). It is written against NVML's documented API and has not run on a CC GPU here (none is present).
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import Any, Protocol

from clients.loader.collectors.base import Collector, require_binding
from clients.loader.collectors.errors import GpuNotConfidential, GpuReportMismatch, GpuUnavailable
from keyserver.binding import report_data_for
from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_NVIDIA_GPU
from keyserver.evidence.nvidia.spdm import MAX_GPUS, parse_gpu_report


@dataclass(frozen=True)
class CcState:
    cc_on: bool
    dev_tools: bool


class Nvml(Protocol):
    def cc_state(self) -> CcState: ...

    def device_count(self) -> int: ...

    def attestation_report(self, index: int, nonce: bytes) -> bytes: ...

    def certificate_chain(self, index: int) -> bytes: ...


class PynvmlNvml:
    """NVML through nvidia-ml-py (``pip install keyserver[gpu]``)."""

    def __init__(self) -> None:
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            raise GpuUnavailable("nvidia-ml-py is not installed (pip install 'keyserver[gpu]')") from None
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError and its many subclasses
            raise GpuUnavailable(f"NVML did not initialise: {exc}") from None

    def cc_state(self) -> CcState:
        state = self._nvml.nvmlSystemGetConfComputeState()
        return CcState(cc_on=state.ccFeature == 1, dev_tools=state.devToolsMode == 1)

    def device_count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount())

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        report = self._nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
        return bytes(report.attestationReport[: report.attestationReportSize])

    def certificate_chain(self, index: int) -> bytes:
        handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        cert = self._nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
        return bytes(cert.attestationCertChain[: cert.attestationCertChainSize])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class GpuCollector:
    """Composite evidence: ``vm``'s evidence plus every GPU's report (``tee`` is the VM's)."""

    def __init__(self, vm: Collector, nvml: Nvml) -> None:
        self.vm, self.nvml = vm, nvml
        self.tee = vm.tee

    def gpu_reports(self, nonce: bytes) -> list[dict[str, str]]:
        """Every GPU's ``{"report", "certificates"}`` for ``nonce`` (32 bytes), after the CC-mode check."""
        try:
            state = self.nvml.cc_state()
            count = self.nvml.device_count()
        except GpuUnavailable:
            raise
        except Exception as exc:
            raise GpuUnavailable(f"NVML failed: {exc}") from None
        if not state.cc_on:
            raise GpuNotConfidential(
                "the GPUs are not in confidential-computing mode (NVML ccFeature is off)"
            )
        if state.dev_tools:
            raise GpuNotConfidential("CC dev tools are on: the GPUs' memory can be inspected by the host")
        if not 1 <= count <= MAX_GPUS:
            raise GpuUnavailable(f"NVML lists {count} GPUs; composite evidence carries 1 to {MAX_GPUS}")
        entries = []
        for index in range(count):
            try:
                report = self.nvml.attestation_report(index, nonce)
                chain = self.nvml.certificate_chain(index)
            except Exception as exc:
                raise GpuUnavailable(
                    f"GPU {index}: NVML did not give its report or certificates: {exc}"
                ) from None
            try:
                answered = parse_gpu_report(report).nonce
            except EvidenceError as exc:
                raise GpuReportMismatch(f"GPU {index}: {exc.message}") from None
            if not hmac.compare_digest(answered, nonce):
                raise GpuReportMismatch(
                    f"GPU {index} answered nonce {answered.hex()}, not {nonce.hex()}: a recorded or stale "
                    "report"
                )
            entries.append({"report": _b64(report), "certificates": _b64(chain)})
        return entries

    def collect(self, binding: bytes) -> dict[str, Any]:
        binding = require_binding(binding)
        gpus = self.gpu_reports(report_data_for(TEE_NVIDIA_GPU, binding))
        return {**self.vm.collect(binding), "gpus": gpus}


def loader_collector(vm: Collector) -> GpuCollector:
    """The loader's composite collector for ``"gpus": true`` (clients/loader/parts.py): ``vm``'s evidence
    with every CC GPU's report, through the real NVML."""
    return GpuCollector(vm, PynvmlNvml())
