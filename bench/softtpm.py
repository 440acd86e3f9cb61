"""TPM quotes in TPM wire format signed by a software-held attestation key.

The bytes are exactly what TPM2_Quote returns (TPMS_ATTEST and TPMT_SIGNATURE, built by the same helpers
the test suite checks against swtpm and tpm2-tools), but the signature comes from a key in this process,
so a load generator is not bounded by a TPM simulator (swtpm answers a quote in 1-9 ms, serially). The
keyserver cannot tell the difference, and it must not: it only ever sees the bytes and the AK it enrolled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyserver.evidence.tpm import structures as st
from tests.tpm.helpers import SoftAk, make_attest, sign, soft_ak

# What swtpm's loaders quote in the tests: PCR 0 and 8-15 of the sha256 bank.
SELECTION: dict[str, tuple[int, ...]] = {"sha256": (0, *range(8, 16))}


@dataclass(frozen=True)
class SoftQuoter:
    """A software AK (ECC P-256 with ECDSA/SHA-256, or RSA-2048 with RSASSA/SHA-256) and fixed PCRs."""

    ak: SoftAk
    pcrs: Mapping[str, Mapping[int, bytes]]

    @classmethod
    def create(cls, kind: str, *, pcr_salt: bytes = b"bench") -> SoftQuoter:
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if kind == "ecc":
            private = ec.generate_private_key(ec.SECP256R1())
        elif kind == "rsa":
            private = rsa.generate_private_key(65537, 2048)
        else:
            raise ValueError(kind)
        pcrs = {
            bank: {i: hashlib.sha256(pcr_salt + f"{bank}:{i}".encode()).digest() for i in indices}
            for bank, indices in SELECTION.items()
        }
        return cls(soft_ak(private), pcrs)

    @property
    def tpm2b_public(self) -> bytes:
        return st.marshal_tpm2b_public(self.ak.public)

    @property
    def name_hex(self) -> str:
        return self.ak.public.name().hex()

    def quote(self, qualifying_data: bytes) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) of a quote over ``self.pcrs`` with ``qualifying_data``."""
        attest = make_attest(self.pcrs, extra_data=qualifying_data, qualified_signer=self.ak.qualified_name)
        sig_alg = st.ALG_ECDSA if isinstance(self.ak.private, ec.EllipticCurvePrivateKey) else st.ALG_RSASSA
        return attest, sign(self.ak.private, attest, sig_alg, st.ALG_SHA256)

    def pcrs_hex(self) -> dict[str, dict[str, str]]:
        return {bank: {str(i): v.hex() for i, v in values.items()} for bank, values in self.pcrs.items()}
