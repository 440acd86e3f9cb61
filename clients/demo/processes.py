"""The processes the demo runs: a software TPM (swtpm), the keyserver, the loader, the inference server.

Every wait is bounded and every process is stopped by its own PID: the demo may run next to a
developer's own swtpm or keyserver on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

LOCALHOST = "127.0.0.1"
START_SECONDS = 30.0


class DemoError(RuntimeError):
    """A step of the demo could not run; the message says which and why."""


# The process helpers below are also the test fixtures' (tests/fixtures/_proc.py imports them): one copy.


def free_port(consecutive: int = 1, attempts: int = 50) -> int:
    """A TCP port on 127.0.0.1 that is free now, followed by ``consecutive - 1`` more free ports.

    Several servers need adjacent ports: swtpm's control channel is expected at port + 1 by the
    tpm2-tss ``swtpm`` TCTI, and OpenBao's dev server puts its cluster listener on port + 1. There is an
    unavoidable race between this check and the server's bind; callers retry with a new port if the
    server exits early.
    """
    for _ in range(attempts):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            first.bind((LOCALHOST, 0))
            port: int = first.getsockname()[1]
            if port + consecutive - 1 > 65535:
                continue
            try:
                for offset in range(1, consecutive):
                    extra = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    extra.bind((LOCALHOST, port + offset))
            except OSError:
                continue
            return port
    raise DemoError(f"no run of {consecutive} free TCP port(s) on {LOCALHOST} after {attempts} tries")


def port_open(port: int, host: str = LOCALHOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages (never raises)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or f"(log {path} is empty)"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop exactly this process: SIGTERM, a bounded wait, then SIGKILL. Idempotent."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def wait_until(
    ready: Callable[[], bool], what: str, proc: subprocess.Popen[Any], seconds: float = START_SECONDS
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{what} exited early with status {proc.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise DemoError(f"{what} did not become ready within {seconds:.0f} s")


def http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    return ready


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise DemoError(f"`{binary}` is not installed (Debian package {package}); `make demo` installs it")
    return path


@dataclass
class Process:
    """A child process with its output in a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, stdout: int | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - argv built by the demo from fixed programs
            list(self.argv), stdout=stdout if stdout is not None else log, stderr=log, env=self.env
        )
        log.close()
        return self.proc

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def swtpm_private_ca(root: Path, manufacturer: str, swtpm_localca: str) -> tuple[Path, list[Path]]:
    """``swtpm_setup.conf`` in ``root`` making swtpm_setup sign EK certificates with a CA of our own kept
    in ``root/localca`` (without it, /etc/swtpm_setup.conf and the system CA in /var/lib/swtpm-localca);
    and the certificates that CA will have: its root, then the intermediate that signs the EKs.

    One copy for the demo (:class:`SoftwareTpm`) and the tests' swtpm fixture (tests/fixtures/swtpm.py).
    """
    localca = root / "localca"
    localca.mkdir(parents=True)
    conf = root / "swtpm-localca.conf"
    conf.write_text(
        f"statedir = {localca}\nsigningkey = {localca}/signkey.pem\n"
        f"issuercert = {localca}/issuercert.pem\ncertserial = {localca}/certserial\n"
    )
    options = root / "swtpm-localca.options"
    options.write_text(
        f"--platform-manufacturer {manufacturer}\n--platform-version 2.1\n--platform-model swtpm\n"
    )
    setup = root / "swtpm_setup.conf"
    setup.write_text(
        f"create_certs_tool = {swtpm_localca}\n"
        f"create_certs_tool_config = {conf}\ncreate_certs_tool_options = {options}\n"
        "active_pcr_banks = sha1,sha256\n"
    )
    # swtpm_localca creates the root CA on first use; this is where it puts it.
    return setup, [localca / "swtpm-localca-rootca-cert.pem", localca / "issuercert.pem"]


def swtpm_setup_command(swtpm_setup: str, state: Path, setup_conf: Path) -> list[str]:
    """Manufacture a TPM 2.0 in ``state``: RSA-2048 and P-384 EKs with certificates, a platform
    certificate, PCR banks sha1 and sha256."""
    return [
        swtpm_setup,
        "--tpm2",
        "--tpmstate",
        str(state),
        "--config",
        str(setup_conf),
        "--create-ek-cert",
        "--create-platform-cert",
        "--pcr-banks",
        "sha1,sha256",
    ]


def swtpm_setup_environment(root: Path) -> dict[str, str]:
    """swtpm_setup's scratch directory (TMPDIR) in ``root`` too, and the user's own swtpm configuration
    (XDG_CONFIG_HOME) out of the way."""
    return {**os.environ, "TMPDIR": str(root), "XDG_CONFIG_HOME": str(root)}


def swtpm_socket_command(swtpm: str, state: Path, port: int, log: Path | None = None) -> list[str]:
    """Serve the TPM in ``state`` on ``port`` and its control channel on ``port + 1`` (where the tpm2-tss
    ``swtpm`` TCTI expects it), powered on with TPM2_Startup(CLEAR) done, as firmware would."""
    return [
        swtpm,
        "socket",
        "--tpm2",
        "--tpmstate",
        f"dir={state}",
        "--server",
        f"type=tcp,port={port},bindaddr={LOCALHOST}",
        "--ctrl",
        f"type=tcp,port={port + 1},bindaddr={LOCALHOST}",
        "--flags",
        "not-need-init,startup-clear",
        *(["--log", f"file={log},level=1"] if log is not None else []),
    ]


class SoftwareTpm:
    """swtpm with EK certificates from a private CA kept in ``root`` (never /etc or /var/lib)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.port = free_port(2)
        self.tcti = f"swtpm:host={LOCALHOST},port={self.port}"
        localca = root / "localca"
        self.ek_ca_certs = [localca / "swtpm-localca-rootca-cert.pem", localca / "issuercert.pem"]
        self.process = Process(
            "swtpm",
            swtpm_socket_command(require("swtpm", "swtpm"), self.state, self.port),
            root / "swtpm.log",
        )

    def manufacture(self) -> None:
        """A new TPM: RSA-2048 and P-384 EKs with certificates, PCR banks sha1 and sha256."""
        setup, self.ek_ca_certs = swtpm_private_ca(
            self.root, "KeyserverDemo", require("swtpm_localca", "swtpm-tools")
        )
        self.state.mkdir()
        subprocess.run(  # noqa: S603
            swtpm_setup_command(require("swtpm_setup", "swtpm-tools"), self.state, setup),
            env=swtpm_setup_environment(self.root),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Power on: TPM2_Startup(CLEAR), so every PCR starts from zero, as after a reboot."""
        proc = self.process.start()
        wait_until(lambda: port_open(self.port) and port_open(self.port + 1), "swtpm", proc)

    def reboot(self) -> None:
        """An orderly reboot: TPM2_Shutdown first, as an OS does. Killing a TPM without it counts as a
        possible attack (dictionary-attack protection) and a few of those lock the AK out."""
        from tpm2_pytss import ESAPI
        from tpm2_pytss.constants import TPM2_SU

        with ESAPI(self.tcti) as ectx:
            ectx.shutdown(TPM2_SU.CLEAR)
        self.process.stop()
        self.start()

    def stop(self) -> None:
        self.process.stop()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def isolated_python_module(pycache: Path, module: str, *args: str) -> list[str]:
    """How the loader runs: isolated from PYTHON* variables and user site-packages, its cached bytecode
    kept away from the (measured) sources."""
    return [sys.executable, "-I", "-X", f"pycache_prefix={pycache}", "-m", module, *args]


def run_json(argv: Sequence[str], env: Mapping[str, str]) -> Any:
    """Run a command that prints one JSON document; its document, or ``DemoError`` with its stderr."""
    done = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    if done.returncode != 0:
        raise DemoError(f"{' '.join(argv[2:4])} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)
