"""AWS Nitro Enclaves attestation documents (COSE_Sign1, ES384, AWS Nitro root pinned).

Only the document parser is re-exported here: the loader's collector imports this package, so the
verifier (:mod:`.verify`, the server's) is not imported with it.
"""

from .document import NitroDocument, parse_document

__all__ = ["NitroDocument", "parse_document"]
