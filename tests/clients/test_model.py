"""The character model: training, its tensor archive (strict parser), sampling and reference generation."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from clients.model.charlm import (
    EMBEDDING,
    VOCAB,
    WEIGHT_NAMES,
    ModelError,
    contexts,
    encode,
    model_shape,
    vocab_tensor,
    vocabulary,
)
from clients.model.corpus import load_corpus, normalise
from clients.model.generate import generate
from clients.model.sampling import new_generator, sample_index
from clients.model.tensors import MAX_HEADER_BYTES, Tensor, TensorArchiveError, decode_tensors
from clients.model.tensors_encode import encode_tensors, load_tensors
from clients.model.train import TrainingResult, train

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained() -> TrainingResult:
    return train(load_corpus(), seed=0, steps=300)


@pytest.fixture(scope="module")
def archive(trained: TrainingResult) -> bytes:
    return encode_tensors(trained.weights)


# --- the corpus and training -------------------------------------------------------------------------


def test_the_corpus_is_a_few_kilobytes_of_normalised_text() -> None:
    corpus = load_corpus()
    assert 3000 <= len(corpus) <= 20000
    assert corpus == normalise(corpus)
    assert "  " not in corpus
    assert corpus == corpus.lower()


def test_training_reduces_the_loss_from_chance(trained: TrainingResult) -> None:
    # Small output weights make the first predictions nearly uniform: the loss starts near ln(V).
    assert abs(trained.initial_loss - math.log(trained.shape.vocab_size)) < 0.1
    assert trained.final_loss < 0.6 * trained.initial_loss
    assert 3000 <= trained.shape.parameter_count <= 50_000
    assert model_shape(trained.weights) == trained.shape


def test_training_is_deterministic_for_a_seed() -> None:
    first = train(load_corpus(), seed=7, steps=20)
    again = train(load_corpus(), seed=7, steps=20)
    other = train(load_corpus(), seed=8, steps=20)
    assert encode_tensors(first.weights) == encode_tensors(again.weights)
    assert encode_tensors(first.weights) != encode_tensors(other.weights)


def test_the_training_command_writes_a_loadable_archive(tmp_path: Path) -> None:
    out = tmp_path / "model.kst"
    completed = subprocess.run(
        [sys.executable, "-m", "clients.model.train", "--out", str(out), "--seed", "3", "--steps", "40"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "corpus loss" in completed.stdout
    weights = load_tensors(out)
    assert set(weights) == set(WEIGHT_NAMES)
    assert encode_tensors(weights) == encode_tensors(train(load_corpus(), seed=3, steps=40).weights)


def test_the_training_command_refuses_negative_steps(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "clients.model.train", "--out", str(tmp_path / "m"), "--steps", "-1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert not (tmp_path / "m").exists()


def test_contexts_are_the_previous_characters_left_padded() -> None:
    ids = np.array([5, 6, 7], dtype=np.int64)
    assert contexts(ids, 2, 0).tolist() == [[0, 0], [0, 5], [5, 6]]


# --- the model's weights and vocabulary --------------------------------------------------------------


def test_model_shape_refuses_missing_extra_and_inconsistent_weights(trained: TrainingResult) -> None:
    weights = dict(trained.weights)
    with pytest.raises(ModelError, match="exactly"):
        model_shape({name: weights[name] for name in WEIGHT_NAMES if name != EMBEDDING})
    with pytest.raises(ModelError, match="exactly"):
        model_shape({**weights, "extra": weights[EMBEDDING]})
    with pytest.raises(ModelError, match="shape"):
        model_shape({**weights, VOCAB: weights[VOCAB][:-1]})
    with pytest.raises(ModelError, match="float32"):
        model_shape({**weights, EMBEDDING: weights[EMBEDDING].astype(np.float64)})


@pytest.mark.parametrize(
    ("points", "problem"),
    [([32, 97, 97], "twice"), ([32, 0xD800], "Unicode"), ([32, -1], "Unicode"), ([97, 98], "space")],
)
def test_a_vocabulary_is_distinct_characters_with_the_padding(points: list[int], problem: str) -> None:
    with pytest.raises(ModelError, match=problem):
        vocabulary({VOCAB: np.array(points, dtype=np.int32)})


def test_encoding_refuses_characters_outside_the_vocabulary() -> None:
    assert encode("ab a", " ab").tolist() == [1, 2, 0, 1]
    with pytest.raises(ModelError, match="'Z'"):
        encode("aZ", " ab")


# --- the tensor archive ------------------------------------------------------------------------------


def _archive(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _header(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def test_the_trained_weights_round_trip_exactly(trained: TrainingResult, archive: bytes) -> None:
    decoded = decode_tensors(archive)
    assert set(decoded) == set(trained.weights)
    for name, array in trained.weights.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].shape == array.shape
        assert decoded[name].tobytes() == array.tobytes()
    assert encode_tensors(decoded) == archive


def test_a_known_archive_has_known_bytes() -> None:
    data = encode_tensors({"b": np.array([1, -2], dtype=np.int32), "a": np.array([[1.5]], dtype=np.float32)})
    header = (
        b'{"a":{"data_offsets":[0,4],"dtype":"F32","shape":[1,1]},'
        b'"b":{"data_offsets":[4,12],"dtype":"I32","shape":[2]}}'
    )
    assert data == _archive(header, struct.pack("<f", 1.5) + struct.pack("<ii", 1, -2))


arrays = st.one_of(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)),
    hnp.arrays(np.int32, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)),
)
names = st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z][a-z0-9_]{0,4}){0,2}", fullmatch=True)


@given(st.dictionaries(names, arrays, max_size=5))
def test_any_tensors_round_trip_bit_for_bit(tensors: dict[str, npt.NDArray[Any]]) -> None:
    data = encode_tensors(tensors)
    decoded = decode_tensors(data)
    assert set(decoded) == set(tensors)
    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].shape == array.shape
        assert decoded[name].tobytes() == array.tobytes()  # NaN payloads and -0.0 included


def _accepted_archives_are_canonical(data: bytes) -> None:
    """The parser's contract: its own typed error, or tensors whose archive is exactly ``data``."""
    try:
        tensors = decode_tensors(data)
    except TensorArchiveError:
        return
    assert encode_tensors(tensors) == data


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_typed_error(data: bytes) -> None:
    _accepted_archives_are_canonical(data)


@given(st.data())
def test_mutated_archives_raise_only_the_typed_error(archive: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(archive) - 1))
    mutation = data.draw(st.sampled_from(["flip", "insert", "delete", "set"]))
    byte = data.draw(st.integers(0, 255))
    if mutation == "flip":
        mutated = (
            archive[:position] + bytes([archive[position] ^ (1 << (byte % 8))]) + archive[position + 1 :]
        )
    elif mutation == "insert":
        mutated = archive[:position] + bytes([byte]) + archive[position:]
    elif mutation == "delete":
        mutated = archive[:position] + archive[position + 1 :]
    else:
        mutated = archive[:position] + bytes([byte]) + archive[position + 1 :]
    _accepted_archives_are_canonical(mutated)


def test_every_flip_inside_the_header_is_refused_or_reencodes_identically(archive: bytes) -> None:
    (header_length,) = struct.unpack_from("<Q", archive)
    for position in range(8 + header_length):
        for bit in (0x01, 0x20, 0x80):
            mutated = archive[:position] + bytes([archive[position] ^ bit]) + archive[position + 1 :]
            _accepted_archives_are_canonical(mutated)


def test_every_truncation_is_refused() -> None:
    small = encode_tensors(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7], dtype=np.int32)}
    )
    for length in range(len(small)):
        with pytest.raises(TensorArchiveError):
            decode_tensors(small[:length])
    assert set(decode_tensors(small)) == {"a", "b"}


def test_truncations_of_the_model_archive_are_refused(archive: bytes) -> None:
    for length in (0, 7, 8, 9, len(archive) // 2, len(archive) - 4, len(archive) - 1):
        with pytest.raises(TensorArchiveError, match="truncated"):
            decode_tensors(archive[:length])


FOUR = struct.pack("<f", 1.0)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (struct.pack("<Q", 2**63), "claims"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" * (MAX_HEADER_BYTES + 1), "claims"),
        (_archive(_header({"a": {"data_offsets": [0, 8], "dtype": "F64", "shape": [1]}}), FOUR * 2), "dtype"),
        (_archive(_header({"a": {"data_offsets": [0, 4], "dtype": "f32", "shape": [1]}}), FOUR), "dtype"),
        (
            _archive(_header({"a": {"data_offsets": [0, 4], "dtype": "F32", "shape": [1]}}), FOUR * 2),
            "trailing",
        ),
        (_archive(_header({"a": {"data_offsets": [0, 4], "dtype": "F32", "shape": [1]}}), b""), "truncated"),
        (
            _archive(_header({"a": {"data_offsets": [0, 8], "dtype": "F32", "shape": [1]}}), FOUR * 2),
            "length",
        ),
        (_archive(_header({"a": {"data_offsets": [4, 8], "dtype": "F32", "shape": [1]}}), FOUR * 2), "gap"),
        (
            _archive(_header({"a": {"data_offsets": [4, 0], "dtype": "F32", "shape": [0]}}), b""),
            "begin <= end",
        ),
        (
            _archive(_header({"a": {"data_offsets": [-4, 0], "dtype": "F32", "shape": [1]}}), b""),
            "begin <= end",
        ),
        (
            _archive(
                _header(
                    {
                        "a": {"data_offsets": [0, 8], "dtype": "F32", "shape": [2]},
                        "b": {"data_offsets": [4, 8], "dtype": "F32", "shape": [1]},
                    }
                ),
                FOUR * 2,
            ),
            "overlaps",
        ),
        (
            _archive(
                _header(
                    {
                        "a": {"data_offsets": [4, 8], "dtype": "F32", "shape": [1]},
                        "b": {"data_offsets": [0, 4], "dtype": "F32", "shape": [1]},
                    }
                ),
                FOUR * 2,
            ),
            "name order",
        ),
        (
            _archive(_header({"a": {"data_offsets": [0, 0], "dtype": "F32", "shape": [-1, 0]}}), b""),
            "negative",
        ),
        (
            _archive(_header({"a": {"data_offsets": [0, 0], "dtype": "F32", "shape": [0, 2**40]}}), b""),
            "oversized",
        ),
        (
            _archive(
                _header({"a": {"data_offsets": [0, 4], "dtype": "F32", "shape": [1, 1, 1, 1, 1]}}), FOUR
            ),
            "rank",
        ),
        (_archive(_header({"a": {"data_offsets": [0, 4], "dtype": "F32", "shape": [True]}}), FOUR), "shape"),
        (_archive(_header({"a": {"data_offsets": [0, 4], "dtype": "F32", "shape": 1}}), FOUR), "shape"),
        (_archive(_header({"a": {"data_offsets": [0], "dtype": "F32", "shape": [1]}}), FOUR), "data_offsets"),
        (
            _archive(_header({"a": {"data_offsets": [0, 4], "dtype": "F32", "shape": [1], "x": 1}}), FOUR),
            "exactly",
        ),
        (_archive(_header({"a": {"dtype": "F32", "shape": [1]}}), FOUR), "exactly"),
        (_archive(_header({"A": {"data_offsets": [0, 4], "dtype": "F32", "shape": [1]}}), FOUR), "name"),
        (_archive(_header({"__metadata__": {}}), b""), "name"),
        (_archive(_header({"a": [0, 4]}), FOUR), "exactly"),
        (_archive(b"[]"), "object"),
        (_archive(b'{"a":1.5}'), "canonical"),
        (_archive(b"{ }"), "canonical"),
        (_archive(b"\xff"), "canonical"),
        (_archive(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"), "canonical"),
        (_archive(b'{"a":' + b"1" * 5000 + b"}"), "canonical"),
        # Unsorted members, duplicate names: another spelling of (or a different) header, not ours.
        (
            _archive(b'{"a":{"dtype":"F32","data_offsets":[0,4],"shape":[1]}}', FOUR),
            "canonical",
        ),
        (
            _archive(
                b'{"a":{"data_offsets":[0,4],"dtype":"F32","shape":[1]},'
                b'"a":{"data_offsets":[0,4],"dtype":"F32","shape":[1]}}',
                FOUR,
            ),
            "canonical",
        ),
    ],
)
def test_malformed_archives_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(TensorArchiveError, match=problem):
        decode_tensors(data)


def test_a_well_formed_handmade_archive_is_accepted() -> None:
    data = _archive(_header({"a": {"data_offsets": [0, 4], "dtype": "F32", "shape": [1]}}), FOUR)
    assert decode_tensors(data)["a"].tolist() == [1.0]


def test_decoded_arrays_do_not_alias_the_archive_bytes() -> None:
    data = bytearray(encode_tensors({"a": np.array([1.0], dtype=np.float32)}))
    decoded = decode_tensors(bytes(data))
    decoded["a"][0] = 2.0  # writable, and owned: the archive is untouched
    assert decode_tensors(bytes(data))["a"].tolist() == [1.0]


@pytest.mark.parametrize(
    ("tensors", "problem"),
    [
        ({"a": np.zeros(2, dtype=np.float64)}, "float32 and int32"),
        ({"a": np.zeros(2, dtype=np.int64)}, "float32 and int32"),
        ({"Bad": np.zeros(2, dtype=np.float32)}, "name"),
        ({"a..b": np.zeros(2, dtype=np.float32)}, "name"),
        ({"a": np.zeros((1, 1, 1, 1, 1), dtype=np.float32)}, "rank"),
    ],
)
def test_the_encoder_refuses_what_it_cannot_archive(tensors: dict[str, Tensor], problem: str) -> None:
    with pytest.raises(TensorArchiveError, match=problem):
        encode_tensors(tensors)


# --- sampling and reference generation ---------------------------------------------------------------


def test_temperature_zero_is_argmax_and_draws_nothing() -> None:
    logits = np.array([0.5, 3.0, 3.0, -1.0], dtype=np.float32)
    generator, untouched = new_generator(5), new_generator(5)
    assert sample_index(logits, 0.0, generator) == 1  # the first of the largest
    assert generator.random() == untouched.random()


def test_a_dominant_logit_is_always_drawn() -> None:
    logits = np.array([0.0, 100.0, 0.0], dtype=np.float32)
    generator = new_generator(0)
    assert {sample_index(logits, 1.0, generator) for _ in range(50)} == {1}


@given(
    hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-50, 50, width=32)),
    st.floats(0.001, 10),
    st.integers(0, 2**53 - 1),
)
def test_samples_are_in_range_and_reproducible(
    logits: npt.NDArray[np.float32], temperature: float, seed: int
) -> None:
    first = sample_index(logits, temperature, new_generator(seed))
    assert 0 <= first < logits.shape[0]
    assert sample_index(logits, temperature, new_generator(seed)) == first


@pytest.mark.parametrize(
    ("logits", "temperature"),
    [
        (np.array([1.0, np.nan], dtype=np.float32), 1.0),
        (np.array([1.0, np.inf], dtype=np.float32), 1.0),
        (np.array([], dtype=np.float32), 1.0),
        (np.zeros((2, 2), dtype=np.float32), 1.0),
        (np.array([1.0], dtype=np.float32), -0.5),
        (np.array([1.0], dtype=np.float32), math.nan),
    ],
)
def test_sampling_refuses_what_it_cannot_sample(logits: npt.NDArray[np.float32], temperature: float) -> None:
    with pytest.raises(ValueError, match=r"logits|temperature"):
        sample_index(logits, temperature, new_generator(0))


def test_a_negative_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        new_generator(-1)


def test_generation_is_reproducible_for_a_seed(trained: TrainingResult) -> None:
    weights = trained.weights
    first = generate(weights, "the keyserver ", 60, 1.0, seed=11)
    assert len(first) == 60
    assert set(first) <= set(vocabulary(weights))
    assert generate(weights, "the keyserver ", 60, 1.0, seed=11) == first
    assert generate(weights, "the keyserver ", 60, 2.0, seed=12) != first
    assert generate(weights, "", 0, 1.0, seed=11) == ""


def test_greedy_generation_follows_the_largest_logit(trained: TrainingResult) -> None:
    weights = trained.weights
    greedy = generate(weights, "the ", 20, 0.0, seed=1)
    assert generate(weights, "the ", 20, 0.0, seed=2) == greedy  # the seed does not matter at 0


def test_generation_refuses_unknown_characters_and_bad_arguments(trained: TrainingResult) -> None:
    with pytest.raises(ModelError, match="vocabulary"):
        generate(trained.weights, "THE", 5, 1.0, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        generate(trained.weights, "the", -1, 1.0, seed=0)


def test_vocab_tensor_round_trips_through_the_model_vocabulary(trained: TrainingResult) -> None:
    characters = vocabulary(trained.weights)
    assert vocab_tensor(characters).tolist() == trained.weights[VOCAB].tolist()
    assert characters == "".join(sorted(set(load_corpus())))
