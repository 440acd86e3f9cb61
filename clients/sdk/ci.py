"""A CI signer's calls: publish the reference values a reviewed loader build measures to, signed."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from clients.sdk.bundles import SignerPrivateKey, bundle_bytes, sign_bundle
from clients.sdk.models import ReferenceValues
from clients.sdk.routes import TenantRoutes


class CiApi(TenantRoutes):
    async def publish_bundle(
        self, signer: str, bundle: Mapping[str, Any], signature: bytes
    ) -> ReferenceValues:
        """Publish a bundle signed elsewhere (an HSM, a KMS): ``signature`` over its canonical bytes."""
        bundle_bytes(bundle)  # refuse here what the server could not verify
        body = {"signer": signer, "bundle": dict(bundle), "signature": base64.b64encode(signature).decode()}
        reply = await self._transport.call("POST", self._path("reference-values", "bundles"), body=body)
        return ReferenceValues.parse(reply.fields())

    async def publish(
        self, signer: str, bundle: Mapping[str, Any], private_key: SignerPrivateKey
    ) -> ReferenceValues:
        """Sign ``bundle`` with the signer's private key and publish it."""
        return await self.publish_bundle(signer, bundle, sign_bundle(bundle, private_key))

    async def list_reference_values(self) -> list[ReferenceValues]:
        reply = await self._transport.call("GET", self._path("reference-values"))
        return [ReferenceValues.parse(f) for f in reply.items()]
