"""Shared helpers for the TDX tests: vector paths, collateral directories, and a throw-away Intel-shaped PKI
(Root CA, PCK Platform CA, PCK leaf with SGX extensions, TCB Signing) that signs synthetic quotes, TCB info,
QE identities and CRLs. The synthetic PKI is trusted only by passing its root explicitly (``root=``), so
the verifier under test is the production code path with another trust anchor.

Plain functions (no fixtures) so that the tests also run with ``--noconftest``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from keyserver.evidence.tdx import Collateral, collateral_from_pcs
from tests.conftest import VECTORS as VECTORS

INTEL = VECTORS / "roots" / "intel"
TCB_CHAIN_2018 = INTEL / "intel_sgx_tcb_signing_chain_2018-2025.pem"
TCB_CHAIN_2025 = INTEL / "intel_sgx_tcb_signing_chain_2025-2032.pem"
PCK_PLATFORM_CHAIN = INTEL / "intel_sgx_pck_platform_ca_chain.pem"

SPR = "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
GCP = "tdx/go-tdx-guest-gcp-ccel/cos-113-tdx-quote.dat"
DCAP_QVL = "tdx/dcap-qvl/tdx_quote"
DCAP_QVL_OUTDATED = "tdx/dcap-qvl/tdx_quote_outdated"
TRUSTEE_4 = "tdx/trustee/tdx_quote_4.dat"
TRUSTEE_5 = "tdx/trustee/tdx_quote_5.dat"
TRUSTEE_6 = "tdx/trustee/tdx_quote_6.dat"
V5_SAMPLE = "tdx/go-tdx-guest/quote_v5_sample.dat"
AZURE = "other/azure-tdx-vtpm/td-quote.bin"
V4_QUOTES = (SPR, GCP, DCAP_QVL, TRUSTEE_4, TRUSTEE_6, AZURE)
V5_QUOTES = (V5_SAMPLE, DCAP_QVL_OUTDATED, TRUSTEE_5)

GO_TDX_GUEST_COLLATERAL = (
    "tdx/go-tdx-guest/sample_tcbInfo_response",
    "tdx/go-tdx-guest/sample_qeIdentity_response",
    "tdx/go-tdx-guest/pckcrl",
    "tdx/go-tdx-guest/rootcrl.der",
    "roots/intel/intel_sgx_tcb_signing_chain_2018-2025.pem",
    "roots/intel/intel_sgx_pck_platform_ca_chain.pem",
)
ZKDCAP_COLLATERAL = (
    "tdx/zkdcap/tcbinfov3_00806f050000.json",
    "tdx/zkdcap/qeidentityv2_tdx.json",
    "tdx/zkdcap/pck_platform_crl.der",
    "tdx/zkdcap/intel_root_ca_crl.der",
    "roots/intel/intel_sgx_tcb_signing_chain_2018-2025.pem",
)
GO_TDX_GUEST_NOW = "2023-07-01T01:00:00Z"
ZKDCAP_NOW = "2025-01-21T13:44:20Z"
DCAP_QVL_NOW = "2025-07-19T10:00:34Z"


def vec(rel: str) -> bytes:
    return (VECTORS / rel).read_bytes()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@functools.cache
def expected_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "tdx" / "expected.json").read_text())["vectors"]
    return data


@functools.cache
def tdx_mutations() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((VECTORS / "mutations.json").read_text())["tdx"]
    return data


def apply_mutation(data: bytes, recipe: dict[str, Any]) -> bytes:
    offset = recipe["offset"]
    offset = int(offset, 0) if isinstance(offset, str) else int(offset)
    value = recipe["value"]
    value = int(value, 0) if isinstance(value, str) else int(value)
    out = bytearray(data)
    if recipe["op"] == "set":
        out[offset] = value
    elif recipe["op"] == "xor":
        out[offset] ^= value
    elif recipe["op"] == "add":
        out[offset] = (out[offset] + value) % 256
    else:
        raise AssertionError(f"unknown op {recipe['op']}")
    return bytes(out)


def collateral_dir(tmp: Path, files: Sequence[str], name: str = "collateral") -> Path:
    target = tmp / name
    target.mkdir(parents=True)
    for rel in files:
        shutil.copy(VECTORS / rel, target / Path(rel).name)
    return target


# ------------------------------------------------------------------------------------ minimal DER


def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_len(len(content)) + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def der_int(n: int) -> bytes:
    raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big")
    return tlv(0x02, raw)


SGX = "1.2.840.113741.1.13.1"


def sgx_extension(
    *,
    ppid: bytes = bytes(range(16)),
    components: Sequence[int] = (7, 7, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0),
    pce_svn: int = 11,
    pce_id: bytes = b"\x00\x00",
    fmspc: bytes = bytes.fromhex("00806f050000"),
    sgx_type: int = 1,
    extra: Sequence[bytes] = (),
) -> bytes:
    """The DER value of Intel's SGX extension (PCK certificate profile §1.3.5)."""
    tcb = b"".join(tlv(0x30, der_oid(f"{SGX}.2.{i + 1}") + der_int(c)) for i, c in enumerate(components))
    tcb += tlv(0x30, der_oid(f"{SGX}.2.17") + der_int(pce_svn))
    tcb += tlv(0x30, der_oid(f"{SGX}.2.18") + tlv(0x04, bytes(components)))
    parts = [
        tlv(0x30, der_oid(f"{SGX}.1") + tlv(0x04, ppid)),
        tlv(0x30, der_oid(f"{SGX}.2") + tlv(0x30, tcb)),
        tlv(0x30, der_oid(f"{SGX}.3") + tlv(0x04, pce_id)),
        tlv(0x30, der_oid(f"{SGX}.4") + tlv(0x04, fmspc)),
        tlv(0x30, der_oid(f"{SGX}.5") + tlv(0x0A, bytes([sgx_type]))),
        *extra,
    ]
    return tlv(0x30, b"".join(parts))


# -------------------------------------------------------------------------------------- synthetic PKI

NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2031, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def make_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extensions: Sequence[x509.ExtensionType] = (),
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb: x509.Certificate


def make_pki(
    *,
    sgx_ext: bytes | None = None,
    pck_not_before: datetime = NOT_BEFORE,
    pck_not_after: datetime = NOT_AFTER,
    root_cn: str = "Intel SGX Root CA",
    ca_cn: str = "Intel SGX PCK Platform CA",
    leaf_cn: str = "Intel SGX PCK Certificate",
) -> Pki:
    root_key, ca_key, pck_key, tcb_key = new_key(), new_key(), new_key(), new_key()
    root = make_cert(root_cn, root_key, None, root_key, ca=True)
    ca = make_cert(ca_cn, ca_key, root, root_key, ca=True)
    ext = x509.UnrecognizedExtension(
        x509.ObjectIdentifier(SGX), sgx_ext if sgx_ext is not None else sgx_extension()
    )
    pck = make_cert(
        leaf_cn,
        pck_key,
        ca,
        ca_key,
        ca=False,
        extensions=[ext],
        not_before=pck_not_before,
        not_after=pck_not_after,
    )
    tcb = make_cert("Intel SGX TCB Signing", tcb_key, root, root_key, ca=False)
    return Pki(root_key, root, ca_key, ca, pck_key, pck, tcb_key, tcb)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def raw_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


INTEL_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")
INTEL_QE_VENDOR = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


def make_qe_report(
    report_data: bytes,
    *,
    isv_svn: int = 4,
    mrsigner: bytes = INTEL_QE_MRSIGNER,
    attributes: bytes = QE_ATTRIBUTES,
    isv_prod_id: int = 2,
    miscselect: int = 0,
) -> bytes:
    report = (
        bytes(16)  # CPUSVN
        + struct.pack("<I", miscselect)
        + bytes(28)
        + attributes
        + hashlib.sha256(b"qe").digest()  # MRENCLAVE
        + bytes(32)
        + mrsigner
        + bytes(96)
        + struct.pack("<HH", isv_prod_id, isv_svn)
        + bytes(60)
        + report_data
    )
    assert len(report) == 384
    return report


def make_quote(
    pki: Pki,
    *,
    tee_tcb_svn: bytes = bytes.fromhex("04010700000000000000000000000000"),
    td_attributes: bytes = bytes.fromhex("0000001000000000"),
    report_data: bytes = bytes(range(64)),
    mrsignerseam: bytes = bytes(48),
    seam_attributes: bytes = bytes(8),
    qe_isv_svn: int = 4,
    qe_mrsigner: bytes = INTEL_QE_MRSIGNER,
    chain: bytes | None = None,
    trailing: bytes = b"",
    version: int = 4,
) -> bytes:
    header = struct.pack("<HHI", version, 2, 0x81) + bytes(4) + INTEL_QE_VENDOR + bytes(20)
    body = (
        tee_tcb_svn
        + hashlib.sha384(b"mrseam").digest()
        + mrsignerseam
        + seam_attributes
        + td_attributes
        + bytes.fromhex("e702060000000000")
        + hashlib.sha384(b"mrtd").digest()
        + bytes(48 * 3)
        + b"".join(hashlib.sha384(b"rtmr%d" % i).digest() for i in range(4))
        + report_data
    )
    assert len(header) == 48
    assert len(body) == 584
    ak = new_key()
    nums = ak.public_key().public_numbers()
    ak_raw = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    signature = raw_sign(ak, header + body)
    auth = bytes(range(32))
    qe_report = make_qe_report(
        hashlib.sha256(ak_raw + auth).digest() + bytes(32), isv_svn=qe_isv_svn, mrsigner=qe_mrsigner
    )
    qe_sig = raw_sign(pki.pck_key, qe_report)
    chain_pem = chain if chain is not None else pem(pki.pck, pki.ca, pki.root) + b"\x00"
    inner = struct.pack("<HI", 5, len(chain_pem)) + chain_pem
    outer = qe_report + qe_sig + struct.pack("<H", len(auth)) + auth + inner
    sig_data = signature + ak_raw + struct.pack("<HI", 6, len(outer)) + outer
    return header + body + struct.pack("<I", len(sig_data)) + sig_data + trailing


# -------------------------------------------------------------------------------- synthetic collateral


def _date(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def tcb_level(
    sgx: Sequence[int],
    pce_svn: int,
    tdx: Sequence[int],
    status: str,
    date: str,
    advisories: Sequence[str] = (),
) -> dict[str, Any]:
    level: dict[str, Any] = {
        "tcb": {
            "sgxtcbcomponents": [{"svn": s} for s in sgx],
            "pcesvn": pce_svn,
            "tdxtcbcomponents": [{"svn": s} for s in tdx],
        },
        "tcbDate": date,
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def pad16(values: Sequence[int]) -> list[int]:
    return list(values) + [0] * (16 - len(values))


DEFAULT_LEVELS = [
    tcb_level(pad16([7, 7, 2, 2, 3, 1, 0, 3]), 11, pad16([5, 0, 7]), "UpToDate", "2024-03-13T00:00:00Z"),
    tcb_level(
        pad16([6, 6, 2, 2, 3, 1, 0, 3]),
        11,
        pad16([3, 0, 6]),
        "OutOfDate",
        "2023-08-09T00:00:00Z",
        ["INTEL-SA-00960"],
    ),
]
DEFAULT_MODULE_LEVELS = [
    {"tcb": {"isvsvn": 4}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
    {
        "tcb": {"isvsvn": 2},
        "tcbDate": "2023-08-09T00:00:00Z",
        "tcbStatus": "OutOfDate",
        "advisoryIDs": ["INTEL-SA-01"],
    },
]


def tcb_info_obj(
    *,
    levels: Sequence[dict[str, Any]] = DEFAULT_LEVELS,
    module_levels: Sequence[dict[str, Any]] = DEFAULT_MODULE_LEVELS,
    module_ids: Sequence[str] = ("TDX_01",),
    fmspc: str = "00806F050000",
    issue: datetime = NOW - timedelta(days=1),
    next_update: datetime = NOW + timedelta(days=29),
    module_mrsigner: str = "00" * 48,
) -> dict[str, Any]:
    module = {
        "mrsigner": module_mrsigner,
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
    }
    return {
        "id": "TDX",
        "version": 3,
        "issueDate": _date(issue),
        "nextUpdate": _date(next_update),
        "fmspc": fmspc,
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": module,
        "tdxModuleIdentities": [{"id": i, **module, "tcbLevels": list(module_levels)} for i in module_ids],
        "tcbLevels": list(levels),
    }


def qe_identity_obj(
    *,
    levels: Sequence[dict[str, Any]] = (
        {"tcb": {"isvsvn": 4}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
    ),
    issue: datetime = NOW - timedelta(days=1),
    next_update: datetime = NOW + timedelta(days=29),
    mrsigner: str = INTEL_QE_MRSIGNER.hex().upper(),
) -> dict[str, Any]:
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _date(issue),
        "nextUpdate": _date(next_update),
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": mrsigner,
        "isvprodid": 2,
        "tcbLevels": list(levels),
    }


def signed_body(key: ec.EllipticCurvePrivateKey, member: str, obj: dict[str, Any]) -> bytes:
    """A PCS-style body: the member's JSON text exactly as signed, then the signature."""
    raw = json.dumps(obj, separators=(",", ":"))
    sig = raw_sign(key, raw.encode()).hex()
    return (f'{{"{member}":{raw},"signature":"{sig}"}}').encode()


def make_crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    revoked: Sequence[int] = (),
    *,
    this_update: datetime = NOW - timedelta(days=1),
    next_update: datetime = NOW + timedelta(days=29),
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def make_collateral(
    pki: Pki,
    *,
    tcb_info: dict[str, Any] | None = None,
    qe_identity: dict[str, Any] | None = None,
    pck_crl: bytes | None = None,
    root_crl: bytes | None = None,
    tcb_chain: bytes | None = None,
    pck_crl_chain: bytes | None = None,
) -> Collateral:
    return collateral_from_pcs(
        tcb_info=signed_body(pki.tcb_key, "tcbInfo", tcb_info if tcb_info is not None else tcb_info_obj()),
        qe_identity=signed_body(
            pki.tcb_key, "enclaveIdentity", qe_identity if qe_identity is not None else qe_identity_obj()
        ),
        tcb_info_issuer_chain=tcb_chain if tcb_chain is not None else pem(pki.tcb, pki.root),
        pck_crl=pck_crl if pck_crl is not None else make_crl(pki.ca, pki.ca_key),
        root_ca_crl=root_crl if root_crl is not None else make_crl(pki.root, pki.root_key),
        pck_crl_issuer_chain=pck_crl_chain,
    )
