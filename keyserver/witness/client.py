"""A log's side of tlog-witness: ask witnesses to cosign a checkpoint, keep what verifies.

The keyserver remembers, per witness and origin, the size it last got cosigned; the first request
after a start sends ``old 0`` and learns the witness's size from its 409 (as the specification
suggests), then sends the consistency proof from that size. A witness's answer is trusted only as
far as it verifies: each returned line is checked against that witness's configured key on this very
checkpoint, and lines that do not verify are dropped (and reported).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from audit.checkpoint import Checkpoint, CheckpointError
from audit.cosignature import CosignerKey, verify_cosignatures
from keyserver.witness.protocol import SIZE_CONTENT_TYPE, format_add_checkpoint

__all__ = ["ProofSource", "WitnessClient", "WitnessEndpoint", "WitnessOutcome", "WitnessUnavailable"]

# (old size, new size) -> the RFC 9162 consistency proof between them, from the log's own store.
ProofSource = Callable[[int, int], Awaitable[Sequence[bytes]]]
_MAX_RESPONSE_BYTES = 64 * 1024


class WitnessUnavailable(Exception):
    """A witness did not cosign: unreachable, too slow, refused, or answered what does not verify."""


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness as a log is configured with it: its key (name included) and submission prefix."""

    key: CosignerKey
    url: str


@dataclass
class WitnessOutcome:
    """What asking every witness gave: the cosignature lines that verified, and why others did not."""

    lines: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def cosigned_by(self) -> int:
        return len(self.lines)


class WitnessClient:
    def __init__(self, http: httpx.AsyncClient, *, timeout: float) -> None:
        self._http = http
        self._timeout = timeout
        self._known_size: dict[tuple[str, str], int] = {}

    async def cosign(
        self, witness: WitnessEndpoint, note: str, checkpoint: Checkpoint, proofs: ProofSource
    ) -> str:
        """The witness's verified cosignature line on ``note``, or :class:`WitnessUnavailable`."""
        slot = (witness.key.name, checkpoint.origin)
        old = min(self._known_size.get(slot, 0), checkpoint.size)
        for _ in range(3):
            proof = list(await proofs(old, checkpoint.size)) if 0 < old < checkpoint.size else []
            status, content_type, text = await self._post(witness, format_add_checkpoint(old, proof, note))
            if status == 409 and content_type.startswith(SIZE_CONTENT_TYPE):
                size = _parse_size(witness, text)
                if size > checkpoint.size or size == old:
                    # Larger: it saw a bigger tree of this log than we now sign (a rollback, or another
                    # writer). Same size refused: a different root at that size. Either way, no retry.
                    self._known_size[slot] = size
                    raise WitnessUnavailable(
                        f"{witness.key.name}: refuses the checkpoint (it has cosigned size {size})"
                    )
                old = size
                continue
            if status != 200:
                raise WitnessUnavailable(f"{witness.key.name}: HTTP {status}: {text.strip()[:200]}")
            line = _verified_line(witness, note, text)
            self._known_size[slot] = checkpoint.size
            return line
        raise WitnessUnavailable(f"{witness.key.name}: its size kept changing; gave up")

    async def cosign_all(
        self, witnesses: Sequence[WitnessEndpoint], note: str, checkpoint: Checkpoint, proofs: ProofSource
    ) -> WitnessOutcome:
        """Ask every witness at once, each bounded by the timeout; never raises for a witness's failure."""

        async def one(witness: WitnessEndpoint) -> tuple[str, str | None, str | None]:
            try:
                line = await asyncio.wait_for(self.cosign(witness, note, checkpoint, proofs), self._timeout)
            except TimeoutError:
                return witness.key.name, None, f"no answer within {self._timeout:g} s"
            except WitnessUnavailable as exc:
                return witness.key.name, None, str(exc)
            return witness.key.name, line, None

        outcome = WitnessOutcome()
        for name, line, failure in await asyncio.gather(*(one(w) for w in witnesses)):
            if line is not None:
                outcome.lines.append(line)
            else:
                outcome.failures[name] = failure or "unknown failure"
        return outcome

    async def _post(self, witness: WitnessEndpoint, body: bytes) -> tuple[int, str, str]:
        url = witness.url.rstrip("/") + "/add-checkpoint"
        try:
            async with self._http.stream(
                "POST", url, content=body, headers={"Content-Type": "text/plain"}, timeout=self._timeout
            ) as response:
                data = b""
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > _MAX_RESPONSE_BYTES:
                        raise WitnessUnavailable(
                            f"{witness.key.name}: answer larger than {_MAX_RESPONSE_BYTES} bytes"
                        )
                return (
                    response.status_code,
                    response.headers.get("content-type", ""),
                    data.decode("utf-8", "replace"),
                )
        except httpx.HTTPError as exc:
            raise WitnessUnavailable(f"{witness.key.name}: {type(exc).__name__}: {exc}") from None


def _parse_size(witness: WitnessEndpoint, text: str) -> int:
    value = text.removesuffix("\n")
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise WitnessUnavailable(f"{witness.key.name}: a 409 whose body is not a tree size")
    return int(value)


def _verified_line(witness: WitnessEndpoint, note: str, text: str) -> str:
    """The one line of the answer that is this witness's valid cosignature on ``note``."""
    for line in text.splitlines(keepends=True):
        if not line.startswith(f"\u2014 {witness.key.name} ") or not line.endswith("\n"):
            continue
        try:
            _, verified = verify_cosignatures(note + line, [witness.key])
        except CheckpointError:
            continue
        if verified:
            return line
    raise WitnessUnavailable(
        f"{witness.key.name}: answered 200 without a valid cosignature on this checkpoint"
    )
