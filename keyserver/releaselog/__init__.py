"""The release log, stored: per-tenant Merkle trees in the database, their signing keys, appends."""
