"""The swtpm fixtures give a real, certified TPM and leave it clean between tests."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_ECC, TPM2_SE
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMT_SYM_DEF, TPMU_HA
from tpm2_pytss.utils import NVReadEK

from tests.fixtures.swtpm import (
    EK_CERT_NV_ECC_P384,
    EK_CERT_NV_RSA2048,
    EK_HANDLE_ECC_P384,
    EK_HANDLE_RSA2048,
    SwtpmInstance,
    loaded_handles,
)

pytestmark = pytest.mark.swtpm

TCG_KP_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")


def _pcr_sha256(ectx: ESAPI, index: int) -> bytes:
    _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{index}"))
    return bytes(digests[0])


@pytest.mark.parametrize(
    ("nv_index", "persistent_handle", "key_type"),
    [
        pytest.param(EK_CERT_NV_RSA2048, EK_HANDLE_RSA2048, rsa.RSAPublicKey, id="rsa2048"),
        pytest.param(EK_CERT_NV_ECC_P384, EK_HANDLE_ECC_P384, ec.EllipticCurvePublicKey, id="ecc-p384"),
    ],
)
def test_ek_certificate_chains_to_the_private_ca(
    swtpm: SwtpmInstance, tpm_esapi: ESAPI, nv_index: int, persistent_handle: int, key_type: type
) -> None:
    der = NVReadEK(tpm_esapi)(nv_index)
    ek_cert = x509.load_der_x509_certificate(der)
    root, issuer = (x509.load_pem_x509_certificate(p.read_bytes()) for p in swtpm.ek_ca_certs)

    ek_cert.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert ek_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [TCG_KP_EK_CERTIFICATE]
    )
    # The check can fail: the EK certificate is not issued by the root itself.
    with pytest.raises(ValueError, match="does not match"):
        ek_cert.verify_directly_issued_by(root)

    # The certificate is for this TPM's EK: same public key as the persistent EK object.
    ek_public, _, _ = tpm_esapi.read_public(tpm_esapi.tr_from_tpmpublic(persistent_handle))
    cert_key = ek_cert.public_key()
    assert isinstance(cert_key, key_type)
    spki = PublicFormat.SubjectPublicKeyInfo
    assert ek_public.to_der() == cert_key.public_bytes(Encoding.DER, spki)


def test_create_ecc_primary_and_flush(tpm_esapi: ESAPI) -> None:
    handle, public, *_ = tpm_esapi.create_primary(None, "ecc256:aes128cfb")
    try:
        assert public.publicArea.type == TPM2_ALG.ECC
        assert public.publicArea.parameters.eccDetail.curveID == TPM2_ECC.NIST_P256
        assert len(loaded_handles(tpm_esapi)["transient"]) == 1
    finally:
        tpm_esapi.flush_context(handle)
    assert loaded_handles(tpm_esapi)["transient"] == []


# The two tests below run in file order: the first leaks on purpose, the second checks, on a
# connection of its own (not through tpm_esapi, whose set-up could hide a teardown that failed),
# that tpm_esapi's teardown flushed everything.
_leaked: dict[str, list[int]] = {}


def test_leaks_handles_on_purpose(tpm_esapi: ESAPI) -> None:
    tpm_esapi.create_primary(None, "ecc256")
    tpm_esapi.create_primary(None, "ecc256")
    session = tpm_esapi.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
    )
    # A context-saved session lives in the "saved" range, which needs flushing too.
    tpm_esapi.context_save(session)
    tpm_esapi.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
    )
    leaked = loaded_handles(tpm_esapi)
    assert len(leaked["transient"]) == 2
    assert len(leaked["loaded_sessions"]) == 1
    assert len(leaked["saved_sessions"]) == 1
    _leaked.update(leaked)


def test_teardown_flushed_the_leaked_handles(swtpm: SwtpmInstance) -> None:
    with ESAPI(swtpm.tcti) as ectx:
        assert loaded_handles(ectx) == {"transient": [], "loaded_sessions": [], "saved_sessions": []}


def test_restart_resets_pcrs(swtpm: SwtpmInstance, tpm_esapi: ESAPI) -> None:
    pcr = 10  # not resettable by software at locality 0: only a TPM restart clears it
    before = _pcr_sha256(tpm_esapi, pcr)
    event = hashlib.sha256(os.urandom(16)).digest()
    tpm_esapi.pcr_extend(
        ESYS_TR.parse(f"PCR{pcr}"),
        TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=event))]),
    )
    extended = _pcr_sha256(tpm_esapi, pcr)
    assert extended == hashlib.sha256(before + event).digest()
    old_pid, old_generation = swtpm.pid, swtpm.generation
    # Leave an object loaded across the restart: the restart must drop it, and tpm_esapi's teardown
    # must cope with the ESYS_TR it holds for it being stale.
    tpm_esapi.create_primary(None, "ecc256")

    swtpm.restart()

    assert swtpm.pid != old_pid
    assert swtpm.generation == old_generation + 1
    # The swtpm TCTI reconnects, so the fixture's ESAPI still works; a new one does too.
    assert _pcr_sha256(tpm_esapi, pcr) == bytes(32)
    with ESAPI(swtpm.tcti) as fresh:
        assert _pcr_sha256(fresh, pcr) == bytes(32)
        assert loaded_handles(fresh)["transient"] == []
        # Persistent state survives: the EK certificate is still there.
        x509.load_der_x509_certificate(NVReadEK(fresh)(EK_CERT_NV_RSA2048))
