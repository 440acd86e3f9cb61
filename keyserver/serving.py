"""Run uvicorn and tell a stop that was asked for (SIGINT, SIGTERM) from any other.

``uvicorn.run`` returns normally when its parent process gives up, e.g. after "Child process failed to
start, stopping the parent process", and ``keyserver serve`` then exited 0, so a supervisor that
restarts only on failure left the service down (issue 23). The signal handlers are wrapped to record
that a stop was requested; :func:`run_until_stopped` returns whether it was.
"""

from __future__ import annotations

import socket
import types

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess


class _Server(uvicorn.Server):
    stop_requested = False

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        self.stop_requested = True
        super().handle_exit(sig, frame)


class _Supervisor(Multiprocess):
    stop_requested = False

    def handle_int(self) -> None:
        self.stop_requested = True
        super().handle_int()

    def handle_term(self) -> None:
        self.stop_requested = True
        super().handle_term()

    def handle_break(self) -> None:  # pragma: no cover - Windows
        self.stop_requested = True
        super().handle_break()


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The shared listening socket of a multi-worker server, with ``TCP_NODELAY`` for every connection.

    uvicorn binds it with protocol 0, and the workers rebuild it the same way, so asyncio (which sets
    ``TCP_NODELAY`` only on sockets whose protocol is ``IPPROTO_TCP``) leaves Nagle on: h11 writes a
    response's head and body separately and the body waits ~40 ms for the client's delayed ACK (issue
    15). Linux copies the option from the listening socket to each connection it accepts, so it is set
    here, once, whatever the workers do.
    """
    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_until_stopped(config: uvicorn.Config) -> bool:
    """Serve until the server stops; True when a stop signal ended it, False for any other end."""
    if config.workers > 1:
        supervisor = _Supervisor(config, sockets=[listening_socket(config)])
        try:
            supervisor.run()
        except KeyboardInterrupt:
            return True
        return supervisor.stop_requested
    server = _Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        return True
    except SystemExit:  # uvicorn exits this way when the application fails to start
        return False
    return server.started and server.stop_requested
