"""How large the loader's trusted code is: the modules of its measured image and their lines.

A loader's image is its core plus the parts its measured configuration selects (clients/loader/parts.py).
``python -m clients.loader.image_report`` prints, for each TEE alone and for the TPM loader with each
optional part and all of them, the modules, lines and *code lines* (lines holding code: not blank, not
only a comment, not part of a docstring) of its image. ``--config FILE`` lists that configuration's image
module by module (the same :func:`clients.loader.measure.import_closure` the image digest and the loader
wheel use), then the totals. ``--json`` prints either as one JSON object. ``--entry MODULE`` (more than
once) measures the closure of other modules instead; ``--without MODULE`` leaves a module out of the
walk, as if no import reached it (a what-if, not a measurement).

This module is not imported by the loader, so it is not part of the image it reports on.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.loader.measure import (
    LOADER_ENTRY,
    _module_file,
    import_closure,
    repository_root,
)
from clients.loader.parts import ALL_PARTS, GPUS, SAFEGUARDS, TEE_PARTS, THRESHOLD, WITNESSES, parts_of


@dataclass(frozen=True, slots=True)
class ModuleSize:
    module: str
    path: str
    lines: int
    code_lines: int


def _docstring_lines(tree: ast.Module) -> set[int]:
    """The line numbers of every docstring (module, class, function)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        first = body[0] if body else None
        if not isinstance(first, ast.Expr) or not isinstance(first.value, ast.Constant):
            continue
        if isinstance(first.value.value, str):
            lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines that hold a token of code: blank lines, comments and docstrings do not count."""
    docstrings = _docstring_lines(ast.parse(source))
    ignored = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in ignored:
            continue
        for line in range(token.start[0], token.end[0] + 1):
            if line not in docstrings:
                lines.add(line)
    return len(lines)


# The loaders worth weighing: each TEE alone (one keyserver, no witnesses), then the TPM loader with each
# optional part and with all of them. Labels name the configuration members that select the parts.
BUILDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tpm", (TEE_PARTS["tpm"],)),
    ("sev-snp / tdx", (TEE_PARTS["sev-snp"],)),
    ("azure-snp-vtpm", (TEE_PARTS["azure-snp-vtpm"],)),
    ("aws-nitro", (TEE_PARTS["aws-nitro"],)),
    ("tpm + gpus", (TEE_PARTS["tpm"], GPUS)),
    ("tpm + witnesses", (TEE_PARTS["tpm"], WITNESSES)),
    ("tpm + threshold (k of n)", (TEE_PARTS["tpm"], THRESHOLD)),
    ("tpm + safeguards", (TEE_PARTS["tpm"], SAFEGUARDS)),
    ("tpm + witnesses + threshold + safeguards", (TEE_PARTS["tpm"], WITNESSES, THRESHOLD, SAFEGUARDS)),
    ("every part (no one loader has them all)", tuple(sorted(ALL_PARTS))),
)


def image_sizes(
    root: Path | None = None,
    parts: Sequence[str] = (),
    *,
    entries: Sequence[str] | None = None,
    without: Collection[str] = (),
) -> list[ModuleSize]:
    """Each module of the image of a loader with ``parts`` (or of the closure of ``entries``), sized."""
    base = root or repository_root()
    modules = import_closure(base, entries or (LOADER_ENTRY, *parts), without)
    sizes = []
    for module in modules:
        path = _module_file(base, module)
        if path is None:  # import_closure keeps only modules it found a file for
            raise FileNotFoundError(module)
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(base).as_posix()
        sizes.append(ModuleSize(module, name, len(source.splitlines()), code_lines(source)))
    return sizes


def _totals(sizes: Sequence[ModuleSize]) -> dict[str, int]:
    return {
        "modules": len(sizes),
        "lines": sum(s.lines for s in sizes),
        "code_lines": sum(s.code_lines for s in sizes),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.loader.image_report", description=__doc__)
    parser.add_argument("--config", type=Path, help="list the image of the loader this configuration selects")
    parser.add_argument("--entry", action="append", help="list the closure of these modules instead")
    parser.add_argument("--without", action="append", default=[], help="leave this module out (what-if)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.config is None and not args.entry:
        builds = {label: _totals(image_sizes(parts=parts, without=args.without)) for label, parts in BUILDS}
        if args.json:
            sys.stdout.write(json.dumps({"builds": builds}, indent=1) + "\n")
            return 0
        sys.stdout.write(f"{'loader built for':42} {'modules':>7} {'lines':>6} {'code lines':>10}\n")
        for label, total in builds.items():
            sys.stdout.write(
                f"{label:42} {total['modules']:7d} {total['lines']:6d} {total['code_lines']:10d}\n"
            )
        return 0
    parts = parts_of(json.loads(args.config.read_text())) if args.config is not None else ()
    sizes = image_sizes(parts=parts, entries=args.entry, without=args.without)
    total = _totals(sizes)
    if args.json:
        document = {
            "modules": [{"module": s.module, "lines": s.lines, "code_lines": s.code_lines} for s in sizes],
            "total": total,
        }
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
        return 0
    for s in sizes:
        sys.stdout.write(f"{s.lines:6d} {s.code_lines:6d}  {s.module}\n")
    lines, code, modules = total["lines"], total["code_lines"], total["modules"]
    sys.stdout.write(f"{lines:6d} {code:6d}  total: {modules} modules (lines, code lines)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
