"""Programs the CI signer signs for the demo: the character model's generation loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from clients.accelerator import limits
from clients.model.charlm import (
    EMBEDDING,
    HIDDEN_BIAS,
    HIDDEN_WEIGHT,
    OUTPUT_BIAS,
    OUTPUT_WEIGHT,
    PAD_CHARACTER,
    VOCAB,
    model_shape,
    vocabulary,
)

GENERATION_PROGRAM_NAME = "charlm-generate"
MAX_TEMPERATURE_MILLI = 5000


def generation_program(
    weights: Mapping[str, npt.NDArray[Any]],
    *,
    max_new_tokens: int = 256,
    max_prompt_chars: int = 512,
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """The program that runs ``clients.model.generate`` for these weights' shapes: inputs ``prompt``,
    ``max_new_tokens``, ``temperature_milli`` (temperature x 1000; 0 = greedy) and ``seed``; output
    ``completion``. Signed and run over the same weights it returns exactly what ``generate(weights,
    prompt, max_new_tokens, temperature_milli / 1000, seed)`` returns."""
    if not 0 <= max_new_tokens <= limits.MAX_LOOP_ITERATIONS:
        raise ValueError(f"max_new_tokens is from 0 to {limits.MAX_LOOP_ITERATIONS}")
    if not 0 <= max_prompt_chars <= limits.MAX_TEXT_CHARS:
        raise ValueError(f"max_prompt_chars is from 0 to {limits.MAX_TEXT_CHARS}")
    shape = model_shape(weights)
    pad_id = vocabulary(weights).index(PAD_CHARACTER)
    declared = {
        name: {"dtype": "I32" if name == VOCAB else "F32", "shape": list(weights[name].shape)}
        for name in weights
    }
    step = [
        {"op": "window", "ids": "tokens", "size": shape.context_size, "pad": pad_id, "out": "context"},
        {"op": "gather", "table": EMBEDDING, "ids": "context", "out": "embedded"},
        {
            "op": "reshape",
            "x": "embedded",
            "shape": [1, shape.context_size * shape.embedding_dim],
            "out": "flat",
        },
        {"op": "matmul", "a": "flat", "b": HIDDEN_WEIGHT, "out": "pre_activation"},
        {"op": "add", "a": "pre_activation", "b": HIDDEN_BIAS, "out": "pre_activation"},
        {"op": "tanh", "x": "pre_activation", "out": "hidden"},
        {"op": "matmul", "a": "hidden", "b": OUTPUT_WEIGHT, "out": "logits"},
        {"op": "add", "a": "logits", "b": OUTPUT_BIAS, "out": "logits"},
        {"op": "reshape", "x": "logits", "shape": [-1], "out": "logits"},
        {
            "op": "sample",
            "logits": "logits",
            "temperature_milli": "temperature_milli",
            "rng": "rng",
            "out": "next",
        },
        {"op": "append", "ids": "tokens", "value": "next", "out": "tokens"},
        {"op": "append", "ids": "generated", "value": "next", "out": "generated"},
    ]
    bound = {} if model_sha256 is None else {"model": model_sha256}  # runs on that model only
    return {
        **bound,
        "type": "accelerator-program",
        "version": 1,
        "name": GENERATION_PROGRAM_NAME,
        "weights": declared,
        "inputs": {
            "prompt": {"kind": "text", "max_length": max_prompt_chars},
            "max_new_tokens": {"kind": "int", "min": 0, "max": max_new_tokens},
            "temperature_milli": {"kind": "int", "min": 0, "max": MAX_TEMPERATURE_MILLI},
            "seed": {"kind": "int", "min": 0, "max": limits.MAX_SAFE_INTEGER},
        },
        "body": [
            {"op": "encode", "text": "prompt", "vocab": VOCAB, "out": "tokens"},
            {"op": "const_ids", "values": [], "out": "generated"},
            {"op": "rng", "seed": "seed", "out": "rng"},
            {"op": "loop", "count": "max_new_tokens", "max": max_new_tokens, "body": step},
            {"op": "decode", "ids": "generated", "vocab": VOCAB, "out": "completion"},
        ],
        "outputs": {"completion": "completion"},
    }
