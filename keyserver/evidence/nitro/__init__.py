"""AWS Nitro Enclaves attestation documents (COSE_Sign1, ES384, AWS Nitro root pinned)."""

from .document import NitroDocument, parse_document
from .verify import AWS_NITRO_ROOT_SHA256, aws_nitro_root, verify_nitro_document

__all__ = [
    "AWS_NITRO_ROOT_SHA256",
    "NitroDocument",
    "aws_nitro_root",
    "parse_document",
    "verify_nitro_document",
]
