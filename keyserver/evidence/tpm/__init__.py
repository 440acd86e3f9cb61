"""TPM 2.0 evidence verification: pure functions from bytes (+ roots, + time) to claims.

Modules:

* :mod:`.structures` - strict parsers/serialisers for the TPM wire structures a verifier sees
  (TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, TPML_PCR_SELECTION), Names and qualified Names, and the
  conversion of a TPM public area to a ``cryptography`` key and back.
* :mod:`.quote` - ``verify_quote``: AK signature over TPMS_ATTEST, nonce, PCR selection and digest.
* :mod:`.eventlog` - TCG PC Client firmware event logs: parse, replay, compare with a quote, UEFI claims.
* :mod:`.credential` - ``make_credential`` (TPM2_MakeCredential in software) for RSA and ECC EKs.
* :mod:`.ek` - EK and AK certificate verification against configured CA certificates.
* :mod:`.files` - the file front-end of ``keyserver evidence verify --tee tpm`` / ``evidence eventlog``.

Nothing here but :mod:`.files` does I/O, and nothing consults policy; every rejection is an
:class:`~keyserver.errors.EvidenceError` whose ``reason`` is a stable kebab-case code.
"""

from __future__ import annotations
