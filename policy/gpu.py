"""GPU claims in a composite claim set, as an ``nvidia-gpu`` reference-value set sees them.

A composite release carries ``gpu.count`` and, per GPU *i*, ``gpu.<i>.*`` (keyserver/evidence/nvidia/
composite.py). A set for tee ``nvidia-gpu`` pins GPU-independent names — ``gpu.driver_version``,
``gpu.vbios_version``, ``gpu.arch``, ``gpu.fwid``, ``gpu.measurement.<n>`` (SPDM block *n*, 1..64) — and
applies to **every** GPU: "these GPUs run this firmware". A policy that names such a set therefore also
requires at least one GPU. A rule (CEL) can still look at one GPU: ``claims["gpu.0.driver_version"]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# More GPUs than any composite evidence carries (8): a claim set saying more (a policy example, say) is
# refused rather than iterated.
MAX_GPU_VIEWS = 16
# Names an nvidia-gpu set may not pin: they belong to one GPU, or to the composite, not to "every GPU".
GPU_SET_FORBIDDEN = re.compile(
    r"^gpu\.([0-9]+\.|count\Z|measurements\Z|measurement\.(?!([1-9]|[1-5][0-9]|6[0-4])\Z))"
)


def gpu_count(claims: Mapping[str, object]) -> int:
    value = claims.get("gpu.count")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def gpu_view(claims: Mapping[str, object], index: int) -> dict[str, object]:
    """GPU ``index``'s claims under the names a GPU set pins (``gpu.<i>.x`` → ``gpu.x``)."""
    prefix = f"gpu.{index}."
    view: dict[str, object] = {
        "gpu." + name[len(prefix) :]: value for name, value in claims.items() if name.startswith(prefix)
    }
    measurements = view.get("gpu.measurements")
    if isinstance(measurements, list):
        for n, value in enumerate(measurements, start=1):
            view[f"gpu.measurement.{n}"] = value
    return view
