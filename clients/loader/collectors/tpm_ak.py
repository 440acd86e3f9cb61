"""The loader's TPM attestation key (AK): made once under the EK and kept at a persistent handle, and the
material the keyserver needs to enrol it by credential activation (docs/tpm.md §1).

Provisioning runs before the loader (at image build or first boot, by the operator's tooling), not in it:
the loader imports none of this, so it is not part of the loader's measured image. It checks the TPM's
answers with the keyserver's own parser (``keyserver.evidence.tpm.structures``): what it hands the
keyserver for enrolment is then exactly what the keyserver will accept.

The AK is a restricted ECC P-256 ECDSA-SHA256 signing key, a child of the RSA-2048 EK: exactly what the
keyserver's enrolment accepts (``fixedTPM``, ``fixedParent``, ``sensitiveDataOrigin``, ``restricted``,
``sign``, not ``decrypt``), and only a TPM that holds that EK can activate a credential made for it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from clients.loader.collectors.errors import TpmAkHandleOccupied, TpmAkInvalid, TpmEkMissing
from clients.loader.collectors.tpm import AK_ATTRIBUTES, DEFAULT_AK_HANDLE
from clients.loader.collectors.tpm_esapi import (
    flushed,
    open_esapi,
    persistent_exists,
    read_public,
    require_persistent_handle,
    tpm_call,
)
from keyserver.evidence.tpm import structures as st

__all__ = [
    "AK_ATTRIBUTES",
    "DEFAULT_AK_HANDLE",
    "EK_RSA2048_CERT_NV_INDEX",
    "EK_RSA2048_HANDLE",
    "EnrolmentMaterial",
    "ProvisionedAk",
    "activate_credential",
    "enrolment_material",
    "provision_ak",
]

# TCG EK Credential Profile: the RSA-2048 EK (template L-1) and the NV index of its certificate.
EK_RSA2048_HANDLE = 0x81010001
EK_RSA2048_CERT_NV_INDEX = 0x01C00002
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


def read_parsed_public(ectx: ESAPI, handle: ESYS_TR, what: str) -> tuple[st.TpmtPublic, bytes, bytes]:
    """:func:`.tpm_esapi.read_public`, its public area parsed as the keyserver parses it."""
    public, name, qualified = read_public(ectx, handle, what)
    return st.parse_tpm2b_public(bytes(public.marshal())), name, qualified


def endorsement_qualified_name(ek: st.TpmtPublic) -> bytes:
    """The EK's qualified Name: it is a primary key of the endorsement hierarchy."""
    return st.qualified_name(st.hierarchy_name(st.RH_ENDORSEMENT), ek.name(), ek.name_alg)


@contextmanager
def endorsement_key(ectx: ESAPI, ek_handle: int | None) -> Iterator[tuple[ESYS_TR, st.TpmtPublic]]:
    """The EK as an ESYS_TR and its public area.

    ``ek_handle`` names a persistent EK; ``None`` re-creates the RSA-2048 EK from the TCG template L-1
    (TPMs often ship without a persisted EK; the same seed and template give the same key, which is
    what its certificate certifies) and flushes it afterwards.
    """
    if ek_handle is None:
        with tpm_call("reading the EK template from NV"):
            _, template = create_ek_template("EK-RSA2048", NVReadEK(ectx))
        with tpm_call("TPM2_CreatePrimary(EK, endorsement hierarchy)"):
            handle, public, *_ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
        with flushed(ectx, handle, "transient EK"):
            yield handle, st.parse_tpm2b_public(bytes(public.marshal()))
        return
    require_persistent_handle(ek_handle, "EK")
    if not persistent_exists(ectx, ek_handle):
        raise TpmEkMissing(
            f"no endorsement key at persistent handle 0x{ek_handle:08x}. Persist it (tpm2_createek -c "
            f"0x{ek_handle:08x}) or pass ek_handle=None to derive the RSA-2048 EK from the TCG template"
        )
    with tpm_call(f"loading the EK at 0x{ek_handle:08x}"):
        handle = ectx.tr_from_tpmpublic(ek_handle)
    ek, _, _ = read_parsed_public(ectx, handle, "EK")
    yield handle, ek


@contextmanager
def ek_authorisation(ectx: ESAPI, ek: st.TpmtPublic) -> Iterator[ESYS_TR]:
    """A session that authorises one use of the EK as a parent or decryption key (USER role).

    Low-range EK templates (L-1 RSA-2048, L-2 ECC P-256) clear ``userWithAuth``: their policy is
    PolicySecret(TPM_RH_ENDORSEMENT), so each use needs a fresh policy session. High-range templates set
    ``userWithAuth`` and take the empty password.
    """
    if ek.object_attributes & int(TPMA_OBJECT.USERWITHAUTH):
        yield ESYS_TR.PASSWORD
        return
    with tpm_call("TPM2_StartAuthSession(policy)"):
        session = ectx.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
        )
    with flushed(ectx, session, "EK policy session"):
        with tpm_call("TPM2_PolicySecret(TPM_RH_ENDORSEMENT)"):
            ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
        yield session


def read_nv_certificate(ectx: ESAPI, index: int) -> bytes | None:
    """The DER certificate stored at NV ``index``, or ``None`` when the index is not defined."""
    try:
        with tpm_call(f"reading NV index 0x{index:08x}"):
            return bytes(NVReadEK(ectx)(index))
    except NoSuchIndex:
        return None


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
    public, name, qualified = read_parsed_public(ectx, tr, f"0x{handle:08x}")
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
