"""The loader's optional parts, and which of them a measured configuration selects.

The loader's image is its core (``clients.loader.__main__`` and what it imports) plus the *parts* its
measured configuration (clients/loader/config.py) names: the evidence collector of its ``"tee"``, the GPU
collector when ``"gpus"`` is true, the witness check when any keyserver lists ``"witnesses"``, k of n
when it has a ``"threshold"``, the classifier gate and egress budget when it has ``"safeguards"``. The
core never imports a part by an ``import`` statement: it loads one with :func:`load_part`, by a name from
the fixed table below, and only where the configuration asks for it. So the files a loader process can
import are decided by measured inputs alone, and the image is computed per configuration
(:func:`clients.loader.measure.loader_files`): a loader built for a TPM does not carry, or measure, the
SEV-SNP collector or the k-of-n code it never runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

TEE_PARTS = {
    "tpm": "clients.loader.collectors.tpm",
    "sev-snp": "clients.loader.collectors.tsm",
    "tdx": "clients.loader.collectors.tsm",
    "azure-snp-vtpm": "clients.loader.collectors.azure",
    "aws-nitro": "clients.loader.collectors.nitro",
}
GPUS = "clients.loader.collectors.nvidia_gpu"
WITNESSES = "clients.loader.witnesses"
THRESHOLD = "clients.loader.quorum"
SAFEGUARDS = "clients.loader.safeguards"
ALL_PARTS = frozenset({*TEE_PARTS.values(), GPUS, WITNESSES, THRESHOLD, SAFEGUARDS})


class PartsError(ValueError):
    """The configuration names a part this loader does not have."""


def parts_of(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The modules of the parts a configuration document selects, sorted. Only the members that select
    parts are read here; :class:`clients.loader.config.LoaderConfig` checks the rest."""
    tee = document.get("tee")
    if not isinstance(tee, str) or tee not in TEE_PARTS:
        raise PartsError(f'"tee" is one of {", ".join(sorted(TEE_PARTS))}, not {tee!r}')
    parts = {TEE_PARTS[tee]}
    if document.get("gpus", False) is not False:
        if document["gpus"] is not True:
            raise PartsError('"gpus" is true or false')
        parts.add(GPUS)
    threshold = document.get("threshold")
    keyservers = threshold.get("keyservers") if isinstance(threshold, dict) else None
    members = [document, *(keyservers if isinstance(keyservers, list) else ())]
    if any(isinstance(member, dict) and "witnesses" in member for member in members):
        parts.add(WITNESSES)
    if "threshold" in document:
        parts.add(THRESHOLD)
    if "safeguards" in document:
        parts.add(SAFEGUARDS)
    return tuple(sorted(parts))


def load_part(module: str) -> ModuleType:
    """Import one of the loader's parts. Only the table's modules: a name from anywhere else (a bug, or a
    configuration member used as a module name) would import code the image does not measure."""
    if module not in ALL_PARTS:
        raise PartsError(f"{module!r} is not one of the loader's parts")
    return importlib.import_module(module)
