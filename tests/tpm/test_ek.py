"""EK/AK certificate verification: the real GCE certificates, and synthetic EK certificates with the
oddities real ones have (empty subject + critical SAN, negative serial, ...)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm.ek import (
    MAX_INTERMEDIATES,
    PublicKey,
    TpmCertificate,
    load_ca_certificates,
    verify_ak_certificate,
    verify_ek_certificate,
)
from keyserver.evidence.tpm.structures import TpmtPublic

from .helpers import (
    GCE_ROOTS,
    NOW,
    ec_key,
    ek_ca,
    ek_cert,
    public_from_key,
    rsa_key,
    soft_ek,
    vec,
    with_negative_serial,
)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def verify(
    data: bytes,
    *,
    now: datetime = NOW,
    ek_public: TpmtPublic | PublicKey | None = None,
    roots: list[x509.Certificate | bytes] | None = None,
    intermediates: list[x509.Certificate | bytes] | None = None,
) -> TpmCertificate:
    """verify_ek_certificate with the throw-away CA as default trust."""
    return verify_ek_certificate(
        data,
        roots=[ek_ca().root] if roots is None else roots,
        intermediates=[ek_ca().issuer] if intermediates is None else intermediates,
        now=now,
        ek_public=ek_public,
    )


GCE_PKI = {
    "uca": (["tpm_ek_root_1.cer"], ["tpm_ek_intermediate_3.crt"]),
    "pca": (["gcp_ek_ak_ca_root.crt"], ["gcp_ek_ak_ca_intermediate_v3.crt"]),
}


@pytest.mark.parametrize("pki", sorted(GCE_PKI))
@pytest.mark.parametrize("kind", ["rsa_enc", "rsa_sign", "ecc_enc", "ecc_sign"])
def test_gce_ek_and_ak_certificates(pki: str, kind: str) -> None:
    """go-tpm-tools TestValidateAKGCEAndGetGCEInstanceInfo: uca_* chain to root 1 + intermediate 3,
    pca_* to the CAS root + intermediate v3; and not across."""
    cert = vec(f"tpm-quote/gce-ek-ak-certs/{pki}_tpm_{kind}_cert.pem")
    roots, inters = GCE_PKI[pki]
    check = verify_ek_certificate if kind.endswith("enc") else verify_ak_certificate
    result = check(
        cert,
        roots=[(GCE_ROOTS / r).read_bytes() for r in roots],
        intermediates=[(GCE_ROOTS / i).read_bytes() for i in inters],
        now=NOW,
    )
    assert len(result.chain) == 3
    other = GCE_PKI["pca" if pki == "uca" else "uca"]
    with pytest.raises(EvidenceError) as err:
        check(
            cert,
            roots=[(GCE_ROOTS / r).read_bytes() for r in other[0]],
            intermediates=[(GCE_ROOTS / i).read_bytes() for i in other[1]],
            now=NOW,
        )
    assert err.value.reason == "tpm-cert-chain-invalid"


@pytest.mark.parametrize("key", ["ec", "rsa"])
def test_tcg_style_ek_certificate(key: str) -> None:
    private = ec_key("secp384r1", 3) if key == "ec" else rsa_key(2048, 3)
    cert = ek_cert(private.public_key())
    assert cert.subject == x509.Name([])
    result = verify(_der(cert), now=NOW, ek_public=soft_ek(private))
    assert (result.tpm_manufacturer, result.tpm_model, result.tpm_version) == (
        "id:54455354",
        "testtpm",
        "id:00010002",
    )
    assert [c.subject for c in result.chain[1:]] == [ek_ca().issuer.subject, ek_ca().root.subject]
    assert result.notes == ()
    # PEM is accepted too
    verify(cert.public_bytes(serialization.Encoding.PEM))


def test_negative_serial_is_tolerated_and_noted() -> None:
    private = ec_key("secp384r1", 3)
    der = with_negative_serial(ek_cert(private.public_key()))
    result = verify(der, now=NOW, ek_public=private.public_key())
    with pytest.warns(CryptographyDeprecationWarning, match="serial"):
        assert result.certificate.serial_number < 0
    assert any("serial" in n for n in result.notes)
    # ...which cryptography's own policy verifier would refuse: the reason the leaf is checked by hand.
    builder = verification.PolicyBuilder().store(verification.Store([ek_ca().root])).time(NOW)
    builder = builder.extension_policies(
        ee_policy=verification.ExtensionPolicy.permit_all(),
        ca_policy=verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
            x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, None
        ),
    )
    with pytest.raises(verification.VerificationError, match="serial"):
        builder.build_client_verifier().verify(result.certificate, [ek_ca().issuer])


def test_time_window() -> None:
    private = ec_key()
    cert = ek_cert(
        private.public_key(), not_before=NOW - timedelta(days=10), not_after=NOW + timedelta(days=10)
    )
    verify(_der(cert))
    with pytest.raises(EvidenceError) as err:
        verify(_der(cert), now=NOW + timedelta(days=11))
    assert err.value.reason == "tpm-cert-expired"
    with pytest.raises(EvidenceError) as err:
        verify(_der(cert), now=NOW - timedelta(days=11))
    assert err.value.reason == "tpm-cert-not-yet-valid"


def _reject(
    code: str,
    data: bytes,
    *,
    now: datetime = NOW,
    ek_public: TpmtPublic | None = None,
    roots: list[x509.Certificate | bytes] | None = None,
    intermediates: list[x509.Certificate | bytes] | None = None,
) -> None:
    with pytest.raises(EvidenceError) as err:
        verify(data, now=now, ek_public=ek_public, roots=roots, intermediates=intermediates)
    assert err.value.reason == code, err.value.message


def test_rejections() -> None:
    private = ec_key()
    good = ek_cert(private.public_key())
    # another key than the EK presented
    _reject("tpm-cert-key-mismatch", _der(good), ek_public=public_from_key(ec_key(which=4).public_key()))
    # an EKU without tcg-kp-EKCertificate; no EKU at all is fine
    _reject(
        "tpm-cert-invalid",
        _der(ek_cert(private.public_key(), eku=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])),
    )
    verify(_der(ek_cert(private.public_key(), eku=None)))
    # a critical extension nobody here understands
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00")
    _reject("tpm-cert-unsupported-extension", _der(ek_cert(private.public_key(), extra=[(unknown, True)])))
    verify(_der(ek_cert(private.public_key(), extra=[(unknown, False)])))
    # a flipped signature byte, an unknown issuer, no CA at all
    der = bytearray(_der(good))
    der[-5] ^= 0x01
    _reject("tpm-cert-chain-invalid", bytes(der))
    _reject("tpm-cert-chain-invalid", _der(good), roots=[ek_ca().root], intermediates=[])
    _reject("tpm-cert-chain-invalid", _der(good), roots=[], intermediates=[ek_ca().issuer])
    # an unrelated root
    _reject("tpm-cert-chain-invalid", _der(good), roots=[(GCE_ROOTS / "tpm_ek_root_1.cer").read_bytes()])
    # a configured CA is a trust anchor whether self-signed or not: the issuing CA alone suffices
    assert len(verify_ek_certificate(_der(good), now=NOW, roots=[ek_ca().issuer]).chain) == 2
    # a CA certificate posing as the EK certificate
    _reject("tpm-cert-invalid", _der(ek_ca().issuer))
    # not DER: garbage, and a BER (non-minimal length) re-encoding of a valid certificate
    _reject("tpm-cert-unparseable", b"\x30\x03\x02\x01\x01")
    raw = _der(good)
    assert raw[1] == 0x82
    ber = b"\x30\x83\x00" + raw[2:]
    _reject("tpm-cert-unparseable", ber)


def test_expired_intermediate_breaks_the_chain() -> None:
    private = ec_key()
    cert = ek_cert(private.public_key(), not_after=NOW + timedelta(days=365 * 30))
    _reject("tpm-cert-chain-invalid", _der(cert), now=ek_ca().issuer.not_valid_after_utc + timedelta(days=1))


def test_ca_bundle_loader() -> None:
    pem = ek_ca().root.public_bytes(serialization.Encoding.PEM) + ek_ca().issuer.public_bytes(
        serialization.Encoding.PEM
    )
    assert len(load_ca_certificates(pem)) == 2
    assert len(load_ca_certificates((GCE_ROOTS / "tpm_ek_root_1.cer").read_bytes())) == 1
    with pytest.raises(EvidenceError):
        load_ca_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# --- a crafted set of intermediates: bounded before any chain is built -----------------------------------


def _same_name_cas(count: int) -> list[x509.Certificate]:
    """``count`` distinct CA certificates with one subject, issuer and key: each is a candidate issuer of a
    leaf that names it, and each candidate's chain was built over all of them (found by review: 2,000 of
    them made one unauthenticated enrolment take ~90 s of the event loop)."""
    from .helpers import _ca_cert, _name

    key = ec_key("secp256r1", 7)
    return [_ca_cert(_name("X"), _name("X"), key, key) for _ in range(count)]


def test_more_intermediates_than_a_chain_needs_are_refused_before_any_is_tried() -> None:
    cas = _same_name_cas(MAX_INTERMEDIATES + 1)
    leaf = ek_cert(rsa_key().public_key())
    with pytest.raises(EvidenceError, match=f"at most {MAX_INTERMEDIATES} are accepted") as refused:
        verify(_der(leaf), intermediates=[ek_ca().issuer, *cas[:MAX_INTERMEDIATES]])
    assert refused.value.reason == "tpm-cert-chain-invalid"


def test_repeated_intermediates_count_once() -> None:
    """The same certificate sent many times is one intermediate: the chain verifies."""
    leaf = ek_cert(rsa_key().public_key())
    verified = verify(_der(leaf), intermediates=[ek_ca().issuer] * (10 * MAX_INTERMEDIATES))
    assert len(verified.chain) == 3


def test_the_enrolment_route_bounds_the_list_before_decoding_it() -> None:
    import msgspec

    from keyserver.api.tpm import CertifiedAkCreate, EnrolmentCreate

    many = ["AA=="] * (MAX_INTERMEDIATES + 1)
    with pytest.raises(msgspec.ValidationError, match="length"):
        msgspec.json.decode(
            msgspec.json.encode({"ek_public": "AA==", "ak_public": "AA==", "ek_intermediates": many}),
            type=EnrolmentCreate,
        )
    with pytest.raises(msgspec.ValidationError, match="length"):
        msgspec.json.decode(
            msgspec.json.encode({"ak_public": "AA==", "ak_certificate": "AA==", "intermediates": many}),
            type=CertifiedAkCreate,
        )
