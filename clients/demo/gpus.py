"""Simulated confidential-computing GPUs for the demo and the tests, as swtpm simulates the TPM: a device
chain issued by a test CA (which only a test deployment pins: ``KEYSERVER_NVIDIA_GPU_TEST_ROOTS``) and SPDM
1.1 measurement reports, in NVIDIA's exact format, that answer any nonce; an NVML stand-in serving them.

Real reports cannot answer keyserver's challenge, so composite releases are shown with these devices; the
format itself is proven on the real vectors (tests/nvidia/test_vectors.py), and these reports pass the
same verifier unchanged.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from clients.loader.collectors.nvidia_gpu import CcState

START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
SHA384_FWID_PREFIX = bytes.fromhex("303d0609608648016503040202" + "0430")


def _name(cn: str, serial: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
    ]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extra: list[x509.ExtensionType] | None = None,
    not_before: datetime = START,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(END)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for ext in extra or []:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signer, hashes.SHA384())


@dataclass
class GpuTestCa:
    """The test's stand-in for the NVIDIA Device Identity CA."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def __post_init__(self) -> None:
        name = _name("Test GPU Device Identity CA")
        self.cert = _cert(name, name, self.key.public_key(), self.key, ca=True)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)


@dataclass
class SyntheticGpu:
    ca: GpuTestCa
    driver_version: str = "550.90.07"
    vbios: bytes = bytes.fromhex("009f009601000000")  # prints 96.00.9F.00.01
    measurements: list[bytes] = field(
        default_factory=lambda: [hashlib.sha384(f"block {i}".encode()).digest() for i in range(1, 65)]
    )
    chip: str = "GH100"

    def __post_init__(self) -> None:
        self.fwid = hashlib.sha384(b"fmc firmware " + self.driver_version.encode()).digest()
        brom_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        serial = self.leaf_key.public_key().public_numbers().x.to_bytes(48, "big")[:20].hex().upper()
        brom = _cert(
            _name(f"{self.chip} A01 GSP BROM"),
            self.ca.cert.subject,
            brom_key.public_key(),
            self.ca.key,
            ca=True,
        )
        tcb_info = self._tcb_info()
        leaf = _cert(
            _name(f"{self.chip} A01 GSP FMC LF", serial),
            brom.subject,
            self.leaf_key.public_key(),
            brom_key,
            ca=False,
            extra=[x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), tcb_info)],
        )
        self.chain = [leaf, brom]

    def _tcb_info(self) -> bytes:
        fwid = SHA384_FWID_PREFIX + self.fwid
        return bytes([0x30, len(fwid)]) + fwid

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in [*self.chain, self.ca.cert])

    def _opaque(self) -> bytes:
        tlvs = [
            (3, self.driver_version.encode() + b"\x00" * (16 - len(self.driver_version))),
            (6, self.vbios),
            (11, b"\x55"),
            (15, b"882\x00"),
            (17, b"1010\x00"),
            (18, b"0200\x00"),
            (20, self.fwid),
        ]
        return b"".join(struct.pack("<HH", t, len(v)) + v for t, v in tlvs)

    def report(self, nonce: bytes) -> bytes:
        """request || response, signed by the leaf key, exactly as NVML returns it."""
        assert len(nonce) == 32
        request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
        record = b"".join(
            struct.pack("<BBHBH", i, 1, 51, 1, 48) + value
            for i, value in enumerate(self.measurements, start=1)
        )
        opaque = self._opaque()
        response = (
            bytes([0x11, 0x60, 0, 0, len(self.measurements)])
            + len(record).to_bytes(3, "little")
            + record
            + hashlib.sha256(nonce).digest()  # the responder's nonce
            + struct.pack("<H", len(opaque))
            + opaque
        )
        der = self.leaf_key.sign(request + response, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@dataclass
class SimulatedNvml:
    """The NVML calls of the GPU collector (clients/loader/collectors/nvidia_gpu.py), over simulated GPUs."""

    devices: list[SyntheticGpu]
    state: CcState = field(default_factory=lambda: CcState(cc_on=True, dev_tools=False))

    def cc_state(self) -> CcState:
        return self.state

    def device_count(self) -> int:
        return len(self.devices)

    def attestation_report(self, index: int, nonce: bytes) -> bytes:
        return self.devices[index].report(nonce)

    def certificate_chain(self, index: int) -> bytes:
        return self.devices[index].chain_pem
