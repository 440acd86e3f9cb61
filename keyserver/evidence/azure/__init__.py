"""Azure confidential VM evidence: the paravisor's HCL report + a vTPM quote, over SEV-SNP or TDX.

Only the HCL report parser is re-exported here: the loader's collector imports this package, and a
package's ``__init__`` is part of every import below it, so the verifiers (which bring the SNP, TDX and
TPM verifiers with them) are imported from :mod:`.verify` by the server alone.
"""

from .hcl import HclReport, RuntimeData, parse_hcl_report

__all__ = ["HclReport", "RuntimeData", "parse_hcl_report"]
