"""The audit's thresholds and switches, apart from the audit itself so that `lokal audit --help`
can show their defaults without importing pandas."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AuditSettings:
    """Thresholds and switches; written into audit.json so a report says how it was made."""

    near: bool = True  # search near duplicates (text MinHash, image perceptual hashes)
    text_threshold: float = 0.6  # Jaccard of near-key 4-grams (lokal.audit.text.near_grams); why 0.6: there
    image_threshold: int = 20  # bits of 128 (pHash + dHash) that may differ; see lokal.audit.images
    label_errors: bool = True
    label_error_limit: int = 50  # rows listed in the report (all flagged rows are counted)
    workers: int = 2  # threads decoding images
