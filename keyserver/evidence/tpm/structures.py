"""Strict parsers and serialisers for the TPM 2.0 structures a remote verifier receives.

Reference: *TPM 2.0 Library, Part 2: Structures* (rev. 1.59; section numbers below are from it).
Wire format: big-endian integers, ``TPM2B_*`` = 16-bit size then that many bytes, unions selected by a
preceding algorithm/type field (Part 1 §18 "Marshaling"/Part 2 §4).

Every parser here:

* is bounds-checked (a short buffer is ``tpm-malformed``, never an ``IndexError``/``struct.error``);
* validates sizes against the limits Part 2 gives the structure (``TPM2B_DIGEST`` ≤ 64 bytes, ...);
* rejects trailing bytes: a structure is exactly what it says it is. A TPM never emits padding after
  these structures, so trailing data is either a framing bug or an attempt to smuggle bytes past a
  verifier that would hash or sign them;
* rejects values it does not understand (unknown algorithm IDs, reserved attribute bits, attestation
  types other than quote/certify/creation): DESIGN.md "fail closed".

The serialisers produce the canonical encoding, so ``marshal(parse(b)) == b`` for every accepted ``b``
(property-tested). Parsed structures keep their exact wire bytes where a hash is computed over them
(``TpmtPublic.raw``): a Name must be the hash of the bytes the TPM hashed, not of a re-encoding.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyserver.errors import EvidenceError

# --- algorithm identifiers (Part 2 §6.3 TPM_ALG_ID) -------------------------------------------------
ALG_RSA: Final = 0x0001
ALG_SHA1: Final = 0x0004
ALG_HMAC: Final = 0x0005
ALG_AES: Final = 0x0006
ALG_MGF1: Final = 0x0007
ALG_KEYEDHASH: Final = 0x0008
ALG_XOR: Final = 0x000A
ALG_SHA256: Final = 0x000B
ALG_SHA384: Final = 0x000C
ALG_SHA512: Final = 0x000D
ALG_NULL: Final = 0x0010
ALG_SM3_256: Final = 0x0012
ALG_SM4: Final = 0x0013
ALG_RSASSA: Final = 0x0014
ALG_RSAES: Final = 0x0015
ALG_RSAPSS: Final = 0x0016
ALG_OAEP: Final = 0x0017
ALG_ECDSA: Final = 0x0018
ALG_ECDH: Final = 0x0019
ALG_ECDAA: Final = 0x001A
ALG_SM2: Final = 0x001B
ALG_ECSCHNORR: Final = 0x001C
ALG_ECMQV: Final = 0x001D
ALG_KDF1_SP800_56A: Final = 0x0020
ALG_KDF2: Final = 0x0021
ALG_KDF1_SP800_108: Final = 0x0022
ALG_ECC: Final = 0x0023
ALG_SYMCIPHER: Final = 0x0025
ALG_CAMELLIA: Final = 0x0026
ALG_SHA3_256: Final = 0x0027
ALG_SHA3_384: Final = 0x0028
ALG_SHA3_512: Final = 0x0029
ALG_CFB: Final = 0x0043

# --- ECC curves (Part 2 §6.4 TPM_ECC_CURVE) ----------------------------------------------------------
ECC_NIST_P256: Final = 0x0003
ECC_NIST_P384: Final = 0x0004
ECC_NIST_P521: Final = 0x0005

# --- structure tags and constants ---------------------------------------------------------------------
TPM_GENERATED_VALUE: Final = 0xFF544347
"""Part 2 §6.2: every TPMS_ATTEST starts with this; a restricted signing key refuses to sign external
data that starts with it, which is what makes a quote unforgeable (Part 1 §11.4.6.3)."""
ST_ATTEST_CERTIFY: Final = 0x8017
ST_ATTEST_QUOTE: Final = 0x8018
ST_ATTEST_CREATION: Final = 0x801A

# Hierarchy handles (Part 2 §7.4 TPM_RH): the Name of a hierarchy is its handle, which is what the
# qualified Name of a primary key is computed from (Part 1 §16 "Names").
RH_OWNER: Final = 0x40000001
RH_NULL: Final = 0x40000007
RH_ENDORSEMENT: Final = 0x4000000B
RH_PLATFORM: Final = 0x4000000C

# --- TPMA_OBJECT (Part 2 §8.3) ------------------------------------------------------------------------
ATTR_FIXED_TPM: Final = 1 << 1
ATTR_ST_CLEAR: Final = 1 << 2
ATTR_FIXED_PARENT: Final = 1 << 4
ATTR_SENSITIVE_DATA_ORIGIN: Final = 1 << 5
ATTR_USER_WITH_AUTH: Final = 1 << 6
ATTR_ADMIN_WITH_POLICY: Final = 1 << 7
ATTR_NO_DA: Final = 1 << 10
ATTR_ENCRYPTED_DUPLICATION: Final = 1 << 11
ATTR_RESTRICTED: Final = 1 << 16
ATTR_DECRYPT: Final = 1 << 17
ATTR_SIGN_ENCRYPT: Final = 1 << 18
ATTR_X509_SIGN: Final = 1 << 19
ATTR_DEFINED_MASK: Final = (
    ATTR_FIXED_TPM
    | ATTR_ST_CLEAR
    | ATTR_FIXED_PARENT
    | ATTR_SENSITIVE_DATA_ORIGIN
    | ATTR_USER_WITH_AUTH
    | ATTR_ADMIN_WITH_POLICY
    | ATTR_NO_DA
    | ATTR_ENCRYPTED_DUPLICATION
    | ATTR_RESTRICTED
    | ATTR_DECRYPT
    | ATTR_SIGN_ENCRYPT
    | ATTR_X509_SIGN
)
"""Bits 0, 3, 8-9, 12-15 and 20-31 are reserved and "shall be clear" (Part 2 §8.3.2)."""

ATTR_NAMES: Final = {
    ATTR_FIXED_TPM: "fixedTPM",
    ATTR_ST_CLEAR: "stClear",
    ATTR_FIXED_PARENT: "fixedParent",
    ATTR_SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
    ATTR_USER_WITH_AUTH: "userWithAuth",
    ATTR_ADMIN_WITH_POLICY: "adminWithPolicy",
    ATTR_NO_DA: "noDA",
    ATTR_ENCRYPTED_DUPLICATION: "encryptedDuplication",
    ATTR_RESTRICTED: "restricted",
    ATTR_DECRYPT: "decrypt",
    ATTR_SIGN_ENCRYPT: "sign",
    ATTR_X509_SIGN: "x509sign",
}

# --- size limits (Part 2 §10, values of a PC Client TPM's TPM_PT constants) --------------------------
MAX_DIGEST_SIZE: Final = 64
"""sizeof(TPMU_HA): the largest digest (SHA-512)."""
MAX_DATA_SIZE: Final = 2 + MAX_DIGEST_SIZE
"""TPM2B_DATA holds up to sizeof(TPMT_HA) (Part 2 §10.4.3)."""
MAX_NAME_SIZE: Final = 2 + MAX_DIGEST_SIZE
"""TPM2B_NAME holds up to sizeof(TPMU_NAME) (Part 2 §10.5.3)."""
MAX_RSA_KEY_BYTES: Final = 512
"""TPM2B_PUBLIC_KEY_RSA: MAX_RSA_KEY_BYTES for RSA-4096 (Part 2 §11.2.4.5)."""
MAX_ECC_KEY_BYTES: Final = 66
"""TPM2B_ECC_PARAMETER: P-521 coordinates are 66 bytes (Part 2 §11.2.5.1)."""
MAX_PCR_SELECT_SIZE: Final = 8
"""sizeofSelect bound. A PC Client TPM has 24 PCRs and always emits 3 (PCR_SELECT_MAX); 8 bytes (64 PCRs)
is accepted so that a TPM with more PCRs still parses, and keeps PCR indices small."""
MAX_PCR_BANKS: Final = 16
"""TPML_PCR_SELECTION.count bound (HASH_COUNT: one entry per implemented hash)."""

RSA_KEY_SIZES: Final = frozenset({1024, 2048, 3072, 4096})


def malformed(what: str, detail: str) -> EvidenceError:
    """The one error every parser raises: which structure, and what is wrong with it."""
    return EvidenceError(
        "tpm-malformed",
        f"the {what} is malformed: {detail}. Send the structure exactly as the TPM returned it "
        "(TPM 2.0 Part 2 wire format, big-endian, no extra bytes).",
    )


# --- hash algorithms ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HashAlg:
    """A TPM hash algorithm: its TPM_ALG_ID, the PCR-bank name used in claims, its digest size."""

    alg_id: int
    name: str
    size: int
    hashlib_name: str | None
    """``None`` when Python cannot compute it (SM3): such a bank parses but cannot be replayed."""

    def digest(self, data: bytes) -> bytes:
        if self.hashlib_name is None:
            raise EvidenceError("tpm-unsupported-algorithm", f"{self.name} digests cannot be computed here")
        return hashlib.new(self.hashlib_name, data).digest()

    def new(self) -> hashlib._Hash:
        if self.hashlib_name is None:
            raise EvidenceError("tpm-unsupported-algorithm", f"{self.name} digests cannot be computed here")
        return hashlib.new(self.hashlib_name)

    def crypto(self) -> hashes.HashAlgorithm:
        """The ``cryptography`` hash for signature verification and KDFs."""
        mapping: dict[int, type[hashes.HashAlgorithm]] = {
            ALG_SHA1: hashes.SHA1,
            ALG_SHA256: hashes.SHA256,
            ALG_SHA384: hashes.SHA384,
            ALG_SHA512: hashes.SHA512,
            ALG_SHA3_256: hashes.SHA3_256,
            ALG_SHA3_384: hashes.SHA3_384,
            ALG_SHA3_512: hashes.SHA3_512,
        }
        cls = mapping.get(self.alg_id)
        if cls is None:
            raise EvidenceError("tpm-unsupported-algorithm", f"{self.name} is not supported for signatures")
        return cls()


HASH_ALGS: Final[dict[int, HashAlg]] = {
    h.alg_id: h
    for h in (
        HashAlg(ALG_SHA1, "sha1", 20, "sha1"),
        HashAlg(ALG_SHA256, "sha256", 32, "sha256"),
        HashAlg(ALG_SHA384, "sha384", 48, "sha384"),
        HashAlg(ALG_SHA512, "sha512", 64, "sha512"),
        HashAlg(ALG_SM3_256, "sm3_256", 32, None),
        HashAlg(ALG_SHA3_256, "sha3_256", 32, "sha3_256"),
        HashAlg(ALG_SHA3_384, "sha3_384", 48, "sha3_384"),
        HashAlg(ALG_SHA3_512, "sha3_512", 64, "sha3_512"),
    )
}
HASH_BY_NAME: Final[dict[str, HashAlg]] = {h.name: h for h in HASH_ALGS.values()}


def hash_alg(alg_id: int, what: str) -> HashAlg:
    """The hash for ``alg_id``; ``tpm-malformed`` when it is not a hash algorithm."""
    found = HASH_ALGS.get(alg_id)
    if found is None:
        raise malformed(what, f"0x{alg_id:04x} is not a known TPM hash algorithm")
    return found


def bank(name: str) -> HashAlg:
    """The hash for a PCR bank name (``sha256``); ``tpm-unknown-bank`` otherwise."""
    found = HASH_BY_NAME.get(name)
    if found is None:
        raise EvidenceError(
            "tpm-unknown-bank", f"unknown PCR bank {name!r}; use one of {', '.join(sorted(HASH_BY_NAME))}"
        )
    return found


# --- reader/writer ------------------------------------------------------------------------------------


class Reader:
    """A bounds-checked big-endian cursor over one structure."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self.what = what

    @property
    def pos(self) -> int:
        return self._pos

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise malformed(
                self.what,
                f"needs {n} more byte(s) at offset {self._pos} but only {len(self._data) - self._pos} remain",
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def since(self, start: int) -> bytes:
        """The bytes read from ``start`` up to the cursor."""
        return self._data[start : self._pos]

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def tpm2b(self, max_size: int, field: str) -> bytes:
        size = self.u16()
        if size > max_size:
            raise malformed(self.what, f"{field} is {size} bytes, more than the {max_size} allowed")
        return self.take(size)

    def done(self) -> None:
        if self._pos != len(self._data):
            raise malformed(
                self.what,
                f"{len(self._data) - self._pos} unexpected trailing byte(s) after offset {self._pos}",
            )


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def tpm2b(data: bytes) -> bytes:
    return u16(len(data)) + data


# --- TPML_PCR_SELECTION (Part 2 §10.6.2 TPMS_PCR_SELECTION, §10.9.7 TPML_PCR_SELECTION) ---------------


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """One bank's selection. ``pcrs`` is ascending; ``size_of_select`` is kept for exact re-encoding."""

    hash_alg: int
    pcrs: tuple[int, ...]
    size_of_select: int = 3

    @property
    def bank(self) -> HashAlg:
        return hash_alg(self.hash_alg, "TPMS_PCR_SELECTION")

    def marshal(self) -> bytes:
        bitmap = bytearray(self.size_of_select)
        for index in self.pcrs:
            if index >= 8 * self.size_of_select:
                raise ValueError(f"PCR {index} does not fit in a {self.size_of_select}-byte selection")
            bitmap[index // 8] |= 1 << (index % 8)
        return u16(self.hash_alg) + bytes([self.size_of_select]) + bytes(bitmap)


def read_pcr_selection_list(r: Reader) -> tuple[PcrSelection, ...]:
    count = r.u32()
    if count > MAX_PCR_BANKS:
        raise malformed(r.what, f"TPML_PCR_SELECTION.count is {count}, more than {MAX_PCR_BANKS}")
    out: list[PcrSelection] = []
    for _ in range(count):
        alg = r.u16()
        hash_alg(alg, r.what)
        size = r.u8()
        if size > MAX_PCR_SELECT_SIZE:
            raise malformed(r.what, f"sizeofSelect is {size}, more than {MAX_PCR_SELECT_SIZE}")
        bitmap = r.take(size)
        # PCR n is bit (n mod 8) of octet n div 8 (Part 2 §10.6.1).
        pcrs = tuple(8 * i + bit for i, octet in enumerate(bitmap) for bit in range(8) if octet >> bit & 1)
        out.append(PcrSelection(alg, pcrs, size))
    return tuple(out)


def parse_pcr_selection_list(data: bytes) -> tuple[PcrSelection, ...]:
    r = Reader(data, "TPML_PCR_SELECTION")
    out = read_pcr_selection_list(r)
    r.done()
    return out


def marshal_pcr_selection_list(selections: tuple[PcrSelection, ...]) -> bytes:
    return u32(len(selections)) + b"".join(s.marshal() for s in selections)


# --- TPMT_PUBLIC (Part 2 §12.2.4) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SymDef:
    """TPMT_SYM_DEF_OBJECT (Part 2 §11.1.7): ``algorithm`` NULL means no key bits and no mode."""

    algorithm: int = ALG_NULL
    key_bits: int = 0
    mode: int = 0

    def marshal(self) -> bytes:
        if self.algorithm == ALG_NULL:
            return u16(ALG_NULL)
        return u16(self.algorithm) + u16(self.key_bits) + u16(self.mode)


@dataclass(frozen=True, slots=True)
class Scheme:
    """A TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME: scheme ID, its hash, ECDAA's count."""

    scheme: int = ALG_NULL
    hash_alg: int = ALG_NULL
    count: int = 0

    def marshal(self) -> bytes:
        if self.scheme == ALG_NULL:
            return u16(ALG_NULL)
        out = u16(self.scheme)
        if self.scheme == ALG_RSAES:
            return out  # TPMS_ENC_SCHEME_RSAES is empty (Part 2 §11.2.2.2)
        out += u16(self.hash_alg)
        if self.scheme == ALG_ECDAA:
            out += u16(self.count)
        return out


@dataclass(frozen=True, slots=True)
class RsaParms:
    """TPMS_RSA_PARMS (Part 2 §12.2.3.5). ``exponent`` 0 means the default 2^16+1."""

    symmetric: SymDef
    scheme: Scheme
    key_bits: int
    exponent: int

    def marshal(self) -> bytes:
        return self.symmetric.marshal() + self.scheme.marshal() + u16(self.key_bits) + u32(self.exponent)


@dataclass(frozen=True, slots=True)
class EccParms:
    """TPMS_ECC_PARMS (Part 2 §12.2.3.6)."""

    symmetric: SymDef
    scheme: Scheme
    curve_id: int
    kdf: Scheme

    def marshal(self) -> bytes:
        return self.symmetric.marshal() + self.scheme.marshal() + u16(self.curve_id) + self.kdf.marshal()


@dataclass(frozen=True, slots=True)
class EccPoint:
    """TPMS_ECC_POINT (Part 2 §11.2.5.2): the coordinates as the TPM sent them (not re-padded)."""

    x: bytes
    y: bytes

    def marshal(self) -> bytes:
        return tpm2b(self.x) + tpm2b(self.y)


_SYM_OBJECT_ALGS = frozenset({ALG_AES, ALG_SM4, ALG_CAMELLIA})
_SYM_KEY_BITS = frozenset({128, 192, 256})
_SYM_MODES = frozenset({0x0040, 0x0041, 0x0042, ALG_CFB, 0x0044})  # CTR OFB CBC CFB ECB
_RSA_SCHEMES = frozenset({ALG_RSASSA, ALG_RSAPSS, ALG_OAEP, ALG_RSAES})
_ECC_SCHEMES = frozenset({ALG_ECDSA, ALG_ECDH, ALG_ECDAA, ALG_SM2, ALG_ECSCHNORR, ALG_ECMQV})
_KDF_SCHEMES = frozenset({ALG_MGF1, ALG_KDF1_SP800_56A, ALG_KDF2, ALG_KDF1_SP800_108})
CURVES: Final[dict[int, tuple[str, int]]] = {
    ECC_NIST_P256: ("P-256", 32),
    ECC_NIST_P384: ("P-384", 48),
    ECC_NIST_P521: ("P-521", 66),
}
"""Curves the verifier can use (name, coordinate size). BN and SM2 curves parse as unknown and are
rejected: ``cryptography`` has no implementation and no EK/AK profile requires them."""
_CRYPTO_CURVES: Final[dict[int, type[ec.EllipticCurve]]] = {
    ECC_NIST_P256: ec.SECP256R1,
    ECC_NIST_P384: ec.SECP384R1,
    ECC_NIST_P521: ec.SECP521R1,
}


def _read_sym_def(r: Reader) -> SymDef:
    alg = r.u16()
    if alg == ALG_NULL:
        return SymDef()
    if alg not in _SYM_OBJECT_ALGS:
        raise malformed(r.what, f"symmetric algorithm 0x{alg:04x} is not a TPMI_ALG_SYM_OBJECT")
    key_bits = r.u16()
    mode = r.u16()
    if key_bits not in _SYM_KEY_BITS:
        raise malformed(r.what, f"symmetric key size {key_bits} is not 128, 192 or 256")
    if mode not in _SYM_MODES:
        raise malformed(r.what, f"symmetric mode 0x{mode:04x} is not a TPMI_ALG_SYM_MODE")
    return SymDef(alg, key_bits, mode)


def _read_scheme(r: Reader, allowed: frozenset[int], field: str) -> Scheme:
    scheme = r.u16()
    if scheme == ALG_NULL:
        return Scheme()
    if scheme not in allowed:
        raise malformed(r.what, f"{field} 0x{scheme:04x} is not allowed here")
    if scheme == ALG_RSAES:
        return Scheme(scheme)
    alg = r.u16()
    hash_alg(alg, r.what)
    count = r.u16() if scheme == ALG_ECDAA else 0
    return Scheme(scheme, alg, count)


@dataclass(frozen=True, slots=True)
class TpmtPublic:
    """A parsed TPMT_PUBLIC. ``raw`` is the exact wire encoding the Name is computed over."""

    type: int
    name_alg: int
    object_attributes: int
    auth_policy: bytes
    parameters: RsaParms | EccParms
    unique: bytes | EccPoint
    raw: bytes

    def marshal(self) -> bytes:
        body = u16(self.type) + u16(self.name_alg) + u32(self.object_attributes) + tpm2b(self.auth_policy)
        body += self.parameters.marshal()
        body += self.unique.marshal() if isinstance(self.unique, EccPoint) else tpm2b(self.unique)
        return body

    @property
    def name_hash(self) -> HashAlg:
        return hash_alg(self.name_alg, "TPMT_PUBLIC.nameAlg")

    def name(self) -> bytes:
        """Name = nameAlg ‖ H_nameAlg(TPMT_PUBLIC) (Part 1 §16 "Names")."""
        return u16(self.name_alg) + self.name_hash.digest(self.raw)

    def attribute_names(self) -> list[str]:
        return [n for bit, n in ATTR_NAMES.items() if self.object_attributes & bit]

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The ``cryptography`` public key; ``tpm-malformed`` when the key material is invalid."""
        if isinstance(self.parameters, RsaParms):
            assert isinstance(self.unique, bytes)
            exponent = self.parameters.exponent or 65537
            try:
                return rsa.RSAPublicNumbers(exponent, int.from_bytes(self.unique, "big")).public_key()
            except ValueError as exc:
                raise malformed("TPMT_PUBLIC", f"the RSA public key is invalid: {exc}") from exc
        assert isinstance(self.unique, EccPoint)
        curve = _CRYPTO_CURVES.get(self.parameters.curve_id)
        if curve is None:
            raise EvidenceError(
                "tpm-unsupported-algorithm",
                f"ECC curve 0x{self.parameters.curve_id:04x} is not supported "
                "(use NIST P-256, P-384 or P-521)",
            )
        try:
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(self.unique.x, "big"), int.from_bytes(self.unique.y, "big"), curve()
            ).public_key()
        except ValueError as exc:
            raise malformed("TPMT_PUBLIC", f"the ECC point is not on the curve: {exc}") from exc


def _read_tpmt_public(r: Reader) -> TpmtPublic:
    start = r.pos
    obj_type = r.u16()
    name_alg = r.u16()
    name_hash = hash_alg(name_alg, r.what)
    attributes = r.u32()
    if attributes & ~ATTR_DEFINED_MASK:
        raise malformed(r.what, f"objectAttributes 0x{attributes:08x} has reserved bits set")
    auth_policy = r.tpm2b(MAX_DIGEST_SIZE, "authPolicy")
    # Part 2 §12.2.4: authPolicy is empty or a digest of nameAlg's size.
    if auth_policy and len(auth_policy) != name_hash.size:
        raise malformed(
            r.what, f"authPolicy is {len(auth_policy)} bytes; {name_hash.name} needs {name_hash.size}"
        )
    parameters: RsaParms | EccParms
    unique: bytes | EccPoint
    if obj_type == ALG_RSA:
        sym = _read_sym_def(r)
        scheme = _read_scheme(r, _RSA_SCHEMES, "RSA scheme")
        key_bits = r.u16()
        exponent = r.u32()
        if key_bits not in RSA_KEY_SIZES:
            raise malformed(r.what, f"RSA keyBits {key_bits} is not 1024, 2048, 3072 or 4096")
        if exponent == 1 or (exponent and exponent % 2 == 0):
            raise malformed(r.what, f"RSA exponent {exponent} is not a valid public exponent")
        parameters = RsaParms(sym, scheme, key_bits, exponent)
        unique = r.tpm2b(MAX_RSA_KEY_BYTES, "unique (RSA modulus)")
        if len(unique) != key_bits // 8:
            raise malformed(r.what, f"the RSA modulus is {len(unique)} bytes but keyBits says {key_bits}")
        if not unique[0] & 0x80:
            raise malformed(r.what, f"the RSA modulus is shorter than {key_bits} bits")
    elif obj_type == ALG_ECC:
        sym = _read_sym_def(r)
        scheme = _read_scheme(r, _ECC_SCHEMES, "ECC scheme")
        curve_id = r.u16()
        kdf = _read_scheme(r, _KDF_SCHEMES, "KDF scheme")
        if curve_id not in CURVES:
            raise malformed(r.what, f"ECC curve 0x{curve_id:04x} is not NIST P-256, P-384 or P-521")
        parameters = EccParms(sym, scheme, curve_id, kdf)
        size = CURVES[curve_id][1]
        x = r.tpm2b(size, "unique.x")
        y = r.tpm2b(size, "unique.y")
        if not x or not y:
            raise malformed(r.what, "the ECC point has an empty coordinate")
        unique = EccPoint(x, y)
    else:
        raise malformed(r.what, f"type 0x{obj_type:04x} is not an RSA (0x0001) or ECC (0x0023) key")
    raw = r.since(start)  # the exact bytes the Name is computed over
    return TpmtPublic(obj_type, name_alg, attributes, auth_policy, parameters, unique, raw)


def parse_tpmt_public(data: bytes) -> TpmtPublic:
    """Parse a TPMT_PUBLIC (no size prefix), as ``tpm2_readpublic -f tpmt`` and go-tpm-tools emit it."""
    r = Reader(data, "TPMT_PUBLIC")
    out = _read_tpmt_public(r)
    r.done()
    return out


def parse_tpm2b_public(data: bytes) -> TpmtPublic:
    """Parse a TPM2B_PUBLIC (16-bit size, then exactly that many bytes of TPMT_PUBLIC)."""
    r = Reader(data, "TPM2B_PUBLIC")
    size = r.u16()
    if size != len(data) - 2:
        raise malformed("TPM2B_PUBLIC", f"the size field says {size} but {len(data) - 2} bytes follow")
    return parse_tpmt_public(r.take(size))


def marshal_tpm2b_public(public: TpmtPublic) -> bytes:
    return tpm2b(public.raw)


def qualified_name(parent_qualified_name: bytes, name: bytes, name_alg: int) -> bytes:
    """QN = nameAlg ‖ H_nameAlg(parent QN ‖ Name) (Part 1 §16). For a primary key the parent QN is the
    4-byte hierarchy handle (:func:`hierarchy_name`)."""
    return u16(name_alg) + hash_alg(name_alg, "nameAlg").digest(parent_qualified_name + name)


def hierarchy_name(handle: int) -> bytes:
    """The Name (and qualified Name) of a hierarchy is its handle (Part 1 §16)."""
    return u32(handle)


# --- TPMS_ATTEST (Part 2 §10.12) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockInfo:
    """TPMS_CLOCK_INFO (Part 2 §10.11.1)."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def marshal(self) -> bytes:
        return u64(self.clock) + u32(self.reset_count) + u32(self.restart_count) + bytes([int(self.safe)])


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """TPMS_QUOTE_INFO (Part 2 §10.12.4)."""

    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes

    def marshal(self) -> bytes:
        return marshal_pcr_selection_list(self.pcr_select) + tpm2b(self.pcr_digest)


@dataclass(frozen=True, slots=True)
class CertifyInfo:
    """TPMS_CERTIFY_INFO (Part 2 §10.12.3)."""

    name: bytes
    qualified_name: bytes

    def marshal(self) -> bytes:
        return tpm2b(self.name) + tpm2b(self.qualified_name)


@dataclass(frozen=True, slots=True)
class CreationInfo:
    """TPMS_CREATION_INFO (Part 2 §10.12.7)."""

    object_name: bytes
    creation_hash: bytes

    def marshal(self) -> bytes:
        return tpm2b(self.object_name) + tpm2b(self.creation_hash)


@dataclass(frozen=True, slots=True)
class Attest:
    """A parsed TPMS_ATTEST. Only quote, certify and creation attestations are understood."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    attested: QuoteInfo | CertifyInfo | CreationInfo

    def marshal(self) -> bytes:
        return (
            u32(self.magic)
            + u16(self.type)
            + tpm2b(self.qualified_signer)
            + tpm2b(self.extra_data)
            + self.clock_info.marshal()
            + u64(self.firmware_version)
            + self.attested.marshal()
        )


def _check_name(value: bytes, what: str, field: str) -> None:
    """A TPM2B_NAME is empty, a 4-byte handle, or nameAlg ‖ digest of that algorithm (Part 2 §10.5.3)."""
    if len(value) in (0, 4):
        return
    if len(value) < 2:
        raise malformed(what, f"{field} is {len(value)} byte(s): not a handle or a digest")
    alg = int.from_bytes(value[:2], "big")
    h = hash_alg(alg, what)
    if len(value) != 2 + h.size:
        raise malformed(what, f"{field} is {len(value)} bytes but a {h.name} Name is {2 + h.size}")


def parse_attest(data: bytes) -> Attest:
    """Parse a TPMS_ATTEST; ``tpm-malformed`` on anything unexpected (including a wrong magic)."""
    r = Reader(data, "TPMS_ATTEST")
    magic = r.u32()
    if magic != TPM_GENERATED_VALUE:
        raise EvidenceError(
            "tpm-attest-not-tpm-generated",
            f"TPMS_ATTEST.magic is 0x{magic:08x}, not TPM_GENERATED_VALUE 0xff544347: the structure was not "
            "produced by a TPM",
        )
    att_type = r.u16()
    qualified_signer = r.tpm2b(MAX_NAME_SIZE, "qualifiedSigner")
    _check_name(qualified_signer, r.what, "qualifiedSigner")
    extra_data = r.tpm2b(MAX_DATA_SIZE, "extraData")
    clock = r.u64()
    reset_count = r.u32()
    restart_count = r.u32()
    safe = r.u8()
    if safe > 1:
        raise malformed(r.what, f"clockInfo.safe is {safe}, not a TPMI_YES_NO")
    firmware = r.u64()
    attested: QuoteInfo | CertifyInfo | CreationInfo
    if att_type == ST_ATTEST_QUOTE:
        selection = read_pcr_selection_list(r)
        digest = r.tpm2b(MAX_DIGEST_SIZE, "pcrDigest")
        attested = QuoteInfo(selection, digest)
    elif att_type == ST_ATTEST_CERTIFY:
        name = r.tpm2b(MAX_NAME_SIZE, "certified name")
        qn = r.tpm2b(MAX_NAME_SIZE, "certified qualifiedName")
        _check_name(name, r.what, "certified name")
        _check_name(qn, r.what, "certified qualifiedName")
        attested = CertifyInfo(name, qn)
    elif att_type == ST_ATTEST_CREATION:
        name = r.tpm2b(MAX_NAME_SIZE, "objectName")
        _check_name(name, r.what, "objectName")
        attested = CreationInfo(name, r.tpm2b(MAX_DIGEST_SIZE, "creationHash"))
    else:
        raise EvidenceError(
            "tpm-attest-type-unsupported",
            f"TPMS_ATTEST type 0x{att_type:04x} is not a quote (0x8018), certify (0x8017) "
            "or creation (0x801a)",
        )
    r.done()
    return Attest(
        magic,
        att_type,
        qualified_signer,
        extra_data,
        ClockInfo(clock, reset_count, restart_count, bool(safe)),
        firmware,
        attested,
    )


# --- TPMT_SIGNATURE (Part 2 §11.3.4) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """A parsed TPMT_SIGNATURE: RSASSA/RSAPSS carry ``rsa``; ECDSA carries ``r`` and ``s``."""

    sig_alg: int
    hash_alg: int
    rsa: bytes = b""
    r: bytes = b""
    s: bytes = b""

    def marshal(self) -> bytes:
        head = u16(self.sig_alg) + u16(self.hash_alg)
        if self.sig_alg in (ALG_RSASSA, ALG_RSAPSS):
            return head + tpm2b(self.rsa)
        return head + tpm2b(self.r) + tpm2b(self.s)


def parse_signature(data: bytes) -> Signature:
    """Parse a TPMT_SIGNATURE of scheme RSASSA, RSAPSS or ECDSA; other schemes are unsupported."""
    rd = Reader(data, "TPMT_SIGNATURE")
    sig_alg = rd.u16()
    if sig_alg not in (ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA):
        raise EvidenceError(
            "tpm-signature-unsupported",
            f"signature scheme 0x{sig_alg:04x} is not supported; AKs must sign with RSASSA, RSAPSS or ECDSA",
        )
    alg = rd.u16()
    hash_alg(alg, rd.what)
    if sig_alg == ALG_ECDSA:
        r = rd.tpm2b(MAX_ECC_KEY_BYTES, "signatureR")
        s = rd.tpm2b(MAX_ECC_KEY_BYTES, "signatureS")
        rd.done()
        return Signature(sig_alg, alg, r=r, s=s)
    sig = rd.tpm2b(MAX_RSA_KEY_BYTES, "RSA signature")
    rd.done()
    return Signature(sig_alg, alg, rsa=sig)
