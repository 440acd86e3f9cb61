"""NVML simulations for the GPU collector: recorded devices fed with the real vectors (they can only
replay what they recorded), and synthetic devices that answer any nonce."""

from __future__ import annotations

from dataclasses import dataclass, field

from clients.demo.gpus import SimulatedNvml
from clients.loader.collectors.nvidia_gpu import CcState

from .vectors import GpuVector


@dataclass
class RecordedNvml:
    """Real GPUs as recorded: each returns its recorded report whatever nonce it is asked to sign."""

    devices: list[GpuVector]
    state: CcState = field(default_factory=lambda: CcState(cc_on=True, dev_tools=False))
    asked: list[bytes] = field(default_factory=list)

    def cc_state(self) -> CcState:
        return self.state

    def device_count(self) -> int:
        return len(self.devices)

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        self.asked.append(nonce)
        return self.devices[index].report

    def certificate_chain(self, index: int) -> bytes:
        return self.devices[index].chain


SyntheticNvml = SimulatedNvml
