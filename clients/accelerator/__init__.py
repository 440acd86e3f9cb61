"""The virtual accelerator inside the confidential VM: it holds the decrypted weights and runs only
programs signed by the tenant's CI signer, within hard limits. See docs/accelerator.md."""
