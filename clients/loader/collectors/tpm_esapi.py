"""The TPM plumbing the TPM collectors and AK provisioning share: opening an ESAPI, turning TSS errors into
typed ones, flushing every transient handle. (Authorising the endorsement key is provisioning's alone:
:mod:`.tpm_ak`, which runs before the loader and is not part of its image.)

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
from tpm2_pytss.constants import ESYS_TR, TPM2_CAP
from tpm2_pytss.types import TPM2B_PUBLIC

from clients.loader.collectors.errors import TpmError

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


def read_public(ectx: ESAPI, handle: ESYS_TR, what: str) -> tuple[TPM2B_PUBLIC, bytes, bytes]:
    """The public area, Name and qualified Name the TPM reports for a loaded object."""
    with tpm_call(f"TPM2_ReadPublic({what})"):
        public, name, qualified = ectx.read_public(handle)
    return public, bytes(name), bytes(qualified)
