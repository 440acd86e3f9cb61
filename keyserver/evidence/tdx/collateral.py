"""Intel TDX verification collateral: TCB info, QE identity, CRLs and their issuer chains.

Formats (*Intel SGX and Intel TDX PCS API v4*, "Get TDX TCB Info", "Get TDX QE Identity", "Get PCK Cert
CRL", "Get Root CA CRL"):

* TCB info: ``{"tcbInfo": {...}, "signature": "<hex r||s>"}`` (TDX TCB info v3, ``id`` = ``TDX``); the
  issuer chain (Intel SGX TCB Signing + Root CA, PEM) is served in the ``TCB-Info-Issuer-Chain`` header.
* QE identity: ``{"enclaveIdentity": {...}, "signature": "<hex>"}`` (v2, ``id`` = ``TD_QE``); issuer chain in
  ``SGX-Enclave-Identity-Issuer-Chain``.
* PCK CRL (issued by the PCK Platform or Processor CA) and Root CA CRL: DER (PEM and hex DER accepted too);
  the PCK CRL's issuer chain in ``SGX-PCK-CRL-Issuer-Chain``.

**The signature covers the exact bytes of the JSON value as served** ("signature: ECDSA signature over the
tcbInfo body"): the value of ``tcbInfo``/``enclaveIdentity`` is located in the body by a JSON scanner and
its bytes are verified as they are, never re-serialised (key order, spacing and number formatting are not
canonical). ECDSA P-256/SHA-256, signature as 64 bytes r||s in hex.

dcap-qvl's single-document form (Phala-Network/dcap-qvl ``QuoteCollateralV3`` as JSON) is accepted too:
``tcb_info`` and ``qe_identity`` are the signed JSON values *as strings* (their UTF-8 bytes are what is
signed), ``tcb_info_signature``/``qe_identity_signature`` hex, ``pck_crl``/``root_ca_crl`` hex DER,
``*_issuer_chain`` PEM.

A collateral **directory** holds PCS pieces, one per file, recognised by content (not by name): a JSON body
with ``tcbInfo`` or ``enclaveIdentity``; a PEM chain whose first certificate is the Intel SGX TCB Signing
certificate (issuer chain of both JSON documents) or an Intel SGX PCK Platform/Processor CA (PCK CRL issuer
chain); a CRL whose issuer is the Intel SGX Root CA or a PCK CA. Hidden files are skipped; anything else,
or two files of one kind, is an error.

Loading only parses: authenticity and freshness are checked by :func:`verify_collateral` at verification
time, against the trusted root and ``now``. Parsing is strict: unknown members, duplicate keys, wrong
types or sizes are ``collateral-malformed``; a document for the wrong TEE/version is ``collateral-mismatch``.
Parsing is also bounded, as it runs before anything is authenticated: a dcap-qvl document or a PCS JSON
body over :data:`MAX_COLLATERAL_JSON` bytes, more than :data:`MAX_TCB_LEVELS` TCB levels (of the TCB info,
a TDX module identity or the QE identity), :data:`MAX_MODULE_IDENTITIES` TDX module identities or
:data:`MAX_ADVISORY_IDS` advisory IDs in a level, or an advisory ID or component category/type longer
than :data:`MAX_FREE_STRING` characters is ``collateral-malformed``, saying which bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keyserver.errors import EvidenceError
from keyserver.evidence.x509errors import X509_DECODE_ERRORS
from keyserver.strict_json import STRICT_DECODER

from .certs import (
    INTEL_SGX_ROOT_CA_CN,
    PCK_CA_CNS,
    TCB_SIGNING_CN,
    anchor_root,
    check_validity,
    common_name,
    is_ca,
    spki,
    split_pem_certificates,
    verify_issued_by,
)

MAX_COLLATERAL_FILE = 2 * 1024 * 1024
MAX_COLLATERAL_FILES = 32

# Bounds on what a collateral document may hold, each a refusal (collateral-malformed) when exceeded: the
# parser runs on unauthenticated input before any signature is checked. Real Intel collateral (the vectors
# under tests/vectors/tdx) is far below each: dcap-qvl documents of 16,072 and 18,793 bytes, PCS TCB info
# bodies up to 4,921 bytes; at most 4 tcbLevels, 3 levels per TDX module identity, 2 module identities,
# 1 QE identity level; at most 19 advisoryIDs per level, each 14 characters ("INTEL-SA-00960"); component
# category/type strings up to 25 characters.
MAX_COLLATERAL_JSON = 256 * 1024  # a dcap-qvl document, or a PCS TCB info / QE identity body (~13x)
MAX_TCB_LEVELS = 64  # tcbLevels of the TCB info, of each TDX module identity and of the QE identity (16x)
MAX_MODULE_IDENTITIES = 16  # tdxModuleIdentities (8x)
MAX_ADVISORY_IDS = 128  # advisoryIDs of one level (~7x)
MAX_FREE_STRING = 128  # an advisory ID, a TCB component's category or type (~5x)

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
# TDX module identity and QE identity levels only use these (PCS API v4, "tdxModuleIdentities",
# "Enclave Identity V2": tcbStatus UpToDate / OutOfDate / Revoked).
IDENTITY_TCB_STATUSES = ("UpToDate", "OutOfDate", "Revoked")

_MALFORMED = "collateral-malformed"
_MISMATCH = "collateral-mismatch"
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z", re.ASCII)


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class TcbLevel:
    """One entry of ``tcbInfo.tcbLevels`` (TDX TCB info v3)."""

    sgx_components: tuple[int, ...]  # 16
    pce_svn: int
    tdx_components: tuple[int, ...]  # 16
    tcb_date: datetime
    tcb_status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class IdentityTcbLevel:
    """A ``{"tcb": {"isvsvn": n}, ...}`` level of a TDX module identity or of the QE identity."""

    isvsvn: int
    tcb_date: datetime
    tcb_status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    mrsigner: bytes  # 48
    attributes: bytes  # 8
    attributes_mask: bytes  # 8


@dataclass(frozen=True)
class TdxModuleIdentity:
    id: str  # "TDX_<major version, two uppercase hex digits>"
    module: TdxModule
    tcb_levels: tuple[IdentityTcbLevel, ...]  # sorted by isvsvn, highest first


@dataclass(frozen=True)
class TcbInfo:
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]  # in Intel QVL's order (see :func:`_qvl_order`)


@dataclass(frozen=True)
class QeIdentity:
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes  # 16
    attributes_mask: bytes  # 16
    mrsigner: bytes  # 32
    isv_prod_id: int
    tcb_levels: tuple[IdentityTcbLevel, ...]  # sorted by isvsvn, highest first


@dataclass(frozen=True)
class SignedTcbInfo:
    raw: bytes  # the exact signed bytes
    signature: bytes  # r||s
    tcb_info: TcbInfo


@dataclass(frozen=True)
class SignedQeIdentity:
    raw: bytes
    signature: bytes
    qe_identity: QeIdentity


@dataclass(frozen=True)
class Collateral:
    """Everything needed to appraise a TDX quote's TCB (parsed, not yet verified)."""

    tcb_info: SignedTcbInfo
    qe_identity: SignedQeIdentity
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    pck_crl: x509.CertificateRevocationList
    root_ca_crl: x509.CertificateRevocationList
    pck_crl_issuer_chain: tuple[x509.Certificate, ...] | None = None

    @property
    def next_update(self) -> datetime:
        """The earliest instant at which a piece of this collateral goes stale."""
        crl_updates = [c.next_update_utc for c in (self.pck_crl, self.root_ca_crl) if c.next_update_utc]
        return min(
            [self.tcb_info.tcb_info.next_update, self.qe_identity.qe_identity.next_update, *crl_updates]
        )


# ------------------------------------------------------------------------------------ JSON helpers


def _malformed(what: str, message: str) -> EvidenceError:
    return EvidenceError(_MALFORMED, f"{what}: {message}")


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a refusal's message, cut to ``limit`` characters: the input is hostile and may
    be large, and the message goes to the caller and the log."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_DECODER = STRICT_DECODER
_JSON_WS = " \t\n\r"


def _loads(text: str, what: str) -> Any:
    try:
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError) as exc:
        raise _malformed(what, f"not valid JSON ({exc})") from exc
    if text[end:].strip(_JSON_WS):
        raise _malformed(what, "trailing data after the JSON value")
    return value


def _bounded(data: bytes, what: str) -> bytes:
    if len(data) > MAX_COLLATERAL_JSON:
        raise _malformed(
            what, f"{len(data)} bytes; at most {MAX_COLLATERAL_JSON} are accepted (Intel's are ~20 KB)"
        )
    return data


def _decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(what, "not UTF-8 text") from exc


def raw_members(text: str, what: str) -> dict[str, tuple[Any, str]]:
    """Top-level members of a JSON object as ``{key: (value, exact source text of the value)}``.

    Only the object's own structure is scanned; every value is decoded by the standard decoder, which
    also reports where it ends, so the returned text is exactly the bytes that were served."""
    pos = 0

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in _JSON_WS:
            i += 1
        return i

    def expect(i: int, char: str) -> int:
        if i >= len(text) or text[i] != char:
            raise _malformed(what, f"expected {char!r} at character {i}")
        return i + 1

    pos = expect(skip_ws(pos), "{")
    members: dict[str, tuple[Any, str]] = {}
    pos = skip_ws(pos)
    if pos < len(text) and text[pos] == "}":
        pos += 1
    else:
        while True:
            pos = skip_ws(pos)
            if pos >= len(text) or text[pos] != '"':
                raise _malformed(what, f"expected a member name at character {pos}")
            try:
                key, pos = _DECODER.raw_decode(text, pos)
                pos = expect(skip_ws(pos), ":")
                start = skip_ws(pos)
                value, pos = _DECODER.raw_decode(text, start)
            except (ValueError, RecursionError) as exc:
                raise _malformed(what, f"not valid JSON ({exc})") from exc
            if not isinstance(key, str):
                raise _malformed(what, "bad member name")
            if key in members:
                raise _malformed(what, f"duplicate member {_show(key)}")
            members[key] = (value, text[start:pos])
            pos = skip_ws(pos)
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            pos = expect(pos, "}")
            break
    if text[pos:].strip(_JSON_WS):
        raise _malformed(what, "trailing data after the JSON object")
    return members


def _obj(
    value: Any, what: str, required: AbstractSet[str], optional: AbstractSet[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(what, "expected a JSON object")
    keys = set(value)
    missing = required - keys
    if missing:
        raise _malformed(what, f"missing {sorted(missing)}")
    unknown = keys - required - optional
    if unknown:
        raise _malformed(
            what, f"unknown members {_show(sorted(unknown))} (refusing what this verifier cannot interpret)"
        )
    return value


def _int(value: Any, what: str, max_value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= max_value:
        raise _malformed(what, f"expected an integer in 0..{max_value}, got {_show(value)}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _malformed(what, f"expected a string, got {type(value).__name__}")
    return value


def _hex(value: Any, what: str, size: int) -> bytes:
    text = _str(value, what)
    if len(text) != 2 * size or not re.fullmatch(r"[0-9a-fA-F]*", text):
        raise _malformed(what, f"expected {size} bytes of hex, got {_show(text, 40)}")
    return bytes.fromhex(text)


def _date(value: Any, what: str) -> datetime:
    text = _str(value, what)
    if not _DATE_RE.fullmatch(text):
        raise _malformed(what, f"expected an ISO 8601 UTC time like 2025-01-21T11:14:05Z, got {_show(text)}")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError as exc:
        raise _malformed(what, f"invalid date {_show(text)}") from exc


def _status(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    text = _str(value, what)
    if text not in allowed:
        raise _malformed(what, f"unknown TCB status {_show(text)} (known: {', '.join(allowed)})")
    return text


def _free_str(value: Any, what: str) -> str:
    """A string this verifier does not interpret (passed on, or only compared): at most
    :data:`MAX_FREE_STRING` characters."""
    text = _str(value, what)
    if len(text) > MAX_FREE_STRING:
        raise _malformed(what, f"a string of {len(text)} characters; at most {MAX_FREE_STRING} are accepted")
    return text


def _list(value: Any, what: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise _malformed(what, "expected a list")
    if len(value) > max_items:
        raise _malformed(what, f"a list of {len(value)} items; at most {max_items} are accepted")
    return value


def _advisories(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _malformed(what, "advisoryIDs must be a list of strings")
    _list(value, what, MAX_ADVISORY_IDS)
    if not all(isinstance(v, str) for v in value):
        raise _malformed(what, "advisoryIDs must be a list of strings")
    return tuple(_free_str(v, f"{what}[{i}]") for i, v in enumerate(value))


def _signature(value: Any, what: str) -> bytes:
    return _hex(value, what, 64)


# ------------------------------------------------------------------------------------ TCB info v3


def _components(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != 16:
        raise _malformed(what, "expected a list of 16 TCB components")
    out = []
    for i, comp in enumerate(value):
        c = _obj(comp, f"{what}[{i}]", {"svn"}, {"category", "type"})
        for key in ("category", "type"):
            if key in c:
                _free_str(c[key], f"{what}[{i}].{key}")
        out.append(_int(c["svn"], f"{what}[{i}].svn", 0xFF))
    return tuple(out)


def _identity_levels(value: Any, what: str) -> tuple[IdentityTcbLevel, ...]:
    if not isinstance(value, list) or not value:
        raise _malformed(what, "expected a non-empty list of TCB levels")
    levels = []
    for i, raw in enumerate(_list(value, what, MAX_TCB_LEVELS)):
        lvl = _obj(raw, f"{what}[{i}]", {"tcb", "tcbDate", "tcbStatus"}, {"advisoryIDs"})
        tcb = _obj(lvl["tcb"], f"{what}[{i}].tcb", {"isvsvn"})
        levels.append(
            IdentityTcbLevel(
                isvsvn=_int(tcb["isvsvn"], f"{what}[{i}].tcb.isvsvn", 0xFFFF),
                tcb_date=_date(lvl["tcbDate"], f"{what}[{i}].tcbDate"),
                tcb_status=_status(lvl["tcbStatus"], f"{what}[{i}].tcbStatus", IDENTITY_TCB_STATUSES),
                advisory_ids=_advisories(lvl.get("advisoryIDs"), f"{what}[{i}].advisoryIDs"),
            )
        )
    # Intel QVL keeps identity levels in a set ordered by ISVSVN, highest first.
    return tuple(sorted(levels, key=lambda lv: lv.isvsvn, reverse=True))


def _tdx_module(
    value: Any, what: str, extra: AbstractSet[str] = frozenset()
) -> tuple[TdxModule, dict[str, Any]]:
    obj = _obj(value, what, {"mrsigner", "attributes", "attributesMask"} | extra)
    return (
        TdxModule(
            mrsigner=_hex(obj["mrsigner"], f"{what}.mrsigner", 48),
            attributes=_hex(obj["attributes"], f"{what}.attributes", 8),
            attributes_mask=_hex(obj["attributesMask"], f"{what}.attributesMask", 8),
        ),
        obj,
    )


def _qvl_order(levels: list[TcbLevel]) -> tuple[TcbLevel, ...]:
    """Intel QVL keeps TDX TCB levels in a ``std::set`` ordered by ``TcbLevel::operator>``: SGX components
    (lexicographically), then PCESVN, then TDX components, highest first (AttestationParsers
    ``TcbLevel.cpp``). Matching walks that order, so it is reproduced here rather than trusting the
    JSON order (ties keep their JSON order, as the set keeps the first inserted)."""
    return tuple(
        sorted(levels, key=lambda lv: (lv.sgx_components, lv.pce_svn, lv.tdx_components), reverse=True)
    )


def parse_tcb_info(value: Any) -> TcbInfo:
    """Parse a decoded ``tcbInfo`` object (PCS API v4, "TDX TCB Info", version 3)."""
    what = "tcbInfo"
    if not isinstance(value, dict):
        raise _malformed(what, "expected a JSON object")
    if value.get("id") != "TDX":
        raise EvidenceError(
            _MISMATCH, f"tcbInfo id is {_show(value.get('id'))}; TDX quotes need the TDX TCB info (id 'TDX')"
        )
    if value.get("version") != 3:
        raise EvidenceError(
            _MISMATCH, f"tcbInfo version {_show(value.get('version'))} is not supported; TDX uses version 3"
        )
    obj = _obj(
        value,
        what,
        {
            "id",
            "version",
            "issueDate",
            "nextUpdate",
            "fmspc",
            "pceId",
            "tcbType",
            "tcbEvaluationDataNumber",
            "tdxModule",
            "tcbLevels",
        },
        {"tdxModuleIdentities"},
    )
    tcb_type = _int(obj["tcbType"], "tcbInfo.tcbType", 0xFFFF)
    if tcb_type != 0:
        raise _malformed(what, f"tcbType {tcb_type} is not supported (only 0)")
    module, _ = _tdx_module(obj["tdxModule"], "tcbInfo.tdxModule")
    identities = []
    raw_ids = obj.get("tdxModuleIdentities", [])
    if not isinstance(raw_ids, list):
        raise _malformed(what, "tdxModuleIdentities must be a list")
    _list(raw_ids, "tcbInfo.tdxModuleIdentities", MAX_MODULE_IDENTITIES)
    seen: set[str] = set()
    for i, raw in enumerate(raw_ids):
        w = f"tcbInfo.tdxModuleIdentities[{i}]"
        ident_module, ident = _tdx_module(raw, w, {"id", "tcbLevels"})
        ident_id = _str(ident["id"], f"{w}.id").upper()
        if not re.fullmatch(r"TDX_[0-9A-F]{2}", ident_id) or ident_id in seen:
            raise _malformed(w, f"bad or repeated id {_show(ident['id'])}")
        seen.add(ident_id)
        identities.append(
            TdxModuleIdentity(
                id=ident_id,
                module=ident_module,
                tcb_levels=_identity_levels(ident["tcbLevels"], f"{w}.tcbLevels"),
            )
        )
    if not isinstance(obj["tcbLevels"], list) or not obj["tcbLevels"]:
        raise _malformed(what, "tcbLevels must be a non-empty list")
    levels = []
    for i, raw in enumerate(_list(obj["tcbLevels"], "tcbInfo.tcbLevels", MAX_TCB_LEVELS)):
        w = f"tcbInfo.tcbLevels[{i}]"
        lvl = _obj(raw, w, {"tcb", "tcbDate", "tcbStatus"}, {"advisoryIDs"})
        tcb = _obj(lvl["tcb"], f"{w}.tcb", {"sgxtcbcomponents", "pcesvn", "tdxtcbcomponents"})
        levels.append(
            TcbLevel(
                sgx_components=_components(tcb["sgxtcbcomponents"], f"{w}.tcb.sgxtcbcomponents"),
                pce_svn=_int(tcb["pcesvn"], f"{w}.tcb.pcesvn", 0xFFFF),
                tdx_components=_components(tcb["tdxtcbcomponents"], f"{w}.tcb.tdxtcbcomponents"),
                tcb_date=_date(lvl["tcbDate"], f"{w}.tcbDate"),
                tcb_status=_status(lvl["tcbStatus"], f"{w}.tcbStatus", TCB_STATUSES),
                advisory_ids=_advisories(lvl.get("advisoryIDs"), f"{w}.advisoryIDs"),
            )
        )
    return TcbInfo(
        version=3,
        issue_date=_date(obj["issueDate"], "tcbInfo.issueDate"),
        next_update=_date(obj["nextUpdate"], "tcbInfo.nextUpdate"),
        fmspc=_hex(obj["fmspc"], "tcbInfo.fmspc", 6),
        pce_id=_hex(obj["pceId"], "tcbInfo.pceId", 2),
        tcb_type=tcb_type,
        tcb_evaluation_data_number=_int(
            obj["tcbEvaluationDataNumber"], "tcbInfo.tcbEvaluationDataNumber", 0xFFFFFFFF
        ),
        tdx_module=module,
        tdx_module_identities=tuple(identities),
        tcb_levels=_qvl_order(levels),
    )


def parse_qe_identity(value: Any) -> QeIdentity:
    """Parse a decoded ``enclaveIdentity`` object (PCS API v4, "Enclave Identity V2", id ``TD_QE``)."""
    what = "enclaveIdentity"
    if not isinstance(value, dict):
        raise _malformed(what, "expected a JSON object")
    if value.get("id") != "TD_QE":
        raise EvidenceError(
            _MISMATCH, f"enclaveIdentity id is {_show(value.get('id'))}; TDX quotes need the TD_QE identity"
        )
    if value.get("version") != 2:
        raise EvidenceError(
            _MISMATCH,
            f"enclaveIdentity version {_show(value.get('version'))} is not supported; TDX uses version 2",
        )
    obj = _obj(
        value,
        what,
        {
            "id",
            "version",
            "issueDate",
            "nextUpdate",
            "tcbEvaluationDataNumber",
            "miscselect",
            "miscselectMask",
            "attributes",
            "attributesMask",
            "mrsigner",
            "isvprodid",
            "tcbLevels",
        },
    )
    return QeIdentity(
        version=2,
        issue_date=_date(obj["issueDate"], "enclaveIdentity.issueDate"),
        next_update=_date(obj["nextUpdate"], "enclaveIdentity.nextUpdate"),
        tcb_evaluation_data_number=_int(
            obj["tcbEvaluationDataNumber"], "enclaveIdentity.tcbEvaluationDataNumber", 0xFFFFFFFF
        ),
        # The hex strings are the values as numbers (big-endian text), compared to the report's u32.
        miscselect=int.from_bytes(_hex(obj["miscselect"], "enclaveIdentity.miscselect", 4), "big"),
        miscselect_mask=int.from_bytes(
            _hex(obj["miscselectMask"], "enclaveIdentity.miscselectMask", 4), "big"
        ),
        attributes=_hex(obj["attributes"], "enclaveIdentity.attributes", 16),
        attributes_mask=_hex(obj["attributesMask"], "enclaveIdentity.attributesMask", 16),
        mrsigner=_hex(obj["mrsigner"], "enclaveIdentity.mrsigner", 32),
        isv_prod_id=_int(obj["isvprodid"], "enclaveIdentity.isvprodid", 0xFFFF),
        tcb_levels=_identity_levels(obj["tcbLevels"], "enclaveIdentity.tcbLevels"),
    )


def parse_pcs_tcb_info(body: bytes) -> SignedTcbInfo:
    """A PCS "Get TDX TCB Info" response body: ``{"tcbInfo": {...}, "signature": "..."}``."""
    what = "TCB info response"
    members = raw_members(_decode_utf8(_bounded(body, what), what), what)
    if set(members) != {"tcbInfo", "signature"}:
        raise _malformed(what, f"expected members tcbInfo and signature, found {_show(sorted(members))}")
    value, raw = members["tcbInfo"]
    return SignedTcbInfo(
        raw=raw.encode("utf-8"),
        signature=_signature(members["signature"][0], "TCB info signature"),
        tcb_info=parse_tcb_info(value),
    )


def parse_pcs_qe_identity(body: bytes) -> SignedQeIdentity:
    """A PCS "Get TDX QE Identity" response body: ``{"enclaveIdentity": {...}, "signature": "..."}``."""
    what = "QE identity response"
    members = raw_members(_decode_utf8(_bounded(body, what), what), what)
    if set(members) != {"enclaveIdentity", "signature"}:
        raise _malformed(
            what, f"expected members enclaveIdentity and signature, found {_show(sorted(members))}"
        )
    value, raw = members["enclaveIdentity"]
    return SignedQeIdentity(
        raw=raw.encode("utf-8"),
        signature=_signature(members["signature"][0], "QE identity signature"),
        qe_identity=parse_qe_identity(value),
    )


# ----------------------------------------------------------------------------------- CRLs, chains


def parse_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """A CRL as DER, PEM or hex text of the DER."""
    stripped = data.strip()
    try:
        if stripped.startswith(b"-----BEGIN X509 CRL-----"):
            crl = x509.load_pem_x509_crl(stripped)
        elif stripped and re.fullmatch(rb"[0-9a-fA-F]+", stripped) and len(stripped) % 2 == 0:
            crl = x509.load_der_x509_crl(bytes.fromhex(stripped.decode("ascii")))
        else:
            crl = x509.load_der_x509_crl(data)
        # Decode the lazily parsed parts now, so that later accesses cannot fail.
        _ = (
            crl.issuer,
            crl.last_update_utc,
            crl.next_update_utc,
            crl.extensions,
            crl.signature_algorithm_oid,
        )
        for entry in crl:
            _ = (entry.serial_number, entry.revocation_date_utc)
    except X509_DECODE_ERRORS as exc:
        raise _malformed(what, f"not a DER/PEM/hex CRL ({exc})") from exc
    return crl


def parse_chain(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    return tuple(split_pem_certificates(data, what=what, reason=_MALFORMED))


def collateral_from_pcs(
    *,
    tcb_info: bytes,
    qe_identity: bytes,
    tcb_info_issuer_chain: bytes,
    pck_crl: bytes,
    root_ca_crl: bytes,
    qe_identity_issuer_chain: bytes | None = None,
    pck_crl_issuer_chain: bytes | None = None,
) -> Collateral:
    """Assemble collateral from PCS response bodies and headers. The QE identity issuer chain defaults
    to the TCB info issuer chain (both are Intel SGX TCB Signing + Root CA)."""
    tcb_chain = parse_chain(tcb_info_issuer_chain, "TCB info issuer chain")
    return Collateral(
        tcb_info=parse_pcs_tcb_info(tcb_info),
        qe_identity=parse_pcs_qe_identity(qe_identity),
        tcb_info_issuer_chain=tcb_chain,
        qe_identity_issuer_chain=(
            parse_chain(qe_identity_issuer_chain, "QE identity issuer chain")
            if qe_identity_issuer_chain is not None
            else tcb_chain
        ),
        pck_crl=parse_crl(pck_crl, "PCK CRL"),
        root_ca_crl=parse_crl(root_ca_crl, "root CA CRL"),
        pck_crl_issuer_chain=(
            parse_chain(pck_crl_issuer_chain, "PCK CRL issuer chain")
            if pck_crl_issuer_chain is not None
            else None
        ),
    )


_DCAP_QVL_KEYS = {
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
}


def parse_dcap_qvl_collateral(data: bytes) -> Collateral:
    """dcap-qvl's ``QuoteCollateralV3`` serialised as one JSON document (see module docstring)."""
    what = "dcap-qvl collateral"
    doc = _obj(
        _loads(_decode_utf8(_bounded(data, what), what), what),
        what,
        _DCAP_QVL_KEYS,
        {"pck_certificate_chain"},
    )
    strings = {k: _str(doc[k], f"{what}.{k}") for k in _DCAP_QVL_KEYS}
    if doc.get("pck_certificate_chain") is not None:  # not used: the quote carries the PCK chain
        _str(doc["pck_certificate_chain"], f"{what}.pck_certificate_chain")
    tcb_raw, qe_raw = strings["tcb_info"], strings["qe_identity"]
    return Collateral(
        tcb_info=SignedTcbInfo(
            raw=tcb_raw.encode("utf-8"),
            signature=_signature(strings["tcb_info_signature"], f"{what}.tcb_info_signature"),
            tcb_info=parse_tcb_info(_loads(tcb_raw, f"{what}.tcb_info")),
        ),
        qe_identity=SignedQeIdentity(
            raw=qe_raw.encode("utf-8"),
            signature=_signature(strings["qe_identity_signature"], f"{what}.qe_identity_signature"),
            qe_identity=parse_qe_identity(_loads(qe_raw, f"{what}.qe_identity")),
        ),
        tcb_info_issuer_chain=parse_chain(
            strings["tcb_info_issuer_chain"].encode(), f"{what}.tcb_info_issuer_chain"
        ),
        qe_identity_issuer_chain=parse_chain(
            strings["qe_identity_issuer_chain"].encode(), f"{what}.qe_identity_issuer_chain"
        ),
        pck_crl=parse_crl(strings["pck_crl"].encode(), f"{what}.pck_crl"),
        root_ca_crl=parse_crl(strings["root_ca_crl"].encode(), f"{what}.root_ca_crl"),
        pck_crl_issuer_chain=parse_chain(
            strings["pck_crl_issuer_chain"].encode(), f"{what}.pck_crl_issuer_chain"
        ),
    )


def _read(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_COLLATERAL_FILE + 1)
    if len(data) > MAX_COLLATERAL_FILE:
        raise _malformed(str(path), f"larger than {MAX_COLLATERAL_FILE} bytes")
    return data


def _classify(path: Path, data: bytes) -> tuple[str, bytes]:
    """Which collateral piece a file holds (see module docstring)."""
    head = data.lstrip()
    if head.startswith(b"{"):
        try:
            keys = set(json.loads(data))
        except (ValueError, TypeError, RecursionError) as exc:
            raise _malformed(str(path), "not valid JSON") from exc
        if "tcbInfo" in keys:
            return "tcb_info", data
        if "enclaveIdentity" in keys:
            return "qe_identity", data
        if "tcb_info" in keys:
            raise _malformed(
                str(path), "a dcap-qvl collateral document; pass it as a file, not inside a directory"
            )
        raise _malformed(str(path), "JSON that is neither a TCB info nor a QE identity response")
    if head.startswith(b"-----BEGIN CERTIFICATE-----"):
        chain = parse_chain(data, str(path))
        cn = common_name(chain[0].subject)
        if cn == TCB_SIGNING_CN:
            return "tcb_signing_chain", data
        if cn in PCK_CA_CNS:
            return "pck_crl_issuer_chain", data
        raise _malformed(str(path), f"a certificate chain starting with {cn!r}, which is not an issuer chain")
    try:
        crl = parse_crl(data, str(path))
    except EvidenceError as exc:
        raise _malformed(
            str(path),
            "not a recognised collateral file (TCB info / QE identity JSON, issuer chain PEM, CRL)",
        ) from exc
    cn = common_name(crl.issuer)
    if cn == INTEL_SGX_ROOT_CA_CN:
        return "root_ca_crl", data
    if cn in PCK_CA_CNS:
        return "pck_crl", data
    raise _malformed(str(path), f"a CRL issued by {cn!r}, which is neither the root CA nor a PCK CA")


def load_collateral_dir(directory: Path) -> Collateral:
    pieces: dict[str, tuple[Path, bytes]] = {}
    files = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    if len(files) > MAX_COLLATERAL_FILES:
        raise _malformed(str(directory), f"more than {MAX_COLLATERAL_FILES} files")
    for path in files:
        if not path.is_file():
            raise _malformed(str(path), "collateral directories hold files only")
        kind, data = _classify(path, _read(path))
        if kind in pieces:
            raise _malformed(
                str(directory), f"two {kind.replace('_', ' ')} files: {pieces[kind][0].name}, {path.name}"
            )
        pieces[kind] = (path, data)
    missing = [
        k
        for k in ("tcb_info", "qe_identity", "tcb_signing_chain", "pck_crl", "root_ca_crl")
        if k not in pieces
    ]
    if missing:
        raise EvidenceError(
            "collateral-incomplete",
            f"{directory} lacks: {', '.join(m.replace('_', ' ') for m in missing)}. TDX collateral is the "
            "TCB info and QE identity (PCS JSON), their issuer chain (Intel SGX TCB Signing + Root CA, PEM), "
            "the PCK CRL "
            "and the root CA CRL; revocation cannot be checked without both CRLs",
        )
    return collateral_from_pcs(
        tcb_info=pieces["tcb_info"][1],
        qe_identity=pieces["qe_identity"][1],
        tcb_info_issuer_chain=pieces["tcb_signing_chain"][1],
        pck_crl=pieces["pck_crl"][1],
        root_ca_crl=pieces["root_ca_crl"][1],
        pck_crl_issuer_chain=pieces["pck_crl_issuer_chain"][1] if "pck_crl_issuer_chain" in pieces else None,
    )


def load_collateral(path: str | Path) -> Collateral:
    """Load collateral from a directory of PCS pieces or from a dcap-qvl collateral JSON file.
    ``OSError`` propagates (a usage error); bad content raises ``EvidenceError``."""
    p = Path(path)
    if p.is_dir():
        return load_collateral_dir(p)
    data = _read(p)
    if not data.lstrip().startswith(b"{"):
        raise _malformed(
            str(p), "a collateral file must be a dcap-qvl collateral JSON; use a directory for PCS pieces"
        )
    return parse_dcap_qvl_collateral(data)


# ----------------------------------------------------------------------------------- verification


def verify_p256_signature(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    """ECDSA P-256 / SHA-256 with a raw 64-byte r||s signature (big-endian halves)."""
    if len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_fresh(what: str, issued: datetime, next_update: datetime | None, now: datetime) -> None:
    """Collateral is current on ``[issueDate, nextUpdate)``: at ``nextUpdate`` Intel has issued its
    successor, so this copy is stale (the same convention as OpenSSL's CRL check)."""
    if next_update is None:
        raise _malformed(what, "has no nextUpdate")
    if now < issued:
        raise EvidenceError(
            "collateral-not-yet-valid",
            f"the {what} was issued at {issued.isoformat()}, after now ({now.isoformat()}); check the clock",
        )
    if now >= next_update:
        raise EvidenceError(
            "collateral-expired",
            f"the {what} is stale: its nextUpdate was {next_update.isoformat()} (now is {now.isoformat()}); "
            "fetch current collateral from Intel PCS or your PCCS",
        )


def _check_signing_chain_validity(chain: tuple[x509.Certificate, ...], what: str, now: datetime) -> None:
    signer, chain_root = chain
    check_validity(chain_root, now, f"root certificate in the {what}")
    check_validity(signer, now, f"TCB signing certificate in the {what}")


def _verify_tcb_signing_chain(
    chain: tuple[x509.Certificate, ...], what: str, *, root: x509.Certificate, now: datetime | None
) -> ec.EllipticCurvePublicKey:
    """The TCB signing chain's structure and anchoring to ``root``, its validity at ``now`` (skipped
    when ``now`` is ``None``: :func:`authenticate_collateral`), and its P-256 signing key."""
    reason = "collateral-chain-invalid"
    if len(chain) != 2:
        raise EvidenceError(
            reason, f"the {what} holds {len(chain)} certificates; expected 2 (TCB Signing, Root CA)"
        )
    signer, chain_root = chain
    anchor_root(chain_root, root, what, reason)
    if common_name(signer.subject) != TCB_SIGNING_CN or is_ca(signer):
        raise EvidenceError(reason, f"the {what} does not start with the Intel SGX TCB Signing certificate")
    verify_issued_by(signer, root, f"TCB signing certificate in the {what}", reason)
    if now is not None:
        _check_signing_chain_validity(chain, what, now)
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise EvidenceError(reason, f"the TCB signing key in the {what} is not ECDSA P-256")
    return key


def _verify_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    what: str,
    now: datetime,
    authenticated: bool = False,
) -> None:
    """Issuer and signature (skipped when ``authenticated``: checked before, against the same issuer),
    then freshness at ``now``."""
    if not authenticated:
        _authenticate_crl(crl, issuer, what)
    _check_fresh(what, crl.last_update_utc, crl.next_update_utc, now)


def _authenticate_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, what: str) -> None:
    if crl.issuer != issuer.subject:
        raise EvidenceError(
            "crl-invalid",
            f"the {what} is issued by {crl.issuer.rfc4514_string()}, "
            f"not by {issuer.subject.rfc4514_string()}",
        )
    key = issuer.public_key()
    try:
        valid = isinstance(key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise EvidenceError("crl-invalid", f"the {what}'s signature does not verify with its issuer's key")


def _not_revoked(
    crl: x509.CertificateRevocationList, cert: x509.Certificate, what: str, crl_what: str
) -> None:
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        raise EvidenceError(
            "certificate-revoked",
            f"the {what} (serial {cert.serial_number:x}) is revoked by the {crl_what} since "
            f"{entry.revocation_date_utc.isoformat()}",
        )


def verify_collateral(
    collateral: Collateral,
    *,
    pck_leaf: x509.Certificate,
    pck_intermediate: x509.Certificate,
    root: x509.Certificate,
    now: datetime,
) -> None:
    """Authenticity, freshness and revocation (PCS API v4 "TCB Info"/"Enclave Identity" verification
    steps; Intel QVL ``QuoteVerifier::verify`` 4.1.2.4.6-4.1.2.4.7):

    1. TCB info and QE identity issuer chains: Intel SGX TCB Signing <- trusted root, valid at ``now``;
       their signatures over the exact served bytes verify.
    2. Root CA CRL issued and signed by the trusted root; PCK CRL issued by the PCK leaf's issuer (QVL
       compares the raw names) and signed by the quote chain's intermediate key; both current.
    3. If a PCK CRL issuer chain is supplied, it must anchor to the trusted root and carry the same CA key.
    4. Not revoked: the PCK leaf (PCK CRL); the PCK CA and the TCB signing certificates (root CA CRL).
    5. TCB info and QE identity current: ``issueDate <= now < nextUpdate``.
    """
    verify_collateral_checks(
        collateral,
        pck_leaf=pck_leaf,
        pck_intermediate=pck_intermediate,
        root=root,
        now=now,
        authenticated=False,
    )


def _signed_by_tcb_signing_chain(
    collateral: Collateral, which: str, *, root: x509.Certificate, now: datetime | None
) -> None:
    """The TCB info's (``which`` = ``"tcb"``) or QE identity's (``"qe"``) issuer chain (validity at
    ``now`` unless ``None``) and the signature it makes over the exact served bytes."""
    if which == "tcb":
        chain, what = collateral.tcb_info_issuer_chain, "TCB info issuer chain"
        signature, raw = collateral.tcb_info.signature, collateral.tcb_info.raw
        detail = (
            "the TCB info signature does not verify with the Intel SGX TCB Signing key (edited or "
            "re-serialised TCB info? the signature covers the tcbInfo value exactly as served)"
        )
    else:
        chain, what = collateral.qe_identity_issuer_chain, "QE identity issuer chain"
        signature, raw = collateral.qe_identity.signature, collateral.qe_identity.raw
        detail = (
            "the QE identity signature does not verify with the Intel SGX TCB Signing key (edited or "
            "re-serialised enclaveIdentity?)"
        )
    key = _verify_tcb_signing_chain(chain, what, root=root, now=now)
    if not verify_p256_signature(key, signature, raw):
        raise EvidenceError("collateral-signature-invalid", detail)


def _anchor_pck_crl_issuer_chain(chain: tuple[x509.Certificate, ...], root: x509.Certificate) -> None:
    reason = "collateral-chain-invalid"
    if len(chain) != 2:
        raise EvidenceError(reason, f"the PCK CRL issuer chain holds {len(chain)} certificates; expected 2")
    anchor_root(chain[1], root, "PCK CRL issuer chain", reason)
    verify_issued_by(chain[0], root, "PCK CRL issuer CA", reason)


def _signing_certificates_not_revoked(collateral: Collateral) -> None:
    for chain_what, signing_chain in (
        ("TCB info", collateral.tcb_info_issuer_chain),
        ("QE identity", collateral.qe_identity_issuer_chain),
    ):
        _not_revoked(
            collateral.root_ca_crl, signing_chain[0], f"{chain_what} signing certificate", "root CA CRL"
        )


def authenticate_collateral(collateral: Collateral, *, root: x509.Certificate) -> None:
    """That ``collateral`` is Intel's, as far as that depends neither on time nor on a quote: the TCB info
    and QE identity issuer chains are the TCB Signing certificate issued by ``root`` (anchored by key) and
    their signatures over the exact served bytes verify; the root CA CRL is issued and signed by ``root``;
    a PCK CRL issuer chain, if present, is anchored to ``root``; the TCB signing certificates are not
    revoked by that CRL. Raises the reasons :func:`verify_collateral` raises for the same checks.

    These are exactly the checks :func:`verify_collateral_checks` skips with ``authenticated``, so
    :class:`~keyserver.evidence.tdx.cache.CollateralCache` runs this before it keeps any collateral: what it
    holds is authenticated, never merely parsed. Validity windows, freshness and everything that depends on
    the quote are not checked here (they are on every use)."""
    _signed_by_tcb_signing_chain(collateral, "tcb", root=root, now=None)
    _signed_by_tcb_signing_chain(collateral, "qe", root=root, now=None)
    _authenticate_crl(collateral.root_ca_crl, root, "root CA CRL")
    if collateral.pck_crl_issuer_chain is not None:
        _anchor_pck_crl_issuer_chain(collateral.pck_crl_issuer_chain, root)
    _signing_certificates_not_revoked(collateral)


def verify_collateral_checks(
    collateral: Collateral,
    *,
    pck_leaf: x509.Certificate,
    pck_intermediate: x509.Certificate,
    root: x509.Certificate,
    now: datetime,
    authenticated: bool,
) -> None:
    """:func:`verify_collateral`'s checks in its order. With ``authenticated`` the checks that depend on
    neither ``now`` nor the quote (:func:`authenticate_collateral`'s: chain structure and anchoring to
    ``root``, the signatures over the TCB info and QE identity, the root CA CRL's issuer and signature, the
    PCK CRL issuer chain's anchoring, the TCB signing certificates' revocation) are skipped: only
    :class:`~keyserver.evidence.tdx.cache.CollateralCache` passes it, for collateral that passed them
    against this exact ``root``. Everything that depends on ``now`` or on the quote's PCK chain runs
    always, in the same order, so a cached verification fails exactly as an uncached one would."""
    if authenticated:
        _check_signing_chain_validity(collateral.tcb_info_issuer_chain, "TCB info issuer chain", now)
        _check_signing_chain_validity(collateral.qe_identity_issuer_chain, "QE identity issuer chain", now)
    else:
        _signed_by_tcb_signing_chain(collateral, "tcb", root=root, now=now)
        _signed_by_tcb_signing_chain(collateral, "qe", root=root, now=now)
    _verify_crl(collateral.root_ca_crl, root, "root CA CRL", now, authenticated)
    # The PCK CRL depends on the quote's PCK chain: always checked.
    if collateral.pck_crl.issuer != pck_leaf.issuer:
        raise EvidenceError(
            _MISMATCH,
            f"the PCK CRL is issued by {collateral.pck_crl.issuer.rfc4514_string()} but the PCK "
            "certificate by "
            f"{pck_leaf.issuer.rfc4514_string()}: fetch the PCK CRL for the right CA (platform or processor)",
        )
    _verify_crl(collateral.pck_crl, pck_intermediate, "PCK CRL", now)
    if collateral.pck_crl_issuer_chain is not None:
        chain = collateral.pck_crl_issuer_chain
        if not authenticated:
            _anchor_pck_crl_issuer_chain(chain, root)
        check_validity(chain[0], now, "PCK CRL issuer CA")
        if spki(chain[0]) != spki(pck_intermediate):
            raise EvidenceError(
                _MISMATCH, "the PCK CRL issuer chain names another CA than the quote's PCK chain"
            )
    _not_revoked(collateral.pck_crl, pck_leaf, "PCK certificate", "PCK CRL")
    _not_revoked(collateral.root_ca_crl, pck_intermediate, "PCK CA certificate", "root CA CRL")
    if not authenticated:
        _signing_certificates_not_revoked(collateral)
    tcb_info = collateral.tcb_info.tcb_info
    _check_fresh("TCB info", tcb_info.issue_date, tcb_info.next_update, now)
    qe_identity = collateral.qe_identity.qe_identity
    _check_fresh("QE identity", qe_identity.issue_date, qe_identity.next_update, now)
