"""verify_quote on every real quote among the vectors, their mutations, and synthetic quotes signed by
software keys that exercise each check in isolation."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as s

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm import structures as st
from keyserver.evidence.tpm.ek import load_certificate, verify_ak_certificate
from keyserver.evidence.tpm.eventlog import verify_event_log
from keyserver.evidence.tpm.quote import AkPublic, verify_quote
from tests.fuzzing import fuzz_settings

from .helpers import (
    GCE,
    GCE_NONCES,
    GCE_QUOTES,
    GCE_ROOTS,
    NOW,
    SoftAk,
    apply_edit,
    azure_quote,
    ec_key,
    gce_ak,
    gce_pcrs,
    gce_quote,
    make_attest,
    make_pcrs,
    mutations,
    public_from_key,
    rsa_key,
    sign,
    soft_ak,
    vec,
    vjson,
    windows_pcrs,
    windows_vector,
)

pytestmark = pytest.mark.fuzz

EXPECTED = vjson("tpm-quote/expected.json")["vectors"]


def reason(exc: pytest.ExceptionInfo[EvidenceError]) -> str:
    return exc.value.reason


# --- GCE COS-85: 2 attestations x 3 quotes, AK certificate chain, event log -----------------------------


@pytest.mark.parametrize("attestation", sorted(GCE_NONCES))
@pytest.mark.parametrize("quote", GCE_QUOTES)
def test_gce_quotes_verify(attestation: str, quote: str) -> None:
    bank = quote.split("_")[1]
    attest, sig = gce_quote(attestation, quote)
    pcrs = gce_pcrs(bank)
    result = verify_quote(
        attest,
        sig,
        gce_ak(),
        expected_extra_data=GCE_NONCES[attestation],
        pcr_values=pcrs,
        expected_selection={bank: range(24)},
        allow_sha1=bank == "sha1",
    )
    fields = EXPECTED[f"gce-cos85/{attestation}/{quote}"]["attest_fields"]
    assert result.qualified_signer_verified
    assert result.ak_attributes_verified
    claims = result.claims
    assert claims["tee"] == "tpm"
    assert claims["debug"] is False
    assert claims["report_data"] == GCE_NONCES[attestation].hex()
    assert claims["tpm.clock"] == fields["clock"]
    assert claims["tpm.reset_count"] == 10
    assert claims["tpm.restart_count"] == 0
    assert claims["tpm.firmware_version"] == 0x2016051100162800
    assert claims["tpm.ak_name"] == gce_ak().name.hex()  # type: ignore[union-attr]
    for index, value in pcrs[bank].items():
        assert claims[f"tpm.pcrs.{bank}.{index}"] == value.hex()


@pytest.mark.parametrize("attestation", sorted(GCE_NONCES))
def test_gce_sha1_bank_quote_needs_the_opt_in(attestation: str) -> None:
    """mutations.json tpm[1]: keep only the SHA-1 quote; a verifier that disallows SHA-1 rejects it."""
    attest, sig = gce_quote(attestation, "quote0_sha1")
    with pytest.raises(EvidenceError) as err:
        verify_quote(
            attest, sig, gce_ak(), expected_extra_data=GCE_NONCES[attestation], pcr_values=gce_pcrs("sha1")
        )
    assert reason(err) == "tpm-sha1-not-allowed"


def test_gce_ak_certificate_chain_and_key() -> None:
    result = verify_ak_certificate(
        (GCE / "common" / "ak_cert.der").read_bytes(),
        roots=[(GCE_ROOTS / "tpm_ek_root_1.cer").read_bytes()],
        intermediates=[(GCE_ROOTS / "tpm_ek_intermediate_2.crt").read_bytes()],
        now=NOW,
        ak_public=gce_ak().public,
    )
    assert len(result.chain) == 3
    assert (result.tpm_manufacturer, result.tpm_model, result.tpm_version) == (
        "id:474F4F47",
        "vTPM",
        "id:20160511",
    )


CHAIN_CASES = {
    "no-roots": ([], ["tpm_ek_intermediate_2.crt"]),
    "no-intermediates": (["tpm_ek_root_1.cer"], []),
    "other-pki": (["gcp_ek_ak_ca_root.crt"], ["gcp_ek_ak_ca_intermediate_v3.crt"]),
    "wrong-intermediate": (["tpm_ek_root_1.cer"], ["tpm_ek_intermediate_3.crt"]),
}


@pytest.mark.parametrize("case", sorted(CHAIN_CASES))
def test_gce_ak_certificate_needs_its_chain(case: str) -> None:
    """go-tpm-tools TestValidateAK: fails with no roots, no intermediates, or another CA."""
    roots, intermediates = CHAIN_CASES[case]
    with pytest.raises(EvidenceError) as err:
        verify_ak_certificate(
            (GCE / "common" / "ak_cert.der").read_bytes(),
            roots=[(GCE_ROOTS / r).read_bytes() for r in roots],
            intermediates=[(GCE_ROOTS / i).read_bytes() for i in intermediates],
            now=NOW,
        )
    assert reason(err) == "tpm-cert-chain-invalid"


def test_gce_ak_certificate_time_window() -> None:
    cert = (GCE / "common" / "ak_cert.der").read_bytes()
    roots = [(GCE_ROOTS / "tpm_ek_root_1.cer").read_bytes()]
    intermediates = [(GCE_ROOTS / "tpm_ek_intermediate_2.crt").read_bytes()]
    leaf, _ = load_certificate(cert, "AK")
    with pytest.raises(EvidenceError) as err:
        verify_ak_certificate(
            cert,
            roots=roots,
            intermediates=intermediates,
            now=leaf.not_valid_before_utc.replace(year=2021, month=8, day=30),
        )
    assert reason(err) == "tpm-cert-not-yet-valid"
    with pytest.raises(EvidenceError) as err:
        verify_ak_certificate(
            cert, roots=roots, intermediates=intermediates, now=leaf.not_valid_after_utc.replace(year=2052)
        )
    assert reason(err) == "tpm-cert-expired"


def test_gce_mutation_foreign_ak_certificate_is_rejected() -> None:
    """mutations.json tpm[0] / go-tpm-tools TestVerifyIgnoreAKPubWithAKCert: an AK certificate that does
    not certify ak_pub must fail, although it chains to a GCE root."""
    assert "nonce9009" in mutations()["tpm"][0]["file"]
    foreign = vec("tpm-quote/gce-ek-ak-certs/uca_tpm_rsa_sign_cert.pem")
    with pytest.raises(EvidenceError) as err:
        verify_ak_certificate(
            foreign,
            roots=[(GCE_ROOTS / "tpm_ek_root_1.cer").read_bytes()],
            intermediates=[(GCE_ROOTS / "tpm_ek_intermediate_3.crt").read_bytes()],
            now=NOW,
            ak_public=gce_ak().public,
        )
    assert reason(err) == "tpm-cert-key-mismatch"


@pytest.mark.parametrize("nonce", [b"", b"\x90\x08", b"\x90\x09\x00", b"\x09\x90"])
def test_gce_mutation_other_nonce_is_rejected(nonce: bytes) -> None:
    """mutations.json tpm[0]: nonce 0x9009 accepts, any other rejects (tpm2_checkquote -q 9008)."""
    attest, sig = gce_quote("nonce9009", "quote1_sha256")
    with pytest.raises(EvidenceError) as err:
        verify_quote(attest, sig, gce_ak(), expected_extra_data=nonce, pcr_values=gce_pcrs("sha256"))
    assert reason(err) == "tpm-nonce-mismatch"


def test_gce_end_to_end_with_event_log() -> None:
    attest, sig = gce_quote("nonce9009", "quote1_sha256")
    quote = verify_quote(
        attest, sig, gce_ak(), expected_extra_data=b"\x90\x09", pcr_values=gce_pcrs("sha256")
    )
    log = verify_event_log((GCE / "common" / "event_log.bin").read_bytes(), quote.pcrs)
    assert {p for _, p in log.verified} == set(range(10))  # PCR 10 (IMA) and 17-22 are not in the log
    assert log.claims["tpm.secure_boot"] is True
    assert isinstance(log.claims["tpm.efi_apps"], list)
    assert len(log.claims["tpm.efi_apps"]) == 3


def test_gce_pcr_tampering_is_rejected() -> None:
    attest, sig = gce_quote("no-nonce", "quote1_sha256")
    pcrs = gce_pcrs("sha256")
    pcrs["sha256"][7] = bytes(32)
    with pytest.raises(EvidenceError) as err:
        verify_quote(attest, sig, gce_ak(), expected_extra_data=b"", pcr_values=pcrs)
    assert reason(err) == "tpm-pcr-digest-mismatch"


def test_gce_wrong_parent_means_wrong_qualified_signer() -> None:
    attest, sig = gce_quote("no-nonce", "quote1_sha256")
    ak = AkPublic.from_tpmt_public(gce_ak().public.raw, parent_qualified_name=st.hierarchy_name(st.RH_OWNER))  # type: ignore[union-attr]
    with pytest.raises(EvidenceError) as err:
        verify_quote(attest, sig, ak, expected_extra_data=b"", pcr_values=gce_pcrs("sha256"))
    assert reason(err) == "tpm-qualified-signer-mismatch"


# --- Windows on GCE: SHA-1 signed -------------------------------------------------------------------------


def _windows_inputs() -> tuple[bytes, bytes, AkPublic]:
    win = windows_vector()
    return (
        base64.b64decode(win["Quote"]["Quote"]),
        base64.b64decode(win["Quote"]["Signature"]),
        AkPublic.from_tpmt_public(base64.b64decode(win["AK"]["Public"])),
    )


def test_windows_sha1_quote_is_rejected_by_default() -> None:
    attest, sig, ak = _windows_inputs()
    with pytest.raises(EvidenceError) as err:
        verify_quote(attest, sig, ak, expected_extra_data=b"", pcr_values=windows_pcrs())
    assert reason(err) == "tpm-sha1-not-allowed"
    assert "allow_sha1" in err.value.message


def test_windows_sha1_quote_verifies_with_the_opt_in() -> None:
    attest, sig, ak = _windows_inputs()
    result = verify_quote(
        attest, sig, ak, expected_extra_data=b"", pcr_values=windows_pcrs(), allow_sha1=True
    )
    assert result.signature.hash_alg == st.ALG_SHA1
    assert result.claims["tpm.pcrs.sha1.7"] == windows_pcrs()["sha1"][7].hex()
    assert result.claims["report_data"] == ""
    # The qualified Name cannot be checked (the AK's parent is unknown) but its nameAlg is.
    assert not result.qualified_signer_verified
    log = verify_event_log(
        base64.b64decode(windows_vector()["Log"]["Raw"]), result.pcrs, claims_bank="sha1", allow_sha1=True
    )
    assert log.claims["tpm.secure_boot"] is True  # go-attestation TestSecureBoot
    assert {p for _, p in log.verified} == {0, 4, 5, 7, 11, 12, 13, 14}


# --- trustee: a bare SPKI AK ------------------------------------------------------------------------------


def test_trustee_quote_with_a_bare_ak() -> None:
    evidence = json.loads(vec("tpm-quote/trustee-tpm/tpm_evidence.json"))
    attest = base64.b64decode(evidence["tpm_quote"]["message"])
    sig = base64.b64decode(evidence["tpm_quote"]["signature"])
    ak = AkPublic.from_public_key(base64.b64decode(evidence["ak_public"]))
    pcrs = {"sha256": {i: bytes.fromhex(v) for i, v in enumerate(evidence["tpm_quote"]["pcrs"])}}
    nonce = bytes.fromhex(EXPECTED["trustee-tpm"]["attest_fields"]["extraData"])
    assert len(nonce) == 64
    with pytest.raises(EvidenceError) as err:
        verify_quote(attest, sig, ak, expected_extra_data=nonce, pcr_values=pcrs)
    assert reason(err) == "tpm-ak-unverified"
    result = verify_quote(attest, sig, ak, expected_extra_data=nonce, pcr_values=pcrs, accept_bare_ak=True)
    assert not result.ak_attributes_verified
    assert result.claims["tpm.ak_name"] is None
    assert result.claims["report_data"] == nonce.hex()


# --- Azure vTPM quotes (AK from the HCL report) and their mutations -------------------------------------


AZURE = ["azure-snp-vtpm", "azure-tdx-vtpm"]


def _azure_verify(kind: str, quote: Mapping[str, object], nonce: bytes = b"challenge") -> None:
    _, key = azure_quote(kind)
    message = bytes.fromhex(str(quote["message"]))
    signature = st.Signature(st.ALG_RSASSA, st.ALG_SHA256, rsa=bytes.fromhex(str(quote["signature"])))
    pcr_list = quote["pcrs"]
    assert isinstance(pcr_list, list)
    pcrs = {"sha256": {i: bytes.fromhex(v) for i, v in enumerate(pcr_list)}}
    result = verify_quote(
        message,
        signature.marshal(),
        AkPublic.from_public_key(key),
        expected_extra_data=nonce,
        pcr_values=pcrs,
        accept_bare_ak=True,  # the HCL report, verified by the SNP/TDX verifier, vouches for HCLAkPub
    )
    assert result.claims["tpm.pcrs.sha256.0"] == EXPECTED[f"{kind}/tpm-quote-v1.json"]["pcr0"]


@pytest.mark.parametrize("kind", AZURE)
def test_azure_quotes_verify(kind: str) -> None:
    quote, _ = azure_quote(kind)
    _azure_verify(kind, quote)


def _azure_mutations() -> list[tuple[str, dict[str, object]]]:
    return [
        (m["file"].split("/")[1], m) for m in mutations()["azure"] if m["file"].endswith("tpm-quote-v1.json")
    ]


@pytest.mark.parametrize(
    ("kind", "mutation"), _azure_mutations(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_azure_quote_mutations_are_rejected(kind: str, mutation: dict[str, object]) -> None:
    quote, _ = azure_quote(kind)
    field = str(mutation["field"])
    nonce = b"challenge"
    if field.startswith("signature"):
        quote["signature"] = apply_edit(bytes.fromhex(quote["signature"]), 0, "xor", 1).hex()
        expected = "tpm-signature-invalid"
    elif field.startswith("pcrs[0]"):
        quote["pcrs"][0] = apply_edit(bytes.fromhex(quote["pcrs"][0]), 0, "xor", 1).hex()
        expected = "tpm-pcr-digest-mismatch"
    else:
        assert field == "expected nonce"
        nonce = b"egnellahc"
        expected = "tpm-nonce-mismatch"
    with pytest.raises(EvidenceError) as err:
        _azure_verify(kind, quote, nonce)
    assert reason(err) == expected, mutation["expect"]


# --- synthetic quotes: one check at a time ----------------------------------------------------------------

NONCE = bytes(range(32))


def _quote(
    ak: SoftAk,
    selection: Mapping[str, list[int]] | None = None,
    *,
    sig_alg: int | None = None,
    sig_hash: int = st.ALG_SHA256,
    **attest_kwargs: object,
) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
    pcrs = make_pcrs(selection or {"sha256": [0, 7, 8, 14]})
    kwargs: dict[str, object] = {
        "extra_data": NONCE,
        "qualified_signer": ak.qualified_name,
        "digest_hash": sig_hash,
    }
    kwargs.update(attest_kwargs)
    attest = make_attest(pcrs, **kwargs)  # type: ignore[arg-type]
    default_alg = st.ALG_ECDSA if ak.public.type == st.ALG_ECC else st.ALG_RSASSA
    return attest, sign(ak.private, attest, sig_alg or default_alg, sig_hash), pcrs


AKS: dict[str, tuple[Callable[[], SoftAk], int | None, int]] = {
    "ecdsa-p256-sha256": (lambda: soft_ak(ec_key("secp256r1")), None, st.ALG_SHA256),
    "ecdsa-p384-sha384": (
        lambda: soft_ak(ec_key("secp384r1"), scheme=st.Scheme(st.ALG_ECDSA, st.ALG_SHA384)),
        None,
        st.ALG_SHA384,
    ),
    "rsassa-2048-sha256": (lambda: soft_ak(rsa_key(2048)), None, st.ALG_SHA256),
    "rsapss-2048-sha256": (
        lambda: soft_ak(rsa_key(2048), scheme=st.Scheme(st.ALG_RSAPSS, st.ALG_SHA256)),
        st.ALG_RSAPSS,
        st.ALG_SHA256,
    ),
    "rsa-null-scheme-sha384": (
        lambda: soft_ak(rsa_key(2048), scheme=st.Scheme()),
        st.ALG_RSASSA,
        st.ALG_SHA384,
    ),
}


@pytest.mark.parametrize("name", sorted(AKS))
def test_synthetic_quote_verifies(name: str) -> None:
    factory, sig_alg, sig_hash = AKS[name]
    ak = factory()
    attest, sig, pcrs = _quote(ak, sig_alg=sig_alg, sig_hash=sig_hash)
    result = verify_quote(
        attest,
        sig,
        ak.ak,
        expected_extra_data=NONCE,
        pcr_values=pcrs,
        expected_selection={"sha256": [0, 7, 8, 14]},
    )
    assert result.qualified_signer_verified
    assert result.claims["tpm.pcrs.sha256.14"] == pcrs["sha256"][14].hex()
    assert result.claims["report_data"] == NONCE.hex()
    assert result.claims["tpm.clock_safe"] is True


def test_rsapss_with_digest_sized_salt_verifies() -> None:
    """FIPS-mode TPMs use a salt as long as the digest; others the longest possible: both verify."""
    ak = soft_ak(rsa_key(2048), scheme=st.Scheme(st.ALG_RSAPSS, st.ALG_SHA256))
    pcrs = make_pcrs({"sha256": [0]})
    attest = make_attest(pcrs, extra_data=NONCE, qualified_signer=ak.qualified_name)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    raw = rsa_key(2048).sign(attest, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    sig = st.Signature(st.ALG_RSAPSS, st.ALG_SHA256, rsa=raw).marshal()
    verify_quote(attest, sig, ak.ak, expected_extra_data=NONCE, pcr_values=pcrs)


def test_multi_bank_quote_and_sha1_bank_claims() -> None:
    ak = soft_ak(ec_key())
    selection = {"sha1": [8, 9], "sha256": [8, 9, 10]}
    attest, sig, pcrs = _quote(ak, selection, order=["sha1", "sha256"])
    result = verify_quote(attest, sig, ak.ak, expected_extra_data=NONCE, pcr_values=pcrs)
    assert set(result.pcrs) == {"sha1", "sha256"}
    assert "tpm.pcrs.sha256.10" in result.claims
    assert not any(k.startswith("tpm.pcrs.sha1.") for k in result.claims)
    assert result.notes
    with_sha1 = verify_quote(attest, sig, ak.ak, expected_extra_data=NONCE, pcr_values=pcrs, allow_sha1=True)
    assert with_sha1.claims["tpm.pcrs.sha1.9"] == pcrs["sha1"][9].hex()
    # The digest follows the quote's bank order: the same values in the other order do not verify.
    swapped = make_attest(
        pcrs, extra_data=NONCE, qualified_signer=ak.qualified_name, order=["sha256", "sha1"]
    )
    assert swapped != attest
    result2 = verify_quote(swapped, sign(ak.private, swapped, st.ALG_ECDSA, st.ALG_SHA256), ak.ak,
                           expected_extra_data=NONCE, pcr_values=pcrs)  # fmt: skip
    assert result2.pcrs == result.pcrs


def test_pcr_digest_uses_the_signature_hash_not_the_bank_hash() -> None:
    ak = soft_ak(rsa_key(2048), scheme=st.Scheme())
    pcrs = make_pcrs({"sha256": [0, 1]})
    wrong = make_attest(pcrs, extra_data=NONCE, qualified_signer=ak.qualified_name, digest_hash=st.ALG_SHA256)
    with pytest.raises(EvidenceError) as err:
        verify_quote(wrong, sign(ak.private, wrong, st.ALG_RSASSA, st.ALG_SHA384), ak.ak,
                     expected_extra_data=NONCE, pcr_values=pcrs)  # fmt: skip
    assert reason(err) == "tpm-pcr-digest-mismatch"


def _expect(
    reason_code: str,
    ak: AkPublic,
    attest: bytes,
    sig: bytes,
    pcrs: Mapping[str, Mapping[int, bytes]],
    *,
    nonce: bytes = NONCE,
    expected_selection: Mapping[str, Iterable[int]] | None = None,
) -> EvidenceError:
    with pytest.raises(EvidenceError) as err:
        verify_quote(
            attest, sig, ak, expected_extra_data=nonce, pcr_values=pcrs, expected_selection=expected_selection
        )
    assert err.value.reason == reason_code, err.value.message
    assert err.value.message
    return err.value


def test_each_check_rejects_on_its_own() -> None:
    ak = soft_ak(ec_key())
    attest, sig, pcrs = _quote(ak)
    # wrong nonce / an old quote replayed for a new challenge
    _expect("tpm-nonce-mismatch", ak.ak, attest, sig, pcrs, nonce=bytes(32))
    _expect("tpm-nonce-mismatch", ak.ak, attest, sig, pcrs, nonce=NONCE[:-1])
    # tampered PCR value, wrong-length PCR value
    bad = {"sha256": dict(pcrs["sha256"])}
    bad["sha256"][8] = bytes(32)
    _expect("tpm-pcr-digest-mismatch", ak.ak, attest, sig, bad)
    bad["sha256"][8] = bytes(20)
    _expect("tpm-pcr-value-invalid", ak.ak, attest, sig, bad)
    # wrong selection: values for more or fewer PCRs than quoted, or another selection was requested
    more = {"sha256": {**pcrs["sha256"], 9: bytes(32)}}
    _expect("tpm-pcr-selection-mismatch", ak.ak, attest, sig, more)
    fewer = {"sha256": {k: v for k, v in pcrs["sha256"].items() if k != 14}}
    _expect("tpm-pcr-selection-mismatch", ak.ak, attest, sig, fewer)
    _expect("tpm-pcr-selection-mismatch", ak.ak, attest, sig, pcrs, expected_selection={"sha256": range(24)})
    _expect(
        "tpm-pcr-selection-mismatch", ak.ak, attest, sig, pcrs, expected_selection={"sha384": [0, 7, 8, 14]}
    )
    # a signature by another key, and garbage signatures
    other = soft_ak(ec_key(which=1))
    _expect(
        "tpm-signature-invalid", ak.ak, attest, sign(other.private, attest, st.ALG_ECDSA, st.ALG_SHA256), pcrs
    )
    _expect("tpm-malformed", ak.ak, attest, sig[:-1], pcrs)
    rsa_sig = sign(rsa_key(), attest, st.ALG_RSASSA, st.ALG_SHA256)
    _expect("tpm-signature-scheme-mismatch", ak.ak, attest, rsa_sig, pcrs)
    # the AK is fixed to ECDSA/SHA-256: an ECDSA/SHA-384 signature did not come from it
    sha384_sig = sign(ak.private, attest, st.ALG_ECDSA, st.ALG_SHA384)
    _expect("tpm-signature-scheme-mismatch", ak.ak, attest, sha384_sig, pcrs)
    # qualifiedSigner of another key / another parent
    # another key signing a quote that names this AK as its signer
    claimed = make_attest(pcrs, extra_data=NONCE, qualified_signer=ak.qualified_name)
    _expect(
        "tpm-qualified-signer-mismatch",
        other.ak,
        claimed,
        sign(other.private, claimed, st.ALG_ECDSA, st.ALG_SHA256),
        pcrs,
    )
    elsewhere = AkPublic.from_public(ak.public, parent_qualified_name=st.hierarchy_name(st.RH_ENDORSEMENT))
    _expect("tpm-qualified-signer-mismatch", elsewhere, attest, sig, pcrs)


def test_flipped_attest_bytes_are_rejected() -> None:
    ak = soft_ak(ec_key())
    attest, sig, pcrs = _quote(ak)
    for pos in range(len(attest)):
        flipped = bytearray(attest)
        flipped[pos] ^= 0x01
        _expect("tpm-signature-invalid", ak.ak, bytes(flipped), sig, pcrs)


@fuzz_settings(200)
@given(edits=s.lists(s.tuples(s.integers(min_value=0), s.integers(1, 255)), min_size=1, max_size=3))
def test_any_attest_edit_is_rejected_as_a_bad_signature(edits: list[tuple[int, int]]) -> None:
    ak = soft_ak(ec_key())
    attest, sig, pcrs = _quote(ak)
    mutated = bytearray(attest)
    for pos, delta in edits:
        mutated[pos % len(mutated)] ^= delta
    if bytes(mutated) == attest:
        return
    _expect("tpm-signature-invalid", ak.ak, bytes(mutated), sig, pcrs)


def test_signed_but_not_tpm_generated_structures_are_rejected() -> None:
    """A non-restricted key could sign anything; these show the structure checks after the signature."""
    ak = soft_ak(ec_key())
    pcrs = make_pcrs({"sha256": [0]})
    for kwargs, code in (
        ({"magic": 0xFF544348}, "tpm-attest-not-tpm-generated"),
        (
            {"att_type": st.ST_ATTEST_CREATION},
            "tpm-malformed",
        ),  # a creation body does not parse as a quote one
    ):
        attest = make_attest(pcrs, extra_data=NONCE, qualified_signer=ak.qualified_name, **kwargs)  # type: ignore[arg-type]
        _expect(code, ak.ak, attest, sign(ak.private, attest, st.ALG_ECDSA, st.ALG_SHA256), pcrs)
    clock = st.ClockInfo(1, 1, 1, True)
    certify = st.Attest(
        st.TPM_GENERATED_VALUE, st.ST_ATTEST_CERTIFY, ak.qualified_name, NONCE, clock, 1,
        st.CertifyInfo(ak.public.name(), ak.qualified_name),
    ).marshal()  # fmt: skip
    _expect(
        "tpm-attest-not-quote", ak.ak, certify, sign(ak.private, certify, st.ALG_ECDSA, st.ALG_SHA256), pcrs
    )
    # duplicate bank and empty selection
    selection = (st.PcrSelection(st.ALG_SHA256, (0,)), st.PcrSelection(st.ALG_SHA256, (1,)))
    dup = st.Attest(
        st.TPM_GENERATED_VALUE, st.ST_ATTEST_QUOTE, ak.qualified_name, NONCE, clock, 1,
        st.QuoteInfo(selection, bytes(32)),
    ).marshal()  # fmt: skip
    _expect("tpm-pcr-selection-invalid", ak.ak, dup, sign(ak.private, dup, st.ALG_ECDSA, st.ALG_SHA256), pcrs)
    empty = make_attest({}, extra_data=NONCE, qualified_signer=ak.qualified_name)
    _expect(
        "tpm-pcr-selection-invalid", ak.ak, empty, sign(ak.private, empty, st.ALG_ECDSA, st.ALG_SHA256), {}
    )


@pytest.mark.parametrize(
    "missing",
    [
        st.ATTR_FIXED_TPM,
        st.ATTR_FIXED_PARENT,
        st.ATTR_SENSITIVE_DATA_ORIGIN,
        st.ATTR_RESTRICTED,
        st.ATTR_SIGN_ENCRYPT,
    ],
    ids=lambda bit: st.ATTR_NAMES[bit],
)
def test_ak_must_be_a_restricted_signing_key(missing: int) -> None:
    attrs = (
        st.ATTR_FIXED_TPM
        | st.ATTR_FIXED_PARENT
        | st.ATTR_SENSITIVE_DATA_ORIGIN
        | st.ATTR_USER_WITH_AUTH
        | st.ATTR_RESTRICTED
        | st.ATTR_SIGN_ENCRYPT
    )
    public = public_from_key(ec_key().public_key(), object_attributes=attrs & ~missing)
    with pytest.raises(EvidenceError) as err:
        AkPublic.from_public(public)
    assert reason(err) == "tpm-ak-not-restricted"
    assert st.ATTR_NAMES[missing] in err.value.message
    # ... and verify_quote checks again when handed such an AK directly
    bare = AkPublic(public.public_key(), public)
    with pytest.raises(EvidenceError) as err:
        verify_quote(b"", b"", bare, expected_extra_data=b"", pcr_values={})
    assert reason(err) == "tpm-ak-not-restricted"


def test_ak_with_decrypt_or_symmetric_is_refused() -> None:
    base = public_from_key(ec_key().public_key())
    both = public_from_key(ec_key().public_key(), object_attributes=base.object_attributes | st.ATTR_DECRYPT)
    with pytest.raises(EvidenceError, match="decrypt"):
        AkPublic.from_public(both)
    storage = public_from_key(ec_key().public_key(), symmetric=st.SymDef(st.ALG_AES, 128, st.ALG_CFB))
    with pytest.raises(EvidenceError, match="symmetric"):
        AkPublic.from_public(storage)


def test_sha1_signatures_and_sha1_name_algorithms_need_the_opt_in() -> None:
    ak = soft_ak(rsa_key(2048), scheme=st.Scheme(st.ALG_RSASSA, st.ALG_SHA1))
    attest, sig, pcrs = _quote(ak, sig_hash=st.ALG_SHA1)
    _expect("tpm-sha1-not-allowed", ak.ak, attest, sig, pcrs)
    verify_quote(attest, sig, ak.ak, expected_extra_data=NONCE, pcr_values=pcrs, allow_sha1=True)
    sha1_name = soft_ak(ec_key(), name_alg=st.ALG_SHA1)
    attest, sig, pcrs = _quote(sha1_name)
    _expect("tpm-sha1-not-allowed", sha1_name.ak, attest, sig, pcrs)
    verify_quote(attest, sig, sha1_name.ak, expected_extra_data=NONCE, pcr_values=pcrs, allow_sha1=True)


def test_bare_ak_from_pem() -> None:
    from cryptography.hazmat.primitives import serialization

    key = ec_key()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ak = soft_ak(key)
    attest, sig, pcrs = _quote(ak)
    bare = AkPublic.from_public_key(pem)
    result = verify_quote(attest, sig, bare, expected_extra_data=NONCE, pcr_values=pcrs, accept_bare_ak=True)
    assert not result.qualified_signer_verified
    with pytest.raises(EvidenceError) as err:
        AkPublic.from_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert reason(err) == "tpm-ak-invalid"
