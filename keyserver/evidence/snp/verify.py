"""The SEV-SNP verifier: report bytes + VCEK/VLEK + trust roots + time in, claims or ``EvidenceError`` out.

Pure (DESIGN.md "Verify, then appraise"): no network (the VCEK/VLEK must be supplied - it comes from the
extended report's certificate table, the AMD KDS, or a cloud cache such as Azure THIM), no policy, no
clock (``now`` is a parameter). Checks, in order:

1. Structure of the report (:func:`~keyserver.evidence.snp.report.parse_report`): size, version 2/3,
   reserved fields, signature algorithm 1, SIGNER_INFO. SIGNING_KEY = 7 (unsigned) is rejected, as is
   SIGNING_KEY = VCEK together with MASK_CHIP_KEY = 1 (the spec says the VCEK is then not used).
2. Product: from the v3 CPUID (family/model), the caller and the leaf's issuer CN (``SEV-<product>`` /
   ``SEV-VLEK-<product>``); every source that is present must agree.
3. Leaf (cacheable, see :mod:`.cache`): X.509 v3, subject CN ``SEV-VCEK``/``SEV-VLEK`` matching SIGNER_INFO,
   ECDSA P-384 key, issued and signed (RSASSA-PSS SHA-384, salt 48) by the product's ASK (VCEK) or ASVK
   (VLEK) - which must carry the right CN - and AMD extensions present and well formed, productName naming
   the product. The ASK/ASVK were verified against the pinned, self-signed ARK when the roots were built.
4. Validity of leaf, intermediate and ARK at ``now`` (inclusive bounds).
5. Optional CRL: DER (as AMD's KDS serves it), issued by and signed (RSASSA-PSS) with the ARK, current
   at ``now``; the intermediate (ASK/ASVK) must not be listed. The leaf is not looked up: every VCEK/VLEK
   has serial number 0 and is issued by the ASK, not by the CRL's issuer (RFC 5280 §5.3.3), so an ARK CRL
   cannot name one; AMD supersedes VCEKs through TCB versions instead (go-sev-guest makes the same choice).
6. Report signature: ECDSA P-384/SHA-384 over bytes 0x000..0x29F with R, S little-endian (ABI spec,
   "ECDSA P-384 with SHA-384 Signature"; bytes 48..71 of R and S must be zero).
7. REPORTED_TCB (decoded with the product's TCB_VERSION layout) equals the leaf's blSPL/teeSPL/snpSPL/
   ucodeSPL (+ fmcSPL on Turin).
8. VCEK only: the hwID extension equals CHIP_ID (64 bytes; on Turin the 8-byte hwID equals CHIP_ID[0:8]),
   unless CHIP_ID is all zero (MASK_CHIP_ID), which is reported as ``snp.chip_id_masked``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_SEV_SNP, Claims

from .cache import ChainCache, VerifiedLeaf
from .certs import (
    MAX_CERT_INPUT,
    common_name,
    load_der_certificate,
    parse_amd_extensions,
    sha256_hex,
    signature_algorithms_consistent,
    split_certificates,
    verify_amd_pss_crl_signature,
    verify_amd_pss_signature,
)
from .inputs import MAX_REPORT_INPUT, decode_report_input, read_limited
from .report import (
    P384_COMPONENT_SIZE,
    PLATFORM_INFO_BITS,
    POLICY_CIPHERTEXT_HIDING_BIT,
    POLICY_CXL_ALLOW_BIT,
    POLICY_MEM_AES_256_XTS_BIT,
    POLICY_MIGRATE_MA_BIT,
    POLICY_PAGE_SWAP_DISABLE_BIT,
    POLICY_RAPL_DIS_BIT,
    POLICY_SINGLE_SOCKET_BIT,
    POLICY_SMT_BIT,
    AttestationReport,
    SigningKey,
    SnpProduct,
    Tcb,
    decode_tcb,
    parse_report,
    product_from_cpuid,
)
from .trust import ProductRoots, SnpRoots, TrustedCert, default_snp_roots

MAX_CRL_INPUT = 4 * 1024 * 1024

_LEAF_CN = {SigningKey.VCEK: "SEV-VCEK", SigningKey.VLEK: "SEV-VLEK"}


def _role(kind: SigningKey) -> str:
    return "VCEK" if kind is SigningKey.VCEK else "VLEK"


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise TypeError("now must be a datetime")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC)); naive datetimes are ambiguous")
    return now.astimezone(UTC)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resolve_hint(report: AttestationReport, product: str | SnpProduct | None) -> SnpProduct | None:
    caller = SnpProduct.parse(product) if isinstance(product, str) else product
    from_cpuid = (
        product_from_cpuid(report.cpuid) if report.cpuid is not None and not report.cpuid.is_zero else None
    )
    if caller is not None and from_cpuid is not None and caller is not from_cpuid:
        raise EvidenceError(
            "product-mismatch",
            f"the report's CPUID ({report.cpuid.hex() if report.cpuid else ''}) says {from_cpuid.value} but "
            f"the caller says {caller.value}",
        )
    return caller or from_cpuid


def _product_from_issuer(leaf: x509.Certificate, kind: SigningKey) -> SnpProduct:
    subject_cn = common_name(leaf.subject)
    if subject_cn != _LEAF_CN[kind]:
        other = SigningKey.VLEK if kind is SigningKey.VCEK else SigningKey.VCEK
        if subject_cn == _LEAF_CN[other]:
            raise EvidenceError(
                "signing-key-mismatch",
                f"the report's SIGNER_INFO says it is signed by the {_role(kind)}, but the certificate given "
                f"is a {_role(other)} ({subject_cn}); supply the {_role(kind)} certificate",
            )
        raise EvidenceError(
            "certificate-malformed",
            f"the certificate's subject CN is {subject_cn!r}, expected {_LEAF_CN[kind]!r}",
        )
    issuer_cn = common_name(leaf.issuer) or ""
    prefix = "SEV-" if kind is SigningKey.VCEK else "SEV-VLEK-"
    for candidate in SnpProduct:
        if issuer_cn == prefix + candidate.value:
            return candidate
    raise EvidenceError(
        "unknown-product",
        f"the {_role(kind)} is issued by {issuer_cn!r}, which names no known SEV-SNP product "
        f"(expected '{prefix}Milan', '{prefix}Genoa' or '{prefix}Turin')",
    )


def _verify_leaf(
    leaf_der: bytes,
    leaf: x509.Certificate,
    kind: SigningKey,
    product: SnpProduct,
    proots: ProductRoots,
    issuer: TrustedCert,
) -> VerifiedLeaf:
    """The time-independent checks of the leaf and its chain (cacheable)."""
    role = _role(kind)
    issuer_role = "ASK" if kind is SigningKey.VCEK else "ASVK"
    expected_issuer_cn = f"SEV-{product.value}" if kind is SigningKey.VCEK else f"SEV-VLEK-{product.value}"
    if common_name(issuer.cert.subject) != expected_issuer_cn:
        raise EvidenceError(
            "chain-invalid",
            f"the configured {product.value} {issuer_role} is {common_name(issuer.cert.subject)!r}, not "
            f"{expected_issuer_cn!r}; the trust roots are mis-assembled",
        )
    if common_name(proots.ark.cert.subject) != f"ARK-{product.value}":
        raise EvidenceError(
            "chain-invalid", f"the configured {product.value} ARK is {common_name(proots.ark.cert.subject)!r}"
        )
    if leaf.version is not x509.Version.v3:
        raise EvidenceError("certificate-malformed", f"the {role} is not an X.509 v3 certificate")
    if leaf.issuer != issuer.cert.subject:
        raise EvidenceError(
            "chain-invalid",
            f"the {role} is issued by {leaf.issuer.rfc4514_string()!r}, not by the {product.value} "
            f"{issuer_role} {issuer.cert.subject.rfc4514_string()!r}",
        )
    if not verify_amd_pss_signature(issuer.cert, leaf):
        raise EvidenceError(
            "chain-invalid",
            f"the {role} certificate's signature does not verify under the {product.value} {issuer_role} "
            "(RSASSA-PSS SHA-384, salt 48): the certificate was altered or is not from AMD",
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EvidenceError("certificate-malformed", f"the {role} key is not an ECDSA P-384 key")
    ext = parse_amd_extensions(leaf, product, is_vcek=kind is SigningKey.VCEK)
    if ext.product_name.split("-", 1)[0] != product.value:
        raise EvidenceError(
            "product-mismatch",
            f"the {role}'s productName is {ext.product_name!r} but the product is {product.value}",
        )
    return VerifiedLeaf(
        kind=kind,
        product=product,
        leaf_sha256=sha256_hex(leaf_der),
        issuer_sha256=issuer.sha256,
        ark_sha256=proots.ark.sha256,
        public_key=key,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        extensions=ext,
    )


def _check_window(now: datetime, what: str, not_before: datetime, not_after: datetime) -> None:
    if now < not_before:
        raise EvidenceError(
            "certificate-not-yet-valid",
            f"the {what} certificate is valid from {_iso(not_before)}; verification time {_iso(now)} is "
            "before that (check the verifier's clock or the 'now' you passed)",
        )
    if now > not_after:
        raise EvidenceError(
            "certificate-expired",
            f"the {what} certificate expired at {_iso(not_after)} (verification time {_iso(now)}); obtain a "
            "current certificate from AMD's KDS and fresh evidence",
        )


def _check_crl(
    crl_bytes: bytes, proots: ProductRoots, issuer: TrustedCert, issuer_role: str, now: datetime
) -> None:
    try:
        crl = x509.load_der_x509_crl(crl_bytes)
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.signature_hash_algorithm, list(crl))
    except Exception as exc:  # hostile input: any parse failure is a rejection
        raise EvidenceError(
            "crl-invalid", f"cannot parse the CRL (DER expected, as the KDS serves it): {exc}"
        ) from exc
    ark = proots.ark.cert
    if (
        crl.issuer != ark.subject
        or not signature_algorithms_consistent(crl_bytes, crl=True)
        or not verify_amd_pss_crl_signature(ark, crl)
    ):
        raise EvidenceError(
            "crl-invalid",
            f"the CRL is not issued and signed (RSASSA-PSS SHA-384) by the {proots.product.value} ARK; "
            f"fetch https://kdsintf.amd.com/vcek/v1/{proots.product.value}/crl",
        )
    if now < crl.last_update_utc:
        raise EvidenceError(
            "crl-not-yet-valid", f"the CRL is issued at {_iso(crl.last_update_utc)}, after {_iso(now)}"
        )
    next_update = crl.next_update_utc
    if next_update is not None and now > next_update:
        raise EvidenceError(
            "crl-expired",
            f"the CRL's nextUpdate {_iso(next_update)} has passed ({_iso(now)}); fetch a fresh CRL",
        )
    entry = crl.get_revoked_certificate_by_serial_number(issuer.cert.serial_number)
    if entry is not None:
        raise EvidenceError(
            "certificate-revoked",
            f"AMD revoked the {proots.product.value} {issuer_role} (serial {issuer.cert.serial_number}) at "
            f"{_iso(entry.revocation_date_utc)}",
        )


def _verify_report_signature(report: AttestationReport, key: ec.EllipticCurvePublicKey, role: str) -> None:
    r_le, s_le = report.signature_r, report.signature_s
    if any(r_le[P384_COMPONENT_SIZE:]) or any(s_le[P384_COMPONENT_SIZE:]):
        raise EvidenceError(
            "signature-invalid", "the report signature's R or S exceeds 48 bytes; not a P-384 signature"
        )
    r = int.from_bytes(r_le, "little")
    s = int.from_bytes(s_le, "little")
    if r == 0 or s == 0:
        raise EvidenceError("signature-invalid", "the report signature is empty (R or S is zero)")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError(
            "signature-invalid",
            f"the attestation report's signature does not verify under the {role} given: the report was "
            f"altered, or the {role} is not the one of the chip/TCB that signed it",
        ) from None


def _verify_chain(
    cert_input: bytes | None,
    kind: SigningKey,
    hint: SnpProduct | None,
    roots: SnpRoots,
    now: datetime,
    crl: bytes | None,
    chain_cache: ChainCache | None,
) -> tuple[VerifiedLeaf, SnpProduct]:
    """Select the leaf from ``cert_input``, resolve the product, verify leaf -> ASK/ASVK -> ARK (or take
    a matching cache entry), then the validity windows at ``now`` and the optional CRL."""
    role = _role(kind)

    if cert_input is None:
        raise EvidenceError(
            "certificate-missing",
            f"no {role} certificate was given; this verifier does not contact AMD. Supply the {role} from "
            "the extended report's certificate table, AMD's KDS or your cloud provider",
        )
    ders = split_certificates(bytes(cert_input), role)
    known = roots.all_fingerprints()
    leaves = [d for d in ders if sha256_hex(d) not in known]
    if not leaves:
        raise EvidenceError(
            "certificate-missing",
            f"the certificate input holds only AMD root/intermediate certificates, no {role}",
        )
    if len(leaves) > 1:
        raise EvidenceError(
            "certificate-malformed",
            f"the certificate input holds {len(leaves)} certificates that are not configured AMD roots; give "
            f"exactly one {role} (optionally with its ASK/ASVK and ARK)",
        )
    leaf_der = leaves[0]
    leaf_sha256 = sha256_hex(leaf_der)

    cached = chain_cache.get(kind, leaf_sha256) if chain_cache is not None else None
    leaf_cert: x509.Certificate | None = None
    if cached is not None:
        cert_product = cached.product
    else:
        leaf_cert = load_der_certificate(leaf_der, role)
        cert_product = _product_from_issuer(leaf_cert, kind)
    if hint is not None and hint is not cert_product:
        raise EvidenceError(
            "product-mismatch",
            f"the {role} belongs to {cert_product.value} but the report/caller says {hint.value}",
        )
    prod = cert_product
    proots = roots.get(prod)
    if proots is None:
        raise EvidenceError("roots-missing", f"no trust roots are configured for {prod.value}")
    issuer_role = "ASK" if kind is SigningKey.VCEK else "ASVK"
    issuer = proots.ask if kind is SigningKey.VCEK else proots.asvk
    if issuer is None:
        raise EvidenceError("roots-missing", f"no {issuer_role} is configured for {prod.value}")

    if cached is not None and (
        cached.issuer_sha256 != issuer.sha256 or cached.ark_sha256 != proots.ark.sha256
    ):
        cached = None
    if cached is None:
        if leaf_cert is None:
            leaf_cert = load_der_certificate(leaf_der, role)
            _product_from_issuer(leaf_cert, kind)
        verified = _verify_leaf(leaf_der, leaf_cert, kind, prod, proots, issuer)
        if chain_cache is not None:
            chain_cache.put(verified)
    else:
        verified = cached

    allowed = proots.trusted_fingerprints() | {leaf_sha256}
    for der in ders:
        if sha256_hex(der) not in allowed:
            raise EvidenceError(
                "chain-invalid",
                f"the certificate bundle contains an AMD certificate of another product than {prod.value}",
            )

    _check_window(now, role, verified.not_before, verified.not_after)
    _check_window(
        now, f"{prod.value} {issuer_role}", issuer.cert.not_valid_before_utc, issuer.cert.not_valid_after_utc
    )
    _check_window(
        now, f"{prod.value} ARK", proots.ark.cert.not_valid_before_utc, proots.ark.cert.not_valid_after_utc
    )
    if crl is not None:
        _check_crl(bytes(crl), proots, issuer, issuer_role, now)
    return verified, prod


def _fmt_tcb(bl: int, tee: int, snp: int, ucode: int, fmc: int | None) -> str:
    text = f"bl={bl} tee={tee} snp={snp} ucode={ucode}"
    return text if fmc is None else f"fmc={fmc} {text}"


def _tcb_claims(prefix: str, tcb: Tcb) -> Claims:
    out: Claims = {
        f"{prefix}.bootloader": tcb.bootloader,
        f"{prefix}.tee": tcb.tee,
        f"{prefix}.snp": tcb.snp,
        f"{prefix}.microcode": tcb.microcode,
    }
    if tcb.fmc is not None:
        out[f"{prefix}.fmc"] = tcb.fmc
    return out


def verify_snp_report(
    report: bytes,
    *,
    vcek_or_vlek: bytes | None,
    product: str | SnpProduct | None,
    now: datetime,
    roots: SnpRoots | None = None,
    crl: bytes | None = None,
    chain_cache: ChainCache | None = None,
) -> Claims:
    """Verify a raw 1184-byte SEV-SNP attestation report and return its claims.

    ``vcek_or_vlek``: the signing certificate, DER or PEM; a PEM bundle (VCEK + ASK + ARK, as Azure THIM
    returns it) is accepted - the extra certificates must be the product's configured roots. ``product``:
    ``"Milan"``, ``"Genoa"``, ``"Turin"`` or ``None`` (then taken from the report's CPUID or the leaf's
    issuer). ``now``: timezone-aware verification time. ``roots``: defaults to AMD's shipped, pinned roots.
    ``crl``: optional AMD CRL (DER, signed by the ARK). ``chain_cache``: optional :class:`ChainCache`.

    Raises :class:`EvidenceError` for every problem with the evidence; ``ValueError``/``TypeError`` only for
    caller mistakes (naive ``now``, unknown product name).
    """
    now = _utc(now)
    if roots is None:
        roots = default_snp_roots()
    parsed = parse_report(report)
    kind = parsed.signer_info.signing_key
    if kind is SigningKey.NONE:
        raise EvidenceError(
            "report-unsigned", "SIGNER_INFO.SIGNING_KEY is 7: the AMD-SP did not sign this report"
        )
    if kind is SigningKey.VCEK and parsed.signer_info.mask_chip_key:
        raise EvidenceError(
            "report-unsigned",
            "SIGNER_INFO has MASK_CHIP_KEY set (the VCEK is not used for attestation) yet names the VCEK as "
            "the signing key; such a report carries no VCEK signature",
        )
    hint = _resolve_hint(parsed, product)
    role = _role(kind)
    verified, prod = _verify_chain(vcek_or_vlek, kind, hint, roots, now, crl, chain_cache)

    _verify_report_signature(parsed, verified.public_key, role)

    ext = verified.extensions
    reported = decode_tcb(parsed.reported_tcb, prod, "REPORTED_TCB")
    cert_tcb = (ext.bootloader, ext.tee, ext.snp, ext.microcode, ext.fmc)
    report_tcb = (reported.bootloader, reported.tee, reported.snp, reported.microcode, reported.fmc)
    if report_tcb != cert_tcb:
        raise EvidenceError(
            "tcb-mismatch",
            f"REPORTED_TCB ({_fmt_tcb(*report_tcb)}) does not match the {role}'s TCB extensions "
            f"({_fmt_tcb(*cert_tcb)}); use the {role} AMD issued for the reported TCB",
        )
    current = decode_tcb(parsed.current_tcb, prod, "CURRENT_TCB")
    committed = decode_tcb(parsed.committed_tcb, prod, "COMMITTED_TCB")
    launch = decode_tcb(parsed.launch_tcb, prod, "LAUNCH_TCB")

    if kind is SigningKey.VCEK and not parsed.chip_id_masked:
        hwid = ext.hwid or b""
        chip = parsed.chip_id[: len(hwid)] if prod is SnpProduct.TURIN else parsed.chip_id
        if hwid != chip:
            raise EvidenceError(
                "chip-id-mismatch",
                f"the report's CHIP_ID ({parsed.chip_id.hex()}) is not the VCEK's hwID ({hwid.hex()}); "
                "the VCEK belongs to another chip",
            )

    return _claims(
        parsed, prod, kind, ext.product_name, ext.csp_id, reported, current, committed, launch, verified
    )


def verify_snp_certificate(
    cert: bytes,
    *,
    signing_key: str | SigningKey = SigningKey.VCEK,
    product: str | SnpProduct | None = None,
    now: datetime,
    roots: SnpRoots | None = None,
    crl: bytes | None = None,
    chain_cache: ChainCache | None = None,
) -> VerifiedLeaf:
    """Verify a VCEK/VLEK certificate alone (no report): chain to the pinned ARK, AMD extensions,
    validity at ``now``, optional CRL. ``signing_key`` is ``"vcek"`` or ``"vlek"``. Returns the verified
    leaf (public key, TCB extensions, hwID). Same error contract as :func:`verify_snp_report`."""
    now = _utc(now)
    if isinstance(signing_key, str):
        names = {"vcek": SigningKey.VCEK, "vlek": SigningKey.VLEK}
        if signing_key.lower() not in names:
            raise ValueError(f"signing_key must be 'vcek' or 'vlek', not {signing_key!r}")
        kind = names[signing_key.lower()]
    else:
        kind = signing_key
    if kind is SigningKey.NONE:
        raise ValueError("signing_key must be VCEK or VLEK")
    hint = SnpProduct.parse(product) if isinstance(product, str) else product
    verified, _ = _verify_chain(
        cert, kind, hint, roots if roots is not None else default_snp_roots(), now, crl, chain_cache
    )
    return verified


def _claims(
    r: AttestationReport,
    product: SnpProduct,
    kind: SigningKey,
    product_name: str,
    csp_id: str | None,
    reported: Tcb,
    current: Tcb,
    committed: Tcb,
    launch: Tcb,
    leaf: VerifiedLeaf,
) -> Claims:
    claims: Claims = {
        "tee": TEE_SEV_SNP,
        "report_data": r.report_data.hex(),
        "debug": r.debug,
        "snp.version": r.version,
        "snp.guest_svn": r.guest_svn,
        "snp.policy": r.policy,
        "snp.policy_abi_major": (r.policy >> 8) & 0xFF,
        "snp.policy_abi_minor": r.policy & 0xFF,
        "snp.policy_smt": r.policy_bit(POLICY_SMT_BIT),
        "snp.policy_migrate_ma": r.policy_bit(POLICY_MIGRATE_MA_BIT),
        "snp.policy_single_socket": r.policy_bit(POLICY_SINGLE_SOCKET_BIT),
        "snp.policy_cxl_allow": r.policy_bit(POLICY_CXL_ALLOW_BIT),
        "snp.policy_mem_aes_256_xts": r.policy_bit(POLICY_MEM_AES_256_XTS_BIT),
        "snp.policy_rapl_dis": r.policy_bit(POLICY_RAPL_DIS_BIT),
        "snp.policy_ciphertext_hiding": r.policy_bit(POLICY_CIPHERTEXT_HIDING_BIT),
        "snp.policy_page_swap_disable": r.policy_bit(POLICY_PAGE_SWAP_DISABLE_BIT),
        "snp.family_id": r.family_id.hex(),
        "snp.image_id": r.image_id.hex(),
        "snp.vmpl": r.vmpl,
        "snp.signature_algo": r.signature_algo,
        "snp.platform_info": r.platform_info,
        "snp.signer_info": r.signer_info.raw,
        "snp.author_key_en": r.signer_info.author_key_en,
        "snp.mask_chip_key": r.signer_info.mask_chip_key,
        "snp.signing_key": "vcek" if kind is SigningKey.VCEK else "vlek",
        "snp.measurement": r.measurement.hex(),
        "snp.host_data": r.host_data.hex(),
        "snp.id_key_digest": r.id_key_digest.hex(),
        "snp.author_key_digest": r.author_key_digest.hex(),
        "snp.report_id": r.report_id.hex(),
        "snp.report_id_ma": r.report_id_ma.hex(),
        "snp.chip_id": r.chip_id.hex(),
        "snp.chip_id_masked": r.chip_id_masked,
        "snp.cpuid": r.cpuid.hex() if r.cpuid is not None else None,
        "snp.product": product.value,
        "snp.product_name": product_name,
        "snp.csp_id": csp_id,
        "snp.current_version": f"{r.current_major}.{r.current_minor}.{r.current_build}",
        "snp.current_major": r.current_major,
        "snp.current_minor": r.current_minor,
        "snp.current_build": r.current_build,
        "snp.committed_version": f"{r.committed_major}.{r.committed_minor}.{r.committed_build}",
        "snp.committed_major": r.committed_major,
        "snp.committed_minor": r.committed_minor,
        "snp.committed_build": r.committed_build,
        "snp.signing_cert_sha256": leaf.leaf_sha256,
        "snp.signing_cert_not_before": _iso(leaf.not_before),
        "snp.signing_cert_not_after": _iso(leaf.not_after),
    }
    for name, bit in PLATFORM_INFO_BITS.items():
        claims[f"snp.platform_{name}"] = bool(r.platform_info >> bit & 1)
    claims.update(_tcb_claims("snp.reported_tcb", reported))
    claims.update(_tcb_claims("snp.current_tcb", current))
    claims.update(_tcb_claims("snp.committed_tcb", committed))
    claims.update(_tcb_claims("snp.launch_tcb", launch))
    return claims


def verify_snp_files(
    report_path: str | Path,
    cert_path: str | Path | None,
    now: datetime,
    *,
    product: str | SnpProduct | None = None,
    crl_path: str | Path | None = None,
    roots: SnpRoots | None = None,
    chain_cache: ChainCache | None = None,
) -> Claims:
    """File front-end for the CLI (``keyserver evidence verify --tee sev-snp --report FILE [--cert FILE]
    [--now ISO8601]``): the report file may be raw binary or hex text (:func:`decode_report_input`); the
    certificate file DER or PEM (bundle allowed). ``OSError`` propagates (usage error); evidence problems
    raise :class:`EvidenceError`."""
    report = decode_report_input(read_limited(report_path, MAX_REPORT_INPUT, "report-malformed"))
    cert = read_limited(cert_path, MAX_CERT_INPUT, "certificate-malformed") if cert_path is not None else None
    crl = read_limited(crl_path, MAX_CRL_INPUT, "crl-invalid") if crl_path is not None else None
    return verify_snp_report(
        report, vcek_or_vlek=cert, product=product, now=now, roots=roots, crl=crl, chain_cache=chain_cache
    )
