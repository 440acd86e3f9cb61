"""Settings from the environment: defaults give the embedded setup; bad values stop the start."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyserver.config import Settings
from keyserver.errors import ConfigurationError


def test_defaults_are_the_embedded_setup() -> None:
    settings = Settings.from_env({})
    assert settings.is_sqlite
    assert settings.effective_database_url.endswith("keyserver-data/keyserver.sqlite3")
    assert settings.should_auto_migrate
    assert settings.key_backend == "software"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_environment_overrides() -> None:
    settings = Settings.from_env(
        {
            "KEYSERVER_DATA_DIR": "/srv/ks",
            "KEYSERVER_DATABASE_URL": "postgresql+asyncpg://ks@db/ks",
            "KEYSERVER_PORT": "9000",
            "KEYSERVER_MAX_REQUEST_BYTES": "2048",
            "KEYSERVER_AUTO_MIGRATE": "true",
        }
    )
    assert settings.data_dir == Path("/srv/ks")
    assert not settings.is_sqlite
    assert settings.port == 9000
    assert settings.max_request_bytes == 2048
    assert settings.should_auto_migrate
    assert not Settings.from_env({"KEYSERVER_DATABASE_URL": "postgresql+asyncpg://x@y/z"}).should_auto_migrate


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "http"), ("KEY_BACKEND", "floppy"), ("AUTO_MIGRATE", "maybe"), ("MAX_REQUEST_BYTES", "1MB")],
)
def test_bad_values_are_refused_with_their_name(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"KEYSERVER_{name}"):
        Settings.from_env({f"KEYSERVER_{name}": value})


async def test_unknown_database_scheme_is_refused() -> None:
    from keyserver.db.session import Database

    with pytest.raises(ConfigurationError, match="unsupported database URL"):
        Database(Settings(database_url="mysql://x@y/z"))


def test_pool_pre_ping_is_off_unless_turned_on() -> None:
    # Off by default: a transaction's first statement is retried on a fresh connection instead
    # (keyserver/db/session.py; tests/test_faults_postgres.py restarts the server under it).
    assert Settings.from_env({}).db_pre_ping is False
    assert Settings.from_env({"KEYSERVER_DB_PRE_PING": "true"}).db_pre_ping is True
    with pytest.raises(ConfigurationError, match="KEYSERVER_DB_PRE_PING"):
        Settings.from_env({"KEYSERVER_DB_PRE_PING": "sometimes"})
