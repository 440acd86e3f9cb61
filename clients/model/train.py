"""Training the character model with hand-written backpropagation and Adam, in numpy.

``python -m clients.model.train --out PATH [--seed N] [--steps N]`` writes a tensor archive. The same
seed and step count give the same weights on the same machine (numpy's PCG64 for initialisation and
batches; float32 arithmetic throughout).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.model.charlm import (
    EMBEDDING,
    HIDDEN_BIAS,
    HIDDEN_WEIGHT,
    OUTPUT_BIAS,
    OUTPUT_WEIGHT,
    PAD_CHARACTER,
    VOCAB,
    FloatArray,
    IdArray,
    ModelShape,
    contexts,
    cross_entropy,
    encode,
    forward,
    vocab_tensor,
)
from clients.model.corpus import load_corpus
from clients.model.tensors import Tensor
from clients.model.tensors_encode import save_tensors

DEFAULT_STEPS = 3000
BATCH_SIZE = 64
LEARNING_RATE = 0.01
# Adam's usual constants.
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8
FLOAT_PARAMETERS = (EMBEDDING, HIDDEN_WEIGHT, HIDDEN_BIAS, OUTPUT_WEIGHT, OUTPUT_BIAS)


@dataclass(frozen=True)
class TrainingResult:
    weights: dict[str, Tensor]
    shape: ModelShape
    initial_loss: float  # mean cross-entropy over the whole corpus, before the first step
    final_loss: float  # the same, after the last step


def train(
    text: str,
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    context_size: int = 8,
    embedding_dim: int = 12,
    hidden_size: int = 128,
    report: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    """Trains on ``text``; ``report(step, batch_loss)`` is called every 500 steps and at the end."""
    if steps < 0:
        raise ValueError("the number of steps is >= 0")
    characters = "".join(sorted(set(text) | {PAD_CHARACTER}))
    shape = ModelShape(len(characters), context_size, embedding_dim, hidden_size)
    targets = encode(text, characters)
    inputs = contexts(targets, context_size, characters.index(PAD_CHARACTER))
    generator = np.random.Generator(np.random.PCG64(seed))
    parameters = _initial_parameters(shape, generator)
    weights: dict[str, Tensor] = {**parameters, VOCAB: vocab_tensor(characters)}
    initial_loss = cross_entropy(forward(weights, inputs), targets)
    first_moment = {name: np.zeros_like(value) for name, value in parameters.items()}
    second_moment = {name: np.zeros_like(value) for name, value in parameters.items()}
    for step in range(1, steps + 1):
        batch = generator.integers(0, len(targets), size=BATCH_SIZE)
        loss, gradients = _loss_and_gradients(parameters, inputs[batch], targets[batch])
        # A step-decayed rate: large steps early, finer ones for the last quarter.
        rate = LEARNING_RATE if step <= steps * 3 // 4 else LEARNING_RATE / 10
        for name, gradient in gradients.items():
            first_moment[name] = BETA1 * first_moment[name] + (1 - BETA1) * gradient
            second_moment[name] = BETA2 * second_moment[name] + (1 - BETA2) * gradient * gradient
            corrected_first = first_moment[name] / (1 - BETA1**step)
            corrected_second = second_moment[name] / (1 - BETA2**step)
            update = rate * corrected_first / (np.sqrt(corrected_second) + EPSILON)
            parameters[name] -= update.astype(np.float32)
        if report is not None and (step % 500 == 0 or step == steps):
            report(step, loss)
    weights = {**parameters, VOCAB: vocab_tensor(characters)}
    final_loss = cross_entropy(forward(weights, inputs), targets)
    return TrainingResult(weights, shape, initial_loss, final_loss)


def _initial_parameters(shape: ModelShape, generator: np.random.Generator) -> dict[str, FloatArray]:
    fan_in = shape.context_size * shape.embedding_dim

    def normal(*dims: int, scale: float) -> FloatArray:
        return (generator.standard_normal(dims) * scale).astype(np.float32)

    return {
        EMBEDDING: normal(shape.vocab_size, shape.embedding_dim, scale=1.0),
        # Kaiming-style gain for tanh keeps the hidden layer out of saturation at the start.
        HIDDEN_WEIGHT: normal(fan_in, shape.hidden_size, scale=(5 / 3) / fan_in**0.5),
        HIDDEN_BIAS: normal(shape.hidden_size, scale=0.01),
        # Small output weights: the first predictions are near uniform, so the initial loss is ~ln(V).
        OUTPUT_WEIGHT: normal(shape.hidden_size, shape.vocab_size, scale=0.01),
        OUTPUT_BIAS: np.zeros(shape.vocab_size, dtype=np.float32),
    }


def _loss_and_gradients(
    parameters: dict[str, FloatArray], batch_inputs: IdArray, batch_targets: IdArray
) -> tuple[float, dict[str, FloatArray]]:
    batch = batch_inputs.shape[0]
    embedded = parameters[EMBEDDING][batch_inputs]
    flat = embedded.reshape(batch, -1)
    hidden = np.tanh(flat @ parameters[HIDDEN_WEIGHT] + parameters[HIDDEN_BIAS])
    logits = hidden @ parameters[OUTPUT_WEIGHT] + parameters[OUTPUT_BIAS]
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    rows = np.arange(batch)
    loss = float(-np.log(probabilities[rows, batch_targets]).mean())
    # d loss / d logits of the mean cross-entropy: (softmax - one-hot) / batch.
    d_logits = probabilities
    d_logits[rows, batch_targets] -= 1
    d_logits /= batch
    d_hidden = d_logits @ parameters[OUTPUT_WEIGHT].T
    d_pre_activation = d_hidden * (1 - hidden * hidden)
    d_flat = d_pre_activation @ parameters[HIDDEN_WEIGHT].T
    d_embedding = np.zeros_like(parameters[EMBEDDING])
    # A character may appear several times in a batch: add.at accumulates instead of overwriting.
    np.add.at(d_embedding, batch_inputs, d_flat.reshape(embedded.shape))
    gradients = {
        EMBEDDING: d_embedding,
        HIDDEN_WEIGHT: flat.T @ d_pre_activation,
        HIDDEN_BIAS: d_pre_activation.sum(axis=0),
        OUTPUT_WEIGHT: hidden.T @ d_logits,
        OUTPUT_BIAS: d_logits.sum(axis=0),
    }
    return loss, gradients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.model.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the tensor archive")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch seed (default 0)")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"Adam steps (default {DEFAULT_STEPS})"
    )
    arguments = parser.parse_args(argv)
    if arguments.seed < 0 or arguments.steps < 0:
        parser.error("--seed and --steps are non-negative integers")

    def report(step: int, loss: float) -> None:
        print(f"step {step:5d}  batch loss {loss:.4f}", flush=True)

    result = train(load_corpus(), seed=arguments.seed, steps=arguments.steps, report=report)
    print(
        f"corpus loss {result.initial_loss:.4f} -> {result.final_loss:.4f}"
        f" ({result.shape.parameter_count} parameters, vocabulary of {result.shape.vocab_size})"
    )
    save_tensors(arguments.out, result.weights)
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
