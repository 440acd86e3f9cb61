"""The file front-end behind ``keyserver evidence verify --tee tpm`` / ``keyserver evidence eventlog``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from keyserver.cli import main
from keyserver.errors import EvidenceError
from keyserver.evidence.claims import Claims
from keyserver.evidence.tpm.files import describe_event_log, raw_or_hex, verify_tpm_files

from .helpers import GCE, GCE_ROOTS, NOW, gce_ak, gce_pcrs


def _inputs(tmp_path: Path) -> dict[str, Path]:
    pcrs = tmp_path / "pcrs.json"
    pcrs.write_text(
        json.dumps({b: {str(i): v.hex() for i, v in p.items()} for b, p in gce_pcrs("sha256").items()})
    )
    roots = tmp_path / "roots"
    roots.mkdir()
    for name in ("tpm_ek_root_1.cer", "tpm_ek_intermediate_2.crt"):
        shutil.copy(GCE_ROOTS / name, roots / name)
    hex_attest = tmp_path / "quote.hex"
    hex_attest.write_text((GCE / "nonce9009" / "quote1_sha256.attest").read_bytes().hex() + "\n")
    pem = tmp_path / "ak.pem"
    pem.write_bytes(
        gce_ak().key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {"pcrs": pcrs, "roots": roots, "attest_hex": hex_attest, "ak_pem": pem}


def test_verify_tpm_files(tmp_path: Path) -> None:
    files = _inputs(tmp_path)
    claims = verify_tpm_files(
        attest_path=files["attest_hex"],
        signature_path=GCE / "nonce9009" / "quote1_sha256.sig",
        ak_path=GCE / "common" / "ak_pub.tpmt_public",
        nonce_hex="9009",
        pcrs_path=files["pcrs"],
        eventlog_path=GCE / "common" / "event_log.bin",
        ak_cert_path=GCE / "common" / "ak_cert.der",
        roots_dir=files["roots"],
        now=NOW,
    )
    assert claims["report_data"] == "9009"
    assert claims["tpm.secure_boot"] is True

    # A PEM AK is a bare key: accepted only when the AK certificate vouches for it.
    def pem_ak(cert: Path | None, roots: Path | None) -> Claims:
        return verify_tpm_files(
            attest_path=files["attest_hex"],
            signature_path=GCE / "nonce9009" / "quote1_sha256.sig",
            ak_path=files["ak_pem"],
            nonce_hex="9009",
            pcrs_path=files["pcrs"],
            eventlog_path=None,
            ak_cert_path=cert,
            roots_dir=roots,
            now=NOW,
        )

    with pytest.raises(EvidenceError) as err:
        pem_ak(None, None)
    assert err.value.reason == "tpm-ak-unverified"
    vouched = pem_ak(GCE / "common" / "ak_cert.der", files["roots"])
    assert vouched["tpm.ak_name"] is None


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _inputs(tmp_path)
    argv = [
        "evidence", "verify", "--tee", "tpm", "--json", "--now", "2026-11-23T00:00:00Z",
        "--quote", str(GCE / "nonce9009" / "quote1_sha256.attest"),
        "--signature", str(GCE / "nonce9009" / "quote1_sha256.sig"),
        "--ak", str(GCE / "common" / "ak_pub.tpmt_public"),
        "--pcrs", str(files["pcrs"]), "--eventlog", str(GCE / "common" / "event_log.bin"),
    ]  # fmt: skip
    assert main([*argv, "--nonce", "9009"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["verified"] is True
    assert document["claims"]["tpm.pcrs.sha256.0"] == gce_pcrs("sha256")["sha256"][0].hex()
    assert main([*argv, "--nonce", "9008"]) == 1
    rejected = json.loads(capsys.readouterr().out)
    assert rejected == {
        "verified": False,
        "tee": "tpm",
        "reason": "tpm-nonce-mismatch",
        "error": rejected["error"],
    }
    assert main(["evidence", "eventlog", "--json", str(GCE / "common" / "event_log.bin")]) == 0
    log = json.loads(capsys.readouterr().out)
    assert log["pcrs"]["sha256"]["0"] == gce_pcrs("sha256")["sha256"][0].hex()


def test_describe_event_log() -> None:
    document = describe_event_log(GCE / "common" / "event_log.bin")
    assert document["format"] == "crypto-agile"
    assert document["digest_mismatches"] == []
    assert document["unverified"]["secure_boot"] is True
    assert len(document["events"]) > 10


def test_raw_or_hex() -> None:
    assert raw_or_hex(b"ff54\n") == b"\xff\x54"
    assert raw_or_hex(b"\xff\x54") == b"\xff\x54"
    assert raw_or_hex(b"abc") == b"abc"
