"""What is measured for the loader, and the PCR value that results.

Two measurements go into one PCR, in this order:

1. the loader **image**: exactly the project files its process can import: the modules reachable by
   ``import`` statements (anywhere in a module, lazy imports included; not the bodies of ``if
   TYPE_CHECKING:``, which never run) from ``clients.loader.__main__`` and from the *parts* its measured
   configuration selects (:mod:`clients.loader.parts`: the TEE's collector, k of n, witnesses,
   safeguards, which the core loads by name only when configured), computed from the sources
   (:func:`import_closure`), never listed by hand; and, in each directory that
   holds one of them, every file that is not a Python source (a stray ``.pyc`` or ``.so`` next to the
   sources would be imported in their place). So a change to server code the loader does not import
   leaves the measurement as it was. Its digest is one SHA-256 over a canonical listing, so a build
   pipeline computes it from the build output alone. The boot
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

import ast
import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import clients
from clients.loader.config import CONFIG_DOMAIN as CONFIG_DOMAIN
from clients.loader.config import config_digest as config_digest
from clients.loader.parts import parts_of

IMAGE_DOMAIN = b"keyserver-loader-image-v1\x00"
# Where the loader starts. Third-party packages (numpy, cryptography, …) are not followed: they belong to
# the VM's root file system, which a real deployment measures as a whole (dm-verity); here they are the
# venv's. tests/clients/test_loader_image.py checks that a running loader imports nothing else.
LOADER_ENTRY = "clients.loader.__main__"
PROJECT_PACKAGES = ("clients", "audit", "keyserver", "policy", "threshold")


def repository_root() -> Path:
    return Path(clients.__file__).resolve().parent.parent


def _module_file(root: Path, module: str) -> Path | None:
    path = root.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) with no ``else``: its body never runs."""
    if not isinstance(node, ast.If) or node.orelse:
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those inside ``if TYPE_CHECKING:`` blocks."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(child for child in ast.iter_child_nodes(node) if not _type_checking_only(child))


def _imported_names(source: Path, module: str) -> set[str]:
    """Every module an ``import`` in ``source`` may load (``from a import b``: ``a`` and ``a.b``)."""
    is_package = source.name == "__init__.py"
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(source.read_bytes(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_closure(
    root: Path, entries: Iterable[str] = (LOADER_ENTRY,), without: Collection[str] = ()
) -> list[str]:
    """The project modules reachable from ``entries`` through import statements (with each module's
    parent packages, which Python imports first), sorted. ``without``: never follow an import of these
    modules or below them (what-if figures, clients/loader/image_report.py; empty for the image)."""
    seen: set[str] = set()
    pending = list(entries)
    while pending:
        module = pending.pop()
        parts = module.split(".")
        if parts[0] not in PROJECT_PACKAGES:
            continue
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name in seen or any(name == w or name.startswith(w + ".") for w in without):
                continue
            source = _module_file(root, name)
            if source is None:
                continue  # ``from package import name`` where name is not a module
            seen.add(name)
            pending.extend(_imported_names(source, name))
    return sorted(seen)


def loader_files(parts: Iterable[str], root: Path | None = None) -> list[Path]:
    """The files of the image of a loader with ``parts`` (:func:`clients.loader.parts.parts_of` of its
    configuration), in a fixed order: the import closure's sources, and every other file (but cached
    bytecode directories) in the directories that hold them."""
    base = root or repository_root()
    sources = {_module_file(base, name) for name in import_closure(base, (LOADER_ENTRY, *parts))}
    found: set[Path] = {path for path in sources if path is not None}
    for directory in {path.parent for path in found}:
        found.update(p for p in directory.iterdir() if p.is_file() and p.suffix != ".py")
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


def image_digest_for(config: Mapping[str, Any], root: Path | None = None) -> bytes:
    """The image digest of the loader this configuration document selects (what the boot chain extends)."""
    return image_digest(loader_files(parts_of(config), root), root)


def pcr_after_extends(digests: Iterable[bytes], initial: bytes = bytes(32)) -> bytes:
    """A SHA-256 PCR's value after extending ``digests`` in order from ``initial`` (all zeros at reset)."""
    value = initial
    for digest in digests:
        value = hashlib.sha256(value + digest).digest()
    return value
