"""``python -m clients.loader.build_wheel DIR``: the loader's own distribution, ``keyserver-loader``.

The wheel holds exactly the loader's measured image (:func:`clients.loader.measure.loader_files`):
the same files, computed the same way, so what a VM installs is what its PCR holds, and a server-only
change changes neither. Its dependencies are the loader's third-party packages, with the lower bounds
pyproject.toml gives them: no web framework, no server package. Written directly (a wheel is a zip
with three metadata files), in a fixed order with fixed timestamps, so the same sources always give the
same bytes. This module is a build tool: the loader never imports it, so it is not in the image.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import tomllib
import zipfile
from pathlib import Path

from clients.loader.measure import loader_files, repository_root

NAME = "keyserver_loader"
DEPENDENCIES = ("cbor2", "cryptography", "joserfc", "numpy", "tpm2-pytss")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _project(root: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return project


def requirements(root: Path) -> list[str]:
    """``name>=bound`` for each loader dependency, the bound taken from pyproject.toml."""
    project = _project(root)
    declared = [str(d) for d in project["dependencies"]]  # type: ignore[attr-defined]
    for extra in project["optional-dependencies"].values():  # type: ignore[attr-defined]
        declared += [str(d) for d in extra]
    found = {}
    for requirement in declared:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?(>=[^,;\s]+)", requirement)
        if match and match.group(1) in DEPENDENCIES:
            found[match.group(1)] = match.group(1) + match.group(2)
    missing = set(DEPENDENCIES) - set(found)
    if missing:
        raise ValueError(f"pyproject.toml gives no lower bound for {sorted(missing)}")
    return [found[name] for name in DEPENDENCIES]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path, root: Path | None = None) -> Path:
    base = root or repository_root()
    version = str(_project(base)["version"])
    dist_info = f"{NAME}-{version}.dist-info"
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            "Name: keyserver-loader",
            f"Version: {version}",
            "Summary: The keyserver's trusted model loader and virtual accelerator (its measured image)",
            "Requires-Python: >=3.11",
            *(f"Requires-Dist: {r}" for r in requirements(base)),
            "",
        ]
    )
    wheel = (
        "Wheel-Version: 1.0\nGenerator: clients.loader.build_wheel\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    entries = [(p.relative_to(base).as_posix(), p.read_bytes()) for p in loader_files(base)]
    entries += [(f"{dist_info}/METADATA", metadata.encode()), (f"{dist_info}/WHEEL", wheel.encode())]
    record = [_record_line(name, data) for name, data in entries] + [f"{dist_info}/RECORD,,"]
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{NAME}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return target


if __name__ == "__main__":
    print(build_wheel(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
