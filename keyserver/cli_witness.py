"""``keyserver witness``: run a C2SP tlog-witness for other keyservers' release logs.

- ``keyserver witness keygen --name NAME --key-file FILE``: a new Ed25519 witness key (mode 0600);
  prints the verifier key that logs and loaders pin.
- ``keyserver witness vkey --config FILE``: print the configured witness's verifier key.
- ``keyserver witness serve --config FILE [--host H] [--port P]``: serve ``POST /add-checkpoint``.

A witness shares nothing with a keyserver it witnesses: its own key, its own database, its own
configuration of the logs (origin and log key) it accepts checkpoints from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from audit.cosignature import cosigner_vkey

__all__ = ["add_witness_commands", "run_witness"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_witness_commands(commands: Any) -> None:
    witness = commands.add_parser("witness", help="run a transparency-log witness (C2SP tlog-witness)")
    sub = witness.add_subparsers(dest="witness_command", required=True)
    keygen = sub.add_parser("keygen", help="create a witness key and print its verifier key")
    keygen.add_argument("--name", required=True, help="the cosigner name, e.g. witness.example.org/w1")
    keygen.add_argument(
        "--key-file", type=Path, required=True, help="where to write the key (must not exist)"
    )
    vkey = sub.add_parser("vkey", help="print the configured witness's verifier key")
    vkey.add_argument("--config", type=Path, required=True, help="the witness's TOML configuration")
    serve = sub.add_parser("serve", help="serve add-checkpoint")
    serve.add_argument("--config", type=Path, required=True, help="the witness's TOML configuration")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)


def run_witness(args: argparse.Namespace) -> int:
    from keyserver.witness.service import (
        WitnessConfig,
        WitnessConfigError,
        load_private_key,
        write_private_key,
    )

    try:
        if args.witness_command == "keygen":
            try:
                key = write_private_key(args.key_file)
            except FileExistsError:
                print(f"keyserver: {args.key_file} exists; not overwriting a witness key", file=sys.stderr)
                return EXIT_FAILED
            print(cosigner_vkey(args.name, key.public_key()))
            return EXIT_OK
        config = WitnessConfig.load(args.config)
        key = load_private_key(config.key_file)
        if args.witness_command == "vkey":
            print(cosigner_vkey(config.name, key.public_key()))
            return EXIT_OK
        return _serve(config, key, args.host, args.port)
    except (WitnessConfigError, ValueError) as exc:
        print(f"keyserver: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _serve(config: Any, key: Any, host: str, port: int) -> int:
    import uvicorn

    from keyserver.witness.http import create_witness_app
    from keyserver.witness.service import WitnessService
    from keyserver.witness.store import WitnessStore

    service = WitnessService(config, key, WitnessStore.from_url(config.database_url))
    print(f"witness {config.name} ({service.vkey}) on http://{host}:{port}", file=sys.stderr, flush=True)
    uvicorn.run(create_witness_app(service), host=host, port=port, log_config=None, access_log=False)
    return EXIT_OK
