"""``python -m clients.loader``: boot the trusted loader.

Release the weights key (evidence bound to a fresh challenge and to this boot's ephemeral key), verify
the release receipt, decrypt the weights into memory, then serve the virtual accelerator to the
untrusted side. Any failure before serving stops the loader with one JSON line saying why (fail closed):
it never serves without a key it could prove was logged.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from clients.accelerator.accelerator import Accelerator
from clients.loader.collectors.base import Collector
from clients.loader.collectors.errors import CollectorError
from clients.loader.config import ConfigError, LoaderConfig, config_digest
from clients.loader.keyserver_api import KeyserverError, LoaderKeyserver
from clients.loader.parts import GPUS, SAFEGUARDS, TEE_PARTS, THRESHOLD, load_part
from clients.loader.receipt import ReceiptInvalid
from clients.loader.release import (
    EphemeralKey,
    KeyserverTrust,
    ReleaseRefused,
    attestation_result,
    release_key,
)
from clients.loader.service import LoaderState, TokenCache, create_loader_server
from clients.weights_decrypt import decrypt_file

if TYPE_CHECKING:  # a type only: the safeguards are a part (clients/loader/parts.py)
    from clients.loader.safeguards import Safeguards

# The refusals of the core; each part adds its own (its REFUSALS), once loaded.
_REFUSALS: tuple[type[Exception], ...] = (
    KeyserverError,
    ReleaseRefused,
    ReceiptInvalid,
    CollectorError,
)


class _Refusal(Protocol):
    """What every refusal of the core and the parts carries."""

    reason: str
    message: str


def _say(**document: Any) -> None:
    print(json.dumps(document, sort_keys=True), flush=True)


def collector_for(args: argparse.Namespace, config: LoaderConfig) -> Collector:
    """The collector of the configuration's TEE; with ``"gpus"``, every CC GPU's report added
    (docs/nvidia-gpu.md). Each is a part, loaded only when the measured configuration names it."""
    vm: Collector = load_part(TEE_PARTS[config.tee]).loader_collector(config.tee, args, config.pcr_selection)
    if config.gpus:
        return load_part(GPUS).loader_collector(vm)  # type: ignore[no-any-return]
    return vm


class BootRefused(Exception):
    def __init__(self, reason: str, detail: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.report = reason, detail, report


def check_interpreter() -> None:
    """Only measured code may run: no cached bytecode read from beside the sources (``-X
    pycache_prefix``), no PYTHON* environment or user site-packages (``-I``)."""
    if sys.pycache_prefix is None or not sys.flags.isolated:
        raise BootRefused(
            "loader-not-isolated",
            "run the loader as `python -I -X pycache_prefix=DIR -m clients.loader …`: cached bytecode "
            "beside the sources and PYTHON* variables are not measured",
        )


def measure_config(args: argparse.Namespace, config: LoaderConfig) -> None:
    """Extend the digest of the configuration just parsed into the first SHA-256 PCR quoted, where the
    boot chain put the image's (clients/loader/measure.py). SEV-SNP and TDX have no such register here:
    their configuration must be part of the launch measurement (docs/clients.md, "Limits")."""
    if config.tee != "tpm":
        return
    load_part(TEE_PARTS["tpm"]).extend_pcr(args.tcti, _config_pcr(config), config_digest(config.canonical))


def load_accelerator(archive: bytearray, config: LoaderConfig) -> Accelerator:
    try:
        bound = config.safeguards is not None and config.safeguards.model_bound_programs
        return Accelerator.from_archive(bytes(archive), config.program_signers, model_bound_programs=bound)
    finally:
        archive[:] = bytes(len(archive))  # the accelerator holds its own copy


def safeguards_for(config: LoaderConfig, accelerator: Accelerator) -> Safeguards | None:
    if config.safeguards is None:
        return None
    assert accelerator.model_sha256 is not None  # from_archive always sets it
    safeguards: Safeguards = load_part(SAFEGUARDS).Safeguards(config.safeguards, accelerator.model_sha256)
    return safeguards


class ConfigEvidence:
    """``collector``'s evidence with the loader's configuration and the boot chain's earlier events for
    its PCR, so that the keyserver replays them into the quoted PCR and reads the configuration's fields
    as ``loader.*`` claims (keyserver/evidence/tpm/loader_config.py). A lie here does not replay."""

    def __init__(self, collector: Collector, pcr: int, prior: list[str], canonical: bytes) -> None:
        self.tee, self._collector = collector.tee, collector
        self._member = {"pcr": pcr, "prior": prior, "config": base64.b64encode(canonical).decode()}

    def collect(self, binding: bytes) -> dict[str, Any]:
        return {**self._collector.collect(binding), "loader_config": dict(self._member)}


def with_config_evidence(args: argparse.Namespace, config: LoaderConfig, collector: Collector) -> Collector:
    """TPM with ``--boot-events``: send the configuration with the evidence (the file lists, in order, the
    SHA-256 digests the boot chain extended into the configuration's PCR before the loader started)."""
    if config.tee != "tpm" or not args.boot_events:
        return collector
    try:
        prior = json.loads(Path(args.boot_events).read_text())
    except (OSError, ValueError) as exc:
        raise BootRefused("config-invalid", f"--boot-events: not a JSON list of digests ({exc})") from None
    if not isinstance(prior, list) or not all(isinstance(d, str) for d in prior):
        raise BootRefused("config-invalid", "--boot-events is a JSON list of SHA-256 digests (hex)")
    return ConfigEvidence(collector, _config_pcr(config), prior, config.canonical)


def _config_pcr(config: LoaderConfig) -> int:
    selection = load_part(TEE_PARTS["tpm"]).PcrSelection.parse(config.pcr_selection)
    sha256 = [indices for bank, indices in selection.banks if bank == "sha256"]
    if not sha256:
        raise BootRefused("config-invalid", "the PCR selection must quote the sha256 bank")
    return int(sha256[0][0])


def refusal(exc: Exception) -> BootRefused:
    """Why the boot stops, for the one JSON line the loader prints."""
    if isinstance(exc, BootRefused):
        return exc
    if isinstance(exc, _REFUSALS + _parts_refusals()):
        refused = cast(_Refusal, exc)
        report = getattr(exc, "report", None)  # k of n: which keyservers released, which refused, why
        return BootRefused(refused.reason, refused.message, report)
    if isinstance(exc, ConfigError):
        return BootRefused("config-invalid", str(exc))
    # Anything else (an unreadable weights file, a tampered one, an unusable signer key, a bug): the
    # loader still stops, and says what happened rather than printing a traceback.
    return BootRefused(type(exc).__name__, str(exc))


def _parts_refusals() -> tuple[type[Exception], ...]:
    """The refusals of the parts this boot has loaded (a part not loaded raised nothing)."""
    loaded = (sys.modules.get(THRESHOLD),)
    return tuple(cls for part in loaded if part is not None for cls in part.REFUSALS)


def keyserver_clients(args: argparse.Namespace, config: LoaderConfig) -> dict[str, LoaderKeyserver]:
    """The run-time URLs of the configured keyservers: one plain URL for one keyserver, or
    ``NAME=URL`` for each of the k-of-n configuration's (the URLs decide nothing the receipts prove)."""
    given: list[str] = args.keyserver
    if isinstance(config.source, KeyserverTrust):
        if len(given) != 1 or "=" in given[0]:
            raise BootRefused("config-invalid", "one keyserver: give one --keyserver URL")
        trust = config.source
        return {trust.name: LoaderKeyserver(given[0], tenant=trust.tenant, timeout=args.timeout)}
    urls = dict(item.split("=", 1) for item in given if "=" in item)
    names = [trust.name for trust in config.source.keyservers]
    if len(urls) != len(given) or sorted(urls) != sorted(names):
        raise BootRefused(
            "config-invalid", f"k of n keyservers: give --keyserver NAME=URL for each of {', '.join(names)}"
        )
    return {
        trust.name: LoaderKeyserver(urls[trust.name], tenant=trust.tenant, timeout=args.timeout)
        for trust in config.source.keyservers
    }


def boot(args: argparse.Namespace) -> int:
    try:
        check_interpreter()
        config = LoaderConfig.load(Path(args.config))
        measure_config(args, config)
        key = EphemeralKey()
        collector = with_config_evidence(args, config, collector_for(args, config))
        clients = keyserver_clients(args, config)
        state, report = _release_and_load(args, config, clients, collector, key)
        server = create_loader_server(state, args.host, args.port)
    except Exception as exc:
        refused = refusal(exc)
        extra = {} if refused.report is None else {"boot_report": refused.report}
        _say(ready=False, reason=refused.reason, detail=refused.detail, **extra)
        return 1
    # k of n: which keyservers released their share and which refused, with their reasons.
    extra = {"boot_report": report} if report else {}
    _say(ready=True, port=server.server_address[1], thumbprint=key.thumbprint_b64url, **extra)
    with server:
        server.serve_forever()
    return 0


def _release_and_load(
    args: argparse.Namespace,
    config: LoaderConfig,
    clients: dict[str, LoaderKeyserver],
    collector: Collector,
    key: EphemeralKey,
) -> tuple[LoaderState, dict[str, Any]]:
    """The key (from the one keyserver, or from k of n), the weights decrypted with it and loaded; the
    state the loader serves, and the boot report (k of n only)."""
    report: dict[str, Any] = {}
    if config.quorum is not None:
        archive, report, fetch = load_part(THRESHOLD).release_for_boot(
            config.quorum, clients, collector, key, Path(args.weights), deadline_s=args.timeout * 3
        )
    else:
        client = clients[config.single.name]
        released = release_key(
            client, collector, key, tenant=config.tenant, key_name=config.key, log=config.log
        )
        archive = decrypt_file(Path(args.weights), released.material, expected_key_id=released.kid)
        fetch = lambda: attestation_result(client, collector, key)  # noqa: E731
    accelerator = load_accelerator(archive, config)
    tokens = TokenCache(fetch=fetch)
    tenant = None if config.quorum is not None else config.tenant
    state = LoaderState(
        tenant=tenant,
        key=key,
        accelerator=accelerator,
        tokens=tokens,
        safeguards=safeguards_for(config, accelerator),
    )
    return state, report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the measured loader configuration (JSON)")
    p.add_argument(
        "--keyserver",
        required=True,
        action="append",
        help="the keyserver's base URL; k of n: NAME=URL, once per configured keyserver",
    )
    p.add_argument("--weights", required=True, help="the encrypted weights file")
    p.add_argument("--tcti", default="device:/dev/tpmrm0", help="TPM: the tpm2-tss TCTI")
    p.add_argument("--ak-handle", default="0x81010020", help="TPM: the enrolled AK's persistent handle")
    p.add_argument("--tsm-root", default="/sys/kernel/config/tsm/report", help="SEV-SNP/TDX: configfs-tsm")
    p.add_argument("--vcek", help="azure-snp-vtpm: the VCEK (PEM bundle from Azure THIM, or DER)")
    p.add_argument(
        "--boot-events",
        help="TPM: a JSON list of the digests the boot chain extended into the configuration's PCR before"
        " the loader; given, the configuration is sent with the evidence (loader.* claims)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per keyserver request")
    return p


def main(argv: list[str] | None = None) -> int:
    return boot(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
