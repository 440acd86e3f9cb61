"""Shared helpers for the SEV-SNP tests: vector paths, mutation recipes, and a throw-away AMD-shaped PKI
(ARK/ASK/ASVK with RSASSA-PSS, VCEK/VLEK with ECDSA P-384 and AMD extensions) to sign synthetic reports.

Plain functions (no fixtures) so that the tests also run with ``--noconftest``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from keyserver.evidence.snp import ProductRoots, SnpProduct, SnpRoots
from tests.conftest import VECTORS as VECTORS

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def vec(rel: str) -> bytes:
    return (VECTORS / rel).read_bytes()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@functools.cache
def expected_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "snp/expected.json").read_text())
    return data["vectors"]  # type: ignore[no-any-return]


@functools.cache
def mutations() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "mutations.json").read_text())
    return data


def apply_mutation(data: bytes, recipe: dict[str, Any]) -> bytes:
    offset = recipe["offset"]
    offset = int(offset, 16) if isinstance(offset, str) else int(offset)
    value = recipe["value"]
    value = int(value, 16) if isinstance(value, str) else int(value)
    out = bytearray(data)
    if recipe["op"] == "set":
        out[offset] = value
    elif recipe["op"] == "xor":
        out[offset] ^= value
    elif recipe["op"] == "add":
        out[offset] = (out[offset] + value) % 256
    else:  # pragma: no cover - unknown recipe
        raise AssertionError(recipe)
    return bytes(out)


# ---------------------------------------------------------------------------------------------------
# Test PKI


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def der_int(n: int) -> bytes:
    body = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def der_ia5(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x16, len(raw)]) + raw


AMD = "1.3.6.1.4.1.3704.1"


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


PKI_NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
PKI_NOT_AFTER = datetime(2049, 1, 1, tzinfo=UTC)
LEAF_NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
LEAF_NOT_AFTER = datetime(2032, 1, 1, tzinfo=UTC)
PKI_NOW = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass
class FakeAmdPki:
    product: SnpProduct
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    asvk_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ark_der(self) -> bytes:
        return self.ark.public_bytes(Encoding.DER)

    @property
    def ask_der(self) -> bytes:
        return self.ask.public_bytes(Encoding.DER)

    @property
    def asvk_der(self) -> bytes:
        return self.asvk.public_bytes(Encoding.DER)

    def roots(self, *, ask_der: bytes | None = None, asvk_der: bytes | None = None) -> SnpRoots:
        return SnpRoots(
            products=(
                ProductRoots.build(
                    self.product,
                    ark_der=self.ark_der,
                    ask_der=ask_der if ask_der is not None else self.ask_der,
                    asvk_der=asvk_der if asvk_der is not None else self.asvk_der,
                    ark_sha256_pins=[hashlib.sha256(self.ark_der).hexdigest()],
                ),
            )
        )

    def leaf(
        self,
        *,
        vlek: bool = False,
        tcb: tuple[int, int, int, int, int | None] = (3, 0, 8, 115, None),
        hwid: bytes | None = None,
        hwid_wrapped: bool = False,
        product_name: str | None = None,
        not_before: datetime = LEAF_NOT_BEFORE,
        not_after: datetime = LEAF_NOT_AFTER,
        signer: rsa.RSAPrivateKey | None = None,
        issuer: x509.Certificate | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        omit: tuple[str, ...] = (),
        extra_ext: tuple[tuple[str, bytes], ...] = (),
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        bl, tee, snp, ucode, fmc = tcb
        key = key or ec.generate_private_key(ec.SECP384R1())
        exts: list[tuple[str, bytes]] = [
            (AMD + ".1", der_int(1 if self.product is SnpProduct.TURIN else 0)),
            (AMD + ".2", der_ia5(product_name or (self.product.value + ("" if vlek else "-B0")))),
            (AMD + ".3.1", der_int(bl)),
            (AMD + ".3.2", der_int(tee)),
            (AMD + ".3.3", der_int(snp)),
            (AMD + ".3.5", der_int(0)),
            (AMD + ".3.8", der_int(ucode)),
        ]
        if fmc is not None:
            exts.append((AMD + ".3.9", der_int(fmc)))
        if not vlek and hwid is not None:
            exts.append((AMD + ".4", (bytes([0x04, len(hwid)]) + hwid) if hwid_wrapped else hwid))
        if vlek:
            exts.append((AMD + ".5", der_ia5("CN=test-csp.example")))
        exts.extend(extra_ext)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VLEK" if vlek else "SEV-VCEK"))
            .issuer_name((issuer or (self.asvk if vlek else self.ask)).subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        for oid, value in exts:
            if oid not in omit:
                builder = builder.add_extension(_ext(oid, value), critical=False)
        cert = builder.sign(
            signer or (self.asvk_key if vlek else self.ask_key), hashes.SHA384(), rsa_padding=PSS
        )
        return key, cert.public_bytes(Encoding.DER)

    def crl(
        self,
        revoked_serials: tuple[int, ...] = (),
        *,
        last_update: datetime = datetime(2026, 1, 1, tzinfo=UTC),
        next_update: datetime = datetime(2027, 1, 1, tzinfo=UTC),
        signer: rsa.RSAPrivateKey | None = None,
        issuer: x509.Name | None = None,
        pss: bool = True,
    ) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer or self.ark.subject)
            .last_update(last_update)
            .next_update(next_update)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last_update).build()
            )
        crl = builder.sign(
            signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS if pss else padding.PKCS1v15()
        )
        return crl.public_bytes(Encoding.DER)


def _ca(
    subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey, serial: int
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(PKI_NOT_BEFORE)
        .not_valid_after(PKI_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)
    )


@functools.cache
def fake_pki(product: SnpProduct) -> FakeAmdPki:
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    asvk_key = rsa.generate_private_key(65537, 2048)
    p = product.value
    return FakeAmdPki(
        product=product,
        ark_key=ark_key,
        ask_key=ask_key,
        asvk_key=asvk_key,
        ark=_ca(f"ARK-{p}", ark_key, f"ARK-{p}", ark_key, 100),
        ask=_ca(f"SEV-{p}", ask_key, f"ARK-{p}", ark_key, 101),
        asvk=_ca(f"SEV-VLEK-{p}", asvk_key, f"ARK-{p}", ark_key, 102),
    )


def tcb_bytes(product: SnpProduct, bl: int, tee: int, snp: int, ucode: int, fmc: int | None = None) -> bytes:
    if product is SnpProduct.TURIN:
        return bytes([fmc or 0, bl, tee, snp, 0, 0, 0, ucode])
    return bytes([bl, tee, 0, 0, 0, 0, snp, ucode])


CPUID = {
    SnpProduct.MILAN: (0x19, 0x01, 0x01),
    SnpProduct.GENOA: (0x19, 0x11, 0x01),
    SnpProduct.TURIN: (0x1A, 0x02, 0x01),
}


def build_report(
    key: ec.EllipticCurvePrivateKey | None,
    *,
    product: SnpProduct = SnpProduct.MILAN,
    version: int = 3,
    policy: int = 0x30000,
    signer_info: int = 0,
    tcb: bytes | None = None,
    chip_id: bytes = bytes(range(64)),
    cpuid: tuple[int, int, int] | None = None,
    report_data: bytes = b"\x42" * 64,
    patch: dict[int, int] | None = None,
    sig_patch: dict[int, int] | None = None,
) -> bytes:
    """A v2/v3 report with every field set, signed with ``key`` (ECDSA P-384/SHA-384, R/S little-endian)."""
    tcb = tcb if tcb is not None else tcb_bytes(product, 3, 0, 8, 115)
    r = bytearray(0x4A0)
    struct.pack_into("<IIQ", r, 0, version, 7, policy)
    r[0x10:0x20] = b"\x01" * 16
    r[0x20:0x30] = b"\x02" * 16
    struct.pack_into("<II", r, 0x30, 0, 1)
    r[0x38:0x40] = tcb
    struct.pack_into("<QI", r, 0x40, 0x25, signer_info)
    r[0x50:0x90] = report_data
    r[0x90:0xC0] = bytes([0xAA]) * 48
    r[0xC0:0xE0] = bytes([0xBB]) * 32
    r[0xE0:0x110] = bytes([0xCC]) * 48
    r[0x110:0x140] = bytes([0xDD]) * 48
    r[0x140:0x160] = bytes([0xEE]) * 32
    r[0x160:0x180] = b"\xff" * 32
    r[0x180:0x188] = tcb
    if version >= 3:
        fam, mod, step = cpuid if cpuid is not None else CPUID[product]
        r[0x188:0x18B] = bytes([fam, mod, step])
    r[0x1A0:0x1E0] = chip_id
    r[0x1E0:0x1E8] = tcb
    r[0x1E8:0x1EB] = bytes([29, 55, 1])
    r[0x1EC:0x1EF] = bytes([29, 55, 1])
    r[0x1F0:0x1F8] = tcb
    for off, val in (patch or {}).items():
        r[off] = val
    if key is not None:
        der = key.sign(bytes(r[:0x2A0]), ec.ECDSA(hashes.SHA384()))
        rr, ss = decode_dss_signature(der)
        r[0x2A0:0x2E8] = rr.to_bytes(72, "little")
        r[0x2E8:0x330] = ss.to_bytes(72, "little")
    for off, val in (sig_patch or {}).items():
        r[off] = val
    return bytes(r)


def shift(ts: datetime, **kw: float) -> datetime:
    return ts + timedelta(**kw)
