"""make_credential against a software TPM2_ActivateCredential and against tpm2-pytss' own implementation.

The real-TPM round trip (swtpm's ActivateCredential) is in test_swtpm.py."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as s

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm import structures as st
from keyserver.evidence.tpm.credential import kdfa, kdfe, make_credential

from .helpers import PrivateKey, activate_credential, ec_key, rsa_key, soft_ak, soft_ek

EKS: dict[str, tuple[Callable[[], PrivateKey], int, int]] = {
    "rsa2048-sha256-aes128": (lambda: rsa_key(2048, 5), st.ALG_SHA256, 128),
    "ecc-p256-sha256-aes128": (lambda: ec_key("secp256r1", 5), st.ALG_SHA256, 128),
    "ecc-p384-sha384-aes256": (lambda: ec_key("secp384r1", 5), st.ALG_SHA384, 256),
}


def _ek(name: str) -> tuple[PrivateKey, st.TpmtPublic]:
    factory, name_alg, bits = EKS[name]
    private = factory()
    return private, soft_ek(private, name_alg=name_alg, aes_bits=bits)


@pytest.mark.parametrize("name", sorted(EKS))
def test_round_trip(name: str) -> None:
    private, ek = _ek(name)
    ak_name = soft_ak(ec_key()).public.name()
    secret = os.urandom(st.HASH_ALGS[ek.name_alg].size)
    made = make_credential(ek, secret, ak_name)
    assert made.credential_blob[:2] == len(made.id_object).to_bytes(2, "big")
    assert made.encrypted_secret[:2] == len(made.secret).to_bytes(2, "big")
    assert activate_credential(private, ek, made.credential_blob, made.encrypted_secret, ak_name) == secret
    # bound to the AK's Name: another Name fails the integrity check (TPM_RC_INTEGRITY on a TPM)
    other = soft_ak(ec_key(which=2)).public.name()
    with pytest.raises(ValueError, match="integrity"):
        activate_credential(private, ek, made.credential_blob, made.encrypted_secret, other)
    # and so does any change to the blob
    tampered = bytearray(made.credential_blob)
    tampered[-1] ^= 1
    with pytest.raises(ValueError, match="integrity"):
        activate_credential(private, ek, bytes(tampered), made.encrypted_secret, ak_name)


@pytest.mark.parametrize("name", sorted(EKS))
def test_tpm2_pytss_make_credential_activates_with_our_model(name: str) -> None:
    """An independent MakeCredential (tpm2-pytss) is activated by our software model of the TPM side,
    so the model the round trip above relies on is the TPM's, not merely our own inverse."""
    from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC

    private, ek = _ek(name)
    ak_name = soft_ak(ec_key()).public.name()
    public, _ = TPM2B_PUBLIC.unmarshal(st.marshal_tpm2b_public(ek))
    blob, secret = make_credential_pytss(public, b"hello credential", TPM2B_NAME(ak_name))
    assert activate_credential(private, ek, blob, secret, ak_name) == b"hello credential"


def make_credential_pytss(public: object, credential: bytes, name: object) -> tuple[bytes, bytes]:
    from tpm2_pytss.utils import make_credential as pytss_make_credential

    id_object, encrypted = pytss_make_credential(public, credential, name)
    return bytes(id_object.marshal()), bytes(encrypted.marshal())


@pytest.mark.parametrize("alg", [st.ALG_SHA1, st.ALG_SHA256, st.ALG_SHA384])
@settings(max_examples=30, deadline=None)
@given(
    key=s.binary(min_size=1, max_size=64),
    u=s.binary(max_size=40),
    bits=s.integers(1, 75).map(lambda n: 8 * n),
)
def test_kdfa_matches_tpm2_pytss(alg: int, key: bytes, u: bytes, bits: int) -> None:
    from tpm2_pytss.internal.crypto import _kdfa

    h = st.HASH_ALGS[alg]
    assert kdfa(h, key, b"STORAGE", u, b"v", bits) == _kdfa(alg, key, b"STORAGE", u, b"v", bits)


def test_kdfe_shape() -> None:
    h = st.HASH_ALGS[st.ALG_SHA256]
    out = kdfe(h, b"z" * 32, b"IDENTITY", b"u" * 32, b"v" * 32, 256)
    assert out == h.digest(b"\x00\x00\x00\x01" + b"z" * 32 + b"IDENTITY\x00" + b"u" * 32 + b"v" * 32)
    assert len(kdfe(h, b"z", b"IDENTITY\x00", b"", b"", 300)) == 38


def test_invalid_inputs() -> None:
    _, ek = _ek("ecc-p256-sha256-aes128")
    ak_name = soft_ak(ec_key()).public.name()
    with pytest.raises(ValueError, match="credential"):
        make_credential(ek, bytes(33), ak_name)
    with pytest.raises(ValueError, match="credential"):
        make_credential(ek, b"", ak_name)
    with pytest.raises(ValueError, match="Name"):
        make_credential(ek, b"x", ak_name[:-1])
    signing = soft_ak(ec_key()).public
    with pytest.raises(EvidenceError) as err:
        make_credential(signing, b"x", ak_name)
    assert err.value.reason == "tpm-ek-invalid"
