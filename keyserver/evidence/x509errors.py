"""What ``cryptography`` may raise while decoding hostile certificates and CRLs.

Most decoding errors are ``ValueError``, but not all: a duplicated extension and an unsupported general
name type raise their own exception classes, which derive from ``Exception`` only. Verifiers catch this
tuple so that every malformed certificate becomes a typed rejection (found by byte-flipping real quotes).
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import DuplicateExtension, UnsupportedGeneralNameType

X509_DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    DuplicateExtension,
    UnsupportedGeneralNameType,
)
