"""``keyserver key split``: files, modes, the key file's two forms, and refusals that write nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from keyserver.cli import main
from threshold import KeyCommitment, KeyIdentity, combine

KEY = bytes(range(0x40, 0x60))


def split(out_dir: Path, *extra: str, k: int = 2, n: int = 3) -> int:
    args = ["key", "split", "--name", "weights", "--version", "3", "--k", str(k), "--n", str(n)]
    return main([*args, "--out-dir", str(out_dir), *extra])


@pytest.mark.parametrize("form", ["raw", "hex"])
def test_split_a_given_key(tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY if form == "raw" else KEY.hex().encode() + b"\n")
    out = tmp_path / "out"
    assert split(out, "--key-file", str(key_file), "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert sorted(document["files"]) == ["share-1", "share-2", "share-3"]  # the owner's key is not copied
    assert sorted(p.name for p in out.iterdir()) == [
        "commitment.json",
        "share-1.bin",
        "share-2.bin",
        "share-3.bin",
    ]
    for i in (1, 2, 3):
        assert stat.S_IMODE((out / f"share-{i}.bin").stat().st_mode) == 0o600
    commitment = KeyCommitment.from_json(json.loads((out / "commitment.json").read_text()))
    identity = KeyIdentity("weights", 3, 2, 3)
    shares = [(out / f"share-{i}.bin").read_bytes() for i in (1, 3)]
    assert combine(shares, commitment, identity) == KEY


def test_a_generated_key_is_written_once_with_the_shares(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an existing empty directory is fine
    assert split(out, k=3, n=5) == 0
    key = (out / "key.bin").read_bytes()
    assert len(key) == 32
    assert stat.S_IMODE((out / "key.bin").stat().st_mode) == 0o600
    commitment = KeyCommitment.from_json(json.loads((out / "commitment.json").read_text()))
    shares = [(out / f"share-{i}.bin").read_bytes() for i in (5, 2, 4)]
    assert combine(shares, commitment, KeyIdentity("weights", 3, 3, 5)) == key


def test_refusals_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "share-1.bin").write_bytes(b"earlier")
    assert split(occupied) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in occupied.iterdir()] == ["share-1.bin"]
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    for extra, k, n, message in (
        (["--key-file", str(short)], 2, 3, "a key to split is 16..44 bytes"),
        (["--key-file", str(tmp_path / "missing")], 2, 3, "cannot read the key file"),
        ([], 4, 3, "need 2 <= k <= n"),
        ([], 1, 3, "k=1 is no threshold"),
    ):
        assert split(tmp_path / "new", *extra, k=k, n=n) == 1
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied", "short"]  # no staging left behind
