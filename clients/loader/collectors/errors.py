"""Typed errors of the evidence collectors.

Every error carries a stable ``reason`` (for the loader's one-line refusal and for tests) and a message
that says what to do. A collector never returns evidence it has doubts about: anything unexpected from
the TPM or the kernel is one of these, never a partial or guessed evidence dict.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base of every error a collector raises on purpose."""

    reason: str = "collector-error"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.reason}: {message}")
        self.message = message


class BindingInvalid(CollectorError):
    """The binding handed to ``collect`` is not the 64 bytes of keyserver.binding.binding()."""

    reason = "binding-invalid"


class CollectorConfigInvalid(CollectorError):
    """The collector was configured with something it cannot use (a malformed PCR selection, ...)."""

    reason = "collector-config-invalid"


# --- TPM ----------------------------------------------------------------------------------------------


class TpmError(CollectorError):
    """A TPM command failed; the message names the command and the TPM's response code."""

    reason = "tpm-error"


class TpmEkMissing(CollectorError):
    """No endorsement key at the persistent handle the caller named."""

    reason = "tpm-ek-missing"


class TpmAkHandleOccupied(CollectorError):
    """The persistent handle meant for the AK holds a key that is not an AK of the expected shape under
    this EK. It is never evicted for the caller: it may be someone else's key."""

    reason = "tpm-ak-handle-occupied"


class TpmAkInvalid(CollectorError):
    """The handle given as an AK is absent or not a restricted signing key."""

    reason = "tpm-ak-invalid"


class TpmQuoteInconsistent(CollectorError):
    """The quote does not match the PCR values read next to it (they kept changing), or does not carry
    the qualifying data that was asked for."""

    reason = "tpm-quote-inconsistent"


class EventLogUnreadable(CollectorError):
    reason = "tpm-event-log-unreadable"


# --- configfs-tsm (SEV-SNP, TDX) ----------------------------------------------------------------------


class TsmUnavailable(CollectorError):
    """The configfs-tsm report interface is absent, has no provider, or is not ours to use."""

    reason = "tsm-unavailable"


class TsmProviderMismatch(CollectorError):
    """The kernel's TSM provider is not the one for the TEE the collector was built for."""

    reason = "tsm-provider-mismatch"


class TsmGenerationRace(CollectorError):
    """Another writer changed the report entry between our write and our read, every time we tried."""

    reason = "tsm-generation-race"


class TsmAttributeMissing(CollectorError):
    """A configfs-tsm attribute file the ABI promises is not there."""

    reason = "tsm-attribute-missing"


class TsmReportFailed(CollectorError):
    """The kernel refused to produce the report (the read of outblob/auxblob failed)."""

    reason = "tsm-report-failed"


class TsmMalformed(CollectorError):
    """What the kernel returned has the wrong size or shape for the provider's format."""

    reason = "tsm-malformed"


class CertTableMalformed(TsmMalformed):
    """The SEV-SNP auxblob is not a well-formed GHCB certificate table."""

    reason = "snp-cert-table-malformed"


class SnpCertificateMissing(CollectorError):
    """The auxblob carries no certificate for the key that signed the report (VCEK or VLEK)."""

    reason = "snp-certificate-missing"


class ReportDataMismatch(CollectorError):
    """The report's user-data field is not the binding written to inblob."""

    reason = "report-data-mismatch"


class GpuUnavailable(CollectorError):
    """NVML is not there, or names no GPU, or fails to produce a GPU's report or certificates."""

    reason = "gpu-unavailable"


class GpuNotConfidential(CollectorError):
    """The GPUs are not in confidential-computing mode, or CC dev tools are on (the report cannot say it)."""

    reason = "gpu-not-confidential"


class GpuReportMismatch(CollectorError):
    """A GPU report does not answer the nonce the loader asked it to sign, or does not parse."""

    reason = "gpu-report-mismatch"


# --- Azure CVM vTPM and AWS Nitro (issue 19) -------------------------------------------------------------


class AzureHclReportInvalid(CollectorError):
    """The vTPM NV index does not hold an HCL report the keyserver could verify."""

    reason = "azure-hcl-report-invalid"


class NsmError(CollectorError):
    """The Nitro Secure Module refused the request or answered something that is not a document."""

    reason = "nsm-error"
