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

PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
for name in ("main", "collectors.tpm", "collectors.tsm", "collectors.azure", "collectors.nitro",
             "collectors.nvidia_gpu"):
    importlib.import_module("clients.loader." + name)
PROJECT = ("clients", "audit", "keyserver", "policy", "threshold")
print(json.dumps(sorted(
    m.__file__ for n, m in sys.modules.items()
    if n.split(".")[0] in PROJECT and getattr(m, "__file__", None)
)))
"""


def test_the_loader_wheel_is_the_measured_image(tmp_path: Path) -> None:
    root = repository_root()
    wheel = build_wheel(tmp_path / "one")
    assert wheel.read_bytes() == build_wheel(tmp_path / "two").read_bytes()  # reproducible
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packaged = sorted(n for n in names if ".dist-info/" not in n)
    assert packaged == [p.relative_to(root).as_posix() for p in loader_files(root)]
    requires = {
        re.split(r"[<>=]", line.split(": ", 1)[1])[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist")
    }
    assert requires == {"cbor2", "cryptography", "joserfc", "numpy", "tpm2-pytss"}


def test_pip_installs_the_loader_wheel_and_the_loader_runs_from_it_alone(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-I", "-X", f"pycache_prefix={tmp_path / 'pycache'}", "-c", PROBE, str(target)],
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
