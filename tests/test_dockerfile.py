"""The Dockerfile builds what pyproject.toml packages: no Docker engine runs here (README), so its
contents are checked against the project's own packaging. A package the image lacks is an ImportError
in production only (``threshold`` was missing: `keyserver key split` and the loader-configuration
claims import it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_image_copies_every_package_the_distribution_has() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*").rstrip(".") for pattern in included}
    copied = set(re.findall(r"^COPY (\S+) \1$", (ROOT / "Dockerfile").read_text(), flags=re.M))
    assert packages, "pyproject.toml names no packages"
    assert packages <= copied, f"the Dockerfile does not COPY {sorted(packages - copied)}"
    for package in packages:
        assert (ROOT / package / "__init__.py").is_file(), package


def test_the_image_installs_from_the_runtime_lock_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/runtime.txt" in dockerfile
    assert "--no-deps ." in dockerfile  # the project itself adds nothing unpinned
