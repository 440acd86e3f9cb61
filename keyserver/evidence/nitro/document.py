"""AWS Nitro Enclaves attestation document: COSE_Sign1 (RFC 9052) over a CBOR map. Pure parsing.

The NSM returns ``[protected, unprotected, payload, signature]`` (optionally CBOR tag 18) where
``protected`` is the CBOR map ``{1: -35}`` (ES384), ``payload`` the CBOR attestation document and
``signature`` the 96-byte raw r‖s. The document's fields and bounds are AWS's ("Verifying the root of
trust", Nitro Enclaves User Guide): module_id, digest = "SHA384", timestamp (ms), pcrs {0..31: 32/48/64
bytes}, certificate (DER leaf), cabundle (DER, root first), and optional public_key, user_data, nonce.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from keyserver.errors import EvidenceError

MAX_DOCUMENT = 64 * 1024
COSE_SIGN1_TAG = 18
ALG_ES384 = -35
SIGNATURE_BYTES = 96
MAX_PCRS = 32
PCR_SIZES = (32, 48, 64)
MAX_CERT = 1024
MAX_CABUNDLE = 16
MAX_PUBLIC_KEY = 1024
MAX_USER_DATA = 512
MAX_NONCE = 512


def _malformed(message: str) -> EvidenceError:
    return EvidenceError("nitro-document-malformed", message)


@dataclass(frozen=True)
class NitroDocument:
    protected: bytes  # the protected header bytes, exactly as signed
    payload: bytes  # the CBOR attestation document, exactly as signed
    signature: bytes  # r‖s, 48 bytes each
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    def signed_bytes(self) -> bytes:
        """RFC 9052 §4.4 Sig_structure for COSE_Sign1 with empty external_aad."""
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


def _loads(data: bytes, what: str) -> Any:
    """One CBOR item filling ``data`` exactly (``cbor2.loads`` would ignore bytes after the item)."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _malformed(f"the {what} is not valid CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise _malformed(f"the {what} has {len(data) - stream.tell()} bytes after its CBOR item")
    return value


def _bytes(doc: Mapping[Any, Any], name: str, *, low: int, high: int, optional: bool = False) -> bytes | None:
    value = doc.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise _malformed(f"the document's {name!r} must be a byte string of {low} to {high} bytes")
    return value


def parse_document(data: bytes) -> NitroDocument:
    """Parse a COSE_Sign1 Nitro attestation document; ``nitro-document-malformed`` on every structural
    problem (:func:`~keyserver.evidence.nitro.verify_nitro_document` checks the signature and chain)."""
    if len(data) > MAX_DOCUMENT:
        raise _malformed(f"the document is {len(data)} bytes; at most {MAX_DOCUMENT} are accepted")
    outer = _loads(data, "COSE_Sign1 envelope")
    if isinstance(outer, cbor2.CBORTag):
        if outer.tag != COSE_SIGN1_TAG:
            raise _malformed(f"the document is CBOR tag {outer.tag}, not COSE_Sign1 (18)")
        outer = outer.value
    if not isinstance(outer, list | tuple) or len(outer) != 4:  # cbor2 decodes some arrays as tuples
        raise _malformed("the document is not a COSE_Sign1 array of four items")
    protected, unprotected, payload, signature = outer
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        raise _malformed("the COSE_Sign1 protected header, payload and signature must be byte strings")
    if not isinstance(unprotected, Mapping):
        raise _malformed("the COSE_Sign1 unprotected header must be a map")
    header = _loads(protected, "protected header")
    if not isinstance(header, Mapping) or header.get(1) != ALG_ES384:
        raise _malformed("the COSE protected header does not name ES384 (alg -35)")
    if 1 in unprotected:
        raise _malformed("the COSE algorithm must be in the protected header only")
    if len(signature) != SIGNATURE_BYTES:
        raise _malformed(f"an ES384 signature is {SIGNATURE_BYTES} bytes, not {len(signature)}")
    doc = _loads(payload, "attestation document")
    if not isinstance(doc, Mapping) or not all(isinstance(k, str) for k in doc):
        raise _malformed("the attestation document is not a map with text keys")
    module_id, digest, timestamp = doc.get("module_id"), doc.get("digest"), doc.get("timestamp")
    if not isinstance(module_id, str) or not module_id:
        raise _malformed("the document's 'module_id' must be a non-empty string")
    if digest != "SHA384":
        raise _malformed("the document's 'digest' must be 'SHA384'")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 < timestamp < 2**63:
        raise _malformed("the document's 'timestamp' must be a positive integer (milliseconds)")
    raw_pcrs = doc.get("pcrs")
    if not isinstance(raw_pcrs, Mapping) or not 1 <= len(raw_pcrs) <= MAX_PCRS:
        raise _malformed(f"the document's 'pcrs' must be a map of 1 to {MAX_PCRS} entries")
    pcrs: dict[int, bytes] = {}
    for index, value in raw_pcrs.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_PCRS:
            raise _malformed(f"PCR index {index!r} is not 0 to {MAX_PCRS - 1}")
        if not isinstance(value, bytes) or len(value) not in PCR_SIZES:
            raise _malformed(f"PCR{index} must be 32, 48 or 64 bytes")
        pcrs[index] = value
    cabundle = doc.get("cabundle")
    if not isinstance(cabundle, list | tuple) or not 1 <= len(cabundle) <= MAX_CABUNDLE:
        raise _malformed(f"the document's 'cabundle' must list 1 to {MAX_CABUNDLE} certificates")
    if not all(isinstance(c, bytes) and 1 <= len(c) <= MAX_CERT for c in cabundle):
        raise _malformed(f"every 'cabundle' entry must be a DER certificate of 1 to {MAX_CERT} bytes")
    certificate = _bytes(doc, "certificate", low=1, high=MAX_CERT)
    assert certificate is not None
    return NitroDocument(
        protected=protected,
        payload=payload,
        signature=signature,
        module_id=module_id,
        digest=digest,
        timestamp_ms=timestamp,
        pcrs=pcrs,
        certificate=certificate,
        cabundle=tuple(cabundle),
        public_key=_bytes(doc, "public_key", low=1, high=MAX_PUBLIC_KEY, optional=True),
        user_data=_bytes(doc, "user_data", low=0, high=MAX_USER_DATA, optional=True),
        nonce=_bytes(doc, "nonce", low=0, high=MAX_NONCE, optional=True),
    )
