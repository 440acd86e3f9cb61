"""The training text shipped with the package (original prose about confidential computing)."""

from __future__ import annotations

from importlib.resources import files


def normalise(text: str) -> str:
    """Lower case, every run of whitespace one space: a small vocabulary for a small model."""
    return " ".join(text.lower().split())


def load_corpus() -> str:
    return normalise(files("clients.model").joinpath("corpus.txt").read_text(encoding="utf-8"))
