"""The key backend the settings name."""

from __future__ import annotations

from keyserver.backends.base import KeyBackend
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.errors import ConfigurationError


def backend_from_settings(settings: Settings) -> KeyBackend:
    if settings.key_backend == "software":
        return SoftwareBackend.from_file(settings.effective_kek_file)
    # Refuse rather than fall back: silently using a local KEK when an HSM was asked for would
    # defeat the point of asking for one.
    raise ConfigurationError(
        f"KEYSERVER_KEY_BACKEND={settings.key_backend} is not available in this version; use software"
    )
