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


def test_compare_with_a_rim_and_print_reference_values() -> None:
    v = by_id("hopper-trustee-coco-580")
    files = v.expected["files"]
    rim = NV / "rims" / "1010_0200_882_960074001A_PROD.swidtag"
    done = evidence(
        "verify",
        "--tee",
        "nvidia-gpu",
        "--gpu-report",
        NV / files["report"],
        "--gpu-certs",
        NV / files["cert_chain"],
        "--nonce",
        v.expected["nonce"],
        "--now",
        "2026-11-23T00:00:00Z",
        "--rim",
        rim,
        "--rim-time",
        "2024-06-01T00:00:00Z",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)["claims"]
    assert (claims["gpu.rim_match"], claims["gpu.rim_mismatched_indices"]) == (False, ["9"])
    # The RIM's signer expired in 2025: verified at the report's date, it is refused.
    expired = evidence(
        "verify",
        "--tee",
        "nvidia-gpu",
        "--gpu-report",
        NV / files["report"],
        "--gpu-certs",
        NV / files["cert_chain"],
        "--nonce",
        v.expected["nonce"],
        "--now",
        "2026-11-23T00:00:00Z",
        "--rim",
        rim,
        "--json",
    )
    assert (expired.returncode, json.loads(expired.stdout)["reason"]) == (1, "rim-certificate-expired")
    values = evidence("rim-values", rim, "--now", "2024-06-01T00:00:00Z")
    assert values.returncode == 0, values.stderr
    document = json.loads(values.stdout)
    assert sorted(document["expected"], key=lambda n: int(n.rsplit(".", 1)[1]))[0] == "gpu.measurement.1"
    assert len(document["expected"]) == 12
