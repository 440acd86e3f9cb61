"""The loader's Nitro collector against a simulated NSM (the ``/dev/nsm`` ioctl cannot run outside an
enclave): a simulation that signs a document for the request with a throwaway Nitro-shaped chain verifies
through the keyserver's dispatch and binds; simulations fed with the real AWS documents (MANIFEST §6),
which answer someone else's nonce, are refused by the collector itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from sqlalchemy.ext.asyncio import AsyncSession

from clients.loader.collectors.errors import (
    BindingInvalid,
    CollectorConfigInvalid,
    NsmError,
    ReportDataMismatch,
)
from clients.loader.collectors.nitro import NSM_IOCTL_REQUEST, NitroCollector, nsm_device
from keyserver.binding import binding
from keyserver.errors import EvidenceError
from keyserver.evidence.dispatch import check_evidence_binding, verify_evidence
from tests.cloud.nitro_synth import SyntheticNitro
from tests.cloud.vectors import NITRO

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")


def _jwk() -> dict[str, Any]:
    return dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False))


class SimulatedNsm:
    """Answers Attestation requests as the NSM does, signing with a synthetic chain; records requests."""

    def __init__(self) -> None:
        self.pki = SyntheticNitro.create()
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: bytes) -> bytes:
        decoded = cbor2.loads(request)
        self.requests.append(decoded)
        ask = decoded["Attestation"]
        document = self.pki.document(
            nonce=ask["nonce"], user_data=ask["user_data"], public_key=ask["public_key"]
        )
        return bytes(cbor2.dumps({"Attestation": {"document": document}}))


async def test_collected_document_verifies_and_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    nsm = SimulatedNsm()
    monkeypatch.setattr("keyserver.evidence.nitro.verify.aws_nitro_root", lambda: nsm.pki.root_der)
    nonce, jwk = bytes(range(32)), _jwk()
    evidence = NitroCollector(nsm, user_data=b"loader v1").collect(binding(nonce, jwk))
    assert nsm.requests[0]["Attestation"]["nonce"] == binding(nonce, jwk)
    verified = await verify_evidence(
        cast(AsyncSession, None),
        uuid.uuid4(),
        evidence,
        nonce=nonce,
        ephemeral_jwk=jwk,
        now=datetime.now(UTC),
    )
    check_evidence_binding(verified, nonce, jwk)
    assert verified.claims["nitro.user_data"] == b"loader v1".hex()
    with pytest.raises(EvidenceError) as info:
        check_evidence_binding(verified, nonce, _jwk())
    assert info.value.reason == "binding-mismatch"


@pytest.mark.parametrize("name", sorted(NITRO))
def test_real_documents_answering_another_nonce_are_refused(name: str) -> None:
    document = NITRO[name].document
    collector = NitroCollector(lambda request: bytes(cbor2.dumps({"Attestation": {"document": document}})))
    with pytest.raises(ReportDataMismatch):
        collector.collect(bytes(64))


@pytest.mark.parametrize(
    "response",
    [
        b"\xff",
        cbor2.dumps({"Error": "InvalidArgument"}),
        cbor2.dumps({"Attestation": {}}),
        cbor2.dumps({"Attestation": {"document": b"not a document"}}),
        cbor2.dumps([1]),
    ],
)
def test_bad_nsm_responses_are_refused(response: bytes) -> None:
    with pytest.raises(NsmError):
        NitroCollector(lambda request: response).collect(bytes(64))


def test_configuration_and_binding_are_checked(tmp_path: Any) -> None:
    with pytest.raises(CollectorConfigInvalid):
        NitroCollector(lambda r: b"", user_data=bytes(513))
    with pytest.raises(CollectorConfigInvalid):
        NitroCollector(lambda r: b"", public_key=b"")
    with pytest.raises(BindingInvalid):
        NitroCollector(lambda r: b"").collect(b"short")
    # Outside an enclave there is no /dev/nsm: a clear refusal, not a crash.
    with pytest.raises(NsmError, match="cannot open"):
        NitroCollector(nsm_device(tmp_path / "nsm")).collect(bytes(64))
    assert NSM_IOCTL_REQUEST == 0xC0200A00  # _IOWR(0x0A, 0, struct nsm_message) on 64-bit Linux


def test_the_loader_configuration_offers_the_cloud_collectors(tmp_path: Any) -> None:
    """The TEE is the measured configuration's ``"tee"``; the run-time arguments only say where things are."""
    import argparse

    from clients.loader.collectors.azure import AzureVtpmCollector
    from clients.loader.main import collector_for

    vcek = tmp_path / "vcek.pem"
    vcek.write_bytes(b"vcek bytes")
    args = argparse.Namespace(tcti="swtpm:port=1", vcek=str(vcek))
    config = argparse.Namespace(tee="azure-snp-vtpm", gpus=False, pcr_selection="sha256:10")
    azure = collector_for(args, cast(Any, config))
    assert isinstance(azure, AzureVtpmCollector)
    assert (azure.tee, azure.vcek) == ("azure-snp-vtpm", b"vcek bytes")
    config = argparse.Namespace(tee="aws-nitro", gpus=False, pcr_selection="sha256:10")
    assert isinstance(collector_for(args, cast(Any, config)), NitroCollector)
