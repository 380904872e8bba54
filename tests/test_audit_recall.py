"""Audit recall on a small planted set (issue 17): near copies and personal data written the way
people write them, planted into the development half of the shipped tweets (fixed seed), all
found, and no clean row flagged. `tools/audit_recall.py` is the full measurement (dev and
held-out halves, 5 seeds x 20 per kind); this is its fast guard."""

from __future__ import annotations

import pytest

from tools.audit_recall import NEAR_KINDS, PII_KINDS, Result, measure, plant


@pytest.fixture(scope="module")
def planted():
    return plant("dev", seed=0, per_kind=4)


def test_every_planted_case_is_found_and_no_clean_row_flagged(planted):
    result = measure(planted)
    assert result.planted == {kind: 4 for kind in NEAR_KINDS + PII_KINDS}
    assert result.misses == {}, result.misses
    assert result.found == result.planted
    assert result.near_false == [] and result.pii_false == [] and result.decoy_false == 0
    assert result.clean_rows > 500 and result.decoy_rows == 4


def test_the_measure_sees_a_weaker_audit(planted):
    """The counting can fail: with near search off only equal near keys link (retweets, emoji and
    case edits), so the edits that change letters are missed."""
    result = measure(planted, Result(), near=False)
    for kind in ("letters", "words", "mixed"):
        assert result.found[kind] < result.planted[kind], kind
    assert all(result.found[kind] == 4 for kind in PII_KINDS)
