"""Separate installs: the loader's distribution is its measured image and needs no server package; the
server's locked install brings no numpy or tpm2-pytss."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from clients.loader.build_wheel import build_wheel
from clients.loader.measure import loader_files, repository_root
from clients.loader.parts import parts_of
from tests.clients.test_loader_image import CONFIGURATIONS

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from clients.loader import main
from clients.loader.config import LoaderConfig
config = LoaderConfig.from_document(json.loads(sys.argv[2]))
args = main.parser().parse_args(["--config", "c", "--keyserver", "http://127.0.0.1:9", "--weights", "w"])
main.collector_for(args, config)  # the TPM collector: built without touching a TPM
PROJECT = ("clients", "audit", "keyserver", "policy", "threshold")
print(json.dumps(sorted(
    m.__file__ for n, m in sys.modules.items()
    if n.split(".")[0] in PROJECT and getattr(m, "__file__", None)
)))
"""


def _packaged(wheel: Path) -> tuple[list[str], set[str]]:
    """The wheel's files (but its metadata) and the packages it requires."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = {
        re.split(r"[<>=]", line.split(": ", 1)[1])[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist")
    }
    return sorted(n for n in names if ".dist-info/" not in n), requires


def test_the_loader_wheel_is_the_measured_image_of_its_configuration(tmp_path: Path) -> None:
    root = repository_root()
    tpm = CONFIGURATIONS["tpm"]
    wheel = build_wheel(tmp_path / "one", tpm)
    assert wheel.read_bytes() == build_wheel(tmp_path / "two", tpm).read_bytes()  # reproducible
    packaged, requires = _packaged(wheel)
    assert packaged == [p.relative_to(root).as_posix() for p in loader_files(parts_of(tpm), root)]
    assert requires == {"cryptography", "joserfc", "numpy", "tpm2-pytss"}
    # Another TEE, another image and other packages: a TDX loader needs no TSS, a Nitro one cbor2.
    packaged_tdx, requires_tdx = _packaged(build_wheel(tmp_path / "tdx", CONFIGURATIONS["tdx"]))
    assert "clients/loader/collectors/tsm.py" in packaged_tdx
    assert "clients/loader/collectors/tpm.py" not in packaged_tdx
    assert requires_tdx == {"cryptography", "joserfc", "numpy"}
    assert _packaged(build_wheel(tmp_path / "nitro", CONFIGURATIONS["aws-nitro"]))[1] == {
        "cbor2",
        "cryptography",
        "joserfc",
        "numpy",
    }


def test_pip_installs_the_loader_wheel_and_the_loader_runs_from_it_alone(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist", CONFIGURATIONS["tpm"])
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-I", "-X", f"pycache_prefix={tmp_path / 'pycache'}", "-c", PROBE, str(target),
         json.dumps(CONFIGURATIONS["tpm"])],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    files = [Path(f) for f in json.loads(done.stdout)]
    assert files
    outside = [f for f in files if not f.is_relative_to(target)]
    assert not outside, outside  # every project module came from the installed loader distribution


def test_the_server_install_brings_no_loader_dependency() -> None:
    lock = (repository_root() / "requirements" / "runtime.txt").read_text()
    pinned = {
        line.split("==", 1)[0].strip().lower()
        for line in lock.splitlines()
        if "==" in line and not line.startswith(" ")
    }
    assert "litestar" in pinned  # it is the server's lock
    assert not {"numpy", "tpm2-pytss", "tpm2_pytss"} & pinned
