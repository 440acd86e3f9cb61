"""Synthetic AWS Nitro documents: a throwaway P-384 root → intermediate → leaf chain and COSE_Sign1
signing, for tests that need a document answering *our* challenge (real ones cannot) or re-signed by
another key. The verifier accepts these only when the test passes the synthetic root explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

PROTECTED = cbor2.dumps({1: -35})


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA384())
    )


@dataclass
class SyntheticNitro:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, now: datetime | None = None) -> SyntheticNitro:
        now = now or datetime.now(UTC)
        keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(3)]
        start, end = now - timedelta(hours=1), now + timedelta(hours=2)
        root = _cert(
            "test.nitro-enclaves",
            keys[0],
            "test.nitro-enclaves",
            keys[0],
            ca=True,
            not_before=start - timedelta(days=1),
            not_after=end + timedelta(days=1),
        )
        inter = _cert(
            "test.zone", keys[1], "test.nitro-enclaves", keys[0], ca=True, not_before=start, not_after=end
        )
        leaf = _cert("test.enclave", keys[2], "test.zone", keys[1], ca=False, not_before=start, not_after=end)
        return cls(root, inter, leaf, keys[2])

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(Encoding.DER)

    def document(
        self,
        *,
        nonce: bytes | None = None,
        user_data: bytes | None = None,
        public_key: bytes | None = None,
        pcrs: dict[int, bytes] | None = None,
        timestamp: datetime | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bytes:
        ts = timestamp or datetime.now(UTC)
        payload = {
            "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
            "digest": "SHA384",
            "timestamp": int(ts.timestamp() * 1000),
            "pcrs": pcrs if pcrs is not None else {i: bytes([i + 1]) * 48 for i in range(16)},
            "certificate": self.leaf.public_bytes(Encoding.DER),
            "cabundle": [self.root_der, self.intermediate.public_bytes(Encoding.DER)],
            "public_key": public_key,
            "user_data": user_data,
            "nonce": nonce,
            **(extra or {}),
        }
        return sign(cbor2.dumps(payload), self.leaf_key)


def sign(payload: bytes, key: ec.EllipticCurvePrivateKey, protected: bytes = PROTECTED) -> bytes:
    """A COSE_Sign1 (tag 18) over ``payload``, ES384, as the NSM makes it."""
    der = key.sign(cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return cbor2.dumps(
        cbor2.CBORTag(18, [protected, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")])
    )


def resign(document: bytes, key: ec.EllipticCurvePrivateKey, **payload_changes: Any) -> bytes:
    """The same document (payload optionally edited), signed by ``key``."""
    outer = cbor2.loads(document)
    items = outer.value if isinstance(outer, cbor2.CBORTag) else outer
    payload = cbor2.loads(items[2])
    payload.update(payload_changes)
    return sign(cbor2.dumps(payload), key, items[0])
