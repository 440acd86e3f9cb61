"""``python -m clients.loader``: boot the trusted loader.

Release the weights key (evidence bound to a fresh challenge and to this boot's ephemeral key), verify
the release receipt, decrypt the weights into memory, then serve the virtual accelerator to the
untrusted side. Any failure before serving stops the loader with one JSON line saying why (fail closed):
it never serves without a key it could prove was logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn

from clients.accelerator.accelerator import Accelerator
from clients.loader.collectors.base import Collector
from clients.loader.collectors.errors import CollectorError
from clients.loader.config import ConfigError, LoaderConfig
from clients.loader.receipt import ReceiptInvalid
from clients.loader.release import EphemeralKey, ReleaseRefused, attestation_result, release_key
from clients.loader.service import LoaderState, TokenCache, create_loader_app
from clients.model.tensors import TensorArchiveError
from clients.sdk import KeyserverAPIError, KeyserverClient, KeyserverUnreachable
from clients.weights import WeightsAuthenticationError, WeightsFormatError, decrypt_file


def _say(**document: Any) -> None:
    print(json.dumps(document, sort_keys=True), flush=True)


def collector_for(args: argparse.Namespace, config: LoaderConfig) -> Collector:
    if args.tee == "tpm":
        from clients.loader.collectors.tpm import TpmCollector

        return TpmCollector(args.tcti, int(args.ak_handle, 0), pcr_selection=config.pcr_selection)
    from clients.loader.collectors.tsm import TsmCollector

    return TsmCollector(args.tee, root=Path(args.tsm_root))


async def boot(args: argparse.Namespace) -> int:
    try:
        config = LoaderConfig.load(Path(args.config))
    except (ConfigError, OSError) as exc:
        _say(ready=False, reason="config-invalid", detail=str(exc))
        return 1
    key = EphemeralKey()
    collector = collector_for(args, config)
    async with KeyserverClient(args.keyserver, tenant=config.tenant, timeout=args.timeout) as client:
        try:
            released = await release_key(client, collector, key, key_name=config.key, log=config.log)
            archive = decrypt_file(Path(args.weights), released.material, expected_key_id=released.kid)
            try:
                accelerator = Accelerator.from_archive(bytes(archive), config.program_signers)
            finally:
                archive[:] = bytes(len(archive))  # the accelerator holds its own copy
        except KeyserverAPIError as exc:
            _say(ready=False, reason=exc.reason or exc.code, detail=str(exc))
            return 1
        except (ReleaseRefused, ReceiptInvalid, CollectorError) as exc:
            _say(ready=False, reason=exc.reason, detail=exc.message)
            return 1
        except (
            KeyserverUnreachable,
            WeightsFormatError,
            WeightsAuthenticationError,
            TensorArchiveError,
        ) as exc:
            _say(ready=False, reason=type(exc).__name__, detail=str(exc))
            return 1
        del released  # the weights are decrypted; the key itself is no longer needed
        tokens = TokenCache(fetch=lambda: attestation_result(client, collector, key))
        state = LoaderState(tenant=config.tenant, key=key, accelerator=accelerator, tokens=tokens)
        server = uvicorn.Server(
            uvicorn.Config(create_loader_app(state), host=args.host, port=args.port, log_level="warning")
        )
        _say(ready=True, port=args.port, thumbprint=key.thumbprint_b64url)
        await server.serve()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the measured loader configuration (JSON)")
    p.add_argument("--keyserver", required=True, help="the keyserver's base URL")
    p.add_argument("--weights", required=True, help="the encrypted weights file")
    p.add_argument("--tee", choices=("tpm", "sev-snp", "tdx"), default="tpm")
    p.add_argument("--tcti", default="device:/dev/tpmrm0", help="TPM: the tpm2-tss TCTI")
    p.add_argument("--ak-handle", default="0x81010020", help="TPM: the enrolled AK's persistent handle")
    p.add_argument("--tsm-root", default="/sys/kernel/config/tsm/report", help="SEV-SNP/TDX: configfs-tsm")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per keyserver request")
    return p


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(boot(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
