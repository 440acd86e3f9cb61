"""The TPM manufacturers' EK CA certificates shipped with the package (``ek_cas/``, PROVENANCE.md there).

Only read here; trusting them is a tenant admin's decision (``keyserver tpm pin-vendor-cas``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from cryptography import x509

# File-name prefixes → vendor, as keylime's trust store names them.
VENDORS: dict[str, str] = {
    "IFX": "infineon",
    "INF": "infineon",
    "STM": "stmicro",
    "NUVO": "nuvoton",
    "NTC": "nuvoton",
    "INTEL": "intel",
    "GS": "globalsign",
    "Nationz": "nationz",
    "Alibaba": "alibaba",
}


@dataclass(frozen=True)
class VendorCa:
    name: str  # the file name without .pem, e.g. "IFX_RSA_RT"
    vendor: str
    pem: bytes
    unusable: str | None  # why the keyserver cannot use it, or None

    @property
    def usable(self) -> bool:
        return self.unusable is None


def vendor_of(name: str) -> str:
    for prefix, vendor in VENDORS.items():
        if name.startswith(prefix):
            return vendor
    raise ValueError(f"no vendor is known for {name!r}")


def _unusable(pem: bytes) -> str | None:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        return f"not a DER certificate the keyserver can parse ({exc})"
    if len(certificates) != 1:
        return "more than one certificate in the file"
    try:
        if not certificates[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "not a CA certificate"
    except x509.ExtensionNotFound:
        return "no basic constraints: not a CA certificate"
    return None


def vendor_ek_cas(vendors: frozenset[str] | None = None) -> list[VendorCa]:
    """The shipped certificates (of ``vendors`` only, if given), sorted by name."""
    found = []
    folder = resources.files("keyserver.evidence.tpm") / "ek_cas"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".pem"):
            continue
        name = entry.name.removesuffix(".pem")
        vendor = vendor_of(name)
        if vendors is not None and vendor not in vendors:
            continue
        pem = entry.read_bytes()
        found.append(VendorCa(name, vendor, pem, _unusable(pem)))
    return found
