"""The loader's measured configuration, its image measurement, and the edges of the loader's and the
inference server's HTTP APIs (everything the end-to-end test does not reach cheaply)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from audit.checkpoint import vkey_for
from clients.accelerator.accelerator import Accelerator
from clients.channel import message_from_text, message_to_text, seal_request
from clients.inference.server import create_inference_app
from clients.loader import service
from clients.loader.config import ConfigError, LoaderConfig, config_document
from clients.loader.keyserver_api import KeyserverUnreachable
from clients.loader.measure import (
    config_digest,
    image_digest,
    loader_files,
    pcr_after_extends,
    repository_root,
)
from clients.loader.parts import parts_of
from clients.loader.release import EphemeralKey
from clients.loader.service import LoaderState, TokenCache, answer, create_loader_server
from clients.model.train import train


def pem(key: Any) -> str:
    return str(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())


VKEY = vkey_for("keyserver.test/acme", ed25519.Ed25519PrivateKey.generate().public_key())


def document(**changes: Any) -> dict[str, Any]:
    signer = ed25519.Ed25519PrivateKey.generate().public_key()
    base = config_document(
        tenant="acme",
        key="weights",
        log_verifier_key=VKEY,
        log_origin="keyserver.test/acme",
        program_signers={"ci": pem(signer)},
    )
    base.update(changes)
    return base


def test_a_configuration_loads_and_its_canonical_bytes_are_what_is_measured(tmp_path: Path) -> None:
    path = tmp_path / "loader.json"
    doc = document()
    path.write_text(json.dumps(doc, indent=4))  # any layout: the measurement is over canonical bytes
    config = LoaderConfig.load(path)
    assert (config.tenant, config.key, config.pcr_selection) == ("acme", "weights", "sha256:10")
    assert config.log.verifier_key == VKEY
    assert set(config.program_signers) == {"ci"}
    assert config.canonical == LoaderConfig.from_document(doc).canonical


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"v": 3}, "version"),
        ({"v": 1}, 'names its "tee"'),  # the format before the TEE was measured
        ({"extra": 1}, "unknown"),
        ({"tee": "sgx"}, '"tee" is one of'),
        ({"tee": None}, '"tee" is one of'),
        ({"gpus": "yes"}, '"gpus" is true or false'),
        ({"gpus": 1}, '"gpus" is true or false'),
        ({"tenant": ""}, "tenant"),
        ({"log": {"verifier_key": VKEY}}, "log"),
        ({"program_signers": {}}, "at least one program signer"),
        ({"program_signers": {"ci": "not a pem"}}, "not a PEM"),
        (
            {"program_signers": {"ci": pem(rsa.generate_private_key(65537, 2048).public_key())}},
            "Ed25519 or ECDSA",
        ),
    ],
)
def test_an_unusable_configuration_stops_the_loader(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoaderConfig.from_document(document(**changes))


def test_a_configuration_file_that_is_not_one(tmp_path: Path) -> None:
    path = tmp_path / "loader.json"
    for content in (b'{"v": 1, "v": 1}', b"[]", b"\xff", b"x" * 70_000):
        path.write_bytes(content)
        with pytest.raises(ConfigError):
            LoaderConfig.load(path)


def test_the_image_digest_changes_with_any_file(tmp_path: Path) -> None:
    root = tmp_path / "image"
    for package in ("clients", "audit", "keyserver"):
        shutil.copytree(
            repository_root() / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    parts = parts_of(document())
    files = loader_files(parts, root)
    assert any(p.name == "receipt.py" for p in files)
    assert any(p.name == "binding.py" for p in files)  # the keyserver modules the loader imports
    reference = image_digest(files, root)
    assert image_digest(loader_files(parts, root), root) == reference  # deterministic
    target = root / "clients" / "loader" / "receipt.py"
    target.write_text(target.read_text() + "\n# a patched loader\n")
    assert image_digest(files, root) != reference
    target.unlink()
    assert image_digest(loader_files(parts, root), root) != reference  # a file removed
    target.write_text((repository_root() / "clients" / "loader" / "receipt.py").read_text())
    assert image_digest(loader_files(parts, root), root) == reference  # restored
    # Not only sources: bytecode or an extension module beside them would be imported instead.
    for stray in ("clients/loader/receipt.pyc", "clients/loader/receipt.cpython-311-x86_64-linux-gnu.so"):
        (root / stray).write_bytes(b"\x00")
        assert image_digest(loader_files(parts, root), root) != reference, stray
        (root / stray).unlink()
    (root / "clients" / "loader" / "__pycache__").mkdir(exist_ok=True)
    (root / "clients" / "loader" / "__pycache__" / "receipt.cpython-311.pyc").write_bytes(b"\x00")
    # Kept out of the listing: the loader never reads __pycache__ (it runs with -X pycache_prefix).
    assert image_digest(loader_files(parts, root), root) == reference


def test_the_configuration_digest_is_domain_separated() -> None:
    canonical = b'{"v":1}'
    assert config_digest(canonical) != hashlib.sha256(canonical).digest()
    assert config_digest(canonical) != config_digest(b'{"v":2}')


def test_the_loader_refuses_to_run_unisolated(tmp_path: Path) -> None:
    # `python -m clients.loader` without -I and -X pycache_prefix: stops before reading anything else.
    done = subprocess.run(
        [sys.executable, "-m", "clients.loader", "--config", str(tmp_path / "none.json"),
         "--keyserver", "http://127.0.0.1:9", "--weights", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert json.loads(done.stdout) | {"detail": ""} == {
        "ready": False,
        "reason": "loader-not-isolated",
        "detail": "",
    }


def test_the_pcr_a_reset_tpm_reports_after_one_extend() -> None:
    digest = hashlib.sha256(b"image").digest()
    assert pcr_after_extends([digest]) == hashlib.sha256(bytes(32) + digest).digest()
    assert (
        pcr_after_extends([digest, digest]) == hashlib.sha256(pcr_after_extends([digest]) + digest).digest()
    )


@pytest.fixture(scope="module")
def loader_state() -> LoaderState:
    trained = train("the quick brown fox jumps over the lazy dog. " * 10, steps=10)
    signer = ed25519.Ed25519PrivateKey.generate()
    calls: list[int] = []

    def fetch() -> str:
        calls.append(1)
        return f"token-{len(calls)}"

    return LoaderState(
        tenant="acme",
        key=EphemeralKey(),
        accelerator=Accelerator(trained.weights, {"ci": signer.public_key()}),
        tokens=TokenCache(fetch=fetch),
    )


class LoaderClient:
    """The loader's real HTTP server on a free port, and httpx to talk to it (the untrusted side's view)."""

    def __init__(self, state: LoaderState) -> None:
        self.server = create_loader_server(state, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.server.server_address[1]}", timeout=30)
        return self.client

    def __exit__(self, *_: object) -> None:
        self.client.close()
        self.server.shutdown()
        self.server.server_close()


def test_the_loader_api_refuses_what_it_cannot_open(loader_state: LoaderState) -> None:
    with LoaderClient(loader_state) as client:
        attestation = client.get("/v1/attestation").json()
        assert attestation["public_key"] == loader_state.key.public_jwk
        assert client.get("/v1/attestation").json()["token"] == attestation["token"]  # cached
        for body in ({}, {"message": 1}, {"message": "x", "more": 1}):
            assert client.post("/v1/run", json=body).status_code == 400
        garbage = client.post("/v1/run", json={"message": "AAAA"})
        assert garbage.status_code == 400
        assert "AAAA" not in garbage.text
        # Sealed to another key: it does not open here.
        other = EphemeralKey()
        sealed, _ = seal_request(
            other.public_jwk, {"program": {}, "inputs": {}}, attested_jkt=other.thumbprint_b64url
        )
        assert client.post("/v1/run", json={"message": message_to_text(sealed)}).status_code == 400


def test_a_malformed_request_is_answered_sealed(loader_state: LoaderState) -> None:
    key = loader_state.key
    with LoaderClient(loader_state) as client:
        sealed, context = seal_request(key.public_jwk, {"inputs": {}}, attested_jkt=key.thumbprint_b64url)
        answer = client.post("/v1/run", json={"message": message_to_text(sealed)})
        assert answer.status_code == 200
        opened = context.open_response(message_from_text(answer.json()["message"]))
        assert opened["error"]["reason"] == "request-malformed"


def test_the_inference_server_checks_shapes_and_reports_an_absent_loader() -> None:
    app = create_inference_app("http://127.0.0.1:9", timeout=2)  # the discard port: nobody there
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.post("/v1/completions", json={"message": 1}).status_code == 400
        assert client.post("/v1/completions", json={"message": "x", "extra": 1}).status_code == 400
        assert client.post("/v1/completions", json={"message": "x"}).status_code == 502
        assert client.get("/v1/attestation").status_code == 502


def test_no_attestation_is_a_503_not_a_stale_key(loader_state: LoaderState) -> None:
    def refused() -> str:
        raise KeyserverUnreachable("the keyserver is down")

    state = dataclasses.replace(loader_state, tokens=TokenCache(fetch=refused))
    with LoaderClient(state) as client:
        answer = client.get("/v1/attestation")
        assert answer.status_code == 503
        assert "public_key" not in answer.json()


def test_the_loader_api_refuses_bodies_it_does_not_read(loader_state: LoaderState) -> None:
    with LoaderClient(loader_state) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/nowhere").status_code == 404
        assert client.get("/v1/run").status_code == 405
        assert client.post("/v1/run", content=b'{"message": "a", "message": "b"}').status_code == 400
        assert client.post("/v1/run", content=b"\xff").status_code == 400
        too_large = client.post("/v1/run", content=b"x" * (4 << 20 + 1))
        assert too_large.status_code == 413


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
        st.builds(lambda m: json.dumps({"message": m}).encode(), st.text(max_size=200)),
    )
)
def test_any_body_is_answered_and_never_raises(loader_state: LoaderState, body: bytes) -> None:
    status, document = answer(loader_state, "POST", "/v1/run", body)
    assert status == 400
    assert set(document) == {"error"}


def test_an_idle_connection_is_dropped(loader_state: LoaderState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "IDLE_SECONDS", 0.5)
    with LoaderClient(loader_state) as client:
        port = int(str(client.base_url.port))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            idle.sendall(b"POST /v1/run HTTP/1.1\r\nHost: x\r\n")  # and then nothing
            assert idle.recv(1024) == b""  # closed by the loader, well before this socket's own deadline
