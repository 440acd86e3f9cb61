"""NVIDIA reference integrity manifests (RIMs): SWID tags (ISO/IEC 19770-2) with TCG RIM-IM ``Meta``, 64
``Resource type="Measurement"`` entries and an enveloped XML-DSig signature whose signer chain is in
``KeyInfo`` (L4 signer ← L3 ← "NVIDIA Reference Value … CA" ← NVIDIA CoRIM signing Root CA).

:func:`verify_rim` (pure: ``now`` is a parameter):

1. At most :data:`MAX_RIM_BYTES`, parsed without entities, DTD or network.
2. The ``KeyInfo`` chain to the pinned CoRIM root (package data), each certificate valid at ``now``.
   NVIDIA's RIM signers live two years: a RIM is verified at a time inside its signer's window or not at
   all (``rim-certificate-expired``); there is no "accept expired" switch.
3. The XML signature — ECDSA P-384 / SHA-384 only, C14N 1.1 — verified by **signxml** (XML
   canonicalisation is not something to write by hand) with the chain's signer certificate only, never a
   key the document names. Measurements are then read from what signxml returns as signed (the whole
   document, URI=""), so nothing outside the signature can be smuggled in.
4. Measurements: ``index`` 0..63 unique, ``active`` True/False, ``alternatives`` N with ``Hash0..HashN-1``
   (SHA-384, 96 hex digits) in the SHA-384 namespace.

**Index mapping.** RIM index *i* is SPDM measurement block *i + 1* (checked on the real vectors: the
known-good pairs match only with that offset). :func:`compare_with_rims` applies NVIDIA's one exception:
with NVDEC0 disabled (opaque NVDEC0_STATUS = 0x55) RIM index 35 is not compared (attestation-sdk
``verify.cpp``). :func:`reference_values_from_rims` turns verified RIMs into an ``nvidia-gpu``
reference-value document (``gpu.measurement.<i+1>``), which the tenant then publishes CI-signed like any
other set: the keyserver appraises GPUs with one mechanism, whatever the source of the values.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from keyserver.errors import EvidenceError

from .certs import DECODE_ERRORS, TrustedRoot, describe, trusted_root

MAX_RIM_BYTES = 512 * 1024
MAX_RIM_CERTS = 8
RIM_SLOTS = 64
NVDEC_RIM_INDEX = 35
_DS = "http://www.w3.org/2000/09/xmldsig#"
_SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
_RIM_IM = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/"
_SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
_MAX_ALTERNATIVES = 16


@dataclass(frozen=True)
class Rim:
    product: str  # SoftwareIdentity/@name, e.g. "GH100"
    version: str  # Meta/@colloquialVersion: a driver version (550.144.03) or a VBIOS version (96.00.5E.00.01)
    manufacturer_id: str | None
    measurements: MappingProxyType[int, tuple[str, ...]]  # active RIM index -> accepted SHA-384 values (hex)
    signer: str  # the signer certificate's subject
    signed: bool  # False only for parse_rim_unverified (tests, comparison tooling)


@dataclass(frozen=True)
class RimComparison:
    compared: tuple[int, ...]  # RIM indices compared
    mismatched: tuple[int, ...]  # RIM indices whose block value is none of the alternatives

    @property
    def all_match(self) -> bool:
        return not self.mismatched


def _err(reason: str, message: str) -> EvidenceError:
    return EvidenceError(reason, f"the RIM {message}")


@cache
def corim_root() -> TrustedRoot:
    """NVIDIA CoRIM signing Root CA (package data; SHA-256 12977b51…f5d1)."""
    data = resources.files(__package__).joinpath("roots/nvidia_corim_signing_root_ca.pem").read_bytes()
    return trusted_root(data)


def _parse_xml(data: bytes) -> Any:
    if len(data) > MAX_RIM_BYTES:
        raise _err("rim-malformed", f"is over {MAX_RIM_BYTES} bytes")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=False
    )
    try:
        root = etree.fromstring(bytes(data), parser=parser)
    except etree.XMLSyntaxError as exc:
        raise _err("rim-malformed", f"is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise _err("rim-malformed", "has a DOCTYPE; RIMs have none")
    if root.tag != f"{{{_SWID}}}SoftwareIdentity":
        raise _err("rim-malformed", f"root element is {root.tag!r}, not a SWID SoftwareIdentity")
    return root


def _signer_chain(root: Any) -> list[x509.Certificate]:
    elements = root.findall(f"{{{_DS}}}Signature/{{{_DS}}}KeyInfo/{{{_DS}}}X509Data/{{{_DS}}}X509Certificate")
    if not elements:
        raise _err("rim-chain-invalid", "carries no X509Certificate in its signature's KeyInfo")
    if len(elements) > MAX_RIM_CERTS:
        raise _err("rim-malformed", f"carries more than {MAX_RIM_CERTS} certificates")
    try:
        return [
            x509.load_der_x509_certificate(base64.b64decode("".join((e.text or "").split()), validate=True))
            for e in elements
        ]
    except (binascii.Error, *DECODE_ERRORS) as exc:  # type: ignore[misc]
        raise _err("rim-chain-invalid", f"carries a certificate that cannot be parsed: {exc}") from None


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, *DECODE_ERRORS):  # type: ignore[misc]
        return False
    return True


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verify_chain(certs: list[x509.Certificate], root: TrustedRoot, now: datetime) -> x509.Certificate:
    if certs[-1].public_bytes(Encoding.DER) == root.der:
        certs = certs[:-1]
    if not certs:
        raise _err("rim-chain-invalid", "is signed by its root certificate alone")
    for child, issuer in itertools.pairwise(certs):
        if not _issued_by(child, issuer):
            raise _err("rim-chain-invalid", f"signer chain breaks at {describe(child)} ← {describe(issuer)}")
    if not _issued_by(certs[-1], root.cert):
        raise _err(
            "rim-chain-untrusted",
            f"signer chain ends at {describe(certs[-1])}, not signed by the pinned NVIDIA CoRIM signing root",
        )
    for cert in (*certs, root.cert):
        if now < cert.not_valid_before_utc:
            raise _err(
                "rim-certificate-not-yet-valid",
                f"signer chain's {describe(cert)} is valid from {_iso(cert.not_valid_before_utc)} "
                f"(now {_iso(now)})",
            )
        if now > cert.not_valid_after_utc:
            raise _err(
                "rim-certificate-expired",
                f"signer chain's {describe(cert)} expired at {_iso(cert.not_valid_after_utc)} "
                f"(now {_iso(now)}); "
                "use a RIM whose signer is current, or verify at a time inside its window",
            )
    return certs[0]


def _measurements(root: Any) -> MappingProxyType[int, tuple[str, ...]]:
    payload = root.find(f"{{{_SWID}}}Payload")
    if payload is None:
        raise _err("rim-malformed", "has no Payload")
    out: dict[int, tuple[str, ...]] = {}
    seen: set[int] = set()
    for resource in payload.findall(f"{{{_SWID}}}Resource"):
        if resource.get("type") != "Measurement":
            continue
        try:
            index = int(resource.get("index", ""))
            alternatives = int(resource.get("alternatives", ""))
        except ValueError:
            raise _err("rim-malformed", "has a Measurement without a numeric index or alternatives") from None
        if not 0 <= index < RIM_SLOTS or index in seen:
            raise _err("rim-malformed", f"has Measurement index {index} out of range or twice")
        seen.add(index)
        active = resource.get("active")
        if active not in ("True", "False"):
            raise _err("rim-malformed", f"Measurement {index} has active={active!r}")
        if active == "False":
            continue
        if not 1 <= alternatives <= _MAX_ALTERNATIVES:
            raise _err("rim-malformed", f"Measurement {index} has {alternatives} alternatives")
        values = []
        for n in range(alternatives):
            value = (resource.get(f"{{{_SHA384_NS}}}Hash{n}") or "").lower()
            if len(value) != 96 or any(c not in "0123456789abcdef" for c in value):
                raise _err("rim-malformed", f"Measurement {index} Hash{n} is not a SHA-384 digest")
            values.append(value)
        out[index] = tuple(values)
    if not out:
        raise _err("rim-malformed", "has no active Measurement")
    return MappingProxyType(out)


def _rim(root: Any, signer: str, signed: bool) -> Rim:
    meta = root.find(f"{{{_SWID}}}Meta")
    version = None if meta is None else meta.get("colloquialVersion")
    if not version:
        raise _err("rim-malformed", "has no Meta colloquialVersion")
    return Rim(
        product=root.get("name") or "",
        version=version,
        manufacturer_id=None if meta is None else meta.get(f"{{{_RIM_IM}}}FirmwareManufacturerId"),
        measurements=_measurements(root),
        signer=signer,
        signed=signed,
    )


def verify_rim(data: bytes, *, now: datetime, roots: Sequence[TrustedRoot] | None = None) -> Rim:
    from signxml.algorithms import DigestAlgorithm, SignatureMethod
    from signxml.exceptions import InvalidInput, SignXMLException
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    now = now.astimezone(UTC)
    parsed = _parse_xml(data)
    certs = _signer_chain(parsed)
    last_error: EvidenceError | None = None
    signer: x509.Certificate | None = None
    for root in roots if roots is not None else (corim_root(),):
        try:
            signer = _verify_chain(certs, root, now)
            break
        except EvidenceError as exc:
            last_error = exc
    if signer is None:
        assert last_error is not None
        raise last_error
    config = SignatureConfiguration(
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=now,
    )
    try:
        result = XMLVerifier().verify(bytes(data), x509_cert=signer, expect_config=config)
    except (SignXMLException, InvalidInput, ValueError, etree.LxmlError) as exc:  # lxml: schema checks
        raise _err(
            "rim-signature-invalid", f"XML signature does not verify under its signer: {exc}"
        ) from None
    signed_xml = result.signed_xml if not isinstance(result, list) else None
    if signed_xml is None or signed_xml.tag != parsed.tag:
        raise _err("rim-signature-invalid", "signature does not cover the whole SoftwareIdentity")
    return _rim(signed_xml, signer.subject.rfc4514_string(), True)


def parse_rim_unverified(data: bytes) -> Rim:
    """The RIM's content **without** its signature or chain: for comparison tooling and tests on RIMs whose
    signature is known not to verify (edited samples). Never an input to a release decision."""
    parsed = _parse_xml(data)
    certs = _signer_chain(parsed)
    return _rim(parsed, certs[0].subject.rfc4514_string(), False)


def _merged(rims: Sequence[Rim]) -> dict[int, tuple[str, ...]]:
    merged: dict[int, tuple[str, ...]] = {}
    for rim in rims:
        for index, values in rim.measurements.items():
            if index in merged:
                raise EvidenceError(
                    "rim-overlap",
                    f"RIM index {index} is in two RIMs; a driver and a VBIOS RIM measure disjoint blocks",
                )
            merged[index] = values
    return merged


def compare_with_rims(
    measurements: Sequence[str], rims: Sequence[Rim], *, nvdec0_disabled: bool
) -> RimComparison:
    """Each active RIM index *i* against SPDM block *i + 1* (``measurements[i]``, lowercase hex)."""
    compared, mismatched = [], []
    for index, values in sorted(_merged(rims).items()):
        if nvdec0_disabled and index == NVDEC_RIM_INDEX:
            continue
        compared.append(index)
        if index >= len(measurements) or measurements[index] not in values:
            mismatched.append(index)
    return RimComparison(tuple(compared), tuple(mismatched))


def reference_values_from_rims(rims: Sequence[Rim]) -> dict[str, Any]:
    """An ``nvidia-gpu`` reference-value document pinning every active RIM measurement (block = index+1)."""
    unsigned = [rim.version for rim in rims if not rim.signed]
    if unsigned:
        raise EvidenceError("rim-signature-invalid", f"RIM {unsigned[0]} was not verified; verify it first")
    expected = {
        f"gpu.measurement.{index + 1}": list(values) for index, values in sorted(_merged(rims).items())
    }
    return {"version": 1, "expected": expected}
