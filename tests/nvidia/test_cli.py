"""``keyserver evidence verify --tee nvidia-gpu … --json`` on the real vectors (as a subprocess)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.test_cli_evidence import evidence

from .vectors import NV, by_id

BLACKWELL = by_id("blackwell-nvat-575")


def gpu(report: Path, certs: Path, nonce: str, now: str) -> tuple[int, dict[str, object]]:
    done = evidence(
        "verify",
        "--tee",
        "nvidia-gpu",
        "--gpu-report",
        report,
        "--gpu-certs",
        certs,
        "--nonce",
        nonce,
        "--now",
        now,
        "--json",
    )
    return done.returncode, json.loads(done.stdout)


def test_blackwell_vector_verifies_at_its_date() -> None:
    files = BLACKWELL.expected["files"]
    code, out = gpu(
        NV / files["report"], NV / files["cert_chain"], BLACKWELL.expected["nonce"], "2026-11-23T00:00:00Z"
    )
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict)
    assert (out["tee"], claims["gpu.arch"], claims["gpu.driver_version"]) == (
        "nvidia-gpu",
        "blackwell",
        "575.32",
    )


def test_one_second_before_the_chain_is_rejected_with_its_reason() -> None:
    files = BLACKWELL.expected["files"]
    code, out = gpu(
        NV / files["report"], NV / files["cert_chain"], BLACKWELL.expected["nonce"], "2023-06-19T23:59:59Z"
    )
    assert code == 1
    assert out["reason"] == "gpu-certificate-not-yet-valid"


def test_base64_report_from_nvidia_json_and_wrong_nonce(tmp_path: Path) -> None:
    v = by_id("nvat-hopper_evidence[0]")
    report, certs = tmp_path / "report.b64", tmp_path / "chain.pem"
    report.write_text(base64.b64encode(v.report).decode())
    certs.write_bytes(v.chain)
    assert gpu(report, certs, v.expected["nonce"], "2026-11-23T00:00:00Z")[0] == 0
    code, out = gpu(report, certs, "00" * 32, "2026-11-23T00:00:00Z")
    assert (code, out["reason"]) == (1, "gpu-nonce-mismatch")


def test_missing_options_exit_2() -> None:
    assert evidence("verify", "--tee", "nvidia-gpu", "--nonce", "00").returncode == 2
