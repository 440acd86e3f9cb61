"""Revocation of GPU device certificates: NVIDIA answers by OCSP only, online. The hook is tested offline
with OCSP responses a test CA signs: good, revoked, unknown, stale, missing, wrongly signed, delegated —
and end to end through composite evidence, where the loader staples them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc.jwk import ECKey

from clients.demo.gpus import GpuTestCa, SyntheticGpu
from keyserver.binding import binding, report_data_for
from keyserver.errors import EvidenceError
from keyserver.evidence.nvidia.certs import trusted_root
from keyserver.evidence.nvidia.composite import gpu_claims
from keyserver.evidence.nvidia.revocation import OcspResponses
from keyserver.evidence.nvidia.verify import verify_gpu_report

NOW = datetime(2026, 11, 23, tzinfo=UTC)
NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def ca() -> GpuTestCa:
    return GpuTestCa()


@pytest.fixture(scope="module")
def gpu(ca: GpuTestCa) -> SyntheticGpu:
    return SyntheticGpu(ca)


def response(
    gpu: SyntheticGpu,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: datetime = NOW - timedelta(hours=1),
    next_update: datetime | None = NOW + timedelta(days=1),
    signer: ec.EllipticCurvePrivateKey | None = None,
    responder: x509.Certificate | None = None,
    cert: x509.Certificate | None = None,
) -> bytes:
    brom = gpu.chain[1]
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert or brom,
        issuer=gpu.ca.cert,
        algorithm=hashes.SHA256(),
        cert_status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=NOW - timedelta(days=3) if status is ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder or gpu.ca.cert)
    if responder is not None:
        builder = builder.certificates([responder])
    return builder.sign(signer or gpu.ca.key, hashes.SHA384()).public_bytes(Encoding.DER)


def flip_last(data: bytes) -> bytes:
    """The last byte of an OCSP response is in its signature."""
    return data[:-1] + bytes([data[-1] ^ 1])


def delegate(ca: GpuTestCa, *, ocsp_signing: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test OCSP responder")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
    )
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    return key, builder.sign(ca.key, hashes.SHA384())


def verify(gpu: SyntheticGpu, *responses: bytes) -> dict[str, Any]:
    return dict(
        verify_gpu_report(
            gpu.report(NONCE),
            gpu.chain_pem,
            expected_nonce=NONCE,
            now=NOW,
            roots=[trusted_root(gpu.ca.pem)],
            revocation=OcspResponses(responses),
        )
    )


def test_good_status_is_claimed(gpu: SyntheticGpu) -> None:
    assert verify(gpu, response(gpu))["gpu.revocation"] == "good"


def test_delegated_responder_with_ocsp_signing(gpu: SyntheticGpu, ca: GpuTestCa) -> None:
    key, cert = delegate(ca, ocsp_signing=True)
    assert verify(gpu, response(gpu, signer=key, responder=cert))["gpu.revocation"] == "good"


CASES: list[tuple[str, Callable[[SyntheticGpu, GpuTestCa], list[bytes]], str]] = [
    ("revoked", lambda g, c: [response(g, status=ocsp.OCSPCertStatus.REVOKED)], "gpu-certificate-revoked"),
    ("unknown", lambda g, c: [response(g, status=ocsp.OCSPCertStatus.UNKNOWN)], "gpu-revocation-unknown"),
    ("missing", lambda g, c: [], "gpu-revocation-unknown"),
    ("another cert", lambda g, c: [response(g, cert=g.chain[0])], "gpu-revocation-unknown"),
    (
        "stale",
        lambda g, c: [
            response(g, next_update=NOW - timedelta(seconds=1), this_update=NOW - timedelta(days=2))
        ],
        "gpu-revocation-unknown",
    ),
    ("no nextUpdate", lambda g, c: [response(g, next_update=None)], "gpu-revocation-unknown"),
    (
        "from the future",
        lambda g, c: [response(g, this_update=NOW + timedelta(hours=1))],
        "gpu-revocation-unknown",
    ),
    ("forged", lambda g, c: [flip_last(response(g))], "gpu-revocation-unknown"),
    (
        "delegate without EKU",
        lambda g, c: [response(g, signer=(d := delegate(c, ocsp_signing=False))[0], responder=d[1])],
        "gpu-revocation-unknown",
    ),
]


@pytest.mark.parametrize(("name", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_every_bad_status_is_refused(
    gpu: SyntheticGpu,
    ca: GpuTestCa,
    name: str,
    make: Callable[[SyntheticGpu, GpuTestCa], list[bytes]],
    reason: str,
) -> None:
    with pytest.raises(EvidenceError) as info:
        verify(gpu, *make(gpu, ca))
    assert info.value.reason == reason, name


def test_garbage_is_refused() -> None:
    with pytest.raises(EvidenceError) as info:
        OcspResponses([b"\x30\x03\x0a\x01\x00garbage"])
    assert info.value.reason == "gpu-revocation-unknown"


def test_stapled_in_composite_evidence(gpu: SyntheticGpu) -> None:
    jwk = dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict())
    gpu_nonce = report_data_for("nvidia-gpu", binding(NONCE, jwk))
    entry = {
        "report": base64.b64encode(gpu.report(gpu_nonce)).decode(),
        "certificates": base64.b64encode(gpu.chain_pem).decode(),
    }
    roots = [trusted_root(gpu.ca.pem)]
    plain = gpu_claims([entry], nonce=NONCE, ephemeral_jwk=jwk, now=NOW, roots=roots)
    assert plain["gpu.0.revocation"] == "not-checked"
    good = {**entry, "ocsp": [base64.b64encode(response(gpu)).decode()]}
    assert (
        gpu_claims([good], nonce=NONCE, ephemeral_jwk=jwk, now=NOW, roots=roots)["gpu.0.revocation"] == "good"
    )
    revoked = {
        **entry,
        "ocsp": [base64.b64encode(response(gpu, status=ocsp.OCSPCertStatus.REVOKED)).decode()],
    }
    with pytest.raises(EvidenceError) as info:
        gpu_claims([revoked], nonce=NONCE, ephemeral_jwk=jwk, now=NOW, roots=roots)
    assert info.value.reason == "gpu-certificate-revoked"
    for bad in ([], "x", ["!!"]):
        with pytest.raises(EvidenceError) as info:
            gpu_claims([{**entry, "ocsp": bad}], nonce=NONCE, ephemeral_jwk=jwk, now=NOW, roots=roots)
        assert info.value.reason == "evidence-malformed"


def test_random_and_flipped_responses_fail_typed(gpu: SyntheticGpu) -> None:
    """Every third byte of a good response flipped: refused with a reason, never an untyped exception and
    never still good (every byte is signed or changes what is checked)."""
    good = response(gpu)
    outcomes = set()
    for offset in range(0, len(good), 3):
        mutated = good[:offset] + bytes([good[offset] ^ 0x41]) + good[offset + 1 :]
        try:
            outcomes.add(verify(gpu, mutated)["gpu.revocation"])
        except EvidenceError as exc:
            outcomes.add(exc.reason)
    assert outcomes == {"gpu-revocation-unknown"}
