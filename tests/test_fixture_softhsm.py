"""The SoftHSM2 fixtures give a real PKCS#11 token that enforces key attributes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, SecretKey, Session
from pkcs11.exceptions import AttributeSensitive, KeyUnextractable, PKCS11Error
from pkcs11.types import UnwrapMixin, WrapMixin

from tests.fixtures.softhsm import SoftHsmToken, load_pkcs11

pytestmark = pytest.mark.softhsm


class _WrappingKey(SecretKey, WrapMixin, UnwrapMixin):
    """For the type checker: python-pkcs11 mixes the capabilities into each key's class at run time."""


def _kek(session: Session) -> _WrappingKey:
    """An AES-256 key-encryption key that can never leave the token."""
    key = session.generate_key(
        KeyType.AES,
        256,
        label="test-kek",
        template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True},
        capabilities=pkcs11.MechanismFlag.WRAP | pkcs11.MechanismFlag.UNWRAP,
    )
    assert isinstance(key, SecretKey)
    assert isinstance(key, WrapMixin)
    assert isinstance(key, UnwrapMixin)
    return cast(_WrappingKey, key)


def test_token_is_private_and_configured(softhsm_token: SoftHsmToken) -> None:
    assert os.environ["SOFTHSM2_CONF"] == str(softhsm_token.conf_path)
    assert softhsm_token.conf_path.is_file()
    lib = load_pkcs11(softhsm_token)
    # SoftHSM always adds one empty slot for the next token; ours is the only initialised one.
    initialised = [t.label for t in lib.get_tokens() if pkcs11.TokenFlag.TOKEN_INITIALIZED in t.flags]
    assert initialised == [softhsm_token.label]


def test_module_initialised_under_another_config_is_reinitialised(
    softhsm_token: SoftHsmToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if other code had loaded SoftHSM before our configuration was in force.
    (tmp_path / "tokens").mkdir()
    other_conf = tmp_path / "softhsm2.conf"
    other_conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    lib = load_pkcs11(softhsm_token)
    lib.finalize()
    with monkeypatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(other_conf))
        lib.initialize()
        assert softhsm_token.label not in [t.label for t in lib.get_tokens()]

    assert softhsm_token.label in [t.label for t in load_pkcs11(softhsm_token).get_tokens()]


def test_non_extractable_aes_key(pkcs11_session: Session) -> None:
    kek = _kek(pkcs11_session)
    assert kek.key_length == 256
    assert kek[Attribute.EXTRACTABLE] is False
    assert kek[Attribute.NEVER_EXTRACTABLE] is True
    assert kek[Attribute.SENSITIVE] is True
    with pytest.raises(AttributeSensitive):
        kek[Attribute.VALUE]
    other = pkcs11_session.generate_key(KeyType.AES, 256, capabilities=pkcs11.MechanismFlag.WRAP)
    assert isinstance(other, WrapMixin)
    with pytest.raises(KeyUnextractable):
        other.wrap_key(kek, mechanism=Mechanism.AES_KEY_WRAP_PAD)


def test_aes_kwp_wrap_unwrap(pkcs11_session: Session) -> None:
    kek = _kek(pkcs11_session)
    # Readable only so the test can compare it after the round trip.
    data_key = pkcs11_session.generate_key(
        KeyType.AES, 256, template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False}
    )

    wrapped = kek.wrap_key(data_key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    assert len(wrapped) == 40  # RFC 5649: 32-byte key + 8-byte integrity block
    assert data_key[Attribute.VALUE] not in wrapped

    template = {Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False}
    unwrapped = kek.unwrap_key(
        ObjectClass.SECRET_KEY, KeyType.AES, wrapped, mechanism=Mechanism.AES_KEY_WRAP_PAD, template=template
    )
    assert unwrapped[Attribute.VALUE] == data_key[Attribute.VALUE]

    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(PKCS11Error):
        kek.unwrap_key(
            ObjectClass.SECRET_KEY,
            KeyType.AES,
            tampered,
            mechanism=Mechanism.AES_KEY_WRAP_PAD,
            template=template,
        )
