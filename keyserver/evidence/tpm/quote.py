"""TPM2_Quote verification: bytes + AK in, claims out.

What a TPM quote proves (TPM 2.0 Part 1 §11.4.6.3, Part 3 §18.4 TPM2_Quote): a *restricted* signing key
signs only digests of structures the TPM itself built, which start with ``TPM_GENERATED_VALUE``. So a
valid AK signature over a TPMS_ATTEST whose magic is that value means the TPM holding the AK reported
these PCRs (through ``pcrDigest``), this ``extraData`` (our nonce/binding) and this clock.

Checks, in order (each failure is an :class:`EvidenceError` with the reason in brackets):

1. the AK is a restricted signing key: fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign
   [``tpm-ak-not-restricted``]. An AK known only as a bare public key (PEM/SPKI/JWK) has no attributes
   to check; it is refused unless the caller passes ``accept_bare_ak=True``, stating that something else
   (an Azure HCL report, an enrolment that ran TPM2_ActivateCredential) vouches for it;
2. the TPMT_SIGNATURE scheme fits the AK (RSASSA/RSAPSS for RSA, ECDSA for ECC, and the AK's own scheme
   when it has one) [``tpm-signature-scheme-mismatch``];
3. SHA-1 policy [``tpm-sha1-not-allowed``]: see below;
4. the signature over the *raw* TPMS_ATTEST bytes [``tpm-signature-invalid``];
5. magic and type (quote) [``tpm-attest-not-tpm-generated``, ``tpm-attest-not-quote``];
6. qualifiedSigner: equal to the AK's qualified Name when the caller knows the AK's parent (the GCE AK is
   a primary key of the endorsement hierarchy; a ``tpm2_createak`` AK is a child of the EK), otherwise its
   nameAlg must be the AK's [``tpm-qualified-signer-mismatch``];
7. extraData equals the expected nonce, compared in constant time [``tpm-nonce-mismatch``];
8. pcrSelect: no bank twice, not empty, equal to the banks/PCRs of the supplied values and to
   ``expected_selection`` when given [``tpm-pcr-selection-invalid``, ``tpm-pcr-selection-mismatch``];
9. pcrDigest = H_sig(PCR values concatenated in selection order, ascending index within a bank), with
   H_sig the *signature's* hash, not the bank's (Part 3 §18.4.1 / PCRComputeCurrentDigest)
   [``tpm-pcr-digest-mismatch``].

SHA-1 decision. ``allow_sha1=False`` (the default) rejects a signature made with SHA-1 and an AK whose
nameAlg is SHA-1: a SHA-1 signature is forgeable by a chosen-prefix collision. It also stops treating
SHA-1 PCR *banks* as measurements: a quote (signed with SHA-256) that includes the SHA-1 bank still
verifies - the SHA-1 values are part of the signed digest and must be supplied - but they are not emitted
as claims, so no policy can rely on them; a quote whose banks are all SHA-1 is rejected. This follows
go-tpm-tools (``AllowSHA1``). The GCE Windows vector is SHA-1 signed over the SHA-1 bank: it verifies only
with ``allow_sha1=True``, a per-deployment opt-in for legacy TPMs/Windows.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_TPM, Claims
from keyserver.evidence.tpm.structures import (
    ALG_ECC,
    ALG_ECDSA,
    ALG_NULL,
    ALG_RSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    ALG_SHA1,
    ATTR_DECRYPT,
    ATTR_FIXED_PARENT,
    ATTR_FIXED_TPM,
    ATTR_NAMES,
    ATTR_RESTRICTED,
    ATTR_SENSITIVE_DATA_ORIGIN,
    ATTR_SIGN_ENCRYPT,
    ST_ATTEST_QUOTE,
    Attest,
    EccParms,
    QuoteInfo,
    Signature,
    TpmtPublic,
    bank,
    hash_alg,
    parse_attest,
    parse_signature,
    parse_tpm2b_public,
    parse_tpmt_public,
    qualified_name,
)

AK_REQUIRED_ATTRIBUTES = (
    ATTR_FIXED_TPM | ATTR_FIXED_PARENT | ATTR_SENSITIVE_DATA_ORIGIN | ATTR_RESTRICTED | ATTR_SIGN_ENCRYPT
)
"""fixedTPM+fixedParent: the key cannot leave this TPM; sensitiveDataOrigin: the TPM generated it;
restricted+sign: it signs only TPM-generated structures (Part 1 §27.2 "Restricted signing keys")."""

PcrValues = Mapping[str, Mapping[int, bytes]]
"""PCR values by bank name (``sha256``) and index."""

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def check_ak_attributes(public: TpmtPublic) -> None:
    """Raise ``tpm-ak-not-restricted`` unless ``public`` is a restricted signing key made in the TPM."""
    missing = [
        n
        for bit, n in ATTR_NAMES.items()
        if AK_REQUIRED_ATTRIBUTES & bit and not public.object_attributes & bit
    ]
    if missing:
        raise EvidenceError(
            "tpm-ak-not-restricted",
            f"the AK lacks the attribute(s) {', '.join(missing)}: an attestation key must be a "
            "restricted signing key generated in the TPM (fixedTPM, fixedParent, sensitiveDataOrigin, "
            "restricted, sign), otherwise it could sign a forged quote. Create the AK with such a "
            "template (tpm2_createak does).",
        )
    if public.object_attributes & ATTR_DECRYPT:
        raise EvidenceError(
            "tpm-ak-not-restricted", "the AK also has the decrypt attribute: a restricted AK is signing-only"
        )
    if public.parameters.symmetric.algorithm != ALG_NULL:
        raise EvidenceError(
            "tpm-ak-not-restricted",
            "the AK has a symmetric algorithm: that is a storage key, not a signing key",
        )


@dataclass(frozen=True)
class AkPublic:
    """An attestation key as the verifier knows it.

    Build it with :meth:`from_tpmt_public`/:meth:`from_tpm2b_public` (attributes checked, Name known) or
    :meth:`from_public_key` (a bare key: nothing about it can be checked). ``parent_qualified_name`` - the
    qualified Name of the AK's parent, e.g. ``hierarchy_name(RH_ENDORSEMENT)`` for a primary AK or the EK's
    qualified Name for an AK under the EK - lets :func:`verify_quote` check ``qualifiedSigner`` exactly."""

    key: PublicKey
    public: TpmtPublic | None = None
    parent_qualified_name: bytes | None = None

    @classmethod
    def from_public(cls, public: TpmtPublic, *, parent_qualified_name: bytes | None = None) -> AkPublic:
        check_ak_attributes(public)
        return cls(public.public_key(), public, parent_qualified_name)

    @classmethod
    def from_tpmt_public(cls, data: bytes, *, parent_qualified_name: bytes | None = None) -> AkPublic:
        return cls.from_public(parse_tpmt_public(data), parent_qualified_name=parent_qualified_name)

    @classmethod
    def from_tpm2b_public(cls, data: bytes, *, parent_qualified_name: bytes | None = None) -> AkPublic:
        return cls.from_public(parse_tpm2b_public(data), parent_qualified_name=parent_qualified_name)

    @classmethod
    def from_public_key(cls, key: PublicKey | bytes) -> AkPublic:
        """A bare AK (PEM or DER SubjectPublicKeyInfo, or a key object). Its TPM attributes are unknown,
        so :func:`verify_quote` refuses it unless called with ``accept_bare_ak=True``."""
        if isinstance(key, bytes):
            try:
                loaded = (
                    serialization.load_pem_public_key(key)
                    if key.lstrip().startswith(b"-----")
                    else serialization.load_der_public_key(key)
                )
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise EvidenceError("tpm-ak-invalid", f"the AK public key cannot be parsed: {exc}") from exc
            if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                raise EvidenceError("tpm-ak-invalid", "the AK public key is neither RSA nor EC")
            key = loaded
        return cls(key)

    @property
    def name(self) -> bytes | None:
        return self.public.name() if self.public is not None else None

    @property
    def qualified_name(self) -> bytes | None:
        if self.public is None or self.parent_qualified_name is None:
            return None
        return qualified_name(self.parent_qualified_name, self.public.name(), self.public.name_alg)


@dataclass(frozen=True)
class QuoteResult:
    """What a verified quote says. ``pcrs`` holds every verified value (SHA-1 included); ``claims`` holds
    only what policies may use (no SHA-1 bank unless ``allow_sha1``)."""

    attest: Attest
    signature: Signature
    pcrs: dict[str, dict[int, bytes]]
    claims: Claims
    qualified_signer_verified: bool
    ak_attributes_verified: bool
    notes: tuple[str, ...] = field(default=())


def verify_signature(key: PublicKey, sig: Signature, message: bytes) -> None:
    """Verify a TPMT_SIGNATURE over ``message``; ``tpm-signature-invalid`` on failure."""
    h = hash_alg(sig.hash_alg, "TPMT_SIGNATURE").crypto()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if len(sig.rsa) != (key.key_size + 7) // 8:
                raise InvalidSignature
            if sig.sig_alg == ALG_RSASSA:
                key.verify(sig.rsa, message, padding.PKCS1v15(), h)
            else:
                # The salt is the largest the key allows (Part 1 §B.7) or, on FIPS TPMs, the digest size;
                # AUTO accepts both, as go-tpm and tpm2-tools do.
                key.verify(sig.rsa, message, padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)
        else:
            der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            key.verify(der, message, ec.ECDSA(h))
    except InvalidSignature:
        raise EvidenceError(
            "tpm-signature-invalid",
            "the quote signature does not verify with the AK: the TPMS_ATTEST was altered, or it was signed "
            "by another key",
        ) from None


def _check_scheme(ak: AkPublic, sig: Signature) -> None:
    if isinstance(ak.key, rsa.RSAPublicKey):
        ok = sig.sig_alg in (ALG_RSASSA, ALG_RSAPSS)
    else:
        ok = sig.sig_alg == ALG_ECDSA
    if not ok:
        raise EvidenceError(
            "tpm-signature-scheme-mismatch",
            f"signature scheme 0x{sig.sig_alg:04x} does not fit the AK's key type",
        )
    if ak.public is None:
        return
    scheme = ak.public.parameters.scheme
    if isinstance(ak.public.parameters, EccParms):
        assert ak.public.type == ALG_ECC
        if scheme.scheme not in (ALG_NULL, ALG_ECDSA):
            raise EvidenceError(
                "tpm-signature-unsupported",
                f"the AK's scheme 0x{scheme.scheme:04x} is not supported (ECDSA only)",
            )
    else:
        assert ak.public.type == ALG_RSA
    # A key with a scheme signs only with that scheme and hash (Part 1 §27.2.3); a mismatch means the
    # signature was not produced by this TPM key for this structure.
    if scheme.scheme != ALG_NULL and (scheme.scheme, scheme.hash_alg) != (sig.sig_alg, sig.hash_alg):
        raise EvidenceError(
            "tpm-signature-scheme-mismatch",
            f"the signature uses scheme 0x{sig.sig_alg:04x}/hash 0x{sig.hash_alg:04x} but the AK is fixed to "
            f"0x{scheme.scheme:04x}/0x{scheme.hash_alg:04x}",
        )


def _sha1_refused(what: str) -> EvidenceError:
    return EvidenceError(
        "tpm-sha1-not-allowed",
        f"{what} uses SHA-1, which is not accepted by default (collisions are practical). Quote with a "
        "SHA-256 AK and bank, or enable the explicit SHA-1 opt-in (allow_sha1) for legacy TPMs.",
    )


def _selection_text(sel: Mapping[str, Iterable[int]]) -> str:
    parts = [f"{b}:{','.join(str(i) for i in sorted(p))}" for b, p in sorted(sel.items())]
    return "+".join(parts) or "(nothing)"


def verify_quote(
    attest: bytes,
    signature: bytes,
    ak: AkPublic,
    *,
    expected_extra_data: bytes,
    pcr_values: PcrValues,
    expected_selection: Mapping[str, Iterable[int]] | None = None,
    allow_sha1: bool = False,
    accept_bare_ak: bool = False,
) -> QuoteResult:
    """Verify a TPM2_Quote (``attest`` = TPMS_ATTEST bytes, ``signature`` = TPMT_SIGNATURE bytes).

    ``pcr_values`` are the PCR values the quote covers (from TPM2_PCR_Read or the attester); they must
    be exactly the quoted selection. Returns the parsed quote and its claims; raises ``EvidenceError``."""
    if ak.public is None and not accept_bare_ak:
        raise EvidenceError(
            "tpm-ak-unverified",
            "the AK is a bare public key: its TPM attributes (restricted, fixedTPM, ...) cannot be "
            "checked. Supply its TPMT_PUBLIC, or vouch for it explicitly (accept_bare_ak) when other "
            "evidence binds it.",
        )
    if ak.public is not None:
        check_ak_attributes(ak.public)
        if ak.public.name_alg == ALG_SHA1 and not allow_sha1:
            raise _sha1_refused("the AK's nameAlg")
    sig = parse_signature(signature)
    _check_scheme(ak, sig)
    sig_hash = hash_alg(sig.hash_alg, "TPMT_SIGNATURE")
    if sig.hash_alg == ALG_SHA1 and not allow_sha1:
        raise _sha1_refused("the quote signature")
    verify_signature(ak.key, sig, attest)

    # From here on the bytes are authentic: every remaining check is about *what* the TPM said.
    parsed = parse_attest(attest)
    if parsed.type != ST_ATTEST_QUOTE or not isinstance(parsed.attested, QuoteInfo):
        raise EvidenceError(
            "tpm-attest-not-quote", f"the TPMS_ATTEST is of type 0x{parsed.type:04x}, not a quote (0x8018)"
        )
    info = parsed.attested

    qs_verified = False
    if ak.public is not None:
        expected_qn = ak.qualified_name
        if expected_qn is not None:
            if not hmac.compare_digest(expected_qn, parsed.qualified_signer):
                raise EvidenceError(
                    "tpm-qualified-signer-mismatch",
                    f"qualifiedSigner is {parsed.qualified_signer.hex()} but the AK's qualified Name is "
                    f"{expected_qn.hex()}: the quote was made by another key or under another parent",
                )
            qs_verified = True
        elif parsed.qualified_signer[:2] != ak.public.name_alg.to_bytes(2, "big"):
            raise EvidenceError(
                "tpm-qualified-signer-mismatch",
                "qualifiedSigner does not use the AK's nameAlg: the quote was not made by this AK",
            )

    if not hmac.compare_digest(parsed.extra_data, expected_extra_data):
        raise EvidenceError(
            "tpm-nonce-mismatch",
            "the quote's extraData (qualifyingData) is not the expected nonce: the quote is stale, replayed "
            "or made for another challenge. Request a new challenge and quote again.",
        )

    quoted: dict[str, tuple[int, ...]] = {}
    for sel in info.pcr_select:
        name = sel.bank.name
        if name in quoted:
            raise EvidenceError(
                "tpm-pcr-selection-invalid",
                f"the quote selects the {name} bank twice: the values are ambiguous",
            )
        quoted[name] = sel.pcrs
    if not any(quoted.values()):
        raise EvidenceError(
            "tpm-pcr-selection-invalid", "the quote selects no PCR: it says nothing about the platform state"
        )
    quoted_sets = {b: set(p) for b, p in quoted.items() if p}
    supplied_sets = {b: set(v) for b, v in pcr_values.items() if v}
    if quoted_sets != supplied_sets:
        raise EvidenceError(
            "tpm-pcr-selection-mismatch",
            f"the quote covers {_selection_text(quoted_sets)} but PCR values were supplied for "
            f"{_selection_text(supplied_sets)}: send exactly the values of the quoted PCRs",
        )
    if expected_selection is not None:
        wanted = {b: set(p) for b, p in expected_selection.items() if p}
        if quoted_sets != wanted:
            raise EvidenceError(
                "tpm-pcr-selection-mismatch",
                f"the quote covers {_selection_text(quoted_sets)} but {_selection_text(wanted)} "
                "was requested",
            )

    digest = sig_hash.new()
    verified: dict[str, dict[int, bytes]] = {}
    for sel in info.pcr_select:
        h = sel.bank
        values = pcr_values[h.name] if sel.pcrs else {}
        for index in sel.pcrs:
            value = values[index]
            if not isinstance(value, bytes) or len(value) != h.size:
                raise EvidenceError(
                    "tpm-pcr-value-invalid",
                    f"the value given for PCR {h.name}:{index} is not a {h.size}-byte {h.name} digest",
                )
            digest.update(value)
            verified.setdefault(h.name, {})[index] = value
    if not hmac.compare_digest(digest.digest(), info.pcr_digest):
        raise EvidenceError(
            "tpm-pcr-digest-mismatch",
            "the supplied PCR values do not hash to the quote's pcrDigest: they are not the values the TPM "
            "quoted. Read the PCRs in the same operation as the quote.",
        )

    claim_banks = {b: v for b, v in verified.items() if allow_sha1 or bank(b).alg_id != ALG_SHA1}
    notes: list[str] = []
    if len(claim_banks) != len(verified):
        if not claim_banks:
            raise _sha1_refused("every quoted PCR bank")
        notes.append("SHA-1 PCR bank verified but not emitted as claims (allow_sha1 is off)")
    claims: Claims = {
        "tee": TEE_TPM,
        "debug": False,
        "report_data": parsed.extra_data.hex(),
        "tpm.ak_name": ak.name.hex() if ak.name is not None else None,
        "tpm.clock": parsed.clock_info.clock,
        "tpm.clock_safe": parsed.clock_info.safe,
        "tpm.reset_count": parsed.clock_info.reset_count,
        "tpm.restart_count": parsed.clock_info.restart_count,
        "tpm.firmware_version": parsed.firmware_version,
    }
    for b, values in claim_banks.items():
        for index, value in sorted(values.items()):
            claims[f"tpm.pcrs.{b}.{index}"] = value.hex()
    return QuoteResult(
        attest=parsed,
        signature=sig,
        pcrs=verified,
        claims=claims,
        qualified_signer_verified=qs_verified,
        ak_attributes_verified=ak.public is not None,
        notes=tuple(notes),
    )


def pcr_values_from_hex(values: Mapping[str, Mapping[int | str, str]]) -> dict[str, dict[int, bytes]]:
    """Convert ``{"sha256": {"0": "ab.."}}`` (JSON form) to the bytes form; ``tpm-pcr-value-invalid`` on
    bad hex or a bad index."""
    out: dict[str, dict[int, bytes]] = {}
    for b, pcrs in values.items():
        bank(b)
        for index, text in pcrs.items():
            try:
                i = int(index)
                value = bytes.fromhex(text)
            except (TypeError, ValueError) as exc:
                raise EvidenceError("tpm-pcr-value-invalid", f"PCR {b}:{index} is not hex: {exc}") from exc
            if not 0 <= i < 64:
                raise EvidenceError("tpm-pcr-value-invalid", f"PCR index {index} is out of range")
            out.setdefault(b, {})[i] = value
    return out
