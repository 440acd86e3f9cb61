"""Where the binding goes for the new tees (docs/binding.md): the first 32 bytes in an Azure CVM's vTPM
quote, all 64 in a Nitro document's nonce; check_binding (the function the release and attest paths
share) compares them in full."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from keyserver.binding import binding, report_data_for
from keyserver.ephemeral_key import check_binding
from keyserver.errors import EvidenceError


def test_where_the_binding_goes() -> None:
    jwk = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    value = binding(bytes(32), jwk)
    assert report_data_for("azure-snp-vtpm", value) == value[:32]
    assert report_data_for("azure-tdx-vtpm", value) == value[:32]
    assert report_data_for("aws-nitro", value) == value
    check_binding("aws-nitro", value, bytes(32), jwk)
    check_binding("azure-snp-vtpm", value[:32], bytes(32), jwk)
    for tee, wrong in (("aws-nitro", value[:32]), ("azure-tdx-vtpm", value), ("aws-nitro", bytes(64))):
        with pytest.raises(EvidenceError) as info:
            check_binding(tee, wrong, bytes(32), jwk)
        assert info.value.reason == "binding-mismatch"
