"""What is measured for the loader, and the PCR value that results.

Two measurements go into one PCR, in this order:

1. the loader **image**: every file of the repository packages it runs (not only ``*.py``: a stray
   ``.pyc`` or ``.so`` next to the sources would be imported in their place). Its digest is one SHA-256
   over a canonical listing, so a build pipeline computes it from the build output alone. The boot
   chain extends it before the loader runs (in a real VM: UKI/IMA; a program cannot credibly measure
   its own code). Here the demo and the tests play that part (``collectors.tpm.extend_pcr``).
2. the loader **configuration** it actually parsed: the loader extends its digest itself, before its
   first quote — measured code measuring its input before trusting it, as systemd-stub does with a
   command line. So whichever file the run-time ``--config`` names, what the loader trusts is in the PCR.

A freshly reset TPM then reports ``pcr_after_extends([image, config])``: the reference value the CI
signer publishes. Cached bytecode is kept out of the package directories: the loader refuses to run
unless Python was started with ``-I`` and ``-X pycache_prefix=…`` (``clients/loader/main.py``), so no
``__pycache__`` next to the sources is ever read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import clients

IMAGE_DOMAIN = b"keyserver-loader-image-v1\x00"
CONFIG_DOMAIN = b"keyserver-loader-config-v1\x00"
# The repository packages the loader process imports from (relative to the repository's root). Whole
# packages, not a hand-kept list of modules: the loader imports pure modules of `keyserver` and `audit`
# (binding, JWE, checkpoints, Merkle proofs), and a module left out of the list would be code that runs
# unmeasured. Third-party packages (numpy, cryptography, …) belong to the VM's root file system, which a
# real deployment measures as a whole (dm-verity); here they are the venv's.
LOADER_PACKAGES = ("clients", "audit", "keyserver")


def repository_root() -> Path:
    return Path(clients.__file__).resolve().parent.parent


def loader_files(root: Path | None = None, packages: Iterable[str] = LOADER_PACKAGES) -> list[Path]:
    """Every file of the loader's packages but cached bytecode directories, in a fixed order."""
    base = root or repository_root()
    found: set[Path] = set()
    for name in packages:
        path = base / name
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def image_digest(files: Iterable[Path], root: Path | None = None) -> bytes:
    """SHA-256 over the domain tag, then each file as (path, length, bytes).

    Lengths and paths are framed, so no two different images share a listing.
    """
    base = root or repository_root()
    h = hashlib.sha256(IMAGE_DOMAIN)
    for path in files:
        name = path.relative_to(base).as_posix().encode()
        data = path.read_bytes()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    return h.digest()


def config_digest(canonical_config: bytes) -> bytes:
    """What the loader extends for the configuration it parsed (its canonical bytes)."""
    return hashlib.sha256(CONFIG_DOMAIN + canonical_config).digest()


def pcr_after_extends(digests: Iterable[bytes], initial: bytes = bytes(32)) -> bytes:
    """A SHA-256 PCR's value after extending ``digests`` in order from ``initial`` (all zeros at reset)."""
    value = initial
    for digest in digests:
        value = hashlib.sha256(value + digest).digest()
    return value
