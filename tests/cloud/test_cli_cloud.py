"""`keyserver evidence verify --tee azure-snp-vtpm|azure-tdx-vtpm|aws-nitro … --json` on the real vectors:
accepted inside their windows with their MANIFEST claims, refused (exit 1, with the reason) outside them
or with another nonce."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.cloud.vectors import AZURE, NITRO, OTHER, AzureVector
from tests.test_cli_vectors import cli, iso

ONE_SECOND = timedelta(seconds=1)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)


def azure_args(v: AzureVector, tmp: Path, nonce: bytes | None = None) -> list[str | Path]:
    files = {
        "hcl": v.hcl_report,
        "quote": v.quote,
        "sig": v.signature,
        "pcrs": json.dumps([p.hex() for p in v.pcrs]).encode(),
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    args: list[str | Path] = ["--tee", v.tee, "--hcl-report", tmp / "hcl", "--quote", tmp / "quote"]
    args += ["--signature", tmp / "sig", "--pcrs", tmp / "pcrs", "--nonce", (nonce or v.nonce).hex()]
    if v.vcek is not None:
        (tmp / "vcek").write_bytes(v.vcek)
        args += ["--cert", tmp / "vcek"]
    if v.td_quote is not None:
        (tmp / "td").write_bytes(v.td_quote)
        args += ["--td-quote", tmp / "td"]
    return args


@pytest.mark.parametrize("name", ["snp/hcl-report", "snp/evidence-v2", "tdx/evidence-v0"])
def test_azure_vector_through_the_cli(name: str, tmp_path: Path) -> None:
    v = AZURE[name]
    start, end = v.validity()
    args = azure_args(v, tmp_path)
    code, document = cli(*args, "--now", iso(start))
    assert code == 0, document
    assert document["verified"] is True
    assert document["tee"] == v.tee
    claims = document["claims"]
    assert claims["report_data"] == v.nonce.hex()
    if v.pcr0:
        assert claims["tpm.pcrs.sha256.0"] == v.pcr0
    code, document = cli(*args, "--now", iso(end + ONE_SECOND))
    assert code == 1
    assert document["verified"] is False
    code, document = cli(*azure_args(v, tmp_path, nonce=b"egnellahc"), "--now", iso(start))
    assert (code, document["reason"]) == (1, "tpm-nonce-mismatch")


@pytest.mark.parametrize("name", sorted(NITRO))
def test_nitro_vector_through_the_cli(name: str) -> None:
    v = NITRO[name]
    path = OTHER / "aws-nitro" / name
    code, document = cli("--tee", "aws-nitro", "--document", path, "--now", iso(v.not_before))
    assert code == 0, document
    assert document["claims"]["debug"] is v.debug
    assert document["claims"]["nitro.pcrs.0"].startswith(v.pcr0_prefix)
    code, document = cli("--tee", "aws-nitro", "--document", path, "--now", iso(v.not_before - ONE_SECOND))
    assert (code, document["reason"]) == (1, "nitro-certificate-expired")
