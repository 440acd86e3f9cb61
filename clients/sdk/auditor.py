"""An auditor's calls: the tenant's release log, as raw material for offline verification (audit/).

The SDK checks only the shape of what it gets (and that each entry's decoded form matches its canonical
bytes); proofs and checkpoints are verified by ``keyserver audit`` / audit.verifier, which need only the
log's public key.
"""

from __future__ import annotations

from clients.sdk.errors import InvalidArgument
from clients.sdk.models import ConsistencyProof, InclusionProof, LogEntry, LogKey
from clients.sdk.routes import TenantRoutes

MAX_ENTRIES_PER_READ = 1000  # the server's page limit (keyserver/releaselog/store.py)


def _non_negative(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{what} must be a non-negative integer, got {value!r}")
    return value


class AuditorApi(TenantRoutes):
    async def log_key(self) -> LogKey:
        """The log's checkpoint-signing key. Pin it out of band: trusting it from the same server that
        signs the checkpoints proves nothing."""
        return LogKey.parse((await self._transport.call("GET", self._path("log", "key"))).fields())

    async def checkpoint(self) -> str:
        """The latest signed checkpoint (C2SP signed note), as text."""
        return (await self._transport.call("GET", self._path("log", "checkpoint"))).text()

    async def cosigned_checkpoint(self) -> str:
        """The latest checkpoint a quorum of the log's witnesses cosigned (signed note with cosignature
        lines); check it with ``audit.witnessed.check_cosigned`` and the witness keys *you* trust."""
        return (await self._transport.call("GET", self._path("log", "checkpoint", "cosigned"))).text()

    async def entries(self, start: int, end: int, *, page_size: int = MAX_ENTRIES_PER_READ) -> list[LogEntry]:
        """Entries ``[start, end)``, fetched ``page_size`` at a time."""
        _non_negative(start, "start")
        if _non_negative(end, "end") <= start:
            raise InvalidArgument(
                f"ask for entries with start < end (end is exclusive), got [{start}, {end})"
            )
        if not 1 <= page_size <= MAX_ENTRIES_PER_READ:
            raise InvalidArgument(f"page_size is between 1 and {MAX_ENTRIES_PER_READ}")
        found: list[LogEntry] = []
        for first in range(start, end, page_size):
            last = min(first + page_size, end)
            reply = await self._transport.call(
                "GET", self._path("log", "entries"), params={"start": first, "end": last}
            )
            fields = reply.fields()
            page = fields.items("entries")
            indices = [item.integer("index") for item in page]
            if indices != list(range(first, last)):
                raise fields.error(f"asked for entries [{first}, {last}), got indices {indices[:5]}…")
            found.extend(LogEntry.parse(item) for item in page)
        return found

    async def inclusion_proof(self, index: int, tree_size: int) -> InclusionProof:
        params = {"index": _non_negative(index, "index"), "tree_size": _non_negative(tree_size, "tree_size")}
        reply = await self._transport.call("GET", self._path("log", "proofs", "inclusion"), params=params)
        proof = InclusionProof.parse(reply.fields())
        if (proof.index, proof.tree_size) != (index, tree_size):
            raise reply.fields().error("the proof is for another index or tree size than asked")
        return proof

    async def consistency_proof(self, first: int, second: int) -> ConsistencyProof:
        params = {"first": _non_negative(first, "first"), "second": _non_negative(second, "second")}
        reply = await self._transport.call("GET", self._path("log", "proofs", "consistency"), params=params)
        proof = ConsistencyProof.parse(reply.fields())
        if (proof.first, proof.second) != (first, second):
            raise reply.fields().error("the proof is for other tree sizes than asked")
        return proof
