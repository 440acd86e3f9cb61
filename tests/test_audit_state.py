"""A monitor's saved state (audit.state): round trip, atomic replacement, and every way a damaged, edited
or foreign state file is refused with its reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import Checkpoint, sign_checkpoint, vkey_for
from audit.state import (
    STATE_FORMAT,
    MonitorState,
    StateError,
    decode_state,
    encode_state,
    load_state,
    save_state,
)
from audit.verifier import LogAuditor, VerifiedHistory
from tests.fuzzing import fuzz_settings
from tests.test_audit_verifier import ORIGIN, MemoryLog, release

KEY = Ed25519PrivateKey.generate()  # one key for the hypothesis examples


@pytest.fixture
def log() -> MemoryLog:
    log = MemoryLog()
    log.add(*(release(n) for n in range(13)))
    return log


def state_of(log: MemoryLog) -> MonitorState:
    auditor = LogAuditor(log, log.vkey, keep_leaf_hashes=True)
    report = auditor.verify()
    assert auditor.leaf_hashes is not None
    return MonitorState(
        log.vkey, report.signed_checkpoint, VerifiedHistory(report.checkpoint, bytes(auditor.leaf_hashes))
    )


def test_round_trip_and_what_the_file_says(log: MemoryLog) -> None:
    state = state_of(log)
    raw = encode_state(state)
    assert decode_state(raw, log.vkey) == state
    document = json.loads(raw)
    assert document["format"] == STATE_FORMAT
    assert (document["origin"], document["tree_size"]) == (ORIGIN, 13)
    assert document["root_hash"] == log.store.root().hex()
    assert document["checkpoint"] == log.signed()
    assert len(base64.b64decode(document["leaf_hashes"])) == 13 * 32


def test_an_empty_log_has_a_state(log: MemoryLog) -> None:
    empty = MemoryLog(log.key)
    state = state_of(empty)
    assert decode_state(encode_state(state), empty.vkey).history.checkpoint.size == 0


def test_save_replaces_the_file_whole_and_leaves_nothing_beside_it(log: MemoryLog, tmp_path: Path) -> None:
    path = tmp_path / "acme.state"
    save_state(path, state_of(log))
    log.add(release(100))
    grown = state_of(log)
    save_state(path, grown)
    assert load_state(path, log.vkey) == grown
    assert [p.name for p in tmp_path.iterdir()] == ["acme.state"]


def test_a_save_that_fails_before_the_rename_leaves_the_old_state_and_no_debris(
    log: MemoryLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected at the rename (a full disk or a crash there): the old state survives whole."""
    path = tmp_path / "acme.state"
    old = state_of(log)
    save_state(path, old)
    log.add(release(100))

    def fail(_source: object, _target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("audit.state.os.replace", fail)
    with pytest.raises(OSError, match="No space"):
        save_state(path, state_of(log))
    assert load_state(path, log.vkey) == old
    assert [p.name for p in tmp_path.iterdir()] == ["acme.state"]


def edited(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def apply(raw: bytes) -> bytes:
        document = json.loads(raw)
        change(document)
        return json.dumps(document).encode()

    return apply


def flip_a_leaf_hash(document: dict[str, Any]) -> None:
    leaves = bytearray(base64.b64decode(document["leaf_hashes"]))
    leaves[5 * 32] ^= 1
    document["leaf_hashes"] = base64.b64encode(bytes(leaves)).decode()


def drop_a_leaf_hash(document: dict[str, Any]) -> None:
    document["leaf_hashes"] = base64.b64encode(base64.b64decode(document["leaf_hashes"])[:-32]).decode()


def sign_a_bigger_tree_with_another_key(document: dict[str, Any]) -> None:
    other = Ed25519PrivateKey.generate()
    document["checkpoint"] = sign_checkpoint(Checkpoint(ORIGIN, 14, bytes(32)), ORIGIN, other)


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda raw: raw[: len(raw) // 2], "not a JSON document"),
    "truncated to nothing": (lambda raw: b"", "not a JSON document"),
    "cut inside the leaf hashes": (
        lambda raw: raw[: raw.index(b'"leaf_hashes"') + 40] + b'"}',
        r"holds 0 leaf hashes for a checkpoint of 13 entries \(truncated\?\)",
    ),
    "leaf hashes that are not base64": (
        edited(lambda d: d.update(leaf_hashes="*" + d["leaf_hashes"][1:])),
        "not valid base64",
    ),
    "not UTF-8": (lambda raw: b"\xff" + raw, "not a JSON document"),
    "nested too deeply": (lambda raw: b"[" * 100_000 + b"]" * 100_000, "not a JSON document"),
    "a list": (lambda raw: b"[]", "not a JSON object"),
    "another format": (edited(lambda d: d.update(format="something-else/1")), "not a monitor state"),
    "a missing field": (edited(lambda d: d.pop("leaf_hashes")), "exactly the fields"),
    "an extra field": (edited(lambda d: d.update(note="hi")), "exactly the fields"),
    "a duplicate field": (lambda raw: raw[:-2] + b', "tree_size": 13}', "not a JSON document"),
    "a flipped leaf hash": (edited(flip_a_leaf_hash), "do not hash to its checkpoint's root"),
    "a leaf hash short": (edited(drop_a_leaf_hash), "holds 12 leaf hashes for a checkpoint of 13"),
    "a tree_size edited": (edited(lambda d: d.update(tree_size=14)), "disagree with its signed checkpoint"),
    "a tree_size true": (edited(lambda d: d.update(tree_size=True)), "disagree with its signed checkpoint"),
    "a root_hash edited": (
        edited(lambda d: d.update(root_hash="00" * 32)),
        "disagree with its signed checkpoint",
    ),
    "a checkpoint edited": (
        edited(lambda d: d.update(checkpoint=d["checkpoint"].replace("\n13\n", "\n14\n"))),
        "does not verify with the pinned key",
    ),
    "a checkpoint signed by another key": (
        edited(sign_a_bigger_tree_with_another_key),
        "does not verify with the pinned key",
    ),
    "a checkpoint that is not text": (edited(lambda d: d.update(checkpoint=7)), "checkpoint is not text"),
    "leaf hashes that are not text": (edited(lambda d: d.update(leaf_hashes=[1])), "not base64 text"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_damaged_or_edited_state_is_refused_with_the_reason(log: MemoryLog, name: str) -> None:
    damage, reason = DAMAGE[name]
    with pytest.raises(StateError, match=reason):
        decode_state(damage(encode_state(state_of(log))), log.vkey)


def test_another_logs_state_is_refused(log: MemoryLog) -> None:
    other = MemoryLog()
    other.add(release(1))
    with pytest.raises(StateError, match="another log's state"):
        decode_state(encode_state(state_of(other)), log.vkey)


def test_a_state_whose_key_field_was_changed_to_the_pinned_one_is_still_refused(log: MemoryLog) -> None:
    """Claiming the pinned key does not help: the checkpoint inside must verify with it."""
    other = MemoryLog()
    other.add(release(1))
    document = json.loads(encode_state(state_of(other)))
    document["verifier_key"] = log.vkey
    with pytest.raises(StateError, match="does not verify with the pinned key"):
        decode_state(json.dumps(document).encode(), log.vkey)


def test_a_missing_file_is_a_state_error(log: MemoryLog, tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read the state file"):
        load_state(tmp_path / "nowhere", log.vkey)


def test_the_reason_names_the_file(log: MemoryLog, tmp_path: Path) -> None:
    path = tmp_path / "acme.state"
    path.write_bytes(encode_state(state_of(log))[:100])
    with pytest.raises(StateError, match=f"the state file {path} is refused: it is not a JSON document"):
        load_state(path, log.vkey)


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=2000))
@fuzz_settings(100)
def test_any_damage_is_refused_or_is_the_same_state(noise: bytes, at: int) -> None:
    log = MemoryLog(KEY)
    log.add(*(release(n) for n in range(3)))
    raw = encode_state(state_of(log))
    at = min(at, len(raw))
    damaged = raw[:at] + noise + raw[at + len(noise) :]
    try:
        state = decode_state(damaged, vkey_for(ORIGIN, KEY.public_key()))
    except StateError:
        return
    assert state == decode_state(raw, log.vkey)  # only whitespace-like changes can survive
