"""The loader's stdlib keyserver client reads answers strictly and fails closed with a typed reason.

A real HTTP server on 127.0.0.1 answers with what each case gives; the happy paths run against the real
keyserver in tests/clients/test_end_to_end.py.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from clients.demo.processes import free_port
from clients.loader.keyserver_api import (
    MAX_ANSWER_BYTES,
    KeyserverAnswerInvalid,
    KeyserverError,
    KeyserverRefused,
    KeyserverUnreachable,
    LoaderKeyserver,
)

NONCE = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()
RECEIPT = {"log_index": 3, "tree_size": 4, "checkpoint": "c", "inclusion_proof": ["00" * 32], "entry": "e30="}


class Canned:
    """The next answer: (status, content type, body bytes); and what was asked."""

    def __init__(self) -> None:
        self.answer: tuple[int, str, bytes] = (200, "application/json", b"{}")
        self.paths: list[str] = []
        self.bodies: list[Any] = []


@pytest.fixture
def keyserver() -> Iterator[tuple[Canned, str]]:
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            canned.paths.append(self.path)
            canned.bodies.append(json.loads(body) if body else None)
            status, media, data = canned.answer
            self.send_response(status)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield canned, f"http://127.0.0.1:{server.server_address[1]}/prefix"
    finally:
        server.shutdown()
        server.server_close()


def answer(canned: Canned, document: Any, status: int = 200, media: str = "application/json") -> None:
    canned.answer = (
        status,
        media,
        json.dumps(document).encode() if not isinstance(document, bytes) else document,
    )


def test_the_three_calls_read_what_the_api_promises(keyserver: tuple[Canned, str]) -> None:
    canned, url = keyserver
    client = LoaderKeyserver(url, tenant="acme", timeout=5)
    answer(canned, {"id": "c-1", "nonce": NONCE, "expires_at": "2030-01-01T00:00:00Z"}, 201)
    challenge = client.challenge()
    assert (challenge.id, challenge.nonce) == ("c-1", bytes(range(32)))
    answer(canned, {"jwe": "a.b.c.d.e", "kid": "weights/1", "receipt": RECEIPT})
    granted = client.release("weights", "c-1", {"tee": "tpm"}, {"kty": "EC"}, 2)
    assert (granted.jwe, granted.receipt.log_index, granted.receipt.entry) == ("a.b.c.d.e", 3, b"{}")
    assert granted.receipt.inclusion_proof == [bytes(32)]
    answer(canned, {"token": "t"})
    assert client.attest("c-1", {"tee": "tpm"}, {"kty": "EC"}) == "t"
    assert canned.paths == [
        "/prefix/v1/tenants/acme/challenges",
        "/prefix/v1/tenants/acme/keys/weights/release",
        "/prefix/v1/tenants/acme/attest",
    ]
    assert canned.bodies[1] == {
        "challenge": "c-1", "evidence": {"tee": "tpm"}, "ephemeral_key": {"kty": "EC"}, "version": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("status", "media", "body"),
    [
        (200, "application/json", b'{"id": "a", "id": "b", "nonce": "x"}'),  # duplicate member
        (200, "application/json", b'{"id": "a", "nonce": NaN}'),
        (200, "application/json", b"[]"),
        (200, "application/json", b'{"id": 1, "nonce": "' + NONCE.encode() + b'"}'),
        (200, "application/json", b'{"id": "a", "nonce": "AAAA"}'),  # 3 bytes, not 32
        (200, "application/json", b'{"id": "a", "nonce": "++++"}'),  # not base64url
        (200, "text/html", b"<html>proxy</html>"),
        (502, "text/plain", b"bad gateway"),
        (200, "application/json", b"x" * (MAX_ANSWER_BYTES + 1)),
    ],
)
def test_an_answer_that_is_not_what_the_api_promises_is_refused(
    keyserver: tuple[Canned, str], status: int, media: str, body: bytes
) -> None:
    canned, url = keyserver
    canned.answer = (status, media, body)
    with pytest.raises(KeyserverAnswerInvalid) as refused:
        LoaderKeyserver(url, tenant="acme", timeout=5).challenge()
    assert refused.value.reason == "keyserver-answer-invalid"


@pytest.mark.parametrize(
    "receipt",
    [
        {**RECEIPT, "log_index": -1},
        {**RECEIPT, "log_index": True},
        {**RECEIPT, "inclusion_proof": ["zz"]},
        {**RECEIPT, "inclusion_proof": "00"},
        {**RECEIPT, "entry": "not base64!"},
        {k: v for k, v in RECEIPT.items() if k != "checkpoint"},
    ],
)
def test_a_malformed_receipt_is_refused(keyserver: tuple[Canned, str], receipt: dict[str, Any]) -> None:
    canned, url = keyserver
    answer(canned, {"jwe": "j", "kid": "weights/1", "receipt": receipt})
    with pytest.raises(KeyserverAnswerInvalid):
        LoaderKeyserver(url, tenant="acme", timeout=5).release("weights", "c", {}, {}, None)


def test_a_denial_carries_its_reason(keyserver: tuple[Canned, str]) -> None:
    canned, url = keyserver
    problem = {"type": "urn:keyserver:problem:forbidden", "title": "Forbidden", "status": 403,
               "detail": "policy says no", "reason": "reference-value-mismatch"}  # fmt: skip
    answer(canned, problem, 403, "application/problem+json")
    with pytest.raises(KeyserverRefused) as refused:
        LoaderKeyserver(url, tenant="acme", timeout=5).release("weights", "c", {}, {}, None)
    assert (refused.value.reason, refused.value.code, refused.value.status) == (
        "reference-value-mismatch", "forbidden", 403,
    )  # fmt: skip
    answer(canned, {**problem, "reason": None}, 403, "application/problem+json")
    with pytest.raises(KeyserverRefused) as coded:
        LoaderKeyserver(url, tenant="acme", timeout=5).challenge()
    assert coded.value.reason == "forbidden"


def test_no_keyserver_and_unusable_names_fail_closed() -> None:
    port = free_port()  # free now: nobody listens
    with pytest.raises(KeyserverUnreachable):
        LoaderKeyserver(f"http://127.0.0.1:{port}", tenant="acme", timeout=2).challenge()
    for url in ("ftp://x", "http://user@host", "http://host/?q=1", "not a url"):
        with pytest.raises(KeyserverError):
            LoaderKeyserver(url, tenant="acme", timeout=2)
    with pytest.raises(KeyserverError):
        LoaderKeyserver("http://127.0.0.1:9", tenant="../other", timeout=2)
    with pytest.raises(KeyserverError):
        LoaderKeyserver("http://127.0.0.1:9", tenant="acme", timeout=2).release("a/b", "c", {}, {}, None)
