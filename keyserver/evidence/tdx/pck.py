"""The PCK certificate chain carried in a TDX quote, and Intel's SGX extensions in the PCK leaf.

Chain (certification data type 5, PEM): PCK leaf <- Intel SGX PCK Platform/Processor CA <- Intel SGX Root
CA. Checks (*Intel SGX PCK Certificate and CRL Profile Specification*, §1.3 "Certificate Formats"; Intel
QVL ``QuoteVerifier::verify`` 4.1.2.4.4):

* exactly three certificates; the last is anchored to the trusted root by public key and is validly
  self-signed (:func:`~keyserver.evidence.tdx.certs.anchor_root`);
* the intermediate is a CA named ``Intel SGX PCK Platform CA`` or ``Intel SGX PCK Processor CA``, issued and
  signed by the trusted root;
* the leaf's subject CN contains ``SGX PCK Certificate``, it is not a CA, has a P-256 key, and is issued
  and signed by the intermediate;
* every certificate (and the trusted root) is valid at ``now``.

SGX extensions (OID ``1.2.840.113741.1.13.1``, profile spec §1.3.5 "Intel SGX PCK Certificate"): a
SEQUENCE of (OID, value) pairs: PPID (``.1``, OCTET STRING 16), TCB (``.2``: SGX TCB components ``.2.1``
- ``.2.16`` INTEGER, PCESVN ``.2.17`` INTEGER, CPUSVN ``.2.18`` OCTET STRING 16), PCE-ID (``.3``, OCTET
STRING 2), FMSPC (``.4``, OCTET STRING 6), SGX Type (``.5``, ENUMERATED: 0 Standard, 1 Scalable, 2 Scalable
with Integrity) and, in Platform CA-issued certificates, PlatformInstanceID (``.6``, OCTET STRING 16) and
Configuration (``.7``: dynamicPlatform ``.7.1``, cachedKeys ``.7.2``, SMTEnabled ``.7.3``, BOOLEAN). The
decoder is strict: each field at most once, the mandatory ones present, no unknown OIDs, exact sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from keyserver.errors import EvidenceError

from .certs import (
    PCK_CA_CNS,
    PCK_LEAF_CN_PHRASE,
    PCK_PLATFORM_CA_CN,
    anchor_root,
    check_validity,
    common_name,
    is_ca,
    split_pem_certificates,
    verify_issued_by,
)
from .der import (
    TAG_BOOLEAN,
    TAG_ENUMERATED,
    TAG_INTEGER,
    TAG_OCTET_STRING,
    TAG_OID,
    TAG_SEQUENCE,
    DerError,
    DerReader,
    decode_boolean,
    decode_oid,
    decode_unsigned,
)

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_OID_PPID = SGX_EXTENSIONS_OID + ".1"
_OID_TCB = SGX_EXTENSIONS_OID + ".2"
_OID_PCEID = SGX_EXTENSIONS_OID + ".3"
_OID_FMSPC = SGX_EXTENSIONS_OID + ".4"
_OID_SGX_TYPE = SGX_EXTENSIONS_OID + ".5"
_OID_PLATFORM_INSTANCE_ID = SGX_EXTENSIONS_OID + ".6"
_OID_CONFIGURATION = SGX_EXTENSIONS_OID + ".7"
_OID_PCESVN = _OID_TCB + ".17"
_OID_CPUSVN = _OID_TCB + ".18"

SGX_TYPES = {0: "standard", 1: "scalable", 2: "scalable-with-integrity"}

_CHAIN_MALFORMED = "pck-chain-malformed"
_CHAIN_INVALID = "pck-chain-invalid"
_EXT_INVALID = "pck-extensions-invalid"


@dataclass(frozen=True)
class PckTcb:
    sgx_components: tuple[int, ...]  # 16 SGX TCB component SVNs (0..255)
    pce_svn: int
    cpu_svn: bytes  # 16


@dataclass(frozen=True)
class PckConfiguration:
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


@dataclass(frozen=True)
class PckExtensions:
    ppid: bytes
    tcb: PckTcb
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    configuration: PckConfiguration | None


@dataclass(frozen=True)
class PckChain:
    """A verified PCK chain: leaf, intermediate (Platform or Processor CA) and the embedded root."""

    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate
    extensions: PckExtensions

    @property
    def ca_kind(self) -> str:
        return "platform" if common_name(self.intermediate.subject) == PCK_PLATFORM_CA_CN else "processor"

    @property
    def leaf_key(self) -> ec.EllipticCurvePublicKey:
        key = self.leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # checked in verify_pck_chain
        return key


def _ext_error(message: str) -> EvidenceError:
    return EvidenceError(
        _EXT_INVALID,
        f"the PCK certificate's SGX extensions (OID {SGX_EXTENSIONS_OID}) are invalid: {message}",
    )


def _octets(value: bytes, size: int, name: str) -> bytes:
    """``value`` is the content of an OCTET STRING; it must be exactly ``size`` bytes."""
    if len(value) != size:
        raise _ext_error(f"{name} is {len(value)} bytes, expected {size}")
    return value


def _pairs(content: bytes, what: str) -> list[tuple[str, int, bytes]]:
    """Decode ``SEQUENCE OF SEQUENCE { OID, value }`` content into (oid, value tag, value)."""
    out: list[tuple[str, int, bytes]] = []
    seen: set[str] = set()
    reader = DerReader(content)
    while not reader.at_end():
        pair = DerReader(reader.expect(TAG_SEQUENCE))
        oid = decode_oid(pair.expect(TAG_OID))
        value = pair.read()
        pair.finish()
        if oid in seen:
            raise _ext_error(f"{what} repeats {oid}")
        seen.add(oid)
        out.append((oid, value.tag, value.value))
    return out


def _expect_tag(oid: str, tag: int, wanted: int) -> None:
    if tag != wanted:
        raise _ext_error(f"{oid} has tag 0x{tag:02x}, expected 0x{wanted:02x}")


def _parse_tcb(content: bytes) -> PckTcb:
    comps: dict[int, int] = {}
    pce_svn: int | None = None
    cpu_svn: bytes | None = None
    for oid, tag, value in _pairs(content, "the TCB extension"):
        if oid == _OID_PCESVN:
            _expect_tag(oid, tag, TAG_INTEGER)
            pce_svn = decode_unsigned(value, max_value=0xFFFF)
        elif oid == _OID_CPUSVN:
            _expect_tag(oid, tag, TAG_OCTET_STRING)
            cpu_svn = _octets(value, 16, "CPUSVN")
        elif oid.startswith(_OID_TCB + ".") and oid.count(".") == _OID_TCB.count(".") + 1:
            index = int(oid.rsplit(".", 1)[1])
            if not 1 <= index <= 16:
                raise _ext_error(f"unknown TCB field {oid}")
            _expect_tag(oid, tag, TAG_INTEGER)
            comps[index] = decode_unsigned(value, max_value=0xFF)
        else:
            raise _ext_error(f"unknown TCB field {oid}")
    if len(comps) != 16 or pce_svn is None or cpu_svn is None:
        raise _ext_error("the TCB extension must hold 16 SGX TCB component SVNs, PCESVN and CPUSVN")
    return PckTcb(sgx_components=tuple(comps[i] for i in range(1, 17)), pce_svn=pce_svn, cpu_svn=cpu_svn)


def _parse_configuration(content: bytes) -> PckConfiguration:
    values: dict[str, bool] = {}
    for oid, tag, value in _pairs(content, "the Configuration extension"):
        if oid not in (f"{_OID_CONFIGURATION}.1", f"{_OID_CONFIGURATION}.2", f"{_OID_CONFIGURATION}.3"):
            raise _ext_error(f"unknown Configuration field {oid}")
        _expect_tag(oid, tag, TAG_BOOLEAN)
        values[oid] = decode_boolean(value)
    return PckConfiguration(
        dynamic_platform=values.get(f"{_OID_CONFIGURATION}.1"),
        cached_keys=values.get(f"{_OID_CONFIGURATION}.2"),
        smt_enabled=values.get(f"{_OID_CONFIGURATION}.3"),
    )


def parse_sgx_extensions(extension_value: bytes) -> PckExtensions:
    """Decode the DER value of the SGX extensions (see module docstring)."""
    ppid: bytes | None = None
    tcb: PckTcb | None = None
    pce_id: bytes | None = None
    fmspc: bytes | None = None
    sgx_type: int | None = None
    instance: bytes | None = None
    config: PckConfiguration | None = None
    try:
        outer = DerReader(extension_value)
        content = outer.expect(TAG_SEQUENCE)
        outer.finish()
        for oid, tag, value in _pairs(content, "the SGX extensions"):  # _pairs rejects repeated OIDs
            if oid == _OID_PPID:
                _expect_tag(oid, tag, TAG_OCTET_STRING)
                ppid = _octets(value, 16, "PPID")
            elif oid == _OID_TCB:
                _expect_tag(oid, tag, TAG_SEQUENCE)
                tcb = _parse_tcb(value)
            elif oid == _OID_PCEID:
                _expect_tag(oid, tag, TAG_OCTET_STRING)
                pce_id = _octets(value, 2, "PCE-ID")
            elif oid == _OID_FMSPC:
                _expect_tag(oid, tag, TAG_OCTET_STRING)
                fmspc = _octets(value, 6, "FMSPC")
            elif oid == _OID_SGX_TYPE:
                _expect_tag(oid, tag, TAG_ENUMERATED)
                sgx_type = decode_unsigned(value, max_value=0xFF)
                if sgx_type not in SGX_TYPES:
                    raise _ext_error(f"unknown SGX Type {sgx_type}")
            elif oid == _OID_PLATFORM_INSTANCE_ID:
                _expect_tag(oid, tag, TAG_OCTET_STRING)
                instance = _octets(value, 16, "PlatformInstanceID")
            elif oid == _OID_CONFIGURATION:
                _expect_tag(oid, tag, TAG_SEQUENCE)
                config = _parse_configuration(value)
            else:
                raise _ext_error(f"unknown field {oid}")
    except DerError as exc:
        raise _ext_error(f"bad DER: {exc}") from exc
    if ppid is None or tcb is None or pce_id is None or fmspc is None or sgx_type is None:
        raise _ext_error("one of PPID, TCB, PCE-ID, FMSPC, SGX Type is missing")
    return PckExtensions(
        ppid=ppid,
        tcb=tcb,
        pce_id=pce_id,
        fmspc=fmspc,
        sgx_type=sgx_type,
        platform_instance_id=instance,
        configuration=config,
    )


def _sgx_extension_value(leaf: x509.Certificate) -> bytes:
    try:
        ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    except x509.ExtensionNotFound as exc:
        raise _ext_error("the extension is missing from the PCK certificate") from exc
    except ValueError as exc:
        raise EvidenceError(
            _CHAIN_MALFORMED, f"the PCK certificate's extensions do not parse: {exc}"
        ) from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise _ext_error("unexpected extension type")
    return value.value


def parse_pck_chain(pem: bytes) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    certs = split_pem_certificates(pem, what="PCK certificate chain in the quote", reason=_CHAIN_MALFORMED)
    if len(certs) != 3:
        raise EvidenceError(
            _CHAIN_MALFORMED,
            f"the PCK certificate chain holds {len(certs)} certificates; expected 3 (PCK leaf, PCK CA, root)",
        )
    return certs[0], certs[1], certs[2]


def verify_pck_chain(pem: bytes, *, root: x509.Certificate, now: datetime) -> PckChain:
    """Parse and verify the quote's PCK chain against ``root`` at ``now`` (see module docstring)."""
    leaf, intermediate, embedded_root = parse_pck_chain(pem)
    anchor_root(embedded_root, root, "PCK certificate chain in the quote")
    inter_cn = common_name(intermediate.subject)
    if inter_cn not in PCK_CA_CNS:
        raise EvidenceError(
            _CHAIN_INVALID,
            f"the PCK chain's intermediate is {inter_cn!r}, not an Intel SGX PCK Platform/Processor CA",
        )
    if not is_ca(intermediate):
        raise EvidenceError(_CHAIN_INVALID, "the PCK chain's intermediate is not a CA certificate")
    verify_issued_by(intermediate, root, f"PCK chain intermediate ({inter_cn})", _CHAIN_INVALID)
    leaf_cn = common_name(leaf.subject) or ""
    if PCK_LEAF_CN_PHRASE not in leaf_cn:
        raise EvidenceError(
            _CHAIN_INVALID, f"the PCK leaf's CN {leaf_cn!r} does not name an SGX PCK Certificate"
        )
    if is_ca(leaf):
        raise EvidenceError(_CHAIN_INVALID, "the PCK leaf is a CA certificate")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise EvidenceError(_CHAIN_INVALID, "the PCK leaf's key is not an ECDSA P-256 key")
    verify_issued_by(leaf, intermediate, "PCK leaf certificate", _CHAIN_INVALID)
    check_validity(root, now, "trusted Intel SGX Root CA")
    check_validity(embedded_root, now, "root certificate in the quote's PCK chain")
    check_validity(intermediate, now, f"PCK chain intermediate ({inter_cn})")
    check_validity(leaf, now, "PCK leaf certificate")
    extensions = parse_sgx_extensions(_sgx_extension_value(leaf))
    return PckChain(leaf=leaf, intermediate=intermediate, root=embedded_root, extensions=extensions)
