"""`lokal audit` and `lokal clean`: duplicates, leakage, label conflicts and errors, corrupt
files and personal data, found before they are trained on."""

from lokal.audit.settings import AuditSettings

__all__ = ["AuditSettings", "analyse", "run_audit"]


def __getattr__(name: str):
    """`analyse` and `run_audit` load pandas and numpy: imported when first used."""
    if name in ("analyse", "run_audit"):
        from lokal.audit import core

        return getattr(core, name)
    raise AttributeError(f"module 'lokal.audit' has no attribute {name!r}")
