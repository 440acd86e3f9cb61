"""``keyserver key split``: split a data key into k-of-n shares for k-of-n release (docs/threshold.md).

``keyserver key split --name NAME --version V --k K --n N [--key-file FILE] --out-dir DIR [--json]``
writes ``DIR/share-<i>.bin`` (i = 1..n, mode 0600; each is imported into a different keyserver as an
ordinary key) and ``DIR/commitment.json`` (published with the model). Without ``--key-file`` a fresh
32-byte key is generated and also written to ``DIR/key.bin`` (0600) for encrypting the model; with it,
the file holds the raw key or its hex text. Nothing is overwritten: the directory must be new or empty.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_key_commands", "run_key"]

EXIT_OK, EXIT_FAILED = 0, 1
_HEX_RE = re.compile(rb"^\s*([0-9a-fA-F]{2})+\s*\Z")


def add_key_commands(commands: Any) -> None:
    key = commands.add_parser("key", help="data keys held by several keyservers (k of n)")
    sub = key.add_subparsers(dest="key_command", required=True)
    split = sub.add_parser("split", help="split a data key into n shares, any k of which recover it")
    split.add_argument("--name", required=True, help="the key's name (bound into every share)")
    split.add_argument("--version", type=int, required=True, help="the key's version")
    split.add_argument("--k", type=int, required=True, help="shares needed to recover the key")
    split.add_argument("--n", type=int, required=True, help="shares made (one per keyserver)")
    split.add_argument("--key-file", type=Path, help="the key: raw bytes or hex (default: generate one)")
    split.add_argument("--out-dir", type=Path, required=True, help="a new or empty directory")
    split.add_argument("--json", action="store_true", help="print one JSON document")


def run_key(args: argparse.Namespace) -> int:
    from threshold import KeyIdentity, ThresholdError, split, wipe

    try:
        identity = KeyIdentity(args.name, args.version, args.k, args.n)
        out_dir: Path = args.out_dir
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise _Refused(f"{out_dir} is not an empty directory; not overwriting shares")
        key = bytearray(_read_key(args.key_file) if args.key_file else secrets.token_bytes(32))
        # Everything is written to a staging directory that becomes out_dir only when complete.
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        try:
            shares, commitment = split(key, identity)
            names = {} if args.key_file else {"key": "key.bin"}
            if args.key_file is None:
                _write_private(staging / "key.bin", bytes(key))
            for share in shares:
                names[f"share-{share.index}"] = f"share-{share.index}.bin"
                _write_private(staging / names[f"share-{share.index}"], share.to_bytes())
                share.wipe()
            (staging / "commitment.json").write_text(json.dumps(commitment.to_json(), indent=2) + "\n")
            if out_dir.exists():
                out_dir.rmdir()  # empty, checked above
            staging.rename(out_dir)
        finally:
            wipe(key)
            shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed
        written = {label: str(out_dir / name) for label, name in names.items()}
        commitment_path = out_dir / "commitment.json"
    except OSError as exc:
        print(f"keyserver: cannot write the shares: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ThresholdError, _Refused) as exc:
        message = exc.message if isinstance(exc, ThresholdError) else str(exc)
        if args.json:
            print(json.dumps({"error": getattr(exc, "reason", "refused"), "detail": message}))
        print(f"keyserver: {message}", file=sys.stderr)
        return EXIT_FAILED
    document = {
        "name": identity.name,
        "version": identity.version,
        "k": identity.k,
        "n": identity.n,
        "commitment": str(commitment_path),
        "files": written,
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(f"split {identity.describe()}: {', '.join(written.values())}; commitment {commitment_path}")
        print("import share-i into keyserver i as an ordinary key; publish commitment.json with the model")
    return EXIT_OK


class _Refused(Exception):
    pass


def _read_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Refused(f"cannot read the key file {path}: {exc.strerror}") from None
    if _HEX_RE.match(data):
        return bytes.fromhex(data.decode().strip())
    return data


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
