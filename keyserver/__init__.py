"""keyserver: an independent, multi-tenant attestation and key-release service."""

__version__ = "0.1.0"
