"""How large the loader's trusted code is: the modules of its measured image and their lines.

``python -m clients.loader.image_report`` prints one line per module of the import closure
(:func:`clients.loader.measure.import_closure`, the same function the image digest and the loader wheel
use), then the totals: modules, lines, and *code lines* (lines holding code: not blank, not only a
comment, not part of a docstring). ``--json`` prints the same as one JSON object. ``--entry MODULE`` (more
than once) measures from other entry points, to see what one part would bring in on its own.
``--without MODULE`` (more than once) leaves a module out of the walk, as if no import reached it: what
the image would be without, say, the collectors of the TEEs a deployment does not use
(``--without clients.loader.collectors.azure``). That is a what-if, not the measurement: the measured
image is always the full closure (:mod:`clients.loader.measure`).

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


def closure_without(root: Path, entry: str, without: Collection[str]) -> list[str]:
    """:func:`~clients.loader.measure.import_closure`, but never following an import of a module in
    ``without`` (or below it). With ``without`` empty it is the image's closure."""
    return import_closure(root, entry, without)


def image_sizes(
    root: Path | None = None, entries: Sequence[str] = (LOADER_ENTRY,), without: Collection[str] = ()
) -> list[ModuleSize]:
    base = root or repository_root()
    modules: set[str] = set()
    for entry in entries:
        modules.update(closure_without(base, entry, without))
    sizes = []
    for module in sorted(modules):
        path = _module_file(base, module)
        if path is None:  # import_closure keeps only modules it found a file for
            raise FileNotFoundError(module)
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(base).as_posix()
        sizes.append(ModuleSize(module, name, len(source.splitlines()), code_lines(source)))
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.loader.image_report", description=__doc__)
    parser.add_argument("--entry", action="append", help=f"entry module (default {LOADER_ENTRY})")
    parser.add_argument("--without", action="append", default=[], help="leave this module out (what-if)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args(argv)
    sizes = image_sizes(entries=args.entry or (LOADER_ENTRY,), without=args.without)
    total = sum(s.lines for s in sizes)
    code = sum(s.code_lines for s in sizes)
    if args.json:
        document = {
            "modules": [{"module": s.module, "lines": s.lines, "code_lines": s.code_lines} for s in sizes],
            "total": {"modules": len(sizes), "lines": total, "code_lines": code},
        }
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
        return 0
    for s in sizes:
        sys.stdout.write(f"{s.lines:6d} {s.code_lines:6d}  {s.module}\n")
    sys.stdout.write(f"{total:6d} {code:6d}  total: {len(sizes)} modules (lines, code lines)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
