"""TPM 2.0 evidence through tpm2-pytss: a quote by the loader's AK over a PCR selection, with the first 32
bytes of the binding as ``qualifyingData`` (docs/binding.md), in the form the keyserver's release accepts
(docs/tpm.md §2):

    {"tee": "tpm", "ak_name": hex, "quote": b64 TPMS_ATTEST, "signature": b64 TPMT_SIGNATURE,
     "pcrs": {"sha256": {"10": hex}}, "event_log": b64}      # event_log only when configured

Also the measured-boot step (:func:`extend_pcr`) and, re-exported from :mod:`.tpm_ak`, the AK's
provisioning and enrolment. Each call opens and closes its own ESAPI (:mod:`.tpm_esapi`).
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMU_HA

from clients.loader.collectors.base import require_binding
from clients.loader.collectors.errors import (
    CollectorConfigInvalid,
    EventLogUnreadable,
    TpmAkInvalid,
    TpmError,
    TpmQuoteInconsistent,
)
from clients.loader.collectors.tpm_ak import (
    AK_ATTRIBUTES,
    DEFAULT_AK_HANDLE,
    EnrolmentMaterial,
    ProvisionedAk,
    activate_credential,
    enrolment_material,
    provision_ak,
)
from clients.loader.collectors.tpm_esapi import (
    EK_RSA2048_CERT_NV_INDEX,
    EK_RSA2048_HANDLE,
    open_esapi,
    persistent_exists,
    read_public,
    require_persistent_handle,
    tpm_call,
)
from keyserver.binding import report_data_for
from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_TPM
from keyserver.evidence.tpm import structures as st

__all__ = [
    "DEFAULT_AK_HANDLE",
    "EK_RSA2048_CERT_NV_INDEX",
    "EK_RSA2048_HANDLE",
    "EnrolmentMaterial",
    "PcrSelection",
    "ProvisionedAk",
    "TpmCollector",
    "activate_credential",
    "enrolment_material",
    "extend_pcr",
    "provision_ak",
]

PCR_COUNT = 24
# The banks the keyserver can replay and claim (keyserver.evidence.tpm.structures.HASH_BY_NAME).
_BANKS = ("sha1", "sha256", "sha384", "sha512")
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


def _quote_matches(attest: st.Attest, signature: st.Signature, pcrs: dict[str, dict[int, bytes]]) -> bool:
    """Whether the quoted pcrDigest is the digest of ``pcrs`` (hashed with the signature's hash, in the
    quote's own selection order, as the keyserver recomputes it)."""
    assert isinstance(attest.attested, st.QuoteInfo)
    h = st.hash_alg(signature.hash_alg, "TPMT_SIGNATURE").new()
    for selected in attest.attested.pcr_select:
        for index in selected.pcrs:
            h.update(pcrs[selected.bank.name][index])
    return hmac.compare_digest(h.digest(), attest.attested.pcr_digest)


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
            attest_raw, signature_raw, pcrs = self._consistent_quote(ectx, ak, qualifying)
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
        if public.object_attributes & AK_ATTRIBUTES != AK_ATTRIBUTES or public.name() != name:
            raise TpmAkInvalid(
                f"the key at 0x{self.ak_handle:08x} is not a restricted signing key "
                f"({public.attribute_names()}); the keyserver would not trust its quotes"
            )
        return ak, name

    def _consistent_quote(
        self, ectx: ESAPI, ak: ESYS_TR, qualifying: bytes
    ) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
        for _ in range(QUOTE_ATTEMPTS):
            with tpm_call(f"TPM2_Quote({self.selection})"):
                attest_blob, signature_blob = ectx.quote(ak, str(self.selection), qualifying)
            attest_raw, signature_raw = bytes(attest_blob), bytes(signature_blob.marshal())
            pcrs = _read_pcrs(ectx, self.selection)
            try:
                attest, signature = st.parse_attest(attest_raw), st.parse_signature(signature_raw)
            except EvidenceError as exc:
                raise TpmQuoteInconsistent(
                    f"the TPM returned a quote that does not parse: {exc.message}"
                ) from exc
            if attest.type != st.ST_ATTEST_QUOTE or not hmac.compare_digest(attest.extra_data, qualifying):
                raise TpmQuoteInconsistent("the TPM's quote does not carry the qualifying data asked for")
            assert isinstance(attest.attested, st.QuoteInfo)
            quoted = {(s.bank.name, s.pcrs) for s in attest.attested.pcr_select if s.pcrs}
            if quoted != set(self.selection.banks):
                raise TpmQuoteInconsistent(
                    f"the TPM quoted {sorted(quoted)}, not the selection {self.selection}"
                )
            if _quote_matches(attest, signature, pcrs):
                return attest_raw, signature_raw, pcrs
        raise TpmQuoteInconsistent(
            f"the PCRs {self.selection} changed between the quote and the read next to it "
            f"{QUOTE_ATTEMPTS} times running; something keeps extending them"
        )

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


def extend_pcr(tcti: str, pcr: int, sha256_digest: bytes) -> None:
    """Extend the SHA-256 bank of PCR ``pcr`` with ``sha256_digest`` (the measured-boot step: measure the
    loader image before it runs). Other banks are left as they are; the keyserver claims SHA-256."""
    if not 0 <= pcr < PCR_COUNT:
        raise ValueError(f"PCR index {pcr} is not in 0..{PCR_COUNT - 1}")
    if len(sha256_digest) != st.HASH_BY_NAME["sha256"].size:
        raise ValueError(f"a SHA-256 digest is 32 bytes, not {len(sha256_digest)}")
    digests = TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=st.ALG_SHA256, digest=TPMU_HA(sha256=bytes(sha256_digest)))]
    )
    with open_esapi(tcti) as ectx, tpm_call(f"TPM2_PCR_Extend(PCR {pcr}, sha256)"):
        ectx.pcr_extend(ESYS_TR.parse(f"PCR{pcr}"), digests)
