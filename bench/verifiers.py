"""Verifier cost per evidence type, against the bare ``cryptography`` work each one must do (its bound),
and the TPM verifier against keylime's ``checkquote`` on the same quote.

Each scenario times the verifier exactly as the release path calls it (parsing the enrolled AK, the
report, the collateral JSON: everything but the database), interleaved run by run with its reference:

* ``tpm-ecc`` / ``tpm-rsa``: a TPM2_Quote over sha256:0,8-15 in TPM wire format, signed by a software
  P-256 (ECDSA) or RSA-2048 (RSASSA) AK. Bound: the signature verification and the PCR digest. Also
  against keylime 7.14.3 ``tpm_util.checkquote`` on the same bytes (which takes the AK as PEM, so it too
  parses the key per call). ``tpm-*-cached-ak``: the same with the AK parsed once, as the service now
  does (keyserver/tpm_enrolment.py caches enrolled AKs parsed, by their exact bytes).
* ``tpm-eventlog``: the real GCE COS-85 quote (RSA AK, sha256 bank) with its real UEFI event log
  (tests/vectors/tpm-quote/gce-cos85). Bound: the signature plus one hash per PCR extend in the log.
* ``snp-cached`` / ``snp-cold``: the real Milan report of go-sev-guest with its VCEK, with a warm
  VCEK-chain cache and without. Bound: the report's ECDSA P-384 signature (cached); plus loading the
  VCEK and its RSA-PSS signature by the ASK (cold).
* ``nvidia-gpu``: trustee's real Hopper GPU report and chain (:func:`gpu_cases`).
* ``tdx-collateral``: dcap-qvl's real TDX v4 quote and collateral JSON. Bound: the 10 ECDSA P-256
  signature checks the quote and its collateral need (PCK leaf and CA, QE report, quote, two TCB signing
  certificates, TCB info, QE identity, two CRLs) and loading the quote's PCK chain.
  ``tdx-collateral-cached``: the same with a warm collateral cache (keyserver/evidence/tdx/cache.py), as the
  service now does: the collateral is parsed and authenticated once per exact bytes and root; validity,
  freshness and the quote-dependent checks run per call. Bound: the 5 signature checks left (PCK leaf and
  CA, QE report, quote, PCK CRL by the quote's CA) and loading the quote's PCK chain.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.common import compare, quick_mode, ratio_figures, record
from bench.softtpm import SoftQuoter
from keyserver.evidence.tpm import structures as st

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors"
Call = Callable[[], object]


def _p256(signature: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))


def _verify_cert(issuer: x509.Certificate, cert: x509.Certificate) -> None:
    key = issuer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def tools_pcr_blob(pcrs: dict[str, dict[int, bytes]]) -> bytes:
    """tpm2-tools' serialized PCR file, keylime's input (see tests/tpm/test_crosscheck.py)."""
    from tests.tpm.test_crosscheck import tools_pcr_blob as blob

    return blob(pcrs)


def tpm_cases(kind: str) -> tuple[Call, Call, Call, Call | None]:
    from keyserver.evidence.tpm.quote import AkPublic, verify_quote

    quoter = SoftQuoter.create(kind)
    nonce = b"bench-nonce-0123456789abcdefghij"  # ASCII: keylime compares a str nonce with extraData
    attest, signature = quoter.quote(nonce)
    blob = quoter.tpm2b_public
    pcrs = {bank: dict(values) for bank, values in quoter.pcrs.items()}

    def ours() -> object:
        return verify_quote(
            attest, signature, AkPublic.from_tpm2b_public(blob), expected_extra_data=nonce, pcr_values=pcrs
        )

    parsed_ak = AkPublic.from_tpm2b_public(blob)

    def ours_cached_ak() -> object:
        # What the service does since it caches enrolled AKs parsed, by their exact bytes.
        return verify_quote(attest, signature, parsed_ak, expected_extra_data=nonce, pcr_values=pcrs)

    key = quoter.ak.private.public_key()
    sig = st.parse_signature(signature)
    ordered = b"".join(pcrs["sha256"][i] for i in sorted(pcrs["sha256"]))
    if isinstance(key, ec.EllipticCurvePublicKey):
        der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))

        def bound() -> object:
            key.verify(der, attest, ec.ECDSA(hashes.SHA256()))
            return hashlib.sha256(ordered).digest()
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        raw = sig.rsa

        def bound() -> object:
            key.verify(raw, attest, padding.PKCS1v15(), hashes.SHA256())
            return hashlib.sha256(ordered).digest()

    keylime: Call | None = None
    try:
        from keylime.tpm import tpm_util
    except ImportError:  # keylime is in the test extra; without it the comparison is reported as missing
        return ours, ours_cached_ak, bound, None
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    pcr_blob, nonce_text = tools_pcr_blob(pcrs), nonce.decode()

    def keylime_checkquote() -> object:
        return tpm_util.checkquote(pem, nonce_text, signature, attest, pcr_blob, "sha256")

    keylime_checkquote()  # it must accept the quote, or the comparison means nothing
    ours()
    keylime = keylime_checkquote
    return ours, ours_cached_ak, bound, keylime


def eventlog_cases() -> tuple[Call, Call]:
    from keyserver.evidence.tpm.eventlog import parse_event_log, verify_event_log
    from keyserver.evidence.tpm.quote import AkPublic, verify_quote

    gce = VECTORS / "tpm-quote" / "gce-cos85" / "extracted"
    attest = (gce / "nonce9009" / "quote1_sha256.attest").read_bytes()
    signature = (gce / "nonce9009" / "quote1_sha256.sig").read_bytes()
    ak_public = (gce / "common" / "ak_pub.tpmt_public").read_bytes()
    log = (gce / "common" / "event_log.bin").read_bytes()
    raw = json.loads((gce / "common" / "pcrs_sha256.json").read_text())
    pcrs = {"sha256": {int(i): bytes.fromhex(v) for i, v in raw.items()}}
    parent = st.hierarchy_name(st.RH_ENDORSEMENT)

    def ours() -> object:
        ak = AkPublic.from_tpmt_public(ak_public, parent_qualified_name=parent)
        quote = verify_quote(attest, signature, ak, expected_extra_data=b"\x90\x09", pcr_values=pcrs)
        return verify_event_log(log, quote.pcrs)

    key = AkPublic.from_tpmt_public(ak_public, parent_qualified_name=parent).key
    assert isinstance(key, rsa.RSAPublicKey)
    sig = st.parse_signature(signature).rsa
    extends = [(e.digests[b]) for e in parse_event_log(log).events if e.extends for b in e.digests]

    def bound() -> object:
        key.verify(sig, attest, padding.PKCS1v15(), hashes.SHA256())
        pcr = bytes(32)
        for digest in extends:
            pcr = hashlib.sha256(pcr + digest).digest()
        return pcr

    ours()
    return ours, bound


def snp_cases() -> tuple[Call, Call, Call, Call]:
    from keyserver.evidence.snp import verify_snp_report
    from keyserver.evidence.snp.cache import ChainCache
    from keyserver.evidence.snp.certs import AMD_PSS
    from keyserver.evidence.snp.report import SnpProduct
    from keyserver.evidence.snp.trust import default_snp_roots

    report = (VECTORS / "snp" / "gsg-milan" / "attestation.bin").read_bytes()
    vcek = (VECTORS / "snp" / "gsg-milan" / "vcek.testcer").read_bytes()
    now = datetime(2022, 9, 24, 1, 0, tzinfo=UTC)
    cache = ChainCache()

    def cached() -> object:
        return verify_snp_report(report, vcek_or_vlek=vcek, product="Milan", now=now, chain_cache=cache)

    def cold() -> object:
        return verify_snp_report(report, vcek_or_vlek=vcek, product="Milan", now=now)

    cached()
    assert cache.hits + cache.misses >= 1
    # AMD's VCEKs have serial number 0, which cryptography parses with a warning (see snp/certs.py).
    warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive")
    leaf = x509.load_der_x509_certificate(vcek)
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    r = int.from_bytes(report[0x2A0 : 0x2A0 + 72], "little")
    s = int.from_bytes(report[0x2E8 : 0x2E8 + 72], "little")
    der, signed = encode_dss_signature(r, s), report[:0x2A0]
    product_roots = default_snp_roots().get(SnpProduct.MILAN)
    assert product_roots is not None
    assert product_roots.ask is not None
    ask_key = product_roots.ask.cert.public_key()
    assert isinstance(ask_key, rsa.RSAPublicKey)

    def bound_cached() -> object:
        key.verify(der, signed, ec.ECDSA(hashes.SHA384()))
        return None

    def bound_cold() -> object:
        cert = x509.load_der_x509_certificate(vcek)
        ask_key.verify(cert.signature, cert.tbs_certificate_bytes, AMD_PSS, hashes.SHA384())
        leaf_key = cert.public_key()
        assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
        leaf_key.verify(der, signed, ec.ECDSA(hashes.SHA384()))
        return None

    return cached, bound_cached, cold, bound_cold


def tdx_cases() -> tuple[Call, Call, Call, Call]:
    from keyserver.evidence.tdx import CollateralCache, parse_dcap_qvl_collateral, verify_tdx_quote
    from keyserver.evidence.tdx.certs import intel_sgx_root_ca
    from keyserver.evidence.tdx.quote import parse_quote

    quote = (VECTORS / "tdx" / "dcap-qvl" / "tdx_quote").read_bytes()
    collateral_doc = json.loads((VECTORS / "tdx" / "dcap-qvl" / "tdx_quote_collateral.json").read_bytes())
    now = datetime(2025, 7, 19, 10, 0, 34, tzinfo=UTC)

    def ours() -> object:
        # As the release path does: the evidence's collateral object, serialised and parsed.
        collateral = parse_dcap_qvl_collateral(json.dumps(collateral_doc, sort_keys=True).encode())
        return verify_tdx_quote(quote, now=now, collateral=collateral)

    cache = CollateralCache()

    def ours_cached() -> object:
        # The release path since the collateral cache: serialised, then parsed and authenticated once.
        collateral = cache.parse(json.dumps(collateral_doc, sort_keys=True).encode())
        return verify_tdx_quote(quote, now=now, collateral=collateral, collateral_cache=cache)

    ours()
    ours_cached()
    ours_cached()
    assert cache.verify_hits >= 1
    parsed = parse_quote(quote)
    collateral = parse_dcap_qvl_collateral(json.dumps(collateral_doc, sort_keys=True).encode())
    root = intel_sgx_root_ca()
    root_key = root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    attestation_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + parsed.attestation_key
    )
    tcb_cert, qe_cert = collateral.tcb_info_issuer_chain[0], collateral.qe_identity_issuer_chain[0]
    tcb_key, qe_key = tcb_cert.public_key(), qe_cert.public_key()
    assert isinstance(tcb_key, ec.EllipticCurvePublicKey)
    assert isinstance(qe_key, ec.EllipticCurvePublicKey)
    sha256 = ec.ECDSA(hashes.SHA256())
    checks = [
        (attestation_key, _p256(parsed.signature), parsed.signed_data),
        (tcb_key, _p256(collateral.tcb_info.signature), collateral.tcb_info.raw),
        (qe_key, _p256(collateral.qe_identity.signature), collateral.qe_identity.raw),
    ]

    def bound() -> object:
        leaf, intermediate = x509.load_pem_x509_certificates(parsed.pck_chain_pem)[:2]
        _verify_cert(intermediate, leaf)
        _verify_cert(root, intermediate)
        leaf_key = leaf.public_key()
        assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
        leaf_key.verify(_p256(parsed.qe_report_signature), parsed.qe_report.raw, sha256)
        for key, signature, data in checks:
            key.verify(signature, data, sha256)
        _verify_cert(root, tcb_cert)
        _verify_cert(root, qe_cert)
        assert collateral.root_ca_crl.is_signature_valid(root_key)
        intermediate_key = intermediate.public_key()
        assert isinstance(intermediate_key, ec.EllipticCurvePublicKey)
        assert collateral.pck_crl.is_signature_valid(intermediate_key)
        return None

    def bound_cached() -> object:
        leaf, intermediate = x509.load_pem_x509_certificates(parsed.pck_chain_pem)[:2]
        _verify_cert(intermediate, leaf)
        _verify_cert(root, intermediate)
        leaf_key = leaf.public_key()
        assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
        leaf_key.verify(_p256(parsed.qe_report_signature), parsed.qe_report.raw, sha256)
        attestation_key.verify(_p256(parsed.signature), parsed.signed_data, sha256)
        intermediate_key = intermediate.public_key()
        assert isinstance(intermediate_key, ec.EllipticCurvePublicKey)
        assert collateral.pck_crl.is_signature_valid(intermediate_key)
        return None

    bound()
    bound_cached()
    return ours, bound, ours_cached, bound_cached


def gpu_cases() -> tuple[Call, Call]:
    """``nvidia-gpu``: trustee's real Hopper report (driver 550) and its 5-certificate chain. Bound: loading
    the chain, its 5 ECDSA P-384 links (the last by the pinned root) and the report's P-384 signature."""
    from keyserver.evidence.nvidia import parse_gpu_report
    from keyserver.evidence.nvidia.certs import nvidia_device_root
    from keyserver.evidence.nvidia.verify import verify_gpu_report

    folder = VECTORS / "nvidia" / "hopper-trustee-550"
    report = bytes.fromhex((folder / "hopperAttestationReport.txt").read_text().strip())
    chain = (folder / "hopper_cert_chain_case1.txt").read_bytes()
    nonce, now = report[4:36], datetime(2026, 1, 1, tzinfo=UTC)
    parsed = parse_gpu_report(report)
    root = nvidia_device_root().cert

    def ours() -> object:
        return verify_gpu_report(report, chain, expected_nonce=nonce, now=now)

    def bound() -> object:
        certs = x509.load_pem_x509_certificates(chain)
        for child, issuer in zip(certs, [*certs[1:-1], root], strict=False):
            _verify_cert(issuer, child)
        key = certs[0].public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        r, s = int.from_bytes(parsed.signature[:48], "big"), int.from_bytes(parsed.signature[48:], "big")
        key.verify(encode_dss_signature(r, s), parsed.signed_bytes, ec.ECDSA(hashes.SHA384()))
        return certs

    ours()
    bound()
    return ours, bound


def run(*, runs: int, iterations: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for kind in ("ecc", "rsa"):
        ours, ours_cached_ak, bound, keylime = tpm_cases(kind)
        cases: dict[str, Call] = {"ours": ours, "ours_cached_ak": ours_cached_ak, "bound": bound}
        if keylime is not None:
            cases["keylime"] = keylime
        samples = compare(cases, runs=runs, iterations=iterations)
        name = f"tpm-{kind}"
        figures[name] = ratio_figures(
            samples["ours"], samples["bound"], "cryptography: signature + PCR digest"
        )
        if keylime is not None:
            figures[name]["vs_keylime"] = ratio_figures(
                samples["ours"], samples["keylime"], "keylime 7.14.3 tpm_util.checkquote, same quote"
            )
            figures[f"tpm-{kind}-cached-ak"] = ratio_figures(
                samples["ours_cached_ak"], samples["bound"], "cryptography: signature + PCR digest"
            )
            figures[f"tpm-{kind}-cached-ak"]["vs_keylime"] = ratio_figures(
                samples["ours_cached_ak"],
                samples["keylime"],
                "keylime 7.14.3 tpm_util.checkquote, same quote",
            )
            figures[f"keylime-checkquote-{kind}"] = ratio_figures(
                samples["keylime"], samples["bound"], "cryptography: signature + PCR digest"
            )
    ours, bound = eventlog_cases()
    samples = compare({"ours": ours, "bound": bound}, runs=runs, iterations=max(iterations // 4, 5))
    figures["tpm-eventlog"] = ratio_figures(
        samples["ours"], samples["bound"], "cryptography: signature + one SHA-256 per extend"
    )
    cached, bound_cached, cold, bound_cold = snp_cases()
    samples = compare(
        {"cached": cached, "bound_cached": bound_cached, "cold": cold, "bound_cold": bound_cold},
        runs=runs,
        iterations=iterations,
    )
    figures["snp-cached"] = ratio_figures(
        samples["cached"], samples["bound_cached"], "cryptography: report ECDSA P-384"
    )
    figures["snp-cold"] = ratio_figures(
        samples["cold"], samples["bound_cold"], "cryptography: VCEK load + RSA-PSS by ASK + report ECDSA"
    )
    ours, bound, ours_cached, bound_cached = tdx_cases()
    samples = compare(
        {"ours": ours, "bound": bound, "cached": ours_cached, "bound_cached": bound_cached},
        runs=runs,
        iterations=max(iterations // 4, 5),
    )
    figures["tdx-collateral"] = ratio_figures(
        samples["ours"], samples["bound"], "cryptography: 10 ECDSA P-256 checks + PCK chain load"
    )
    figures["tdx-collateral-cached"] = ratio_figures(
        samples["cached"], samples["bound_cached"], "cryptography: 5 ECDSA P-256 checks + PCK chain load"
    )
    ours, bound = gpu_cases()
    samples = compare({"ours": ours, "bound": bound}, runs=runs, iterations=max(iterations // 4, 5))
    figures["nvidia-gpu"] = ratio_figures(
        samples["ours"], samples["bound"], "cryptography: chain load + 6 ECDSA P-384 checks"
    )
    return figures


def table(figures: dict[str, Any]) -> str:
    rows = [f"{'verifier':<22}{'p50 ms':>9}{'p99 ms':>9}{'ops/s':>10}  ratio (range) to reference"]
    for name, f in figures.items():
        if not isinstance(f, dict) or "p50_ms" not in f:
            continue
        rows.append(
            f"{name:<22}{f['p50_ms']:>9.3f}{f['p99_ms']:>9.3f}{f['ops_per_s']:>10.0f}  "
            f"{f['ratio']:.2f}x ({f['ratio_range'][0]:.2f}-{f['ratio_range'][1]:.2f}) {f['reference']}"
        )
        if "vs_keylime" in f:
            k = f["vs_keylime"]
            rows.append(
                f"{'  vs keylime':<22}{'':>28}  {k['ratio']:.2f}x "
                f"({k['ratio_range'][0]:.2f}-{k['ratio_range'][1]:.2f}) {k['reference']}"
            )
    return "\n".join(rows)


def main() -> dict[str, Any]:
    runs, iterations = (3, 20) if quick_mode() else (15, 200)
    figures = run(runs=runs, iterations=iterations)
    print(table(figures), flush=True)
    record("verifiers", {"runs": runs, "iterations_per_run": iterations, **figures})
    return figures


if __name__ == "__main__":
    main()
