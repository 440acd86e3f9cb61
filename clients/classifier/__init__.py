"""A small safety classifier on the untrusted side: it reads a request in the clear and signs only what its
rules allow; the loader runs only requests it signed (docs/safeguards.md)."""
