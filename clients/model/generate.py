"""The reference generation: what the signed generation program must reproduce, token for token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from clients.model.charlm import PAD_CHARACTER, encode, forward, model_shape, vocabulary
from clients.model.sampling import new_generator, sample_index


def generate(
    weights: Mapping[str, npt.NDArray[Any]], prompt: str, n: int, temperature: float, seed: int
) -> str:
    """``n`` characters continuing ``prompt``: each step feeds the last k characters (left-padded with
    spaces) through the model and samples the next one at ``temperature`` (0 = greedy) from a PCG64
    stream seeded with ``seed``. Raises ``ModelError`` for characters outside the vocabulary."""
    if n < 0:
        raise ValueError("the number of new characters is >= 0")
    shape = model_shape(weights)
    characters = vocabulary(weights)
    pad_id = characters.index(PAD_CHARACTER)
    generator = new_generator(seed)
    tokens = [int(token) for token in encode(prompt, characters)]
    completion: list[str] = []
    for _ in range(n):
        window = ([pad_id] * shape.context_size + tokens)[-shape.context_size :]
        logits = forward(weights, np.array([window], dtype=np.int64))[0]
        token = sample_index(logits, temperature, generator)
        tokens.append(token)
        completion.append(characters[token])
    return "".join(completion)
