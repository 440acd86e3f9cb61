"""Shares and commitments: round trips, and every way to mix, tamper with or truncate them is refused."""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from threshold import (
    MAX_KEY_LENGTH,
    MIN_KEY_LENGTH,
    CommitmentMismatch,
    DuplicateShare,
    InvalidParameters,
    KeyCommitment,
    KeyIdentity,
    MalformedCommitment,
    MalformedShare,
    NotEnoughShares,
    Share,
    ShareParametersMismatch,
    ThresholdError,
    WrongIdentity,
    combine,
    split,
)

IDENTITY = KeyIdentity("weights", 1, 2, 3)
KEY = bytes(range(32))


def shares_of(identity: KeyIdentity = IDENTITY, key: bytes = KEY) -> tuple[list[bytes], KeyCommitment]:
    shares, commitment = split(key, identity)
    return [share.to_bytes() for share in shares], commitment


def test_every_k_subset_in_every_order_recovers_the_key() -> None:
    for k, n in ((2, 2), (2, 3), (3, 3), (3, 5)):
        identity = KeyIdentity("weights", 7, k, n)
        shares, commitment = shares_of(identity)
        assert all(len(s) == 20 + len(KEY) for s in shares)
        for subset in itertools.permutations(shares, k):
            assert combine(subset, commitment, identity) == KEY
        # More than k: the extras must agree (they do).
        assert combine(shares, commitment, identity) == KEY


@given(
    key=st.binary(min_size=MIN_KEY_LENGTH, max_size=MAX_KEY_LENGTH),
    k=st.integers(2, 6),
    extra=st.integers(0, 4),
    data=st.data(),
)
def test_round_trip(key: bytes, k: int, extra: int, data: st.DataObject) -> None:
    identity = KeyIdentity("m.v-1_x", data.draw(st.integers(1, 2**32 - 1)), k, k + extra)
    shares, commitment = split(key, identity)
    assert max(len(s.to_bytes()) for s in shares) <= 64  # fits a keyserver's imported key
    chosen = data.draw(st.permutations(shares))[: data.draw(st.integers(k, k + extra))]
    assert combine([s.to_bytes() for s in chosen], commitment, identity) == key
    again = KeyCommitment.from_json(json.loads(json.dumps(commitment.to_json())))
    assert again == commitment
    with pytest.raises(NotEnoughShares):
        combine([s.to_bytes() for s in chosen[: k - 1]], commitment, identity)


def test_fewer_than_k_is_refused_naming_the_count() -> None:
    shares, commitment = shares_of(KeyIdentity("weights", 1, 3, 5))
    with pytest.raises(NotEnoughShares, match="needs 3 shares, 2 given"):
        combine(shares[:2], commitment, KeyIdentity("weights", 1, 3, 5))
    with pytest.raises(NotEnoughShares):
        combine([], commitment, KeyIdentity("weights", 1, 3, 5))


def test_a_duplicate_share_is_refused() -> None:
    shares, commitment = shares_of()
    with pytest.raises(DuplicateShare, match="index 1"):
        combine([shares[0], shares[0]], commitment, IDENTITY)


def test_shares_of_another_key_version_or_split_are_refused() -> None:
    shares, commitment = shares_of()
    other_version, _ = shares_of(KeyIdentity("weights", 2, 2, 3))
    other_key, _ = shares_of(KeyIdentity("embeddings", 1, 2, 3))
    other_split, _ = shares_of()  # the same key and version, split again: a fresh nonce
    for foreign in (other_version, other_key, other_split):
        with pytest.raises(WrongIdentity, match="another key, version or split"):
            combine([shares[0], foreign[1]], commitment, IDENTITY)
    # The commitment of another version, or asking for another version, is refused up front.
    _, commitment_v2 = shares_of(KeyIdentity("weights", 2, 2, 3))
    with pytest.raises(WrongIdentity, match="commitment is for weights version 2"):
        combine(shares[:2], commitment_v2, IDENTITY)
    with pytest.raises(WrongIdentity):
        combine(shares[:2], commitment, KeyIdentity("weights", 2, 2, 3))


def test_shares_of_another_threshold_are_refused() -> None:
    shares, commitment = shares_of()
    three_of_three, _ = shares_of(KeyIdentity("weights", 1, 3, 3))
    with pytest.raises(ShareParametersMismatch, match="3-of-3 share"):
        combine([shares[0], three_of_three[1]], commitment, IDENTITY)


def test_every_tampered_byte_of_every_share_is_detected() -> None:
    """Flip each bit of each byte of a share: the header is refused by form, tag or threshold; the
    value by the commitment. Never a wrong key."""
    shares, commitment = shares_of()
    for which in range(2):
        for position in range(len(shares[which])):
            for bit in range(8):
                tampered = bytearray(shares[which])
                tampered[position] ^= 1 << bit
                pair = [shares[0], bytes(tampered)] if which else [bytes(tampered), shares[1]]
                with pytest.raises(ThresholdError) as refused:
                    combine(pair, commitment, IDENTITY)
                if position >= 20:
                    assert isinstance(refused.value, CommitmentMismatch)


def test_a_tampered_extra_share_is_detected() -> None:
    shares, commitment = shares_of()
    tampered = bytearray(shares[2])
    tampered[-1] ^= 0x01
    with pytest.raises(CommitmentMismatch, match="share 3 does not agree"):
        combine([shares[0], shares[1], bytes(tampered)], commitment, IDENTITY)


def test_a_forged_share_with_a_valid_tag_is_caught_by_the_commitment() -> None:
    """A keyserver knows the public identity and can compute a valid tag; it still cannot make the
    shares combine to a key of its choice."""
    shares, commitment = shares_of()
    share = Share.from_bytes(shares[1])
    forged = Share(share.k, share.n, share.index, commitment.share_tag(share.index), bytearray(32)).to_bytes()
    with pytest.raises(CommitmentMismatch):
        combine([shares[0], forged], commitment, IDENTITY)


def test_every_truncation_and_extension_of_a_share_is_refused() -> None:
    shares, commitment = shares_of()
    for length in range(len(shares[1])):
        with pytest.raises(MalformedShare):
            combine([shares[0], shares[1][:length]], commitment, IDENTITY)
    with pytest.raises(MalformedShare):
        combine([shares[0], shares[1] + b"\x00"], commitment, IDENTITY)
    with pytest.raises(MalformedShare):
        Share.from_bytes(shares[1] + bytes(64))


@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_combine(data: bytes) -> None:
    shares, commitment = shares_of()
    with pytest.raises(ThresholdError):
        combine([shares[0], data], commitment, IDENTITY)


def test_the_combined_key_is_a_fresh_buffer_and_the_callers_shares_are_untouched() -> None:
    shares, commitment = split(KEY, IDENTITY)
    key = combine(shares[:2], commitment, IDENTITY)
    assert isinstance(key, bytearray)
    assert [bytes(s.value) for s in shares] != [bytes(32)] * 3  # the caller's shares are untouched
    key[:] = bytes(len(key))  # and the caller can wipe theirs


@pytest.mark.parametrize(
    ("name", "version", "k", "n"),
    [
        ("", 1, 2, 3),
        ("x" * 101, 1, 2, 3),
        ("a/b", 1, 2, 3),
        (".hidden", 1, 2, 3),
        ("w", 0, 2, 3),
        ("w", 2**32, 2, 3),
        ("w", 1, 1, 3),
        ("w", 1, 4, 3),
        ("w", 1, 2, 256),
        ("w", True, 2, 3),
        ("w", 1, 2.0, 3),
    ],
)
def test_invalid_identities_are_refused(name: str, version: Any, k: Any, n: int) -> None:
    with pytest.raises(InvalidParameters):
        KeyIdentity(name, version, k, n)


def test_keys_of_the_wrong_length_are_refused() -> None:
    for length in (0, MIN_KEY_LENGTH - 1, MAX_KEY_LENGTH + 1):
        with pytest.raises(InvalidParameters, match="a key to split"):
            split(secrets.token_bytes(length), IDENTITY)


def test_malformed_commitments_are_refused() -> None:
    _, commitment = shares_of()
    good = commitment.to_json()
    assert KeyCommitment.from_json(good) == commitment
    bad_documents: list[Any] = [
        [],
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "nonce"},
        {**good, "format": "v2"},
        {**good, "k": 1},
        {**good, "k": True},
        {**good, "length": 15},
        {**good, "length": "32"},
        {**good, "nonce": good["nonce"][:-1]},
        {**good, "nonce": good["nonce"] + "="},
        {**good, "digest": "!" + good["digest"][1:]},
        {**good, "digest": 5},
    ]
    for document in bad_documents:
        with pytest.raises(MalformedCommitment):
            KeyCommitment.from_json(document)


def test_a_commitment_to_another_key_refuses_the_combination() -> None:
    shares, commitment = shares_of()
    changed = dict(commitment.to_json())
    _, other = shares_of(key=bytes(32))
    changed["digest"] = other.to_json()["digest"]
    with pytest.raises(CommitmentMismatch, match="did not commit to"):
        combine(shares[:2], KeyCommitment.from_json(changed), IDENTITY)


def test_a_share_moved_to_another_index_is_refused_by_its_tag() -> None:
    """The index is bound by the tag: re-encoding share 2's value as share 3 is not share 3."""
    shares, commitment = shares_of()
    moved = bytearray(shares[1])
    moved[3] = 3
    with pytest.raises(WrongIdentity, match="index 3"):
        combine([shares[0], bytes(moved)], commitment, IDENTITY)
