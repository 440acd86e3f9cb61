"""`keyserver evidence verify` from files: exit 0 with claims, 1 with the reason, 2 for usage errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VECTORS
from tests.fixtures.server import KEYSERVER, clean_env

V = VECTORS


def evidence(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYSERVER, "evidence", *map(str, args)], env=clean_env(), capture_output=True, text=True, timeout=60
    )


def test_snp_report_verifies_at_its_date() -> None:
    result = evidence(
        "verify",
        "--tee",
        "sev-snp",
        "--report",
        V / "snp/gsg-milan/attestation.bin",
        "--cert",
        V / "snp/gsg-milan/vcek.testcer",
        "--now",
        "2022-09-24T01:00:00Z",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["verified"] is True
    claims = document["claims"]
    assert claims["tee"] == "sev-snp"
    assert claims["snp.measurement"] == (
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
    )
    assert claims["debug"] is True


def test_snp_report_as_hex_text(tmp_path: Path) -> None:
    hex_report = tmp_path / "report.hex"
    hex_report.write_text((V / "snp/gsg-milan/attestation.bin").read_bytes().hex() + "\n")
    result = evidence(
        "verify",
        "--tee",
        "sev-snp",
        "--report",
        hex_report,
        "--cert",
        V / "snp/gsg-milan/vcek.testcer",
        "--now",
        "2022-09-24T01:00:00Z",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("verified sev-snp evidence")


def test_expired_vlek_is_rejected_with_its_reason() -> None:
    result = evidence(
        "verify",
        "--tee",
        "sev-snp",
        "--report",
        V / "snp/trustee-milan-vlek-aws/test-vlek-report.bin",
        "--cert",
        V / "snp/trustee-milan-vlek-aws/test-vlek.der",
        "--now",
        "2026-11-23T00:00:00Z",
        "--json",
    )
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document == {
        "verified": False,
        "tee": "sev-snp",
        "reason": "certificate-expired",
        "error": document["error"],
    }
    assert "certificate-expired" in result.stderr


def test_tdx_quote_with_collateral() -> None:
    result = evidence(
        "verify",
        "--tee",
        "tdx",
        "--quote",
        V / "tdx/dcap-qvl/tdx_quote",
        "--collateral",
        V / "tdx/dcap-qvl/tdx_quote_collateral.json",
        "--now",
        "2025-07-19T10:00:34Z",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    claims = json.loads(result.stdout)["claims"]
    assert claims["tdx.tcb_status"] == "UpToDate"
    assert claims["tdx.advisory_ids"] == []
    stale = evidence(
        "verify",
        "--tee",
        "tdx",
        "--quote",
        V / "tdx/dcap-qvl/tdx_quote",
        "--collateral",
        V / "tdx/dcap-qvl/tdx_quote_collateral.json",
        "--now",
        "2025-07-19T10:00:35Z",
        "--json",
    )
    assert stale.returncode == 1
    assert json.loads(stale.stdout)["reason"] == "collateral-expired"


def test_tdx_v5_quote_is_unsupported() -> None:
    result = evidence(
        "verify", "--tee", "tdx", "--quote", V / "tdx/go-tdx-guest/quote_v5_sample.dat", "--json"
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["reason"] == "unsupported-version"


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "--tee", "sev-snp"],  # no --report
        ["verify", "--tee", "tdx"],  # no --quote
        ["verify", "--tee", "tdx", "--quote", "/nonexistent/quote"],
        ["verify", "--tee", "tdx", "--quote", str(V / "tdx/dcap-qvl/tdx_quote"), "--now", "2025-07-19"],
        ["verify", "--tee", "sgx", "--quote", "x"],
        ["verify"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = evidence(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
