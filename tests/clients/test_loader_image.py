"""The loader's trusted code is what it runs and nothing else (issue: a small trusted loader).

- A loader's image is its core plus the parts its measured configuration selects (clients/loader/parts.py).
  A fresh loader process that parses a configuration and builds its collector has loaded no project file
  outside that configuration's image, no part the configuration does not name, and no third-party package
  outside a short allow-list: no web framework, no server package, no HTTP client library.
- The measurement is computed from the sources: a server-only change leaves it as it was, a change to a
  module the loader imports does not, and a change to a part another configuration selects leaves this
  configuration's image as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.checkpoint import vkey_for
from audit.cosignature import cosigner_vkey
from clients.loader.config import config_document, threshold_config_document
from clients.loader.measure import LOADER_ENTRY, image_digest, import_closure, loader_files, repository_root
from clients.loader.parts import ALL_PARTS, GPUS, SAFEGUARDS, TEE_PARTS, THRESHOLD, WITNESSES, parts_of
from clients.loader.witnesses import witness_trust_document
from threshold import KeyIdentity, split

# What the loader may import beyond the standard library and its own image. joserfc: the JWE unwrap
# (keyserver.jwe_unwrap); cbor2: the Nitro attestation document (COSE); _openssl and _cffi_backend: the native
# bindings of cryptography and tpm2-pytss.
THIRD_PARTY_ALLOWED = frozenset(
    {"cbor2", "cryptography", "numpy", "tpm2_pytss", "joserfc", "_cffi_backend", "_openssl"}
)
PROJECT = ("clients", "audit", "keyserver", "policy", "migrations", "threshold")

# Parse the configuration as the loader does, then build its collector (no device here: the constructor or
# its first use fails, after the collector's module is imported, which is what is measured).
PROBE = """
import json, sys
before = set(sys.modules)
from clients.loader import main
from clients.loader.config import LoaderConfig
config = LoaderConfig.from_document(json.loads(sys.argv[1]))
args = main.parser().parse_args(["--config", "c", "--keyserver", "http://127.0.0.1:9", "--weights", "w",
                                 "--tsm-root", sys.argv[2], "--tcti", "device:/nonexistent"])
try:
    main.collector_for(args, config)
except Exception:
    pass
main.refusal(RuntimeError("the boot's error path runs too"))
print(json.dumps({n: getattr(sys.modules[n], "__file__", None) for n in set(sys.modules) - before}))
"""


def _pem(key: ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def _new_key() -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PrivateKey.generate().public_key()


def configuration(tee: str = "tpm", *, gpus: bool = False, **members: Any) -> dict[str, Any]:
    """A valid configuration for ``tee``; ``witnesses``/``safeguards``/``threshold`` add those parts."""
    signers = {"ci": _pem(_new_key())}
    safeguards = {"classifier_keys": {"safety": _pem(_new_key())}} if members.get("safeguards") else None
    witnesses = (
        witness_trust_document([cosigner_vkey("w1.example", _new_key())], 1, 600)
        if members.get("witnesses")
        else None
    )
    if members.get("threshold"):
        commitment = split(bytes(32), KeyIdentity("weights", 1, 2, 3))[1]
        keyservers = [
            {
                "name": name,
                "tenant": "acme",
                "key": "weights-share",
                "log": {
                    "verifier_key": vkey_for(f"{name}.example/acme", _new_key()),
                    "origin": f"{name}.example/acme",
                },
                **({"witnesses": witnesses} if witnesses else {}),
            }
            for name in ("ks-a", "ks-b", "ks-c")
        ]
        document = threshold_config_document(
            commitment=commitment.to_json(), keyservers=keyservers, program_signers=signers, tee=tee
        )
        return document | ({"safeguards": safeguards} if safeguards else {})
    return config_document(
        tee=tee,
        gpus=gpus,
        tenant="acme",
        key="weights",
        log_verifier_key=vkey_for("keyserver.test/acme", _new_key()),
        log_origin="keyserver.test/acme",
        program_signers=signers,
        witnesses=witnesses,
        safeguards=safeguards,
    )


CONFIGURATIONS = {
    "tpm": configuration("tpm"),
    "sev-snp": configuration("sev-snp"),
    "tdx": configuration("tdx"),
    "azure-snp-vtpm": configuration("azure-snp-vtpm"),
    "aws-nitro": configuration("aws-nitro"),
    "tpm+gpus": configuration("tpm", gpus=True),
    "tpm+witnesses": configuration("tpm", witnesses=True),
    "tpm+safeguards": configuration("tpm", safeguards=True),
    "tdx+threshold+witnesses+safeguards": configuration(
        "tdx", threshold=True, witnesses=True, safeguards=True
    ),
}


def loaded_by_a_fresh_loader(tmp_path: Path, document: dict[str, Any]) -> dict[str, str | None]:
    done = subprocess.run(
        [sys.executable, "-I", "-X", f"pycache_prefix={tmp_path / 'pycache'}", "-c", PROBE,
         json.dumps(document), str(tmp_path / "no-tsm")],
        cwd=repository_root(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    loaded: dict[str, str | None] = json.loads(done.stdout)
    return loaded


def test_each_configuration_selects_its_parts() -> None:
    assert parts_of(CONFIGURATIONS["tpm"]) == (TEE_PARTS["tpm"],)
    assert parts_of(CONFIGURATIONS["sev-snp"]) == parts_of(CONFIGURATIONS["tdx"]) == (TEE_PARTS["tdx"],)
    assert parts_of(CONFIGURATIONS["tpm+gpus"]) == tuple(sorted((TEE_PARTS["tpm"], GPUS)))
    assert set(parts_of(CONFIGURATIONS["tdx+threshold+witnesses+safeguards"])) == {
        TEE_PARTS["tdx"],
        THRESHOLD,
        WITNESSES,
        SAFEGUARDS,
    }


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_a_loader_process_imports_only_its_configurations_image(tmp_path: Path, name: str) -> None:
    root, document = repository_root(), CONFIGURATIONS[name]
    parts = parts_of(document)
    image = {path.resolve() for path in loader_files(parts, root)}
    loaded = loaded_by_a_fresh_loader(tmp_path, document)
    project_files = {
        Path(file).resolve() for module, file in loaded.items() if module.split(".")[0] in PROJECT and file
    }
    assert project_files, "the probe imported no project module"
    assert project_files <= image, sorted(str(p) for p in project_files - image)
    # Every part it selects was loaded; any other would have been outside the image (the Azure collector
    # imports the TPM collector's quote, so that one is in its image).
    assert set(parts) <= set(loaded)
    third_party = {
        module.split(".")[0]
        for module in loaded
        if module.split(".")[0] not in sys.stdlib_module_names and module.split(".")[0] not in PROJECT
    }
    # Cython's and the interpreter's own helper modules are not packages anyone installs.
    third_party = {name for name in third_party if not name.startswith(("_cython_", "cython_runtime", "__"))}
    assert third_party <= THIRD_PARTY_ALLOWED, sorted(third_party - THIRD_PARTY_ALLOWED)
    for framework in ("litestar", "uvicorn", "httpx", "sqlalchemy", "starlette", "click", "rich"):
        assert framework not in third_party


def test_the_image_is_the_import_closure_and_holds_no_server_module() -> None:
    root = repository_root()
    tpm = import_closure(root, (LOADER_ENTRY, TEE_PARTS["tpm"]))
    assert "clients.loader.receipt" in tpm
    assert "keyserver.jwe_unwrap" in tpm
    assert "keyserver.jwe" not in tpm  # the wrapping side is the server's
    assert "clients.loader.collectors.tpm" in tpm
    # Parts another configuration selects are not in this one's image; types-only imports never run.
    for other in ("clients.loader.collectors.tsm", "clients.loader.quorum", "clients.loader.safeguards"):
        assert other not in tpm, other
    assert "audit.cosignature" not in tpm
    assert "threshold" not in tpm
    assert "keyserver.evidence.tpm.structures" not in tpm  # the keyserver's parser of untrusted quotes
    assert "clients.loader.collectors.tpm_ak" not in tpm  # provisioning runs before the loader
    everything = import_closure(root, (LOADER_ENTRY, *sorted(ALL_PARTS)))
    for server in ("keyserver.app", "keyserver.release", "keyserver.api", "keyserver.db", "clients.sdk"):
        assert not any(m == server or m.startswith(server + ".") for m in everything), server


def test_a_server_change_leaves_the_measurement_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "image"
    for package in ("clients", "audit", "keyserver", "threshold"):
        shutil.copytree(
            repository_root() / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    tpm = parts_of(CONFIGURATIONS["tpm"])
    reference = image_digest(loader_files(tpm, root), root)
    for server_file in (
        "keyserver/app.py",
        "keyserver/release.py",
        "audit/verifier.py",
        "clients/sdk/client.py",
        "keyserver/evidence/tpm/structures.py",  # the server's TPM parser: not the loader's
        "clients/loader/collectors/tpm_ak.py",  # provisioning: before the loader, not in it
        "clients/loader/quorum.py",  # a part this configuration does not select
        "threshold/shares.py",
    ):
        target = root / server_file
        target.write_text(target.read_text() + "\n# a change outside this loader\n")
        assert image_digest(loader_files(tpm, root), root) == reference, server_file
    # A new server module, even beside a measured one, is not imported by the loader: not measured.
    (root / "keyserver" / "new_route.py").write_text("X = 1\n")
    assert image_digest(loader_files(tpm, root), root) == reference
    # A module the loader imports is measured: changing it changes the PCR the tenant pins.
    shared = root / "keyserver" / "binding.py"
    shared.write_text(shared.read_text() + "\n# a protocol change\n")
    assert image_digest(loader_files(tpm, root), root) != reference


def test_a_part_change_changes_only_the_images_that_hold_it(tmp_path: Path) -> None:
    root = tmp_path / "image"
    for package in ("clients", "audit", "keyserver", "threshold"):
        shutil.copytree(
            repository_root() / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    digests = {
        name: image_digest(loader_files(parts_of(doc), root), root) for name, doc in CONFIGURATIONS.items()
    }
    assert len(set(digests.values())) == len(digests) - 1  # sev-snp and tdx share one collector, one image
    assert digests["sev-snp"] == digests["tdx"]
    target = root / "clients" / "loader" / "quorum.py"
    target.write_text(target.read_text() + "\n# a k-of-n change\n")
    changed = {
        name
        for name, doc in CONFIGURATIONS.items()
        if image_digest(loader_files(parts_of(doc), root), root) != digests[name]
    }
    assert changed == {"tdx+threshold+witnesses+safeguards"}


def test_only_the_tables_parts_can_be_loaded() -> None:
    """A module name from anywhere else (a bug, or a configuration value used as one) would import code no
    image measures: refused before anything is imported."""
    from clients.loader.parts import PartsError, load_part

    for name in ("keyserver.app", "clients.loader.collectors.tpm_ak", "os", "clients.loader.parts", ""):
        with pytest.raises(PartsError, match="not one of the loader's parts"):
            load_part(name)
    assert load_part(WITNESSES).__name__ == WITNESSES


def test_witnesses_of_any_k_of_n_keyserver_select_the_witness_part() -> None:
    document = configuration("tpm", threshold=True)
    assert WITNESSES not in parts_of(document)
    document["threshold"]["keyservers"][1]["witnesses"] = {"vkeys": [], "quorum": 1, "max_age_seconds": 1}
    assert WITNESSES in parts_of(document)
