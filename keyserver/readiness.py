"""Start-up checks that need the database, run the first time it answers instead of at process start.

A worker must start, and stay up, while the database is down: if its start-up depended on the database,
a worker replaced during an outage would fail to start and take the whole server down with it (issue
23). So the checks that need the database (the role may not bypass row-level security nor own the
schema, the schema is at this version's revision, the operator credential exists, and whatever else is
registered, e.g. the key-encryption key's identity) are a list, run in order, each until it has passed
once. Until all have passed every request that touches the store is answered 503 and ``/readyz`` says
not ready; ``/healthz`` answers all along.

An attempt is made at start-up, and again when a request needs the store, at most once per
``retry_interval_s`` (callers in between get the last reason, without a new attempt). A check that
fails with :class:`~keyserver.errors.ConfigurationError` (an unsafe role, a schema behind) is a refusal:
at start-up it stops the worker, as before; found later it is logged as an error and the service keeps
refusing (503) until a later attempt passes (e.g. once ``keyserver db upgrade`` has run). Any other
failure (refused connection, timeout, a server starting up) is the database not answering yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keyserver.errors import ConfigurationError, Unavailable

log = logging.getLogger("keyserver.readiness")

StartupCheck = Callable[[], Awaitable[None]]
DEFAULT_RETRY_INTERVAL_S = 1.0


class NotReady(Unavailable):
    """The start-up checks have not all passed yet (503)."""


@dataclass
class _Registered:
    name: str
    check: StartupCheck
    passed: bool = False


class Readiness:
    """The list of start-up checks and whether they have all passed once."""

    def __init__(self, *, retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S) -> None:
        # No deadline of its own: the database's connect and statement timeouts bound each check, and
        # cancelling one midway (a migration, with KEYSERVER_AUTO_MIGRATE) would only make it start over.
        self._checks: list[_Registered] = []
        self._retry_interval_s = retry_interval_s
        self._lock = asyncio.Lock()
        self._ready = False
        self._last_attempt = -float("inf")
        self._last_failure: NotReady = NotReady("the keyserver is starting; retry shortly")

    def register(self, name: str, check: StartupCheck) -> None:
        """Add a check; it runs after those registered before it. A check added after the others passed
        makes the service not ready again until it passes too (e.g. the KEK's identity, which can only
        be registered once the key backend exists, and that needs the database's answer first)."""
        self._checks.append(_Registered(name, check))
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def check_names(self) -> list[str]:
        return [registered.name for registered in self._checks]

    async def ensure(self) -> None:
        """Return once every check has passed; raise :class:`NotReady` (503) otherwise."""
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            if time.monotonic() - self._last_attempt < self._retry_interval_s:
                raise self._last_failure
            await self._attempt()

    async def start(self) -> None:
        """The start-up attempt: a refusal stops the start; a database that does not answer does not."""
        async with self._lock:
            try:
                await self._attempt()
            except NotReady as exc:
                if isinstance(exc.__cause__, ConfigurationError):
                    raise exc.__cause__ from None
                log.warning("starting without the database; ready when it answers")

    async def _attempt(self) -> None:
        self._last_attempt = time.monotonic()
        for registered in self._checks:
            if registered.passed:
                continue
            try:
                await registered.check()
            except ConfigurationError as exc:
                log.error(
                    "refusing to serve: a start-up check failed",
                    extra={"fields": {"check": registered.name, "reason": exc.message}},
                )
                self._last_failure = NotReady(
                    "this keyserver refuses to serve: a start-up check failed (see its log)"
                )
                raise self._last_failure from exc
            except Exception as exc:  # the database not answering (yet), whatever the driver raised
                log.warning(
                    "not ready: a start-up check could not run",
                    # The driver's message (host, port, server state; never the URL's password).
                    extra={
                        "fields": {
                            "check": registered.name,
                            "error": type(exc).__name__,
                            "detail": str(exc)[:300],
                        }
                    },
                )
                self._last_failure = NotReady("the keyserver is waiting for its database; retry shortly")
                raise self._last_failure from exc
            registered.passed = True
        self._ready = True
        log.info("ready: every start-up check passed", extra={"fields": {"checks": self.check_names}})
