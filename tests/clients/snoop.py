"""Looking for secrets where they must not be: another process's memory, and the bytes on a TCP hop.

``process_memory_contains`` reads every readable mapping of a live process through /proc/PID/mem (the
tests run as root, or as the same user with ptrace allowed), so a secret that is anywhere in that
process's heap, stack or buffers is found; ``tests.fixtures.tcpproxy.TcpProxy`` sits on one TCP hop and
keeps a copy of everything that crosses it (``recorded``). Both are checked against positive controls in
the tests that use them, so a scanner that silently finds nothing cannot make a test pass.
``TamperingProxy`` rewrites what crosses the loader's path to the keyserver.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")
_CHUNK = 1 << 22


def readable_regions(pid: int) -> list[tuple[int, int, str]]:
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        match = _MAPS_LINE.match(line)
        if match is None:
            continue
        start, end, perms, name = int(match[1], 16), int(match[2], 16), match[3], match[4]
        # Skip what cannot hold our data: unreadable pages and the kernel's vsyscall page.
        if perms[0] == "r" and name != "[vsyscall]" and name != "[vvar]":
            regions.append((start, end, name))
    return regions


def process_memory_contains(pid: int, needles: Iterable[bytes]) -> dict[bytes, bool]:
    """For each needle, whether it occurs anywhere in the process's readable memory right now."""
    wanted = [n for n in needles if n]
    found = dict.fromkeys(wanted, False)
    longest = max((len(n) for n in wanted), default=1)
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end, _name in readable_regions(pid):
            tail = b""
            offset = start
            while offset < end:
                size = min(_CHUNK, end - offset)
                try:
                    mem.seek(offset)
                    chunk = mem.read(size)
                except (OSError, ValueError):
                    # A guard page or a mapping that went away: skip this chunk, not the region.
                    offset += size
                    tail = b""
                    continue
                window = tail + chunk
                for needle in wanted:
                    if not found[needle] and needle in window:
                        found[needle] = True
                tail = window[-(longest - 1) :] if longest > 1 else b""
                offset += size
    return found


Rewrite = Callable[[dict[str, Any], dict[str, Any]], None]


def _unchanged(request: dict[str, Any], response: dict[str, Any]) -> None:
    pass


class TamperingProxy:
    """An HTTP reverse proxy on the loader → keyserver path that may rewrite each release request on its
    way out (``request``) and each granted release on its way back (``response``, given the request as
    sent too): what a compromised host, or anyone on the path, could do."""

    def __init__(
        self,
        target_url: str,
        *,
        response: Rewrite = _unchanged,
        request: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        upstream = httpx.Client(base_url=target_url, timeout=30)
        self.tampered = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                release = self.path.endswith("/release")
                sent: dict[str, Any] = json.loads(body) if release and body else {}
                if release and request is not None:
                    request(sent)
                    body = json.dumps(sent).encode()
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in {"content-type", "authorization"}
                }
                answer = upstream.request(self.command, self.path, content=body, headers=headers)
                data = answer.content
                if release and answer.status_code == 200:
                    granted = answer.json()
                    response(sent, granted)
                    data = json.dumps(granted).encode()
                    proxy.tampered += 1
                self.send_response(answer.status_code)
                self.send_header("content-type", answer.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._upstream = upstream
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()
