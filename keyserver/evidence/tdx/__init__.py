"""Intel TDX evidence verifier (pure: quote bytes + Intel root + collateral + time in, claims out).

Public API:

* :func:`verify_tdx_quote` - verify a raw TDX v4 quote (optionally with collateral), return claims
* :func:`verify_tdx_files`, :func:`parse_now`, :func:`decode_quote_input` - front-end for
  ``keyserver evidence verify --tee tdx --quote FILE [--collateral FILE_OR_DIR] [--now ISO8601]``
* :func:`parse_quote`, :class:`TdxQuote` - the quote v4 parser
* :class:`Collateral`, :func:`load_collateral`, :func:`collateral_from_pcs`,
  :func:`parse_dcap_qvl_collateral` - Intel PCS / dcap-qvl collateral
* :func:`evaluate_tcb`, :class:`TcbEvaluation` - Intel's TCB-level rule
* :func:`verify_ccel`, :func:`replay_ccel` - CCEL event log replay into RTMR0-3, checked against a quote
* :func:`intel_sgx_root_ca`, :func:`load_root`, :data:`INTEL_SGX_ROOT_CA_SHA256` - the trust anchor

Errors are :class:`keyserver.errors.EvidenceError`; ``reason`` is one of :data:`REASONS`.
"""

from keyserver.evidence.timeparse import parse_now

from .cache import CollateralCache
from .ccel import CcelEvent, CcelReplay, CcelTable, parse_ccel_table, replay_ccel, verify_ccel
from .certs import INTEL_SGX_ROOT_CA_SHA256, intel_sgx_root_ca, load_root
from .collateral import (
    Collateral,
    QeIdentity,
    SignedQeIdentity,
    SignedTcbInfo,
    TcbInfo,
    TcbLevel,
    collateral_from_pcs,
    load_collateral,
    parse_dcap_qvl_collateral,
    verify_collateral,
)
from .pck import PckChain, PckExtensions, PckTcb, parse_sgx_extensions, verify_pck_chain
from .quote import EnclaveReport, QuoteHeader, TdReportBody, TdxQuote, parse_quote
from .tcb import TcbEvaluation, evaluate_tcb
from .verify import (
    build_claims,
    decode_quote_input,
    read_quote_file,
    verify_quote_signatures,
    verify_tdx_files,
    verify_tdx_quote,
)

# Every EvidenceError.reason this package raises.
REASONS = (
    "quote-malformed",
    "unsupported-version",
    "unsupported-attestation-key-type",
    "unsupported-tee-type",
    "unsupported-qe-vendor",
    "unsupported-certification-data",
    "pck-chain-malformed",
    "pck-chain-invalid",
    "pck-extensions-invalid",
    "untrusted-root",
    "certificate-not-yet-valid",
    "certificate-expired",
    "certificate-revoked",
    "qe-report-signature-invalid",
    "qe-report-data-mismatch",
    "signature-invalid",
    "collateral-malformed",
    "collateral-incomplete",
    "collateral-mismatch",
    "collateral-chain-invalid",
    "collateral-signature-invalid",
    "collateral-not-yet-valid",
    "collateral-expired",
    "crl-invalid",
    "tdx-module-mismatch",
    "qe-identity-mismatch",
    "tcb-level-not-found",
    "tcb-revoked",
    "eventlog-malformed",
    "rtmr-mismatch",
)

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256",
    "REASONS",
    "CcelEvent",
    "CcelReplay",
    "CcelTable",
    "Collateral",
    "CollateralCache",
    "EnclaveReport",
    "PckChain",
    "PckExtensions",
    "PckTcb",
    "QeIdentity",
    "QuoteHeader",
    "SignedQeIdentity",
    "SignedTcbInfo",
    "TcbEvaluation",
    "TcbInfo",
    "TcbLevel",
    "TdReportBody",
    "TdxQuote",
    "build_claims",
    "collateral_from_pcs",
    "decode_quote_input",
    "evaluate_tcb",
    "intel_sgx_root_ca",
    "load_collateral",
    "load_root",
    "parse_ccel_table",
    "parse_dcap_qvl_collateral",
    "parse_now",
    "parse_quote",
    "parse_sgx_extensions",
    "read_quote_file",
    "replay_ccel",
    "verify_ccel",
    "verify_collateral",
    "verify_pck_chain",
    "verify_quote_signatures",
    "verify_tdx_files",
    "verify_tdx_quote",
]
