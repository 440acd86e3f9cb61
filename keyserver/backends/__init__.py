"""Key backends: where key-encryption keys live and wrapping happens (software, pkcs11, vault)."""
