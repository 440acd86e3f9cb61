"""Every connection a `keyserver serve` accepts has TCP_NODELAY, with one worker and with several.

Without it a multi-worker server held each response ~40 ms: h11 writes the head and the body
separately, and Nagle's algorithm waited for the client's delayed ACK (issue 15). This checks the
socket option on the server's side of a real connection (a fact, not a timing): the test takes a
duplicate of the worker's connected socket with pidfd_getfd(2) and reads the option.
"""

from __future__ import annotations

import ctypes
import os
import socket
from pathlib import Path

import pytest

from tests.fixtures.server import ServerProcess, clean_env, start_server

_SYS_PIDFD_GETFD = 438  # x86-64 and arm64 alike


def _server_side_inode(server_port: int, client_port: int) -> str:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                return fields[9]
    raise AssertionError("the server's side of the connection is not in /proc/net/tcp")


def _steal(pid: int, inode: str) -> socket.socket | None:
    """A duplicate of process ``pid``'s socket with this inode, or None if it holds none."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target != f"socket:[{inode}]":
            continue
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        try:
            duplicate = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd), 0)
        finally:
            os.close(pidfd)
        if duplicate < 0:
            pytest.skip(f"pidfd_getfd is not allowed here: {os.strerror(ctypes.get_errno())}")
        return socket.socket(fileno=duplicate)
    return None


def _nodelay_of_accepted_connection(server: ServerProcess, pids: set[int]) -> int:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        inode = _server_side_inode(port, client.getsockname()[1])
        for pid in pids:
            stolen = _steal(pid, inode)
            if stolen is not None:
                with stolen:
                    return stolen.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    raise AssertionError("no worker holds the connection")


@pytest.mark.parametrize("workers", [1, 2])
def test_accepted_connections_have_tcp_nodelay(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path, clean_env(KEYSERVER_DATA_DIR=str(tmp_path / "data")), workers=workers)
    try:
        pids = server.worker_pids() if workers > 1 else {server.process.pid}
        assert len(pids) == workers
        assert _nodelay_of_accepted_connection(server, pids) == 1
    finally:
        log = server.stop()
    # The embedded default is SQLite: a second worker is allowed, and the operator is told what it costs.
    assert ("adds lock contention, not throughput" in log) is (workers > 1)
