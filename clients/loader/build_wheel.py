"""``python -m clients.loader.build_wheel --config FILE [DIR]``: the loader's own distribution,
``keyserver-loader``, for one measured configuration.

The wheel holds exactly the image of the loader that configuration selects
(:func:`clients.loader.measure.loader_files` of its parts: the TEE's collector, k of n, witnesses,
safeguards when configured): the same files, computed the same way, so what a VM installs is what its
PCR holds, and a server-only change changes neither. Its dependencies are the third-party packages of
those parts, with the lower bounds pyproject.toml gives them: no web framework, no server package.
Written directly (a wheel is a zip with three metadata files), in a fixed order with fixed timestamps,
so the same sources always give the same bytes. This module is a build tool: the loader never imports
it, so it is not in the image.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clients.loader.measure import loader_files, repository_root
from clients.loader.parts import TEE_PARTS, parts_of

NAME = "keyserver_loader"
# The core's packages (JWE, cryptography, the accelerator), then what each part adds.
CORE_DEPENDENCIES = ("cryptography", "joserfc", "numpy")
PART_DEPENDENCIES = {
    TEE_PARTS["tpm"]: ("tpm2-pytss",),
    TEE_PARTS["azure-snp-vtpm"]: ("tpm2-pytss",),
    TEE_PARTS["aws-nitro"]: ("cbor2",),
}
DEPENDENCIES = tuple(sorted({*CORE_DEPENDENCIES, *(d for ds in PART_DEPENDENCIES.values() for d in ds)}))
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _project(root: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return project


def dependencies(parts: Sequence[str]) -> list[str]:
    """The third-party packages a loader with ``parts`` imports."""
    return sorted({*CORE_DEPENDENCIES, *(d for part in parts for d in PART_DEPENDENCIES.get(part, ()))})


def requirements(root: Path, parts: Sequence[str] | None = None) -> list[str]:
    """``name>=bound`` for each dependency of a loader with ``parts`` (None: of any loader), the bound
    taken from pyproject.toml."""
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
    return [found[name] for name in (DEPENDENCIES if parts is None else dependencies(parts))]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path, config: Mapping[str, Any], root: Path | None = None) -> Path:
    """The wheel of the loader ``config`` (a configuration document) selects."""
    base = root or repository_root()
    parts = parts_of(config)
    version = str(_project(base)["version"])
    dist_info = f"{NAME}-{version}.dist-info"
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            "Name: keyserver-loader",
            f"Version: {version}",
            "Summary: The keyserver's trusted model loader and virtual accelerator (its measured image)",
            "Requires-Python: >=3.11",
            *(f"Requires-Dist: {r}" for r in requirements(base, parts)),
            "",
        ]
    )
    wheel = (
        "Wheel-Version: 1.0\nGenerator: clients.loader.build_wheel\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    entries = [(p.relative_to(base).as_posix(), p.read_bytes()) for p in loader_files(parts, base)]
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


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m clients.loader.build_wheel", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config", required=True, type=Path, help="the loader's measured configuration (JSON)")
    p.add_argument("out_dir", nargs="?", default="dist", type=Path)
    args = p.parse_args(argv)
    print(build_wheel(args.out_dir, json.loads(args.config.read_text())))


if __name__ == "__main__":
    main()
