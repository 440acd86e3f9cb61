"""File front-end for ``keyserver evidence verify --tee tpm`` and ``keyserver evidence eventlog``.

The only module of this package that reads files: it turns paths into bytes (raw or hex text, with size
limits) and calls the pure verifiers. ``OSError`` (missing file) and ``ValueError`` (bad hex, bad option)
propagate: they are usage errors (exit 2), not bad evidence. Evidence problems raise ``EvidenceError``.
"""

from __future__ import annotations

import json
import string
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import Claims
from keyserver.evidence.tpm.ek import is_self_issued, load_certificate, verify_ak_certificate
from keyserver.evidence.tpm.eventlog import (
    efi_apps,
    parse_event_log,
    replay,
    secure_boot_state,
    verify_event_log,
)
from keyserver.evidence.tpm.quote import AkPublic, pcr_values_from_hex, verify_quote
from keyserver.evidence.tpm.structures import parse_tpm2b_public, parse_tpmt_public

MAX_STRUCTURE_INPUT = 64 * 1024
MAX_EVENTLOG_INPUT = 16 * 1024 * 1024 + 1
MAX_CERT_INPUT = 64 * 1024
MAX_ROOT_FILES = 64
_HEX = set(string.hexdigits + string.whitespace)


def read_limited(path: str | Path, limit: int, reason: str) -> bytes:
    """Read a whole file, refusing one larger than ``limit`` bytes (``EvidenceError(reason)``)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise EvidenceError(reason, f"{path} is larger than {limit} bytes; refusing to read it")
    return data


def raw_or_hex(data: bytes) -> bytes:
    """TPM structures arrive as raw bytes or as hex text (tpm2-tools writes raw, JSON tools hex)."""
    text = data.strip()
    if text and len(text) % 2 == 0 and all(chr(b) in _HEX for b in text):
        return bytes.fromhex(text.decode())
    return data


def load_ak(data: bytes) -> AkPublic:
    """An AK file: PEM/DER SubjectPublicKeyInfo (a bare key), TPM2B_PUBLIC or TPMT_PUBLIC."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return AkPublic.from_public_key(data)
    data = raw_or_hex(data)
    if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        return AkPublic.from_public(parse_tpm2b_public(data))
    if data[:1] == b"\x30":  # DER SEQUENCE: SubjectPublicKeyInfo
        return AkPublic.from_public_key(data)
    return AkPublic.from_public(parse_tpmt_public(data))


def load_ca_dir(directory: str | Path) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """CA certificates of a directory (*.pem, *.crt, *.cer, *.der; PEM bundles allowed), split into
    self-signed roots and intermediates. Without any self-signed one, all are trust anchors."""
    certs: list[x509.Certificate] = []
    files = sorted(
        p for p in Path(directory).iterdir() if p.suffix.lower() in {".pem", ".crt", ".cer", ".der"}
    )
    if len(files) > MAX_ROOT_FILES:
        raise ValueError(f"{directory} holds more than {MAX_ROOT_FILES} certificate files")
    for path in files:
        data = read_limited(path, MAX_CERT_INPUT, "tpm-cert-unparseable")
        if b"-----BEGIN" in data:
            certs += x509.load_pem_x509_certificates(data)
        else:
            certs.append(load_certificate(data, "CA")[0])
    roots = [c for c in certs if is_self_issued(c)]
    if not roots:
        return certs, []
    return roots, [c for c in certs if not is_self_issued(c)]


def verify_tpm_files(
    *,
    attest_path: str | Path,
    signature_path: str | Path,
    ak_path: str | Path,
    nonce_hex: str,
    pcrs_path: str | Path | None,
    eventlog_path: str | Path | None,
    ak_cert_path: str | Path | None,
    roots_dir: str | Path | None,
    now: datetime,
    allow_sha1: bool = False,
) -> Claims:
    """Verify a quote (and optionally an AK certificate and an event log) from files; return the claims.

    A PEM/SPKI AK has no TPM attributes to check, so it is accepted only when ``ak_cert_path`` certifies
    it and verifies against ``roots_dir``: the AK CA vouches that it is a TPM attestation key."""
    if pcrs_path is None:
        raise ValueError("--pcrs is required: the PCR values the quote covers")
    attest = raw_or_hex(read_limited(attest_path, MAX_STRUCTURE_INPUT, "tpm-malformed"))
    signature = raw_or_hex(read_limited(signature_path, MAX_STRUCTURE_INPUT, "tpm-malformed"))
    ak = load_ak(read_limited(ak_path, MAX_STRUCTURE_INPUT, "tpm-ak-invalid"))
    nonce = bytes.fromhex(nonce_hex)
    pcr_json: Any = json.loads(read_limited(pcrs_path, MAX_STRUCTURE_INPUT, "tpm-pcr-value-invalid"))
    if not isinstance(pcr_json, dict) or not all(isinstance(v, dict) for v in pcr_json.values()):
        raise ValueError('--pcrs must hold {"<bank>": {"<index>": "<hex>", ...}, ...}')
    pcrs = pcr_values_from_hex(pcr_json)

    vouched = False
    if ak_cert_path is not None and roots_dir is not None:
        roots, intermediates = load_ca_dir(roots_dir)
        verify_ak_certificate(
            read_limited(ak_cert_path, MAX_CERT_INPUT, "tpm-cert-unparseable"),
            roots=roots,
            intermediates=intermediates,
            now=now,
            ak_public=ak.public if ak.public is not None else ak.key,
        )
        vouched = True
    result = verify_quote(
        attest,
        signature,
        ak,
        expected_extra_data=nonce,
        pcr_values=pcrs,
        allow_sha1=allow_sha1,
        accept_bare_ak=vouched,
    )
    claims: Claims = dict(result.claims)
    if eventlog_path is not None:
        log = verify_event_log(
            read_limited(eventlog_path, MAX_EVENTLOG_INPUT, "eventlog-too-large"),
            result.pcrs,
            allow_sha1=allow_sha1,
        )
        claims.update(log.claims)
    return claims


def describe_event_log(path: str | Path) -> dict[str, Any]:
    """Parse and replay an event log for ``keyserver evidence eventlog``. Nothing in it is verified:
    the replayed PCRs mean something only once compared with a quote."""
    log = parse_event_log(read_limited(path, MAX_EVENTLOG_INPUT, "eventlog-too-large"))
    return {
        "format": "crypto-agile" if log.crypto_agile else "legacy-sha1",
        "banks": list(log.banks),
        "startup_locality": log.startup_locality,
        "pcrs": {
            b: {str(i): v.hex() for i, v in sorted(values.items())} for b, values in replay(log).items()
        },
        "events": [
            {
                "number": e.number,
                "pcr": e.pcr,
                "type": e.type_name,
                "digests": {b: d.hex() for b, d in e.digests.items()},
                "data_size": len(e.data),
                "digest_matches_data": e.digest_ok,
            }
            for e in log.events
        ],
        "digest_mismatches": [e.number for e in log.events if e.digest_ok is False],
        "unverified": {
            "secure_boot": secure_boot_state(log, trusted_pcr7=True),
            "efi_apps": [
                {
                    "event": a.event_number,
                    "path": a.path,
                    "digests": {b: d.hex() for b, d in a.digests.items()},
                }
                for a in efi_apps(log)
            ],
        },
    }
