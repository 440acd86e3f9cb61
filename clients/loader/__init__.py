"""The trusted loader that runs in the confidential VM (docs/clients.md)."""
