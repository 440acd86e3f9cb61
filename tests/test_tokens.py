"""Token format: parsing is strict and total (hypothesis), hashing is keyed to the whole token."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyserver.errors import Unauthenticated
from keyserver.tokens import hash_token, new_token, parse_token, token_matches

pytestmark = pytest.mark.fuzz


@given(st.text(max_size=200))
def test_parse_never_raises_anything_but_unauthenticated(text: str) -> None:
    with contextlib.suppress(Unauthenticated):
        parse_token(text)


@given(st.uuids(), st.uuids(), st.booleans())
def test_round_trip(tenant: uuid.UUID, token_id: uuid.UUID, operator: bool) -> None:
    raw = new_token(None if operator else tenant, token_id)
    parsed = parse_token(raw)
    assert parsed.token_id == token_id
    assert parsed.tenant_id == (None if operator else tenant)
    assert token_matches(raw, hash_token(raw))


@given(st.uuids(), st.integers(min_value=0), st.characters(codec="ascii"))
def test_any_single_character_change_breaks_the_match(tenant: uuid.UUID, position: int, char: str) -> None:
    raw = new_token(tenant, uuid.uuid4())
    index = position % len(raw)
    changed = raw[:index] + char + raw[index + 1 :]
    if changed != raw:
        assert not token_matches(changed, hash_token(raw))


def test_tokens_are_unique_and_carry_256_bits() -> None:
    tenant, token_id = uuid.uuid4(), uuid.uuid4()
    secrets = {new_token(tenant, token_id).rsplit(".", 1)[1] for _ in range(1000)}
    assert len(secrets) == 1000
    assert all(len(s) == 43 for s in secrets)


@pytest.mark.parametrize(
    "raw",
    [
        "ks1",
        "ks1...",
        "ks1.operator.x.y",
        "KS1.operator." + "0" * 32 + "." + "A" * 43,
        "ks1.operator." + "0" * 32 + "." + "A" * 43 + "\n",
        "ks1.OPERATOR." + "0" * 32 + "." + "A" * 43,
    ],
)
def test_malformed(raw: str) -> None:
    with pytest.raises(Unauthenticated):
        parse_token(raw)
