"""The software backend: AES-256-GCM under a local KEK file; every release goes through memory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from keyserver.backends.base import BackendError, KeyBackend
from keyserver.backends.software import SoftwareBackend

HEADER = json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode()


@pytest.fixture
def software(tmp_path: Path) -> SoftwareBackend:
    return SoftwareBackend.from_file(tmp_path / "kek.bin")


def test_is_a_key_backend(software: SoftwareBackend) -> None:
    backend: KeyBackend = software  # checked by mypy: the class satisfies the protocol
    assert backend.name == "software"


async def test_generate_and_unwrap(software: SoftwareBackend) -> None:
    wrapped = await software.generate_data_key(b"tenant-a/key/1")
    assert wrapped[:1] == b"\x01"
    assert len(wrapped) == 1 + 12 + 32 + 16
    key = await software.unwrap_to_memory(wrapped, b"tenant-a/key/1")
    assert len(key) == 32
    # Two generations never give the same key.
    assert key != await software.unwrap_to_memory(
        await software.generate_data_key(b"tenant-a/key/1"), b"tenant-a/key/1"
    )


@pytest.mark.parametrize("length", [16, 24, 32, 48, 64])
async def test_import_round_trip(software: SoftwareBackend, length: int) -> None:
    material = bytes(range(length))
    wrapped = await software.import_data_key(material, b"ctx")
    assert material not in wrapped
    assert await software.unwrap_to_memory(wrapped, b"ctx") == material
    # wrap/unwrap (the release log's pair) and the data-key pair are the same format.
    assert await software.unwrap(wrapped, b"ctx") == material


@pytest.mark.parametrize("length", [0, 15, 65])
async def test_data_key_length_is_checked(software: SoftwareBackend, length: int) -> None:
    with pytest.raises(ValueError, match="16 to 64"):
        await software.generate_data_key(b"ctx", length)
    with pytest.raises(ValueError, match="16 to 64"):
        await software.import_data_key(b"k" * length, b"ctx")


async def test_wrong_context_does_not_unwrap(software: SoftwareBackend) -> None:
    wrapped = await software.generate_data_key(b"tenant-a/key/1")
    for other in (b"tenant-b/key/1", b"tenant-a/key/2", b""):
        with pytest.raises(BackendError, match="does not unwrap"):
            await software.unwrap_to_memory(wrapped, other)


async def test_another_kek_does_not_unwrap(software: SoftwareBackend, tmp_path: Path) -> None:
    wrapped = await software.generate_data_key(b"ctx")
    other = SoftwareBackend.from_file(tmp_path / "other" / "kek.bin")
    with pytest.raises(BackendError, match="does not unwrap"):
        await other.unwrap_to_memory(wrapped, b"ctx")


async def test_foreign_blobs_are_named(software: SoftwareBackend) -> None:
    with pytest.raises(BackendError, match="wrapped by the pkcs11 key backend"):
        await software.unwrap_to_memory(b"\x11\x00\x20" + bytes(40), b"ctx")
    with pytest.raises(BackendError, match="wrapped by the vault key backend"):
        await software.unwrap_to_memory(b"vault:v1:AAAA", b"ctx")


async def test_release_always_goes_through_memory(
    software: SoftwareBackend, recipient_key: rsa.RSAPrivateKey
) -> None:
    wrapped = await software.generate_data_key(b"ctx")
    assert (
        await software.rewrap_for_recipient(wrapped, b"ctx", recipient_key.public_key(), HEADER, b"x") is None
    )
    await software.health()
    await software.aclose()


@given(blob=st.binary(max_size=200), context=st.binary(max_size=40))
def test_malformed_blobs_only_raise_backend_error(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes, context: bytes
) -> None:
    backend = _shared_backend(tmp_path_factory)
    with pytest.raises(BackendError):
        asyncio.run(backend.unwrap_to_memory(blob, context))


@given(flip=st.integers(min_value=0, max_value=60), bit=st.integers(min_value=0, max_value=7))
def test_altered_blobs_do_not_unwrap(tmp_path_factory: pytest.TempPathFactory, flip: int, bit: int) -> None:
    backend = _shared_backend(tmp_path_factory)
    wrapped = asyncio.run(backend.import_data_key(b"k" * 32, b"ctx"))
    altered = bytearray(wrapped)
    altered[flip % len(altered)] ^= 1 << bit
    with pytest.raises(BackendError):
        asyncio.run(backend.unwrap_to_memory(bytes(altered), b"ctx"))


_BACKENDS: dict[int, SoftwareBackend] = {}


def _shared_backend(tmp_path_factory: pytest.TempPathFactory) -> SoftwareBackend:
    # Hypothesis runs the body many times per test: one KEK file for all of them.
    key = id(tmp_path_factory)
    if key not in _BACKENDS:
        _BACKENDS[key] = SoftwareBackend.from_file(tmp_path_factory.mktemp("software") / "kek.bin")
    return _BACKENDS[key]
