"""``keyserver evidence``: verify evidence offline, exactly as the service does, from files.

``verify`` prints the claims (``--json``: ``{"verified": true, "tee": …, "claims": {…}}``) and exits 0,
or prints the reason (``{"verified": false, "reason": …, "error": …}``; the reason also on stderr) and
exits 1. Unreadable files and malformed options exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import (
    TEE_AWS_NITRO,
    TEE_AZURE_SNP_VTPM,
    TEE_AZURE_TDX_VTPM,
    TEE_NVIDIA_GPU,
    TEE_SEV_SNP,
    TEE_TDX,
    TEE_TPM,
    TEES,
    Claims,
)
from keyserver.evidence.timeparse import parse_now

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def add_evidence_commands(commands: Any) -> None:
    evidence = commands.add_parser("evidence", help="verify attestation evidence offline")
    sub = evidence.add_subparsers(dest="evidence_command", required=True)

    verify = sub.add_parser("verify", help="verify evidence and print its claims")
    verify.add_argument("--tee", required=True, choices=list(TEES))
    verify.add_argument("--now", help="verification time, ISO 8601 with a zone (default: now)")
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    snp = verify.add_argument_group("sev-snp")
    snp.add_argument("--report", type=Path, help="attestation report (raw binary or hex)")
    snp.add_argument("--cert", type=Path, help="VCEK or VLEK certificate (DER, PEM, or a PEM bundle)")
    snp.add_argument("--product", help="Milan, Genoa or Turin (v2 reports carry no CPUID)")
    snp.add_argument("--crl", type=Path, help="AMD CRL (DER) signed by the ARK")
    tdx = verify.add_argument_group("tdx (and tpm)")
    tdx.add_argument("--quote", type=Path, help="TDX quote (raw or hex); for tpm, the TPMS_ATTEST")
    tdx.add_argument("--collateral", type=Path, help="Intel PCS collateral: a directory or dcap-qvl JSON")
    add_tpm_arguments(verify)
    gpu = verify.add_argument_group("nvidia-gpu (uses --nonce: the expected SPDM nonce, hex)")
    gpu.add_argument("--gpu-report", type=Path, help="SPDM request||response (raw, hex text or base64)")
    gpu.add_argument("--gpu-certs", type=Path, help="the device certificate chain (PEM, leaf first)")
    gpu.add_argument("--gpu-ocsp", type=Path, action="append", help="a DER OCSP response (repeatable)")
    gpu.add_argument("--rim", type=Path, action="append", help="an NVIDIA RIM to compare with (repeatable)")
    gpu.add_argument("--rim-time", help="verify the RIMs' signers at this time (default: --now)")

    rim_values = sub.add_parser(
        "rim-values", help="verify NVIDIA RIMs and print them as an nvidia-gpu reference-value document"
    )
    rim_values.add_argument("rims", type=Path, nargs="+")
    rim_values.add_argument("--now", help="verify the RIMs' signers at this time (default: now)")
    cloud = verify.add_argument_group("azure-snp-vtpm, azure-tdx-vtpm (also --cert, --quote, --signature, …)")
    cloud.add_argument("--hcl-report", type=Path, help="the HCL report (vTPM NV index 0x01400001), raw")
    cloud.add_argument("--td-quote", type=Path, help="azure-tdx-vtpm: the TD quote (raw)")
    nitro = verify.add_argument_group("aws-nitro")
    nitro.add_argument("--document", type=Path, help="the attestation document (COSE_Sign1, raw or base64)")

    eventlog = sub.add_parser("eventlog", help="parse a TCG PC Client event log and replay it")
    eventlog.add_argument("file", type=Path)
    eventlog.add_argument("--json", action="store_true", help="print one JSON document")


def add_tpm_arguments(parser: argparse.ArgumentParser) -> None:
    tpm = parser.add_argument_group("tpm")
    tpm.add_argument("--signature", type=Path, help="TPMT_SIGNATURE over the quote")
    tpm.add_argument("--ak", type=Path, help="the AK: TPMT_PUBLIC, TPM2B_PUBLIC or PEM")
    tpm.add_argument("--ak-cert", type=Path, help="an AK certificate to verify against --roots")
    tpm.add_argument("--roots", type=Path, help="directory of CA certificates for --ak-cert")
    tpm.add_argument("--nonce", help="the expected qualifyingData (hex)")
    tpm.add_argument("--pcrs", type=Path, help='PCR values as JSON {"sha256": {"0": "hex", …}, …}')
    tpm.add_argument("--eventlog", type=Path, help="TCG event log to replay against the quoted PCRs")


def run_evidence(args: argparse.Namespace) -> int:
    try:
        if args.evidence_command == "eventlog":
            return _eventlog(args)
        if args.evidence_command == "rim-values":
            from keyserver.evidence.nvidia.files import rim_reference_values

            print(json.dumps(rim_reference_values(args.rims, parse_now(args.now)), indent=2, sort_keys=True))
            return EXIT_OK
        now = parse_now(args.now)
        claims = _VERIFIERS[args.tee](args, now)
    except EvidenceError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "verified": False,
                        "tee": getattr(args, "tee", None),
                        "reason": exc.reason,
                        "error": exc.message,
                    }
                )
            )
        print(f"keyserver evidence: rejected ({exc.reason}): {exc.message}", file=sys.stderr)
        return EXIT_REJECTED
    except (OSError, ValueError, UsageError) as exc:
        print(f"keyserver evidence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"verified": True, "tee": args.tee, "claims": claims}, indent=2, sort_keys=True))
    else:
        print(f"verified {args.tee} evidence")
        for name, value in sorted(claims.items()):
            print(f"{name} = {json.dumps(value)}")
    return EXIT_OK


class UsageError(Exception):
    """A required option is missing for the chosen --tee."""


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is None]
    if missing:
        raise UsageError(f"--tee {args.tee} needs {', '.join(missing)}")


def _verify_snp(args: argparse.Namespace, now: datetime) -> Claims:
    from keyserver.evidence.snp import verify_snp_files

    _require(args, "report")
    return verify_snp_files(args.report, args.cert, now, product=args.product, crl_path=args.crl)


def _verify_tdx(args: argparse.Namespace, now: datetime) -> Claims:
    from keyserver.evidence.tdx import verify_tdx_files

    _require(args, "quote")
    return verify_tdx_files(args.quote, args.collateral, now)


def _verify_tpm(args: argparse.Namespace, now: datetime) -> Claims:
    from keyserver.evidence.tpm.files import verify_tpm_files

    _require(args, "quote", "signature", "ak", "nonce")
    if (args.ak_cert is None) != (args.roots is None):
        raise UsageError("--ak-cert and --roots go together")
    return verify_tpm_files(
        attest_path=args.quote,
        signature_path=args.signature,
        ak_path=args.ak,
        nonce_hex=args.nonce,
        pcrs_path=args.pcrs,
        eventlog_path=args.eventlog,
        ak_cert_path=args.ak_cert,
        roots_dir=args.roots,
        now=now,
    )


def _verify_azure(args: argparse.Namespace, now: datetime) -> Claims:
    from keyserver.evidence.cloud_files import verify_azure_files

    _require(args, "hcl_report", "quote", "signature", "pcrs", "nonce")
    return verify_azure_files(
        args.tee,
        hcl_report=args.hcl_report,
        quote=args.quote,
        signature=args.signature,
        pcrs=args.pcrs,
        nonce_hex=args.nonce,
        now=now,
        cert=args.cert,
        td_quote=args.td_quote,
        collateral=args.collateral,
        eventlog=args.eventlog,
    )


def _verify_nitro(args: argparse.Namespace, now: datetime) -> Claims:
    from keyserver.evidence.cloud_files import verify_nitro_file

    _require(args, "document")
    return verify_nitro_file(args.document, now)


def _eventlog(args: argparse.Namespace) -> int:
    from keyserver.evidence.tpm.files import describe_event_log

    document = describe_event_log(args.file)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for bank, pcrs in document["pcrs"].items():
            for index, value in pcrs.items():
                print(f"{bank}:{index} {value}")
        print(f"{len(document['events'])} events")
    return EXIT_OK


def _verify_gpu(args: argparse.Namespace, now: datetime) -> Claims:
    from keyserver.evidence.nvidia.files import verify_gpu_files

    _require(args, "gpu_report", "gpu_certs", "nonce")
    rim_time = parse_now(args.rim_time) if args.rim_time is not None else now
    return verify_gpu_files(
        args.gpu_report,
        args.gpu_certs,
        args.nonce,
        now,
        ocsp_paths=args.gpu_ocsp or [],
        rim_paths=args.rim or [],
        rim_time=rim_time,
    )


_VERIFIERS: dict[str, Callable[[argparse.Namespace, datetime], Claims]] = {
    TEE_NVIDIA_GPU: _verify_gpu,
    TEE_SEV_SNP: _verify_snp,
    TEE_TDX: _verify_tdx,
    TEE_TPM: _verify_tpm,
    TEE_AZURE_SNP_VTPM: _verify_azure,
    TEE_AZURE_TDX_VTPM: _verify_azure,
    TEE_AWS_NITRO: _verify_nitro,
}
