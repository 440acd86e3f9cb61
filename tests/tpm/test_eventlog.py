"""Event logs: every log among the vectors against its expected PCRs, the must-parse/must-reject ones, the
UEFI claims, comparison with quoted PCRs, and hostile input."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as s

from keyserver.errors import EvidenceError
from keyserver.evidence.tpm import eventlog as el
from tests.fuzzing import fuzz_settings

from .helpers import VECTORS, vec, windows_pcrs, windows_vector

pytestmark = pytest.mark.fuzz

LOGS = VECTORS / "tpm-eventlog"

REJECTED = {
    "keylime/binary_bios_measurements-bogus": "eventlog-malformed",  # ASCII garbage (keylime: malformed)
    "keylime/binary_bios_measurements-empty": "eventlog-empty",  # 0 bytes (keylime: malformed)
    # tpm2-tools' fixture declares EventSize 37 for a Spec ID event whose vendorInfoSize (4) makes it 41
    # bytes; tpm2-tools frames by the structure and ignores EventSize. Two framings of the same bytes is
    # exactly the ambiguity a verifier must not resolve by guessing: rejected on purpose.
    "tpm2-tools/specid-vendordata.bin": "eventlog-malformed",
}


def _all_logs() -> list[str]:
    out = []
    for folder in sorted(p for p in LOGS.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if not f.name.endswith((".json", ".yaml", ".warn")):
                out.append(f"{folder.name}/{f.name}")
    return out


ALL_LOGS = _all_logs()


def read_log(rel: str) -> bytes:
    data = (LOGS / rel).read_bytes()
    return base64.b64decode(data) if rel.endswith(".b64") else data


def expected_pcrs(rel: str) -> dict[str, dict[int, str]]:
    folder, name = rel.split("/")
    path = LOGS / folder / "expected-pcrs.json"
    if not path.exists():
        return {}
    entry = json.loads(path.read_text())["logs"].get(name, {})
    return {b: {int(i): v for i, v in pcrs.items()} for b, pcrs in entry.get("pcrs", {}).items()}


def test_every_vector_log_is_covered() -> None:
    assert len(ALL_LOGS) == 29  # 4 go-attestation, 10 go-tpm-tools, 5 keylime, 10 tpm2-tools


@pytest.mark.parametrize("rel", ALL_LOGS)
def test_vector_log(rel: str) -> None:
    data = read_log(rel)
    if rel in REJECTED:
        with pytest.raises(EvidenceError) as err:
            el.parse_event_log(data)
        assert err.value.reason == REJECTED[rel]
        return
    log = el.parse_event_log(data)
    replayed = el.replay(log)
    compared = 0
    for bank, pcrs in expected_pcrs(rel).items():
        for index, value in pcrs.items():
            # Only PCRs the log extends are comparable (MANIFEST: PCR 10 is IMA, 17-22 are D-RTM).
            if index in replayed.get(bank, {}):
                assert replayed[bank][index].hex() == value, f"{bank}:{index}"
                compared += 1
    if expected_pcrs(rel):
        assert compared > 0


@pytest.mark.parametrize("rel", [r for r in ALL_LOGS if r.startswith("tpm2-tools/") and r not in REJECTED])
def test_tpm2_tools_event_counts(rel: str) -> None:
    """Same number of events as tpm2_eventlog printed (PCRIndex lines of the expected YAML)."""
    yaml = (LOGS / f"{rel}.yaml").read_text()
    log = el.parse_event_log(read_log(rel))
    assert yaml.count("PCRIndex:") == len(log.events) + (1 if log.crypto_agile else 0)


def test_formats_and_banks() -> None:
    legacy = {r for r in ALL_LOGS if r not in REJECTED and not el.parse_event_log(read_log(r)).crypto_agile}
    assert legacy == {
        "go-attestation/option_rom_eventlog",
        "go-attestation/short_no_action_eventlog",
        "go-tpm-tools/debian-10.bin",
        "tpm2-tools/event-uefi-sha1-log.bin",
    }
    log = el.parse_event_log(read_log("tpm2-tools/event.bin"))
    assert log.banks == ("sha1", "sha256", "sha384", "sha512")
    assert set(el.replay(log)) == {"sha1", "sha256", "sha384", "sha512"}


DIGEST_FLAGS = {
    # tpm2-tools' event-arch-linux.bin.warn: "Event 24's digest does not match its payload" - systemd-boot's
    # load options in PCR 8 hash to something else; go-tpm-tools' copy has the same event.
    "tpm2-tools/event-arch-linux.bin": [24],
    "go-tpm-tools/arch-linux-workstation.bin": [24],
    # Dell firmware: EV_S_CRTM_VERSION "2.3.5" (UTF-16) with a digest of something else.
    "go-tpm-tools/gdc-host.bin": [3],
}


@pytest.mark.parametrize("rel", [r for r in ALL_LOGS if r not in REJECTED])
def test_event_data_digests(rel: str) -> None:
    log = el.parse_event_log(read_log(rel))
    assert [e.number for e in log.events if e.digest_ok is False] == DIGEST_FLAGS.get(rel, [])


def test_arch_linux_warning_matches_tpm2_tools() -> None:
    warn = (LOGS / "tpm2-tools" / "event-arch-linux.bin.warn").read_text()
    assert "Event 24's digest does not match its payload" in warn
    log = el.parse_event_log(read_log("tpm2-tools/event-arch-linux.bin"))
    (event,) = [e for e in log.events if e.number == 24]
    assert (event.pcr, event.type_name) == (8, "EV_IPL")


def test_startup_locality() -> None:
    for rel in (
        "go-tpm-tools/glinux-alex.bin",
        "go-tpm-tools/gdc-host.bin",
        "keylime/binary_bios_measurements",
    ):
        assert el.parse_event_log(read_log(rel)).startup_locality == 3, rel
    log = el.parse_event_log(read_log("go-attestation/short_no_action_eventlog"))
    assert log.startup_locality == 3
    assert [e.event_type for e in log.events] == [el.EV_NO_ACTION]
    assert el.replay(log) == {"sha1": {0: bytes(19) + b"\x03"}}


def test_no_pcr_events_are_kept_but_not_replayed() -> None:
    log = el.parse_event_log(read_log("go-attestation/option_rom_eventlog"))
    last = log.events[-1]
    assert last.pcr == el.NO_PCR
    assert not last.extends
    assert el.NO_PCR not in el.replay(log)["sha1"]


def test_sp800_155_events_are_recognised() -> None:
    log = el.parse_event_log(read_log("go-tpm-tools/confidential-gke-debug-251000_eventlog.bin"))
    assert log.sp800_155_events >= 1


def test_ccel_with_ff_padding_replays_to_the_quote_rtmrs() -> None:
    ccel = VECTORS / "tdx" / "go-tdx-guest-gcp-ccel"
    expected = json.loads((ccel / "expected-rtmrs.json").read_text())
    data = (ccel / "ccel_data.dat").read_bytes()
    log = el.parse_event_log(data)
    assert len(log.events) + 1 == expected["events_parsed"]
    assert len(data) - log.trailing_padding == expected["log_bytes_used"]
    replayed = el.replay(log)["sha384"]
    for mr in (1, 2, 3):
        assert replayed[mr].hex() == expected["expected_rtmrs_from_quote"][f"rtmr{mr - 1}"]


def test_padding_rules() -> None:
    data = read_log("go-tpm-tools/cos-85-amd-sev.bin")
    reference = el.replay(el.parse_event_log(data))
    for pad in (b"\x00" * 7, b"\xff" * 4096, b"\x00", b"\xff"):
        assert el.replay(el.parse_event_log(data + pad)) == reference
    for junk in (b"\x01", b"\xff\xff\x00", b"\x00\x00\x00\x00\x07", b"\x00" * 40 + b"\x01"):
        with pytest.raises(EvidenceError) as err:
            el.parse_event_log(data + junk)
        assert err.value.reason == "eventlog-malformed"


# --- UEFI claims -------------------------------------------------------------------------------------------

SECURE_BOOT = {
    "keylime/binary_bios_measurements": False,  # keylime test: SB disabled
    "keylime/binary_bios_measurements-secureboot": True,  # keylime test: SB enabled
    "go-tpm-tools/ubuntu-2104-no-secure-boot.bin": False,  # source: SB disabled
    "go-tpm-tools/ubuntu-2104-no-dbx.bin": False,  # source: SB disabled
    "go-tpm-tools/glinux-alex.bin": False,  # source: SB disabled
    "go-tpm-tools/arch-linux-workstation.bin": False,  # SB disabled; SecureBoot measured with no data
    "go-tpm-tools/debian-10.bin": True,  # source: SB enabled
    "go-attestation/sb_cert_eventlog": True,
    "go-attestation/option_rom_eventlog": True,
    # The source describes this log as "Secure Boot ... enabled", but the SecureBoot variable it measured
    # (and whose digest checks) is 00: the measurement wins.
    "go-tpm-tools/ubuntu-1804-amd-sev.bin": False,
}


@pytest.mark.parametrize("rel", sorted(SECURE_BOOT))
def test_secure_boot_state(rel: str) -> None:
    log = el.parse_event_log(read_log(rel))
    assert el.secure_boot_state(log, trusted_pcr7=True) is SECURE_BOOT[rel]
    assert el.secure_boot_state(log, trusted_pcr7=False) is None


EFI_APPS = [
    # go-tpm-tools TestParseEfiState asserts these for ubuntu-1804, ubuntu-2104-no-secure-boot, cos-85,
    # cos-93; the other two lists also hold.
    "go-tpm-tools/ubuntu-1804-amd-sev.bin",
    "go-tpm-tools/ubuntu-2104-no-secure-boot.bin",
    "go-tpm-tools/ubuntu-2104-no-dbx.bin",
    "go-tpm-tools/cos-85-amd-sev.bin",
    "go-tpm-tools/cos-93-amd-sev.bin",
    "go-tpm-tools/debian-10.bin",
]


def _efi_expectations(rel: str) -> dict[str, list[str]]:
    folder, name = rel.split("/")
    expected: dict[str, list[str]] = json.loads((LOGS / folder / "expected-pcrs.json").read_text())["logs"][
        name
    ]["efi_app_digests"]
    return expected


@pytest.mark.parametrize("rel", EFI_APPS)
def test_efi_app_digests(rel: str) -> None:
    log = el.parse_event_log(read_log(rel))
    apps = el.efi_apps(log)
    expected = _efi_expectations(rel)
    assert expected
    for bank, digests in expected.items():
        assert [a.digests[bank].hex() for a in apps] == digests
    assert apps[0].path is not None
    assert "File(" in apps[0].path


def test_gdc_host_efi_expectation_is_not_in_the_log() -> None:
    """go-tpm-tools lists EFI app digests for gdc-host but never asserts them (it is not in
    TestParseEfiState), and none of them occurs anywhere in the log: nothing can reproduce them."""
    raw = read_log("go-tpm-tools/gdc-host.bin")
    for digest in _efi_expectations("go-tpm-tools/gdc-host.bin")["sha256"]:
        assert bytes.fromhex(digest) not in raw


def _quoted(rel: str, pcrs: list[int] | None = None) -> dict[str, dict[int, bytes]]:
    replayed = el.replay(el.parse_event_log(read_log(rel)))
    return {
        b: {i: v for i, v in values.items() if pcrs is None or i in pcrs} for b, values in replayed.items()
    }


def test_verify_event_log_claims() -> None:
    rel = "go-tpm-tools/cos-85-amd-sev.bin"
    result = el.verify_event_log(read_log(rel), _quoted(rel))
    assert result.claims["tpm.secure_boot"] is True
    assert result.claims["tpm.efi_apps"] == _efi_expectations(rel)["sha256"]
    assert result.claims["tpm.eventlog.digest_mismatches"] == []
    assert all(b != "sha1" for b, _ in result.verified)
    sha384 = el.verify_event_log(read_log(rel), _quoted(rel), claims_bank="sha384")
    assert sha384.claims["tpm.efi_apps"] == _efi_expectations(rel)["sha384"]


def test_claims_need_the_pcrs_they_come_from() -> None:
    rel = "go-tpm-tools/cos-85-amd-sev.bin"
    only_0_to_3 = el.verify_event_log(read_log(rel), _quoted(rel, [0, 1, 2, 3]))
    assert only_0_to_3.claims["tpm.secure_boot"] is None
    assert only_0_to_3.claims["tpm.efi_apps"] is None
    with pytest.raises(EvidenceError) as err:
        el.verify_event_log(read_log(rel), _quoted(rel, [10, 11]))
    assert err.value.reason == "eventlog-unverifiable"
    # SHA-1-only logs need the opt-in, for the comparison and for the claims' bank
    legacy = "go-tpm-tools/debian-10.bin"
    with pytest.raises(EvidenceError) as err:
        el.verify_event_log(read_log(legacy), _quoted(legacy))
    assert err.value.reason == "eventlog-unverifiable"
    ok = el.verify_event_log(read_log(legacy), _quoted(legacy), claims_bank="sha1", allow_sha1=True)
    assert ok.claims["tpm.efi_apps"] == _efi_expectations(legacy)["sha1"]


def test_flagged_events_give_no_claims_but_are_reported() -> None:
    rel = "tpm2-tools/event-arch-linux.bin"
    result = el.verify_event_log(read_log(rel), _quoted(rel))
    assert result.claims["tpm.eventlog.digest_mismatches"] == ["24"]
    assert result.digest_mismatches == (24,)


def test_replay_mismatch_names_the_first_pcr_that_differs() -> None:
    rel = "go-tpm-tools/ubuntu-2104-no-dbx.bin"
    quoted = _quoted(rel)
    quoted["sha256"][9] = bytes(32)
    quoted["sha256"][4] = bytes(32)
    quoted["sha256"][10] = bytes(32)  # not in the log: never compared
    with pytest.raises(EvidenceError) as err:
        el.replay_matches_quote(el.replay(el.parse_event_log(read_log(rel))), quoted)
    assert err.value.reason == "eventlog-replay-mismatch"
    assert "PCR sha256:4 " in err.value.message
    with pytest.raises(EvidenceError) as err:
        el.replay_matches_quote({"sha256": {0: bytes(32)}}, {"sha384": {0: bytes(48)}})
    assert err.value.reason == "eventlog-bank-mismatch"


def test_windows_log_replays_to_its_quote() -> None:
    log = el.parse_event_log(base64.b64decode(windows_vector()["Log"]["Raw"]))
    matched = el.replay_matches_quote(el.replay(log), windows_pcrs())
    assert {p for _, p in matched} == {0, 4, 5, 7, 11, 12, 13, 14}


# --- hostile input ---------------------------------------------------------------------------------------


def _legacy_event(pcr: int, etype: int, data: bytes, digest: bytes = bytes(20)) -> bytes:
    return struct.pack("<II20sI", pcr, etype, digest, len(data)) + data


def _spec_id(algs: list[tuple[int, int]], vendor: bytes = b"", *, size_delta: int = 0) -> bytes:
    body = el.SPEC_ID_EVENT03 + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
    body += b"".join(struct.pack("<HH", a, n) for a, n in algs) + bytes([len(vendor)]) + vendor
    return struct.pack("<II20sI", 0, el.EV_NO_ACTION, bytes(20), len(body) + size_delta) + body


def _agile_event(pcr: int, etype: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    out = struct.pack("<III", pcr, etype, len(digests))
    out += b"".join(struct.pack("<H", a) + d for a, d in digests)
    return out + struct.pack("<I", len(data)) + data


SHA256 = (0x000B, 32)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_spec_id([]), "digest algorithms"),
        (_spec_id([SHA256] * 2), "twice"),
        (_spec_id([(0x000B, 20)]), "20-byte digest"),
        (_spec_id([SHA256], size_delta=-1), "Spec ID"),
        (_spec_id([SHA256]) + _agile_event(0, 0xD, [(0x0004, bytes(20))], b""), "undeclared"),
        (_spec_id([SHA256]) + _agile_event(0, 0xD, [], b""), "carries 0 digests"),
        (
            _spec_id([SHA256, (4, 20)]) + _agile_event(0, 0xD, [(0xB, bytes(32)), (0xB, bytes(32))], b""),
            "two",
        ),
        (_spec_id([SHA256]) + _agile_event(24, 0xD, [(0xB, bytes(32))], b""), "PCR 24"),
        (_spec_id([SHA256]) + _agile_event(0, 0xD, [(0xB, bytes(32))], b"abc")[:-1], "declares 3 bytes"),
        (_legacy_event(0, 0xD, b"x") + _legacy_event(0, 3, b"StartupLocality\x00\x03"), "before PCR 0"),
        (_legacy_event(0, 3, b"StartupLocality\x00\x03") * 2, "once"),
        (_legacy_event(0, 3, b"StartupLocality\x00\x09"), "not a locality"),
        (_legacy_event(0, 3, b"StartupLocality\x00\x03\x00"), "StartupLocality"),
        (_legacy_event(0x7FFFFFFF, 0xD, b""), "PCR 2147483647"),
        (_legacy_event(1, 0xD, b"")[:31], "truncated"),
    ],
)
def test_malformed_logs(data: bytes, message: str) -> None:
    with pytest.raises(EvidenceError, match=message) as err:
        el.parse_event_log(data)
    assert err.value.reason == "eventlog-malformed"


def test_size_limits() -> None:
    with pytest.raises(EvidenceError) as err:
        el.parse_event_log(b"\x01" * (el.MAX_LOG_SIZE + 1))
    assert err.value.reason == "eventlog-too-large"
    many = _legacy_event(1, 0xD, b"") * (el.MAX_EVENTS + 1)
    with pytest.raises(EvidenceError) as err:
        el.parse_event_log(many)
    assert err.value.reason == "eventlog-too-large"
    with pytest.raises(EvidenceError) as err:
        el.parse_event_log(bytes(64))
    assert err.value.reason == "eventlog-malformed"


def test_hostile_logs_take_linear_time() -> None:
    # Zero-filled events followed by one stray byte: a padding check at every event boundary would
    # rescan the tail each time (quadratic); the parser decides padding once.
    data = bytes(32) * 60000 + b"\x01"
    start = time.perf_counter()
    with pytest.raises(EvidenceError):
        el.parse_event_log(data)
    assert time.perf_counter() - start < 5
    # A declared size of 4 GiB allocates nothing.
    with pytest.raises(EvidenceError, match="declares"):
        el.parse_event_log(struct.pack("<II20sI", 1, 0xD, bytes(20), 0xFFFFFFFF) + b"x")


FUZZ = fuzz_settings(300)
SAMPLE = read_log("go-tpm-tools/cos-85-amd-sev.bin")
SAMPLE_LEGACY = read_log("go-tpm-tools/debian-10.bin")


@FUZZ
@given(data=s.binary(max_size=2000))
def test_random_bytes_only_raise_evidence_error(data: bytes) -> None:
    try:
        log = el.parse_event_log(data)
    except EvidenceError:
        return
    el.replay(log)
    el.efi_apps(log)
    el.secure_boot_state(log, trusted_pcr7=True)


@FUZZ
@given(
    which=s.sampled_from(["agile", "legacy"]),
    edits=s.lists(s.tuples(s.integers(min_value=0), s.integers(0, 255)), min_size=1, max_size=6),
)
def test_edited_logs_only_raise_evidence_error(which: str, edits: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLE if which == "agile" else SAMPLE_LEGACY)
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        log = el.parse_event_log(bytes(data))
    except EvidenceError:
        return
    el.replay(log)
    el.efi_apps(log)


def _boundaries(data: bytes) -> list[int]:
    log = el.parse_event_log(data)
    return [e.offset for e in log.events] + [len(data)]


BOUNDS = {"agile": _boundaries(SAMPLE), "legacy": _boundaries(SAMPLE_LEGACY)}


@FUZZ
@given(which=s.sampled_from(["agile", "legacy"]), fraction=s.floats(0, 1, exclude_max=True))
def test_truncated_logs_fail_unless_cut_at_an_event_boundary(which: str, fraction: float) -> None:
    data = SAMPLE if which == "agile" else SAMPLE_LEGACY
    cut = int(fraction * len(data))
    bounds = BOUNDS[which]
    if cut == 0 or cut < bounds[0]:  # nothing, or inside the Spec ID header
        with pytest.raises(EvidenceError):
            el.parse_event_log(data[:cut])
        return
    last = max(b for b in bounds if b <= cut)
    tail = data[last:cut]
    try:
        log = el.parse_event_log(data[:cut])
    except EvidenceError:
        assert cut not in bounds
        return
    # Accepted only at an event boundary, or when the partial event left is all padding bytes
    # (0x00/0xFF, e.g. cut inside a PCR 0 index): both give exactly the events before ``last``.
    assert cut == last or set(tail) <= {0} or set(tail) <= {0xFF}
    assert [e.offset for e in log.events] == [b for b in bounds[:-1] if b < last]


def test_vector_files_unchanged() -> None:
    """The vectors are read-only inputs: guard against a test (or a person) editing them."""
    sums = {}
    for line in (VECTORS / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*").removeprefix("./")] = digest
    for rel in ALL_LOGS:
        key = f"tpm-eventlog/{rel}"
        if key in sums:
            assert hashlib.sha256(vec(key)).hexdigest() == sums[key]


def test_h_crtm_starts_pcr0_at_locality_4() -> None:
    digest = hashlib.sha256(b"HCRTM").digest()
    log = el.parse_event_log(
        _spec_id([SHA256]) + _agile_event(0, el.EV_EFI_HCRTM_EVENT, [(0xB, digest)], b"HCRTM")
    )
    assert log.startup_locality == 4
    assert log.events[0].digest_ok is True
    assert el.replay(log)["sha256"][0] == hashlib.sha256(bytes(31) + b"\x04" + digest).digest()
    # not when PCR 0 was extended before it
    later = el.parse_event_log(
        _spec_id([SHA256])
        + _agile_event(0, el.EV_POST_CODE, [(0xB, digest)], b"")
        + _agile_event(0, el.EV_EFI_HCRTM_EVENT, [(0xB, digest)], b"HCRTM")
    )
    assert later.startup_locality is None
