"""Property tests for the new parsers (issue 19): on any input — random bytes, or a real vector with
random edits — the HCL report, runtime-data and Nitro COSE/CBOR parsers either parse or raise a typed
EvidenceError; nothing else escapes, nothing hangs. ``make fuzz`` scales the budgets (tests/fuzzing.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyserver.errors import EvidenceError
from keyserver.evidence.azure import parse_hcl_report
from keyserver.evidence.azure.hcl import parse_runtime_data
from keyserver.evidence.nitro import parse_document
from keyserver.evidence.nitro.verify import verify_nitro_document
from tests.cloud.vectors import AZURE, NITRO
from tests.fuzzing import fuzz_settings

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),
]

HCL = AZURE["snp/hcl-report"].hcl_report
DOCUMENT = NITRO["valid-attestation-doc-bytes"].document


def _edited(base: bytes) -> st.SearchStrategy[bytes]:
    @st.composite
    def edit(draw: st.DrawFn) -> bytes:
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            kind = draw(st.sampled_from(["set", "cut", "insert"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if kind == "set" and data:
                data[at] = draw(st.integers(0, 255))
            elif kind == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
        return bytes(data)

    return edit()


def _parses_or_refuses(parse: object, data: bytes) -> None:
    try:
        parse(data)  # type: ignore[operator]
    except EvidenceError as exc:
        if not exc.reason:
            raise AssertionError("an EvidenceError without a reason") from exc


@fuzz_settings(200)
@given(st.one_of(st.binary(max_size=4096), _edited(HCL)))
def test_hcl_parser_parses_or_refuses(data: bytes) -> None:
    _parses_or_refuses(parse_hcl_report, data)


@fuzz_settings(200)
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
            ),
        ).map(lambda v: json.dumps({"keys": v}).encode()),
    )
)
def test_runtime_data_parser_parses_or_refuses(data: bytes) -> None:
    _parses_or_refuses(parse_runtime_data, data)


_CBOR = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=64) | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-5, 40) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@fuzz_settings(200)
@given(
    st.one_of(
        st.binary(max_size=2048),
        _edited(DOCUMENT),
        _CBOR.map(cbor2.dumps),
        st.tuples(_CBOR, _CBOR).map(
            lambda pair: cbor2.dumps([cbor2.dumps({1: -35}), {}, cbor2.dumps(pair[0]), bytes(96)])
        ),
    )
)
def test_nitro_parser_parses_or_refuses(data: bytes) -> None:
    _parses_or_refuses(parse_document, data)


@fuzz_settings(100)
@given(_edited(DOCUMENT))
def test_edited_nitro_documents_are_never_accepted(data: bytes) -> None:
    v = NITRO["valid-attestation-doc-bytes"]
    now = v.not_before + (v.not_after - v.not_before) / 2
    if data == DOCUMENT:
        return
    try:
        verify_nitro_document(data, now=now)
    except EvidenceError:
        return
    # Only an edit outside the signed bytes that leaves the same meaning could pass: there is none.
    raise AssertionError("an edited document was accepted")


def test_deeply_nested_cbor_is_refused_not_crashing() -> None:
    deep = b"\x81" * 60_000 + b"\x00"
    with pytest.raises(EvidenceError):
        parse_document(deep)


def test_bytes_after_the_cbor_item_are_refused() -> None:
    v = NITRO["valid-attestation-doc-bytes"]
    now = v.not_before + (v.not_after - v.not_before) / 2
    with pytest.raises(EvidenceError) as info:
        verify_nitro_document(DOCUMENT + b"\x00", now=now)
    assert info.value.reason == "nitro-document-malformed"
    assert datetime.now(UTC) > now
