"""Trust anchors for SEV-SNP: AMD's ARK (root), ASK (signs VCEKs) and ASVK (signs VLEKs) per product.

The shipped defaults are AMD's public certificates as served by the KDS
(``https://kdsintf.amd.com/{vcek,vlek}/v1/<product>/cert_chain``), stored as package data in
``roots/`` (copied from google/go-sev-guest ``verify/trust/`` @ af1c107a, see the vectors MANIFEST
section 1; each file is "intermediate, then ARK").

The ARK of each product is **pinned by the SHA-256 of its DER encoding**: a :class:`ProductRoots` can
only be built around an ARK whose fingerprint is in the pin set (AMD's by default), is self-issued,
self-signed (RSASSA-PSS SHA-384, salt 48) and a CA. Intermediates (ASK/ASVK) must be issued and signed
by that ARK. Those checks run once, when the roots are built; a bad root configuration raises
:class:`~keyserver.errors.ConfigurationError` (an operator problem, not bad evidence).

Role checks that tie an intermediate to its job (subject CN ``SEV-<product>`` for the ASK,
``SEV-VLEK-<product>`` for the ASVK) run at verification time, so that a mis-assembled chain (an ASVK in
the ASK slot) is a rejected piece of evidence with a clear reason.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

from cryptography import x509

from keyserver.errors import ConfigurationError, EvidenceError

from .certs import load_der_certificate, sha256_hex, split_certificates, verify_amd_pss_signature
from .report import SnpProduct

# SHA-256 of the DER of AMD's root keys (MANIFEST §1; AMD publishes the same certificates at the KDS).
AMD_ARK_SHA256: Mapping[SnpProduct, str] = {
    SnpProduct.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    SnpProduct.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    SnpProduct.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

_SHIPPED_FILES: Mapping[SnpProduct, tuple[str, str]] = {
    SnpProduct.MILAN: ("ask_ark_milan.pem", "ask_ark_milan_vlek.pem"),
    SnpProduct.GENOA: ("ask_ark_genoa.pem", "ask_ark_genoa_vlek.pem"),
    SnpProduct.TURIN: ("ask_ark_turin_vcek.pem", "ask_ark_turin_vlek.pem"),
}


@dataclass(frozen=True)
class TrustedCert:
    """A certificate with its exact DER bytes and their SHA-256 (lowercase hex)."""

    der: bytes
    cert: x509.Certificate
    sha256: str

    @classmethod
    def from_der(cls, der: bytes, what: str) -> TrustedCert:
        try:
            cert = load_der_certificate(der, what)
        except EvidenceError as exc:
            raise ConfigurationError(exc.message) from exc
        return cls(der=bytes(der), cert=cert, sha256=sha256_hex(der))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


@dataclass(frozen=True)
class ProductRoots:
    """ARK + ASK (+ ASVK) of one product. Build with :meth:`build`, which validates them."""

    product: SnpProduct
    ark: TrustedCert
    ask: TrustedCert | None
    asvk: TrustedCert | None

    @classmethod
    def build(
        cls,
        product: SnpProduct,
        *,
        ark_der: bytes,
        ask_der: bytes | None = None,
        asvk_der: bytes | None = None,
        ark_sha256_pins: Iterable[str] | None = None,
    ) -> ProductRoots:
        """Validate and assemble. ``ark_sha256_pins`` defaults to AMD's ARK fingerprint for ``product``;
        pass your own pins only to trust a different root deliberately (e.g. a test PKI)."""
        pins = (
            {p.lower() for p in ark_sha256_pins} if ark_sha256_pins is not None else {AMD_ARK_SHA256[product]}
        )
        ark = TrustedCert.from_der(ark_der, f"{product.value} ARK")
        if ark.sha256 not in pins:
            raise ConfigurationError(
                f"the {product.value} ARK (SHA-256 {ark.sha256}) is not a pinned AMD root key; "
                f"expected one of {sorted(pins)}"
            )
        if ark.cert.issuer != ark.cert.subject or not verify_amd_pss_signature(ark.cert, ark.cert):
            raise ConfigurationError(f"the {product.value} ARK is not self-signed with RSASSA-PSS SHA-384")
        if not _is_ca(ark.cert):
            raise ConfigurationError(f"the {product.value} ARK is not a CA certificate")

        def intermediate(der: bytes | None, role: str) -> TrustedCert | None:
            if der is None:
                return None
            tc = TrustedCert.from_der(der, f"{product.value} {role}")
            if tc.cert.issuer != ark.cert.subject or not verify_amd_pss_signature(ark.cert, tc.cert):
                raise ConfigurationError(f"the {product.value} {role} is not issued and signed by the ARK")
            if not _is_ca(tc.cert):
                raise ConfigurationError(f"the {product.value} {role} is not a CA certificate")
            return tc

        return cls(
            product=product,
            ark=ark,
            ask=intermediate(ask_der, "ASK"),
            asvk=intermediate(asvk_der, "ASVK"),
        )

    def trusted_fingerprints(self) -> frozenset[str]:
        return frozenset(tc.sha256 for tc in (self.ark, self.ask, self.asvk) if tc is not None)


@dataclass(frozen=True)
class SnpRoots:
    """The per-product trust anchors a verification uses."""

    products: tuple[ProductRoots, ...]

    def __post_init__(self) -> None:
        seen = [p.product for p in self.products]
        if len(seen) != len(set(seen)):
            raise ConfigurationError("SnpRoots lists a product more than once")

    def get(self, product: SnpProduct) -> ProductRoots | None:
        for roots in self.products:
            if roots.product is product:
                return roots
        return None

    def all_fingerprints(self) -> frozenset[str]:
        out: set[str] = set()
        for roots in self.products:
            out |= roots.trusted_fingerprints()
        return frozenset(out)

    @classmethod
    def from_pem_chains(
        cls,
        chains: Mapping[SnpProduct, tuple[bytes | None, bytes | None]],
        *,
        ark_sha256_pins: Mapping[SnpProduct, Iterable[str]] | None = None,
    ) -> SnpRoots:
        """Build from KDS-style ``cert_chain`` PEM files: per product ``(vcek_chain, vlek_chain)``, each
        "intermediate then ARK" (either may be ``None``). Both chains must carry the same ARK."""
        products = []
        for product, (vcek_chain, vlek_chain) in chains.items():
            ask_der = asvk_der = ark_der = None
            for chain, role in ((vcek_chain, "ASK"), (vlek_chain, "ASVK")):
                if chain is None:
                    continue
                try:
                    ders = split_certificates(chain, f"{product.value} {role} chain")
                except EvidenceError as exc:
                    raise ConfigurationError(exc.message) from exc
                if len(ders) != 2:
                    raise ConfigurationError(
                        f"the {product.value} {role} chain must hold exactly two certificates ({role}, ARK)"
                    )
                if ark_der is not None and ark_der != ders[1]:
                    raise ConfigurationError(f"the {product.value} VCEK and VLEK chains carry different ARKs")
                ark_der = ders[1]
                if role == "ASK":
                    ask_der = ders[0]
                else:
                    asvk_der = ders[0]
            if ark_der is None:
                raise ConfigurationError(f"no chain given for {product.value}")
            pins = ark_sha256_pins.get(product) if ark_sha256_pins is not None else None
            products.append(
                ProductRoots.build(
                    product, ark_der=ark_der, ask_der=ask_der, asvk_der=asvk_der, ark_sha256_pins=pins
                )
            )
        return cls(products=tuple(products))


def _read_shipped(name: str) -> bytes:
    return (resources.files("keyserver.evidence.snp") / "roots" / name).read_bytes()


@functools.cache
def default_snp_roots() -> SnpRoots:
    """AMD's ARK/ASK/ASVK for Milan, Genoa and Turin, shipped with the package, ARKs pinned."""
    return SnpRoots.from_pem_chains(
        {
            product: (_read_shipped(vcek), _read_shipped(vlek))
            for product, (vcek, vlek) in _SHIPPED_FILES.items()
        }
    )
