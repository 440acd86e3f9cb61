"""Attestation result tokens: a signed, short-lived EAR (EAT Attestation Result) JWT that a loader gets
from ``POST /v1/tenants/{t}/attest`` and presents to ``release`` instead of evidence, so that one
verification serves several releases (DESIGN.md, "The release protocol"; docs/binding.md).

The token follows the EAR profile Veraison deploys (``eat_profile`` "tag:github.com,2023:veraison/ear",
draft-ietf-rats-ear): ``iat``/``exp``, ``ear.verifier-id``, and one ``submods`` entry named after the tee
whose ``ear.status`` is "affirming" and whose ``ear.keyserver.claims`` are the verifier's normalised
claims. It is bound to the loader's ephemeral key with ``cnf.jkt`` (the key's RFC 7638 thumbprint, as in
RFC 7800 / RFC 9449), to the tenant with ``aud``, and to this keyserver with ``iss``. The token asserts
*authenticity* only: release still appraises its claims under the key's policy, as it would evidence.

Signing is Ed25519 (``alg`` "Ed25519", RFC 9864) or ECDSA P-256 (``alg`` "ES256"); verification accepts
exactly those two and nothing else. In particular ``none``, every HMAC algorithm (whose "secret" could be
a public key taken from the JWKS) and the deprecated polymorphic "EdDSA" are refused before any key is
looked at. Pure functions; time is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws
from joserfc.jwk import ECKey, Key, OKPKey

from keyserver import __version__
from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEES, Claims, ClaimValue
from keyserver.strict_json import loads_object

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
TOKEN_TYP = "eat+jwt"  # application/eat+jwt (draft-ietf-rats-eat-media-type), without "application/"
ALG_ED25519 = "Ed25519"
ALG_ES256 = "ES256"
ALLOWED_ALGS = frozenset({ALG_ED25519, ALG_ES256})
STATUS_AFFIRMING = "affirming"
CLAIMS_MEMBER = "ear.keyserver.claims"
VERIFIER_ID = {"developer": "keyserver", "build": f"keyserver {__version__}"}

# Short-lived by construction: a token outliving its evidence's relevance is a replayable credential.
MAX_LIFETIME = timedelta(hours=1)
DEFAULT_MAX_SKEW = timedelta(seconds=60)
MAX_TOKEN_CHARS = 64 * 1024
_MAX_KID_CHARS = 256
_THUMBPRINT_BYTES = 32

SigningKey: TypeAlias = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
VerifyingKey: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey

_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_PAYLOAD_MEMBERS = frozenset(
    {"eat_profile", "iss", "aud", "iat", "nbf", "exp", "jti", "cnf", "ear.verifier-id", "submods"}
)
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")

REASON_INVALID = "attestation-result-invalid"


def _invalid(message: str) -> EvidenceError:
    return EvidenceError(REASON_INVALID, message)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not _B64URL_RE.fullmatch(value) or len(value) % 4 == 1:
        raise _invalid(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(f"{what} is not base64url") from None
    if _b64url(raw) != value:
        raise _invalid(f"{what} is not canonical base64url")
    return raw


def _equal(a: str, b: str) -> bool:
    """Constant-time string equality that also copes with any code point JSON can carry."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def _timestamp(now: datetime) -> int:
    if now.tzinfo is None:
        # A naive datetime's timestamp() depends on the host's time zone: refuse the ambiguity.
        raise ValueError("now must be timezone-aware")
    return int(now.timestamp())


def _alg_for(signing_key: SigningKey) -> str:
    if isinstance(signing_key, Ed25519PrivateKey):
        return ALG_ED25519
    if isinstance(signing_key, ec.EllipticCurvePrivateKey) and isinstance(signing_key.curve, ec.SECP256R1):
        return ALG_ES256
    raise TypeError("an attestation result is signed with an Ed25519 or an ECDSA P-256 private key")


def _check_claims(claims: Mapping[str, Any]) -> Claims:
    """A copy of ``claims`` after checking it is a claim set (DESIGN.md, "Claims") naming its tee."""
    result: Claims = {}
    for name, value in claims.items():
        if not isinstance(name, str):
            raise ValueError("claim names are strings")
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"claim {name!r}: a list claim holds strings only")
            result[name] = list(value)
        elif value is None or isinstance(value, str | int | bool):
            result[name] = value
        else:
            raise ValueError(f"claim {name!r} is not a JSON scalar or a list of strings")
    if result.get("tee") not in TEES:
        raise ValueError(f"the claims must name their tee, one of: {', '.join(TEES)}")
    return result


def issue_attestation_result(
    claims: Mapping[str, ClaimValue],
    *,
    tenant: str,
    ephemeral_jwk_thumbprint: bytes,
    signing_key: SigningKey,
    kid: str,
    issuer: str,
    now: datetime,
    lifetime: timedelta,
) -> str:
    """A signed EAR JWT saying: evidence of ``claims["tee"]`` verified at ``now`` with these ``claims``,
    for ``tenant``, bound to the ephemeral key whose RFC 7638 thumbprint is given (raw 32 bytes)."""
    checked = _check_claims(claims)
    if len(ephemeral_jwk_thumbprint) != _THUMBPRINT_BYTES:
        raise ValueError(f"a JWK thumbprint is {_THUMBPRINT_BYTES} bytes (SHA-256)")
    if not timedelta(seconds=1) <= lifetime <= MAX_LIFETIME:
        raise ValueError(f"an attestation result lives 1 s to {MAX_LIFETIME}, not {lifetime}")
    if not kid or len(kid) > _MAX_KID_CHARS:
        raise ValueError(f"kid is 1 to {_MAX_KID_CHARS} characters")
    if not tenant or not issuer:
        raise ValueError("tenant and issuer must be non-empty")
    alg = _alg_for(signing_key)
    issued_at = _timestamp(now)
    payload = {
        "eat_profile": EAR_PROFILE,
        "iss": issuer,
        "aud": tenant,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + int(lifetime.total_seconds()),
        "jti": _b64url(secrets.token_bytes(16)),
        "cnf": {"jkt": _b64url(bytes(ephemeral_jwk_thumbprint))},
        "ear.verifier-id": dict(VERIFIER_ID),
        "submods": {str(checked["tee"]): {"ear.status": STATUS_AFFIRMING, CLAIMS_MEMBER: checked}},
    }
    header = {"alg": alg, "kid": kid, "typ": TOKEN_TYP}
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    key: Key
    if isinstance(signing_key, Ed25519PrivateKey):
        key = OKPKey(signing_key, signing_key)
    else:
        key = ECKey(signing_key, signing_key)
    return jws.serialize_compact(header, body, key, algorithms=[alg])


def _public_jwk(kid: str, key: VerifyingKey | SigningKey) -> dict[str, str]:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) else key
    if isinstance(public, Ed25519PublicKey):
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(public.public_bytes_raw()),
            "kid": kid,
            "use": "sig",
            "alg": ALG_ED25519,
        }
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        numbers = public.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
            "kid": kid,
            "use": "sig",
            "alg": ALG_ES256,
        }
    raise TypeError("attestation results are verified with Ed25519 or ECDSA P-256 keys")


def jwks_for(
    keys: Mapping[str, VerifyingKey | SigningKey] | Iterable[tuple[str, VerifyingKey]],
) -> dict[str, Any]:
    """The JWK Set (RFC 7517 §5) publishing the public halves of ``keys`` (kid → key), for
    ``verify_attestation_result`` and any third party. Private keys given here are reduced to their
    public half: a JWKS never carries a private member."""
    items = keys.items() if isinstance(keys, Mapping) else keys
    jwk_list = [_public_jwk(kid, key) for kid, key in items]
    kids = [jwk["kid"] for jwk in jwk_list]
    if len(set(kids)) != len(kids):
        raise ValueError("every key in a JWKS needs its own kid")
    return {"keys": jwk_list}


def _loads_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        return loads_object(raw)
    except ValueError as exc:
        raise _invalid(f"the attestation result's {what} is {exc}") from None


def _verifying_key(jwks: Mapping[str, Any], kid: str, alg: str) -> Key:
    """The one JWKS key named ``kid``, checked to be of the type ``alg`` needs."""
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no key list")
    matches = [entry for entry in entries if isinstance(entry, Mapping) and entry.get("kid") == kid]
    if not matches:
        raise EvidenceError(
            "attestation-result-unknown-kid",
            f"the attestation result was signed with key {kid!r}, which this keyserver does not publish"
            " (rotated out, or not ours); attest again",
        )
    if len(matches) > 1:
        raise _invalid(f"the JWKS has several keys named {kid!r}")
    jwk = matches[0]
    if "d" in jwk:
        raise ValueError("the JWKS holds a private key; it must publish public keys only")
    if jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
        raise _invalid(f"key {kid!r} is not published for {alg} signatures")
    if alg == ALG_ED25519:
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise _invalid(f"key {kid!r} is not an Ed25519 key")
        ed_key = Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk.get("x"), "the JWKS key's x"))
        return OKPKey(ed_key, ed_key)
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise _invalid(f"key {kid!r} is not a P-256 key")
    x = int.from_bytes(_b64url_decode(jwk.get("x"), "the JWKS key's x"), "big")
    y = int.from_bytes(_b64url_decode(jwk.get("y"), "the JWKS key's y"), "big")
    try:
        ec_key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError:
        raise _invalid(f"key {kid!r} is not a P-256 point") from None
    return ECKey(ec_key, ec_key)


def _int_claim(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f'the attestation result\'s "{name}" must be an integer (seconds since the epoch)')
    return value


def _claims_from(submods: object) -> Claims:
    if not isinstance(submods, dict) or len(submods) != 1:
        raise _invalid('the attestation result must have exactly one "submods" entry (its tee)')
    ((tee, appraisal),) = submods.items()
    if not isinstance(appraisal, dict) or set(appraisal) != {"ear.status", CLAIMS_MEMBER}:
        raise _invalid(f'the "{tee}" appraisal must hold exactly "ear.status" and "{CLAIMS_MEMBER}"')
    if appraisal["ear.status"] != STATUS_AFFIRMING:
        raise EvidenceError(
            "attestation-result-not-affirming",
            f'the attestation result\'s status is {appraisal["ear.status"]!r}, not "{STATUS_AFFIRMING}"',
        )
    raw_claims = appraisal[CLAIMS_MEMBER]
    if not isinstance(raw_claims, dict):
        raise _invalid(f'"{CLAIMS_MEMBER}" must be an object')
    try:
        claims = _check_claims(raw_claims)
    except ValueError as exc:
        raise _invalid(f"the attestation result's claims are not a claim set: {exc}") from None
    if claims["tee"] != tee:
        raise _invalid(f'the submod "{tee}" carries claims of tee {claims["tee"]!r}')
    return claims


def verify_attestation_result(
    token: str,
    *,
    jwks: Mapping[str, Any],
    tenant: str,
    issuer: str,
    now: datetime,
    expected_jkt: bytes,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> Claims:
    """The claims of an attestation result, after checking everything; ``EvidenceError`` otherwise.

    Checked, in this order, so that nothing unauthenticated is believed: the header (``alg`` Ed25519 or
    ES256 only, ``typ`` eat+jwt, ``kid`` in ``jwks`` with the key type ``alg`` needs), the signature,
    then the payload: profile, ``iss`` == ``issuer``, ``aud`` == ``tenant``, ``iat``/``nbf`` not in the
    future and ``exp`` not past (each with ``max_skew``), a lifetime of at most an hour, ``cnf.jkt`` ==
    the thumbprint of the key the presenter wants the release wrapped to, and an affirming appraisal.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise _invalid(f"an attestation result is an ASCII string of at most {MAX_TOKEN_CHARS} characters")
    segments = token.split(".")
    if len(segments) != 3:
        raise _invalid("an attestation result is a JWS in compact serialization (three parts)")
    header = _loads_object(_b64url_decode(segments[0], "header"), "header")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise _invalid(
            f"an attestation result is signed with {ALG_ED25519} or {ALG_ES256}; {alg!r} is refused"
        )
    assert isinstance(alg, str)
    if set(header) != _HEADER_MEMBERS:
        raise _invalid(f"the attestation result's header has exactly: {', '.join(sorted(_HEADER_MEMBERS))}")
    if header["typ"] != TOKEN_TYP:
        raise _invalid(f'the attestation result\'s "typ" must be "{TOKEN_TYP}"')
    kid = header["kid"]
    if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_CHARS:
        raise _invalid('the attestation result\'s "kid" must be a non-empty string')
    key = _verifying_key(jwks, kid, alg)
    try:
        verified = jws.deserialize_compact(token, key, algorithms=[alg])
    except Exception as exc:
        # joserfc reports a bad signature, a malformed part or an oversized token with several error
        # types; all mean that this is not a token this keyserver signed.
        raise _invalid("the attestation result's signature does not verify") from exc
    payload = _loads_object(verified.payload, "payload")

    unknown = sorted(set(payload) - _PAYLOAD_MEMBERS)
    missing = sorted(_PAYLOAD_MEMBERS - {"nbf"} - set(payload))
    if unknown or missing:
        raise _invalid(f"the attestation result's claims differ: unknown {unknown}, missing {missing}")
    if payload["eat_profile"] != EAR_PROFILE:
        raise _invalid(f'the attestation result\'s "eat_profile" must be "{EAR_PROFILE}"')
    if not isinstance(payload["iss"], str) or not _equal(payload["iss"], issuer):
        raise EvidenceError(
            "attestation-result-wrong-issuer", "the attestation result was issued by another keyserver"
        )
    if not isinstance(payload["aud"], str) or not _equal(payload["aud"], tenant):
        raise EvidenceError(
            "attestation-result-wrong-tenant",
            "the attestation result was issued for another tenant; attest to this tenant",
        )

    current = _timestamp(now)
    skew = int(max_skew.total_seconds())
    issued_at, expires = _int_claim(payload, "iat"), _int_claim(payload, "exp")
    not_before = _int_claim(payload, "nbf") if "nbf" in payload else issued_at
    if expires <= issued_at or expires - issued_at > int(MAX_LIFETIME.total_seconds()):
        raise _invalid(f"the attestation result's lifetime must be positive and at most {MAX_LIFETIME}")
    if issued_at > current + skew or not_before > current + skew:
        raise EvidenceError(
            "attestation-result-not-yet-valid",
            "the attestation result is dated in the future; check the clocks of keyserver's replicas",
        )
    if current >= expires + skew:
        raise EvidenceError(
            "attestation-result-expired", "the attestation result has expired; attest again for a new one"
        )

    cnf = payload["cnf"]
    jkt = cnf.get("jkt") if isinstance(cnf, dict) and set(cnf) == {"jkt"} else None
    if not isinstance(jkt, str):
        raise _invalid('the attestation result\'s "cnf" must be {"jkt": <thumbprint>}')
    if not _equal(jkt, _b64url(bytes(expected_jkt))):
        raise EvidenceError(
            "attestation-result-key-mismatch",
            "the attestation result is bound to another ephemeral key than the one this request presents",
        )
    if not isinstance(payload["jti"], str) or not isinstance(payload["ear.verifier-id"], dict):
        raise _invalid('the attestation result\'s "jti" and "ear.verifier-id" are malformed')
    return _claims_from(payload["submods"])
