"""The real Azure CVM and AWS Nitro vectors (tests/vectors/other, MANIFEST §6), decoded once into the
form the pure verifiers take, with what the MANIFEST says about each."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from tests.conftest import VECTORS

OTHER = VECTORS / "other"


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class AzureVector:
    name: str
    tee: str  # azure-snp-vtpm / azure-tdx-vtpm
    hcl_report: bytes
    quote: bytes
    signature: bytes
    pcrs: tuple[bytes, ...]
    nonce: bytes
    pcr0: str  # MANIFEST: the source's asserted tpm.pcr00
    vcek: bytes | None = None
    td_quote: bytes | None = None

    def with_(self, **changes: Any) -> AzureVector:
        return replace(self, **changes)

    def validity(self) -> tuple[datetime, datetime]:
        """The window the hardware layer's signing certificate allows (the tightest in the chain)."""
        if self.vcek is not None:
            pem = self.vcek if self.vcek.lstrip().startswith(b"-----") else None
            leaf = (
                x509.load_pem_x509_certificates(pem)[0] if pem else x509.load_der_x509_certificate(self.vcek)
            )
            return leaf.not_valid_before_utc, leaf.not_valid_after_utc
        assert self.td_quote is not None
        start = self.td_quote.index(b"-----BEGIN CERTIFICATE-----")
        end = self.td_quote.rindex(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
        chain = x509.load_pem_x509_certificates(self.td_quote[start:end])  # PCK, Platform CA, root
        return max(c.not_valid_before_utc for c in chain), min(c.not_valid_after_utc for c in chain)


def _quote_json(q: dict[str, Any]) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    def raw(v: Any) -> bytes:
        return bytes(v) if isinstance(v, list) else bytes.fromhex(v)

    return raw(q["message"]), raw(q["signature"]), tuple(raw(p) for p in q["pcrs"])


def azure_vectors() -> dict[str, AzureVector]:
    snp, tdx = OTHER / "azure-snp-vtpm", OTHER / "azure-tdx-vtpm"
    out: dict[str, AzureVector] = {}
    challenge = b"challenge"
    for name, pcr0 in (
        ("evidence-v0", "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"),
        ("evidence-genoa", "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338"),
    ):
        doc = json.loads((snp / f"{name}.json").read_text())
        nonce = (
            challenge
            if name == "evidence-v0"
            else bytes.fromhex(
                "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f"
            )
        )
        m, s, p = _quote_json(doc["quote"])
        out[f"snp/{name}"] = AzureVector(
            f"snp/{name}",
            "azure-snp-vtpm",
            bytes(doc["report"]),
            m,
            s,
            p,
            nonce,
            pcr0,
            vcek=doc["vcek"].encode(),
        )
    for name, nonce, pcr0 in (
        ("evidence-v1", challenge, "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"),
        (
            "evidence-v2",
            bytes.fromhex(
                "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
            ),
            "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7",
        ),
    ):
        doc = json.loads((snp / f"{name}.json").read_text())
        m, s, p = _quote_json(doc["tpm_quote"])
        out[f"snp/{name}"] = AzureVector(
            f"snp/{name}",
            "azure-snp-vtpm",
            b64url(doc["hcl_report"]),
            m,
            s,
            p,
            nonce,
            pcr0,
            vcek=b64url(doc["vcek"]),
        )
    m, s, p = _quote_json(json.loads((snp / "tpm-quote-v1.json").read_text()))
    out["snp/hcl-report"] = AzureVector(
        "snp/hcl-report",
        "azure-snp-vtpm",
        (snp / "hcl-report.bin").read_bytes(),
        m,
        s,
        p,
        challenge,
        "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be",
        vcek=(VECTORS / "snp/azure-milan-from-hcl/vcek.pem").read_bytes(),
    )
    tdx_pcr0 = "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"
    doc = json.loads((tdx / "evidence-v0.json").read_text())
    m, s, p = _quote_json(doc["tpm_quote"])
    out["tdx/evidence-v0"] = AzureVector(
        "tdx/evidence-v0",
        "azure-tdx-vtpm",
        bytes(doc["hcl_report"]),
        m,
        s,
        p,
        challenge,
        tdx_pcr0,
        td_quote=bytes(doc["td_quote"]),
    )
    doc = json.loads((tdx / "evidence-v1.json").read_text())
    m, s, p = _quote_json(doc["tpm_quote"])
    out["tdx/evidence-v1"] = AzureVector(
        "tdx/evidence-v1",
        "azure-tdx-vtpm",
        b64url(doc["hcl_report"]),
        m,
        s,
        p,
        challenge,
        tdx_pcr0,
        td_quote=b64url(doc["td_quote"]),
    )
    m, s, p = _quote_json(json.loads((tdx / "tpm-quote-v1.json").read_text()))
    out["tdx/hcl-report"] = AzureVector(
        "tdx/hcl-report",
        "azure-tdx-vtpm",
        (tdx / "hcl-report.bin").read_bytes(),
        m,
        s,
        p,
        challenge,
        "",
        td_quote=(tdx / "td-quote.bin").read_bytes(),
    )
    return out


AZURE = azure_vectors()


@dataclass(frozen=True)
class NitroVector:
    name: str
    document: bytes
    not_before: datetime  # MANIFEST §6: the leaf window (the tightest in the chain)
    not_after: datetime
    debug: bool
    module_id: str
    pcr0_prefix: str


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NITRO = {
    "valid-attestation-doc-base64": NitroVector(
        "valid-attestation-doc-base64",
        base64.b64decode((OTHER / "aws-nitro/valid-attestation-doc-base64").read_bytes()),
        _utc("2023-09-18T14:37:09"),
        _utc("2023-09-18T17:37:12"),
        True,
        "i-0918f6c55e3b61d89-enc018aa8b8e2285d13",
        "00" * 48,
    ),
    "valid-attestation-doc-bytes": NitroVector(
        "valid-attestation-doc-bytes",
        (OTHER / "aws-nitro/valid-attestation-doc-bytes").read_bytes(),
        _utc("2022-10-13T08:57:59"),
        _utc("2022-10-13T11:58:02"),
        False,
        "i-020b6af9246d90e92-enc0183d09086c24190",
        "f4d48b81",
    ),
    "debug-mode-attestation-doc-bytes": NitroVector(
        "debug-mode-attestation-doc-bytes",
        (OTHER / "aws-nitro/debug-mode-attestation-doc-bytes").read_bytes(),
        _utc("2022-10-12T13:49:51"),
        _utc("2022-10-12T16:49:54"),
        True,
        "",
        "00" * 48,
    ),
}
