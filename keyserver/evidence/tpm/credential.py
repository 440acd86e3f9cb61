"""TPM2_MakeCredential in software, for RSA and ECC endorsement keys.

Credential activation binds an AK to an EK: the verifier encrypts a secret so that only the TPM holding
the EK's private key can recover it (TPM2_ActivateCredential), and the TPM releases it only if the object
whose Name the credential was bound to - the AK - is loaded in that same TPM. Reference: *TPM 2.0 Library
Part 1* §24 "Credential Protection" and §B.10.4/§C.6.4 (seed for RSA/ECC), §11.4.10 (KDFa, KDFe);
*Part 3* §12.6 TPM2_MakeCredential.

Protocol (the EK's nameAlg is H, its symmetric definition gives the AES key size):

1. seed: RSA EK - |H| random bytes, sent RSA-OAEP(H, label "IDENTITY\\0") encrypted (Part 1 §B.10.4);
   ECC EK - one-pass ECDH with an ephemeral key on the EK's curve, seed = KDFe(H, Z, "IDENTITY",
   ephemeral.x, EK.x, 8·|H|), the ephemeral public point is sent (Part 1 §C.6.4).
2. symKey = KDFa(H, seed, "STORAGE", Name(AK), "", AES key bits); encIdentity = AES-CFB(symKey, IV=0)
   over the TPM2B_DIGEST credential (its 2-byte size included) (Part 1 §24.4).
3. HMACkey = KDFa(H, seed, "INTEGRITY", "", "", 8·|H|); outerHMAC = HMAC_H(HMACkey, encIdentity ‖ Name(AK))
   (Part 1 §24.5).
4. credentialBlob (TPM2B_ID_OBJECT) = TPM2B(outerHMAC) ‖ encIdentity; secret = TPM2B_ENCRYPTED_SECRET.

AES-CFB comes from ``cryptography.hazmat.decrepit`` (its home since cryptography 47; the old location
warns and will go away). Proven against swtpm's TPM2_ActivateCredential for RSA-2048, ECC P-256 and P-384
EKs (tests/tpm/test_swtpm.py).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm.structures import (
    ALG_AES,
    ALG_CFB,
    ATTR_DECRYPT,
    ATTR_RESTRICTED,
    ATTR_SIGN_ENCRYPT,
    CURVES,
    EccParms,
    HashAlg,
    TpmtPublic,
    hash_alg,
    tpm2b,
)

IDENTITY_LABEL = b"IDENTITY\x00"
"""Label for the seed: OAEP label (Part 1 §B.10.4) and KDFe "Use" (Part 1 §C.6.4), NUL included."""


def kdfa(h: HashAlg, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (Part 1 §11.4.10.2): SP 800-108 counter mode with HMAC-H,
    K(i) = HMAC(key, [i]32 ‖ Label ‖ 00 ‖ ContextU ‖ ContextV ‖ [bits]32)."""
    if bits <= 0:
        raise ValueError("KDFa needs a positive output size")
    if not label.endswith(b"\x00"):
        label += b"\x00"
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        msg = counter.to_bytes(4, "big") + label + context_u + context_v + bits.to_bytes(4, "big")
        out += hmac.new(key, msg, h.hashlib_name or "").digest()
        counter += 1
    out = out[: (bits + 7) // 8]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


def kdfe(h: HashAlg, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (Part 1 §11.4.10.3): SP 800-56A concatenation KDF,
    K(i) = H([i]32 ‖ Z ‖ Use ‖ PartyUInfo ‖ PartyVInfo), Use with its terminating NUL."""
    if bits <= 0:
        raise ValueError("KDFe needs a positive output size")
    if not label.endswith(b"\x00"):
        label += b"\x00"
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += h.digest(counter.to_bytes(4, "big") + z + label + party_u + party_v)
        counter += 1
    out = out[: (bits + 7) // 8]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


@dataclass(frozen=True)
class MadeCredential:
    """The two TPM2_ActivateCredential inputs, as TPM wire structures (with their 2-byte sizes)."""

    credential_blob: bytes
    """TPM2B_ID_OBJECT."""
    encrypted_secret: bytes
    """TPM2B_ENCRYPTED_SECRET."""

    @property
    def id_object(self) -> bytes:
        """The TPM2B_ID_OBJECT's buffer (what ``TPM2B_ID_OBJECT(credential=...)`` takes)."""
        return self.credential_blob[2:]

    @property
    def secret(self) -> bytes:
        """The TPM2B_ENCRYPTED_SECRET's buffer (what ``TPM2B_ENCRYPTED_SECRET(secret=...)`` takes)."""
        return self.encrypted_secret[2:]


def _check_ek(ek: TpmtPublic) -> int:
    """Return the EK's AES key size; ``tpm-ek-invalid`` unless it is a restricted decryption (storage) key
    with AES-CFB, which is what TPM2_ActivateCredential requires of its keyHandle (Part 3 §12.5)."""
    attrs = ek.object_attributes
    if not (attrs & ATTR_RESTRICTED and attrs & ATTR_DECRYPT) or attrs & ATTR_SIGN_ENCRYPT:
        raise EvidenceError(
            "tpm-ek-invalid",
            "the EK is not a restricted decryption key (restricted, decrypt, not sign): "
            "TPM2_ActivateCredential cannot use it. Use the TCG EK template's public area.",
        )
    sym = ek.parameters.symmetric
    if sym.algorithm != ALG_AES or sym.mode != ALG_CFB:
        raise EvidenceError("tpm-ek-invalid", "the EK's symmetric algorithm is not AES-CFB")
    return sym.key_bits


def make_credential(
    ek: TpmtPublic,
    credential: bytes,
    object_name: bytes,
) -> MadeCredential:
    """TPM2_MakeCredential: protect ``credential`` for the TPM owning ``ek``, bound to ``object_name``
    (the AK's Name). Raises ``tpm-ek-invalid`` for an EK that cannot activate credentials and ValueError
    for a credential or Name of the wrong size (caller bugs, not evidence)."""
    aes_bits = _check_ek(ek)
    h = hash_alg(ek.name_alg, "EK nameAlg")
    if h.hashlib_name is None:
        raise EvidenceError("tpm-unsupported-algorithm", f"EK nameAlg {h.name} is not supported")
    # Part 3 §12.6.1: the credential is a TPM2B_DIGEST no larger than the EK nameAlg's digest.
    if not 1 <= len(credential) <= h.size:
        raise ValueError(f"the credential must be 1..{h.size} bytes for a {h.name} EK")
    if (
        len(object_name) < 2
        or len(object_name) != 2 + hash_alg(int.from_bytes(object_name[:2], "big"), "object Name").size
    ):
        raise ValueError("object_name is not a TPM Name (nameAlg ‖ digest)")

    key = ek.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        seed = os.urandom(h.size)
        oaep = padding.OAEP(mgf=padding.MGF1(h.crypto()), algorithm=h.crypto(), label=IDENTITY_LABEL)
        secret = key.encrypt(seed, oaep)
    else:
        assert isinstance(ek.parameters, EccParms)
        size = CURVES[ek.parameters.curve_id][1]
        ephemeral = ec.generate_private_key(key.curve)
        z = ephemeral.exchange(ec.ECDH(), key)  # the x coordinate, curve size (Part 1 §C.6.2)
        qe = ephemeral.public_key().public_numbers()
        qe_x = qe.x.to_bytes(size, "big")
        qs_x = key.public_numbers().x.to_bytes(size, "big")
        seed = kdfe(h, z, IDENTITY_LABEL, qe_x, qs_x, 8 * h.size)
        secret = tpm2b(qe_x) + tpm2b(qe.y.to_bytes(size, "big"))  # TPMS_ECC_POINT

    sym_key = kdfa(h, seed, b"STORAGE", object_name, b"", aes_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(tpm2b(credential)) + encryptor.finalize()
    hmac_key = kdfa(h, seed, b"INTEGRITY", b"", b"", 8 * h.size)
    outer_hmac = hmac.new(hmac_key, enc_identity + object_name, h.hashlib_name).digest()
    return MadeCredential(tpm2b(tpm2b(outer_hmac) + enc_identity), tpm2b(secret))
