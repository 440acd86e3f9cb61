"""Where the remote CLI finds its URL, tenant and token: options, a profile file, the environment.

A token is never taken from the command line (it would sit in shell history and in ``ps``): it comes from
a file (``--token-file`` or the profile's ``token_file``), the system keyring (the profile's
``token_keyring``, with the optional ``keyring`` package), or an environment variable
(``KEYSERVER_TOKEN`` unless the profile's ``token_env`` names another).
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TOKEN_ENV = "KEYSERVER_TOKEN"
PROFILES_ENV = "KEYSERVER_PROFILES"
MAX_TOKEN_FILE_BYTES = 4096
PROFILE_KEYS = frozenset({"url", "tenant", "token_file", "token_env", "token_keyring"})


class CredentialError(Exception):
    """The CLI cannot tell where to connect or with which token; the message says what to do."""


@dataclass(frozen=True)
class Target:
    url: str
    tenant: str | None
    token: str | None


def profiles_path() -> Path:
    configured = os.environ.get(PROFILES_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "keyserver" / "profiles.toml"


def load_profile(name: str, path: Path | None = None) -> dict[str, Any]:
    path = path or profiles_path()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialError(
            f"no profile file at {path}: create it with a [profiles.{name}] table (docs/cli.md), "
            f"or set {PROFILES_ENV}"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CredentialError(f"cannot read the profile file {path}: {exc}") from None
    profiles = document.get("profiles")
    profile = profiles.get(name) if isinstance(profiles, dict) else None
    if not isinstance(profile, dict):
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else "none"
        raise CredentialError(f"{path} has no [profiles.{name}] (profiles there: {known})")
    unknown = set(profile) - PROFILE_KEYS
    if unknown:
        raise CredentialError(
            f"profile {name!r} in {path} has unknown settings {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(PROFILE_KEYS))}); a token is never written into the profile itself"
        )
    for key, value in profile.items():
        if not isinstance(value, str) or not value:
            raise CredentialError(f"profile {name!r} setting {key!r} must be a non-empty string")
    return profile


def read_token_file(path: Path) -> str:
    """One token from a file that only its owner can read (as ssh insists for private keys)."""
    path = path.expanduser()
    try:
        info = path.stat()
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
            raise CredentialError(
                f"the token file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}): "
                f"run `chmod 600 {path}`"
            )
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise CredentialError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise CredentialError(f"the token file {path} is larger than a token; point at the right file")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"the token file {path} does not hold a token (ks1.…)") from None
    if not token or "\n" in token:
        raise CredentialError(f"the token file {path} must hold exactly one token (ks1.…)")
    return token


def read_keyring_token(entry: str) -> str:
    try:
        import keyring  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise CredentialError(
            "the profile reads its token from the keyring, but the `keyring` package is not installed: "
            "`pip install keyring`, or use token_file / token_env instead"
        ) from None
    token = keyring.get_password("keyserver", entry)
    if not token:
        raise CredentialError(
            f"the keyring holds no token for service 'keyserver', user {entry!r}: "
            f"`keyring set keyserver {entry}`"
        )
    return str(token).strip()


def resolve_target(
    *,
    url: str | None,
    profile_name: str | None,
    tenant: str | None,
    token_file: Path | None,
    environ: dict[str, str] | None = None,
) -> Target:
    env = os.environ if environ is None else environ
    profile: dict[str, Any] = load_profile(profile_name) if profile_name else {}
    url = url or profile.get("url")
    if not url:
        raise CredentialError("say which keyserver: --url https://… or --profile NAME (docs/cli.md)")
    token: str | None
    if token_file is not None:
        token = read_token_file(token_file)
    elif "token_file" in profile:
        token = read_token_file(Path(profile["token_file"]))
    elif "token_keyring" in profile:
        token = read_keyring_token(profile["token_keyring"])
    else:
        token = env.get(profile.get("token_env", DEFAULT_TOKEN_ENV)) or None
    return Target(url=url, tenant=tenant or profile.get("tenant"), token=token)
