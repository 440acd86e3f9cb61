"""k-of-n release at the loader: one share from each of n independent keyservers, any k make the key.

The loader's measured configuration names the n keyservers (tenant, key, pinned log key, witnesses) and
the owner's commitment to the key (docs/threshold.md). At boot the loader, with one ephemeral key,
asks every keyserver at once — each with its own fresh challenge and evidence bound to it — and checks
every answer exactly as a single release (:func:`clients.loader.release.release_key`: the JWE opens,
names the configured key, and its receipt proves the keyserver logged it, cosigned as configured).
As soon as k shares are in it combines them and checks the result against the commitment, so a
keyserver cannot make the loader decrypt with a wrong key; shares are wiped as soon as they are
combined or no longer needed. Fewer than k grants is :class:`QuorumRefused`, naming every keyserver
that refused and why.

Evidence is collected one request at a time (a TPM without a resource manager serves one session at a
time); the HTTP round trips run in parallel, each bounded by the loader's request timeout.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.loader.collectors.base import Collector
from clients.loader.collectors.errors import CollectorError
from clients.loader.config import ConfigError
from clients.loader.keyserver_api import KeyserverError, LoaderKeyserver
from clients.loader.receipt import ReceiptInvalid
from clients.loader.release import (
    EphemeralKey,
    KeyserverTrust,
    ReleaseRefused,
    attestation_result,
    release_key,
)
from clients.weights_decrypt import decrypt_file
from threshold import KeyCommitment, NotEnoughShares, ThresholdError, combine, share_index, wipe

__all__ = [
    "DEFAULT_DEADLINE_S",
    "REFUSALS",
    "KeyserverTrust",
    "QuorumOutcome",
    "QuorumRefused",
    "QuorumTrust",
    "SerialCollector",
    "attestation_results",
    "parse_threshold",
    "release_for_boot",
    "release_quorum",
]

# Past this, a keyserver that has not answered counts as refusing (each request has its own timeout too).
DEFAULT_DEADLINE_S = 60.0
_THRESHOLD = frozenset({"k", "commitment", "keyservers"})  # "threshold": k of n keyservers
_KEYSERVER = frozenset({"name", "tenant", "key", "log"})  # one of them (and optionally "witnesses")
MAX_KEYSERVERS = 16
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
KeyserverParser = Callable[[Mapping[str, Any], str, str], KeyserverTrust]


@dataclass(frozen=True)
class QuorumTrust:
    """k of the n ``keyservers`` must release their share; the shares must combine to ``commitment``."""

    k: int
    keyservers: tuple[KeyserverTrust, ...]
    commitment: KeyCommitment

    @property
    def key_id(self) -> str:
        """The weights file's key id: the committed key's name and version."""
        return f"{self.commitment.identity.name}/{self.commitment.identity.version}"


class QuorumRefused(Exception):
    """Fewer than k keyservers released a share that combines to the committed key."""

    reason = "threshold-quorum-refused"

    def __init__(self, message: str, report: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__(message)
        self.message, self.report = message, dict(report)


# The loader's refusals this part adds: clients/loader/main.py reports them as the boot's reason.
REFUSALS: tuple[type[Exception], ...] = (QuorumRefused, ThresholdError)


def parse_threshold(member: object, parse_keyserver: KeyserverParser) -> QuorumTrust:
    """``"threshold": {"k", "commitment", "keyservers": [{"name", "tenant", "key", "log", …}]}``."""
    if not isinstance(member, dict) or set(member) != _THRESHOLD:
        raise ConfigError(f'"threshold" is {{{", ".join(sorted(_THRESHOLD))}}}')
    try:
        commitment = KeyCommitment.from_json(member["commitment"])
    except ThresholdError as exc:
        raise ConfigError(f"threshold: the owner's commitment is unusable: {exc.message}") from None
    identity = commitment.identity
    listed = member["keyservers"]
    if not isinstance(listed, list) or not 2 <= len(listed) <= MAX_KEYSERVERS:
        raise ConfigError(f'"threshold.keyservers" lists 2 to {MAX_KEYSERVERS} keyservers')
    keyservers = []
    for position, item in enumerate(listed):
        where = f"threshold keyserver #{position}"
        allowed = _KEYSERVER | {"witnesses"}
        if not isinstance(item, dict) or not _KEYSERVER <= set(item) <= allowed:
            raise ConfigError(f'{where}: is {{"name", "tenant", "key", "log"[, "witnesses"]}}')
        name = item["name"]
        if not isinstance(name, str) or not _LABEL.fullmatch(name):
            raise ConfigError(f"{where}: name is 1-64 of A-Z a-z 0-9 . _ -")
        keyservers.append(parse_keyserver(item, name, f"threshold keyserver {name}"))
    k = member["k"]
    if type(k) is not int or k != identity.k or len(keyservers) != identity.n:
        raise ConfigError(
            f"threshold: k={k!r} of {len(keyservers)} keyservers, but the commitment is for"
            f" {identity.k} of {identity.n}"
        )
    # n distinct operators: one keyserver listed twice (by name, origin or log key) would count twice.
    for label, values in (
        ("names", [t.name for t in keyservers]),
        ("log origins", [t.log.origin for t in keyservers]),
        ("log keys", [t.log.verifier_key for t in keyservers]),
    ):
        if len(set(values)) != len(values):
            raise ConfigError(f"threshold: the keyservers' {label} must differ (each is another operator)")
    return QuorumTrust(k=k, keyservers=tuple(keyservers), commitment=commitment)


def release_for_boot(
    quorum: QuorumTrust,
    clients: Mapping[str, LoaderKeyserver],
    collector: Collector,
    key: EphemeralKey,
    weights: Path,
    *,
    deadline_s: float,
) -> tuple[bytearray, dict[str, Any], Callable[[], list[str]]]:
    """The boot's k of n: the weights decrypted with the key from k of the n keyservers (the key wiped as
    soon as it is used), the boot report, and how to fetch fresh attestation results from all of them."""
    outcome = release_quorum(quorum, clients, collector, key, deadline_s=deadline_s)
    try:
        archive = decrypt_file(weights, bytes(outcome.key), expected_key_id=quorum.key_id)
    finally:
        wipe(outcome.key)
    return archive, outcome.report, lambda: attestation_results(quorum.keyservers, clients, collector, key)


class SerialCollector:
    """``collector``, one ``collect`` at a time (evidence for n keyservers, from one TPM or one TSM)."""

    def __init__(self, collector: Collector) -> None:
        self.tee = collector.tee
        self._collector, self._lock = collector, threading.Lock()

    def collect(self, binding: bytes) -> dict[str, Any]:
        with self._lock:
            return self._collector.collect(binding)


@dataclass
class QuorumOutcome:
    """The combined key (the caller wipes it) and the boot report: keyserver name → what it did."""

    key: bytearray
    report: dict[str, dict[str, Any]] = field(default_factory=dict)


def _refusal(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, KeyserverError | ReleaseRefused | ReceiptInvalid | CollectorError):
        return {"released": False, "reason": exc.reason, "detail": exc.message[:300]}
    return {"released": False, "reason": type(exc).__name__, "detail": str(exc)[:300]}


def _share_of(
    trust: KeyserverTrust, client: LoaderKeyserver, collector: Collector, key: EphemeralKey
) -> bytearray:
    released = release_key(client, collector, key, tenant=trust.tenant, key_name=trust.key, log=trust.log)
    # The released bytes object cannot be wiped; the share lives on in a bytearray that can.
    return bytearray(released.material)


def release_quorum(
    quorum: QuorumTrust,
    clients: Mapping[str, LoaderKeyserver],
    collector: Collector,
    key: EphemeralKey,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    share_of: Callable[[KeyserverTrust, LoaderKeyserver, Collector, EphemeralKey], bytearray] = _share_of,
) -> QuorumOutcome:
    """Ask every keyserver for its share at once; the key from k shares that match the commitment."""
    serial = SerialCollector(collector)
    report: dict[str, dict[str, Any]] = {}
    shares: dict[str, bytearray] = {}
    combined: bytearray | None = None
    pool = ThreadPoolExecutor(max_workers=len(quorum.keyservers), thread_name_prefix="quorum")
    try:
        futures: dict[Future[bytearray], KeyserverTrust] = {
            pool.submit(share_of, trust, clients[trust.name], serial, key): trust
            for trust in quorum.keyservers
        }
        pending = set(futures)
        end = time.monotonic() + deadline_s  # one deadline for the whole boot, not per answer
        while pending:
            remaining = end - time.monotonic()
            done, pending = wait(pending, timeout=max(0.0, remaining), return_when=FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                trust = futures[future]
                try:
                    share = future.result()
                except Exception as exc:
                    report[trust.name] = _refusal(exc)
                    continue
                problem = _unusable(quorum, share, shares)
                if problem is None and combined is not None:
                    # Enough already: a late share is only checked against the key (so a keyserver that
                    # altered its share is named even when it answered last), then wiped.
                    problem = _disagreement(quorum, shares, share)
                    wipe(share)
                    report[trust.name] = {"released": True, "used": False, **(problem or {})}
                    continue
                if problem is not None:
                    wipe(share)
                    report[trust.name] = {"released": True, "used": False, **problem}
                    continue
                shares[trust.name] = share
                report[trust.name] = {"released": True}
            if combined is None and len(shares) >= quorum.k:
                combined = _combine(quorum, shares, report)
                if combined is not None:
                    # Only the k shares the key came from are kept (as secret as the key the caller
                    # already holds), to check late shares against; all are wiped when the boot ends.
                    for name in [n for n in shares if not report[n].get("used")]:
                        wipe(shares.pop(name))
        for future in pending:
            report[futures[future].name] = {
                "released": False,
                "reason": "keyserver-timeout",
                "detail": f"no answer within {deadline_s:g} s",
            }
            future.cancel()
    finally:
        for share in shares.values():
            wipe(share)
        pool.shutdown(wait=False, cancel_futures=True)
    if combined is None:
        refused = ", ".join(
            f"{name} ({entry.get('reason', 'share not used')})"
            for name, entry in sorted(report.items())
            if not entry.get("released") or entry.get("used") is False
        )
        granted = sum(1 for entry in report.values() if entry.get("released"))
        raise QuorumRefused(
            f"{granted} of {len(quorum.keyservers)} keyservers released a share; {quorum.k} must agree."
            f" Refused: {refused or 'none'}",
            report,
        )
    return QuorumOutcome(combined, report)


def _unusable(quorum: QuorumTrust, share: bytearray, kept: Mapping[str, bytearray]) -> dict[str, str] | None:
    """Why ``share`` cannot count (malformed, of another key, version or split, or an index another
    keyserver's share already has: one share must not count twice), or None."""
    try:
        combine([share], quorum.commitment, quorum.commitment.identity)
    except NotEnoughShares:
        pass  # form, identity and length are right: all that one share can show
    except ThresholdError as exc:
        return {"reason": exc.reason, "detail": exc.message}
    index = share_index(share)
    for name, other in kept.items():
        if share_index(other) == index:
            return {
                "reason": "threshold-duplicate-share",
                "detail": f"share index {index} was already released by {name}",
            }
    return None


def _disagreement(
    quorum: QuorumTrust, chosen: Mapping[str, bytearray], share: bytearray
) -> dict[str, str] | None:
    """Why ``share`` disagrees with the key the ``chosen`` k shares made, or None if it agrees."""
    try:
        wipe(combine([*chosen.values(), share], quorum.commitment, quorum.commitment.identity))
    except ThresholdError as exc:
        return {"reason": exc.reason, "detail": exc.message}
    return None


def _combine(
    quorum: QuorumTrust, shares: dict[str, bytearray], report: dict[str, dict[str, Any]]
) -> bytearray | None:
    """The committed key from some k of ``shares``, marking the shares that do not fit it; None if no k fit.

    A share altered by its keyserver (or on the way) makes its subsets miss the commitment; any k honest
    shares still make the key, and each share outside them is checked against it.
    """
    identity = quorum.commitment.identity
    for names in itertools.combinations(sorted(shares), quorum.k):
        try:
            key = combine([shares[name] for name in names], quorum.commitment, identity)
        except ThresholdError:
            continue
        chosen = {name: shares[name] for name in names}
        for other in set(shares) - set(names):
            problem = _disagreement(quorum, chosen, shares[other])
            report[other] = {"released": True, "used": False, **(problem or {})}
        for name in names:
            report[name]["used"] = True
        return key
    for name in shares:
        # Each share looked right on its own, yet no k of them fit: at least one was altered (with k of
        # them only, which one cannot be told).
        report[name] = {
            "released": True,
            "used": False,
            "reason": "threshold-commitment-mismatch",
            "detail": "no k of the released shares combine to the key the owner committed to",
        }
    return None


def attestation_results(
    keyservers: Sequence[KeyserverTrust],
    clients: Mapping[str, LoaderKeyserver],
    collector: Collector,
    key: EphemeralKey,
) -> list[str]:
    """An attestation result for ``key`` from every keyserver that gives one (a caller needs k of them)."""
    serial = SerialCollector(collector)
    with ThreadPoolExecutor(max_workers=len(keyservers), thread_name_prefix="attest") as pool:
        futures = [pool.submit(attestation_result, clients[t.name], serial, key) for t in keyservers]
        tokens = []
        for future in futures:
            try:
                tokens.append(future.result())
            except (KeyserverError, CollectorError):
                continue
    if not tokens:
        raise KeyserverError("keyserver-unreachable", "no keyserver attested this loader now")
    return tokens
