"""Evidence collectors: put the 64-byte binding into hardware evidence and return the evidence object the
keyserver's release accepts (docs/loader-evidence.md).

- :mod:`clients.loader.collectors.tpm`: TPM 2.0 quotes through tpm2-pytss (and the AK's provisioning).
- :mod:`clients.loader.collectors.tsm`: SEV-SNP and TDX through the kernel's configfs-tsm interface.

The two are imported explicitly, not from here: a TDX guest need not have tpm2-pytss installed.
"""

from clients.loader.collectors.base import Collector, require_binding
from clients.loader.collectors.errors import CollectorError

__all__ = ["Collector", "CollectorError", "require_binding"]
