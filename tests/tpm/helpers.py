"""Shared helpers for the TPM tests: vector paths and loaders, software AKs that sign synthetic quotes,
a software TPM2_ActivateCredential, a throw-away EK CA, and the mutation recipes of mutations.json.

Plain functions (no fixtures) so that the pure tests also run with ``--noconftest``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.x509.oid import NameOID

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm import structures as st
from keyserver.evidence.tpm.credential import IDENTITY_LABEL, kdfa, kdfe
from keyserver.evidence.tpm.quote import AkPublic
from tests.conftest import VECTORS as VECTORS

GCE = VECTORS / "tpm-quote" / "gce-cos85" / "extracted"
GCE_ROOTS = VECTORS / "roots" / "gce"
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def vec(rel: str) -> bytes:
    return (VECTORS / rel).read_bytes()


def vjson(rel: str) -> Any:
    return json.loads(vec(rel))


@functools.cache
def mutations() -> dict[str, Any]:
    data: dict[str, Any] = vjson("mutations.json")
    return data


def apply_edit(data: bytes, offset: int | str, op: str, value: int | str) -> bytes:
    """Apply one mutations.json byte edit (set/xor/add) to a copy."""
    off = int(offset, 0) if isinstance(offset, str) else offset
    val = int(value, 0) if isinstance(value, str) else value
    out = bytearray(data)
    if op == "set":
        out[off] = val
    elif op == "xor":
        out[off] ^= val
    elif op == "add":
        out[off] = (out[off] + val) % 256
    else:
        raise ValueError(op)
    return bytes(out)


# --- GCE COS-85 vectors ---------------------------------------------------------------------------------

GCE_QUOTES = ("quote0_sha1", "quote1_sha256", "quote2_sha384")
GCE_NONCES = {"no-nonce": b"", "nonce9009": bytes.fromhex("9009")}


def gce_pcrs(bank: str) -> dict[str, dict[int, bytes]]:
    raw = json.loads((GCE / "common" / f"pcrs_{bank}.json").read_text())
    return {bank: {int(i): bytes.fromhex(v) for i, v in raw.items()}}


def gce_quote(attestation: str, quote: str) -> tuple[bytes, bytes]:
    base = GCE / attestation / quote
    return base.with_suffix(".attest").read_bytes(), base.with_suffix(".sig").read_bytes()


def gce_ak_public() -> bytes:
    return (GCE / "common" / "ak_pub.tpmt_public").read_bytes()


def gce_ak() -> AkPublic:
    # The GCE AK is a primary key of the endorsement hierarchy (its qualified Name says so).
    return AkPublic.from_tpmt_public(
        gce_ak_public(), parent_qualified_name=st.hierarchy_name(st.RH_ENDORSEMENT)
    )


def windows_vector() -> dict[str, Any]:
    data: dict[str, Any] = vjson("tpm-quote/go-attestation-windows-gce/windows_gcp_shielded_vm.json")
    return data


def windows_pcrs() -> dict[str, dict[int, bytes]]:
    log = windows_vector()["Log"]
    # DigestAlg uses Go's crypto.Hash numbering: 3 = SHA-1.
    return {"sha1": {p["Index"]: base64.b64decode(p["Digest"]) for p in log["PCRs"] if p["DigestAlg"] == 3}}


def azure_quote(kind: str) -> tuple[dict[str, Any], rsa.RSAPublicKey]:
    """``kind`` is ``azure-snp-vtpm`` or ``azure-tdx-vtpm``: the quote JSON and the HCLAkPub from the HCL
    report's variable data (JSON at 0x4D4, the runtime-claims layout in MANIFEST §6)."""
    quote: dict[str, Any] = vjson(f"other/{kind}/tpm-quote-v1.json")
    hcl = vec(f"other/{kind}/hcl-report.bin")
    claims, _ = json.JSONDecoder().raw_decode(hcl[0x4D4:].decode("latin-1"))
    jwk = next(k for k in claims["keys"] if k["kid"] == "HCLAkPub")

    def b64u(text: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    return quote, rsa.RSAPublicNumbers(b64u(jwk["e"]), b64u(jwk["n"])).public_key()


# --- software AKs and synthetic quotes ------------------------------------------------------------------

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def rsa_key(bits: int = 2048, which: int = 0) -> rsa.RSAPrivateKey:
    del which  # distinct cache entries for distinct keys
    return rsa.generate_private_key(65537, bits)


@functools.cache
def ec_key(curve: str = "secp256r1", which: int = 0) -> ec.EllipticCurvePrivateKey:
    del which
    return ec.generate_private_key({"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}[curve])


@dataclass(frozen=True)
class SoftAk:
    """A software key posing as an AK: its private key and the TPMT_PUBLIC a TPM would report."""

    private: PrivateKey
    public: st.TpmtPublic

    @property
    def ak(self) -> AkPublic:
        return AkPublic.from_public(self.public, parent_qualified_name=st.hierarchy_name(st.RH_OWNER))

    @property
    def qualified_name(self) -> bytes:
        return st.qualified_name(st.hierarchy_name(st.RH_OWNER), self.public.name(), self.public.name_alg)


def soft_ak(
    private: PrivateKey,
    *,
    scheme: st.Scheme | None = None,
    attributes: int | None = None,
    name_alg: int = st.ALG_SHA256,
) -> SoftAk:
    kwargs: dict[str, Any] = {"scheme": scheme, "name_alg": name_alg}
    if attributes is not None:
        kwargs["object_attributes"] = attributes
    return SoftAk(private, public_from_key(private.public_key(), **kwargs))


def sign(private: PrivateKey, message: bytes, sig_alg: int, hash_alg: int) -> bytes:
    """A TPMT_SIGNATURE over ``message`` as a TPM would make it."""
    h = st.hash_alg(hash_alg, "test").crypto()
    if isinstance(private, rsa.RSAPrivateKey):
        if sig_alg == st.ALG_RSASSA:
            raw = private.sign(message, padding.PKCS1v15(), h)
        else:
            raw = private.sign(message, padding.PSS(padding.MGF1(h), padding.PSS.MAX_LENGTH), h)
        return st.Signature(sig_alg, hash_alg, rsa=raw).marshal()
    r, s = decode_dss_signature(private.sign(message, ec.ECDSA(h)))
    size = (private.curve.key_size + 7) // 8
    return st.Signature(
        st.ALG_ECDSA, hash_alg, r=r.to_bytes(size, "big"), s=s.to_bytes(size, "big")
    ).marshal()


def pcr_value(bank: str, index: int, salt: bytes = b"") -> bytes:
    h = st.bank(bank)
    return h.digest(f"pcr {bank}:{index}".encode() + salt)


def make_pcrs(selection: Mapping[str, Sequence[int]], salt: bytes = b"") -> dict[str, dict[int, bytes]]:
    return {b: {i: pcr_value(b, i, salt) for i in idx} for b, idx in selection.items()}


def make_attest(
    pcrs: Mapping[str, Mapping[int, bytes]],
    *,
    extra_data: bytes,
    qualified_signer: bytes,
    digest_hash: int = st.ALG_SHA256,
    order: Sequence[str] | None = None,
    magic: int = st.TPM_GENERATED_VALUE,
    att_type: int = st.ST_ATTEST_QUOTE,
    clock: st.ClockInfo | None = None,
) -> bytes:
    """A TPMS_ATTEST for a quote over ``pcrs`` (banks in ``order``), as TPM2_Quote builds it."""
    banks = list(order or pcrs)
    selection = tuple(st.PcrSelection(st.bank(b).alg_id, tuple(sorted(pcrs[b]))) for b in banks)
    h = st.hash_alg(digest_hash, "test").new()
    for sel in selection:
        for i in sel.pcrs:
            h.update(pcrs[sel.bank.name][i])
    return st.Attest(
        magic=magic,
        type=att_type,
        qualified_signer=qualified_signer,
        extra_data=extra_data,
        clock_info=clock or st.ClockInfo(123456789, 7, 2, True),
        firmware_version=0x2019102300163636,
        attested=st.QuoteInfo(selection, h.digest()),
    ).marshal()


# --- software TPM2_ActivateCredential (the TPM side of Part 1 §24) --------------------------------------


def activate_credential(
    ek_private: PrivateKey,
    ek_public: st.TpmtPublic,
    credential_blob: bytes,
    encrypted_secret: bytes,
    name: bytes,
) -> bytes:
    """What TPM2_ActivateCredential does, in software: recover the seed with the EK's private key, check
    the outer HMAC over encIdentity ‖ Name, decrypt. Raises ValueError on an integrity failure."""
    h = st.hash_alg(ek_public.name_alg, "EK nameAlg")
    secret = st.Reader(encrypted_secret, "TPM2B_ENCRYPTED_SECRET").tpm2b(1024, "secret")
    if isinstance(ek_private, rsa.RSAPrivateKey):
        oaep = padding.OAEP(mgf=padding.MGF1(h.crypto()), algorithm=h.crypto(), label=IDENTITY_LABEL)
        seed = ek_private.decrypt(secret, oaep)
    else:
        r = st.Reader(secret, "TPMS_ECC_POINT")
        x, y = r.tpm2b(66, "x"), r.tpm2b(66, "y")
        r.done()
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ek_private.curve
        )
        z = ek_private.exchange(ec.ECDH(), peer.public_key())
        size = (ek_private.curve.key_size + 7) // 8
        qs_x = ek_private.public_key().public_numbers().x.to_bytes(size, "big")
        seed = kdfe(h, z, IDENTITY_LABEL, x, qs_x, 8 * h.size)
    blob = st.Reader(credential_blob, "TPM2B_ID_OBJECT").tpm2b(1024, "idObject")
    r = st.Reader(blob, "TPMS_ID_OBJECT")
    integrity = r.tpm2b(64, "integrityHMAC")
    enc_identity = blob[r.pos :]
    hmac_key = kdfa(h, seed, b"INTEGRITY", b"", b"", 8 * h.size)
    expected = hmac.new(hmac_key, enc_identity + name, h.hashlib_name or "").digest()
    if not hmac.compare_digest(expected, integrity):
        raise ValueError("integrity check failed")
    sym_key = kdfa(h, seed, b"STORAGE", name, b"", ek_public.parameters.symmetric.key_bits)
    dec = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).decryptor()
    plain = dec.update(enc_identity) + dec.finalize()
    out = st.Reader(plain, "TPM2B_DIGEST")
    value = out.tpm2b(64, "credential")
    out.done()
    return value


EK_ATTRIBUTES = (
    st.ATTR_FIXED_TPM
    | st.ATTR_FIXED_PARENT
    | st.ATTR_SENSITIVE_DATA_ORIGIN
    | st.ATTR_ADMIN_WITH_POLICY
    | st.ATTR_RESTRICTED
    | st.ATTR_DECRYPT
)
"""TCG EK Credential Profile template L-1/L-2 attributes."""


def soft_ek(private: PrivateKey, *, name_alg: int = st.ALG_SHA256, aes_bits: int = 128) -> st.TpmtPublic:
    """The TPMT_PUBLIC of an EK-template key with ``private``'s public part."""
    return public_from_key(
        private.public_key(),
        object_attributes=EK_ATTRIBUTES,
        name_alg=name_alg,
        scheme=st.Scheme(),
        symmetric=st.SymDef(st.ALG_AES, aes_bits, st.ALG_CFB),
        auth_policy=bytes(st.HASH_ALGS[name_alg].size),
    )


# --- a throw-away EK CA --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EkCa:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    issuer: x509.Certificate
    issuer_key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "T")]
    )


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    eku: bool = True,
) -> x509.Certificate:
    now = NOW
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=365))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier("2.23.133.8.1")]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


@functools.cache
def ek_ca() -> EkCa:
    root_key = ec.generate_private_key(ec.SECP384R1())
    issuer_key = ec.generate_private_key(ec.SECP384R1())
    root = _ca_cert(_name("Test EK Root"), _name("Test EK Root"), root_key, root_key)
    issuer = _ca_cert(_name("Test EK Issuer"), _name("Test EK Root"), issuer_key, root_key)
    return EkCa(root, root_key, issuer, issuer_key)


TPM_SAN = x509.SubjectAlternativeName(
    [
        x509.DirectoryName(
            x509.Name(
                [
                    x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:54455354"),
                    x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "testtpm"),
                    x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:00010002"),
                ]
            )
        )
    ]
)


def ek_cert(
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = (x509.ObjectIdentifier("2.23.133.8.1"),),
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ca: EkCa | None = None,
) -> x509.Certificate:
    """An EK certificate the TCG way: empty subject, critical SAN with the TPM attributes."""
    ca = ca or ek_ca()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=30))
        .not_valid_after(not_after or NOW + timedelta(days=3650))
        .add_extension(TPM_SAN, critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.issuer_key.public_key()), critical=False
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(ca.issuer_key, hashes.SHA256())


def _der_tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = (
        bytes([n])
        if n < 128
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + body


def _der_children(body: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(body):
        start = pos
        length = body[pos + 1]
        pos += 2
        if length & 0x80:
            k = length & 0x7F
            length = int.from_bytes(body[pos : pos + k], "big")
            pos += k
        pos += length
        out.append(body[start:pos])
    return out


def with_negative_serial(cert: x509.Certificate, ca: EkCa | None = None) -> bytes:
    """``cert`` re-issued with a negative serial number: the builder refuses one, so the TBS is edited and
    re-signed by hand, as a vendor CA that produced such a certificate would have."""
    ca = ca or ek_ca()
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big")
    old = _der_tlv(0x02, serial)
    new = _der_tlv(0x02, b"\x8f" + serial[1:])
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(old) == 1
    tbs = tbs.replace(old, new)
    der = cert.public_bytes(serialization.Encoding.DER)
    outer = _der_children(der[2 + (der[1] & 0x7F if der[1] & 0x80 else 0) :])
    signature = ca.issuer_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _der_tlv(0x30, tbs + outer[1] + _der_tlv(0x03, b"\x00" + signature))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def public_from_key(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    object_attributes: int = (
        st.ATTR_FIXED_TPM
        | st.ATTR_FIXED_PARENT
        | st.ATTR_SENSITIVE_DATA_ORIGIN
        | st.ATTR_USER_WITH_AUTH
        | st.ATTR_RESTRICTED
        | st.ATTR_SIGN_ENCRYPT
    ),
    name_alg: int = st.ALG_SHA256,
    scheme: st.Scheme | None = None,
    symmetric: st.SymDef | None = None,
    auth_policy: bytes = b"",
) -> st.TpmtPublic:
    """Build the TPMT_PUBLIC a TPM would report for ``key`` under the given template (tests only: the
    keyserver and the loader never build a public area from a bare key, so this is not in their code).

    The defaults are the AK template of ``tpm2_createak`` (restricted signing key, RSASSA or ECDSA with
    SHA-256, NULL symmetric, empty authPolicy). A Name computed from the result equals the TPM's only if
    the TPM key was created with exactly that template - which is why an AK known only as PEM cannot be
    trusted to be restricted (see :class:`~keyserver.evidence.tpm.quote.AkPublic`)."""
    sym = symmetric or st.SymDef()
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        exponent = 0 if numbers.e == 65537 else numbers.e
        params: st.RsaParms | st.EccParms = st.RsaParms(
            sym, scheme or st.Scheme(st.ALG_RSASSA, st.ALG_SHA256), key.key_size, exponent
        )
        unique: bytes | st.EccPoint = numbers.n.to_bytes(key.key_size // 8, "big")
        obj_type = st.ALG_RSA
    else:
        by_name = {
            "secp256r1": st.ECC_NIST_P256,
            "secp384r1": st.ECC_NIST_P384,
            "secp521r1": st.ECC_NIST_P521,
        }
        curve_id = by_name.get(key.curve.name)
        if curve_id is None:
            raise EvidenceError(
                "tpm-unsupported-algorithm", f"curve {key.curve.name} has no TPM curve ID here"
            )
        size = st.CURVES[curve_id][1]
        en = key.public_numbers()
        params = st.EccParms(sym, scheme or st.Scheme(st.ALG_ECDSA, st.ALG_SHA256), curve_id, st.Scheme())
        unique = st.EccPoint(en.x.to_bytes(size, "big"), en.y.to_bytes(size, "big"))
        obj_type = st.ALG_ECC
    body = (
        st.u16(obj_type)
        + st.u16(name_alg)
        + st.u32(object_attributes)
        + st.tpm2b(auth_policy)
        + params.marshal()
    )
    body += unique.marshal() if isinstance(unique, st.EccPoint) else st.tpm2b(unique)
    return st.parse_tpmt_public(body)
