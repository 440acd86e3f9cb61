"""``python -m clients.classifier``: a tiny rule-based safety classifier that signs the requests it allows.

It is not trusted by the caller for confidentiality — it sees the prompt in the clear — so it runs where
the *caller* (or the model owner on the caller's behalf) is willing to show prompts: beside the caller, or
run by the model owner under an agreement with its users. It is trusted by the **loader** (and so by the
keyservers whose policies require its key) for one thing: that what it signs passed its rules.

Rules: each category is a list of words or phrases; a request whose text inputs contain one (as a whole
word, case-insensitively, after Unicode normalisation, whatever the spacing) is flagged with that
category and not signed. Everything else is signed for :data:`VALIDITY_S` seconds with a fresh nonce,
over the exact request, program and model (:func:`clients.loader.safeguards.classifier_message`).

``POST /v1/classify`` ``{"program": <signed program>, "inputs": {...}}`` → 200 ``{"allowed": true,
"classifier": {"key", "expires", "nonce", "signature"}}`` or 403 ``{"allowed": false, "category": …}``.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from clients.loader.safeguards import NONCE_BYTES, classifier_message
from keyserver.strict_json import loads_strict

VALIDITY_S = 120
MAX_BODY_BYTES = 1 << 20
DEFAULT_RULES: Mapping[str, tuple[str, ...]] = {
    "weapons": ("bioweapon", "nerve agent", "enriched uranium", "pipe bomb"),
    "malware": ("ransomware", "keylogger", "credential stealer"),
}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    category: str | None = None


class Classifier:
    def __init__(
        self,
        key: ed25519.Ed25519PrivateKey,
        name: str,
        model_sha256: bytes,
        rules: Mapping[str, tuple[str, ...]] = DEFAULT_RULES,
    ) -> None:
        self.key, self.name, self.model_sha256 = key, name, model_sha256
        self._patterns = {
            category: re.compile(r"\b(?:" + "|".join(re.escape(w.lower()) for w in words) + r")\b")
            for category, words in rules.items()
        }

    def classify(self, inputs: Mapping[str, Any]) -> Verdict:
        text = " ".join(v for v in inputs.values() if isinstance(v, str))
        # Compatibility forms folded (fullwidth letters), case folded, any run of spaces or line breaks one
        # space: "PIPE\n  bomb" is the listed phrase too.
        folded = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold())
        for category, pattern in self._patterns.items():
            if pattern.search(folded):
                return Verdict(False, category)
        return Verdict(True)

    def sign(
        self, program: Mapping[str, Any], inputs: Mapping[str, Any], *, now: float | None = None
    ) -> dict[str, Any]:
        expires = int(now if now is not None else time.time()) + VALIDITY_S
        nonce = secrets.token_bytes(NONCE_BYTES)
        signature = self.key.sign(classifier_message(program, inputs, self.model_sha256, expires, nonce))
        return {
            "key": self.name,
            "expires": expires,
            "nonce": _b64url(nonce),
            "signature": _b64url(signature),
        }

    def answer(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = loads_strict(body)
        except ValueError:
            request = None
        if (
            not isinstance(request, dict)
            or set(request) != {"program", "inputs"}
            or not isinstance(request["program"], dict)
            or not isinstance(request["inputs"], dict)
        ):
            return 400, {"error": 'a request is {"program": <signed program>, "inputs": {...}}'}
        verdict = self.classify(request["inputs"])
        if not verdict.allowed:
            return 403, {"allowed": False, "category": verdict.category}
        return 200, {"allowed": True, "classifier": self.sign(request["program"], request["inputs"])}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def create_server(classifier: Classifier, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length", "")
            if self.path != "/v1/classify" or not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self._send(404 if self.path != "/v1/classify" else 400, {"error": "POST /v1/classify"})
                return
            self._send(*classifier.answer(self.rfile.read(int(length))))

        def do_GET(self) -> None:
            self._send(200, {"status": "ok"}) if self.path == "/healthz" else self._send(
                404, {"error": "not found"}
            )

        def _send(self, status: int, document: dict[str, Any]) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def load_or_create_key(path: Path) -> ed25519.Ed25519PrivateKey:
    if not path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        path.chmod(0o600)
        return key
    loaded = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise SystemExit(f"{path}: not an Ed25519 private key")
    return loaded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--key-file", type=Path, required=True, help="Ed25519 private key (PEM; created if absent)"
    )
    p.add_argument("--name", default="classifier", help="the key's name in the loader's configuration")
    p.add_argument("--model-sha256", required=True, help="the model (tensor archive) it classifies for")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8095)
    args = p.parse_args(argv)
    classifier = Classifier(load_or_create_key(args.key_file), args.name, bytes.fromhex(args.model_sha256))
    server = create_server(classifier, args.host, args.port)
    print(json.dumps({"ready": True, "port": server.server_address[1]}), flush=True)
    with server:
        server.serve_forever()
    return 0
