"""Service settings: read once from the environment, with defaults that give the embedded setup.

With no environment at all, keyserver keeps its state in ``./keyserver-data`` (SQLite database and,
later, the software key backend's key-encryption key) and listens on 127.0.0.1:8080.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from keyserver.errors import ConfigurationError
from keyserver.witness.outbound import WitnessOutbound

ENV_PREFIX = "KEYSERVER_"
DEFAULT_DATA_DIR = Path("keyserver-data")
SQLITE_FILENAME = "keyserver.sqlite3"
KEY_BACKENDS = ("software", "pkcs11", "vault")
# Longest window a release limit may count over (30 days).
MAX_LIMIT_WINDOW_S = 30 * 86400
MAX_LIMIT_RELEASES = 10**9


@dataclass(frozen=True)
class Budget:
    """At most ``max_releases`` per fixed window of ``window_seconds`` (docs/security.md, "Rate limits")."""

    max_releases: int
    window_seconds: int

    def __post_init__(self) -> None:
        if not 1 <= self.max_releases <= MAX_LIMIT_RELEASES:
            raise ConfigurationError(f"a release limit allows 1 to {MAX_LIMIT_RELEASES} releases per window")
        if not 1 <= self.window_seconds <= MAX_LIMIT_WINDOW_S:
            raise ConfigurationError(f"a release limit's window is 1 to {MAX_LIMIT_WINDOW_S} seconds")

    @classmethod
    def parse(cls, name: str, value: str) -> Budget | None:
        """``N/S`` (N per S seconds) or ``off``."""
        if value.strip().lower() == "off":
            return None
        count, sep, window = value.partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(int(count), int(window))
        except ValueError:
            raise ConfigurationError(
                f"{name}={value!r} is not a release limit: write N/S (at most N per S seconds) or off"
            ) from None
        except ConfigurationError as exc:
            raise ConfigurationError(f"{name}={value!r}: {exc.message}") from None


# Every release or attestation request of a tenant is an attempt (it is verified and, for a release,
# logged); an unauthenticated flood may spend these, no more (docs/security.md).
DEFAULT_TENANT_LIMIT = Budget(600, 60)
# Challenges are issued without a token, each a database write; twice the attempt budget leaves room for
# a loader's retries and bounds what a flood can write (docs/security.md).
DEFAULT_CHALLENGE_LIMIT = Budget(1200, 60)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    # None means "the SQLite file inside data_dir" (the embedded default).
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    key_backend: str = "software"
    # Bodies larger than this are refused with 413 before they are parsed.
    max_request_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    # Run migrations at start-up. Default: yes on SQLite (single node), no on PostgreSQL, where
    # several replicas must not race each other: run `keyserver db upgrade` once instead.
    auto_migrate: bool | None = None
    # PostgreSQL roles that bypass row-level security (superusers, BYPASSRLS) would turn the
    # database's tenant isolation off; the service refuses them unless this is set on purpose.
    allow_rls_bypass: bool = False
    # A PostgreSQL role that owns the schema (or anything in it) could drop the release log's
    # append-only triggers and row-level security; the service refuses it unless this is set on purpose.
    allow_schema_owner: bool = False
    # Checkpoint origins are "<log_origin>/<tenant name>"; set it to the keyserver's public name.
    log_origin: str = "keyserver.local"
    # The software backend's key-encryption key; None means "kek.bin in data_dir".
    kek_file: Path | None = None
    db_pool_size: int = 10
    db_timeout_s: float = 5.0
    # Test each pooled PostgreSQL connection before use. On by default: after a database restart or
    # failover every pooled connection is dead, and without the ping each one fails a request (503)
    # before the pool notices; the service must recover on its own (tests/test_faults_postgres.py).
    # Off by default: a transaction begins on a live connection without it, by retrying its first
    # statement once on a fresh connection (Database.transaction). On costs three round trips per
    # checkout (BEGIN, ";", ROLLBACK) for nothing more; kept for a proxy that hides disconnects.
    db_pre_ping: bool = False
    # pkcs11 backend: the module (.so), the token (by label), the user PIN (inline or, better, in a
    # file readable by the service only) and the label of the KEK on the token.
    pkcs11_module: Path | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: str | None = field(default=None, repr=False)
    pkcs11_pin_file: Path | None = None
    pkcs11_kek_label: str = "keyserver-kek"
    # vault backend: the server, a token (inline or in a file, e.g. a Vault agent sink, re-read when
    # it changes), the transit mount and key, a per-request timeout, and an optional CA bundle.
    vault_addr: str | None = None
    vault_token: str | None = field(default=None, repr=False)
    vault_token_file: Path | None = None
    vault_transit_mount: str = "transit"
    vault_key_name: str = "keyserver"
    vault_timeout_s: float = 5.0
    vault_ca_file: Path | None = None
    # Every call into the PKCS#11 module is bounded by this (a hung HSM fails backend-unavailable, and
    # the backend stops queueing behind it: see keyserver/backends/pkcs11.py); /readyz has its own.
    backend_timeout_s: float = 5.0
    readyz_timeout_s: float = 2.0
    # Policy evaluation (keyserver/evaluation.py): worker processes, and the wall-clock deadline of one
    # evaluation, past which its worker is killed and the release or dry run denied (evaluation-error).
    policy_eval_workers: int = 2
    policy_eval_timeout_s: float = 2.0
    # Release limits that apply where the tenant admin set none: attempts per tenant, grants per key.
    release_limit_tenant: Budget | None = DEFAULT_TENANT_LIMIT
    release_limit_key: Budget | None = None
    # Challenges a tenant may be issued, TPM enrolments begun included, per window
    # (KEYSERVER_CHALLENGE_LIMIT, N/S or off).
    challenge_limit: Budget | None = DEFAULT_CHALLENGE_LIMIT
    # Tenants whose release log anyone may read without a token (the log routes and the explorer):
    # KEYSERVER_PUBLIC_LOGS=acme,umbrella. Empty by default: a log is read with an auditor token.
    public_logs: frozenset[str] = frozenset()
    # Witnesses (keyserver/witness/cosigning.py): how long one witness may take to answer one
    # add-checkpoint, and how long a release waits for a cosigned checkpoint before the tenant's failure
    # mode applies (refuse: 503 with no key; release-weak: the receipt as it is).
    witness_timeout_s: float = 3.0
    cosign_wait_s: float = 5.0
    # Where a tenant's witnesses may be (KEYSERVER_WITNESS_URL_PREFIXES; keyserver/witness/outbound.py):
    # unset, public https hosts only, so a tenant admin cannot aim the keyserver at internal addresses.
    witness_outbound: WitnessOutbound = field(default_factory=WitnessOutbound)
    # Group commit (docs/release-log.md): at most this many releases of one tenant share a transaction
    # and a checkpoint, and a batch waits at most this long for more (0: a batch is whatever queued while
    # the previous one was being written, so a lone release never waits).
    release_batch_max: int = 64
    release_batch_wait_ms: float = 0.0
    # How many of one tenant's batches one worker runs at once (BatchLimits.in_flight). PostgreSQL only:
    # SQLite has one writer, so there a second batch would only wait for the first one's lock.
    release_batches_in_flight: int = 4

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / SQLITE_FILENAME).resolve()}"

    @property
    def effective_kek_file(self) -> Path:
        return self.kek_file or self.data_dir / "kek.bin"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        settings = cls()
        data_dir = get("DATA_DIR")
        port = get("PORT")
        max_body = get("MAX_REQUEST_BYTES")
        kek_file = get("KEK_FILE")
        pin_file = get("PKCS11_PIN_FILE")
        pkcs11_module = get("PKCS11_MODULE")
        vault_token_file = get("VAULT_TOKEN_FILE")
        vault_timeout = get("VAULT_TIMEOUT_S")
        vault_ca_file = get("VAULT_CA_FILE")
        backend_timeout = get("BACKEND_TIMEOUT_S")
        readyz_timeout = get("READYZ_TIMEOUT_S")
        eval_workers = get("POLICY_EVAL_WORKERS")
        eval_timeout = get("POLICY_EVAL_TIMEOUT_S")
        limit_tenant = get("RELEASE_LIMIT_TENANT")
        limit_key = get("RELEASE_LIMIT_KEY")
        challenge_limit = get("CHALLENGE_LIMIT")
        witness_timeout = get("WITNESS_TIMEOUT_S")
        cosign_wait = get("COSIGN_WAIT_S")
        witness_prefixes = get("WITNESS_URL_PREFIXES")
        batch_max = get("RELEASE_BATCH_MAX")
        batch_wait = get("RELEASE_BATCH_WAIT_MS")
        in_flight = get("RELEASE_BATCHES_IN_FLIGHT")
        backend = get("KEY_BACKEND") or settings.key_backend
        if backend not in KEY_BACKENDS:
            raise ConfigurationError(
                f"KEYSERVER_KEY_BACKEND={backend!r} is not one of {', '.join(KEY_BACKENDS)}"
            )
        if batch_max is not None and _int("KEYSERVER_RELEASE_BATCH_MAX", batch_max) < 1:
            raise ConfigurationError("KEYSERVER_RELEASE_BATCH_MAX is at least 1 (one release per batch)")
        if batch_wait is not None and not 0 <= _float("KEYSERVER_RELEASE_BATCH_WAIT_MS", batch_wait) <= 1000:
            raise ConfigurationError("KEYSERVER_RELEASE_BATCH_WAIT_MS is 0 to 1000 milliseconds")
        if in_flight is not None and not 1 <= _int("KEYSERVER_RELEASE_BATCHES_IN_FLIGHT", in_flight) <= 64:
            raise ConfigurationError("KEYSERVER_RELEASE_BATCHES_IN_FLIGHT is 1 to 64 batches")
        return replace(
            settings,
            data_dir=Path(data_dir) if data_dir else settings.data_dir,
            database_url=get("DATABASE_URL"),
            host=get("HOST") or settings.host,
            port=_int("KEYSERVER_PORT", port) if port else settings.port,
            key_backend=backend,
            max_request_bytes=(
                _int("KEYSERVER_MAX_REQUEST_BYTES", max_body) if max_body else settings.max_request_bytes
            ),
            log_level=(get("LOG_LEVEL") or settings.log_level).upper(),
            log_origin=get("LOG_ORIGIN") or settings.log_origin,
            kek_file=Path(kek_file) if kek_file else None,
            auto_migrate=_bool("KEYSERVER_AUTO_MIGRATE", get("AUTO_MIGRATE")),
            allow_rls_bypass=bool(_bool("KEYSERVER_ALLOW_RLS_BYPASS", get("ALLOW_RLS_BYPASS"))),
            allow_schema_owner=bool(_bool("KEYSERVER_ALLOW_SCHEMA_OWNER", get("ALLOW_SCHEMA_OWNER"))),
            db_pre_ping=_bool_or("KEYSERVER_DB_PRE_PING", get("DB_PRE_PING"), settings.db_pre_ping),
            pkcs11_module=Path(pkcs11_module) if pkcs11_module else None,
            pkcs11_token_label=get("PKCS11_TOKEN_LABEL"),
            pkcs11_pin=get("PKCS11_PIN"),
            pkcs11_pin_file=Path(pin_file) if pin_file else None,
            pkcs11_kek_label=get("PKCS11_KEK_LABEL") or settings.pkcs11_kek_label,
            vault_addr=get("VAULT_ADDR"),
            vault_token=get("VAULT_TOKEN"),
            vault_token_file=Path(vault_token_file) if vault_token_file else None,
            vault_transit_mount=get("VAULT_TRANSIT_MOUNT") or settings.vault_transit_mount,
            vault_key_name=get("VAULT_KEY_NAME") or settings.vault_key_name,
            vault_timeout_s=(
                _float("KEYSERVER_VAULT_TIMEOUT_S", vault_timeout)
                if vault_timeout
                else settings.vault_timeout_s
            ),
            vault_ca_file=Path(vault_ca_file) if vault_ca_file else None,
            backend_timeout_s=(
                _float("KEYSERVER_BACKEND_TIMEOUT_S", backend_timeout)
                if backend_timeout
                else settings.backend_timeout_s
            ),
            readyz_timeout_s=(
                _float("KEYSERVER_READYZ_TIMEOUT_S", readyz_timeout)
                if readyz_timeout
                else settings.readyz_timeout_s
            ),
            policy_eval_workers=(
                _int("KEYSERVER_POLICY_EVAL_WORKERS", eval_workers)
                if eval_workers
                else settings.policy_eval_workers
            ),
            policy_eval_timeout_s=(
                _float("KEYSERVER_POLICY_EVAL_TIMEOUT_S", eval_timeout)
                if eval_timeout
                else settings.policy_eval_timeout_s
            ),
            release_limit_tenant=(
                Budget.parse("KEYSERVER_RELEASE_LIMIT_TENANT", limit_tenant)
                if limit_tenant
                else settings.release_limit_tenant
            ),
            release_limit_key=(
                Budget.parse("KEYSERVER_RELEASE_LIMIT_KEY", limit_key)
                if limit_key
                else settings.release_limit_key
            ),
            challenge_limit=(
                Budget.parse("KEYSERVER_CHALLENGE_LIMIT", challenge_limit)
                if challenge_limit
                else settings.challenge_limit
            ),
            release_batch_max=(
                _int("KEYSERVER_RELEASE_BATCH_MAX", batch_max) if batch_max else settings.release_batch_max
            ),
            release_batch_wait_ms=(
                _float("KEYSERVER_RELEASE_BATCH_WAIT_MS", batch_wait)
                if batch_wait
                else settings.release_batch_wait_ms
            ),
            release_batches_in_flight=(
                _int("KEYSERVER_RELEASE_BATCHES_IN_FLIGHT", in_flight)
                if in_flight
                else settings.release_batches_in_flight
            ),
            public_logs=_tenant_names("KEYSERVER_PUBLIC_LOGS", get("PUBLIC_LOGS"), settings.public_logs),
            witness_timeout_s=(
                _float("KEYSERVER_WITNESS_TIMEOUT_S", witness_timeout)
                if witness_timeout
                else settings.witness_timeout_s
            ),
            cosign_wait_s=(
                _float("KEYSERVER_COSIGN_WAIT_S", cosign_wait) if cosign_wait else settings.cosign_wait_s
            ),
            witness_outbound=(
                WitnessOutbound.parse(witness_prefixes) if witness_prefixes else settings.witness_outbound
            ),
        )


_TENANT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _tenant_names(name: str, value: str | None, default: frozenset[str]) -> frozenset[str]:
    if value is None:
        return default
    names = [part.strip() for part in value.split(",") if part.strip()]
    bad = [n for n in names if not _TENANT_NAME.fullmatch(n)]
    if bad:
        raise ConfigurationError(f"{name}: {', '.join(map(repr, bad))} is not a tenant name")
    return frozenset(names)


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not an integer") from None


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number") from None


def _bool_or(name: str, value: str | None, default: bool) -> bool:
    parsed = _bool(name, value)
    return default if parsed is None else parsed


def _bool(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={value!r} is not a boolean (use true or false)")
