"""The TPM plumbing the TPM collector and AK provisioning share: opening an ESAPI, turning TSS errors into
typed ones, flushing every transient handle, and authorising the endorsement key.

**One ESAPI per operation.** Every public function opens its own ESAPI on the TCTI string and closes it
before returning. A TPM without a resource manager (swtpm; a bare ``/dev/tpm0``) keeps whatever a client
leaves loaded, and swtpm has only three transient object slots, so holding a context across operations
would only hold on to state that can go stale (a TPM reset drops every transient handle and session).
Opening costs one TCTI connection, negligible next to a quote.

**Every transient handle and session is flushed in ``finally``.** If the flush itself fails while another
error is propagating, the original error stays the one raised and carries a note about the flush.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE, TPMT_SYM_DEF
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from clients.loader.collectors.errors import TpmEkMissing, TpmError
from keyserver.evidence.tpm import structures as st

# TCG EK Credential Profile: the RSA-2048 EK (template L-1) and the NV index of its certificate.
EK_RSA2048_HANDLE = 0x81010001
EK_RSA2048_CERT_NV_INDEX = 0x01C00002
_PERSISTENT_FIRST = 0x81000000
_PERSISTENT_LAST = 0x81FFFFFF


@contextmanager
def tpm_call(what: str) -> Iterator[None]:
    """Run TPM commands; a TSS failure becomes :class:`TpmError` naming ``what``."""
    try:
        yield
    except TSS2_Exception as exc:
        raise TpmError(f"{what} failed: {exc} (TPM response code 0x{int(exc.rc):x})") from exc


@contextmanager
def open_esapi(tcti: str) -> Iterator[ESAPI]:
    """An ESAPI on ``tcti`` (``device:/dev/tpmrm0``, ``swtpm:host=127.0.0.1,port=2321``), closed on exit."""
    try:
        ectx = ESAPI(tcti)
    except TSS2_Exception as exc:
        raise TpmError(
            f"cannot open the TPM through TCTI {tcti!r}: {exc}. Check that the TPM (or swtpm) is running and "
            "that this process may open it"
        ) from exc
    try:
        yield ectx
    finally:
        ectx.close()


def flush(ectx: ESAPI, handle: ESYS_TR, what: str) -> None:
    with tpm_call(f"flushing the {what}"):
        ectx.flush_context(handle)


@contextmanager
def flushed(ectx: ESAPI, handle: ESYS_TR, what: str) -> Iterator[ESYS_TR]:
    """Yield ``handle`` and flush it afterwards, whatever happens in between."""
    try:
        yield handle
    except BaseException as original:
        try:
            flush(ectx, handle, what)
        except TpmError as flush_error:
            original.add_note(f"and the {what} could not be flushed: {flush_error.message}")
        raise
    flush(ectx, handle, what)


def require_persistent_handle(handle: int, what: str) -> None:
    if not _PERSISTENT_FIRST <= handle <= _PERSISTENT_LAST:
        raise ValueError(
            f"the {what} handle 0x{handle:08x} is not a persistent handle (0x81000000-0x81ffffff)"
        )


def persistent_exists(ectx: ESAPI, handle: int) -> bool:
    """Whether a persistent object lives at ``handle`` (asked without touching it)."""
    with tpm_call("TPM2_GetCapability(handles)"):
        _, data = ectx.get_capability(TPM2_CAP.HANDLES, handle, 1)
    handles = data.data.handles
    # Index by count: iterating a TPML in tpm2-pytss 3.0 runs past the count into the raw array.
    return handles.count > 0 and int(handles[0]) == handle


def read_public(ectx: ESAPI, handle: ESYS_TR, what: str) -> tuple[st.TpmtPublic, bytes, bytes]:
    """The parsed public area, Name and qualified Name the TPM reports for a loaded object."""
    with tpm_call(f"TPM2_ReadPublic({what})"):
        public, name, qualified = ectx.read_public(handle)
    return st.parse_tpm2b_public(bytes(public.marshal())), bytes(name), bytes(qualified)


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
    ek, _, _ = read_public(ectx, handle, "EK")
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
