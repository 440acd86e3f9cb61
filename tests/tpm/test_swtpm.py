"""The verifier against a real TPM (swtpm): AKs created under the EK, quotes, credential activation, the
EK certificates in NV, and an event log replayed against quoted PCRs.

Needs the swtpm fixtures: ``pytest -p tests.fixtures.swtpm tests/tpm`` (or tests/conftest.py listing the
plugin). Every test flushes what it loads; ``tpm_esapi`` flushes anything left at teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMT_HA,
    TPMT_SYM_DEF,
    TPMU_HA,
)
from tpm2_pytss.utils import NVReadEK

from clients.loader.collectors.tpm import AK_ATTRIBUTES
from keyserver.errors import EvidenceError
from keyserver.evidence.tpm import eventlog as el
from keyserver.evidence.tpm import structures as st
from keyserver.evidence.tpm.credential import make_credential
from keyserver.evidence.tpm.ek import verify_ek_certificate
from keyserver.evidence.tpm.quote import AkPublic, verify_quote

pytestmark = pytest.mark.swtpm

EK_RSA = 0x81010001  # RSA-2048, TCG template L-1 (adminWithPolicy: needs PolicySecret(endorsement))
EK_ECC = 0x81010016  # ECC P-384, template H-3 (userWithAuth: an empty password works)
EK_CERT_NV = {EK_RSA: 0x01C00002, EK_ECC: 0x01C00016}

AK_TEMPLATES = {"ecc": "ecc256:ecdsa-sha256:null", "rsa": "rsa2048:rsassa-sha256:null"}


@contextmanager
def ek_auth(ectx: ESAPI, ek_handle: int) -> Iterator[ESYS_TR]:
    """An authorisation for using the EK: PolicySecret(TPM_RH_ENDORSEMENT) for the low-range RSA EK,
    the empty password for the high-range P-384 EK."""
    if ek_handle == EK_ECC:
        yield ESYS_TR.PASSWORD
        return
    session = ectx.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
    )
    try:
        ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
        yield session
    finally:
        with contextlib.suppress(TSS2_Exception):  # already gone if the command consumed it
            ectx.flush_context(session)


@dataclass
class TpmAk:
    handle: ESYS_TR
    public: bytes  # TPM2B_PUBLIC
    ek_public: st.TpmtPublic
    ek_handle: int

    def verifier_ak(self) -> AkPublic:
        # The AK's parent is the EK, itself a primary key of the endorsement hierarchy.
        ek_qn = st.qualified_name(
            st.hierarchy_name(st.RH_ENDORSEMENT), self.ek_public.name(), self.ek_public.name_alg
        )
        return AkPublic.from_tpm2b_public(self.public, parent_qualified_name=ek_qn)


def read_ek(ectx: ESAPI, ek_handle: int) -> tuple[ESYS_TR, st.TpmtPublic]:
    handle = ectx.tr_from_tpmpublic(ek_handle)
    public, _, _ = ectx.read_public(handle)
    return handle, st.parse_tpm2b_public(bytes(public.marshal()))


@contextmanager
def tpm_ak(ectx: ESAPI, kind: str, ek_handle: int = EK_RSA) -> Iterator[TpmAk]:
    ek, ek_public = read_ek(ectx, ek_handle)
    template = TPM2B_PUBLIC.parse(AK_TEMPLATES[kind], objectAttributes=TPMA_OBJECT(AK_ATTRIBUTES))
    with ek_auth(ectx, ek_handle) as auth:
        private, public, *_ = ectx.create(ek, TPM2B_SENSITIVE_CREATE(), template, session1=auth)
    with ek_auth(ectx, ek_handle) as auth:
        handle = ectx.load(ek, private, public, session1=auth)
    try:
        # The Name and qualified Name the TPM computed match ours.
        _, name, qualified = ectx.read_public(handle)
        ak = TpmAk(handle, bytes(public.marshal()), ek_public, ek_handle)
        assert ak.verifier_ak().name == bytes(name)
        assert ak.verifier_ak().qualified_name == bytes(qualified)
        yield ak
    finally:
        ectx.flush_context(handle)


def read_pcrs(ectx: ESAPI, selection: str) -> dict[str, dict[int, bytes]]:
    """PCR values for ``bank:i,j+bank:k`` (TPM2_PCR_Read returns at most 8 digests per call)."""
    out: dict[str, dict[int, bytes]] = {}
    for part in selection.split("+"):
        bank, indices = part.split(":")
        for index in (int(i) for i in indices.split(",")):
            _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"{bank}:{index}"))
            out.setdefault(bank, {})[index] = bytes(digests[0])
    return out


def quote(ectx: ESAPI, ak: TpmAk, selection: str, nonce: bytes) -> tuple[bytes, bytes]:
    attest, signature = ectx.quote(ak.handle, selection, nonce)
    return bytes(attest), bytes(signature.marshal())


SELECTION = "sha256:0,8,9,10,11,12,13,14,15"


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_quote_verifies_and_tampering_is_rejected(tpm_esapi: ESAPI, kind: str) -> None:
    with tpm_ak(tpm_esapi, kind) as ak:
        nonce = os.urandom(32)
        attest, signature = quote(tpm_esapi, ak, SELECTION, nonce)
        pcrs = read_pcrs(tpm_esapi, SELECTION)
        expected_selection = {"sha256": [0, *range(8, 16)]}
        result = verify_quote(
            attest, signature, ak.verifier_ak(), expected_extra_data=nonce, pcr_values=pcrs,
            expected_selection=expected_selection,
        )  # fmt: skip
        assert result.qualified_signer_verified
        assert result.claims["report_data"] == nonce.hex()
        assert result.claims["tpm.pcrs.sha256.8"] == pcrs["sha256"][8].hex()
        assert result.signature.sig_alg == (st.ALG_ECDSA if kind == "ecc" else st.ALG_RSASSA)

        def rejected(code: str, **changes: object) -> None:
            kwargs: dict[str, object] = {
                "attest": attest,
                "signature": signature,
                "ak": ak.verifier_ak(),
                "expected_extra_data": nonce,
                "pcr_values": pcrs,
                "expected_selection": expected_selection,
            }
            kwargs.update(changes)
            with pytest.raises(EvidenceError) as err:
                verify_quote(**kwargs)  # type: ignore[arg-type]
            assert err.value.reason == code, err.value.message

        rejected("tpm-nonce-mismatch", expected_extra_data=os.urandom(32))
        tampered = {"sha256": {**pcrs["sha256"], 9: hashlib.sha256(b"evil").digest()}}
        rejected("tpm-pcr-digest-mismatch", pcr_values=tampered)
        flipped = bytearray(attest)
        flipped[len(flipped) // 2] ^= 0x40
        rejected("tpm-signature-invalid", attest=bytes(flipped))
        rejected("tpm-pcr-selection-mismatch", expected_selection={"sha256": range(8, 16)})
        rejected("tpm-pcr-selection-mismatch", pcr_values=read_pcrs(tpm_esapi, "sha256:0,8,9"))

        # Replay: the old quote answers the old challenge, not a new one.
        new_nonce = os.urandom(32)
        rejected("tpm-nonce-mismatch", expected_extra_data=new_nonce)
        fresh_attest, fresh_sig = quote(tpm_esapi, ak, SELECTION, new_nonce)
        verify_quote(
            fresh_attest, fresh_sig, ak.verifier_ak(), expected_extra_data=new_nonce, pcr_values=pcrs
        )
        assert st.parse_attest(fresh_attest).clock_info.clock >= result.attest.clock_info.clock


def test_multi_bank_quote(tpm_esapi: ESAPI) -> None:
    selection = "sha1:8,9+sha256:8,9,10"
    with tpm_ak(tpm_esapi, "ecc") as ak:
        nonce = os.urandom(32)
        attest, signature = quote(tpm_esapi, ak, selection, nonce)
        pcrs = read_pcrs(tpm_esapi, selection)
        result = verify_quote(attest, signature, ak.verifier_ak(), expected_extra_data=nonce, pcr_values=pcrs)
        assert set(result.pcrs) == {"sha1", "sha256"}
        assert "tpm.pcrs.sha1.8" not in result.claims  # SHA-1 banks are verified but not claims by default


def test_ak_under_the_p384_ek(tpm_esapi: ESAPI) -> None:
    with tpm_ak(tpm_esapi, "ecc", EK_ECC) as ak:
        nonce = os.urandom(32)
        attest, signature = quote(tpm_esapi, ak, "sha256:0", nonce)
        result = verify_quote(
            attest,
            signature,
            ak.verifier_ak(),
            expected_extra_data=nonce,
            pcr_values=read_pcrs(tpm_esapi, "sha256:0"),
        )
        assert result.qualified_signer_verified


@pytest.mark.parametrize("ek_handle", [EK_RSA, EK_ECC], ids=["rsa2048", "ecc-p384"])
def test_make_credential_is_activated_by_the_tpm(tpm_esapi: ESAPI, ek_handle: int) -> None:
    with tpm_ak(tpm_esapi, "ecc", ek_handle) as ak:
        ak_name = ak.verifier_ak().name
        assert ak_name is not None
        secret = os.urandom(32)
        made = make_credential(ak.ek_public, secret, ak_name)
        ek, _ = read_ek(tpm_esapi, ek_handle)
        with ek_auth(tpm_esapi, ek_handle) as auth:
            recovered = tpm_esapi.activate_credential(
                ak.handle,
                ek,
                TPM2B_ID_OBJECT(credential=made.id_object),
                TPM2B_ENCRYPTED_SECRET(secret=made.secret),
                session1=ESYS_TR.PASSWORD,
                session2=auth,
            )
        assert bytes(recovered) == secret

        # Bound to another Name, the TPM refuses (TPM_RC_INTEGRITY).
        other_name = st.u16(st.ALG_SHA256) + hashlib.sha256(b"another key").digest()
        wrong = make_credential(ak.ek_public, secret, other_name)
        with ek_auth(tpm_esapi, ek_handle) as auth, pytest.raises(TSS2_Exception, match="integrity"):
            tpm_esapi.activate_credential(
                ak.handle,
                ek,
                TPM2B_ID_OBJECT(credential=wrong.id_object),
                TPM2B_ENCRYPTED_SECRET(secret=wrong.secret),
                session1=ESYS_TR.PASSWORD,
                session2=auth,
            )


@pytest.mark.parametrize("ek_handle", [EK_RSA, EK_ECC], ids=["rsa2048", "ecc-p384"])
def test_ek_certificate_from_nv(swtpm: object, tpm_esapi: ESAPI, ek_handle: int) -> None:
    der = NVReadEK(tpm_esapi)(EK_CERT_NV[ek_handle])
    root, issuer = (p.read_bytes() for p in swtpm.ek_ca_certs)  # type: ignore[attr-defined]
    _, ek_public = read_ek(tpm_esapi, ek_handle)
    now = datetime.now(UTC)
    result = verify_ek_certificate(der, roots=[root], intermediates=[issuer], now=now, ek_public=ek_public)
    # swtpm_localca writes the TPM attributes into the SAN directoryName, as the TCG EK profile asks.
    assert result.tpm_manufacturer is not None
    assert result.tpm_model is not None
    assert len(result.chain) == 3
    # Every configured CA certificate is a trust anchor, self-signed or not: trusting the issuing CA alone
    # works; the root alone does not (the intermediate is missing), nor does another EK's public key.
    assert len(verify_ek_certificate(der, roots=[issuer], now=now).chain) == 2
    with pytest.raises(EvidenceError) as err:
        verify_ek_certificate(der, roots=[root], now=now)
    assert err.value.reason == "tpm-cert-chain-invalid"
    other = EK_ECC if ek_handle == EK_RSA else EK_RSA
    with pytest.raises(EvidenceError) as err:
        verify_ek_certificate(
            der, roots=[root], intermediates=[issuer], now=now, ek_public=read_ek(tpm_esapi, other)[1]
        )
    assert err.value.reason == "tpm-cert-key-mismatch"


def _spec_id_header() -> bytes:
    algs = [(st.ALG_SHA1, 20), (st.ALG_SHA256, 32)]
    body = el.SPEC_ID_EVENT03 + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
    body += b"".join(struct.pack("<HH", a, n) for a, n in algs) + b"\x00"
    return struct.pack("<II20sI", 0, el.EV_NO_ACTION, bytes(20), len(body)) + body


def test_event_log_replays_against_a_real_quote(swtpm: object) -> None:
    """Extend PCRs 8-15 as a boot loader would while writing a crypto-agile log, then verify the quote
    and the log together."""
    swtpm.restart()  # type: ignore[attr-defined]  # clean PCRs: other tests extend some of them
    with ESAPI(swtpm.tcti) as ectx:  # type: ignore[attr-defined]
        log = _spec_id_header()
        for pcr in range(8, 16):
            for n, (etype, data) in enumerate(
                [
                    (el.EV_EFI_ACTION, f"step {pcr}".encode()),
                    (el.EV_POST_CODE, os.urandom(24)),
                    (el.EV_SEPARATOR, bytes(4)),
                ]
            ):
                sha1, sha256 = hashlib.sha1(data).digest(), hashlib.sha256(data).digest()  # noqa: S324 - PCR bank
                if n == 1:
                    sha256 = hashlib.sha256(data + b"!").digest()  # a loader-defined digest, not of the data
                    sha1 = hashlib.sha1(data + b"!").digest()  # noqa: S324
                ectx.pcr_extend(
                    ESYS_TR.parse(f"PCR{pcr}"),
                    TPML_DIGEST_VALUES(
                        [
                            TPMT_HA(hashAlg=TPM2_ALG.SHA1, digest=TPMU_HA(sha1=sha1)),
                            TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=sha256)),
                        ]
                    ),
                )
                log += struct.pack("<III", pcr, etype, 2) + struct.pack("<H", st.ALG_SHA1) + sha1
                log += struct.pack("<H", st.ALG_SHA256) + sha256 + struct.pack("<I", len(data)) + data
        with tpm_ak(ectx, "ecc") as ak:
            nonce = os.urandom(32)
            attest, signature = quote(ectx, ak, SELECTION, nonce)
            pcrs = read_pcrs(ectx, SELECTION)
            verified = verify_quote(
                attest, signature, ak.verifier_ak(), expected_extra_data=nonce, pcr_values=pcrs
            )
        result = el.verify_event_log(log, verified.pcrs)
        assert sorted(p for _, p in result.verified) == list(range(8, 16))
        assert result.claims["tpm.eventlog.digest_mismatches"] == []
        # One event dropped from the log: the replay no longer matches the TPM.
        parsed = el.parse_event_log(log)
        cut = parsed.events[5].offset
        shortened = log[:cut] + log[parsed.events[6].offset :]
        with pytest.raises(EvidenceError) as err:
            el.verify_event_log(shortened, verified.pcrs)
        assert err.value.reason == "eventlog-replay-mismatch"
        assert "PCR sha256:9 " in err.value.message
