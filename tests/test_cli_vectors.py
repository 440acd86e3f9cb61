"""Issue 4's "must show": the `keyserver evidence verify` command reproduces, for every SNP and TDX
vector, the measurement / RTMRs / report_data / TCB facts of tests/vectors (expected.json and
MANIFEST.md), at a `now` inside the vector's validity window, and rejects it outside."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VECTORS
from tests.fixtures.server import KEYSERVER, clean_env

V = VECTORS
SNP = json.loads((V / "snp/expected.json").read_text())["vectors"]
TDX = json.loads((V / "tdx/expected.json").read_text())["vectors"]


def cli(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [KEYSERVER, "evidence", "verify", *map(str, args), "--json"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def window(start: str, end: str) -> tuple[datetime, datetime, datetime]:
    a, b = datetime.fromisoformat(start), datetime.fromisoformat(end)
    return a, a + (b - a) / 2, b


@pytest.mark.parametrize("name", sorted(SNP))
def test_snp_vector(name: str) -> None:
    expected = SNP[name]
    start, middle, end = window(*expected["signing_cert_validity"])
    args = ["--tee", "sev-snp", "--report", V / expected["report"], "--cert", V / expected["signing_cert"]]
    code, document = cli(*args, "--now", iso(middle))
    assert code == 0, document
    claims = document["claims"]
    assert claims["report_data"] == expected["report_data"]
    for field in (
        "measurement",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "chip_id",
        "family_id",
        "image_id",
    ):
        assert claims[f"snp.{field}"] == expected[field], field
    for field in ("bootloader", "tee", "snp", "microcode"):
        assert claims[f"snp.reported_tcb.{field}"] == expected["reported_tcb"][field]
    assert claims["snp.policy"] == int(expected["policy"], 16)
    assert claims["snp.vmpl"] == expected["vmpl"]
    assert claims["snp.signing_key"] == expected["signer"].lower()
    assert claims["debug"] == bool(int(expected["policy"], 16) >> 19 & 1)
    for outside in (start - timedelta(seconds=1), end + timedelta(seconds=1)):
        code, document = cli(*args, "--now", iso(outside))
        assert code == 1
        assert document["reason"] in ("certificate-expired", "certificate-not-yet-valid")


V4 = sorted(name for name, item in TDX.items() if item["version"] == 4)
V5 = sorted(name for name, item in TDX.items() if item["version"] != 4)


@pytest.mark.parametrize("name", V4)
def test_tdx_v4_vector(name: str) -> None:
    expected = TDX[name]
    start, middle, end = window(*expected["valid_window"].split(" .. "))
    code, document = cli("--tee", "tdx", "--quote", V / name, "--now", iso(middle))
    assert code == 0, document
    claims = document["claims"]
    for field in (
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "report_data",
        "mrseam",
        "mrsignerseam",
        "td_attributes",
        "xfam",
        "tee_tcb_svn",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "fmspc",
    ):
        key = "report_data" if field == "report_data" else f"tdx.{field}"
        assert claims[key] == expected[field], field
    assert claims["tdx.tcb_status"] is None  # no collateral given
    for outside in (start - timedelta(seconds=1), end + timedelta(seconds=1)):
        code, document = cli("--tee", "tdx", "--quote", V / name, "--now", iso(outside))
        assert code == 1
        assert document["reason"] in ("certificate-expired", "certificate-not-yet-valid")


@pytest.mark.parametrize("name", V5)
def test_tdx_v5_vector_is_refused(name: str) -> None:
    code, document = cli("--tee", "tdx", "--quote", V / name)
    assert code == 1
    assert document["reason"] == "unsupported-version"


GO_TDX_GUEST = (
    "tdx/go-tdx-guest/sample_tcbInfo_response",
    "tdx/go-tdx-guest/sample_qeIdentity_response",
    "tdx/go-tdx-guest/pckcrl",
    "tdx/go-tdx-guest/rootcrl.der",
    "roots/intel/intel_sgx_tcb_signing_chain_2018-2025.pem",
    "roots/intel/intel_sgx_pck_platform_ca_chain.pem",
)
ZKDCAP = (
    "tdx/zkdcap/tcbinfov3_00806f050000.json",
    "tdx/zkdcap/qeidentityv2_tdx.json",
    "tdx/zkdcap/pck_platform_crl.der",
    "tdx/zkdcap/intel_root_ca_crl.der",
    "roots/intel/intel_sgx_tcb_signing_chain_2018-2025.pem",
)


def collateral(tmp_path: Path, files: tuple[str, ...]) -> Path:
    directory = tmp_path / "collateral"
    directory.mkdir()
    for rel in files:
        shutil.copy(V / rel, directory / Path(rel).name)
    return directory


@pytest.mark.parametrize(
    ("quote", "files", "now", "status", "advisories", "reason"),
    [
        ("tdx/dcap-qvl/tdx_quote", None, "2025-07-19T10:00:34Z", "UpToDate", [], None),
        (
            "tdx/go-tdx-guest-gcp-ccel/cos-113-tdx-quote.dat",
            ZKDCAP,
            "2025-01-21T13:44:20Z",
            "UpToDate",
            [],
            None,
        ),
        (
            "other/azure-tdx-vtpm/td-quote.bin",
            ZKDCAP,
            "2025-01-21T13:44:20Z",
            "OutOfDate",
            ["INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"],
            None,
        ),
        ("tdx/trustee/tdx_quote_4.dat", GO_TDX_GUEST, "2023-07-01T01:00:00Z", "UpToDate", [], None),
        (
            "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
            GO_TDX_GUEST,
            "2023-07-01T01:00:00Z",
            None,
            None,
            "tcb-level-not-found",
        ),
    ],
)
def test_tdx_tcb_status_from_collateral(
    tmp_path: Path,
    quote: str,
    files: tuple[str, ...] | None,
    now: str,
    status: str | None,
    advisories: list[str] | None,
    reason: str | None,
) -> None:
    source = V / "tdx/dcap-qvl/tdx_quote_collateral.json" if files is None else collateral(tmp_path, files)
    code, document = cli("--tee", "tdx", "--quote", V / quote, "--collateral", source, "--now", now)
    if reason is not None:
        assert code == 1
        assert document["reason"] == reason
        return
    assert code == 0, document
    assert document["claims"]["tdx.tcb_status"] == status
    assert document["claims"]["tdx.advisory_ids"] == advisories
