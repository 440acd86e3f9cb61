"""The PKCS#11 backend: the KEK lives in an HSM (SoftHSM2 in tests) and never leaves it.

The KEK is an AES-256 token key found by label (created on first use if absent) with
CKA_EXTRACTABLE=False, CKA_SENSITIVE=True and CKA_DERIVE as its only capability. It is never used to
wrap directly: every operation first derives, inside the token, a per-context wrapping key

    context KEK = AES-ECB(KEK, SHA-256("keyserver/pkcs11/kek-derivation/v1" 0x00 ‖ len ‖ context))

(CKM_AES_ECB_ENCRYPT_DATA over two blocks: 32 bytes, a PRF of the hash under the KEK) as a sensitive,
non-extractable session object. Data keys are wrapped under it with CKM_AES_KEY_WRAP_PAD (RFC 5649).

Why derive: AES-KWP has no associated data, so binding the blob to its context needs something else.
A MAC stored beside the blob would be checked by keyserver code, not by the token; AES-GCM under the
KEK (C_Encrypt) would need the data key's cleartext as input, and SoftHSM cannot C_WrapKey with GCM.
With a derived key the binding is the token's own integrity check: a blob presented under another
context (or with its length field changed: ``len`` is part of the derivation) is unwrapped under a
different key, and RFC 5649's integrity check fails inside the token.

Stored blob: ``0x11 ‖ len (2 bytes, big-endian) ‖ RFC 5649 wrapping of the len-byte key``. The length
is in clear because the release path must know, without unwrapping, whether the key can be an A256GCM
content-encryption key (32 bytes); SoftHSM does not report CKA_VALUE_LEN of unwrapped keys.

Release without the key entering memory (``rewrap_for_recipient``): unwrap into a sensitive session
key, import the recipient's RSA public key as a session object, C_WrapKey the data key to it with
CKM_RSA_PKCS_OAEP (SHA-1/MGF1-SHA-1: what SoftHSM 2.6 supports, JWE alg "RSA-OAEP"), and C_Encrypt the
payload with CKM_AES_GCM under that same session key; then destroy the session objects.

Threads: python-pkcs11 calls C_Initialize(NULL), which tells the module that the application will not
call it from several threads, and SoftHSM then runs without its internal mutexes; python-pkcs11 also
releases the GIL in every call. So every call into a module goes through one lock per module path,
and runs on a worker thread (asyncio.to_thread) so that the event loop never blocks on the HSM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pkcs11
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, Session
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams
from pkcs11.types import DeriveMixin, EncryptMixin, Key, Object, SecretKey, Token, UnwrapMixin, WrapMixin

from keyserver.backends.base import (
    DEFAULT_DATA_KEY_BYTES,
    PKCS11_BLOB_MARKER,
    REWRAP_KEY_BYTES,
    BackendError,
    JweParts,
    check_data_key_length,
    check_payload,
    check_recipient,
    foreign_blob_error,
    rewrap_protected_header,
)

T = TypeVar("T")

_DERIVATION_LABEL = b"keyserver/pkcs11/kek-derivation/v1\x00"
_HEADER_BYTES = 3  # marker + 2-byte length
# ``wrap`` also carries the release log's signing keys; two length bytes leave room for any of them.
_MAX_WRAP_BYTES = 4096
_GCM_IV_BYTES = 12
_GCM_TAG_BYTES = 16
_OAEP_SHA1 = (Mechanism.SHA_1, MGF.SHA1, None)

# The session and its objects are gone (token removed, module finalised, logged out under us): the
# operation is retried once on a fresh session, whose login re-establishes the state.
_SESSION_LOST: tuple[type[p11.PKCS11Error], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
    p11.WrappingKeyHandleInvalid,
    p11.UnwrappingKeyHandleInvalid,
)
_LOGIN_FAILED: tuple[type[p11.PKCS11Error], ...] = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinExpired,
    p11.PinLocked,
    p11.UserPinNotInitialized,
)

_module_locks: dict[str, threading.Lock] = {}
_module_locks_guard = threading.Lock()


def _module_lock(module_path: str) -> threading.Lock:
    """One lock per PKCS#11 module in the process, shared by every backend instance using it (by
    real path: two spellings of one module are one loaded library)."""
    with _module_locks_guard:
        return _module_locks.setdefault(os.path.realpath(module_path), threading.Lock())


def expected_kwp_bytes(key_bytes: int) -> int:
    """RFC 5649 output size: the key padded to 8 bytes, plus the 8-byte integrity block."""
    return 8 + 8 * -(-key_bytes // 8)


def parse_blob(wrapped: bytes) -> tuple[int, bytes]:
    """(key length, RFC 5649 blob) of a stored blob; ``BackendError`` if it cannot be one of ours."""
    if len(wrapped) < _HEADER_BYTES or wrapped[:1] != PKCS11_BLOB_MARKER:
        raise foreign_blob_error("pkcs11", wrapped)
    length = int.from_bytes(wrapped[1:_HEADER_BYTES], "big")
    kwp = wrapped[_HEADER_BYTES:]
    if not 1 <= length <= _MAX_WRAP_BYTES or len(kwp) != expected_kwp_bytes(length):
        raise BackendError("the wrapped key is malformed (its length field does not match its size)")
    return length, kwp


def _derivation_data(length: int, context: bytes) -> bytes:
    return hashlib.sha256(_DERIVATION_LABEL + length.to_bytes(2, "big") + context).digest()


class _CallState:
    """One call's fate, under the backend's stuck-call guard: returned, or overran its deadline."""

    def __init__(self) -> None:
        self.returned = False
        self.stuck = False


class _DerivingKey(SecretKey, DeriveMixin):
    """For the type checker: python-pkcs11 mixes capabilities into each key's class at run time."""


class _WrappingKey(SecretKey, WrapMixin, UnwrapMixin):
    """As above."""


class _ReleaseKey(SecretKey, EncryptMixin):
    """As above."""


class Pkcs11Backend:
    name = "pkcs11"

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        kek_label: str = "keyserver-kek",
        *,
        create_kek: bool = True,
        call_timeout_s: float = 5.0,
    ) -> None:
        if not call_timeout_s > 0:
            raise ValueError("the PKCS#11 call timeout must be a positive number of seconds")
        self._module_path = module_path
        self._token_label = token_label
        self._pin = pin
        self._kek_label = kek_label
        self._create_kek = create_kek
        self._lock = _module_lock(module_path)
        self._session: Session | None = None
        self._owns_login = False
        self._kek: _DerivingKey | None = None
        # Set after a failed login, and then final: most HSMs lock the user PIN after a few wrong
        # attempts, so retrying on every request would turn a typo into a locked token.
        self._login_failure: str | None = None
        self._closed = False
        # Set once a session worked: from then on a vanished token may come back (see _find_token).
        self._had_token = False
        self._call_timeout_s = call_timeout_s
        # The circuit breaker: how many calls overran their deadline and have not returned yet. While
        # one is stuck inside the module it holds the module lock, and every later call would queue
        # behind it (holding its request's transaction and pooled connection); so calls fail at once
        # instead, until the stuck one returns (a hung network HSM may come back) and closes the circuit.
        self._stuck_calls = 0
        self._stuck_guard = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Pkcs11Backend(module={self._module_path!r}, token={self._token_label!r},"
            f" kek={self._kek_label!r})"
        )

    # -- the interface ------------------------------------------------------------------------

    async def wrap(self, plaintext: bytes, context: bytes) -> bytes:
        if not 1 <= len(plaintext) <= _MAX_WRAP_BYTES:
            raise ValueError(f"the pkcs11 backend wraps 1 to {_MAX_WRAP_BYTES} bytes")
        return await self._run(lambda session, kek: self._import(session, kek, plaintext, context))

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        length, kwp = parse_blob(wrapped)
        return await self._run(lambda session, kek: self._unwrap_value(session, kek, length, kwp, context))

    async def generate_data_key(self, context: bytes, length: int = DEFAULT_DATA_KEY_BYTES) -> bytes:
        check_data_key_length(length)
        return await self._run(lambda session, kek: self._generate(session, kek, length, context))

    async def import_data_key(self, plaintext: bytes, context: bytes) -> bytes:
        check_data_key_length(len(plaintext))
        return await self.wrap(plaintext, context)

    async def unwrap_to_memory(self, wrapped: bytes, context: bytes) -> bytes:
        return await self.unwrap(wrapped, context)

    async def rewrap_for_recipient(
        self,
        wrapped: bytes,
        context: bytes,
        recipient: RSAPublicKey,
        jwe_protected_header: bytes,
        payload: bytes,
    ) -> JweParts | None:
        protected = rewrap_protected_header(jwe_protected_header)
        check_recipient(recipient)
        check_payload(payload)
        length, kwp = parse_blob(wrapped)
        if length != REWRAP_KEY_BYTES:
            # Not an AES-256 key: it cannot be an A256GCM content-encryption key.
            return None
        numbers = recipient.public_numbers()
        modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        aad = protected.encode("ascii")
        return await self._run(
            lambda session, kek: self._rewrap(
                session, kek, kwp, context, modulus, exponent, aad, payload, protected
            )
        )

    async def health(self) -> None:
        # A round trip through the session (an attribute read of the KEK) proves the token is there,
        # the login holds and the KEK is still the one found at first use.
        await self._run(lambda _session, kek: kek[Attribute.KEY_TYPE])

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)

    # -- session handling ---------------------------------------------------------------------

    async def _run(self, operation: Callable[[Session, _DerivingKey], T]) -> T:
        """Run ``operation`` under the module lock on a worker thread, within the call timeout.

        A thread inside a C call cannot be interrupted: past the deadline the caller gets a
        ``BackendError`` (a release: 503 ``backend-unavailable``, nothing released), the call is counted
        as stuck, and until it returns every call fails at once rather than queueing behind it."""
        with self._stuck_guard:
            stuck = self._stuck_calls
        if stuck:
            raise BackendError(
                f"the HSM (token {self._token_label!r}) has a call that has not returned for over "
                f"{self._call_timeout_s:g} s; failing fast until it does (circuit open)"
            )
        deadline = time.monotonic() + self._call_timeout_s
        thread_call = asyncio.to_thread(self._guarded, operation, deadline, _CallState())
        try:
            return await asyncio.wait_for(thread_call, self._call_timeout_s)
        except TimeoutError:
            raise BackendError(
                f"the HSM (token {self._token_label!r}) did not answer within {self._call_timeout_s:g} s"
            ) from None

    def _guarded(
        self, operation: Callable[[Session, _DerivingKey], T], deadline: float, state: _CallState
    ) -> T:
        # Waiting for the lock is bounded too: a call queued behind a stuck one gives up at its deadline.
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise BackendError(f"the HSM (token {self._token_label!r}) is busy with a call that overran")
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), self._mark_stuck, (state,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if time.monotonic() >= deadline:
                raise BackendError("the HSM call's deadline passed before it could start")
            return self._locked(operation)
        finally:
            watchdog.cancel()
            self._lock.release()
            with self._stuck_guard:
                state.returned = True
                if state.stuck:
                    self._stuck_calls -= 1  # the stuck call came back: the circuit closes

    def _mark_stuck(self, state: _CallState) -> None:
        with self._stuck_guard:
            if not state.returned:
                state.stuck = True
                self._stuck_calls += 1

    def _locked(self, operation: Callable[[Session, _DerivingKey], T]) -> T:
        for attempt in (1, 2):
            try:
                session, kek = self._ensure_session()
                return operation(session, kek)
            except _SESSION_LOST as exc:
                self._drop_session()
                if attempt == 2:
                    raise BackendError(
                        f"the HSM session on token {self._token_label!r} was lost twice in a row"
                        f" ({type(exc).__name__}): is the token still present?"
                    ) from None
            except p11.PKCS11Error as exc:
                raise BackendError(f"the HSM failed the operation ({type(exc).__name__})") from None
        raise AssertionError("unreachable")

    def _ensure_session(self) -> tuple[Session, _DerivingKey]:
        if self._closed:
            raise BackendError("the pkcs11 key backend was closed")
        if self._login_failure is not None:
            raise BackendError(self._login_failure)
        if self._session is not None and self._kek is not None:
            return self._session, self._kek
        session = self._open_session()
        try:
            kek = self._find_or_create_kek(session)
        except BaseException:
            self._session = session
            self._drop_session()
            raise
        self._session, self._kek = session, kek
        self._had_token = True
        return session, kek

    def _open_session(self) -> Session:
        try:
            lib = pkcs11.lib(self._module_path)
        except p11.PKCS11Error as exc:
            raise BackendError(f"the PKCS#11 module {self._module_path} cannot be loaded: {exc}") from None
        try:
            token = self._find_token(lib)
        except p11.NoSuchToken:
            raise BackendError(
                f"no token labelled {self._token_label!r} in the PKCS#11 module {self._module_path}:"
                " the token is missing or was removed"
            ) from None
        except p11.MultipleTokensReturned:
            raise BackendError(
                f"several tokens are labelled {self._token_label!r}; labels must be unique"
            ) from None
        except p11.PKCS11Error as exc:
            raise BackendError(f"the PKCS#11 module cannot list its tokens ({type(exc).__name__})") from None
        try:
            session = token.open(rw=True, user_pin=self._pin)
            self._owns_login = True
        except p11.UserAlreadyLoggedIn:
            # Login is per token and application, not per session: another session of this process
            # is logged in already, and a new session shares that login (and must not log it out).
            session = token.open(rw=True)
            self._owns_login = False
        except _LOGIN_FAILED as exc:
            reason = {
                p11.PinIncorrect: "the PIN is incorrect",
                p11.PinLocked: "the user PIN is locked",
                p11.PinExpired: "the PIN has expired",
                p11.UserPinNotInitialized: "the token's user PIN was never initialised",
            }.get(type(exc), "the PIN is not valid for this token")
            self._login_failure = (
                f"HSM login to token {self._token_label!r} failed: {reason}. Not retried, so as not to lock"
                " the PIN: fix KEYSERVER_PKCS11_PIN or KEYSERVER_PKCS11_PIN_FILE and restart"
            )
            raise BackendError(self._login_failure) from None
        except p11.PKCS11Error as exc:
            raise BackendError(
                f"cannot open a session on token {self._token_label!r} ({type(exc).__name__})"
            ) from None
        return session

    def _find_token(self, lib: Any) -> Token:
        token: Token
        try:
            token = lib.get_token(token_label=self._token_label)
            return token
        except p11.MultipleTokensReturned:
            raise
        except p11.PKCS11Error:
            if not self._had_token:
                raise
        # The token this backend worked with is gone, or the module cannot list its slots any more. A
        # module keeps the view of its slots it took at C_Initialize: a token that went away and came
        # back (an HSM restarted, SoftHSM's token directory restored) is seen again only after
        # C_Finalize + C_Initialize. Every session of the module in this process is dead by now (that
        # is how we got here), and the module lock keeps every other call out meanwhile. Without this
        # the backend would never recover until the process restarts (tests/test_faults_backends.py).
        lib.reinitialize()
        token = lib.get_token(token_label=self._token_label)
        return token

    def _find_or_create_kek(self, session: Session) -> _DerivingKey:
        found = list(
            session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self._kek_label})
        )
        if len(found) > 1:
            # Two KEKs under one label (typically two replicas creating it at once) would split the
            # stored keys between them; refuse rather than pick one.
            raise BackendError(
                f"{len(found)} secret keys on token {self._token_label!r} are labelled {self._kek_label!r};"
                " exactly one KEK must carry the label"
            )
        if found:
            kek: Object = found[0]
        elif self._create_kek:
            kek = session.generate_key(
                KeyType.AES,
                256,
                label=self._kek_label,
                store=True,
                # Derivation only: the KEK itself wraps, encrypts and signs nothing.
                capabilities=MechanismFlag.DERIVE,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )
        else:
            raise BackendError(f"there is no key labelled {self._kek_label!r} on token {self._token_label!r}")
        self._check_kek(kek)
        # Created at most once per process: if the KEK vanishes later (deleted, or another token
        # under the same label), silently making a new one would strand every stored key.
        self._create_kek = False
        # python-pkcs11 mixes the capabilities into each key's class at run time: checked above.
        return cast(_DerivingKey, kek)

    def _check_kek(self, kek: Object) -> None:
        attributes = kek.get_attributes(
            [
                Attribute.KEY_TYPE,
                Attribute.VALUE_LEN,
                Attribute.SENSITIVE,
                Attribute.EXTRACTABLE,
                Attribute.DERIVE,
            ]
        )
        problems = []
        if attributes[Attribute.KEY_TYPE] != KeyType.AES or attributes[Attribute.VALUE_LEN] != 32:
            problems.append("it is not an AES-256 key")
        if not attributes[Attribute.SENSITIVE] or attributes[Attribute.EXTRACTABLE]:
            problems.append("it is extractable or not sensitive, so its value could leave the HSM")
        if not attributes[Attribute.DERIVE]:
            problems.append("it does not allow derivation (CKA_DERIVE)")
        if not isinstance(kek, SecretKey) or not isinstance(kek, DeriveMixin):
            problems.append("it is not a secret key that can derive")
        if problems:
            raise BackendError(
                f"the key labelled {self._kek_label!r} cannot be the KEK: {'; '.join(problems)}"
            )

    def _drop_session(self) -> None:
        session, self._session, self._kek = self._session, None, None
        if session is not None and self._owns_login:
            # The session may be dead already; closing is tidying up, never a new failure.
            with contextlib.suppress(p11.PKCS11Error):
                session.close()
        self._owns_login = False

    def _close(self) -> None:
        # Bounded like every call: a stuck call keeps the lock, and shutting down must not wait for it.
        if not self._lock.acquire(timeout=self._call_timeout_s):
            self._closed = True
            return
        try:
            self._closed = True
            session, self._session, self._kek = self._session, None, None
            if session is not None:
                with contextlib.suppress(p11.PKCS11Error):
                    # Closing a session we logged in logs the token out for this process; a shared
                    # one (opened while another session held the login) just closes.
                    session.close()
        finally:
            self._lock.release()

    # -- the operations (run under the module lock, on a worker thread) ---------------------------

    def _context_kek(self, kek: _DerivingKey, length: int, context: bytes) -> _WrappingKey:
        derived = kek.derive_key(
            KeyType.AES,
            256,
            mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
            mechanism_param=_derivation_data(length, context),
            capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
            template={Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        if not isinstance(derived, WrapMixin) or not isinstance(derived, UnwrapMixin):
            raise BackendError("the HSM derived a key that cannot wrap and unwrap")
        return cast(_WrappingKey, derived)

    def _wrap_object(self, kek: _DerivingKey, key: Key, length: int, context: bytes) -> bytes:
        context_kek = self._context_kek(kek, length, context)
        try:
            kwp = context_kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        finally:
            _destroy(context_kek)
        return PKCS11_BLOB_MARKER + length.to_bytes(2, "big") + kwp

    def _generate(self, session: Session, kek: _DerivingKey, length: int, context: bytes) -> bytes:
        # Generated by the token as a session object: sensitive (its value cannot be read out) and
        # extractable only so that it can be wrapped, here under the context KEK.
        key = session.generate_key(
            KeyType.GENERIC_SECRET,
            length * 8,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            capabilities=MechanismFlag(0),
            template={Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
        )
        try:
            return self._wrap_object(kek, key, length, context)
        finally:
            _destroy(key)

    def _import(self, session: Session, kek: _DerivingKey, plaintext: bytes, context: bytes) -> bytes:
        key = session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: plaintext,
                Attribute.TOKEN: False,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: True,
            }
        )
        try:
            assert isinstance(key, Key)
            return self._wrap_object(kek, key, len(plaintext), context)
        finally:
            _destroy(key)

    def _unwrap_object(
        self,
        kek: _DerivingKey,
        length: int,
        kwp: bytes,
        context: bytes,
        key_type: KeyType,
        capabilities: MechanismFlag,
        template: dict[Attribute, Any],
    ) -> SecretKey:
        context_kek = self._context_kek(kek, length, context)
        try:
            key = context_kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                key_type,
                kwp,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                capabilities=capabilities,
                template={Attribute.TOKEN: False, **template},
            )
        except _SESSION_LOST:
            raise
        except p11.PKCS11Error:
            # SoftHSM reports a failed RFC 5649 integrity check as GeneralError; others say
            # WrappedKeyInvalid or EncryptedDataInvalid. All mean the same here.
            raise BackendError(
                "the wrapped key does not unwrap under this HSM's KEK and context (another KEK or"
                " token, or the blob was altered or belongs to another tenant)"
            ) from None
        finally:
            _destroy(context_kek)
        assert isinstance(key, SecretKey)
        return key

    def _unwrap_value(
        self, session: Session, kek: _DerivingKey, length: int, kwp: bytes, context: bytes
    ) -> bytes:
        # The memory path: the one place the key is unwrapped as readable (CKA_SENSITIVE=False).
        key = self._unwrap_object(
            kek,
            length,
            kwp,
            context,
            KeyType.GENERIC_SECRET,
            MechanismFlag(0),
            {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
        try:
            value = key[Attribute.VALUE]
        finally:
            _destroy(key)
        if not isinstance(value, bytes):
            raise BackendError("the HSM returned no key value")
        padded = 8 * -(-length // 8)
        if len(value) == padded != length and not any(value[length:]):
            # SoftHSM 2.6 zero-pads a key whose length is not a multiple of 8 before its RFC 5649
            # wrap, so its blob holds the padded key; the length in our header restores the key.
            value = value[:length]
        if len(value) != length:
            raise BackendError("the unwrapped key does not have the length its blob declares")
        return value

    def _rewrap(
        self,
        session: Session,
        kek: _DerivingKey,
        kwp: bytes,
        context: bytes,
        modulus: bytes,
        exponent: bytes,
        aad: bytes,
        payload: bytes,
        protected: str,
    ) -> JweParts:
        # Sensitive (never readable), extractable only so that the token can wrap it to the recipient.
        cek = self._unwrap_object(
            kek,
            REWRAP_KEY_BYTES,
            kwp,
            context,
            KeyType.AES,
            MechanismFlag.ENCRYPT,
            {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
        )
        recipient: Object | None = None
        try:
            recipient = session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.TOKEN: False,
                    Attribute.MODULUS: modulus,
                    Attribute.PUBLIC_EXPONENT: exponent,
                    Attribute.WRAP: True,
                    Attribute.ENCRYPT: False,
                    Attribute.VERIFY: False,
                }
            )
            if not isinstance(recipient, WrapMixin) or not isinstance(cek, EncryptMixin):
                raise BackendError("the HSM made session keys without the capabilities asked for")
            encrypted_key = recipient.wrap_key(
                cek,
                mechanism=Mechanism.RSA_PKCS_OAEP,
                # python-pkcs11 takes OAEP's (hash, MGF, label) as a tuple; its stubs say bytes only.
                mechanism_param=_OAEP_SHA1,  # type: ignore[arg-type]
            )
            iv = secrets.token_bytes(_GCM_IV_BYTES)
            sealed = cek.encrypt(payload, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad))
        finally:
            _destroy(cek)
            if recipient is not None:
                _destroy(recipient)
        if not isinstance(sealed, bytes) or len(sealed) != len(payload) + _GCM_TAG_BYTES:
            raise BackendError("the HSM's AES-GCM output has an unexpected size")
        return JweParts(
            protected=protected,
            encrypted_key=encrypted_key,
            iv=iv,
            ciphertext=sealed[:-_GCM_TAG_BYTES],
            tag=sealed[-_GCM_TAG_BYTES:],
        )


def _destroy(obj: Object) -> None:
    # Session objects die with their session anyway; a failure to destroy one early (the session
    # just went away) must not hide the operation's own result or error.
    with contextlib.suppress(p11.PKCS11Error):
        obj.destroy()
