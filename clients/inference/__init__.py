"""The untrusted inference front (clients/inference/server.py)."""
