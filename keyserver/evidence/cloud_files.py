"""File front-end for ``keyserver evidence verify --tee azure-snp-vtpm|azure-tdx-vtpm|aws-nitro``.

Azure: ``--hcl-report`` (the NV index content, raw), ``--quote`` (TPMS_ATTEST, raw), ``--signature`` (raw
RSASSA signature or TPMT_SIGNATURE), ``--pcrs`` (JSON: a list of the 24 SHA-256 PCRs in hex, or
``{"sha256": {"0": hex, …}}``), ``--nonce`` (hex), ``--cert`` (VCEK, SNP) or ``--td-quote`` (+ optional
``--collateral``, TDX), optional ``--eventlog``. Nitro: ``--document`` (COSE_Sign1, raw or base64).
``OSError``/``ValueError`` are usage errors; evidence problems raise ``EvidenceError``.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from pathlib import Path

from keyserver.evidence.claims import Claims

MAX_FILE = 4 * 1024 * 1024


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) > MAX_FILE:
        raise ValueError(f"{path} is larger than {MAX_FILE} bytes")
    return data


def read_pcrs(path: Path) -> list[bytes]:
    doc = json.loads(_read(path))
    if isinstance(doc, dict) and set(doc) == {"sha256"} and isinstance(doc["sha256"], dict):
        doc = [doc["sha256"].get(str(i), doc["sha256"].get(i)) for i in range(24)]
    if not isinstance(doc, list) or not all(isinstance(p, str) for p in doc):
        raise ValueError(f'{path}: PCRs are a JSON list of 24 hex strings or {{"sha256": {{index: hex}}}}')
    return [bytes.fromhex(p) for p in doc]


def verify_azure_files(
    tee: str,
    *,
    hcl_report: Path,
    quote: Path,
    signature: Path,
    pcrs: Path,
    nonce_hex: str,
    now: datetime,
    cert: Path | None = None,
    td_quote: Path | None = None,
    collateral: Path | None = None,
    eventlog: Path | None = None,
) -> Claims:
    from keyserver.evidence.azure.verify import verify_azure_snp_vtpm, verify_azure_tdx_vtpm
    from keyserver.evidence.claims import TEE_AZURE_SNP_VTPM

    nonce = bytes.fromhex(nonce_hex)
    log = _read(eventlog) if eventlog is not None else None
    common = {
        "quote": _read(quote),
        "signature": _read(signature),
        "pcrs": read_pcrs(pcrs),
        "expected_nonce": nonce,
        "now": now,
        "event_log": log,
    }
    if tee == TEE_AZURE_SNP_VTPM:
        return verify_azure_snp_vtpm(
            _read(hcl_report),
            vcek=_read(cert) if cert is not None else None,
            **common,  # type: ignore[arg-type]
        )
    from keyserver.evidence.tdx import load_collateral

    if td_quote is None:
        raise ValueError("--tee azure-tdx-vtpm needs --td-quote")
    return verify_azure_tdx_vtpm(
        _read(hcl_report),
        td_quote=_read(td_quote),
        collateral=load_collateral(collateral) if collateral is not None else None,
        **common,  # type: ignore[arg-type]
    )


def verify_nitro_file(document: Path, now: datetime) -> Claims:
    from keyserver.evidence.nitro.verify import verify_nitro_document

    data = _read(document)
    if data[:1] not in (b"\x84", b"\xd2"):  # not a CBOR array/tag 18: base64 text
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{document} is neither a COSE_Sign1 document nor its base64") from None
    return verify_nitro_document(data, now=now)
