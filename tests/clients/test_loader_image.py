"""The loader's trusted code is what it runs and nothing else (issue: a small trusted loader).

- A fresh loader process, once it has imported everything it may run (the entry point and both
  collectors), has loaded no project file outside its measured image, and no third-party package outside
  a short allow-list: no web framework, no server package, no HTTP client library.
- The measurement is computed from the sources: a server-only change leaves it as it was, a change to a
  module the loader imports does not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from clients.loader.measure import image_digest, import_closure, loader_files, repository_root

# What the loader may import beyond the standard library and its own image. joserfc: the JWE unwrap
# (keyserver.jwe_unwrap); cbor2: the Nitro attestation document (COSE); _openssl and _cffi_backend: the native
# bindings of cryptography and tpm2-pytss.
THIRD_PARTY_ALLOWED = frozenset(
    {"cbor2", "cryptography", "numpy", "tpm2_pytss", "joserfc", "_cffi_backend", "_openssl"}
)
PROJECT = ("clients", "audit", "keyserver", "policy", "migrations", "threshold")

PROBE = """
import importlib, json, sys
before = set(sys.modules)
for name in ("main", "collectors.tpm", "collectors.tsm", "collectors.azure", "collectors.nitro",
             "collectors.nvidia_gpu"):
    importlib.import_module("clients.loader." + name)
loaded = {}
for name in set(sys.modules) - before:
    loaded[name] = getattr(sys.modules[name], "__file__", None)
print(json.dumps(loaded))
"""


def loaded_by_a_fresh_loader(tmp_path: Path) -> dict[str, str | None]:
    done = subprocess.run(
        [sys.executable, "-I", "-X", f"pycache_prefix={tmp_path / 'pycache'}", "-c", PROBE],
        cwd=repository_root(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    loaded: dict[str, str | None] = json.loads(done.stdout)
    return loaded


def test_a_loader_process_imports_only_its_image_and_allowed_packages(tmp_path: Path) -> None:
    root = repository_root()
    image = {path.resolve() for path in loader_files(root)}
    loaded = loaded_by_a_fresh_loader(tmp_path)
    project_files = {
        Path(file).resolve() for name, file in loaded.items() if name.split(".")[0] in PROJECT and file
    }
    assert project_files, "the probe imported no project module"
    assert project_files <= image, sorted(str(p) for p in project_files - image)
    third_party = {
        name.split(".")[0]
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] not in PROJECT
    }
    # Cython's and the interpreter's own helper modules are not packages anyone installs.
    third_party = {name for name in third_party if not name.startswith(("_cython_", "cython_runtime", "__"))}
    assert third_party <= THIRD_PARTY_ALLOWED, sorted(third_party - THIRD_PARTY_ALLOWED)
    for framework in ("litestar", "uvicorn", "httpx", "sqlalchemy", "starlette", "click", "rich"):
        assert framework not in third_party


def test_the_image_is_the_import_closure_and_holds_no_server_module() -> None:
    modules = import_closure(repository_root())
    assert "clients.loader.receipt" in modules
    assert "keyserver.jwe_unwrap" in modules
    assert "keyserver.jwe" not in modules  # the wrapping side is the server's
    assert "clients.loader.collectors.tpm" in modules  # imported lazily, measured all the same
    for server in ("keyserver.app", "keyserver.release", "keyserver.api", "keyserver.db", "clients.sdk"):
        assert not any(m == server or m.startswith(server + ".") for m in modules), server


def test_a_server_change_leaves_the_measurement_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "image"
    for package in ("clients", "audit", "keyserver"):
        shutil.copytree(
            repository_root() / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    reference = image_digest(loader_files(root), root)
    for server_file in (
        "keyserver/app.py",
        "keyserver/release.py",
        "audit/verifier.py",
        "clients/sdk/client.py",
    ):
        target = root / server_file
        target.write_text(target.read_text() + "\n# a server-only change\n")
        assert image_digest(loader_files(root), root) == reference, server_file
    # A new server module, even beside a measured one, is not imported by the loader: not measured.
    (root / "keyserver" / "new_route.py").write_text("X = 1\n")
    assert image_digest(loader_files(root), root) == reference
    # A module the loader imports is measured: changing it changes the PCR the tenant pins.
    shared = root / "keyserver" / "binding.py"
    shared.write_text(shared.read_text() + "\n# a protocol change\n")
    assert image_digest(loader_files(root), root) != reference
