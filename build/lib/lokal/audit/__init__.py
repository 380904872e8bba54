"""`lokal audit` and `lokal clean`: duplicates, leakage, label conflicts and errors, corrupt
files and personal data, found before they are trained on."""

from lokal.audit.core import AuditSettings, analyse, run_audit

__all__ = ["AuditSettings", "analyse", "run_audit"]
