"""k-of-n release across three real keyservers (each its own app, database, tenant, policy, log origin:
A and C on SQLite, B on PostgreSQL)
and a real TPM (swtpm): the owner splits with the CLI, imports one share into each keyserver with the
SDK, the "loader" gets each share released under that keyserver's policy and combines two of them
against the owner's commitment. A keyserver that hands out another value is caught by the commitment.

Then the caller's side: configured for 2 of 3 attestation results for the loader's key, it refuses
with one (naming the keyservers that did not attest) and accepts with two.

The loader's own combination (clients/loader) is the next step; here the test plays the loader.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from collections.abc import Set as AbstractSet
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from tpm2_pytss import ESAPI

from clients.caller import (
    LoaderNotTrusted,
    QuorumAttestedLoader,
    TrustedKeyserver,
    attested_loader_k_of_n,
    verify_attestation_quorum,
)
from clients.sdk import KeyserverClient
from clients.sdk.threshold import import_shares
from keyserver.app import create_app
from keyserver.binding import jwk_thumbprint_b64url
from keyserver.cli import main as keyserver_cli
from keyserver.config import Settings
from keyserver.jwe import unwrap_released
from tests.conftest import Service
from tests.test_release_swtpm import PCR, Loader, extend, loader_ak, setup_tenant
from tests.tpm.test_swtpm import read_pcrs
from threshold import CommitmentMismatch, KeyCommitment, KeyIdentity, Share, combine

pytestmark = [pytest.mark.swtpm, pytest.mark.postgres]
ORIGINS = ("ks-a.example", "ks-b.example", "ks-c.example")
IDENTITY = KeyIdentity("weights", 1, 2, 3)


@asynccontextmanager
async def running_keyserver(root: Path, origin: str, database_url: str | None) -> AsyncIterator[Service]:
    settings = Settings(
        data_dir=root / "data",
        database_url=database_url or f"sqlite+aiosqlite:///{root / 'ks.sqlite3'}",
        log_origin=origin,
    )
    announced: list[str] = []
    app = create_app(settings, announce=announced.append)
    async with AsyncTestClient(app=app) as client:
        yield Service(app=app, client=client, announced=announced)


def keyserver_roots(tmp_path: Path) -> list[Path]:
    """Each keyserver's own directory: its data and its SQLite database."""
    roots = [tmp_path / origin for origin in ORIGINS]
    for root in roots:
        root.mkdir()
    return roots


def split_with_cli(out_dir: Path) -> tuple[bytes, list[bytes], KeyCommitment]:
    status = keyserver_cli(
        [
            "key",
            "split",
            "--name",
            "weights",
            "--version",
            "1",
            "--k",
            "2",
            "--n",
            "3",
            "--out-dir",
            str(out_dir),
        ]
    )
    assert status == 0
    commitment = KeyCommitment.from_json(json.loads((out_dir / "commitment.json").read_text()))
    shares = [(out_dir / f"share-{i}.bin").read_bytes() for i in (1, 2, 3)]
    return (out_dir / "key.bin").read_bytes(), shares, commitment


async def test_two_of_three_keyservers_release_and_attest(
    tmp_path: Path, swtpm: Any, tpm_esapi: ESAPI, postgres_url: str
) -> None:
    key, shares, commitment = split_with_cli(tmp_path / "split")
    extend(tpm_esapi, b"reviewed loader build 1")
    async with AsyncExitStack() as stack:
        keyservers = [
            await stack.enter_async_context(running_keyserver(root, origin, database))
            for root, origin, database in zip(
                keyserver_roots(tmp_path), ORIGINS, (None, postgres_url, None), strict=True
            )
        ]
        with loader_ak(tpm_esapi) as ak:
            admins = []
            for keyserver in keyservers:
                acme = await setup_tenant(keyserver, swtpm, tpm_esapi, ak)
                admins.append(KeyserverClient(http=keyserver.client, token=acme.admin, tenant="acme").admin)
            # The owner imports one share into each keyserver, as an ordinary key under its policy.
            imported = await import_shares(
                admins, [Share.from_bytes(s) for s in shares], key_name="weights-share", policy="prod"
            )
            assert [k.name for k in imported] == ["weights-share"] * 3
            # A dishonest keyserver C also holds a forged share: a valid tag, another value.
            genuine = Share.from_bytes(shares[2])
            forged = Share(2, 3, 3, genuine.tag, bytearray(b"\x01" * 32)).to_bytes()
            await admins[2].create_key("weights-forged", "prod", material=forged)

            # The loader: one ephemeral key, a release from each keyserver under its own policy.
            loaders = [Loader(keyserver, tpm_esapi, ak) for keyserver in keyservers]
            for loader in loaders[1:]:
                loader.private, loader.jwk = loaders[0].private, loaders[0].jwk
            released = []
            for loader in loaders:
                response = await loader.release(key="weights-share")
                assert response.status_code == 200, response.text
                released.append(unwrap_released(response.json()["jwe"], loader.private)[0])
            assert released == shares
            for pair in ((0, 1), (0, 2), (1, 2), (2, 0)):
                assert combine([released[i] for i in pair], commitment, IDENTITY) == key
            response = await loaders[2].release(key="weights-forged")
            assert response.status_code == 200, response.text
            wrong = unwrap_released(response.json()["jwe"], loaders[2].private)[0]
            with pytest.raises(CommitmentMismatch):
                combine([released[0], wrong], commitment, IDENTITY)

            # The caller's side: an attestation result for the loader's key from each keyserver.
            tokens = []
            for loader, keyserver in zip(loaders, keyservers, strict=True):
                challenge = await loader.challenge()
                nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
                attested = await keyserver.client.post(
                    "/v1/tenants/acme/attest",
                    json={
                        "challenge": challenge["id"],
                        "evidence": loader.evidence(nonce),
                        "ephemeral_key": loader.jwk,
                    },
                )
                assert attested.status_code == 200, attested.text
                tokens.append(attested.json()["token"])
        pcr = read_pcrs(tpm_esapi, f"sha256:{PCR}")["sha256"][PCR].hex()
        await check_caller(keyservers, loaders[0].jwk, tokens, pcr)


async def check_caller(keyservers: list[Service], jwk: dict[str, Any], tokens: list[str], pcr: str) -> None:
    trusted = [
        TrustedKeyserver(label, "acme", origin, KeyserverClient(http=keyserver.client))
        for label, origin, keyserver in zip(("a", "b", "c"), ORIGINS, keyservers, strict=True)
    ]
    configured = [(t, await t.keyserver.for_tenant("acme").loader.jwks()) for t in trusted]
    expected: dict[str, AbstractSet[Any]] = {f"tpm.pcrs.sha256.{PCR}": {pcr}, "debug": {False}}
    now = datetime.now(UTC)

    def quorum(presented: list[str], k: int = 2, **options: Any) -> QuorumAttestedLoader:
        return verify_attestation_quorum(
            jwk,
            presented,
            options.pop("configured", configured),
            k=k,
            expected_claims=expected,
            now=now,
            **options,
        )

    # One of the required two: refused, naming the keyservers that did not attest.
    with pytest.raises(LoaderNotTrusted, match=r"1 of the 2 required.*b: no attestation result signed by it"):
        quorum([tokens[0]])
    # One keyserver's result twice still counts once.
    with pytest.raises(LoaderNotTrusted, match="1 of the 2 required"):
        quorum([tokens[0], tokens[0]])
    # Two: accepted, in any order, with the third's token or not.
    for presented in ([tokens[0], tokens[1]], [tokens[2], tokens[0]], tokens):
        loader = quorum(presented)
        assert len(loader.verified_by) == len(presented)
        assert loader.attested_jkt == jwk_thumbprint_b64url(jwk)
    # All three required, one missing: refused naming it.
    with pytest.raises(LoaderNotTrusted, match="c: no attestation result"):
        quorum(tokens[:2], k=3)
    # Results for the right key but another tenant configured for b: b does not count, and says why.
    wrong_tenant = [
        configured[0],
        (TrustedKeyserver("b", "globex", ORIGINS[1], trusted[1].keyserver), configured[1][1]),
        configured[2],
    ]
    with pytest.raises(LoaderNotTrusted, match=r"b: .*tenant|b: .*audience"):
        quorum(tokens[:2], configured=wrong_tenant)
    # Another loader key: none of the results is for it.
    other = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    with pytest.raises(LoaderNotTrusted, match="0 of the 2 required"):
        verify_attestation_quorum(other, tokens, configured, k=2, expected_claims=expected, now=now)
    # Claims other than expected: refused by every keyserver.
    with pytest.raises(LoaderNotTrusted, match=r"0 of the 2 required.*not one of the expected"):
        verify_attestation_quorum(
            jwk, tokens, configured, k=2, expected_claims={f"tpm.pcrs.sha256.{PCR}": {"00" * 32}}, now=now
        )
    # Two "independent" keyservers with one signing key are a configuration error.
    with pytest.raises(ValueError, match="not independent"):
        quorum(tokens, configured=[configured[0], (trusted[1], configured[0][1]), configured[2]])

    # End to end over HTTP: the inference server presents the key and the tokens; JWKS from each keyserver.
    for presented, accepted in (([tokens[1]], False), ([tokens[1], tokens[2]], True)):
        inference_app = Litestar(
            route_handlers=[_attestation_route({"public_key": jwk, "tokens": presented})]
        )
        async with AsyncTestClient(app=inference_app) as inference:
            if accepted:
                loader = await attested_loader_k_of_n(inference, trusted, k=2, expected_claims=expected)
                assert sorted(loader.verified_by) == ["b", "c"]
            else:
                with pytest.raises(LoaderNotTrusted, match=r"refused by a: .*; c: "):
                    await attested_loader_k_of_n(inference, trusted, k=2, expected_claims=expected)
    # A keyserver that cannot be reached is named as such.
    inference_app = Litestar(route_handlers=[_attestation_route({"public_key": jwk, "tokens": tokens[:1]})])
    async with (
        AsyncTestClient(app=inference_app) as inference,
        httpx.AsyncClient(base_url="http://127.0.0.1:9") as nowhere,
    ):
        unreachable = TrustedKeyserver("d", "acme", "ks-d.example", KeyserverClient(http=nowhere))
        with pytest.raises(LoaderNotTrusted, match="d: its JWKS could not be fetched"):
            await attested_loader_k_of_n(inference, [trusted[0], unreachable], k=2, expected_claims=expected)


def _attestation_route(document: dict[str, Any]) -> Any:
    @get("/v1/attestation", sync_to_thread=False)
    def attestation() -> dict[str, Any]:
        return document

    return attestation
