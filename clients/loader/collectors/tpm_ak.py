"""The loader's TPM attestation key (AK): made once under the EK and kept at a persistent handle, and the
material the keyserver needs to enrol it by credential activation (docs/tpm.md §1).

The AK is a restricted ECC P-256 ECDSA-SHA256 signing key, a child of the RSA-2048 EK: exactly what the
keyserver's enrolment accepts (``fixedTPM``, ``fixedParent``, ``sensitiveDataOrigin``, ``restricted``,
``sign``, not ``decrypt``), and only a TPM that holds that EK can activate a credential made for it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

from clients.loader.collectors.errors import TpmAkHandleOccupied, TpmAkInvalid
from clients.loader.collectors.tpm_esapi import (
    EK_RSA2048_CERT_NV_INDEX,
    EK_RSA2048_HANDLE,
    ek_authorisation,
    endorsement_key,
    endorsement_qualified_name,
    flushed,
    open_esapi,
    persistent_exists,
    read_nv_certificate,
    read_public,
    require_persistent_handle,
    tpm_call,
)
from keyserver.evidence.tpm import structures as st

DEFAULT_AK_HANDLE = 0x81010020
AK_ATTRIBUTES = int(
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
_AK_TEMPLATE = "ecc256:ecdsa-sha256:null"
_CURVE_P256 = 0x0003


@dataclass(frozen=True)
class ProvisionedAk:
    handle: int
    public: bytes  # TPM2B_PUBLIC, as keyserver.evidence.tpm.structures marshals it
    name: bytes  # nameAlg || SHA-256(TPMT_PUBLIC): what the evidence's "ak_name" carries, in hex
    created: bool  # False when an AK already at the handle was reused


@dataclass(frozen=True)
class EnrolmentMaterial:
    """What ``POST /v1/tenants/{t}/tpm/enrolments`` takes (docs/tpm.md §1)."""

    ek_public: bytes  # TPM2B_PUBLIC
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes
    ek_certificate: bytes | None  # DER, from NV; None when the TPM has none (then the EK must be pinned)

    def request_body(self) -> dict[str, str]:
        body = {"ek_public": _b64(self.ek_public), "ak_public": _b64(self.ak_public)}
        if self.ek_certificate is not None:
            body["ek_certificate"] = _b64(self.ek_certificate)
        return body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ak_problems(ak: st.TpmtPublic, qualified_name: bytes, ek: st.TpmtPublic) -> list[str]:
    """Why ``ak`` is not an AK this module would have made under ``ek`` (empty: it is one)."""
    problems: list[str] = []
    if ak.type != st.ALG_ECC or not isinstance(ak.parameters, st.EccParms):
        return [f"it is not an ECC key (type 0x{ak.type:04x})"]
    if ak.parameters.curve_id != _CURVE_P256:
        problems.append(f"its curve is 0x{ak.parameters.curve_id:04x}, not NIST P-256")
    scheme = ak.parameters.scheme
    if (scheme.scheme, scheme.hash_alg) != (st.ALG_ECDSA, st.ALG_SHA256):
        problems.append("its scheme is not ECDSA with SHA-256")
    if ak.name_alg != st.ALG_SHA256:
        problems.append(f"its nameAlg is 0x{ak.name_alg:04x}, not SHA-256")
    if ak.object_attributes != AK_ATTRIBUTES:
        problems.append(
            f"its attributes are {ak.attribute_names()}, not those of a restricted signing AK "
            f"(0x{AK_ATTRIBUTES:08x})"
        )
    # A child of the EK has QN = H(QN(EK) || Name): this proves the parent without a certificate.
    if st.qualified_name(endorsement_qualified_name(ek), ak.name(), ak.name_alg) != qualified_name:
        problems.append("it is not a child of this EK (its qualified Name says another parent)")
    return problems


def _existing_ak(ectx: ESAPI, handle: int, ek: st.TpmtPublic) -> tuple[st.TpmtPublic, bytes, list[str]]:
    with tpm_call(f"loading the object at 0x{handle:08x}"):
        tr = ectx.tr_from_tpmpublic(handle)
    public, name, qualified = read_public(ectx, tr, f"0x{handle:08x}")
    if public.name() != name:
        raise TpmAkInvalid(f"the TPM reports a Name for 0x{handle:08x} that does not match its public area")
    return public, name, ak_problems(public, qualified, ek)


def provision_ak(
    tcti: str,
    persistent_handle: int = DEFAULT_AK_HANDLE,
    *,
    ek_handle: int | None = EK_RSA2048_HANDLE,
    owner_auth: bytes | None = None,
) -> ProvisionedAk:
    """Make the loader's AK under the EK and persist it at ``persistent_handle``; idempotent.

    If the handle already holds an AK of exactly this shape under this EK it is reused (``created`` is
    False). If it holds anything else, :class:`TpmAkHandleOccupied`: that key is never evicted here.
    ``owner_auth`` is the owner hierarchy's authorisation for TPM2_EvictControl (empty by default).
    """
    require_persistent_handle(persistent_handle, "AK")
    with open_esapi(tcti) as ectx, endorsement_key(ectx, ek_handle) as (ek_tr, ek):
        if persistent_exists(ectx, persistent_handle):
            public, name, problems = _existing_ak(ectx, persistent_handle, ek)
            if problems:
                raise TpmAkHandleOccupied(
                    f"persistent handle 0x{persistent_handle:08x} holds a key that is not the loader's AK: "
                    f"{'; '.join(problems)}. Choose another handle, or evict it (tpm2_evictcontrol -C o "
                    f"-c 0x{persistent_handle:08x}) if it is yours to remove"
                )
            return ProvisionedAk(persistent_handle, st.marshal_tpm2b_public(public), name, created=False)
        template = TPM2B_PUBLIC.parse(_AK_TEMPLATE, objectAttributes=AK_ATTRIBUTES)
        with ek_authorisation(ectx, ek) as auth, tpm_call("TPM2_Create(AK under the EK)"):
            private, public_blob, *_ = ectx.create(ek_tr, TPM2B_SENSITIVE_CREATE(), template, session1=auth)
        with ek_authorisation(ectx, ek) as auth, tpm_call("TPM2_Load(AK)"):
            transient = ectx.load(ek_tr, private, public_blob, session1=auth)
        with flushed(ectx, transient, "transient AK"):
            if owner_auth is not None:
                ectx.tr_set_auth(ESYS_TR.OWNER, owner_auth)
            with tpm_call(f"TPM2_EvictControl(AK -> 0x{persistent_handle:08x})"):
                ectx.evict_control(ESYS_TR.OWNER, transient, persistent_handle)
        public, name, problems = _existing_ak(ectx, persistent_handle, ek)
        if problems:  # the TPM made something other than what was asked: refuse to use it
            raise TpmAkInvalid(f"the AK the TPM created is not as requested: {'; '.join(problems)}")
        return ProvisionedAk(persistent_handle, st.marshal_tpm2b_public(public), name, created=True)


def enrolment_material(
    tcti: str,
    ak_handle: int = DEFAULT_AK_HANDLE,
    *,
    ek_handle: int | None = EK_RSA2048_HANDLE,
    ek_certificate_index: int | None = EK_RSA2048_CERT_NV_INDEX,
) -> EnrolmentMaterial:
    """EK public, AK public and EK certificate (from NV, when present) for the keyserver's enrolment."""
    require_persistent_handle(ak_handle, "AK")
    with open_esapi(tcti) as ectx, endorsement_key(ectx, ek_handle) as (_, ek):
        if not persistent_exists(ectx, ak_handle):
            raise TpmAkInvalid(f"no AK at 0x{ak_handle:08x}; run provision_ak first")
        ak, name, problems = _existing_ak(ectx, ak_handle, ek)
        if problems:
            raise TpmAkInvalid(
                f"the key at 0x{ak_handle:08x} is not an AK under this EK: {'; '.join(problems)}"
            )
        certificate = (
            None if ek_certificate_index is None else read_nv_certificate(ectx, ek_certificate_index)
        )
        return EnrolmentMaterial(
            ek_public=st.marshal_tpm2b_public(ek),
            ak_public=st.marshal_tpm2b_public(ak),
            ak_name=name,
            ek_certificate=certificate,
        )


def _tpm2b_content(data: bytes, what: str) -> bytes:
    """The content of a TPM2B exactly as the keyserver sends it (16-bit big-endian size, then that many)."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
        raise ValueError(
            f"{what} is not a TPM2B: its size field does not match the "
            f"{max(len(data) - 2, 0)} bytes that follow"
        )
    return data[2:]


def activate_credential(
    tcti: str,
    ak_handle: int,
    credential_blob: bytes,
    encrypted_secret: bytes,
    *,
    ek_handle: int | None = EK_RSA2048_HANDLE,
) -> bytes:
    """TPM2_ActivateCredential for the keyserver's enrolment challenge; returns the recovered secret.

    ``credential_blob`` (TPM2B_ID_OBJECT) and ``encrypted_secret`` (TPM2B_ENCRYPTED_SECRET) are the
    base64-decoded members of the enrolment answer. The TPM recovers the secret only if it holds the EK
    the keyserver encrypted to and an AK with exactly the Name the credential names.
    """
    require_persistent_handle(ak_handle, "AK")
    id_object = TPM2B_ID_OBJECT(credential=_tpm2b_content(credential_blob, "credential_blob"))
    secret = TPM2B_ENCRYPTED_SECRET(secret=_tpm2b_content(encrypted_secret, "encrypted_secret"))
    with open_esapi(tcti) as ectx, endorsement_key(ectx, ek_handle) as (ek_tr, ek):
        if not persistent_exists(ectx, ak_handle):
            raise TpmAkInvalid(f"no AK at 0x{ak_handle:08x}; run provision_ak first")
        with tpm_call(f"loading the AK at 0x{ak_handle:08x}"):
            ak_tr = ectx.tr_from_tpmpublic(ak_handle)
        # The AK takes the empty password (ADMIN role: adminWithPolicy is clear); the EK its own session.
        with ek_authorisation(ectx, ek) as auth, tpm_call("TPM2_ActivateCredential"):
            recovered = ectx.activate_credential(
                ak_tr, ek_tr, id_object, secret, session1=ESYS_TR.PASSWORD, session2=auth
            )
        return bytes(recovered)
