"""The configfs-tsm collectors (SEV-SNP, TDX) against a simulated configfs-tsm fed with REAL reports and
quotes from tests/vectors, their evidence checked by the keyserver's own dispatch and verifiers at the
vector's date; every way the kernel's answer can be wrong is refused with a typed error; hypothesis on the
GHCB certificate-table parser.

No SEV-SNP or TDX guest is available here, so the kernel side of configfs-tsm is simulated
(:class:`SimulatedTsm`): it is the collector's own :class:`ConfigfsTsm` with the kernel's reactions added
to its system calls, over a real directory — mkdir populates the attributes, writes bump ``generation``,
the first read after a write "generates" the report. The report it returns is a fixed real one, so
the binding the collector writes is that report's own REPORT_DATA: the hardware signature is real and
cannot be re-made for another binding.
"""

from __future__ import annotations

import base64
import errno
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as hs
from joserfc.jwk import ECKey
from sqlalchemy.ext.asyncio import AsyncSession

from clients.loader.collectors import Collector
from clients.loader.collectors.certtable import (
    ARK_GUID,
    ASK_GUID,
    ENTRY_SIZE,
    VCEK_GUID,
    VLEK_GUID,
    parse_cert_table,
    single_der_value,
)
from clients.loader.collectors.configfs import TSM_INBLOB_MAX, ConfigfsTsm
from clients.loader.collectors.errors import (
    BindingInvalid,
    CertTableMalformed,
    CollectorConfigInvalid,
    ReportDataMismatch,
    SnpCertificateMissing,
    TsmAttributeMissing,
    TsmGenerationRace,
    TsmMalformed,
    TsmProviderMismatch,
    TsmReportFailed,
    TsmUnavailable,
)
from clients.loader.collectors.tsm import TsmCollector
from keyserver.errors import EvidenceError
from keyserver.evidence.dispatch import verify_evidence
from keyserver.evidence.snp.certs import load_der_certificate
from tests.snp.helpers import utc, vec
from tests.tdx.helpers import V4_QUOTES, V5_QUOTES, expected_vectors

ATTRIBUTES = ("inblob", "outblob", "auxblob", "provider", "generation", "privlevel", "privlevel_floor")
ANY_JWK = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)


def build_cert_table(certificates: dict[uuid.UUID, bytes]) -> bytes:
    """The table for ``certificates``, laid out as a host would: table, terminator, then the data in order.
    (Here, not in the loader's certtable module: the loader only reads such tables.)"""
    table_size = ENTRY_SIZE * (len(certificates) + 1)
    header, body = b"", b""
    for guid, data in certificates.items():
        header += guid.bytes + struct.pack("<II", table_size + len(body), len(data))
        body += data
    return header + bytes(ENTRY_SIZE) + body


# --- the simulated kernel side ---------------------------------------------------------------------------


@dataclass
class Hardware:
    """What the TSM answers: a real report (and the host's certificate table)."""

    provider: str
    outblob: bytes
    auxblob: bytes | None = None  # None: the kernel shows no auxblob attribute
    privlevel_floor: int = 0


@dataclass
class EntryState:
    generation: int = 0
    read_generation: int = 0


@dataclass
class SimulatedTsm(ConfigfsTsm):
    """configfs-tsm's kernel side over a plain directory (see the module docstring). ``interfering_writes``:
    how many times another agent writes its own inblob to the entry right after the collector's write.
    ``failing_read``: an errno the kernel answers the outblob read with."""

    directory: Path
    hardware: Hardware
    interfering_writes: int = 0
    registered: bool = True
    failing_read: int | None = None
    report_inputs: list[bytes] = field(default_factory=list)  # the inblob each report was made from
    writes: list[tuple[str, bytes]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    states: dict[Path, EntryState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.directory)

    def _mkdir(self, path: Path) -> None:
        if not self.registered:
            raise OSError(errno.ENXIO, os.strerror(errno.ENXIO), str(path))
        super()._mkdir(path)
        files = {
            "provider": f"{self.hardware.provider}\n".encode(),
            "generation": b"0\n",
            "privlevel_floor": f"{self.hardware.privlevel_floor}\n".encode(),
            "inblob": b"",
            "outblob": b"",
            "privlevel": b"",
        }
        if self.hardware.auxblob is not None:
            files["auxblob"] = b""
        for name, content in files.items():
            (path / name).write_bytes(content)
        self.states[path] = EntryState()

    def _bump(self, entry: Path) -> None:
        state = self.states[entry]
        state.generation += 1
        (entry / "generation").write_bytes(f"{state.generation}\n".encode())

    def _write_file(self, path: Path, data: bytes) -> None:
        if path.name not in ("inblob", "privlevel"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        if path.name == "inblob" and len(data) > TSM_INBLOB_MAX:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
        if path.name == "privlevel" and not self.hardware.privlevel_floor <= int(data) <= 3:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
        super()._write_file(path, data)
        self._bump(path.parent)
        self.writes.append((path.name, data))
        if path.name == "inblob" and self.interfering_writes > 0:
            self.interfering_writes -= 1
            (path.parent / "inblob").write_bytes(b"another agent's nonce".ljust(64, b"\x00"))
            self._bump(path.parent)

    def _read_file(self, path: Path, limit: int) -> bytes:
        entry, state = path.parent, self.states.get(path.parent)
        if path.name in ("outblob", "auxblob") and state is not None:
            if self.failing_read is not None:
                raise OSError(self.failing_read, os.strerror(self.failing_read), str(path))
            if state.read_generation != state.generation:  # the report is made now, from inblob
                inblob = (entry / "inblob").read_bytes()
                if self.hardware.provider == "sev_guest" and len(inblob) != TSM_INBLOB_MAX:
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
                self.report_inputs.append(inblob)
                (entry / "outblob").write_bytes(self.hardware.outblob)
                if self.hardware.auxblob is not None:
                    (entry / "auxblob").write_bytes(self.hardware.auxblob)
                state.read_generation = state.generation
        return super()._read_file(path, limit)

    def _rmdir(self, path: Path) -> None:
        for name in ATTRIBUTES:  # configfs removes an item's attributes with it
            (path / name).unlink(missing_ok=True)
        super()._rmdir(path)
        self.removed.append(path.name)


# --- real vectors ----------------------------------------------------------------------------------------


def pem_chain_der(path: str) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(vec(path))]


@dataclass(frozen=True)
class SnpVector:
    name: str
    report: str
    certificate: str
    signing_key: uuid.UUID
    chain: str  # PEM: ASK (or ASVK) then ARK
    now: datetime


SNP_VECTORS = [
    SnpVector(
        "gsg-milan",
        "snp/gsg-milan/attestation.bin",
        "snp/gsg-milan/vcek.testcer",
        VCEK_GUID,
        "roots/amd/ask_ark_milan.pem",
        utc("2022-09-24T01:00:00Z"),
    ),
    SnpVector(
        "trustee-milan-vcek",
        "snp/trustee-milan-vcek/test-report.bin",
        "snp/trustee-milan-vcek/test-vcek.der",
        VCEK_GUID,
        "roots/amd/ask_ark_milan.pem",
        utc("2024-01-01T00:00:00Z"),
    ),
    SnpVector(
        "trustee-milan-vlek-aws",
        "snp/trustee-milan-vlek-aws/test-vlek-report.bin",
        "snp/trustee-milan-vlek-aws/test-vlek.der",
        VLEK_GUID,
        "roots/amd/ask_ark_milan_vlek.pem",
        utc("2025-06-01T00:00:00Z"),
    ),
    SnpVector(
        "trustee-e2e-genoa",
        "snp/trustee-e2e-genoa-from-json/report-reconstructed-from-evidence-json.bin",
        "snp/trustee-e2e-genoa-from-json/vcek-from-evidence-json.der",
        VCEK_GUID,
        "roots/amd/ask_ark_genoa.pem",
        utc("2026-01-01T00:00:00Z"),
    ),
]
GSG = SNP_VECTORS[0]


def host_table(v: SnpVector, leaf_guid: uuid.UUID | None = None) -> bytes:
    """The certificate table a host supplies: the signing key's certificate, then ASK and ARK."""
    ask, ark = pem_chain_der(v.chain)
    return build_cert_table({leaf_guid or v.signing_key: vec(v.certificate), ASK_GUID: ask, ARK_GUID: ark})


def snp_hardware(v: SnpVector, auxblob: bytes | None = None) -> Hardware:
    return Hardware("sev_guest", vec(v.report), host_table(v) if auxblob is None else auxblob)


def report_data(report: bytes) -> bytes:
    return report[0x50:0x90]


def tdx_report_data(name: str) -> bytes:
    return bytes.fromhex(expected_vectors()[name]["report_data"])


def tdx_now(name: str) -> datetime:
    start = utc(expected_vectors()[name]["valid_window"].split(" .. ")[0])
    return start + timedelta(days=1)


async def dispatch(evidence: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The keyserver's own entry point for release evidence. SEV-SNP and TDX need no database (only a
    TPM quote's AK is looked up), and their binding is checked apart from verification."""
    verified = await verify_evidence(
        cast(AsyncSession, None), uuid.uuid4(), evidence, nonce=bytes(32), ephemeral_jwk=ANY_JWK, now=now
    )
    return dict(verified.claims)


def entries_left(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# --- SEV-SNP ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v", SNP_VECTORS, ids=[v.name for v in SNP_VECTORS])
async def test_snp_evidence_verifies_with_the_keyserver(tmp_path: Path, v: SnpVector) -> None:
    tsm = SimulatedTsm(tmp_path, snp_hardware(v))
    collector = TsmCollector("sev-snp", configfs=tsm)
    assert isinstance(collector, Collector)
    bound = report_data(vec(v.report))
    evidence = collector.collect(bound)
    # Exactly the binding went to inblob, once; the entry is gone afterwards.
    assert tsm.writes == [("inblob", bound)]
    assert tsm.report_inputs == [bound]
    assert len(tsm.removed) == 1
    assert entries_left(tmp_path) == []
    assert set(evidence) == {"tee", "report", "certificate"}
    assert base64.b64decode(evidence["certificate"]) == vec(v.certificate)
    claims = await dispatch(evidence, v.now)
    assert claims["report_data"] == bound.hex()
    assert claims["snp.signing_key"] == ("vlek" if v.signing_key == VLEK_GUID else "vcek")
    # The same evidence a second before the signing certificate's validity is refused: the date matters.
    not_before = load_der_certificate(vec(v.certificate), "signing key").not_valid_before_utc
    with pytest.raises(EvidenceError):
        await dispatch(evidence, not_before - timedelta(seconds=1))


async def test_snp_privlevel_is_written_and_counted(tmp_path: Path) -> None:
    hardware = snp_hardware(GSG)
    hardware.privlevel_floor = 1
    tsm = SimulatedTsm(tmp_path, hardware)
    bound = report_data(vec(GSG.report))
    evidence = TsmCollector("sev-snp", configfs=tsm, privlevel=2, product="Milan").collect(bound)
    assert tsm.writes == [("inblob", bound), ("privlevel", b"2")]
    assert evidence["product"] == "Milan"
    assert (await dispatch(evidence, GSG.now))["report_data"] == bound.hex()
    with pytest.raises(CollectorConfigInvalid, match="below this guest's privlevel_floor 1"):
        TsmCollector("sev-snp", configfs=SimulatedTsm(tmp_path, hardware), privlevel=0).collect(bound)
    assert entries_left(tmp_path) == []


def test_snp_certificate_missing_is_refused(tmp_path: Path) -> None:
    bound = report_data(vec(GSG.report))
    ask, ark = pem_chain_der(GSG.chain)
    cases = {
        "no table": b"",
        "only ASK and ARK": build_cert_table({ASK_GUID: ask, ARK_GUID: ark}),
        "a VLEK for a VCEK-signed report": host_table(GSG, leaf_guid=VLEK_GUID),
    }
    for case, auxblob in cases.items():
        tsm = SimulatedTsm(tmp_path, snp_hardware(GSG, auxblob))
        with pytest.raises(SnpCertificateMissing, match="VCEK") as refused:
            TsmCollector("sev-snp", configfs=tsm).collect(bound)
        assert "63da758d-e664-4564-adc5-f4b93be8accd" in refused.value.message, case
    # Without the requirement the report goes alone (the keyserver will then need the certificate).
    tsm = SimulatedTsm(tmp_path, snp_hardware(GSG, b""))
    assert set(TsmCollector("sev-snp", configfs=tsm, require_certificate=False).collect(bound)) == {
        "tee",
        "report",
    }
    # No auxblob attribute at all: a kernel without it cannot give SEV-SNP evidence.
    tsm = SimulatedTsm(tmp_path, Hardware("sev_guest", vec(GSG.report), auxblob=None))
    with pytest.raises(TsmAttributeMissing, match="auxblob"):
        TsmCollector("sev-snp", configfs=tsm).collect(bound)
    assert entries_left(tmp_path) == []


def test_snp_malformed_reports_and_tables_are_refused(tmp_path: Path) -> None:
    report = vec(GSG.report)
    bound = report_data(report)
    signer_none = bytearray(report)
    signer_none[0x48] |= 0x7 << 2
    table = host_table(GSG)

    def refused(hardware: Hardware, error: type[Exception], match: str) -> None:
        with pytest.raises(error, match=match):
            TsmCollector("sev-snp", configfs=SimulatedTsm(tmp_path, hardware)).collect(bound)

    refused(Hardware("sev_guest", report[:-1], table), TsmMalformed, "1183 bytes")
    refused(Hardware("sev_guest", report + b"\x00", table), TsmMalformed, "1185 bytes")
    refused(Hardware("sev_guest", bytes(4) + report[4:], table), TsmMalformed, "version 0")
    refused(Hardware("sev_guest", bytes(signer_none), table), TsmMalformed, "SIGNING_KEY is 7")
    refused(Hardware("sev_guest", report, table[:-1]), CertTableMalformed, "spans bytes")
    refused(Hardware("sev_guest", report, table[:ENTRY_SIZE]), CertTableMalformed, "no all-zero terminating")
    not_der = build_cert_table({VCEK_GUID: vec(GSG.certificate) + b"\x00"})
    refused(Hardware("sev_guest", report, not_der), CertTableMalformed, "not one DER certificate")
    assert entries_left(tmp_path) == []


def test_the_report_must_carry_the_binding(tmp_path: Path) -> None:
    other = bytes(reversed(report_data(vec(GSG.report))))
    with pytest.raises(ReportDataMismatch, match="not the binding"):
        TsmCollector("sev-snp", configfs=SimulatedTsm(tmp_path, snp_hardware(GSG))).collect(other)
    quote = vec(V4_QUOTES[0])
    with pytest.raises(ReportDataMismatch, match="REPORTDATA"):
        TsmCollector("tdx", configfs=SimulatedTsm(tmp_path, Hardware("tdx_guest", quote))).collect(bytes(64))
    assert entries_left(tmp_path) == []


# --- TDX --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", V4_QUOTES)
async def test_tdx_evidence_verifies_with_the_keyserver(tmp_path: Path, name: str) -> None:
    tsm = SimulatedTsm(tmp_path, Hardware("tdx_guest", vec(name)))
    bound = tdx_report_data(name)
    evidence = TsmCollector("tdx", configfs=tsm).collect(bound)
    assert tsm.writes == [("inblob", bound)]
    assert tsm.report_inputs == [bound]
    assert entries_left(tmp_path) == []
    assert evidence == {"tee": "tdx", "quote": base64.b64encode(vec(name)).decode()}
    claims = await dispatch(evidence, tdx_now(name))
    assert claims["report_data"] == bound.hex()


@pytest.mark.parametrize("name", V5_QUOTES)
async def test_tdx_v5_quotes_are_collected_and_left_to_the_keyserver(tmp_path: Path, name: str) -> None:
    # The v5 layout (body descriptor, TDX 1.5 body) puts REPORTDATA elsewhere: finding the binding there
    # is what this checks; the keyserver verifies v4 only and says so.
    evidence = TsmCollector("tdx", configfs=SimulatedTsm(tmp_path, Hardware("tdx_guest", vec(name)))).collect(
        tdx_report_data(name)
    )
    with pytest.raises(EvidenceError) as refused:
        await dispatch(evidence, tdx_now(name))
    assert refused.value.reason == "unsupported-version"


def test_tdx_malformed_quotes_are_refused(tmp_path: Path) -> None:
    name = V4_QUOTES[0]
    quote, bound = vec(name), tdx_report_data(name)
    signature_length = int.from_bytes(quote[632:636], "little")
    end_of_signature = 636 + signature_length
    bad_tee = quote[:4] + (0).to_bytes(4, "little") + quote[8:]
    version_3 = (3).to_bytes(2, "little") + quote[2:]
    cases: list[tuple[bytes, str]] = [
        (quote[: end_of_signature - 1], "truncated"),
        (quote[:600], "too short for its TD report body"),
        (quote[:20], "too short for a TDX quote"),
        (bad_tee, "TEE type 0x0"),
        (version_3, "version 3"),
        (b"", "too short"),
    ]
    for outblob, match in cases:
        with pytest.raises(TsmMalformed, match=match):
            TsmCollector("tdx", configfs=SimulatedTsm(tmp_path, Hardware("tdx_guest", outblob))).collect(
                bound
            )
    # Exactly the declared signature data, without the vector's trailing bytes, is a whole quote.
    whole = TsmCollector(
        "tdx", configfs=SimulatedTsm(tmp_path, Hardware("tdx_guest", quote[:end_of_signature]))
    )
    assert base64.b64decode(whole.collect(bound)["quote"]) == quote[:end_of_signature]
    assert entries_left(tmp_path) == []


# --- the configfs-tsm protocol ----------------------------------------------------------------------------


def test_provider_mismatch_is_refused_before_writing(tmp_path: Path) -> None:
    tdx_guest = SimulatedTsm(tmp_path, Hardware("tdx_guest", vec(V4_QUOTES[0])))
    with pytest.raises(TsmProviderMismatch, match=r"'tdx_guest' \(a tdx guest\).*sev-snp"):
        TsmCollector("sev-snp", configfs=tdx_guest).collect(bytes(64))
    sev_guest = SimulatedTsm(tmp_path, snp_hardware(GSG))
    with pytest.raises(TsmProviderMismatch, match="'sev_guest'"):
        TsmCollector("tdx", configfs=sev_guest).collect(bytes(64))
    arm = SimulatedTsm(tmp_path, Hardware("arm_cca_guest", b""))
    with pytest.raises(TsmProviderMismatch, match="'arm_cca_guest', but"):
        TsmCollector("tdx", configfs=arm).collect(bytes(64))
    assert tdx_guest.writes == sev_guest.writes == arm.writes == []
    assert entries_left(tmp_path) == []


def test_a_concurrent_writer_is_detected_and_the_report_retried(tmp_path: Path) -> None:
    bound = report_data(vec(GSG.report))
    tsm = SimulatedTsm(tmp_path, snp_hardware(GSG), interfering_writes=2)
    evidence = TsmCollector("sev-snp", configfs=tsm, attempts=3).collect(bound)
    assert evidence["report"] == base64.b64encode(vec(GSG.report)).decode()
    assert len(tsm.removed) == 3  # two spoilt entries, then ours; each removed
    assert tsm.report_inputs[-1] == bound
    assert entries_left(tmp_path) == []

    always = SimulatedTsm(tmp_path, snp_hardware(GSG), interfering_writes=3)
    with pytest.raises(TsmGenerationRace, match="3 times running"):
        TsmCollector("sev-snp", configfs=always, attempts=3).collect(bound)
    assert len(always.removed) == 3
    assert entries_left(tmp_path) == []


def test_kernel_refusals_are_typed(tmp_path: Path) -> None:
    bound = report_data(vec(GSG.report))

    def collect(tsm: ConfigfsTsm) -> dict[str, Any]:
        return TsmCollector("sev-snp", configfs=tsm).collect(bound)

    with pytest.raises(TsmReportFailed, match="Input/output error"):
        collect(SimulatedTsm(tmp_path, snp_hardware(GSG), failing_read=errno.EIO))
    with pytest.raises(TsmUnavailable, match="no TSM provider"):
        collect(SimulatedTsm(tmp_path, snp_hardware(GSG), registered=False))
    with pytest.raises(TsmUnavailable, match="does not exist"):
        collect(ConfigfsTsm(tmp_path / "not-mounted"))
    with pytest.raises(TsmUnavailable, match="does not exist"):
        TsmCollector("tdx", root=tmp_path / "not-mounted").collect(bytes(64))
    assert entries_left(tmp_path) == []


def test_malformed_attributes_are_refused(tmp_path: Path) -> None:
    bound = report_data(vec(GSG.report))

    class Garbled(SimulatedTsm):
        def _mkdir(self, path: Path) -> None:
            super()._mkdir(path)
            (path / "generation").write_bytes(b"0x10\n")

    class OversizedOutblob(SimulatedTsm):
        def _read_file(self, path: Path, limit: int) -> bytes:
            data = super()._read_file(path, limit)
            return data + bytes(40 * 1024) if path.name == "outblob" else data

    cases: list[tuple[Callable[[Path, Hardware], ConfigfsTsm], str]] = [
        (Garbled, "'0x10', not a decimal number"),
        (OversizedOutblob, "larger than the 32768 bytes"),
    ]
    for make, match in cases:
        with pytest.raises(TsmMalformed, match=match):
            TsmCollector("sev-snp", configfs=make(tmp_path, snp_hardware(GSG))).collect(bound)
    assert entries_left(tmp_path) == []


def test_binding_and_configuration_are_checked(tmp_path: Path) -> None:
    tsm = SimulatedTsm(tmp_path, snp_hardware(GSG))
    with pytest.raises(BindingInvalid, match="63 bytes"):
        TsmCollector("sev-snp", configfs=tsm).collect(bytes(63))
    assert tsm.writes == []
    for kwargs in ({"tee": "tpm"}, {"tee": "tdx", "privlevel": 0}, {"tee": "sev-snp", "privlevel": 4}):
        with pytest.raises(CollectorConfigInvalid):
            TsmCollector(**kwargs)
    with pytest.raises(CollectorConfigInvalid):
        TsmCollector("tdx", product="Milan")


# --- the GHCB certificate table ---------------------------------------------------------------------------


def test_cert_table_guids_are_stored_in_text_order() -> None:
    # The wire bytes of the VCEK GUID are its hex digits in the order written (uuid_parse), not the
    # mixed-endian Microsoft GUID layout: pinned here so that build and parse cannot drift together.
    table = build_cert_table({VCEK_GUID: b"\x30\x00"})
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert table[16:24] == (48).to_bytes(4, "little") + (2).to_bytes(4, "little")
    assert table[24:48] == bytes(24)
    assert parse_cert_table(table) == {VCEK_GUID: b"\x30\x00"}
    assert parse_cert_table(b"") == {}


def test_cert_table_refusals() -> None:
    good = build_cert_table({VCEK_GUID: b"vcek", ASK_GUID: b"ask"})
    zero_guid_nonzero_offset = bytes(16) + (72).to_bytes(4, "little") + bytes(4) + bytes(24)
    into_table = VCEK_GUID.bytes + (0).to_bytes(4, "little") + (4).to_bytes(4, "little") + bytes(24)
    empty = VCEK_GUID.bytes + (48).to_bytes(4, "little") + bytes(4) + bytes(24)
    twice = good[:24] + good[:24] + bytes(24) + b"vcek"
    twice = twice[:16] + (72).to_bytes(4, "little") + twice[20:40] + (72).to_bytes(4, "little") + twice[44:]
    cases = {
        "only the all-zero terminator may have the zero GUID": zero_guid_nonzero_offset,
        "inside the 48-byte table": into_table,
        "is empty": empty,
        "appears twice": twice,
        "no all-zero terminating entry": good[:40],
        "spans bytes": good[:-1],
    }
    for match, blob in cases.items():
        with pytest.raises(CertTableMalformed, match=match):
            parse_cert_table(blob)


GUIDS = hs.uuids()
TABLES = hs.dictionaries(GUIDS, hs.binary(min_size=1, max_size=64), max_size=6)


@given(hs.binary(max_size=512))
def test_cert_table_parser_only_raises_its_error(blob: bytes) -> None:
    try:
        parsed = parse_cert_table(blob)
    except CertTableMalformed:
        return
    for data in parsed.values():
        assert data
        assert data in blob


@given(TABLES)
def test_cert_table_round_trips(certificates: dict[uuid.UUID, bytes]) -> None:
    assert parse_cert_table(build_cert_table(certificates)) == certificates


@given(TABLES.filter(bool), hs.data())
def test_every_truncated_cert_table_is_refused(
    certificates: dict[uuid.UUID, bytes], data: hs.DataObject
) -> None:
    table = build_cert_table(certificates)
    cut = data.draw(hs.integers(min_value=1, max_value=len(table) - 1))
    with pytest.raises(CertTableMalformed):
        parse_cert_table(table[:cut])


@given(hs.binary(max_size=300))
def test_single_der_value_accepts_exactly_one_sequence(content: bytes) -> None:
    length = len(content)
    encoded = (
        bytes([length])
        if length < 0x80
        else bytes([0x81 if length < 0x100 else 0x82]) + length.to_bytes(1 if length < 0x100 else 2, "big")
    )
    der = b"\x30" + encoded + content
    assert single_der_value(der)
    assert not single_der_value(der + b"\x00")
    assert not single_der_value(der[:-1])
    assert not single_der_value(b"\x31" + der[1:])


def test_real_certificates_are_single_der_values() -> None:
    for v in SNP_VECTORS:
        assert single_der_value(vec(v.certificate)), v.name
