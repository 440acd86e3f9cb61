"""The loader's API to the untrusted side: the "virtual accelerator".

Two routes, both safe to expose to an untrusted inference server:

- ``GET /v1/attestation``: the loader's public key and a fresh attestation-result token from the
  keyserver that names it (``cnf.jkt``). A caller checks the token with the keyserver's JWKS, then seals
  requests to that key. Nothing secret.
- ``POST /v1/run`` ``{"message": <sealed request>}`` → ``{"message": <sealed response>}``. The sealed
  request holds a program signed by the CI signer and its inputs; the loader opens it, verifies the
  program's signature *before* anything runs (:mod:`clients.accelerator`), runs it over the weights it
  holds in memory, and seals the outputs so only the caller can read them. A refused program is answered
  the same way (sealed, status 200), so the untrusted side learns nothing from status codes. A message
  that does not open is a 400 without detail.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from clients.accelerator.accelerator import Accelerator
from clients.accelerator.errors import ProgramRejected
from clients.channel_loader import ChannelError, message_from_text, message_to_text, open_request
from clients.loader.collectors.errors import CollectorError
from clients.loader.keyserver_api import KeyserverError
from clients.loader.release import EphemeralKey
from keyserver.strict_json import loads_strict

if TYPE_CHECKING:  # a type only: the safeguards are a part, loaded when configured (parts.py)
    from clients.loader.safeguards import Safeguards

log = logging.getLogger(__name__)


class RequestRefused(Exception):
    """The loader refuses a request (the safeguards' refusals are these too); ``reason`` is stable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Attestation results live five minutes; fetch a new one well before the old one lapses.
TOKEN_REFRESH_SECONDS = 120.0
MAX_MESSAGE_CHARS = 1 << 20
MAX_BODY_BYTES = 2 * MAX_MESSAGE_CHARS
# A connection that sends nothing for this long is dropped (a thread per connection must not wait forever).
IDLE_SECONDS = 30.0
# Programs run this many at a time; more wait their turn (CPU-bound: more threads would not go faster).
CONCURRENT_RUNS = 4
_runs = threading.BoundedSemaphore(CONCURRENT_RUNS)
_REQUEST_MEMBERS = frozenset({"program", "inputs"})


@dataclass
class TokenCache:
    """The current attestation-result token, renewed by ``fetch`` when older than the refresh age. One
    fetch at a time: concurrent callers wait for it rather than each asking the keyserver."""

    fetch: Callable[[], str | list[str]]  # one keyserver's token, or every attesting one's (k of n)
    refresh_after: float = TOKEN_REFRESH_SECONDS
    _token: str | list[str] | None = None
    _at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self) -> str | list[str]:
        with self._lock:
            if self._token is None or time.monotonic() - self._at > self.refresh_after:
                self._token = self.fetch()
                self._at = time.monotonic()
            return self._token


@dataclass
class LoaderState:
    tenant: str | None  # None: k of n keyservers, each with its own tenant
    key: EphemeralKey
    accelerator: Accelerator
    tokens: TokenCache
    # The classifier gate and egress budget of the measured configuration (None: none configured).
    safeguards: Safeguards | None = None


def _run_sealed(loader: LoaderState, message: str) -> str:
    """Open, check the safeguards, verify, run, count, seal (each request in its own thread: programs
    are CPU-bound numpy work)."""
    request, reply = open_request(loader.key.private, message_from_text(message))
    members = _REQUEST_MEMBERS | ({"classifier"} & set(request))
    if set(request) != members or not isinstance(request["inputs"], dict):
        outcome: dict[str, Any] = {
            "error": {
                "reason": "request-malformed",
                "message": 'a request is {"program", "inputs"[, "classifier"]}',
            }
        }
        return message_to_text(reply.seal(outcome))
    try:
        program, inputs = request["program"], request["inputs"]
        if loader.safeguards is not None:
            if not isinstance(program, dict):
                raise ProgramRejected("program-malformed", "a signed program is a JSON object")
            loader.safeguards.admit(program, inputs, request.get("classifier"))
        elif "classifier" in request:
            raise RequestRefused("request-malformed", "this loader requires no classifier signature")
        outputs = loader.accelerator.run(program, inputs)
        if loader.safeguards is not None:
            loader.safeguards.release(outputs)
        outcome = {"outputs": outputs}
    except (RequestRefused, ProgramRejected) as exc:
        outcome = {"error": {"reason": exc.reason, "message": str(exc)}}
    except Exception:
        # A bug, not a refusal: the caller still gets a sealed answer, the untrusted side no detail.
        log.exception("a program failed unexpectedly")
        outcome = {"error": {"reason": "program-failed", "message": "the loader failed to run it"}}
    return message_to_text(reply.seal(outcome))


def answer(loader: LoaderState, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """The loader API as a pure function of the request: (status, JSON document)."""
    if (method, path) == ("GET", "/healthz"):
        return 200, {"status": "ok"}
    if (method, path) == ("GET", "/v1/attestation"):
        try:
            token = loader.tokens.get()
        except (KeyserverError, CollectorError) as exc:
            # No fresh attestation, no key to offer: callers must not seal to an unattested loader.
            return 503, {"error": f"the keyserver did not attest this loader now: {exc}"}
        if isinstance(token, list):  # k of n: the caller checks that enough of them verify
            return 200, {"public_key": loader.key.public_jwk, "tokens": token}
        return 200, {"tenant": loader.tenant, "public_key": loader.key.public_jwk, "token": token}
    if (method, path) == ("GET", "/v1/safeguards"):
        # The counters (refusals by reason, egress in the window and the lifetime): nothing secret.
        return 200, loader.safeguards.report() if loader.safeguards is not None else {"configured": False}
    if (method, path) == ("POST", "/v1/run"):
        try:
            data = loads_strict(body)
        except ValueError:
            data = None
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(data, dict) or set(data) != {"message"} or not isinstance(message, str):
            return 400, {"error": 'a request is {"message": <sealed request>}'}
        if len(message) > MAX_MESSAGE_CHARS:
            return 400, {"error": 'a request is {"message": <sealed request>}'}
        try:
            with _runs:
                return 200, {"message": _run_sealed(loader, message)}
        except ChannelError:
            return 400, {"error": "the message does not open with this loader's key"}
    if path in ("/healthz", "/v1/attestation", "/v1/run", "/v1/safeguards"):
        return 405, {"error": "method not allowed"}
    return 404, {"error": "not found"}


def create_loader_server(loader: LoaderState, host: str, port: int) -> ThreadingHTTPServer:
    """The loader API on ``host:port`` (``port`` 0: any free port), one thread per connection."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = IDLE_SECONDS
        server_version = "keyserver-loader"
        sys_version = ""

        def _handle(self, method: str) -> None:
            length_text = self.headers.get("Content-Length", "0")
            if self.headers.get("Transfer-Encoding") or not length_text.isdigit():
                self._send(411, {"error": "send a Content-Length"}, close=True)
                return
            length = int(length_text)
            if length > MAX_BODY_BYTES:
                self._send(413, {"error": "the request is too large"}, close=True)
                return
            body = self.rfile.read(length)
            status, document = answer(loader, method, self.path.split("?", 1)[0], body)
            self._send(status, document)

        def _send(self, status: int, document: dict[str, Any], *, close: bool = False) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("loader api: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
