"""TPM 2.0 evidence through tpm2-pytss: a quote by the loader's AK over a PCR selection, with the first 32
bytes of the binding as ``qualifyingData`` (docs/binding.md), in the form the keyserver's release accepts
(docs/tpm.md §2):

    {"tee": "tpm", "ak_name": hex, "quote": b64 TPMS_ATTEST, "signature": b64 TPMT_SIGNATURE,
     "pcrs": {"sha256": {"10": hex}}, "event_log": b64}      # event_log only when configured

Also the measured-boot step (:func:`extend_pcr`). Each call opens and closes its own ESAPI
(:mod:`.tpm_esapi`). The AK's provisioning and enrolment (:mod:`.tpm_ak`) run before the loader, not in
it: they are not part of its image. The loader checks its own TPM's answers with tpm2-pytss's marshalling
(the library that talks to the TPM anyway), not with the keyserver's strict parser of untrusted evidence
(``keyserver.evidence.tpm.structures``), which is server code.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMT_HA,
    TPMT_SIGNATURE,
    TPMU_HA,
)

from clients.loader.collectors.base import require_binding
from clients.loader.collectors.errors import (
    CollectorConfigInvalid,
    EventLogUnreadable,
    TpmAkInvalid,
    TpmError,
    TpmQuoteInconsistent,
)
from clients.loader.collectors.tpm_esapi import (
    open_esapi,
    persistent_exists,
    read_public,
    require_persistent_handle,
    tpm_call,
)
from keyserver.binding import report_data_for
from keyserver.evidence.claims import TEE_TPM

__all__ = [
    "AK_ATTRIBUTES",
    "DEFAULT_AK_HANDLE",
    "PcrSelection",
    "TpmCollector",
    "extend_pcr",
    "loader_collector",
]

DEFAULT_AK_HANDLE = 0x81010020
# A restricted signing key made in this TPM (docs/tpm.md §1): what the keyserver enrols as an AK.
AK_ATTRIBUTES = int(
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
PCR_COUNT = 24
# The banks the keyserver can replay and claim (keyserver.evidence.tpm.structures.HASH_BY_NAME), by the
# TPM's algorithm identifier.
_BANK_ALGS = {int(TPM2_ALG.SHA1): "sha1", int(TPM2_ALG.SHA256): "sha256", int(TPM2_ALG.SHA384): "sha384",
              int(TPM2_ALG.SHA512): "sha512"}  # fmt: skip
_BANKS = tuple(_BANK_ALGS.values())
_SELECTION_RE = re.compile(r"[a-z0-9]+:\d{1,2}(,\d{1,2})*")
# A TCG event log is a few hundred KiB at most; the keyserver takes evidence fields up to 4 MiB.
MAX_EVENT_LOG_BYTES = 3 * 1024 * 1024
# PCRs can change between the quote and the read next to it (another process extending): a few
# attempts, then refuse rather than send evidence the keyserver would reject.
QUOTE_ATTEMPTS = 3


@dataclass(frozen=True)
class PcrSelection:
    """A validated ``bank:i,j+bank:k`` selection, banks and indices in the order given."""

    banks: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        banks: list[tuple[str, tuple[int, ...]]] = []
        for part in text.split("+"):
            if not _SELECTION_RE.fullmatch(part):
                raise CollectorConfigInvalid(
                    f"PCR selection {text!r}: {part!r} is not bank:index[,index...] (e.g. sha256:0,7,10)"
                )
            bank, indices_text = part.split(":")
            indices = tuple(int(i) for i in indices_text.split(","))
            if bank not in _BANKS:
                raise CollectorConfigInvalid(f"PCR selection {text!r}: bank {bank!r} is not one of {_BANKS}")
            if any(i >= PCR_COUNT for i in indices) or len(set(indices)) != len(indices):
                raise CollectorConfigInvalid(
                    f"PCR selection {text!r}: the {bank} indices must be distinct and below {PCR_COUNT}"
                )
            if bank in (b for b, _ in banks):
                raise CollectorConfigInvalid(f"PCR selection {text!r} names bank {bank} twice")
            banks.append((bank, tuple(sorted(indices))))
        return cls(tuple(banks))

    def __str__(self) -> str:
        return "+".join(f"{bank}:{','.join(str(i) for i in indices)}" for bank, indices in self.banks)


def _read_pcrs(ectx: ESAPI, selection: PcrSelection) -> dict[str, dict[int, bytes]]:
    """Each selected PCR, one TPM2_PCR_Read per PCR (one read returns at most 8 digests, and asking one
    at a time makes an inactive bank an error instead of a silently shorter answer)."""
    values: dict[str, dict[int, bytes]] = {}
    for bank, indices in selection.banks:
        for index in indices:
            with tpm_call(f"TPM2_PCR_Read({bank}:{index})"):
                _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"{bank}:{index}"))
            if digests.count != 1:
                raise TpmError(
                    f"the TPM returned no value for PCR {bank}:{index}: is the {bank} bank active?"
                )
            values.setdefault(bank, {})[index] = bytes(digests[0])
    return values


def _unmarshal_whole(kind: type[TPMS_ATTEST] | type[TPMT_SIGNATURE], data: bytes) -> Any:
    try:
        value, used = kind.unmarshal(data)
    except Exception as exc:  # tpm2-pytss raises its TSS2_Exception (or a ctypes error) on short input
        raise TpmQuoteInconsistent(f"the TPM returned a {kind.__name__} that does not parse: {exc}") from exc
    if used != len(data):
        raise TpmQuoteInconsistent(f"the TPM returned {len(data) - used} bytes after its {kind.__name__}")
    return value


def _quoted_pcrs(attest: TPMS_ATTEST) -> list[tuple[str, tuple[int, ...]]]:
    """The (bank, PCR indices) a quote's TPMS_QUOTE_INFO selects, in its order; a bank the keyserver cannot
    claim is refused."""
    selections = attest.attested.quote.pcrSelect
    quoted = []
    for position in range(selections.count):  # index by count: iterating a TPML runs past it (tpm2-pytss)
        selection = selections.pcrSelections[position]
        bank = _BANK_ALGS.get(int(selection.hash))
        if bank is None:
            raise TpmQuoteInconsistent(
                f"the TPM quoted a bank the keyserver does not claim (0x{selection.hash:04x})"
            )
        bitmap = bytes(selection.pcrSelect)[: selection.sizeofSelect]
        quoted.append((bank, tuple(i for i in range(8 * len(bitmap)) if bitmap[i // 8] >> (i % 8) & 1)))
    return quoted


def check_quote(
    attest_raw: bytes,
    signature_raw: bytes,
    qualifying: bytes,
    selection: PcrSelection,
    pcrs: dict[str, dict[int, bytes]],
) -> bool:
    """Whether the TPM's quote is of ``pcrs`` as read: its pcrDigest is their digest (hashed with the
    signature's hash, in the quote's own selection order, as the keyserver recomputes it). A quote that is
    not a quote, carries other qualifying data or selects other PCRs than asked is refused outright: the
    keyserver would reject it, and a retry would not help."""
    attest: TPMS_ATTEST = _unmarshal_whole(TPMS_ATTEST, attest_raw)
    signature: TPMT_SIGNATURE = _unmarshal_whole(TPMT_SIGNATURE, signature_raw)
    if attest.type != TPM2_ST.ATTEST_QUOTE or not hmac.compare_digest(bytes(attest.extraData), qualifying):
        raise TpmQuoteInconsistent("the TPM's quote does not carry the qualifying data asked for")
    quoted = _quoted_pcrs(attest)
    if {(bank, indices) for bank, indices in quoted if indices} != set(selection.banks):
        raise TpmQuoteInconsistent(f"the TPM quoted {sorted(quoted)}, not the selection {selection}")
    hash_name = _BANK_ALGS.get(int(signature.signature.any.hashAlg))
    if hash_name is None:
        raise TpmQuoteInconsistent(
            f"the quote is signed with an unknown hash (0x{signature.signature.any.hashAlg:04x})"
        )
    h = hashlib.new(hash_name)
    for bank, indices in quoted:
        for index in indices:
            h.update(pcrs[bank][index])
    return hmac.compare_digest(h.digest(), bytes(attest.attested.quote.pcrDigest))


class TpmCollector:
    """Quotes ``pcr_selection`` with the persistent AK at ``ak_handle``; see the module docstring.

    ``event_log``: path of a TCG PC Client event log (``/sys/kernel/security/tpm0/binary_bios_measurements``)
    read at every collect and sent along; the keyserver replays it against the quoted PCRs.
    """

    tee = TEE_TPM

    def __init__(
        self,
        tcti: str,
        ak_handle: int = DEFAULT_AK_HANDLE,
        pcr_selection: str = "sha256:10",
        *,
        event_log: Path | None = None,
    ) -> None:
        require_persistent_handle(ak_handle, "AK")
        self.tcti = tcti
        self.ak_handle = ak_handle
        self.selection = PcrSelection.parse(pcr_selection)
        self.event_log = event_log

    def collect(self, binding: bytes) -> dict[str, Any]:
        qualifying = report_data_for(TEE_TPM, require_binding(binding))
        with open_esapi(self.tcti) as ectx:
            ak, ak_name = self._load_ak(ectx)
            attest_raw, signature_raw, pcrs = consistent_quote(ectx, ak, self.selection, qualifying)
        evidence: dict[str, Any] = {
            "tee": TEE_TPM,
            "ak_name": ak_name.hex(),
            "quote": base64.b64encode(attest_raw).decode(),
            "signature": base64.b64encode(signature_raw).decode(),
            "pcrs": {bank: {str(i): v.hex() for i, v in sorted(vals.items())} for bank, vals in pcrs.items()},
        }
        if self.event_log is not None:
            evidence["event_log"] = base64.b64encode(self._read_event_log()).decode()
        return evidence

    def _load_ak(self, ectx: ESAPI) -> tuple[ESYS_TR, bytes]:
        if not persistent_exists(ectx, self.ak_handle):
            raise TpmAkInvalid(f"no AK at 0x{self.ak_handle:08x}; provision it first (provision_ak)")
        with tpm_call(f"loading the AK at 0x{self.ak_handle:08x}"):
            ak = ectx.tr_from_tpmpublic(self.ak_handle)
        public, name, _ = read_public(ectx, ak, "AK")
        attributes = int(public.publicArea.objectAttributes)
        if attributes & AK_ATTRIBUTES != AK_ATTRIBUTES or bytes(public.get_name()) != name:
            raise TpmAkInvalid(
                f"the key at 0x{self.ak_handle:08x} is not a restricted signing key "
                f"({TPMA_OBJECT(attributes)}); the keyserver would not trust its quotes"
            )
        return ak, name

    def _read_event_log(self) -> bytes:
        assert self.event_log is not None
        try:
            with self.event_log.open("rb") as handle:
                data = handle.read(MAX_EVENT_LOG_BYTES + 1)
        except OSError as exc:
            raise EventLogUnreadable(f"cannot read the event log {self.event_log}: {exc}") from exc
        if len(data) > MAX_EVENT_LOG_BYTES:
            raise EventLogUnreadable(f"the event log {self.event_log} exceeds {MAX_EVENT_LOG_BYTES} bytes")
        return data


def consistent_quote(
    ectx: ESAPI, ak: ESYS_TR, selection: PcrSelection, qualifying: bytes
) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
    """A quote of ``selection`` with ``qualifying`` and the PCR values it covers, read right after it."""
    for _ in range(QUOTE_ATTEMPTS):
        with tpm_call(f"TPM2_Quote({selection})"):
            attest_blob, signature_blob = ectx.quote(ak, str(selection), qualifying)
        attest_raw, signature_raw = bytes(attest_blob), bytes(signature_blob.marshal())
        pcrs = _read_pcrs(ectx, selection)
        if check_quote(attest_raw, signature_raw, qualifying, selection, pcrs):
            return attest_raw, signature_raw, pcrs
    raise TpmQuoteInconsistent(
        f"the PCRs {selection} changed between the quote and the read next to it "
        f"{QUOTE_ATTEMPTS} times running; something keeps extending them"
    )


def extend_pcr(tcti: str, pcr: int, sha256_digest: bytes) -> None:
    """Extend the SHA-256 bank of PCR ``pcr`` with ``sha256_digest`` (the measured-boot step: measure the
    loader image before it runs). Other banks are left as they are; the keyserver claims SHA-256."""
    if not 0 <= pcr < PCR_COUNT:
        raise ValueError(f"PCR index {pcr} is not in 0..{PCR_COUNT - 1}")
    if len(sha256_digest) != hashlib.sha256().digest_size:
        raise ValueError(f"a SHA-256 digest is 32 bytes, not {len(sha256_digest)}")
    digests = TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=bytes(sha256_digest)))]
    )
    with open_esapi(tcti) as ectx, tpm_call(f"TPM2_PCR_Extend(PCR {pcr}, sha256)"):
        ectx.pcr_extend(ESYS_TR.parse(f"PCR{pcr}"), digests)


def loader_collector(tee: str, args: argparse.Namespace, pcr_selection: str) -> TpmCollector:
    """The loader's collector for its measured configuration's ``"tee": "tpm"`` (clients/loader/parts.py)."""
    return TpmCollector(args.tcti, int(args.ak_handle, 0), pcr_selection=pcr_selection)
