"""Drawing the next token from logits: one definition, shared by the reference ``generate`` and the
accelerator's ``sample`` instruction, so that a signed program reproduces the reference exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def new_generator(seed: int) -> np.random.Generator:
    """PCG64 seeded with a non-negative integer: the same stream on every platform numpy supports."""
    if seed < 0:
        raise ValueError("a sampling seed is a non-negative integer")
    return np.random.Generator(np.random.PCG64(seed))


def sample_index(logits: npt.NDArray[Any], temperature: float, generator: np.random.Generator) -> int:
    """An index drawn from softmax(logits / temperature); the first largest logit when temperature is 0
    (greedy, and no random number is drawn). One uniform draw per call otherwise."""
    if logits.ndim != 1 or logits.shape[0] == 0:
        raise ValueError("sampling needs a non-empty vector of logits")
    if not np.isfinite(logits).all():
        raise ValueError("the logits are not all finite")
    if temperature < 0 or not np.isfinite(temperature):
        raise ValueError("the temperature is a finite number >= 0")
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    weights = np.exp(scaled - scaled.max())
    cumulative = np.cumsum(weights / weights.sum())
    draw = float(generator.random())
    # cumulative[-1] may round to slightly below 1: a draw above it takes the last token.
    return min(int(np.searchsorted(cumulative, draw, side="right")), int(logits.shape[0]) - 1)
