"""The strict JSON reader every security decision parses with."""

from __future__ import annotations

import pytest

from keyserver.strict_json import loads_object, loads_strict


@pytest.mark.parametrize(
    "raw",
    [b'{"a": 1, "a": 2}', b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"\xff", b"[" * 100_000],
)
def test_ambiguous_or_non_json_input_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"duplicate|is not JSON|codec|recursion|Expecting"):
        loads_strict(raw)
    with pytest.raises(ValueError, match="not JSON"):
        loads_object(raw)


def test_only_an_object_is_an_object() -> None:
    assert loads_object(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    assert loads_strict(b"[1]") == [1]
    with pytest.raises(ValueError, match="not a JSON object"):
        loads_object(b"[1]")
