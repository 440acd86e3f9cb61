"""The Azure confidential VM HCL report (the paravisor's "IGVM attestation report"): pure parsing.

On an Azure CVM the guest cannot write REPORT_DATA itself: the paravisor (HCL) asks the hardware for a
report whose REPORT_DATA starts with the hash of its *runtime data* (a JSON document naming the vTPM's
attestation key), and stores both, with a header, in a vTPM NV index (0x01400001). Layout (little-endian):

====== ====== ==============================================================================
offset size   field
====== ====== ==============================================================================
0x000  32     header: ``HCLA`` signature, version, report size, request type, status, reserved
0x020  1184   hardware report: the SEV-SNP ATTESTATION_REPORT, or the TDX TDREPORT (1024 bytes, zero-padded)
0x4C0  20     runtime-claims header: data size, version, report type (2 SNP, 4 TDX), hash type
              (1 SHA-256, 2 SHA-384, 3 SHA-512), variable-data size
0x4D4  n      variable data: the runtime-claims JSON
====== ====== ==============================================================================

The NV index is larger than the report; the bytes after the variable data must be zero (the sizes inside
the report are authoritative, and a non-zero tail would be data nobody verified).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from keyserver.errors import EvidenceError

HCL_SIGNATURE = b"HCLA"
HEADER_SIZE = 0x20
HW_REPORT_SIZE = 1184
TDREPORT_SIZE = 1024
RUNTIME_HEADER_OFFSET = HEADER_SIZE + HW_REPORT_SIZE  # 0x4C0
RUNTIME_HEADER_SIZE = 20
VARIABLE_DATA_OFFSET = RUNTIME_HEADER_OFFSET + RUNTIME_HEADER_SIZE  # 0x4D4
MAX_HCL_REPORT = 16 * 1024
MAX_VARIABLE_DATA = 8 * 1024

REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
_HASHES = {1: "sha256", 2: "sha384", 3: "sha512"}
# TDREPORT: REPORTMACSTRUCT.REPORTDATA at 128 (Intel TDX module ABI, TDG.MR.REPORT).
TDREPORT_REPORT_DATA_OFFSET = 128


def _malformed(message: str) -> EvidenceError:
    return EvidenceError("azure-hcl-malformed", message)


@dataclass(frozen=True)
class RuntimeData:
    """The parsed runtime-claims JSON: the vTPM keys and the VM's configuration as the paravisor states it."""

    ak_jwk: dict[str, str]
    ek_jwk: dict[str, str] | None
    vm_configuration: dict[str, Any]
    user_data: str | None


@dataclass(frozen=True)
class HclReport:
    version: int
    request_type: int
    report_type: int  # REPORT_TYPE_SNP or REPORT_TYPE_TDX
    hash_type: str  # hashlib name
    hardware_report: bytes  # 1184 bytes (SNP report) or 1024 (TDREPORT)
    variable_data: bytes
    runtime: RuntimeData

    def variable_data_digest(self) -> bytes:
        return hashlib.new(self.hash_type, self.variable_data).digest()


def _rsa_jwk(value: object, kid: str) -> dict[str, str]:
    if not isinstance(value, dict) or value.get("kty") != "RSA":
        raise _malformed(f"the runtime data's {kid} is not an RSA JWK")
    n, e = value.get("n"), value.get("e")
    if not isinstance(n, str) or not isinstance(e, str):
        raise _malformed(f"the runtime data's {kid} has no RSA modulus and exponent")
    return {"kty": "RSA", "n": n, "e": e}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _malformed(f"the runtime data repeats the member {key!r}")
        out[key] = value
    return out


def parse_runtime_data(data: bytes) -> RuntimeData:
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, EvidenceError):
            raise
        raise _malformed(f"the HCL runtime data is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _malformed("the HCL runtime data is not a JSON object")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise _malformed("the HCL runtime data has no 'keys' list")
    by_kid: dict[str, object] = {}
    for key in keys:
        if isinstance(key, dict) and isinstance(key.get("kid"), str):
            if key["kid"] in by_kid:
                raise _malformed(f"the HCL runtime data names the key {key['kid']!r} twice")
            by_kid[key["kid"]] = key
    if "HCLAkPub" not in by_kid:
        raise _malformed("the HCL runtime data has no HCLAkPub key (the vTPM attestation key)")
    config = doc.get("vm-configuration", {})
    if not isinstance(config, dict):
        raise _malformed("the HCL runtime data's 'vm-configuration' is not an object")
    user_data = doc.get("user-data")
    if user_data is not None and not isinstance(user_data, str):
        raise _malformed("the HCL runtime data's 'user-data' is not a string")
    return RuntimeData(
        ak_jwk=_rsa_jwk(by_kid["HCLAkPub"], "HCLAkPub"),
        ek_jwk=_rsa_jwk(by_kid["HCLEkPub"], "HCLEkPub") if "HCLEkPub" in by_kid else None,
        vm_configuration=config,
        user_data=user_data,
    )


def parse_hcl_report(data: bytes) -> HclReport:
    """Parse an HCL report (as read from the vTPM NV index, zero tail allowed); ``azure-hcl-malformed``
    for every structural problem."""
    if len(data) > MAX_HCL_REPORT:
        raise _malformed(f"the HCL report is {len(data)} bytes; at most {MAX_HCL_REPORT} are accepted")
    if len(data) < VARIABLE_DATA_OFFSET:
        raise _malformed(f"the HCL report is {len(data)} bytes, shorter than its fixed part")
    if data[:4] != HCL_SIGNATURE:
        raise _malformed("the HCL report does not start with 'HCLA'")
    version, report_size, request_type, status = struct.unpack_from("<IIII", data, 4)
    data_size, rt_version, report_type, hash_type, var_size = struct.unpack_from(
        "<5I", data, RUNTIME_HEADER_OFFSET
    )
    # Nothing signs the header: version and request type are informative only (never claims); the rest
    # must have the one value a good report has.
    if status != 0 or any(data[20:HEADER_SIZE]):
        raise _malformed("the HCL report's status is not 0 (success) or its reserved header bytes are set")
    if rt_version != 1:
        raise _malformed(f"the HCL runtime-claims version is {rt_version}; only 1 is known")
    if report_type not in (REPORT_TYPE_SNP, REPORT_TYPE_TDX):
        raise _malformed(f"the HCL report type is {report_type}; only 2 (SEV-SNP) and 4 (TDX) are known")
    if hash_type not in _HASHES:
        raise _malformed(f"the HCL runtime-data hash type is {hash_type}; 1, 2 or 3 (SHA-2) expected")
    if var_size > MAX_VARIABLE_DATA or data_size != RUNTIME_HEADER_SIZE + var_size:
        raise _malformed("the HCL runtime-claims sizes are inconsistent")
    end = VARIABLE_DATA_OFFSET + var_size
    if report_size != end or end > len(data):
        raise _malformed(f"the HCL report says it is {report_size} bytes but its parts add up to {end}")
    if any(data[end:]):
        raise _malformed("the HCL report has non-zero bytes after its variable data")
    hw = data[HEADER_SIZE:RUNTIME_HEADER_OFFSET]
    if report_type == REPORT_TYPE_TDX:
        if any(hw[TDREPORT_SIZE:]):
            raise _malformed("the TDREPORT slot of the HCL report has non-zero padding")
        hw = hw[:TDREPORT_SIZE]
    variable = data[VARIABLE_DATA_OFFSET:end]
    return HclReport(
        version=version,
        request_type=request_type,
        report_type=report_type,
        hash_type=_HASHES[hash_type],
        hardware_report=bytes(hw),
        variable_data=bytes(variable),
        runtime=parse_runtime_data(variable),
    )
