"""The release-log explorer in a real browser (headless Chromium over CDP, tests/fixtures/browser.py)
against a real `keyserver serve` process: what it shows for a known log, that it verifies every entry's
inclusion proof and the checkpoint's signature itself, that it sees consistency between the checkpoints it
has seen, and that it flags an entry altered on the way (an HTTP proxy rewrites one entry's bytes)."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit.entry import canonical_bytes
from audit.merkle import MemoryNodeStore
from tests.fixtures.browser import Browser, Page
from tests.fixtures.server import ServerProcess, clean_env, start_server
from tests.test_audit_cli import LogWriter

DOCS = Path(__file__).resolve().parent.parent / "docs"
START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
REASONS = ["reference-value-mismatch", "evidence-rejected", "policy-rule-failed"]


def known_log(count: int, offset: int = 0) -> list[dict[str, Any]]:
    """Releases of two keys over three days: every third one denied, with one of three reasons."""
    entries = []
    for n in range(offset, offset + count):
        denied = n % 3 == 0
        entries.append(
            {
                "v": 1,
                "kind": "key-release",
                "time": (START + timedelta(hours=3 * n)).isoformat().replace("+00:00", "Z"),
                "principal": None,
                "key": {"name": "weights" if n % 4 else "tokenizer", "version": 1},
                "decision": "denied" if denied else "granted",
                "reason": REASONS[(n // 3) % len(REASONS)] if denied else None,
            }
        )
    return entries


class TamperingProxy:
    """An HTTP reverse proxy that changes entry ``victim``'s decision in every page of entries it forwards
    (both the canonical bytes and the decoded copy, as an attacker rewriting the log would)."""

    def __init__(self, upstream: str, victim: int) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept")}
                reply = httpx.get(upstream + self.path, headers=headers, timeout=10)
                body = reply.content
                if "/log/entries" in self.path and reply.status_code == 200:
                    body = proxy.tamper(body)
                self.send_response(reply.status_code)
                for name in ("content-type", "content-security-policy", "x-content-type-options"):
                    if name in reply.headers:
                        self.send_header(name, reply.headers[name])
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.victim = victim
        self.tampered = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tamper(self, body: bytes) -> bytes:
        page = json.loads(body)
        for item in page["entries"]:
            if item["index"] == self.victim:
                entry = dict(item["entry"], decision="granted", reason=None)
                item["entry"] = entry
                item["data"] = base64.b64encode(canonical_bytes(entry)).decode()
                self.tampered += 1
        return json.dumps(page).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_for(keyserver_process: ServerProcess) -> Iterator[Any]:
    proxies: list[TamperingProxy] = []

    def make(victim: int) -> TamperingProxy:
        proxies.append(TamperingProxy(keyserver_process.url, victim))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def load(page: Page, token: str) -> None:
    if token:
        page.type_into("#token", token)
    page.click("#load")
    page.wait_for("document.body.dataset.state === 'ready' || document.body.dataset.state === 'error'")
    assert page.evaluate("document.body.dataset.state") == "ready", page.evaluate(
        "document.querySelector('#status').textContent"
    )


def set_filters(page: Page, values: dict[str, str]) -> None:
    page.evaluate(
        f"(() => {{ for (const [id, v] of Object.entries({json.dumps(values)})) {{ "
        "const s = document.querySelector(id); s.value = v; s.dispatchEvent(new Event('change')); } })()"
    )
    page.wait_for("document.body.dataset.state === 'ready'")


def rows(page: Page) -> list[dict[str, str]]:
    value: list[dict[str, str]] = page.evaluate(
        "[...document.querySelectorAll('#entries tbody tr')].map(r => ({index: r.dataset.index, "
        "status: r.dataset.status, text: r.textContent}))"
    )
    return value


async def test_explorer_shows_and_verifies_a_known_log(
    keyserver_process: ServerProcess,
    browser: Browser,
    proxy_for: Any,
) -> None:
    writer = LogWriter(keyserver_process.data_dir)
    try:
        tenant, token = await writer.tenant_with_auditor("acme")
        await writer.append(tenant, known_log(24))

        page = browser.open(f"{keyserver_process.url}/explorer/acme")
        load(page, token)
        checkpoint = page.evaluate("document.querySelector('#checkpoint').textContent")
        assert "keyserver.local/acme" in checkpoint
        assert "Tree size24" in checkpoint
        assert "verified ✓" in checkpoint
        shown = rows(page)
        assert [r["index"] for r in shown] == [str(i) for i in range(23, -1, -1)]  # newest first
        assert {r["status"] for r in shown} == {"ok"}
        assert page.evaluate("document.querySelector('#verify-summary').textContent").startswith("All 24")
        # Plots: bars for releases over time, one bar per denial reason.
        assert page.evaluate("document.querySelectorAll('#plot-time rect.bar-granted').length") > 0
        assert page.evaluate("document.querySelectorAll('#plot-reasons rect').length") == 3
        # Search: by key, then by decision and reason.
        page.evaluate(
            "(() => { const s = document.querySelector('#f-key'); s.value = 'tokenizer'; "
            "s.dispatchEvent(new Event('change')); })()"
        )
        page.wait_for("document.body.dataset.state === 'ready'")
        assert len(rows(page)) == len([e for e in known_log(24) if e["key"]["name"] == "tokenizer"])
        page.evaluate(
            "(() => { for (const [id, v] of [['#f-key', ''], ['#f-decision', 'denied'], "
            "['#f-reason', 'evidence-rejected']]) { const s = document.querySelector(id); s.value = v; "
            "s.dispatchEvent(new Event('change')); } })()"
        )
        page.wait_for("document.body.dataset.state === 'ready'")
        expected = [e for e in known_log(24) if e["reason"] == "evidence-rejected"]
        assert len(rows(page)) == len(expected) > 0
        # By time: from 3 December on (UTC), all decisions and reasons.
        set_filters(page, {"#f-decision": "", "#f-reason": "", "#f-since": "2026-12-03T00:00"})
        assert [r["index"] for r in rows(page)] == ["23", "22"]
        set_filters(page, {"#f-since": ""})
        # The token went into no URL and no storage.
        assert token not in page.evaluate(
            "location.href + document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
        )
        if os.environ.get("KEYSERVER_SCREENSHOTS"):
            page.evaluate(
                "(() => { for (const id of ['#f-decision', '#f-reason']) { const s = "
                "document.querySelector(id); s.value = ''; s.dispatchEvent(new Event('change')); } })()"
            )
            page.wait_for("document.body.dataset.state === 'ready'")
            page.screenshot(DOCS / "explorer.png")

        # The log grows; the page checks the new checkpoint extends the one it saw.
        await writer.append(tenant, known_log(5, offset=24))
        page.click("#refresh")
        page.wait_for(
            "document.querySelectorAll('#history li').length === 2 && document.body.dataset.state === 'ready'"
        )
        history = page.evaluate("document.querySelector('#history').textContent")
        assert "size 29" in history
        assert "consistent with size 24" in history
        assert "NOT" not in history
        assert page.console_errors() == []

        # The same log through a proxy that rewrites entry 6 (a denial) into a grant.
        proxy = proxy_for(victim=6)
        tampered = browser.open(f"{proxy.url}/explorer/acme")
        load(tampered, token)
        assert proxy.tampered >= 1
        by_index = {r["index"]: r for r in rows(tampered)}
        assert by_index["6"]["status"] == "bad"
        assert "does not lead to the checkpoint's root" in by_index["6"]["text"]
        assert {r["status"] for i, r in by_index.items() if i != "6"} == {"ok"}
        summary = tampered.evaluate("document.querySelector('#verify-summary').textContent")
        assert "1 of 29 shown entries are NOT in the signed checkpoint" in summary
        if os.environ.get("KEYSERVER_SCREENSHOTS"):
            tampered.evaluate(
                "document.querySelector('tr[data-index=\"6\"]').scrollIntoView({block: 'center'})"
            )
            tampered.screenshot(DOCS / "explorer-tampered.png")
    finally:
        await writer.db.dispose()


async def test_a_public_log_needs_no_token_and_a_private_one_says_so(
    browser: Browser, tmp_path: Path
) -> None:
    server = start_server(
        tmp_path, clean_env(KEYSERVER_DATA_DIR=str(tmp_path / "data"), KEYSERVER_PUBLIC_LOGS="acme")
    )
    writer = LogWriter(server.data_dir)
    try:
        tenant, _token = await writer.tenant_with_auditor("acme")
        await writer.tenant_with_auditor("umbrella")
        await writer.append(tenant, known_log(6))
        page = browser.open(f"{server.url}/explorer/acme")
        load(page, "")
        assert [r["status"] for r in rows(page)] == ["ok"] * 6
        private = browser.open(f"{server.url}/explorer/umbrella")
        private.click("#load")
        private.wait_for("document.body.dataset.state === 'error'")
        assert "not public" in private.evaluate("document.querySelector('#status').textContent")
    finally:
        await writer.db.dispose()
        server.stop()


def test_explorer_is_served_with_a_strict_policy(keyserver_process: ServerProcess) -> None:
    page = httpx.get(f"{keyserver_process.url}/explorer/acme")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "<script>" not in page.text  # no inline script: the page's code is in files the CSP allows
    for name in ("explorer.js", "merkle.js", "note.js", "explorer.css"):
        asset = httpx.get(f"{keyserver_process.url}/explorer/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{keyserver_process.url}/explorer/static/__init__.py").status_code == 404
    assert httpx.get(f"{keyserver_process.url}/explorer/static/..%2F__init__.py").status_code == 404
    assert httpx.get(f"{keyserver_process.url}/explorer/Not_A_Tenant").status_code == 404


def test_the_browsers_proof_checks_agree_with_the_python_auditor(
    keyserver_process: ServerProcess, browser: Browser
) -> None:
    """merkle.js, run in Chromium, accepts every inclusion and consistency proof of audit/merkle.py for all
    trees up to 33 leaves, and refuses each of them with one byte flipped, one hash dropped or added, the
    wrong index or size, or the wrong root."""
    store = MemoryNodeStore()
    leaves = [f"entry {n}".encode() for n in range(33)]
    store.extend(leaves)
    inclusion = [
        [index, size, [h.hex() for h in store.inclusion_proof(index, size)], store.root(size).hex()]
        for size in range(1, 34)
        for index in range(size)
    ]
    consistency = [
        [
            first,
            second,
            [h.hex() for h in store.consistency_proof(first, second)],
            store.root(first).hex(),
            store.root(second).hex(),
        ]
        for second in range(1, 34)
        for first in range(0, second + 1)
    ]
    cases = {"inclusion": inclusion, "consistency": consistency}
    page = browser.open(f"{keyserver_process.url}/explorer/acme")
    script = (Path(__file__).parent / "data" / "merkle_crosscheck.js").read_text()
    result = page.evaluate(f"({script})({json.dumps(cases)})")
    assert result["errors"] == [], result["errors"][:5]
    assert result["accepted"] == len(inclusion) + len(consistency)
    assert result["refused"] > 4 * len(inclusion)
