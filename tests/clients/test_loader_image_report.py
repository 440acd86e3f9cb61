"""The loader image's size report (clients/loader/image_report.py) counts what it says it counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clients.loader.image_report import BUILDS, code_lines, image_sizes
from clients.loader.measure import LOADER_ENTRY, import_closure, loader_files, repository_root
from clients.loader.parts import ALL_PARTS, TEE_PARTS

SOURCE = '''"""A module docstring
over two lines."""

# a comment line
X = 1  # code with a trailing comment


def f(a: int) -> int:
    """A function docstring."""
    text = """a string that is
    not a docstring"""
    return a + len(text)


class C:
    """A class docstring."""

    y = 2
'''


def test_code_lines_skip_blank_lines_comments_and_docstrings_only() -> None:
    # X = 1; def f; text = (2 lines); return; class C; y = 2
    assert code_lines(SOURCE) == 7
    assert code_lines("") == 0
    assert code_lines('"""only a docstring"""\n# and a comment\n') == 0


def test_the_report_covers_exactly_the_measured_image() -> None:
    root = repository_root()
    parts = (TEE_PARTS["tpm"],)
    sizes = image_sizes(root, parts)
    assert [s.module for s in sizes] == import_closure(root, (LOADER_ENTRY, *parts))
    python_files = sorted(
        p.relative_to(root).as_posix() for p in loader_files(parts, root) if p.suffix == ".py"
    )
    assert sorted(s.path for s in sizes) == python_files
    for size in sizes:
        text = (root / size.path).read_text(encoding="utf-8")
        assert size.lines == len(text.splitlines())
        assert 0 <= size.code_lines <= size.lines


def test_the_command_prints_totals_that_add_up(tmp_path: Path) -> None:
    config = tmp_path / "loader.json"
    config.write_text(json.dumps({"tee": "tpm", "threshold": {}, "safeguards": {}, "witnesses": {}}))
    done = subprocess.run(
        [sys.executable, "-m", "clients.loader.image_report", "--json", "--config", str(config)],
        cwd=repository_root(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    modules = report["modules"]
    assert report["total"]["modules"] == len(modules)
    assert report["total"]["lines"] == sum(m["lines"] for m in modules)
    assert report["total"]["code_lines"] == sum(m["code_lines"] for m in modules)
    # The loader collects evidence; it verifies none: no evidence verifier is in its image (a package's
    # __init__ is imported with each of its modules, so these stay out only while those re-export parsers).
    verifiers = (
        "keyserver.evidence.snp",
        "keyserver.evidence.tdx",
        "keyserver.evidence.azure.verify",
        "keyserver.evidence.nitro.verify",
        "keyserver.evidence.nvidia.verify",
        "keyserver.evidence.nvidia.composite",
        "keyserver.evidence.tpm.quote",
        "keyserver.evidence.tpm.eventlog",
    )
    assert not [m["module"] for m in modules if m["module"].startswith(verifiers)]


def test_another_entry_measures_only_what_it_reaches() -> None:
    alone = image_sizes(repository_root(), entries=("keyserver.strict_json",))
    assert [s.module for s in alone] == ["keyserver", "keyserver.strict_json"]


def test_the_builds_table_weighs_each_configuration(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clients.loader.image_report", "--json"],
        cwd=repository_root(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    builds = json.loads(done.stdout)["builds"]
    assert list(builds) == [label for label, _ in BUILDS]
    for label, parts in BUILDS:
        sizes = image_sizes(repository_root(), parts)
        assert builds[label] == {
            "modules": len(sizes),
            "lines": sum(s.lines for s in sizes),
            "code_lines": sum(s.code_lines for s in sizes),
        }
    # A part adds to the TPM loader; the image of every part is larger than any one loader's.
    assert builds["tpm + witnesses"]["code_lines"] > builds["tpm"]["code_lines"]
    assert (
        max(b["code_lines"] for label, b in builds.items() if not label.startswith("every"))
        < builds["every part (no one loader has them all)"]["code_lines"]
    )


def test_leaving_a_module_out_is_a_what_if_on_the_same_walk() -> None:
    root = repository_root()
    every = tuple(sorted(ALL_PARTS))
    assert [s.module for s in image_sizes(root, every, without=())] == import_closure(
        root, (LOADER_ENTRY, *every)
    )
    full = {s.module for s in image_sizes(root, every)}
    nitro_out = {s.module for s in image_sizes(root, every, without=("clients.loader.collectors.nitro",))}
    # The module and what only it imports are gone; what others import too stays.
    assert "clients.loader.collectors.nitro" not in nitro_out
    assert "keyserver.evidence.nitro.document" not in nitro_out
    assert "keyserver.binding" in nitro_out
    assert nitro_out < full
