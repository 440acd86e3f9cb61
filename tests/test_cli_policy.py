"""`keyserver policy dry-run` on claims from a real vector (through `evidence verify --json`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyserver.cli import main
from tests.conftest import VECTORS

V = VECTORS
MEASUREMENT = (
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
)


@pytest.fixture
def files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    code = main(
        [
            "evidence",
            "verify",
            "--tee",
            "sev-snp",
            "--report",
            str(V / "snp/gsg-milan/attestation.bin"),
            "--cert",
            str(V / "snp/gsg-milan/vcek.testcer"),
            "--now",
            "2022-09-24T01:00:00Z",
            "--json",
        ]
    )
    assert code == 0
    claims = tmp_path / "claims.json"
    claims.write_text(capsys.readouterr().out)
    reference = tmp_path / "loader.json"
    reference.write_text(
        json.dumps(
            {
                "name": "loader",
                "tee": "sev-snp",
                "version": 1,
                "values": {"version": 1, "expected": {"snp.measurement": [MEASUREMENT]}},
            }
        )
    )
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": 1, "tees": ["sev-snp"], "reference_values": ["loader"]}))
    debug_ok = tmp_path / "debug-ok.json"
    debug_ok.write_text(
        json.dumps({"version": 1, "tees": ["sev-snp"], "allow_debug": True, "reference_values": ["loader"]})
    )
    return {"claims": claims, "reference": reference, "policy": policy, "debug_ok": debug_ok}


def dry_run(files: dict[str, Path], policy: str, *extra: str) -> int:
    return main(
        [
            "policy",
            "dry-run",
            "--policy",
            str(files[policy]),
            "--claims",
            str(files["claims"]),
            "--reference-values",
            str(files["reference"]),
            "--now",
            "2022-09-24T01:00:00Z",
            *extra,
        ]
    )


def test_debug_guest_denied_then_allowed_explicitly(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert dry_run(files, "policy", "--json") == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "debug-not-allowed"
    assert dry_run(files, "debug_ok") == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("granted")
    assert "pass" in out


def test_usage_errors(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "tees": []}')
    assert main(["policy", "dry-run", "--policy", str(bad), "--claims", str(files["claims"])]) == 2
    assert "invalid document" in capsys.readouterr().err
    assert (
        main(["policy", "dry-run", "--policy", str(tmp_path / "missing"), "--claims", str(files["claims"])])
        == 2
    )
