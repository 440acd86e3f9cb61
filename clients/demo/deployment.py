"""A whole confidential-inference deployment on one machine, from nothing: what ``keyserver demo`` runs
and what the end-to-end tests drive.

The cast, each a real process or a real role:

- **keyserver** (``keyserver serve``, embedded default: SQLite + software key backend);
- **swtpm**, the confidential VM's TPM, reset ("rebooted") before each boot of a loader;
- the **tenant admin**: enrols the TPM's attestation key (credential activation), registers the CI
  signer, activates the release policy, imports the model owner's key;
- the **model owner**: trains the tiny model, encrypts its weights with a fresh key;
- the **CI signer**: builds the loader image (code + measured configuration), computes the PCR it
  measures to and publishes it as a signed reference-value bundle; signs the generation program;
- the **boot chain**: extends the loader image's digest into PCR 10, then starts the **loader**;
- the untrusted **inference server** in front of the loader;
- a **caller** who checks the loader's attestation and sends an encrypted prompt through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.entry import canonical_bytes
from clients.accelerator.programs import generation_program
from clients.accelerator.signing import sign_program
from clients.demo.gpus import GpuTestCa
from clients.demo.processes import (
    DemoError,
    Process,
    SoftwareTpm,
    free_port,
    http_ready,
    isolated_python_module,
    python_module,
    run_json,
    wait_until,
)
from clients.loader.collectors.tpm import extend_pcr
from clients.loader.collectors.tpm_ak import activate_credential, enrolment_material, provision_ak
from clients.loader.config import config_document, write_config
from clients.loader.measure import config_digest, image_digest_for, pcr_after_extends
from clients.model.corpus import load_corpus
from clients.model.tensors_encode import encode_tensors
from clients.model.train import train
from clients.sdk import KeyserverClient, make_bundle
from clients.weights import encrypt_weights

TENANT = "demo"
KEY_NAME = "weights"
PCR = 10
AK_HANDLE = 0x81010020
ISSUER = "keyserver.local"  # the keyserver's KEYSERVER_LOG_ORIGIN: attestation results name it as "iss"


def _pem(public: ed25519.Ed25519PublicKey) -> str:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def loader_policy(reference_values: str) -> dict[str, Any]:
    """The demo's release policy: a TPM whose PCRs match ``reference_values``, booted once."""
    return {
        "version": 1,
        "tees": ["tpm"],
        "reference_values": [reference_values],
        "rules": [{"name": "booted-once", "expr": "claims['tpm.restart_count'] == 0"}],
    }


@dataclass
class LoaderBoot:
    """One boot of a loader image: its process, and what it said when it started (or refused to)."""

    name: str
    config_path: Path
    digest: bytes
    process: Process
    port: int
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.status.get("ready"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Deployment:
    """Everything the demo starts, in ``workdir``; ``stop()`` ends every process it started."""

    workdir: Path
    processes: list[Process] = field(default_factory=list)
    tpm: SoftwareTpm | None = None
    keyserver_url: str = ""
    admin_token: str = ""
    auditor_token: str = ""
    log_verifier_key: str = ""
    log_origin: str = ""
    ci_key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    weights_key: bytes = b""
    weights_archive: bytes = b""  # the plaintext tensor archive (the tests look for it in memory)
    weights_path: Path | None = None
    signed_program: dict[str, Any] = field(default_factory=dict)
    expected_pcr: str = ""
    inference_url: str = ""
    loader: LoaderBoot | None = None
    # Simulated CC GPUs' device CA (clients/demo/gpus.py), pinned by this keyserver only.
    gpu_ca: GpuTestCa = field(default_factory=GpuTestCa)
    gpu_denial: str = ""

    # --- the environment every child process gets ------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVER_")}
        return {
            **base,
            "KEYSERVER_DATA_DIR": str(self.workdir / "keyserver"),
            "TSS2_LOG": "all+NONE",
            # The demo's witnesses listen on loopback; a real deployment allows only public https hosts
            # or the prefixes its operator names (keyserver/witness/outbound.py).
            "KEYSERVER_WITNESS_URL_PREFIXES": "http://127.0.0.1:",
            **extra,
        }

    def start(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.tpm is not None:
            self.tpm.stop()

    # --- the keyserver ---------------------------------------------------------------------------

    def start_keyserver(self) -> None:
        port = free_port()
        gpu_roots = self.workdir / "gpu-test-roots.pem"
        gpu_roots.write_bytes(self.gpu_ca.pem)
        env = self.env(KEYSERVER_NVIDIA_GPU_TEST_ROOTS=str(gpu_roots))
        tenant = run_json(python_module("keyserver", "tenant", "create", TENANT, "--json"), env)
        assert tenant["name"] == TENANT
        issued = run_json(
            python_module(
                "keyserver", "token", "create", "--tenant", TENANT, "--role", "tenant-admin", "--json"
            ),
            env,
        )
        self.admin_token = issued["token"]
        server = self.start(
            Process(
                "keyserver",
                python_module("keyserver", "serve", "--port", str(port)),
                self.workdir / "keyserver.log",
                env,
            )
        )
        self.keyserver_url = f"http://127.0.0.1:{port}"
        wait_until(http_ready(self.keyserver_url + "/readyz"), "keyserver", server.start())

    def client(self, token: str | None = None) -> KeyserverClient:
        return KeyserverClient(self.keyserver_url, token=token, tenant=TENANT)

    # --- the tenant, the model owner and the CI signer -------------------------------------------

    async def set_up_tenant(self) -> None:
        assert self.tpm is not None
        async with self.client(self.admin_token) as admin:
            self.auditor_token = (await admin.admin.issue_token("auditor", description="demo auditor")).token
            ci_token = (await admin.admin.issue_token("ci-signer", description="demo CI")).token
            log_key = await admin.with_token(self.auditor_token).auditor.log_key()
            self.log_verifier_key, self.log_origin = log_key.verifier_key, log_key.origin
            # The VM's TPM: trust its manufacturer's EK CA, then prove the AK is in that TPM.
            for path in self.tpm.ek_ca_certs:
                await admin.admin.add_anchor("ek-ca", path.stem, path.read_text())
            ak = provision_ak(self.tpm.tcti, AK_HANDLE)
            material = enrolment_material(self.tpm.tcti, ak.handle)
            challenge = await admin.admin.start_enrolment(
                material.ek_public, material.ak_public, ek_certificate=material.ek_certificate
            )
            secret = activate_credential(
                self.tpm.tcti, ak.handle, challenge.credential_blob, challenge.encrypted_secret
            )
            await admin.admin.activate_enrolment(challenge.enrolment_id, secret)
            # The build pipeline's signing key.
            await admin.admin.register_signer("ci", self.ci_key.public_key())

            # The model owner: a model, its weights encrypted under a key only the keyserver will hold.
            trained = train(load_corpus(), seed=7, steps=1500)
            self.weights_archive = encode_tensors(trained.weights)
            self.weights_key = secrets.token_bytes(32)
            self.weights_path = self.workdir / "model.weights.enc"
            self.weights_path.write_bytes(
                encrypt_weights(self.weights_archive, self.weights_key, key_id=f"{KEY_NAME}/1")
            )
            # The CI signer: the reviewed loader image, what it measures to, and the program it may run.
            loader_config = self.loader_config()
            self.expected_pcr = self.measure(loader_config).hex()
            async with self.client(ci_token) as ci:
                values = {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [self.expected_pcr]}}
                await ci.ci.publish("ci", make_bundle(TENANT, "loader", "tpm", values), self.ci_key)
            self.signed_program = sign_program(generation_program(trained.weights), "ci", self.ci_key)

            await admin.admin.add_policy("loader-policy", loader_policy("loader"))
            await admin.admin.activate_policy("loader-policy", 1)
            await admin.admin.create_key(KEY_NAME, "loader-policy", material=self.weights_key)

    def loader_config(self, **program_signers: ed25519.Ed25519PublicKey) -> dict[str, Any]:
        signers = {"ci": _pem(self.ci_key.public_key())} | {n: _pem(k) for n, k in program_signers.items()}
        return config_document(
            tenant=TENANT,
            key=KEY_NAME,
            log_verifier_key=self.log_verifier_key,
            log_origin=self.log_origin,
            program_signers=signers,
            pcr_selection=f"sha256:{PCR}",
        )

    @staticmethod
    def measure(config: Mapping[str, Any]) -> bytes:
        """The PCR a freshly booted VM reports once the boot chain measured the loader image and the
        loader its configuration: what the CI signer publishes (clients/loader/measure.py)."""
        return pcr_after_extends([image_digest_for(config), config_digest(canonical_bytes(dict(config)))])

    # --- booting a loader ------------------------------------------------------------------------

    def boot_loader(
        self,
        name: str,
        config: Mapping[str, Any],
        *,
        keyserver_url: str | None = None,
        keyservers: Mapping[str, str] | None = None,
        weights: Path | None = None,
        boot_events: bool = False,
        lie_about_boot: bool = False,
    ) -> LoaderBoot:
        """Reboot the VM (reset PCRs), measure the loader image, start it; wait for its first word."""
        assert self.tpm is not None
        assert self.weights_path is not None
        self.tpm.reboot()
        config_path = self.workdir / f"{name}.json"
        write_config(config_path, config)
        digest = image_digest_for(config)  # the image of the loader this configuration selects
        extend_pcr(self.tpm.tcti, PCR, digest)  # the boot chain; the loader measures its configuration
        port = free_port()
        # k of n (keyservers given): --keyserver NAME=URL for each; else the one keyserver's URL.
        urls = (
            [f"{n}={u}" for n, u in keyservers.items()]
            if keyservers
            else [keyserver_url or self.keyserver_url]
        )
        # The boot chain's event log for the PCR (what it extended before the loader): with it the loader
        # sends its configuration with the evidence, for loader.* claims. A lie there does not replay.
        events: list[str] = []
        if boot_events:
            told = bytes(32) if lie_about_boot else digest
            events_path = self.workdir / f"{name}.events.json"
            events_path.write_text(json.dumps([told.hex()]))
            events = ["--boot-events", str(events_path)]
        argv = isolated_python_module(
            self.workdir / "pycache",
            "clients.loader",
            "--config", str(config_path),
            *(arg for url in urls for arg in ("--keyserver", url)),
            "--weights", str(weights or self.weights_path),
            "--tcti", self.tpm.tcti,
            "--ak-handle", hex(AK_HANDLE),
            "--port", str(port),
            *events,
        )  # fmt: skip
        process = self.start(Process(name, argv, self.workdir / f"{name}.log", self.env()))
        boot = LoaderBoot(name, config_path, digest, process, port)
        proc = process.start(stdout=-1)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            boot.status = json.loads(line)
        except ValueError:
            raise DemoError(f"loader {name} said nothing on start; see {process.log_path}") from None
        if boot.ready:
            wait_until(http_ready(boot.url + "/healthz"), f"loader {name}", proc)
        return boot

    def start_inference(self, loader_url: str) -> Process:
        port = free_port()
        argv = python_module("clients.inference", "--loader", loader_url, "--port", str(port))
        process = self.start(Process("inference", argv, self.workdir / "inference.log", self.env()))
        self.inference_url = f"http://127.0.0.1:{port}"
        wait_until(http_ready(self.inference_url + "/healthz"), "inference server", process.start())
        return process

    def audit(self) -> dict[str, Any]:
        """``keyserver audit verify``, as an auditor would run it with only the pinned log key."""
        argv = python_module(
            "keyserver", "audit", "verify", "--url", self.keyserver_url, "--tenant", TENANT,
            "--key", self.log_verifier_key, "--json",
        )  # fmt: skip
        result: dict[str, Any] = run_json(argv, self.env(KEYSERVER_TOKEN=self.auditor_token))
        return result

    def caller_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.inference_url, timeout=60)


@contextlib.contextmanager
def deployment(workdir: Path, *, keep: bool = False) -> Iterator[Deployment]:
    """A running keyserver and swtpm in ``workdir`` (tenant not yet set up); everything stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    deployed = Deployment(workdir)
    try:
        deployed.tpm = SoftwareTpm(workdir / "tpm")
        deployed.tpm.manufacture()
        deployed.tpm.start()
        deployed.start_keyserver()
        yield deployed
    finally:
        deployed.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run_blocking(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
