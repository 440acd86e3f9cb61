"""The remote CLI's pure parts: how it prints (colour only on a terminal, never with NO_COLOR) and where
it takes the URL and token from (profiles, files, the environment)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clients.cli.credentials import CredentialError, load_profile, read_token_file, resolve_target
from clients.cli.output import Printer, plain
from clients.sdk import Key


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert "\x1b[32mgranted" in Printer(as_json=False, stream=Terminal()).decision("granted")
    assert Printer(as_json=False, stream=io.StringIO()).decision("granted") == "granted"
    monkeypatch.setenv("NO_COLOR", "1")
    assert Printer(as_json=False, stream=Terminal()).decision("denied") == "denied"


def test_tables_align_with_colour_and_json_is_one_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = Printer(as_json=False, stream=Terminal())
    table = out.table(["A", "DECISION", "Z"], [["1", out.decision("granted"), "x"], ["22", "denied", "y"]])
    lines = [
        line.replace("\x1b[32m", "").replace("\x1b[0m", "").replace("\x1b[1m", "")
        for line in table.splitlines()
    ]
    assert [line.index("x") if "x" in line else line.index("y") for line in lines[1:]] == [14, 14]
    stream = io.StringIO()
    key = Key("weights", "prod", "enabled", "software", [1, 2], [2])
    Printer(as_json=True, stream=stream).emit([key, {"at": datetime(2026, 1, 1, tzinfo=UTC)}], "ignored")
    assert json.loads(stream.getvalue()) == [
        {
            "name": "weights",
            "policy": "prod",
            "state": "enabled",
            "backend": "software",
            "versions": [1, 2],
            "live_versions": [2],
        },
        {"at": "2026-01-01T00:00:00+00:00"},
    ]
    assert plain(b"\x01") == "01"


def test_token_files_and_profiles(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("ks1.a.b.c\n")
    token.chmod(0o600)
    assert read_token_file(token) == "ks1.a.b.c"
    token.chmod(0o640)
    with pytest.raises(CredentialError, match="chmod 600"):
        read_token_file(token)
    token.chmod(0o600)
    token.write_text("ks1.a.b.c\nks1.d.e.f\n")
    with pytest.raises(CredentialError, match="exactly one token"):
        read_token_file(token)
    with pytest.raises(CredentialError, match="cannot read"):
        read_token_file(tmp_path / "missing")

    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[profiles.ci]\nurl = "https://k.example"\ntoken_env = "CI_TOKEN"\n')
    assert load_profile("ci", profiles) == {"url": "https://k.example", "token_env": "CI_TOKEN"}
    with pytest.raises(CredentialError, match=r"no \[profiles\.other\]"):
        load_profile("other", profiles)
    profiles.write_text('[profiles.ci]\nurl = "https://k.example"\ntoken = "ks1.x"\n')
    with pytest.raises(CredentialError, match="never written into the profile"):
        load_profile("ci", profiles)
    with pytest.raises(CredentialError, match="no profile file"):
        load_profile("ci", tmp_path / "none.toml")


def test_target_resolution_order(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="--url"):
        resolve_target(url=None, profile_name=None, tenant=None, token_file=None, environ={})
    env = {"KEYSERVER_TOKEN": "ks1.env.t.s"}
    target = resolve_target(url="https://k", profile_name=None, tenant="acme", token_file=None, environ=env)
    assert (target.url, target.tenant, target.token) == ("https://k", "acme", "ks1.env.t.s")
    token = tmp_path / "t"
    token.write_text("ks1.file.t.s")
    token.chmod(0o600)
    # A file named on the command line wins over the environment.
    target = resolve_target(url="https://k", profile_name=None, tenant=None, token_file=token, environ=env)
    assert target.token == "ks1.file.t.s"
    assert (
        resolve_target(url="https://k", profile_name=None, tenant=None, token_file=None, environ={}).token
        is None
    )
