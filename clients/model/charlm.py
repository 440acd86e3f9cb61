"""The character-level language model: a context of k characters -> embeddings -> a tanh hidden layer ->
logits over the vocabulary (Bengio et al. 2003, as in makemore's MLP).

Its weights are six tensors, named as in the tensor archive:

| name            | dtype | shape                              |
| --------------- | ----- | ---------------------------------- |
| `embedding`     | F32   | [vocab, embedding_dim]             |
| `hidden.weight` | F32   | [context * embedding_dim, hidden]  |
| `hidden.bias`   | F32   | [hidden]                           |
| `output.weight` | F32   | [hidden, vocab]                    |
| `output.bias`   | F32   | [vocab]                            |
| `vocab`         | I32   | [vocab]: the Unicode code point of each token |

The context size is not stored: it is ``hidden.weight`` rows / ``embedding_dim``. A context shorter than k
characters (the start of a prompt) is padded on the left with the space character.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

EMBEDDING: Final = "embedding"
HIDDEN_WEIGHT: Final = "hidden.weight"
HIDDEN_BIAS: Final = "hidden.bias"
OUTPUT_WEIGHT: Final = "output.weight"
OUTPUT_BIAS: Final = "output.bias"
VOCAB: Final = "vocab"
WEIGHT_NAMES: Final = (EMBEDDING, HIDDEN_WEIGHT, HIDDEN_BIAS, OUTPUT_WEIGHT, OUTPUT_BIAS, VOCAB)
PAD_CHARACTER: Final = " "

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


class ModelError(ValueError):
    """Weights that are not this model's, or text the model's vocabulary cannot represent."""


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    context_size: int
    embedding_dim: int
    hidden_size: int

    @property
    def parameter_count(self) -> int:
        return (
            self.vocab_size * self.embedding_dim
            + self.context_size * self.embedding_dim * self.hidden_size
            + self.hidden_size
            + self.hidden_size * self.vocab_size
            + self.vocab_size
        )


def model_shape(weights: Mapping[str, npt.NDArray[Any]]) -> ModelShape:
    """The shape the weights describe; ``ModelError`` when a tensor is missing, extra or inconsistent."""
    if set(weights) != set(WEIGHT_NAMES):
        raise ModelError(f"the model's weights are exactly {', '.join(WEIGHT_NAMES)}; got {sorted(weights)}")
    for name in WEIGHT_NAMES:
        expected = np.int32 if name == VOCAB else np.float32
        if weights[name].dtype != expected:
            raise ModelError(f"weight {name!r} must be {np.dtype(expected)}, not {weights[name].dtype}")
    embedding, hidden_weight = weights[EMBEDDING], weights[HIDDEN_WEIGHT]
    if embedding.ndim != 2 or hidden_weight.ndim != 2 or embedding.shape[1] == 0:
        raise ModelError("embedding and hidden.weight must be non-empty matrices")
    vocab_size, embedding_dim = embedding.shape
    context_size, remainder = divmod(hidden_weight.shape[0], embedding_dim)
    hidden_size = hidden_weight.shape[1]
    shape = ModelShape(vocab_size, context_size, embedding_dim, hidden_size)
    expected_shapes = {
        HIDDEN_BIAS: (hidden_size,),
        OUTPUT_WEIGHT: (hidden_size, vocab_size),
        OUTPUT_BIAS: (vocab_size,),
        VOCAB: (vocab_size,),
    }
    if remainder or context_size == 0:
        raise ModelError("hidden.weight rows must be a positive multiple of the embedding dimension")
    for name, expected_shape in expected_shapes.items():
        if weights[name].shape != expected_shape:
            raise ModelError(f"weight {name!r} has shape {weights[name].shape}; expected {expected_shape}")
    vocabulary(weights)
    return shape


def vocab_tensor(characters: str) -> npt.NDArray[np.int32]:
    return np.array([ord(character) for character in characters], dtype=np.int32)


def vocabulary(weights: Mapping[str, npt.NDArray[Any]]) -> str:
    """The model's characters, in token order; ``ModelError`` unless they are distinct code points
    that include the padding character."""
    points = [int(point) for point in weights[VOCAB]]
    if any(not 0 <= point <= 0x10FFFF or 0xD800 <= point <= 0xDFFF for point in points):
        raise ModelError("the vocab tensor holds a value that is not a Unicode scalar value")
    characters = "".join(chr(point) for point in points)
    if len(set(characters)) != len(characters):
        raise ModelError("the vocab tensor names a character twice")
    if PAD_CHARACTER not in characters:
        raise ModelError("the vocabulary must contain the space character (the padding)")
    return characters


def encode(text: str, characters: str) -> IdArray:
    index = {character: position for position, character in enumerate(characters)}
    unknown = sorted({character for character in text if character not in index})
    if unknown:
        raise ModelError(f"the model's vocabulary has no {''.join(unknown)!r}; use only {characters!r}")
    return np.array([index[character] for character in text], dtype=np.int64)


def contexts(ids: IdArray, context_size: int, pad_id: int) -> IdArray:
    """For every position i, the ``context_size`` ids before it, left-padded with ``pad_id``: the
    training inputs (the targets are ``ids`` themselves)."""
    padded = np.concatenate([np.full(context_size, pad_id, dtype=np.int64), ids])
    windows = np.lib.stride_tricks.sliding_window_view(padded, context_size)
    return np.ascontiguousarray(windows[: len(ids)])


def forward(weights: Mapping[str, npt.NDArray[Any]], context_ids: IdArray) -> FloatArray:
    """Logits [batch, vocab] for contexts [batch, context_size]. Generation calls it with a batch of one,
    and the signed generation program performs exactly these operations in this order."""
    embedded = weights[EMBEDDING][context_ids]
    flat = embedded.reshape(context_ids.shape[0], -1)
    hidden = np.tanh(flat @ weights[HIDDEN_WEIGHT] + weights[HIDDEN_BIAS])
    logits: FloatArray = hidden @ weights[OUTPUT_WEIGHT] + weights[OUTPUT_BIAS]
    return logits


def cross_entropy(logits: FloatArray, targets: IdArray) -> float:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(targets)), targets].mean())
