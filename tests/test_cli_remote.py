"""The remote CLI (`keyserver --url …`, clients/cli/) against a real `keyserver serve` process.

A tenant is set up from scratch with nothing but the CLI, as its admin and its CI job would: trust the
swtpm's EK CA, register a CI signer, have CI sign and publish the loader's reference values in one
command, add a policy with examples and activate it, create a key, set a release limit, then dry-run the
policy against real swtpm evidence (verified by the server, explained rule by rule) and read the log.
Every command's ``--json`` output is one JSON document; errors are the server's detail plus what to do,
never a traceback. (The AK's enrolment is the loader's step, not the admin's: done here over HTTP.)
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import secrets
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from joserfc.jwk import ECKey
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT
from tpm2_pytss.utils import NVReadEK

from audit.cosignature import cosigner_vkey
from clients.cli.main import main as cli_main
from clients.cli.parser import command_words, completion_script
from keyserver.binding import binding, report_data_for
from keyserver.evidence.tpm import structures as st
from tests.fixtures.server import KEYSERVER, ServerProcess, clean_env
from tests.test_audit_cli import LogWriter, releases
from tests.test_release_swtpm import PCR, SELECTION, extend, loader_ak
from tests.tpm.test_swtpm import EK_CERT_NV, EK_RSA, TpmAk, ek_auth, read_ek, read_pcrs

pytestmark = pytest.mark.swtpm


class Cli:
    """Runs the CLI in this process (fast), as `keyserver --url URL --token-file FILE …`."""

    def __init__(self, url: str, token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.url, self.token_file, self.capsys = url, token_file, capsys

    def __call__(self, *args: str, expect: int = 0) -> tuple[str, str]:
        out = io.StringIO()
        self.capsys.readouterr()
        status = cli_main(["--url", self.url, "--token-file", str(self.token_file), *args], stdout=out)
        err = self.capsys.readouterr().err
        assert status == expect, f"{args}: exit {status}\n{out.getvalue()}\n{err}"
        assert "Traceback" not in err
        return out.getvalue(), err

    def json(self, *args: str, expect: int = 0) -> Any:
        out, _ = self(*args, "--json", expect=expect)
        return json.loads(out)  # exactly one JSON document


def secret_file(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    path.chmod(0o600)
    return path


def operator(server: ServerProcess, *args: str) -> str:
    """The operator's own CLI, on the server's data directory (the steps before the tenant's)."""
    done = subprocess.run(
        [KEYSERVER, *args],
        env=clean_env(KEYSERVER_DATA_DIR=str(server.data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def enrol_ak(url: str, ectx: ESAPI, ak: TpmAk) -> None:
    """The loader's side of enrolment (no token: the TPM proves itself)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    _, ek_public = read_ek(ectx, EK_RSA)
    started = httpx.post(
        f"{url}/v1/tenants/acme/tpm/enrolments",
        json={
            "ek_public": b64(st.marshal_tpm2b_public(ek_public)),
            "ak_public": b64(ak.public),
            "ek_certificate": b64(bytes(NVReadEK(ectx)(EK_CERT_NV[EK_RSA]))),
        },
    )
    assert started.status_code == 201, started.text
    challenge = started.json()
    ek, _ = read_ek(ectx, EK_RSA)
    with ek_auth(ectx, EK_RSA) as auth:
        secret = ectx.activate_credential(
            ak.handle,
            ek,
            TPM2B_ID_OBJECT(credential=base64.b64decode(challenge["credential_blob"])[2:]),
            TPM2B_ENCRYPTED_SECRET(secret=base64.b64decode(challenge["encrypted_secret"])[2:]),
            session1=ESYS_TR.PASSWORD,
            session2=auth,
        )
    activated = httpx.post(
        f"{url}/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate",
        json={"secret": b64(bytes(secret))},
    )
    assert activated.status_code == 201, activated.text


def recorded_evidence(ectx: ESAPI, ak: TpmAk, nonce: bytes) -> dict[str, Any]:
    """Evidence as a loader makes it, saved with the nonce and ephemeral key it is bound to."""
    jwk = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    attest, signature = ectx.quote(ak.handle, SELECTION, report_data_for("tpm", binding(nonce, jwk)))
    pcrs = read_pcrs(ectx, SELECTION)
    evidence = {
        "tee": "tpm",
        "ak_name": ak.verifier_ak().name.hex(),  # type: ignore[union-attr]
        "quote": base64.b64encode(bytes(attest)).decode(),
        "signature": base64.b64encode(bytes(signature.marshal())).decode(),
        "pcrs": {bank: {str(i): v.hex() for i, v in values.items()} for bank, values in pcrs.items()},
    }
    return {"evidence": evidence, "nonce": base64.urlsafe_b64encode(nonce).decode(), "ephemeral_key": jwk}


def test_a_tenant_from_scratch_with_only_the_cli(
    keyserver_process: ServerProcess,
    swtpm: Any,
    tpm_esapi: ESAPI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = keyserver_process.url
    operator(keyserver_process, "tenant", "create", "acme")
    admin_token = json.loads(
        operator(keyserver_process, "token", "create", "--tenant", "acme", "--role", "tenant-admin", "--json")
    )["token"]
    admin = Cli(url, secret_file(tmp_path / "admin.token", admin_token), capsys)

    me = admin.json("whoami")
    assert (me["role"], me["tenant"]) == ("tenant-admin", "acme")

    # Trust the TPM vendor's EK CA; the loader enrols its AK against it.
    for path in swtpm.ek_ca_certs:
        anchor = admin.json("tpm", "anchor", "add", path.name, str(path), "--kind", "ek-ca")
        assert anchor["kind"] == "ek-ca"
    assert len(admin.json("tpm", "anchor", "list")) == len(swtpm.ek_ca_certs)
    extend(tpm_esapi, b"reviewed loader build 7")
    with loader_ak(tpm_esapi) as ak:
        enrol_ak(url, tpm_esapi, ak)
        (tmp_path / "ek.pub").write_bytes(st.marshal_tpm2b_public(ak.ek_public))
        assert [a["ak_name"] for a in admin.json("tpm", "ak", "list")] == [ak.verifier_ak().name.hex()]  # type: ignore[union-attr]

        # A CI signer: its public key registered by the admin, its own token, and one command in CI.
        signing_key = ed25519.Ed25519PrivateKey.generate()
        public_pem = signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / "ci.pub").write_bytes(public_pem)
        assert admin.json("signer", "register", "ci", str(tmp_path / "ci.pub"))["name"] == "ci"
        ci_token = admin.json("token", "create", "--role", "ci-signer", "--description", "pipeline")["token"]
        ci = Cli(url, secret_file(tmp_path / "ci.token", ci_token), capsys)
        key_file = secret_file(
            tmp_path / "ci.key",
            signing_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        )
        pcr = read_pcrs(tpm_esapi, SELECTION)["sha256"][PCR].hex()
        bundle = tmp_path / "loader.json"
        bundle.write_text(
            json.dumps(
                {
                    "name": "loader",
                    "tee": "tpm",
                    "values": {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [pcr]}},
                }
            )
        )
        published = ci.json("refs", "publish", str(bundle), "--signer", "ci", "--signing-key", str(key_file))
        assert (published["name"], published["version"], published["source"]) == ("loader", 1, "ci-signer:ci")

        # A policy with examples, added, then activated (its examples run), and a key under it.
        policy = {
            "version": 1,
            "tees": ["tpm"],
            "reference_values": ["loader"],
            "rules": [{"name": "fresh-boot", "expr": "claims['tpm.reset_count'] >= 0"}],
            "examples": {
                "grant": [
                    {"tee": "tpm", "debug": False, f"tpm.pcrs.sha256.{PCR}": pcr, "tpm.reset_count": 0}
                ],
                "deny": [
                    {"tee": "tpm", "debug": False, f"tpm.pcrs.sha256.{PCR}": "00" * 32, "tpm.reset_count": 0}
                ],
            },
        }
        (tmp_path / "policy.json").write_text(json.dumps(policy))
        added = admin.json("policy", "add", "prod", str(tmp_path / "policy.json"))
        assert (added["version"], added["active"]) == (1, False)
        assert admin.json("policy", "activate", "prod", "1")["active"] is True
        key = admin.json("key", "create", "weights", "--policy", "prod")
        assert (key["name"], key["state"]) == ("weights", "enabled")
        limit = admin.json("limits", "set", "--key", "weights", "--max", "100", "--window", "1h")
        assert (limit["scope"], limit["max_releases"], limit["window_seconds"]) == ("key/weights", 100, 3600)

        # Dry-run against real swtpm evidence: verified by the server, explained rule by rule.
        evidence_file = tmp_path / "evidence.json"
        evidence_file.write_text(json.dumps(recorded_evidence(tpm_esapi, ak, secrets.token_bytes(32))))
        dry = admin.json("policy", "dry-run", "prod", "--evidence", str(evidence_file))
        assert dry["granted"] is True
        assert dry["evidence_verified"] is True
        assert dry["claims"][f"tpm.pcrs.sha256.{PCR}"] == pcr
        assert {r["passed"] for r in dry["results"]} == {True}
        assert len(dry["results"]) >= 2
        human, _ = admin("policy", "dry-run", "prod", "--evidence", str(evidence_file))
        assert "evidence verified" in human
        assert "granted" in human
        assert "\x1b[" not in human

        # Evidence for another nonce than it claims does not verify: denied, with the reason.
        forged = json.loads(evidence_file.read_text())
        forged["nonce"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        evidence_file.write_text(json.dumps(forged))
        refused = admin.json("policy", "dry-run", "prod", "--evidence", str(evidence_file), expect=1)
        assert refused["granted"] is False
        assert refused["evidence_verified"] is False
        assert refused["reason"]
        assert refused["claims"] is None

        # PCR moved on (another loader build): the same check now explains which rule fails.
        extend(tpm_esapi, b"unreviewed build")
        evidence_file.write_text(json.dumps(recorded_evidence(tpm_esapi, ak, secrets.token_bytes(32))))
        moved = admin.json("policy", "dry-run", "prod", "--evidence", str(evidence_file), expect=1)
        assert moved["evidence_verified"] is True
        assert moved["reason"] == "reference-value-mismatch"

    # Every listing, as JSON and as a table.
    for command in (
        ("key", "list"),
        ("policy", "list"),
        ("refs", "list"),
        ("signer", "list"),
        ("tpm", "anchor", "list"),
        ("tpm", "ak", "list"),
        ("limits", "show"),
        ("token", "list"),
    ):
        document = admin.json(*command)
        assert isinstance(document, list | dict), command
        assert document, command
        table, _ = admin(*command)
        assert table.splitlines()[0].split()[0].isupper(), command  # a header row
    assert [k["name"] for k in admin.json("key", "list")] == ["weights"]
    assert admin.json("key", "rotate", "weights")["versions"] == [1, 2]
    assert admin.json("key", "disable", "weights")["state"] == "disabled"
    assert admin.json("key", "enable", "weights")["state"] == "enabled"
    reset = admin.json("limits", "reset", "--key", "weights")
    assert reset["source"] == "default"
    # Witnesses: set (refuse by default), shown as a table, a bad URL refused, removed.
    witness_key = cosigner_vkey("w.example", ed25519.Ed25519PrivateKey.generate().public_key())
    witnessed = admin.json(
        "witnesses", "set", "--witness", "w.example", "https://w.example", witness_key, "--quorum", "1"
    )
    assert (witnessed["failure_mode"], witnessed["quorum"]) == ("refuse", 1)
    table, _ = admin("witnesses", "show")
    assert "w.example" in table
    assert "quorum 1 of 1, failure mode refuse" in table
    admin.json(
        "witnesses", "set", "--witness", "w.example", "ftp://w", witness_key, "--quorum", "1", expect=1
    )
    assert admin.json("witnesses", "remove")["witnesses"] == []
    assert admin.json("witnesses", "show")["witnesses"] == []

    # The log, as an auditor: everything above is in it.
    auditor_token = admin.json("token", "create", "--role", "auditor")["token"]
    auditor = Cli(url, secret_file(tmp_path / "auditor.token", auditor_token), capsys)
    log = auditor.json("log", "show")
    kinds = [e["entry"]["kind"] for e in log["entries"]]
    assert "tpm-ak-enrolled" in kinds
    assert "release-limit-set" in kinds
    assert "release-limit-removed" in kinds
    assert log["tree_size"] == len(log["entries"])
    limited = auditor.json("log", "show", "--kind", "release-limit-set")
    assert [e["entry"]["scope"] for e in limited["entries"]] == ["key/weights"]
    tail, _ = auditor("log", "tail", "-n", "2")
    assert len(tail.strip().splitlines()) == 2
    tail_json, _ = auditor("log", "tail", "-n", "3", "--json")
    assert [json.loads(line)["index"] for line in tail_json.splitlines()] == [
        log["tree_size"] - 3,
        log["tree_size"] - 2,
        log["tree_size"] - 1,
    ]

    # Refusals: the server's detail and what to do, exit 1, never a traceback.
    _refused_out, refused_err = auditor("key", "create", "other", "--policy", "prod", expect=1)
    assert "whoami" in refused_err  # the hint: check the token's role
    problem = auditor.json("key", "create", "other", "--policy", "prod", expect=1)
    assert problem["error"] == "forbidden"
    assert problem["status"] == 403
    _, missing = admin("policy", "activate", "nonesuch", "1", expect=1)
    assert "keyserver:" in missing
    assert "check the name" in missing

    # The rest of the admin's commands, as JSON: pin an EK, revoke what was set up, remove an anchor.
    pinned = admin.json("tpm", "ek", "pin", str(tmp_path / "ek.pub"), "--description", "spare")
    assert pinned["description"] == "spare"
    assert [p["sha256"] for p in admin.json("tpm", "ek", "list")] == [pinned["sha256"]]
    # Unpinned, the EK's AK (enrolled by its certificate) is trusted still, and the command says which.
    enrolled = admin.json("tpm", "ak", "list")[0]["ak_name"]
    assert admin.json("tpm", "ek", "unpin", pinned["sha256"]) == {
        "unpinned": pinned["sha256"],
        "aks_still_trusted": [enrolled],
    }
    assert admin.json("tpm", "ek", "list") == []
    assert admin.json("refs", "revoke", "loader", "1")["revoked_at"] is not None
    assert admin.json("signer", "revoke", "ci")["revoked_at"] is not None
    ci_id = next(t["id"] for t in admin.json("token", "list") if t["role"] == "ci-signer")
    assert admin.json("token", "revoke", ci_id)["revoked_at"] is not None
    ci("refs", "list", expect=1)  # the CI token no longer works
    ak_name = admin.json("tpm", "ak", "list")[0]["ak_name"]
    assert admin.json("tpm", "ak", "revoke", ak_name)["ak_name"] == ak_name
    anchor_id = admin.json("tpm", "anchor", "list")[0]["id"]
    assert admin.json("tpm", "anchor", "remove", anchor_id) == {"removed": anchor_id}


def test_the_token_never_comes_from_argv_and_files_are_checked(
    keyserver_process: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = keyserver_process.url
    # No token anywhere: a usage error that says where a token goes.
    assert cli_main(["--url", url, "key", "list"]) == 2
    assert "KEYSERVER_TOKEN" in capsys.readouterr().err
    # A token file others can read is refused, as ssh refuses such keys.
    loose = tmp_path / "loose.token"
    loose.write_text("ks1.x.y.z\n")
    loose.chmod(0o644)
    assert cli_main(["--url", url, "--token-file", str(loose), "key", "list"]) == 2
    assert "chmod 600" in capsys.readouterr().err
    # There is no option that takes a token.
    assert cli_main(["--url", url, "--token", "ks1.x.y.z", "key", "list"]) == 2
    capsys.readouterr()

    # A profile: URL, tenant and the token file, in a TOML file; unknown settings (a token!) refused.
    operator(keyserver_process, "tenant", "create", "acme")
    token = json.loads(
        operator(keyserver_process, "token", "create", "--tenant", "acme", "--role", "auditor", "--json")
    )["token"]
    token_file = secret_file(tmp_path / "acme.token", token)
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'[profiles.acme]\nurl = "{url}"\ntenant = "acme"\ntoken_file = "{token_file}"\n')
    env = clean_env(KEYSERVER_PROFILES=str(profiles))
    done = subprocess.run(
        [KEYSERVER, "--profile", "acme", "whoami", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["role"] == "auditor"
    profiles.write_text(f'[profiles.acme]\nurl = "{url}"\ntoken = "{token}"\n')
    done = subprocess.run(
        [KEYSERVER, "--profile", "acme", "whoami"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unknown settings token" in done.stderr
    assert token not in done.stderr
    # The environment variable works too (a CI job's secret), and the output is plain when not a TTY.
    done = subprocess.run(
        [KEYSERVER, "--url", url, "log", "show"],
        env=clean_env(KEYSERVER_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    # The log holds one entry: the auditor token itself, made on the server's command line.
    assert "(1 of 1 entries)" in done.stdout
    assert "token-issued  auditor" in done.stdout
    assert "host" in done.stdout
    # Unreachable: exit 1 and what to check.
    assert cli_main(["--url", "http://127.0.0.1:9", "--token-file", str(token_file), "key", "list"]) == 1
    assert "is the keyserver running" in capsys.readouterr().err


def test_completion_covers_every_command() -> None:
    words = command_words(__import__("clients.cli.parser", fromlist=["build_parser"]).build_parser())
    assert {"key", "policy", "refs", "signer", "tpm", "limits", "log", "whoami", "token"} <= set(words[""])
    assert "dry-run" in words["policy"]
    assert "--evidence" in words["policy dry-run"]
    assert {"pin", "list", "unpin"} <= set(words["tpm ek"])
    script = completion_script("bash")
    assert "complete -o filenames -F _keyserver_remote keyserver" in script
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert os.path.basename(KEYSERVER) == "keyserver"


class Lines:
    """A process's output lines, read by a thread (a select on a buffered pipe misses lines already
    buffered); ``next`` waits at most ``seconds`` (the tail polls every second)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(process.stdout,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line)

    def next(self, seconds: float = 30) -> str:
        try:
            return self._lines.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError("no output in time") from None


async def test_log_tail_follows_new_entries_and_verifies_them(keyserver_process: ServerProcess) -> None:
    """`log tail --follow --json` prints each new entry once, after checking the new checkpoint's
    signature, its consistency with the last one and the entry's inclusion."""
    writer = LogWriter(keyserver_process.data_dir)
    tail: subprocess.Popen[str] | None = None
    try:
        tenant, token = await writer.tenant_with_auditor("acme")
        await writer.append(tenant, releases(0, 4))
        # Popen only starts it (no blocking wait); output is read with a bounded select below.
        tail = subprocess.Popen(  # noqa: ASYNC220
            [
                KEYSERVER,
                "--url",
                keyserver_process.url,
                "log",
                "tail",
                "-n",
                "2",
                "--follow",
                "--interval",
                "1s",
                "--json",
            ],
            env=clean_env(KEYSERVER_TOKEN=token),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tail.stdout is not None
        lines = Lines(tail)
        first = [json.loads(lines.next()) for _ in range(2)]
        assert [e["index"] for e in first] == [2, 3]
        await writer.append(tenant, releases(4, 3))
        following = [json.loads(lines.next()) for _ in range(3)]
        assert [e["index"] for e in following] == [4, 5, 6]
        assert following[0]["entry"]["n"] == 4
        assert tail.poll() is None  # still following
    finally:
        if tail is not None:
            tail.terminate()
            tail.communicate(timeout=30)
        await writer.db.dispose()
