"""The repository carries everything its tests, benchmarks and docs use.

A clone of the repository alone must pass `make test`: the real vectors live in tests/vectors (their
digests pinned in tests/vectors/SHA256SUMS), and no tracked file refers to a folder outside the clone.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT, VECTORS


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [REPO_ROOT / name for name in out.split("\0") if name]


def test_every_vector_matches_its_pinned_digest() -> None:
    listed: dict[str, str] = {}
    for line in (VECTORS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    assert len(listed) > 200, "the vector set looks truncated"
    for name, digest in listed.items():
        assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == digest, name
    on_disk = {
        str(p.relative_to(VECTORS)) for p in VECTORS.rglob("*") if p.is_file() and p.name != "SHA256SUMS"
    }
    assert on_disk == set(listed), "files in tests/vectors not pinned by SHA256SUMS (or pinned but missing)"


# A path that climbs out of the clone to a sibling folder (the shared folder beside the clone, by a relative
# path, an absolute one, or parents[n] of a test file).
_OUTSIDE = re.compile(r"\.\./shared|/work/shared|/work/main|parents\[[2-9]\]\s*/\s*\"shared\"")


def test_no_tracked_file_refers_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_files():
        if VECTORS in path.parents or path == Path(__file__).resolve() or not path.is_file():
            continue  # the vectors' own provenance notes name where they came from
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
