"""What the boot chain measures for the loader, and the PCR value that results.

The loader *image* is its code (every Python file of the packages it runs) and its measured
configuration. Its digest is one SHA-256 over a canonical listing, so a build pipeline can compute it
from the build output alone, and from it the PCR value a freshly reset TPM will quote after the boot
chain extends it once — the reference value the CI signer publishes. Any changed, added or removed file
changes the digest.

In a real confidential VM the digest is extended by the measured-boot chain (UKI/IMA) before the loader
runs; a program cannot credibly measure itself. Here the demo and the tests play that part
(``clients.loader.collectors.tpm.extend_pcr``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import clients

IMAGE_DOMAIN = b"keyserver-loader-image-v1\x00"
# The repository packages the loader process imports from (relative to the repository's root). Whole
# packages, not a hand-kept list of modules: the loader imports pure modules of `keyserver` and `audit`
# (binding, JWE, checkpoints, Merkle proofs), and a module left out of the list would be code that runs
# unmeasured. Third-party packages (numpy, cryptography, …) belong to the VM's root file system, which a
# real deployment measures as a whole (dm-verity); here they are the venv's.
LOADER_PACKAGES = ("clients", "audit", "keyserver")


def repository_root() -> Path:
    return Path(clients.__file__).resolve().parent.parent


def loader_files(root: Path | None = None, packages: Iterable[str] = LOADER_PACKAGES) -> list[Path]:
    """Every Python file of the loader's packages, in a fixed order."""
    base = root or repository_root()
    found: set[Path] = set()
    for name in packages:
        path = base / name
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def image_digest(config: bytes, files: Iterable[Path], root: Path | None = None) -> bytes:
    """SHA-256 over the domain tag, then each file as (path, length, bytes), then the configuration.

    Lengths and paths are framed, so no two different images share a listing.
    """
    base = root or repository_root()
    h = hashlib.sha256(IMAGE_DOMAIN)
    for path in files:
        name = path.relative_to(base).as_posix().encode()
        data = path.read_bytes()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    h.update(b"config\x00" + len(config).to_bytes(8, "big") + config)
    return h.digest()


def pcr_after_extends(digests: Iterable[bytes], initial: bytes = bytes(32)) -> bytes:
    """A SHA-256 PCR's value after extending ``digests`` in order from ``initial`` (all zeros at reset)."""
    value = initial
    for digest in digests:
        value = hashlib.sha256(value + digest).digest()
    return value
