"""Azure confidential VM evidence: the paravisor's HCL report + a vTPM quote, over SEV-SNP or TDX."""

from .hcl import HclReport, RuntimeData, parse_hcl_report
from .verify import verify_azure_snp_vtpm, verify_azure_tdx_vtpm

__all__ = ["HclReport", "RuntimeData", "parse_hcl_report", "verify_azure_snp_vtpm", "verify_azure_tdx_vtpm"]
