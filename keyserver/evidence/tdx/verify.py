"""The Intel TDX verifier: quote bytes + trust root + (optional) collateral + time in, claims out.

Pure (DESIGN.md "Verify, then appraise"): no network, no clock (``now`` is a parameter), no policy. Checks,
in order (Intel QVL ``QuoteVerifier::verify`` numbering where it applies):

1. Structure (:func:`~keyserver.evidence.tdx.quote.parse_quote`): v4, ECDSA-256 attestation key, TDX TEE
   type, Intel QE vendor, consistent size fields, certification data type 6 wrapping type 5.
2. PCK chain (:func:`~keyserver.evidence.tdx.pck.verify_pck_chain`): leaf <- PCK Platform/Processor CA <-
   trusted Intel SGX Root CA (pinned by key), all valid at ``now``; SGX extensions decoded.
3. QE report signature: ECDSA P-256/SHA-256 by the PCK leaf key over the 384-byte QE report (4.1.2.4.12).
4. QE report binding: QE REPORTDATA[0:32] = SHA-256(attestation key || QE auth data) and
   REPORTDATA[32:64] = 0 (4.1.2.4.13; *Intel TDX DCAP Quoting Library API*, "QE Report Certification
   Data": "the upper 32 bytes are zero").
5. Quote signature: ECDSA P-256/SHA-256 by the attestation key over header || TD quote body (4.1.2.4.16).
6. With collateral: :func:`~keyserver.evidence.tdx.collateral.verify_collateral` (signatures over the
   served JSON bytes, issuer chains, CRLs, revocation of the PCK leaf and CA, freshness) and then
   :func:`~keyserver.evidence.tdx.tcb.evaluate_tcb` (Intel's TCB-level rule, TDX module and QE identity).

Without collateral the quote is still fully authenticated to Intel's root; ``tdx.tcb_status`` and
``tdx.advisory_ids`` (and the other collateral-derived claims) are then ``None``, and a release policy that
requires a TCB status denies.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_TDX, Claims

from .cache import CollateralCache
from .certs import intel_sgx_root_ca
from .collateral import Collateral, load_collateral, verify_collateral, verify_p256_signature
from .pck import SGX_TYPES, PckChain, verify_pck_chain
from .quote import TdxQuote, parse_quote
from .tcb import TcbEvaluation, evaluate_tcb

MAX_QUOTE_INPUT = 1024 * 1024
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_WHITESPACE = frozenset(b" \t\r\n")


def _attestation_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError as exc:
        raise EvidenceError("quote-malformed", "the quote's attestation key is not a point on P-256") from exc


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def verify_quote_signatures(quote: TdxQuote, *, root: x509.Certificate, now: datetime) -> PckChain:
    """Steps 2-5: authenticate a parsed quote to ``root`` at ``now``; return the verified PCK chain."""
    chain = verify_pck_chain(quote.pck_chain_pem, root=root, now=now)
    if not verify_p256_signature(chain.leaf_key, quote.qe_report_signature, quote.qe_report.raw):
        raise EvidenceError(
            "qe-report-signature-invalid",
            "the QE report signature does not verify with the PCK certificate's key: the quote was not "
            "produced by the platform the PCK certificate describes (or was edited)",
        )
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    report_data = quote.qe_report.report_data
    if report_data[:32] != expected or any(report_data[32:]):
        raise EvidenceError(
            "qe-report-data-mismatch",
            "the QE report does not bind the attestation key: REPORTDATA must be SHA-256(attestation key || "
            "QE auth data) followed by 32 zero bytes",
        )
    if not verify_p256_signature(_attestation_key(quote.attestation_key), quote.signature, quote.signed_data):
        raise EvidenceError(
            "signature-invalid",
            "the quote signature (attestation key over header and TD report body) does not verify: the quote "
            "was modified after it was signed",
        )
    return chain


def _hex(data: bytes) -> str:
    return data.hex()


def build_claims(quote: TdxQuote, chain: PckChain, tcb: TcbEvaluation | None) -> Claims:
    body = quote.body
    ext = chain.extensions
    claims: Claims = {
        "tee": TEE_TDX,
        "report_data": _hex(body.report_data),
        "debug": body.debug,
        "tdx.quote_version": quote.header.version,
        "tdx.mrtd": _hex(body.mrtd),
        "tdx.rtmr0": _hex(body.rtmrs[0]),
        "tdx.rtmr1": _hex(body.rtmrs[1]),
        "tdx.rtmr2": _hex(body.rtmrs[2]),
        "tdx.rtmr3": _hex(body.rtmrs[3]),
        "tdx.mrseam": _hex(body.mrseam),
        "tdx.mrsignerseam": _hex(body.mrsignerseam),
        "tdx.seam_attributes": _hex(body.seam_attributes),
        "tdx.mrconfigid": _hex(body.mrconfigid),
        "tdx.mrowner": _hex(body.mrowner),
        "tdx.mrownerconfig": _hex(body.mrownerconfig),
        "tdx.td_attributes": _hex(body.td_attributes),
        "tdx.xfam": _hex(body.xfam),
        "tdx.tee_tcb_svn": _hex(body.tee_tcb_svn),
        "tdx.module_svn": body.tee_tcb_svn[0],
        "tdx.module_major_version": body.tee_tcb_svn[1],
        "tdx.fmspc": _hex(ext.fmspc),
        "tdx.pce_id": _hex(ext.pce_id),
        "tdx.pce_svn": ext.tcb.pce_svn,
        "tdx.cpu_svn": _hex(ext.tcb.cpu_svn),
        "tdx.ppid": _hex(ext.ppid),
        "tdx.sgx_type": SGX_TYPES[ext.sgx_type],
        "tdx.pck_ca": chain.ca_kind,
        "tdx.qe_svn": quote.qe_report.isv_svn,
        "tdx.qe_mrenclave": _hex(quote.qe_report.mrenclave),
        "tdx.qe_mrsigner": _hex(quote.qe_report.mrsigner),
        "tdx.tcb_status": None,
        "tdx.advisory_ids": None,
        "tdx.tcb_date": None,
        "tdx.tcb_evaluation_data_number": None,
        "tdx.platform_tcb_status": None,
        "tdx.module_tcb_status": None,
        "tdx.qe_tcb_status": None,
    }
    if tcb is not None:
        claims.update(
            {
                "tdx.tcb_status": tcb.status,
                "tdx.advisory_ids": list(tcb.advisory_ids),
                "tdx.tcb_date": tcb.tcb_date.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "tdx.tcb_evaluation_data_number": tcb.tcb_evaluation_data_number,
                "tdx.platform_tcb_status": tcb.platform_level.tcb_status,
                "tdx.module_tcb_status": tcb.module_level.tcb_status if tcb.module_level else None,
                "tdx.qe_tcb_status": tcb.qe_level.tcb_status,
            }
        )
    return claims


def verify_tdx_quote(
    quote: bytes,
    *,
    now: datetime,
    collateral: Collateral | None = None,
    root: x509.Certificate | None = None,
    collateral_cache: CollateralCache | None = None,
) -> Claims:
    """Verify a raw TDX v4 quote and return its claims (see module docstring).

    With ``collateral_cache`` (and ``collateral`` parsed by it), the collateral's time- and quote-independent
    checks are done once per exact bytes and root (keyserver/evidence/tdx/cache.py); the result is the same.

    ``root`` defaults to the shipped, fingerprint-pinned Intel SGX Root CA. Evidence problems raise
    :class:`~keyserver.errors.EvidenceError` with a stable ``reason``; a naive ``now`` is a ``ValueError``.
    """
    now = _check_now(now)
    trusted = intel_sgx_root_ca() if root is None else root
    parsed = parse_quote(quote)
    chain = verify_quote_signatures(parsed, root=trusted, now=now)
    tcb: TcbEvaluation | None = None
    if collateral is not None:
        check = verify_collateral if collateral_cache is None else collateral_cache.verify
        check(collateral, pck_leaf=chain.leaf, pck_intermediate=chain.intermediate, root=trusted, now=now)
        tcb = evaluate_tcb(
            collateral.tcb_info.tcb_info,
            collateral.qe_identity.qe_identity,
            body=parsed.body,
            qe_report=parsed.qe_report,
            pck=chain.extensions,
        )
    return build_claims(parsed, chain, tcb)


def decode_quote_input(data: bytes) -> bytes:
    """Raw quote bytes from a raw binary or hex-text input, detected strictly.

    A TDX quote starts with ``04 00`` (version 4, little-endian), so a raw quote never consists only of
    ASCII hex digits and whitespace. Input made only of those characters is hex text (``xxd -p`` output,
    wrapped lines allowed) and must hold an even, non-zero number of digits; anything else is taken as the
    raw binary quote. A ``0x`` prefix, base64 or JSON are rejected (as binary they fail the version check).
    """
    if not data:
        raise EvidenceError("quote-malformed", "the quote input is empty")
    if len(data) > MAX_QUOTE_INPUT:
        raise EvidenceError("quote-malformed", f"the quote input is larger than {MAX_QUOTE_INPUT} bytes")
    if all(b in _HEX_DIGITS or b in _WHITESPACE for b in data):
        digits = bytes(b for b in data if b in _HEX_DIGITS)
        if not digits or len(digits) % 2:
            raise EvidenceError(
                "quote-malformed",
                f"the hex quote has {len(digits)} hex digits; a byte string needs an even number",
            )
        return bytes.fromhex(digits.decode("ascii"))
    if data[:2] in (b"0x", b"0X"):
        raise EvidenceError("quote-malformed", "write the hex quote without a 0x prefix (plain hex digits)")
    return bytes(data)


def read_quote_file(path: str | Path) -> bytes:
    """Read a quote file (raw or hex, at most :data:`MAX_QUOTE_INPUT` bytes). ``OSError`` propagates."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_QUOTE_INPUT + 1)
    return decode_quote_input(data)


def verify_tdx_files(
    quote_path: str | Path,
    collateral_path: str | Path | None,
    now: datetime,
    *,
    root: x509.Certificate | None = None,
) -> Claims:
    """File front-end for ``keyserver evidence verify --tee tdx --quote FILE [--collateral FILE_OR_DIR]
    [--now ISO8601] --json``: the quote raw or hex (:func:`decode_quote_input`); the collateral a
    directory of Intel PCS pieces or a dcap-qvl collateral JSON (:func:`load_collateral`). ``OSError``
    propagates (usage error); evidence problems raise ``EvidenceError``."""
    quote = read_quote_file(quote_path)
    collateral = load_collateral(collateral_path) if collateral_path is not None else None
    return verify_tdx_quote(quote, now=now, collateral=collateral, root=root)
